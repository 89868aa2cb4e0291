"""The server's translator keeps per-service resources serialised (``encoded=True``): same bytes as
the message translator, unchanged services keep their very ``Encoded`` objects, and the control
plane's ``VersionedCache`` versions only what a change rebuilt, without serialising it again."""

from __future__ import annotations

from istiod_lite.controlplane.snapshots import VersionedCache, to_resource_snapshot
from istiod_lite.model import ConfigSnapshot, parse_object
from istiod_lite.translator import WaypointAssembly
from istiod_lite.translator.binding.waypoints import WaypointRef
from istiod_lite.translator.core.output import Encoded, EnvoyResources, as_message
from istiod_lite.translator.shape import hbone
from istiod_lite.xds.resources import VersionedResource
from tests.support.snapshots import load_resources, replaced

MESH = """\
apiVersion: v1
kind: Namespace
metadata: {name: app, labels: {istio.io/dataplane-mode: ambient, istio.io/use-waypoint: waypoint}}
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
spec: {clusterIP: 127.10.0.2, selector: {app: side}, ports: [{name: http, port: 80}, {name: tcp, port: 9000}]}
---
apiVersion: v1
kind: Pod
metadata: {name: echo-1, namespace: app, labels: {app: echo}}
status: {podIP: 127.0.3.1}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: side, namespace: app}
spec:
  host: side
  subsets: [{name: v1, labels: {version: v1}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: app}
spec:
  targetRefs: [{kind: Service, group: "", name: echo}]
  action: DENY
  rules: [{to: [{operation: {paths: [/admin]}}]}]
"""
REF = WaypointRef("app", "waypoint")
CDS_URL = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ROUTE_URL = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
ECDS_URL = "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig"


def _named(versioned: dict[str, list[VersionedResource]], type_url: str, name: str) -> VersionedResource:
    return next(r for r in versioned[type_url] if r.name == name)


def _vs(prefix: str) -> object:
    return parse_object({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
                         "metadata": {"name": "echo", "namespace": "app"},
                         "spec": {"hosts": ["echo"], "http": [{"match": [{"uri": {"prefix": prefix}}],
                                                               "route": [{"destination": {"host": "side"}}]},
                                                              {"route": [{"destination": {"host": "echo"}}]}]}})


def _bytes(res: EnvoyResources) -> dict[str, dict[str, bytes]]:
    return {t: {n: as_message(r).SerializeToString(deterministic=True) for n, r in named.items()}
            for t, named in res.by_type.items()}


def test_encoded_output_has_the_same_bytes_and_keeps_unchanged_objects() -> None:
    base = load_resources(MESH)
    s1 = ConfigSnapshot.build(base, 1)
    plain, server = WaypointAssembly(REF), WaypointAssembly(REF, encoded=True)
    out1 = server.shared(s1)
    assert _bytes(out1) == _bytes(plain.shared(s1))
    assert all(isinstance(r, Encoded) for r in out1.clusters.values() if "inbound-vip" in as_message(r).name)
    assert isinstance(out1.endpoints["inbound-vip|80|http|echo.app.svc.cluster.local"], Encoded)
    assert isinstance(out1.listeners[hbone.MAIN_INTERNAL], Encoded)
    assert to_resource_snapshot(out1).types == to_resource_snapshot(plain.shared(s1)).types

    s2, _ = replaced(s1, base, _vs("/api"), 2)
    out2 = server.shared(s2)
    assert _bytes(out2) == _bytes(plain.shared(s2))
    side = "inbound-vip|9000|tcp|side.app.svc.cluster.local"
    assert out2.clusters[side] is out1.clusters[side]  # the other service's fragment is re-used as is
    assert out2.routes["inbound-vip|80|http|echo.app.svc.cluster.local"] is not \
        out1.routes["inbound-vip|80|http|echo.app.svc.cluster.local"]


def test_versioned_cache_versions_only_what_a_route_edit_rebuilt() -> None:
    base = load_resources(MESH)
    s1 = ConfigSnapshot.build(base, 1)
    server = WaypointAssembly(REF, encoded=True)
    cache = VersionedCache()
    first = cache.versioned(server.shared(s1))
    assert cache.last_serialised == sum(len(v) for v in first.values())
    echo_route = "inbound-vip|80|http|echo.app.svc.cluster.local"
    encoded = server.shared(s1).routes[echo_route]
    assert isinstance(encoded, Encoded)
    assert _named(first, ROUTE_URL, echo_route).data is encoded.data  # held once, not copied
    s2, objs = replaced(s1, base, _vs("/api"), 2)
    second = cache.versioned(server.shared(s2))
    assert server.translator.last_rebuilt == 1
    echo = server.translator._fragments["echo.app.svc.cluster.local"][1].resources
    direct = [r for r in second[ECDS_URL] if r.name.endswith("@direct")]  # waypoint-wide: rebuilt per translation
    assert cache.last_serialised == sum(len(v) for v in echo.by_type.values()) + len(direct)  # no main_internal
    side = "inbound-vip|9000|tcp|side.app.svc.cluster.local"
    assert _named(second, CDS_URL, side) is _named(first, CDS_URL, side)
    s3, _ = replaced(s2, objs, _vs("/v2"), 3)
    again = cache.versioned(server.shared(s3))
    route = again["type.googleapis.com/envoy.config.route.v3.RouteConfiguration"]
    assert any(b"/v2" in bytes(r.any_bytes) for r in route)


TELEMETRY = """\
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: logs, namespace: app}
spec: {accessLogging: [{providers: [{name: envoy}]}]}
"""


def test_telemetry_applies_to_a_serialised_main_internal() -> None:
    snap = ConfigSnapshot.build(load_resources(MESH + "---\n" + TELEMETRY), 1)
    server = WaypointAssembly(REF, encoded=True).shared(snap)
    plain = WaypointAssembly(REF).shared(snap)
    assert b"envoy.access_loggers" in as_message(server.listeners[hbone.MAIN_INTERNAL]).SerializeToString()
    assert _bytes(server) == _bytes(plain)
