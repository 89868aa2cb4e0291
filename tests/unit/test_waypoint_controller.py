"""The waypoint controller: the pure renderer, and server-side apply through the real ``kubernetes``
client against the fake API server (tests/support/fakekube.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from istiod_lite.controlplane.manifests import (
    GATEWAY_NAME_LABEL,
    MANAGED_LABEL,
    MANAGED_VALUE,
    is_ours,
    render_waypoint,
)
from istiod_lite.controlplane.waypoint_controller import (
    FIELD_MANAGER,
    WaypointController,
    WaypointControllerOptions,
)
from istiod_lite.model import ConfigSnapshot, parse_object
from istiod_lite.model.gateway import Gateway
from istiod_lite.sources import KubeSourceOptions
from istiod_lite.sources.kube import api_client_for
from tests.support.fakekube import FakeKubeApiServer

IMAGE = "istiod-lite:test"
ISTIOD = "istiod-lite.istio-system.svc"
ROOT = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


def gateway_obj(name: str = "waypoint", namespace: str = "default", *, cls: str = "istio-waypoint",
                uid: str = "gw-uid-1", generation: int = 1) -> dict[str, Any]:
    return {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
            "metadata": {"name": name, "namespace": namespace, "uid": uid, "generation": generation},
            "spec": {"gatewayClassName": cls,
                     "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}]}}


def gateway(**kw: Any) -> Gateway:
    gw = parse_object(gateway_obj(**kw))
    assert isinstance(gw, Gateway)
    return gw


def snapshot(*objs: dict[str, Any]) -> ConfigSnapshot:
    return ConfigSnapshot.build([parse_object(o) for o in objs])


def ns_obj(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}


def by_kind(objs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {o["kind"]: o for o in objs}


# -- renderer ----------------------------------------------------------------------------------------
def test_render_only_waypoint_class() -> None:
    assert render_waypoint(gateway(cls="istio"), image=IMAGE, istiod_address=ISTIOD, trust_domain="td") == []
    objs = render_waypoint(gateway(), image=IMAGE, istiod_address=ISTIOD, trust_domain="td")
    assert [o["kind"] for o in objs] == ["ServiceAccount", "Deployment", "Service"]
    for o in objs:
        assert o["metadata"]["name"] == "waypoint" and o["metadata"]["namespace"] == "default"
        assert o["metadata"]["ownerReferences"] == [{"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
                                                     "name": "waypoint", "uid": "gw-uid-1", "controller": True}]
        assert o["metadata"]["labels"][GATEWAY_NAME_LABEL] == "waypoint"
        assert o["metadata"]["labels"][MANAGED_LABEL] == "istio.io-mesh-controller"


def test_render_deployment_fields() -> None:
    dep = by_kind(render_waypoint(gateway(name="wp", namespace="shop"), image=IMAGE, istiod_address=ISTIOD,
                                  trust_domain="example.org"))["Deployment"]
    assert dep["apiVersion"] == "apps/v1"
    pod = dep["spec"]["template"]
    assert dep["spec"]["selector"]["matchLabels"] == {GATEWAY_NAME_LABEL: "wp"}
    assert pod["metadata"]["labels"][GATEWAY_NAME_LABEL] == "wp"
    assert pod["metadata"]["labels"]["istio.io/dataplane-mode"] == "none"
    assert pod["metadata"]["labels"][MANAGED_LABEL] == "istio.io-mesh-controller"
    assert pod["spec"]["serviceAccountName"] == "wp"
    (c,) = pod["spec"]["containers"]
    assert c["name"] == "istio-proxy" and c["image"] == IMAGE
    assert c["args"][:2] == ["waypoint", "run"]
    args = dict(zip(c["args"][2::2], c["args"][3::2], strict=True))
    assert args == {"--name": "wp", "--namespace": "shop", "--service-account": "wp",
                    "--token-file": "/var/run/secrets/tokens/istio-token",
                    "--xds-address": f"{ISTIOD}:15012", "--ca-address": f"{ISTIOD}:15012",
                    "--root-cert": "/var/run/secrets/istio/root-cert.pem", "--ip": "$(INSTANCE_IP)",
                    "--trust-domain": "example.org", "--admin-port": "15000", "--status-port": "15021",
                    "--prometheus-port": "15090",
                    # pilot-agent's drain: Istio's drainDuration / terminationDrainDuration defaults.
                    "--drain-duration": "45s", "--drain-strategy": "immediate",
                    "--termination-drain-duration": "5s"}
    # The pod may take the whole termination drain plus Envoy's exit before Kubernetes kills it.
    assert pod["spec"]["terminationGracePeriodSeconds"] >= 5 + 5
    env = {e["name"]: e for e in c["env"]}
    assert env["INSTANCE_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    assert c["readinessProbe"]["httpGet"] == {"path": "/healthz/ready", "port": 15021}
    assert {"name": "status-port", "containerPort": 15021, "protocol": "TCP"} in c["ports"]
    assert {"name": "http-envoy-prom", "containerPort": 15090, "protocol": "TCP"} in c["ports"]
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == "15090"
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    (token,) = volumes["istio-token"]["projected"]["sources"]
    assert token["serviceAccountToken"] == {"audience": "istio-ca", "expirationSeconds": 43200, "path": "istio-token"}
    assert mounts["istio-token"] == "/var/run/secrets/tokens"
    assert volumes["istiod-ca-cert"]["configMap"] == {"name": "istio-ca-root-cert"}
    assert mounts["istiod-ca-cert"] == "/var/run/secrets/istio"


def test_render_service_fields() -> None:
    svc = by_kind(render_waypoint(gateway(), image=IMAGE, istiod_address=ISTIOD, trust_domain="td"))["Service"]
    assert svc["spec"]["selector"] == {GATEWAY_NAME_LABEL: "waypoint"}
    assert {p["name"]: p["port"] for p in svc["spec"]["ports"]} == {"mesh": 15008, "status-port": 15021}


def test_hostile_names_stay_values() -> None:
    """A label value full of YAML syntax is a value in the tree, never text that could add fields."""
    obj = gateway_obj()
    obj["metadata"]["labels"] = {"x": "a\nkind: Secret\n: {"}
    gw = parse_object(obj)
    assert isinstance(gw, Gateway)
    objs = render_waypoint(gw, image="img\n  evil: 1", istiod_address=ISTIOD, trust_domain="td")
    dep = by_kind(objs)["Deployment"]
    assert dep["spec"]["template"]["spec"]["containers"][0]["image"] == "img\n  evil: 1"
    assert [o["kind"] for o in objs] == ["ServiceAccount", "Deployment", "Service"]


def test_gateway_without_uid_has_no_owner_reference() -> None:
    objs = render_waypoint(gateway(uid=""), image=IMAGE, istiod_address=ISTIOD, trust_domain="td")
    assert all("ownerReferences" not in o["metadata"] for o in objs)


# -- applier against the fake API server -----------------------------------------------------------
@pytest.fixture
def kube() -> Iterator[FakeKubeApiServer]:
    with FakeKubeApiServer() as server:
        yield server


def controller(kube: FakeKubeApiServer, tmp_path: Path, *, root: str | None = ROOT) -> WaypointController:
    api = api_client_for(KubeSourceOptions(kubeconfig=kube.write_kubeconfig(tmp_path / "kubeconfig")))
    return WaypointController(api, WaypointControllerOptions(image=IMAGE, istiod_address=ISTIOD,
                                                             trust_domain="cluster.local", root_cert_pem=root),
                              clock=lambda: "2026-01-01T00:00:00Z")


def test_apply_creates_objects_and_writes_status(kube: FakeKubeApiServer, tmp_path: Path) -> None:
    kube.apply(gateway_obj())
    kube.apply(gateway_obj(name="not-a-waypoint", cls="istio", uid="u2"))
    ctl = controller(kube, tmp_path)
    result = ctl.reconcile(snapshot(ns_obj("default"), ns_obj("other"), gateway_obj(),
                                    gateway_obj(name="not-a-waypoint", cls="istio", uid="u2")))
    assert result.errors == []
    sa = kube.get("v1", "ServiceAccount", "default", "waypoint")
    dep = kube.get("apps/v1", "Deployment", "default", "waypoint")
    svc = kube.get("v1", "Service", "default", "waypoint")
    assert sa is not None and dep is not None and svc is not None
    assert dep["spec"]["template"]["spec"]["containers"][0]["name"] == "istio-proxy"
    assert dep["metadata"]["ownerReferences"][0]["uid"] == "gw-uid-1"
    assert svc["spec"]["selector"] == {GATEWAY_NAME_LABEL: "waypoint"}
    assert kube.get("apps/v1", "Deployment", "default", "not-a-waypoint") is None
    # every apply is a server-side apply by our field manager, forced
    patches = [r for r in kube.requests if r.method == "PATCH"]
    assert patches and all(r.headers["content-type"] == "application/apply-patch+yaml" for r in patches)
    assert all(f"fieldManager={FIELD_MANAGER}" in r.query and "force=true" in r.query for r in patches)
    # root cert published in every namespace seen
    for ns in ("default", "other"):
        cm = kube.get("v1", "ConfigMap", ns, "istio-ca-root-cert")
        assert cm is not None and cm["data"] == {"root-cert.pem": ROOT}
    # status on the subresource: the Service's clusterIP, Accepted + Programmed
    gw = kube.get("gateway.networking.k8s.io/v1", "Gateway", "default", "waypoint")
    assert gw is not None
    assert gw["spec"]["gatewayClassName"] == "istio-waypoint"  # status apply left the spec alone
    assert gw["status"]["addresses"] == [{"type": "IPAddress", "value": svc["spec"]["clusterIP"]}]
    conds = {c["type"]: c for c in gw["status"]["conditions"]}
    assert conds["Accepted"]["status"] == "True" and conds["Programmed"]["status"] == "True"
    assert conds["Programmed"]["observedGeneration"] == 1
    assert any(r.path.endswith("/gateways/waypoint/status") for r in patches)
    # the status round-trips through the model (what the waypoint index reads)
    parsed = parse_object({k: v for k, v in gw.items()})
    assert isinstance(parsed, Gateway) and parsed.status is not None
    assert parsed.status.addresses[0].value == svc["spec"]["clusterIP"]


def test_reapply_is_idempotent(kube: FakeKubeApiServer, tmp_path: Path) -> None:
    kube.apply(gateway_obj())
    snap = snapshot(ns_obj("default"), gateway_obj())
    ctl = controller(kube, tmp_path)
    ctl.reconcile(snap)
    versions = {o["kind"]: o["metadata"]["resourceVersion"] for o in
                kube.objects("apps/v1", "Deployment") + kube.objects("v1", "Service")
                + kube.objects("v1", "ServiceAccount") + kube.objects("v1", "ConfigMap")}
    ip = kube.objects("v1", "Service")[0]["spec"]["clusterIP"]
    # same controller: nothing is sent
    before = len(kube.requests)
    again = ctl.reconcile(snap)
    assert again.applied == [] and again.errors == [] and len(kube.requests) == before
    # a fresh controller (a restart) re-applies everything; the server sees no change
    fresh = controller(kube, tmp_path)
    result = fresh.reconcile(snap)
    assert result.errors == [] and result.applied
    after = {o["kind"]: o["metadata"]["resourceVersion"] for o in
             kube.objects("apps/v1", "Deployment") + kube.objects("v1", "Service")
             + kube.objects("v1", "ServiceAccount") + kube.objects("v1", "ConfigMap")}
    assert after == versions
    assert kube.objects("v1", "Service")[0]["spec"]["clusterIP"] == ip
    assert len(kube.objects("apps/v1", "Deployment")) == 1


def test_invalidate_repairs_deleted_objects(kube: FakeKubeApiServer, tmp_path: Path) -> None:
    kube.apply(gateway_obj())
    snap = snapshot(gateway_obj())
    ctl = controller(kube, tmp_path)
    ctl.reconcile(snap)
    kube.delete("apps/v1", "Deployment", "default", "waypoint")
    ctl.reconcile(snap)
    assert kube.get("apps/v1", "Deployment", "default", "waypoint") is None  # cached: nothing sent
    ctl.invalidate()
    ctl.reconcile(snap)
    assert kube.get("apps/v1", "Deployment", "default", "waypoint") is not None


def test_changed_gateway_generation_rewrites_status(kube: FakeKubeApiServer, tmp_path: Path) -> None:
    kube.apply(gateway_obj())
    ctl = controller(kube, tmp_path, root=None)
    ctl.reconcile(snapshot(gateway_obj()))
    assert kube.objects("v1", "ConfigMap") == []  # no root cert: nothing published
    ctl.reconcile(snapshot(gateway_obj(generation=2)))
    gw = kube.get("gateway.networking.k8s.io/v1", "Gateway", "default", "waypoint")
    assert gw is not None
    assert {c["observedGeneration"] for c in gw["status"]["conditions"]} == {2}


def test_apply_failure_is_reported_and_retried(kube: FakeKubeApiServer, tmp_path: Path) -> None:
    kube.apply(gateway_obj())
    ctl = controller(kube, tmp_path)
    kube.fail_status = 500
    failed = ctl.reconcile(snapshot(gateway_obj()))
    assert failed.errors and failed.applied == []
    kube.fail_status = None
    ok = ctl.reconcile(snapshot(gateway_obj()))
    assert ok.errors == []
    assert kube.get("apps/v1", "Deployment", "default", "waypoint") is not None
    gw = kube.get("gateway.networking.k8s.io/v1", "Gateway", "default", "waypoint")
    assert gw is not None and gw["status"]["addresses"]


def test_recorded_verbs(kube: FakeKubeApiServer, tmp_path: Path) -> None:
    """The verbs RBAC must grant (deploy/rbac.yaml; checked there by test_deploy_manifests)."""
    kube.apply(gateway_obj())
    controller(kube, tmp_path).reconcile(snapshot(ns_obj("default"), gateway_obj()))
    assert kube.resource_requests() == {
        (verb, res) for verb in ("create", "patch")
        for res in ("serviceaccounts", "services", "configmaps", "deployments.apps")
    } | {("patch", "gateways/status.gateway.networking.k8s.io")} | {
        # the ownership check reads each waypoint object first (not the ConfigMap: always istiod's)
        ("get", res) for res in ("serviceaccounts", "services", "deployments.apps")}


def test_gateway_status_is_pending_until_the_service_has_an_address() -> None:
    from istiod_lite.controlplane.manifests import render_gateway_status

    pending = render_gateway_status(gateway(generation=3), "", transition_time="t")["status"]
    assert "addresses" not in pending
    conds = {c["type"]: c for c in pending["conditions"]}
    assert (conds["Accepted"]["status"], conds["Programmed"]["status"], conds["Programmed"]["reason"]) == (
        "True", "False", "Pending")
    assert {c["observedGeneration"] for c in conds.values()} == {3}
    ready = render_gateway_status(gateway(generation=3), "10.96.0.9", transition_time="t")["status"]
    assert ready["addresses"] == [{"type": "IPAddress", "value": "10.96.0.9"}]
    assert {c["type"]: c["status"] for c in ready["conditions"]} == {"Accepted": "True", "Programmed": "True"}


def test_headless_service_leaves_the_gateway_pending(kube: FakeKubeApiServer, tmp_path: Path) -> None:
    """A Service answered with clusterIP None (no address yet): Programmed=False, no addresses."""
    kube.apply(gateway_obj())
    kube.apply({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "waypoint", "namespace": "default",
                                                                     "labels": {MANAGED_LABEL: MANAGED_VALUE}},
                "spec": {"clusterIP": "None"}})
    result = controller(kube, tmp_path).reconcile(snapshot(gateway_obj()))
    assert result.conflicts == []
    gw = kube.get("gateway.networking.k8s.io/v1", "Gateway", "default", "waypoint")
    assert gw is not None and "addresses" not in gw["status"]
    assert {c["type"]: (c["status"], c["reason"]) for c in gw["status"]["conditions"]} == {
        "Accepted": ("True", "Accepted"), "Programmed": ("False", "Pending")}


def test_hostile_strings_reach_the_api_server_as_values(kube: FakeKubeApiServer, tmp_path: Path) -> None:
    """What goes over the wire is JSON of the rendered dicts: a value full of YAML/JSON syntax arrives as
    exactly that string, and adds no field anywhere."""
    evil = 'img"\n  privileged: true\nkind: Secret\n{"a": 1}'
    kube.apply(gateway_obj())
    api = api_client_for(KubeSourceOptions(kubeconfig=kube.write_kubeconfig(tmp_path / "kubeconfig")))
    WaypointController(api, WaypointControllerOptions(image=evil, istiod_address=ISTIOD, trust_domain="td\n: x"),
                       clock=lambda: "t").reconcile(snapshot(gateway_obj()))
    (sent,) = [r.body for r in kube.requests if r.method == "PATCH" and r.path.endswith("/deployments/waypoint")]
    assert sent == render_waypoint(gateway(), image=evil, istiod_address=ISTIOD, trust_domain="td\n: x")[1]
    (c,) = sent["spec"]["template"]["spec"]["containers"]
    assert c["image"] == evil and "privileged" not in c and sent["kind"] == "Deployment"
    assert c["args"][c["args"].index("--trust-domain") + 1] == "td\n: x"


# -- objects that are not ours (issue 14) ----------------------------------------------------------
def victim_service() -> dict[str, Any]:
    """The application's own Service ``reviews``: its selector and ports, no managed label."""
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "reviews", "namespace": "default", "labels": {"app": "reviews"}},
            "spec": {"type": "ClusterIP", "clusterIP": "10.96.9.9", "selector": {"app": "reviews"},
                     "ports": [{"name": "http", "port": 9080, "targetPort": 9080, "protocol": "TCP"}]}}


