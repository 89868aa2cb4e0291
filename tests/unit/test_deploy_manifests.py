"""deploy/: every manifest parses, and the ClusterRole grants exactly what istiod-lite sends.

"Exactly" is checked against the requests the fake API server recorded while a real KubeSource
synced (writing why an invalid object of every Istio kind was rejected into its status), a real
TokenReview authenticator reviewed a token and the waypoint controller deployed a waypoint Gateway:
a new watched kind without its RBAC rule (a pod that never becomes ready in a real cluster) fails
here, and so does a rule nothing uses.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import yaml

from istiod_lite.ca.tokenreview import TokenReviewAuthenticator, TokenReviewConfig, api_client_from_config
from istiod_lite.controlplane.ambient_status import AmbientStatusWriter
from istiod_lite.controlplane.waypoint_controller import WaypointController, WaypointControllerOptions
from istiod_lite.model import ConfigSnapshot, parse_object
from istiod_lite.sources import KubeSource, KubeSourceOptions
from istiod_lite.sources.kube import KINDS, api_client_for
from tests.support.fakekube import FakeKubeApiServer, FakeTokenUser
from tests.unit.test_ca_tokenreview import TD, bearer, fake_jwt

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def manifests() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted(DEPLOY.glob("*.yaml")):
        docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d is not None)
    return docs


def find(kind: str, name: str) -> dict[str, Any]:
    (doc,) = [d for d in manifests() if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


def test_every_manifest_parses_and_lives_in_istio_system() -> None:
    docs = manifests()
    kinds = {d["kind"] for d in docs}
    assert kinds == {"Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding",
                     "Deployment", "Service", "PodDisruptionBudget", "CustomResourceDefinition"}
    for d in docs:
        assert d["apiVersion"] and d["metadata"]["name"]
        if d["kind"] not in ("Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"):
            assert d["metadata"]["namespace"] == "istio-system"


def test_crds_define_exactly_the_watched_custom_kinds() -> None:
    """One CRD per Istio and Gateway API kind the source watches, at the path it watches, with a
    status subresource (the status reporter's writes and the Gateway status go there) and a
    structural schema (what apiextensions.k8s.io/v1 requires)."""
    crds = {d["metadata"]["name"]: d for d in manifests() if d["kind"] == "CustomResourceDefinition"}
    custom = [k for k in KINDS if k.optional]
    assert set(crds) == {f"{k.plural}.{k.group}" for k in custom}
    for k in custom:
        spec = crds[f"{k.plural}.{k.group}"]["spec"]
        assert (spec["group"], spec["names"]["kind"], spec["names"]["plural"]) == (k.group, k.kind, k.plural)
        assert spec["names"]["listKind"] == f"{k.kind}List"
        assert spec["scope"] == ("Namespaced" if k.namespaced else "Cluster")
        versions = {v["name"]: v for v in spec["versions"]}
        assert versions[k.version]["served"] and versions[k.version]["storage"]
        assert [v["name"] for v in spec["versions"] if v["storage"]] == [k.version]
        for v in spec["versions"]:
            assert v["subresources"] == {"status": {}}
            schema = v["schema"]["openAPIV3Schema"]
            assert schema["type"] == "object"
            for part in ("spec", "status"):
                assert schema["properties"][part] == {"type": "object", "x-kubernetes-preserve-unknown-fields": True}


def test_deployment_serves_in_cluster_with_readiness_on_15014() -> None:
    deploy = find("Deployment", "istiod-lite")
    pod = deploy["spec"]["template"]
    assert pod["spec"]["serviceAccountName"] == "istiod-lite"
    (container,) = pod["spec"]["containers"]
    assert container["args"][:2] == ["serve", "--in-cluster"]
    assert {p["containerPort"] for p in container["ports"]} == {15010, 15012, 15014}
    probe = container["readinessProbe"]["httpGet"]
    assert (probe["path"], probe["port"]) == ("/ready", 15014)
    service = find("Service", "istiod-lite")
    assert {p["port"] for p in service["spec"]["ports"]} == {15010, 15012, 15014}
    assert service["spec"]["selector"] == pod["metadata"]["labels"]
    pdb = find("PodDisruptionBudget", "istiod-lite")
    assert pdb["spec"]["selector"]["matchLabels"] == pod["metadata"]["labels"]
    binding = find("ClusterRoleBinding", "istiod-lite")
    assert binding["roleRef"]["name"] == "istiod-lite"
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "istiod-lite", "namespace": "istio-system"}]


def test_cluster_role_covers_exactly_the_requests_sent(tmp_path: Path) -> None:
    granted: set[tuple[str, str]] = set()
    for rule in find("ClusterRole", "istiod-lite")["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    granted.add((verb, f"{resource}.{group}" if group else resource))
    with FakeKubeApiServer() as kube:
        kubeconfig = kube.write_kubeconfig(tmp_path / "kubeconfig")
        # one rejected object of every Istio kind: the source writes why into each one's status
        istio_kinds = [k for k in KINDS if k.reports_rejections]
        for k in istio_kinds:
            kube.apply({"apiVersion": k.api_version, "kind": k.kind,
                        "metadata": {"name": "bad", "namespace": "default"}, "spec": {"noSuchField": 1}})
        source = KubeSource(KubeSourceOptions(kubeconfig=kubeconfig, sync_timeout=10.0))
        try:
            update = source.load()
            assert {e.kind for e in update.errors} == {k.kind for k in istio_kinds}
            reporter = source.status_reporter
            assert reporter is not None
            deadline = time.monotonic() + 10  # the watches follow the lists: wait until all are open
            while (kube.open_watches() < len(source.options.kinds) or reporter.stats.written < len(istio_kinds)) \
                    and time.monotonic() < deadline:
                time.sleep(0.01)
            assert reporter.stats.written == len(istio_kinds)
        finally:
            source.close()
        token = fake_jwt()
        kube.add_token(token, FakeTokenUser.service_account("default", "sleep"))
        auth = TokenReviewAuthenticator(api_client_from_config(TokenReviewConfig(kubeconfig=kubeconfig)), TD)
        try:
            assert auth.authenticate(bearer(token), None) is not None
        finally:
            auth.close()
        gw = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
              "metadata": {"name": "waypoint", "namespace": "default", "uid": "u1", "generation": 1},
              "spec": {"gatewayClassName": "istio-waypoint",
                       "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}]}}
        kube.apply(gw)
        controller = WaypointController(
            api_client_for(KubeSourceOptions(kubeconfig=kubeconfig)),
            WaypointControllerOptions(image="istiod-lite:latest", istiod_address="istiod-lite.istio-system.svc",
                                      root_cert_pem="-----BEGIN CERTIFICATE-----\n"))
        assert controller.reconcile(ConfigSnapshot.build([parse_object(gw)])).errors == []
        # istiod's ambient binding status: one object of every kind it writes, each needing a write
        ambient = [
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default"}},
            {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "svc", "namespace": "default",
                                                                "labels": {"istio.io/use-waypoint": "waypoint"}},
             "spec": {"ports": [{"name": "http", "port": 80}]}},
            {"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry",
             "metadata": {"name": "se", "namespace": "default", "labels": {"istio.io/use-waypoint": "waypoint"}},
             "spec": {"hosts": ["a.example.com"], "ports": [{"number": 80, "name": "http", "protocol": "HTTP"}]}},
            {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
             "metadata": {"name": "ap", "namespace": "default"},
             "spec": {"targetRefs": [{"kind": "Gateway", "group": "gateway.networking.k8s.io", "name": "waypoint"}]}},
            {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
             "metadata": {"name": "route", "namespace": "default"},
             "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "svc"}]}},
        ]
        stored = [kube.apply(doc) for doc in ambient]
        stored_gw = kube.get("gateway.networking.k8s.io/v1", "Gateway", "default", "waypoint")
        writer = AmbientStatusWriter(api_client_for(KubeSourceOptions(kubeconfig=kubeconfig)))
        writer.evaluate(ConfigSnapshot.build([parse_object(d) for d in [*stored, stored_gw]]))
        assert writer.stats.written == 5 and writer.stats.failed == 0, writer.stats
        used = kube.resource_requests()
    assert used == granted


async def test_role_grants_exactly_the_lease_requests_of_leader_election(tmp_path: Path) -> None:
    """The Role in istio-system: create, get and update of the one Lease, and nothing else."""
    import asyncio

    from istiod_lite.controlplane.leader import LeaderElectionOptions, LeaderElector

    role = find("Role", "istiod-lite")
    binding = find("RoleBinding", "istiod-lite")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "istiod-lite"}
    granted = {(verb, f"{r}.{g}") for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]
               for verb in rule["verbs"]}
    assert all(rule.get("resourceNames", ["istiod-lite-leader"]) == ["istiod-lite-leader"] for rule in role["rules"])
    with FakeKubeApiServer() as kube:
        api = api_client_for(KubeSourceOptions(kubeconfig=kube.write_kubeconfig(tmp_path / "kubeconfig")))
        elector = LeaderElector(api, LeaderElectionOptions(identity="a", lease_duration=1, renew_deadline=0.6,
                                                           retry_period=0.05))
        task = asyncio.create_task(elector.run())
        while elector.transitions == 0 or len(kube.requests) < 4:  # created, then read and renewed
            await asyncio.sleep(0.02)
        await elector.stop()
        await task
        assert kube.resource_requests() == granted
