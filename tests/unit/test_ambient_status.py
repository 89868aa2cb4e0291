"""istiod's ambient binding status in the cluster (translator/ambient_status.py, controlplane/ambient_status.py):
a real ControlPlane watching the fake API server with the real ``kubernetes`` client writes
``istio.io/WaypointBound``, ``WaypointAccepted``, HTTPRoute parents and a waypoint's attached services;
each condition appears, changes and clears with the config, and is written only when it changes."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from istiod_lite.controlplane.ambient_status import FIELD_MANAGER
from istiod_lite.controlplane.app import ControlPlane, ControlPlaneOptions
from istiod_lite.controlplane.debounce import DebounceOptions
from istiod_lite.sources import KubeSourceOptions
from tests.e2e.test_kube_source import bookinfo_docs
from tests.support.fakekube import FakeKubeApiServer, RecordedRequest

GW_API = "gateway.networking.k8s.io/v1"
SEC = "security.istio.io/v1"
NET = "networking.istio.io/v1"

ROUTE: dict[str, Any] = {
    "apiVersion": GW_API, "kind": "HTTPRoute", "metadata": {"name": "reviews", "namespace": "bookinfo"},
    "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "reviews", "port": 9080}],
             "rules": [{"backendRefs": [{"name": "reviews", "port": 9080}]}]}}
AP_WAYPOINT: dict[str, Any] = {
    "apiVersion": SEC, "kind": "AuthorizationPolicy", "metadata": {"name": "on-waypoint", "namespace": "bookinfo"},
    "spec": {"targetRefs": [{"kind": "Gateway", "group": "gateway.networking.k8s.io", "name": "waypoint"}],
             "action": "ALLOW", "rules": [{"to": [{"operation": {"methods": ["GET"]}}]}]}}
AP_MISSING: dict[str, Any] = {
    "apiVersion": SEC, "kind": "AuthorizationPolicy", "metadata": {"name": "on-nothing", "namespace": "bookinfo"},
    "spec": {"targetRefs": [{"kind": "Service", "group": "", "name": "nope"}], "action": "ALLOW",
             "rules": [{}]}}
SE: dict[str, Any] = {
    "apiVersion": NET, "kind": "ServiceEntry",
    "metadata": {"name": "ext", "namespace": "bookinfo", "labels": {"istio.io/use-waypoint": "elsewhere"}},
    "spec": {"hosts": ["ext.example.com"], "addresses": ["240.1.0.1"], "ports": [{"number": 80, "name": "http",
                                                                                    "protocol": "HTTP"}],
             "resolution": "STATIC", "endpoints": [{"address": "127.0.3.1"}]}}


@contextlib.asynccontextmanager
async def plane(kube: FakeKubeApiServer, tmp_path: Path) -> AsyncIterator[ControlPlane]:
    cp = ControlPlane(ControlPlaneOptions(
        config_dir=None, grpc_addr="127.0.0.1:0", monitoring_addr="127.0.0.1:0",
        kube=KubeSourceOptions(kubeconfig=kube.write_kubeconfig(tmp_path / "kubeconfig"), sync_timeout=10.0),
        debounce=DebounceOptions(quiet=0.02, max_delay=1.0)))
    await cp.start()
    try:
        yield cp
    finally:
        await cp.stop(grace=0)


async def until(cond: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.02)


def condition(kube: FakeKubeApiServer, api: str, kind: str, name: str, ctype: str) -> dict[str, Any] | None:
    obj = kube.get(api, kind, "bookinfo", name)
    assert obj is not None
    found = [c for c in (obj.get("status") or {}).get("conditions") or () if c["type"] == ctype]
    assert len(found) <= 1
    return found[0] if found else None


def bound(kube: FakeKubeApiServer, kind: str, name: str) -> dict[str, Any] | None:
    return condition(kube, NET if kind == "ServiceEntry" else "v1", kind, name, "istio.io/WaypointBound")


def patches(kube: FakeKubeApiServer, plural: str, name: str) -> list[RecordedRequest]:
    return [r for r in kube.requests if r.method == "PATCH" and r.path.endswith(f"/{plural}/{name}/status")
            and f"fieldManager={FIELD_MANAGER}" in r.query]


def relabel(kube: FakeKubeApiServer, name: str, labels: dict[str, str]) -> None:
    svc = copy.deepcopy(kube.get("v1", "Service", "bookinfo", name))
    assert svc is not None
    svc["metadata"]["labels"] = labels
    svc.pop("status", None)  # as kubectl apply: the stored status stays
    kube.apply(svc)


async def settled(cp: ControlPlane) -> None:
    """The writer has evaluated the control plane's newest snapshot."""
    writer = cp.ambient_status
    assert writer is not None
    await until(lambda: writer.idle(), "the status writer never caught up")


