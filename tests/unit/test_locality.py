"""Locality: where workloads and proxies are (``clusters/locality.py``), which locality load
balancing applies and what it does to a proxy's endpoints (``clusters/locality_lb.py``), endpoints
from EndpointSlices (``clusters/endpoints.py``), and one translation per proxy place in the server
(``controlplane/proxykinds/waypoint.py``)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from envoy.config.core.v3 import base_pb2, health_check_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from google.protobuf import struct_pb2

from istiod_lite.controlplane.proxykinds import KindContext, WaypointGenerator, WaypointKind, WaypointProxies
from istiod_lite.model import ConfigSnapshot
from istiod_lite.model.core import Pod, Service
from istiod_lite.model.meshconfig import MeshConfig
from istiod_lite.model.networking_dr import LoadBalancerSettings, LocalityLoadBalancerSetting
from istiod_lite.sources import DirectorySource
from istiod_lite.translator import WaypointAssembly, proxy_locality_of
from istiod_lite.translator.binding.waypoints import WaypointRef
from istiod_lite.translator.clusters import locality, locality_lb
from istiod_lite.translator.clusters.locality import ProxyLocality
from istiod_lite.translator.clusters.locality_lb import Group, LabelsOf, LocalityLb
from istiod_lite.xds import typeurls

REF = WaypointRef("app", "waypoint")
CLUSTER = "inbound-vip|80|http|echo.app.svc.cluster.local"

BASE = """apiVersion: v1
kind: Namespace
metadata: {name: app, labels: {istio.io/use-waypoint: waypoint}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: app}
spec:
  gatewayClassName: istio-waypoint
  addresses: [{type: IPAddress, value: 10.0.0.9}]
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
---
apiVersion: v1
kind: Node
metadata: {name: node-a, labels: {topology.kubernetes.io/region: eu, topology.kubernetes.io/zone: a}}
---
apiVersion: v1
kind: Node
metadata: {name: node-b, labels: {topology.kubernetes.io/region: eu, topology.kubernetes.io/zone: b}}
---
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: app}
spec:
  clusterIP: 10.96.0.1
  selector: {app: echo}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Pod
metadata: {name: echo-a, namespace: app, labels: {app: echo}}
spec: {nodeName: node-a}
status: {podIP: 10.1.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: echo-b, namespace: app, labels: {app: echo}}
spec: {nodeName: node-b}
status: {podIP: 10.1.0.2}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: echo, namespace: app}
spec:
  host: echo
  trafficPolicy:
    outlierDetection: {consecutive5xxErrors: 1}