def conditions(kube: FakeKubeApiServer, name: str) -> dict[str, dict[str, Any]]:
    gw = kube.get("gateway.networking.k8s.io/v1", "Gateway", "default", name)
    assert gw is not None
    return {c["type"]: c for c in gw["status"]["conditions"]}


def test_foreign_service_is_left_alone_and_reported(kube: FakeKubeApiServer, tmp_path: Path) -> None:
    """A waypoint Gateway named like an existing Service must not take it over: the Service stays byte for
    byte as it was (no ownerReference to the Gateway, whose deletion would garbage-collect it), nothing
    else is deployed under that name, and the Gateway says why it is not programmed."""
    before = kube.apply(victim_service())
    kube.apply(gateway_obj(name="reviews", uid="attacker-uid"))
    result = controller(kube, tmp_path).reconcile(snapshot(gateway_obj(name="reviews", uid="attacker-uid")))
    assert kube.get("v1", "Service", "default", "reviews") == before
    # all or nothing: a waypoint Deployment running as ServiceAccount ``reviews`` would get its identity
    assert kube.get("apps/v1", "Deployment", "default", "reviews") is None
    assert kube.get("v1", "ServiceAccount", "default", "reviews") is None
    assert not [r for r in kube.requests if r.method == "PATCH" and "/reviews" in r.path
                and not r.path.endswith("/status")]
    assert result.conflicts and "Service default/reviews" in result.conflicts[0]
    conds = conditions(kube, "reviews")
    assert conds["Accepted"]["status"] == "True"
    assert (conds["Programmed"]["status"], conds["Programmed"]["reason"]) == ("False", "Invalid")
    assert "Service default/reviews" in conds["Programmed"]["message"]
    assert "gateway.istio.io/managed" in conds["Programmed"]["message"]
    gw = kube.get("gateway.networking.k8s.io/v1", "Gateway", "default", "reviews")
    assert gw is not None and "addresses" not in gw["status"]