async def test_conditions_appear_change_and_clear_and_are_written_only_on_change(tmp_path: Path) -> None:
    with FakeKubeApiServer() as kube:
        for doc in [*bookinfo_docs(), ROUTE, AP_WAYPOINT, AP_MISSING, SE]:
            kube.apply(doc)
        async with plane(kube, tmp_path) as cp:
            # Services bound through their namespace's label: True, WaypointAccepted.
            await until(lambda: bound(kube, "Service", "reviews") is not None, "no WaypointBound on reviews")
            c = bound(kube, "Service", "reviews")
            assert c is not None and (c["status"], c["reason"]) == ("True", "WaypointAccepted")
            assert "bookinfo/waypoint" in c["message"] and c["lastTransitionTime"]
            # A ServiceEntry naming a waypoint that does not exist: False, WaypointIsNotReady.
            await until(lambda: bound(kube, "ServiceEntry", "ext") is not None, "no WaypointBound on the SE")
            c = bound(kube, "ServiceEntry", "ext")
            assert c is not None and (c["status"], c["reason"]) == ("False", "WaypointIsNotReady")
            assert "bookinfo/elsewhere" in c["message"]
            # AuthorizationPolicies attached by targetRefs.
            await until(lambda: all(condition(kube, SEC, "AuthorizationPolicy", n, "WaypointAccepted") is not None
                                    for n in ("on-nothing", "on-waypoint")), "no WaypointAccepted")
            ok = condition(kube, SEC, "AuthorizationPolicy", "on-waypoint", "WaypointAccepted")
            assert ok is not None and (ok["status"], ok["reason"]) == ("True", "Accepted")
            bad = condition(kube, SEC, "AuthorizationPolicy", "on-nothing", "WaypointAccepted")
            assert bad is not None and (bad["status"], bad["reason"]) == ("False", "TargetNotFound")
            # The HTTPRoute's Service parent, echoed, with istiod's controller name.
            route = kube.get(GW_API, "HTTPRoute", "bookinfo", "reviews")
            assert route is not None
            await until(lambda: bool((kube.get(GW_API, "HTTPRoute", "bookinfo", "reviews") or {}).get("status")),
                        "no HTTPRoute status")
            (parent,) = kube.get(GW_API, "HTTPRoute", "bookinfo", "reviews")["status"]["parents"]  # type: ignore[index]
            assert parent["controllerName"] == "istio.io/gateway-controller"
            assert parent["parentRef"] == {"group": "", "kind": "Service", "name": "reviews", "port": 9080}
            conds = {c["type"]: (c["status"], c["reason"]) for c in parent["conditions"]}
            assert conds == {"Accepted": ("True", "Accepted"), "ResolvedRefs": ("True", "ResolvedRefs"),
                             "ResolvedWaypoints": ("True", "ResolvedWaypoints")}
            # The waypoint Gateway counts what it serves.
            await until(lambda: condition(kube, GW_API, "Gateway", "waypoint", "istio.io/AttachedServices")
                        is not None, "no AttachedServices")
            att = condition(kube, GW_API, "Gateway", "waypoint", "istio.io/AttachedServices")
            assert att is not None and att["message"].startswith("2 service(s) attached: ")
            assert "Service bookinfo/reviews" in att["message"] and "Service bookinfo/ratings" in att["message"]

            # Written once each; a change elsewhere (a pod) writes nothing again.
            await settled(cp)
            counts = {n: len(patches(kube, "services", n)) for n in ("reviews", "ratings")}
            assert counts == {"reviews": 1, "ratings": 1}
            before = len([r for r in kube.requests if r.method == "PATCH"])
            assert cp.ambient_status is not None
            evaluations = cp.ambient_status.stats.evaluations
            pod = next(d for d in bookinfo_docs() if d["kind"] == "Pod")
            pod = copy.deepcopy(pod)
            pod["metadata"]["labels"]["touched"] = "yes"
            kube.apply(pod)
            await until(lambda: cp.ambient_status is not None and cp.ambient_status.stats.evaluations > evaluations,
                        "the pod change was not evaluated")
            await settled(cp)
            assert len([r for r in kube.requests if r.method == "PATCH"]) == before

            # ratings' own label names a missing waypoint: the reason changes.
            relabel(kube, "ratings", {"app": "ratings", "istio.io/use-waypoint": "gone"})
            await until(lambda: (bound(kube, "Service", "ratings") or {}).get("reason") == "WaypointIsNotReady",
                        "the reason did not change")
            c = bound(kube, "Service", "ratings")
            assert c is not None and c["status"] == "False" and "bookinfo/gone" in c["message"]
            await until(lambda: "1 service(s) attached" in (condition(
                kube, GW_API, "Gateway", "waypoint", "istio.io/AttachedServices") or {}).get("message", ""),
                "the attached count did not follow")
            # Opted out: the condition is removed.
            relabel(kube, "ratings", {"app": "ratings", "istio.io/use-waypoint": "none"})
            await until(lambda: bound(kube, "Service", "ratings") is None, "the condition was not cleared")
            # A route backend that does not exist: ResolvedRefs False, BackendNotFound.
            broken = copy.deepcopy(ROUTE)
            broken["spec"]["rules"][0]["backendRefs"][0]["name"] = "missing"
            kube.apply(broken)

            def resolved() -> tuple[str, str]:
                obj = kube.get(GW_API, "HTTPRoute", "bookinfo", "reviews") or {}
                (p,) = obj["status"]["parents"]
                c = next(c for c in p["conditions"] if c["type"] == "ResolvedRefs")
                return c["status"], c["reason"]

            await until(lambda: resolved() == ("False", "BackendNotFound"), "ResolvedRefs did not change")
            await settled(cp)
            written = len([r for r in kube.requests if r.method == "PATCH" and FIELD_MANAGER in r.query])

        # A restart (or a new leader) reads what is there and writes nothing that already says it.
        async with plane(kube, tmp_path) as cp2:
            await until(lambda: cp2.ambient_status is not None and cp2.ambient_status.stats.evaluations >= 1,
                        "the new replica never evaluated")
            await settled(cp2)
            assert len([r for r in kube.requests if r.method == "PATCH" and FIELD_MANAGER in r.query]) == written


