"""The waypoint translator's memo with ServiceEntries and WorkloadEntries: every input a fragment
reads (the entry, the WorkloadEntries and pods its selector matches, their namespaces, route
targets that are entries) must be noticed, unrelated changes must not rebuild anything, and a
memoised translation must equal a fresh one byte for byte."""

from __future__ import annotations

from typing import Any

from istiod_lite.model import ConfigSnapshot, parse_object
from istiod_lite.model.base import Resource
from istiod_lite.translator.binding.waypoints import WaypointRef
from istiod_lite.translator.core.output import EnvoyResources
from istiod_lite.translator.waypoint import WaypointTranslator
from tests.support.meshyaml import APP_WAYPOINT
from tests.support.snapshots import load_resources as _load
from tests.support.snapshots import replaced as _replace
from tests.support.snapshots import same_output as _same

MESH = APP_WAYPOINT + """\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: legacy, namespace: app}
spec:
  hosts: [legacy.internal]
  addresses: [240.240.0.1]
  resolution: STATIC
  ports: [{number: 80, name: http, protocol: HTTP}]
  workloadSelector: {labels: {app: legacy}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: vm-1, namespace: app, labels: {app: legacy}}
spec: {address: 10.0.0.1}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: unrelated, namespace: app, labels: {app: other}}
spec: {address: 10.0.0.9}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ext, namespace: app, labels: {istio.io/use-waypoint: none}}
spec:
  hosts: [ext.example.com]
  resolution: DNS
  ports: [{number: 80, name: http, protocol: HTTP}]
  endpoints: [{address: ext1.example.com}]
---
apiVersion: v1
kind: Service
metadata: {name: front, namespace: app}
spec: {clusterIP: 127.10.0.1, selector: {app: front}, ports: [{name: http, port: 80}]}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: front, namespace: app}
spec:
  hosts: [front]
  http:
  - match: [{uri: {prefix: /ext}}]
    route: [{destination: {host: ext.example.com}}]
  - route: [{destination: {host: front}}]
"""
REF = WaypointRef("app", "waypoint")
LEGACY = "inbound-vip|80|http|legacy.internal"


def _we(name: str, address: str, labels: dict[str, str], **meta: Any) -> Resource:
    return parse_object({"apiVersion": "networking.istio.io/v1", "kind": "WorkloadEntry",
                         "metadata": {"name": name, "namespace": "app", "labels": labels, **meta},
                         "spec": {"address": address}})


def _endpoints(out: EnvoyResources, cluster: str) -> list[str]:
    cla = out.endpoints[cluster]
    return sorted(e.endpoint.address.socket_address.address or e.endpoint.address.envoy_internal_address.endpoint_id
                  for loc in cla.endpoints for e in loc.lb_endpoints)


def test_selected_workload_entries_are_inputs_and_unrelated_ones_are_not() -> None:
    base = _load(MESH)
    s1 = ConfigSnapshot.build(base, 1)
    t = WaypointTranslator(REF)
    out1 = t.translate(s1)
    assert _endpoints(out1, LEGACY) == ["10.0.0.1"]

    # An unrelated WorkloadEntry changes: the shortcut cannot skip (the kind is read), no fragment rebuilds.
    s2, base = _replace(s1, base, _we("unrelated", "10.0.0.8", {"app": "other"}), 2)
    out2 = t.translate(s2)
    assert t.last_rebuilt == 0 and _same(out2, out1)

    # A new entry matching the selector: the entry's fragment rebuilds with it.
    s3, base = _replace(s2, base, _we("vm-2", "10.0.0.2", {"app": "legacy"}), 3)
    out3 = t.translate(s3)
    assert t.last_rebuilt == 1
    assert _endpoints(out3, LEGACY) == ["10.0.0.1", "10.0.0.2"]
    assert _same(out3, WaypointTranslator(REF).translate(s3))

    # An entry leaves the selection by changing its labels.
    s4, base = _replace(s3, base, _we("vm-1", "10.0.0.1", {"app": "gone"}), 4)
    out4 = t.translate(s4)
    assert _endpoints(out4, LEGACY) == ["10.0.0.2"]
    assert _same(out4, WaypointTranslator(REF).translate(s4))

    # The namespace turns ambient: the selected entry is now reached over HBONE.
    ns = parse_object({"apiVersion": "v1", "kind": "Namespace", "metadata": {
        "name": "app", "labels": {"istio.io/use-waypoint": "waypoint", "istio.io/dataplane-mode": "ambient"}}})
    s5, base = _replace(s4, base, ns, 5)
    out5 = t.translate(s5)
    assert _endpoints(out5, LEGACY) == ["10.0.0.2:80"]
    assert _same(out5, WaypointTranslator(REF).translate(s5))


def test_a_service_entry_route_target_and_its_edits_reach_a_memoised_waypoint() -> None:
    base = _load(MESH)
    s1 = ConfigSnapshot.build(base, 1)
    t = WaypointTranslator(REF)
    out1 = t.translate(s1)
    cluster = out1.clusters["outbound|80||ext.example.com"]
    assert [e.endpoint.address.socket_address.address for loc in cluster.load_assignment.endpoints
            for e in loc.lb_endpoints] == ["ext1.example.com"]

    ext = parse_object({"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry", "metadata": {
        "name": "ext", "namespace": "app", "labels": {"istio.io/use-waypoint": "none"}}, "spec": {
        "hosts": ["ext.example.com"], "resolution": "DNS", "ports": [{"number": 80, "name": "http",
                                                                       "protocol": "HTTP"}],
        "endpoints": [{"address": "ext2.example.com"}]}})
    s2, base = _replace(s1, base, ext, 2)
    out2 = t.translate(s2)
    cluster = out2.clusters["outbound|80||ext.example.com"]
    assert [e.endpoint.address.socket_address.address for loc in cluster.load_assignment.endpoints
            for e in loc.lb_endpoints] == ["ext2.example.com"]
    assert t.last_rebuilt == 1  # only the fragment routing to it
    assert _same(out2, WaypointTranslator(REF).translate(s2))

    # The entry disappears: the route keeps its cluster name (unresolved: inbound-vip), no outbound cluster.
    s3, base = _replace(s2, base, ext, 3, delete=True)
    out3 = t.translate(s3)
    assert "outbound|80||ext.example.com" not in out3.clusters
    assert _same(out3, WaypointTranslator(REF).translate(s3))


def test_binding_a_service_entry_and_a_workload_entry_changes_the_listener() -> None:
    base = _load(MESH)
    s1 = ConfigSnapshot.build(base, 1)
    t = WaypointTranslator(REF)
    t.translate(s1)
    gw = parse_object({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway", "metadata": {
        "name": "waypoint", "namespace": "app", "labels": {"istio.io/waypoint-for": "all"}}, "spec": {
        "gatewayClassName": "istio-waypoint", "addresses": [{"type": "IPAddress", "value": "127.0.1.1"}],
        "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}]}})
    s2, base = _replace(s1, base, gw, 2)
    out2 = t.translate(s2)  # every entry of the namespace now binds as a workload too
    assert "10.0.0.1" in str(out2.listeners["main_internal"])
    assert _same(out2, WaypointTranslator(REF).translate(s2))