def test_foreign_service_account_blocks_the_deployment(kube: FakeKubeApiServer, tmp_path: Path) -> None:
    """The application's ServiceAccount: no waypoint may run under its identity, and it is not relabelled."""
    before = kube.apply({"apiVersion": "v1", "kind": "ServiceAccount",
                         "metadata": {"name": "reviews", "namespace": "default"}})
    kube.apply(gateway_obj(name="reviews"))
    result = controller(kube, tmp_path).reconcile(snapshot(gateway_obj(name="reviews")))
    assert kube.get("v1", "ServiceAccount", "default", "reviews") == before
    assert kube.get("apps/v1", "Deployment", "default", "reviews") is None
    assert kube.get("v1", "Service", "default", "reviews") is None
    assert len(result.conflicts) == 1 and "ServiceAccount default/reviews" in result.conflicts[0]
    assert "ServiceAccount default/reviews" in conditions(kube, "reviews")["Programmed"]["message"]


def test_conflict_clears_once_the_foreign_object_is_gone(kube: FakeKubeApiServer, tmp_path: Path) -> None:
    kube.apply(victim_service())
    kube.apply(gateway_obj(name="reviews"))
    ctl = controller(kube, tmp_path)
    snap = snapshot(gateway_obj(name="reviews"))
    assert ctl.reconcile(snap).conflicts
    before = len(kube.requests)
    again = ctl.reconcile(snap)  # still there: still refused, the unchanged status is not rewritten
    assert again.conflicts and not [r for r in kube.requests[before:] if r.method == "PATCH"]
    kube.delete("v1", "Service", "default", "reviews")
    result = ctl.reconcile(snap)
    assert result.conflicts == [] and result.errors == []
    svc = kube.get("v1", "Service", "default", "reviews")
    assert svc is not None and svc["spec"]["selector"] == {GATEWAY_NAME_LABEL: "reviews"}
    assert kube.get("apps/v1", "Deployment", "default", "reviews") is not None
    conds = conditions(kube, "reviews")
    assert (conds["Programmed"]["status"], conds["Programmed"]["reason"]) == ("True", "Programmed")