AP_ZTUNNEL: dict[str, Any] = {
    "apiVersion": SEC, "kind": "AuthorizationPolicy", "metadata": {"name": "l4", "namespace": "bookinfo"},
    "spec": {"selector": {"matchLabels": {"app": "reviews"}}, "action": "ALLOW",
             "rules": [{"from": [{"source": {"namespaces": ["bookinfo"]}}]}]}}


def ztunnel_accepted(kube: FakeKubeApiServer) -> dict[str, Any] | None:
    return condition(kube, SEC, "AuthorizationPolicy", "l4", "ZtunnelAccepted")


async def test_ztunnel_accepted_appears_changes_and_clears(tmp_path: Path) -> None:
    """Policies without targetRefs are ztunnel's: ``ZtunnelAccepted`` with istiod's reasons."""
    with FakeKubeApiServer() as kube:
        for doc in [*bookinfo_docs(), AP_ZTUNNEL]:
            kube.apply(doc)
        async with plane(kube, tmp_path) as cp:
            await until(lambda: ztunnel_accepted(kube) is not None, "no ZtunnelAccepted")
            c = ztunnel_accepted(kube)
            assert c is not None and (c["status"], c["reason"], c["message"]) == ("True", "Accepted",
                                                                                  "attached to ztunnel")
            # An HTTP attribute in an ALLOW rule: served without that rule (True), reason UnsupportedValue.
            l7 = copy.deepcopy(AP_ZTUNNEL)
            l7["spec"]["rules"][0]["to"] = [{"operation": {"methods": ["GET"]}}]
            kube.apply(l7)
            await until(lambda: (ztunnel_accepted(kube) or {}).get("reason") == "UnsupportedValue",
                        "the reason did not change for an L7 attribute")
            c = ztunnel_accepted(kube)
            assert c is not None and c["status"] == "True"
            assert "(found: methods)" in c["message"] and "more restrictive" in c["message"], c
            # CUSTOM is not served to ztunnel at all: False.
            custom = copy.deepcopy(AP_ZTUNNEL)
            custom["spec"]["action"] = "CUSTOM"
            custom["spec"]["provider"] = {"name": "ext-authz"}
            custom["spec"]["rules"] = [{"to": [{"operation": {"ports": ["9080"]}}]}]
            kube.apply(custom)
            await until(lambda: (ztunnel_accepted(kube) or {}).get("status") == "False", "CUSTOM not refused")
            c = ztunnel_accepted(kube)
            assert c is not None and c["reason"] == "UnsupportedValue" and "CUSTOM" in c["message"]
            # Back to L4 only, then attached to a waypoint instead: the condition clears.
            kube.apply(copy.deepcopy(AP_ZTUNNEL))
            await until(lambda: (ztunnel_accepted(kube) or {}).get("reason") == "Accepted", "not Accepted again")
            to_waypoint = copy.deepcopy(AP_ZTUNNEL)
            del to_waypoint["spec"]["selector"]
            to_waypoint["spec"]["targetRefs"] = [{"kind": "Gateway", "group": "gateway.networking.k8s.io",
                                                  "name": "waypoint"}]
            kube.apply(to_waypoint)
            await until(lambda: ztunnel_accepted(kube) is None, "ZtunnelAccepted was not cleared")
            await until(lambda: condition(kube, SEC, "AuthorizationPolicy", "l4", "WaypointAccepted") is not None,
                        "WaypointAccepted did not replace it")
            await settled(cp)