"""

WAYPOINT_POD = """---
apiVersion: v1
kind: Pod
metadata: {{name: waypoint-1, namespace: app, labels: {{gateway.networking.k8s.io/gateway-name: waypoint}}}}
spec: {{nodeName: {node}}}
status: {{podIP: {ip}}}
"""


def load(text: str) -> ConfigSnapshot:
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "c.yaml").write_text(text)
        update = DirectorySource(Path(tmp)).load()
        assert not update.errors, [str(e) for e in update.errors]
        return update.snapshot


def priorities(cla: endpoint_pb2.ClusterLoadAssignment) -> dict[str, int]:
    """endpoint address -> priority of its group."""
    return {e.endpoint.address.socket_address.address: g.priority for g in cla.endpoints for e in g.lb_endpoints}


# -- where things are ------------------------------------------------------------------------------
def test_locality_labels_parse_as_istio_sanitises_them() -> None:
    assert locality.parse("eu.a.rack1") == locality.locality("eu", "a", "rack1")
    assert locality.parse("eu/a") == locality.locality("eu", "a")
    assert locality.parse("") is None
    assert locality.locality("eu", "a") is locality.parse("eu/a/")  # interned: memo inputs stay identical
    # the newer label wins over the older one
    assert locality.label_locality({"istio-locality": "x", "topology.istio.io/locality": "y.z"}) == \
        locality.locality("y", "z")


def test_pod_locality_label_beats_its_node() -> None:
    snap = load(BASE.replace("labels: {app: echo}}\nspec: {nodeName: node-a}",
                             "labels: {app: echo, istio-locality: us.west}}\nspec: {nodeName: node-a}"))
    pods = {p.name: p for p in snap.of_kind(Pod)}
    assert locality.pod_locality(snap, pods["echo-a"]) == locality.locality("us", "west")
    assert locality.pod_locality(snap, pods["echo-b"]) == locality.locality("eu", "b")


def test_proxy_located_by_its_pod_and_node_else_its_node_metadata() -> None:
    keys = frozenset({locality.ZONE, locality.HOSTNAME, "team"})
    snap = load(BASE + WAYPOINT_POD.format(node="node-b", ip="10.0.0.9"))
    at_pod = locality.proxy_locality(snap, "10.0.0.9", {"team": "x"}, "us/east/", "app", keys)
    # the registry's pod wins over anything the node says, and its labels (not the node's) are kept
    assert at_pod == ProxyLocality(locality.locality("eu", "b"), ((locality.HOSTNAME, "node-b"), (locality.ZONE, "b")))
    # no pod at that address (or not in the proxy's namespace): node metadata labels, then node.locality
    by_node = locality.proxy_locality(snap, "10.0.0.8", {"team": "x", locality.ZONE: "z"}, "us/east/", "app", keys)
    assert by_node == ProxyLocality(locality.locality("", "z"), (("team", "x"), (locality.ZONE, "z")))
    assert locality.proxy_locality(snap, "10.0.0.9", {}, "us/east/", "other", keys).locality == \
        locality.locality("us", "east")
    assert locality.proxy_locality(snap, "10.0.0.8", {"istio-locality": "ap.1"}, "us/east/").locality == \
        locality.locality("ap", "1")


# -- which setting ---------------------------------------------------------------------------------
def test_effective_setting_dr_then_traffic_distribution_then_mesh() -> None:
    dr = LoadBalancerSettings(locality_lb_setting=LocalityLoadBalancerSetting(failover_priority=("a",)))
    off = LoadBalancerSettings(locality_lb_setting=LocalityLoadBalancerSetting(enabled=False))
    dist = LocalityLoadBalancerSetting(enabled=True, failover_priority=("b",))
    assert locality_lb.effective(None, dr, dist) == LocalityLb(dr.locality_lb_setting)  # type: ignore[arg-type]
    assert locality_lb.effective(None, off, dist) is None
    assert locality_lb.effective(None, None, dist) == LocalityLb(dist, force=True)
    assert locality_lb.effective(None, None, None) == LocalityLb(locality_lb.MESH_DEFAULT)  # Istio's default mesh
    mesh_off = MeshConfig(locality_lb_setting=LocalityLoadBalancerSetting(enabled=False))
    assert locality_lb.effective(mesh_off, None, None) is None


@pytest.mark.parametrize(("spec", "svc_annotation", "ns_annotation", "want"), [
    ("PreferClose", "", "", "zone"),
    ("PreferSameNode", "PreferClose", "", "node"),
    ("preferclose", "PreferSameNode", "", "node"),  # the field's values are exact; the annotation decides
    ("", "prefersamezone", "PreferSameNode", "zone"),
    ("", "", "PreferSameNode", "node"),
    ("", "bogus", "PreferSameNode", None),  # an unknown annotation means "any"
    ("", "", "", None),
])
def test_traffic_distribution(spec: str, svc_annotation: str, ns_annotation: str, want: str | None) -> None:
    text = BASE.replace("metadata: {name: app, labels: {istio.io/use-waypoint: waypoint}}",
                        "metadata: {name: app, labels: {istio.io/use-waypoint: waypoint}, "
                        f"annotations: {{networking.istio.io/traffic-distribution: '{ns_annotation}'}}}}")
    text = text.replace("metadata: {name: echo, namespace: app}\nspec:\n  clusterIP",
                        "metadata: {name: echo, namespace: app, annotations: "
                        f"{{networking.istio.io/traffic-distribution: '{svc_annotation}'}}}}\nspec:\n"
                        + (f"  trafficDistribution: {spec}\n" if spec else "") + "  clusterIP")
    snap = load(text)
    svc = next(iter(snap.of_kind(Service)))
    got = locality_lb.traffic_distribution(snap, svc)
    assert got == {"zone": locality_lb._SAME_ZONE, "node": locality_lb._SAME_NODE, None: None}[want]


# -- what it does to a proxy's endpoints -----------------------------------------------------------
def _group(region: str, zone: str, *addresses: tuple[str, dict[str, str]]) -> Group:
    g = endpoint_components_pb2.LocalityLbEndpoints()
    g.locality.region, g.locality.zone = region, zone
    for a, _ in addresses:
        e = g.lb_endpoints.add()
        e.endpoint.address.socket_address.address = a
        e.load_balancing_weight.value = 1
    g.load_balancing_weight.value = len(addresses)
    return Group(g, [_const(labels) for _, labels in addresses])


def _const(labels: dict[str, str]) -> LabelsOf:
    return lambda: labels


def _prios(out: list[endpoint_components_pb2.LocalityLbEndpoints]) -> dict[str, int]:
    return {e.endpoint.address.socket_address.address: g.priority for g in out for e in g.lb_endpoints}


def test_failover_needs_outlier_detection_unless_forced() -> None:
    groups = [_group("eu", "a", ("1", {})), _group("us", "x", ("2", {}))]
    proxy = ProxyLocality(locality.locality("eu", "a"))
    lb = LocalityLb(LocalityLoadBalancerSetting(enabled=True))
    assert _prios(locality_lb.apply_to_endpoints(groups, lb, proxy, outlier_detection=False)) == {"1": 0, "2": 0}
    assert _prios(locality_lb.apply_to_endpoints(groups, lb, proxy, outlier_detection=True)) == {"1": 0, "2": 1}
    forced = LocalityLb(LocalityLoadBalancerSetting(enabled=True), force=True)
    groups = [_group("eu", "a", ("1", {})), _group("us", "x", ("2", {}))]
    assert _prios(locality_lb.apply_to_endpoints(groups, forced, proxy, outlier_detection=False)) == {"1": 0, "2": 1}


def test_failover_regions_and_gapless_priorities() -> None:
    groups = [_group("ap", "1", ("ap", {})), _group("eu", "b", ("eu-b", {})), _group("us", "1", ("us", {})),
              _group("", "", ("none", {}))]
    s = LocalityLoadBalancerSetting.model_validate({"failover": [{"from": "eu", "to": "us"}]})
    out = locality_lb.apply_to_endpoints(groups, LocalityLb(s), ProxyLocality(locality.locality("eu", "a")), True)
    # same region (2) -> failover target (3) -> any other region (4): renumbered 0, 1, 2
    assert _prios(out) == {"eu-b": 0, "us": 1, "ap": 2, "none": 2}


def test_failover_priority_splits_groups_by_labels() -> None:
    groups = [_group("eu", "a", ("a-v1", {"v": "1", "zone": "a"}), ("a-v2", {"v": "2", "zone": "a"})),
              _group("eu", "b", ("b-v1", {"v": "1", "zone": "b"}))]
    s = LocalityLoadBalancerSetting(failover_priority=("zone", "v=1"))
    proxy = ProxyLocality(None, (("zone", "a"),))
    out = locality_lb.apply_to_endpoints(groups, LocalityLb(s), proxy, True)
    # all labels match: 0; zone matches, v is not the fixed 1: 1; zone differs: 2
    assert _prios(out) == {"a-v1": 0, "a-v2": 1, "b-v1": 2}
    assert [g.load_balancing_weight.value for g in out] == [1, 1, 1]
    assert len(out) == 3  # the eu/a group was split in two


def test_failover_priority_network_mismatch_ranks_below_everything() -> None:
    groups = [_group("eu", "a", ("far", {locality.NETWORK: "n2", "zone": "a"}), ("near", {"zone": "a"}),
                     ("other-zone", {"zone": "b"}))]
    s = LocalityLoadBalancerSetting(failover_priority=(locality.NETWORK, "zone"))
    out = locality_lb.apply_to_endpoints(groups, LocalityLb(s), ProxyLocality(None, (("zone", "a"),)), True)
    assert _prios(out) == {"near": 0, "other-zone": 1, "far": 2}


def test_distribute_reweights_and_empties_unnamed_localities() -> None:
    groups = [_group("eu", "a", ("a1", {}), ("a2", {})), _group("eu", "b", ("b", {})), _group("us", "1", ("us", {}))]
    s = LocalityLoadBalancerSetting.model_validate(
        {"distribute": [{"from": "eu/a/*", "to": {"eu/a/*": 70, "eu/b": 30}}]})
    out = locality_lb.apply_to_endpoints(groups, LocalityLb(s), ProxyLocality(locality.locality("eu", "a")), False)
    assert [g.load_balancing_weight.value for g in out] == [70, 30, 1]
    assert [len(g.lb_endpoints) for g in out] == [2, 1, 0]
    # a proxy no "from" matches: nothing changes
    groups = [_group("eu", "a", ("a1", {})), _group("us", "1", ("us", {}))]
    out = locality_lb.apply_to_endpoints(groups, LocalityLb(s), ProxyLocality(locality.locality("us", "1")), False)
    assert [len(g.lb_endpoints) for g in out] == [1, 1]


# -- in the translation ----------------------------------------------------------------------------
def _cla(snap: ConfigSnapshot, proxy: ProxyLocality | None, mesh: MeshConfig | None = None
         ) -> endpoint_pb2.ClusterLoadAssignment:
    res = WaypointAssembly(REF, mesh=mesh, proxy=proxy).proxy_resources(snap)
    cla = res.endpoints[CLUSTER]
    assert isinstance(cla, endpoint_pb2.ClusterLoadAssignment)
    return cla


def test_translation_prefers_the_proxys_zone() -> None:
    snap = load(BASE + WAYPOINT_POD.format(node="node-b", ip="10.0.0.9"))
    proxy = proxy_locality_of(snap, REF, "10.0.0.9")
    assert proxy.locality == locality.locality("eu", "b")
    assert priorities(_cla(snap, proxy)) == {"10.1.0.1": 1, "10.1.0.2": 0}
    # unknown proxy locality: both zones are "elsewhere", one priority; groups carry their locality
    cla = _cla(snap, None)
    assert priorities(cla) == {"10.1.0.1": 0, "10.1.0.2": 0}
    assert [(g.locality.zone, g.load_balancing_weight.value) for g in cla.endpoints] == [("a", 1), ("b", 1)]
    # the mesh turns locality load balancing off
    off = MeshConfig(locality_lb_setting=LocalityLoadBalancerSetting(enabled=False))
    assert priorities(_cla(snap, proxy, off)) == {"10.1.0.1": 0, "10.1.0.2": 0}


def test_without_any_locality_the_endpoints_are_as_before() -> None:
    snap = load(BASE.replace("spec: {nodeName: node-a}\n", "").replace("spec: {nodeName: node-b}\n", ""))
    cla = _cla(snap, proxy_locality_of(snap, REF, "10.0.0.9"))
    assert len(cla.endpoints) == 1
    assert not cla.endpoints[0].HasField("locality") and not cla.endpoints[0].HasField("load_balancing_weight")


_SLICE = """---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: echo-x, namespace: app, labels: {{kubernetes.io/service-name: echo{label}}}}}
addressType: IPv4
ports: [{{name: http, port: 9090}}, {{name: other, port: 7000}}]
endpoints:
- addresses: [10.1.0.1]
  targetRef: {{kind: Pod, name: echo-a, namespace: app}}
{extra}
"""


def sliced(label: str, extra: str) -> str:
    return BASE + _SLICE.format(label=label, extra=extra)


@pytest.mark.parametrize(("conditions", "want"), [
    ("", health_check_pb2.HEALTHY),
    ("{ready: true, terminating: true}", health_check_pb2.HEALTHY),
    ("{ready: false, terminating: false}", health_check_pb2.UNHEALTHY),
    ("{ready: false}", None),  # terminating unset counts as terminating: not sent
    ("{ready: false, serving: true, terminating: true}", None),
])
def test_slice_endpoint_health(conditions: str, want: int | None) -> None:
    extra = "- addresses: [192.0.2.1]" + (f"\n  conditions: {conditions}" if conditions else "")
    snap = load(sliced("", extra))
    cla = _cla(snap, None)
    eps = {e.endpoint.address.socket_address.address: e for g in cla.endpoints for e in g.lb_endpoints}
    # the slice wins over the selector: echo-b (selected, not in the slice) is not an endpoint
    assert "10.1.0.2" not in eps and eps["10.1.0.1"].endpoint.address.socket_address.port_value == 9090
    assert (eps["192.0.2.1"].health_status if "192.0.2.1" in eps else None) == want


def test_slice_draining_only_for_persistent_sessions() -> None:
    extra = "- addresses: [192.0.2.1]\n  conditions: {ready: false, serving: true, terminating: true}"
    text = sliced("", extra).replace(
        "metadata: {name: echo, namespace: app}", "metadata: {name: echo, namespace: app, labels: "
        "{istio.io/persistent-session: sticky}}")
    eps = {e.endpoint.address.socket_address.address: e for g in _cla(load(text), None).endpoints
           for e in g.lb_endpoints}
    assert eps["192.0.2.1"].health_status == health_check_pb2.DRAINING


def test_slices_of_other_services_leave_the_selector_in_charge() -> None:
    snap = load(sliced("-other", ""))
    assert set(priorities(_cla(snap, None))) == {"10.1.0.1", "10.1.0.2"}


# -- in the server: one translation per place ------------------------------------------------------
def _node(ip: str, locality_: tuple[str, str] | None = None, **labels: str) -> base_pb2.Node:
    n = base_pb2.Node(id=f"waypoint~{ip}~waypoint-x.app~app.svc.cluster.local")
    n.metadata.fields["NAMESPACE"].string_value = "app"
    n.metadata.fields["INSTANCE_IPS"].string_value = ip
    n.metadata.fields["LABELS"].struct_value.CopyFrom(struct_pb2.Struct(fields={
        k: struct_pb2.Value(string_value=v) for k, v in
        {"gateway.networking.k8s.io/gateway-name": "waypoint", **labels}.items()}))
    if locality_ is not None:
        n.locality.region, n.locality.zone = locality_
    return n


def test_server_translates_once_per_place() -> None:
    kind = WaypointKind()
    gen = kind.generator(KindContext())
    assert isinstance(gen, WaypointGenerator)
    in_a1, in_a2, in_b = (kind.recognise(_node(ip, ("eu", zone))) for ip, zone in
                          (("10.0.0.1", "a"), ("10.0.0.2", "a"), ("10.0.0.3", "b")))
    assert in_a1 is not None and in_a2 is not None and in_b is not None
    assert in_a1.node_locality == "eu/a/" and in_a1.node_labels == ()
    snap = load(BASE)
    gen.update(snap)

    def served(group: WaypointProxies) -> dict[str, int]:
        cla = endpoint_pb2.ClusterLoadAssignment.FromString(
            gen.snapshot(group).of_type(typeurls.ENDPOINT)[CLUSTER].any.value)
        return priorities(cla)

    assert served(in_a1) == served(in_a2) == {"10.1.0.1": 0, "10.1.0.2": 1}
    assert served(in_b) == {"10.1.0.1": 1, "10.1.0.2": 0}
    gen.update(snap)
    assert len(gen._waypoints) == 2  # two places, three proxies
    # a pod at a proxy's address puts it on its node, whatever the node metadata said
    gen.update(load(BASE + WAYPOINT_POD.format(node="node-b", ip="10.0.0.1")))
    assert served(in_a1) == {"10.1.0.1": 1, "10.1.0.2": 0}
    gen.release(in_b)
    gen.release(in_a2)
    gen.release(in_a1)
    gen.update(snap)
    assert len(gen._waypoints) == 1  # nobody connected: translated once, for an unknown place


def test_only_failover_priority_labels_split_proxies() -> None:
    """Proxies differing in labels no ``failoverPriority`` names share a translation."""
    assert locality_lb.failover_priority_labels(load(BASE), None) == frozenset()
    text = BASE.replace("    outlierDetection: {consecutive5xxErrors: 1}",
                        "    outlierDetection: {consecutive5xxErrors: 1}\n"
                        "    loadBalancer: {localityLbSetting: {failoverPriority: [team, 'tier=gold']}}")
    mesh = MeshConfig(locality_lb_setting=LocalityLoadBalancerSetting(failover_priority=("rack",)))
    assert locality_lb.failover_priority_labels(load(text), mesh) == {"team", "tier", "rack"}
    close = BASE.replace("  clusterIP: 10.96.0.1", "  trafficDistribution: PreferClose\n  clusterIP: 10.96.0.1")
    assert locality.HOSTNAME in locality_lb.failover_priority_labels(load(close), None)
    snap = load(text + WAYPOINT_POD.format(node="node-a", ip="10.0.0.9").replace(
        "gateway-name: waypoint}", "gateway-name: waypoint, team: red, pod-template-hash: abc}"))
    assert proxy_locality_of(snap, REF, "10.0.0.9").labels == (("team", "red"),)