def test_an_object_labelled_ours_is_updated(kube: FakeKubeApiServer, tmp_path: Path) -> None:
    """An object carrying our managed label (left by a previous controller, or a Gateway of that name
    deleted and created again) is ours: applied normally, with the version just read as a precondition,
    and its controller reference moved to the current Gateway."""
    old = kube.apply({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {
        "name": "waypoint", "namespace": "default", "labels": {MANAGED_LABEL: MANAGED_VALUE},
        "ownerReferences": [{"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway", "name": "waypoint",
                             "uid": "previous-gateway", "controller": True}]},
        "spec": {"template": {"spec": {"containers": [{"name": "istio-proxy", "image": "old"}]}}}})
    kube.apply(gateway_obj())
    result = controller(kube, tmp_path).reconcile(snapshot(gateway_obj()))
    assert result.conflicts == [] and result.errors == []
    dep = kube.get("apps/v1", "Deployment", "default", "waypoint")
    assert dep is not None and dep["spec"]["template"]["spec"]["containers"][0]["image"] == IMAGE
    assert [r["uid"] for r in dep["metadata"]["ownerReferences"]] == ["gw-uid-1"]
    (sent,) = [r.body for r in kube.requests if r.method == "PATCH" and r.path.endswith("/deployments/waypoint")]
    assert sent["metadata"]["resourceVersion"] == old["metadata"]["resourceVersion"]
    # objects that did not exist are created without a precondition
    (svc,) = [r.body for r in kube.requests if r.method == "PATCH" and r.path.endswith("/services/waypoint")]
    assert "resourceVersion" not in svc["metadata"]


