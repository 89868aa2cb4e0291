"""The waypoint translator's memo with route targets: a fragment (and the whole-waypoint shortcut)
must notice changes to what its routes point at, including services this waypoint does not own,
and a memoised translation must equal a fresh one byte for byte."""

from __future__ import annotations

from typing import Any

from istiod_lite.model import ConfigSnapshot, parse_object
from istiod_lite.model.base import Resource
from istiod_lite.translator.binding.waypoints import WaypointRef
from istiod_lite.translator.waypoint import WaypointTranslator
from tests.support.snapshots import chain_routes
from tests.support.snapshots import load_resources as _load
from tests.support.snapshots import replaced as _replace
from tests.support.snapshots import same_output as _same

MESH = """\
apiVersion: v1
kind: Namespace
metadata: {name: app, labels: {istio.io/dataplane-mode: ambient, istio.io/use-waypoint: waypoint}}
---
apiVersion: v1
kind: Namespace
metadata: {name: backend, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: app}
spec:
  gatewayClassName: istio-waypoint
  addresses: [{type: IPAddress, value: 127.0.1.1}]
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
---
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: app}
spec: {clusterIP: 127.10.0.1, selector: {app: echo}, ports: [{name: http, port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: side, namespace: app}
spec: {clusterIP: 127.10.0.2, selector: {app: side}, ports: [{name: http, port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: api, namespace: backend}
spec: {clusterIP: 127.10.1.1, selector: {app: api}, ports: [{name: http, port: 8080}]}
---
apiVersion: v1
kind: Pod
metadata: {name: api-1, namespace: backend, labels: {app: api}}
status: {podIP: 127.0.3.1}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: echo, namespace: app}
spec:
  hosts: [echo]
  http:
  - match: [{uri: {prefix: /api}}]
    route: [{destination: {host: api.backend.svc.cluster.local}}]
  - route: [{destination: {host: side}}]
"""
REF = WaypointRef("app", "waypoint")


def _doc(kind: str, ns: str, name: str, spec: dict[str, Any], api: str = "v1", **extra: Any) -> Resource:
    return parse_object({"apiVersion": api, "kind": kind, "metadata": {"name": name, "namespace": ns, **extra},
                         "spec": spec})


def test_outbound_target_changes_reach_a_memoised_waypoint() -> None:
    base = _load(MESH)
    s1 = ConfigSnapshot.build(base, 1)
    t = WaypointTranslator(REF)
    out1 = t.translate(s1)
    assert "outbound|8080||api.backend.svc.cluster.local" in out1.clusters
    assert len(out1.endpoints["outbound|8080||api.backend.svc.cluster.local"].endpoints[0].lb_endpoints) == 1

    # The target (bound to no waypoint of ours) changes its port: the shortcut must not hide it.
    api2 = _doc("Service", "backend", "api", {"clusterIP": "127.10.1.1", "selector": {"app": "api"},
                                              "ports": [{"name": "http", "port": 9090}]})
    s2, base2 = _replace(s1, base, api2, 2)
    out2 = t.translate(s2)
    assert "outbound|9090||api.backend.svc.cluster.local" in out2.clusters
    assert "outbound|8080||api.backend.svc.cluster.local" not in out2.clusters
    assert t.last_rebuilt == 1  # only echo's fragment names api
    assert _same(out2, WaypointTranslator(REF).translate(s2))

    # A new pod of the target: its outbound endpoints follow.
    pod = parse_object({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "api-2", "namespace": "backend",
                        "labels": {"app": "api"}}, "status": {"podIP": "127.0.3.2"}})
    s3, _ = _replace(s2, base2, pod, 3)
    out3 = t.translate(s3)
    assert len(out3.endpoints["outbound|9090||api.backend.svc.cluster.local"].endpoints[0].lb_endpoints) == 2
    assert _same(out3, WaypointTranslator(REF).translate(s3))


def test_owned_target_destination_rule_changes_the_route_hash() -> None:
    base = _load(MESH)
    s1 = ConfigSnapshot.build(base, 1)
    t = WaypointTranslator(REF)
    t.translate(s1)
    dr = _doc("DestinationRule", "app", "side", {"host": "side", "trafficPolicy": {
        "loadBalancer": {"consistentHash": {"httpHeaderName": "x-user"}}}}, api="networking.istio.io/v1")
    s2, _ = _replace(s1, base, dr, 2)
    out = t.translate(s2)
    hcm_routes = chain_routes(out, "inbound-vip|80|http|echo.app.svc.cluster.local")
    to_side = [r for r in hcm_routes if r.route.cluster == "inbound-vip|80|http|side.app.svc.cluster.local"]
    assert to_side and to_side[0].route.hash_policy[0].header.header_name == "x-user"
    assert _same(out, WaypointTranslator(REF).translate(s2))


def test_unrelated_service_change_keeps_the_whole_waypoint_shortcut() -> None:
    base = _load(MESH)
    other = _doc("Service", "backend", "unrelated", {"clusterIP": "127.10.1.9", "ports": [{"port": 1}]})
    base.append(other)
    s1 = ConfigSnapshot.build(base, 1)
    t = WaypointTranslator(REF)
    out1 = t.translate(s1)
    changed = _doc("Service", "backend", "unrelated", {"clusterIP": "127.10.1.9", "ports": [{"port": 2}]})
    s2, _ = _replace(s1, base, changed, 2)
    assert t.translate(s2) is out1


def test_virtual_service_edit_elsewhere_keeps_the_shortcut_but_one_here_is_seen() -> None:
    """A VirtualService in a namespace that is neither the waypoint's nor a bound service's cannot
    route this waypoint's services: editing it keeps the shortcut.  One in the waypoint's
    namespace (here: naming ``side``) is translated."""
    base = _load(MESH)
    far = _doc("VirtualService", "backend", "far", {"hosts": ["api"], "http": [{"route": [
        {"destination": {"host": "api"}}]}]}, api="networking.istio.io/v1")
    base.append(far)
    s1 = ConfigSnapshot.build(base, 1)
    t = WaypointTranslator(REF)
    out1 = t.translate(s1)
    edited_far = _doc("VirtualService", "backend", "far", {"hosts": ["api"], "http": [{"timeout": "3s", "route": [
        {"destination": {"host": "api"}}]}]}, api="networking.istio.io/v1")
    s2, base2 = _replace(s1, base, edited_far, 2)
    assert t.translate(s2) is out1
    near = _doc("VirtualService", "app", "side", {"hosts": ["side"], "http": [{"timeout": "3s", "route": [
        {"destination": {"host": "side"}}]}]}, api="networking.istio.io/v1")
    s3, _ = _replace(s2, base2, near, 3)
    out3 = t.translate(s3)
    assert out3 is not out1 and t.last_rebuilt == 1
    assert _same(out3, WaypointTranslator(REF).translate(s3))
    # Routes are served over RDS: the edit changes side's route configuration, not the listener.
    assert out3.listeners["main_internal"] is out1.listeners["main_internal"]
    side = "inbound-vip|80|http|side.app.svc.cluster.local"
    assert out3.routes[side].SerializeToString(deterministic=True) != out1.routes[side].SerializeToString(
        deterministic=True)