def test_object_replaced_between_read_and_apply_is_not_taken_over(kube: FakeKubeApiServer, tmp_path: Path) -> None:
    """The apply carries the version read: an object replaced in between (a 409) is left alone."""
    kube.apply({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {
        "name": "waypoint", "namespace": "default", "labels": {MANAGED_LABEL: MANAGED_VALUE}}})
    kube.apply(gateway_obj())
    swapped: list[dict[str, Any]] = []

    def replace_after_read(request: Any) -> tuple[int, Any]:
        obj = kube.get("v1", "ServiceAccount", "default", "waypoint")
        if not swapped:  # between our GET and our apply, someone else's object takes the name
            swapped.append(kube.apply({"apiVersion": "v1", "kind": "ServiceAccount",
                                       "metadata": {"name": "waypoint", "namespace": "default"}}))
        return 200, obj

    kube.add_route("GET", r"/api/v1/namespaces/default/serviceaccounts/waypoint", replace_after_read)
    result = controller(kube, tmp_path).reconcile(snapshot(gateway_obj()))
    assert result.errors and "409" in result.errors[0]
    assert kube.get("v1", "ServiceAccount", "default", "waypoint") == swapped[0]


def test_foreign_controller_owner_is_a_conflict(kube: FakeKubeApiServer, tmp_path: Path) -> None:
    owned = {"apiVersion": "v1", "kind": "Service", "metadata": {
        "name": "waypoint", "namespace": "default", "labels": {MANAGED_LABEL: MANAGED_VALUE},
        "ownerReferences": [{"apiVersion": "example.com/v1", "kind": "App", "name": "shop", "uid": "x",
                             "controller": True}]}, "spec": {"selector": {"app": "shop"}}}
    before = kube.apply(owned)
    kube.apply(gateway_obj())
    (conflict,) = controller(kube, tmp_path).reconcile(snapshot(gateway_obj())).conflicts
    assert "controlled by App shop" in conflict
    assert kube.get("v1", "Service", "default", "waypoint") == before


def test_is_ours() -> None:
    gw = gateway(name="wp")
    mine = {MANAGED_LABEL: MANAGED_VALUE}
    ref = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway", "name": "wp", "uid": "other",
           "controller": True}
    assert is_ours({"metadata": {"labels": mine}}, gw)
    assert is_ours({"metadata": {"labels": mine, "ownerReferences": [ref]}}, gw)
    assert is_ours({"metadata": {"labels": mine, "ownerReferences": [{**ref, "name": "x", "controller": False}]}}, gw)
    assert not is_ours({"metadata": {}}, gw)
    assert not is_ours({"metadata": {"labels": {"app": "wp"}}}, gw)
    # Istio's other gateway controller's objects are not ours either
    assert not is_ours({"metadata": {"labels": {MANAGED_LABEL: "istio.io-gateway-controller"}}}, gw)
    assert not is_ours({"metadata": {"labels": mine, "ownerReferences": [{**ref, "name": "x"}]}}, gw)
    assert not is_ours({"metadata": {"labels": mine, "ownerReferences": [{**ref, "kind": "ReplicaSet"}]}}, gw)
