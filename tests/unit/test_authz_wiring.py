"""Authorization wired into the waypoint translator: typed MeshConfig ext_authz providers, the
mesh's root namespace, the clusters the filters call (ext_authz services, remote JWKS), and memo
keys that notice a mesh config or provider Service change."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from envoy.config.cluster.v3 import cluster_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2

from istiod_lite.model import ConfigSnapshot, ResourceKey, parse_object
from istiod_lite.model.base import Resource
from istiod_lite.model.meshconfig import MeshConfig, MeshConfigInvalid, parse_mesh_config
from istiod_lite.translator.authz import ClusterRequest, parse_providers, request_cluster
from istiod_lite.translator.binding.waypoints import WaypointRef
from istiod_lite.translator.core.output import EnvoyResources
from istiod_lite.translator.waypoint import WaypointTranslator
from istiod_lite.translator.waypoint.assembly import translate_waypoint
from tests.unit.test_authz_custom_jwt import MESH as RAW_MESH
from tests.unit.test_authz_helpers import snapshot

REF = WaypointRef("shop", "waypoint")
HTTP_CLUSTER = "outbound|8000||ext-authz.authz.svc.cluster.local"
GRPC_CLUSTER = "outbound|9000||ext-authz.authz.svc.cluster.local"

BASE = """\
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {istio.io/use-waypoint: waypoint}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: shop}
spec:
  gatewayClassName: istio-waypoint
  addresses: [{type: IPAddress, value: 127.0.1.9}]
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
---
apiVersion: v1
kind: Service
metadata: {name: cart, namespace: shop}
spec: {clusterIP: 127.10.1.9, selector: {app: cart}, ports: [{name: http, port: 8080}]}
---
apiVersion: v1
kind: Service
metadata: {name: ext-authz, namespace: authz}
spec: {clusterIP: 127.10.9.9, selector: {app: ext-authz}, ports: [{name: http, port: 8000}, {name: grpc, port: 9000}]}
---
apiVersion: v1
kind: Pod
metadata: {name: ext-authz-1, namespace: authz, labels: {app: ext-authz}}
status: {podIP: 127.0.9.9}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ext, namespace: shop}
spec:
  targetRefs: [{kind: Service, group: "", name: cart}]
  action: CUSTOM
  provider: {name: http-authz}
  rules: [{to: [{operation: {paths: ["/admin/*"]}}]}]
"""


def _mesh(**extra: Any) -> MeshConfig:
    return parse_mesh_config({**RAW_MESH, **extra})


def _load(text: str) -> list[Resource]:
    return [parse_object(d) for d in yaml.safe_load_all(text) if d]


def _replace(previous: ConfigSnapshot, base: list[Resource], new: Resource, rev: int) -> ConfigSnapshot:
    key = ResourceKey.of(new)
    objs = [new if ResourceKey.of(r) == key else r for r in base]
    if all(ResourceKey.of(r) != key for r in base):
        objs.append(new)
    return ConfigSnapshot.build(objs, rev, previous=previous, changed=[key])


_FILTER_OF_CONFIG = {"type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC": "envoy.filters.http.rbac",
                     "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz":
                         "envoy.filters.http.ext_authz",
                     "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication":
                         "envoy.filters.http.jwt_authn"}


def _http_filters(out: EnvoyResources, chain: str = "inbound-vip|8080|http|cart.shop.svc.cluster.local") -> list[str]:
    """The chain's HTTP filters by extension; an authorization slot (ECDS) counts as the filter its
    served config is, and an empty slot (an RBAC enforcing nothing) is left out."""
    for fc in out.listeners["main_internal"].filter_chains:
        if fc.name == chain:
            hcm = hcm_pb2.HttpConnectionManager()
            fc.filters[-1].typed_config.Unpack(hcm)
            names = []
            for f in hcm.http_filters:
                if not f.HasField("config_discovery"):
                    names.append(f.name)
                    continue
                cfg = out.extension_configs[f.name].typed_config
                if cfg.value:
                    names.append(_FILTER_OF_CONFIG[cfg.type_url])
            return names
    raise AssertionError(f"no chain {chain}")


def _same(a: EnvoyResources, b: EnvoyResources) -> bool:
    kinds = ("listeners", "routes", "clusters", "endpoints")
    return all({k: v.SerializeToString(deterministic=True) for k, v in getattr(a, kind).items()}
               == {k: v.SerializeToString(deterministic=True) for k, v in getattr(b, kind).items()}
               for kind in kinds)


# --- the typed model --------------------------------------------------------------------------------

def test_mesh_config_accepts_typed_ext_authz_providers() -> None:
    mesh = _mesh()
    http = mesh.extension_providers[0].envoy_ext_authz_http
    grpc = mesh.extension_providers[1].envoy_ext_authz_grpc
    assert http is not None and grpc is not None
    assert (http.port, http.path_prefix, http.timeout is not None and http.timeout.seconds) == (8000, "/check", 2)
    assert http.include_request_headers_in_check == ("x-ext-authz", "x-pre-*")
    body = http.include_request_body_in_check
    assert body is not None and body.max_request_bytes == 4096
    assert (grpc.service, grpc.fail_open) == ("authz/ext-authz.authz.svc.cluster.local", True)
    # proto3 JSON: a port may be written as a string, as Istio's docs do
    assert parse_mesh_config({"extensionProviders": [{"name": "g", "envoyExtAuthzGrpc": {
        "service": "x.y.svc.cluster.local", "port": "9000"}}]}).extension_providers[0].envoy_ext_authz_grpc.port == 9000  # type: ignore[union-attr]


@pytest.mark.parametrize(("provider", "fragment"), [
    ({"envoyExtAuthzHttp": {"service": "a.b.svc.cluster.local", "port": 0}}, "port"),
    ({"envoyExtAuthzHttp": {"service": "a.b.svc.cluster.local", "port": 80, "pathPrefix": "check"}}, "pathPrefix"),
    ({"envoyExtAuthzHttp": {"service": "ns/", "port": 80}}, "service"),
    ({"envoyExtAuthzHttp": {"service": "a", "port": 80, "includeHeadersInCheck": "x"}}, "includeHeadersInCheck"),
    ({"envoyExtAuthzGrpc": {"service": "a", "port": 80}, "zipkin": {"service": "z", "port": 9411}}, "exactly one"),
])
def test_mesh_config_rejects_bad_ext_authz_providers(provider: dict[str, Any], fragment: str) -> None:
    with pytest.raises(MeshConfigInvalid) as exc:
        parse_mesh_config({"extensionProviders": [{"name": "p", **provider}]})
    assert fragment in str(exc.value)


def test_typed_and_raw_mesh_config_give_the_same_providers() -> None:
    snap = snapshot()
    typed, raw = parse_providers(snap, _mesh()), parse_providers(snap, RAW_MESH)
    assert sorted(typed.by_name) == sorted(raw.by_name) == ["grpc-authz", "http-authz"]
    for name in typed.by_name:
        a, b = typed.by_name[name], raw.by_name[name]
        assert a.http.typed_config == b.http.typed_config and a.cluster == b.cluster
        assert (a.tcp is None) == (b.tcp is None)
    assert typed.by_name["grpc-authz"].cluster.h2 and not typed.by_name["http-authz"].cluster.h2
    assert typed.errors["zipkin"] == raw.errors["zipkin"]


# --- clusters for hosts that are not services ---------------------------------------------------------

def test_request_cluster_static_dns_tls_and_h2() -> None:
    ip = request_cluster(ClusterRequest("outbound|9000||127.0.5.5", "127.0.5.5", 9000))
    assert ip.type == cluster_pb2.Cluster.STATIC and not ip.HasField("transport_socket")
    addr = ip.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address
    assert (addr.address, addr.port_value) == ("127.0.5.5", 9000)
    dns = request_cluster(ClusterRequest("outbound|443||keys.example.com", "keys.example.com", 443, tls=True))
    assert dns.type == cluster_pb2.Cluster.STRICT_DNS and dns.dns_lookup_family == cluster_pb2.Cluster.V4_ONLY
    tls = tls_pb2.UpstreamTlsContext()
    dns.transport_socket.typed_config.Unpack(tls)
    assert tls.sni == "keys.example.com"
    combined = tls.common_tls_context.combined_validation_context
    assert [m.exact for m in combined.default_validation_context.match_subject_alt_names] == ["keys.example.com"]
    assert combined.validation_context_sds_secret_config.name == "file-root:system"
    grpc = request_cluster(ClusterRequest("outbound|9000||authz.example.com", "authz.example.com", 9000, h2=True))
    assert "envoy.extensions.upstreams.http.v3.HttpProtocolOptions" in grpc.typed_extension_protocol_options


# --- the waypoint translator --------------------------------------------------------------------------

def test_mesh_providers_reach_the_waypoint_with_their_clusters() -> None:
    snap = ConfigSnapshot.build(_load(BASE), 1)
    out = translate_waypoint(snap, REF, mesh=_mesh())
    assert _http_filters(out)[:2] == ["envoy.filters.http.rbac", "envoy.filters.http.ext_authz"]
    assert HTTP_CLUSTER in out.clusters and GRPC_CLUSTER in out.clusters  # the provider Service's outbound clusters
    assert [e.endpoint.address.socket_address.address
            for e in out.endpoints[HTTP_CLUSTER].endpoints[0].lb_endpoints] == ["127.0.9.9"]
    # Without the mesh config the provider is unknown: a DENY, and no cluster.
    bare = translate_waypoint(snap, REF)
    assert _http_filters(bare)[0] == "envoy.filters.http.rbac"
    assert "envoy.filters.http.ext_authz" not in _http_filters(bare)
    assert HTTP_CLUSTER not in bare.clusters


def test_remote_jwks_outside_the_mesh_gets_a_static_cluster() -> None:
    ra = """
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt, namespace: shop}
spec:
  targetRefs: [{kind: Service, group: "", name: cart}]
  jwtRules: [{issuer: "https://issuer.test", jwksUri: "http://127.0.5.5:9000/jwks"}]
"""
    out = translate_waypoint(ConfigSnapshot.build(_load(BASE + ra), 1), REF)
    assert out.clusters["outbound|9000||127.0.5.5"].type == cluster_pb2.Cluster.STATIC


def test_a_mesh_config_change_retranslates() -> None:
    snap = ConfigSnapshot.build(_load(BASE), 1)
    t = WaypointTranslator(REF, mesh=_mesh())
    with_provider = t.translate(snap)
    assert "envoy.filters.http.ext_authz" in _http_filters(with_provider)
    assert t.translate(snap) is with_provider  # unchanged: the shortcut
    t.mesh = parse_mesh_config({"extensionProviders": []})  # the provider is gone
    without = t.translate(snap)
    assert "envoy.filters.http.ext_authz" not in _http_filters(without) and HTTP_CLUSTER not in without.clusters
    assert _same(without, WaypointTranslator(REF, mesh=t.mesh).translate(snap))
    t.mesh = _mesh()
    assert _same(t.translate(snap), with_provider)


def test_root_namespace_comes_from_the_mesh_config() -> None:
    policy = """
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: mesh-deny, namespace: mesh-root}
spec:
  targetRefs: [{kind: GatewayClass, group: gateway.networking.k8s.io, name: istio-waypoint}]
  action: DENY
  rules: [{to: [{operation: {methods: [TRACE]}}]}]
"""
    snap = ConfigSnapshot.build(_load(BASE + policy), 1)
    default = translate_waypoint(snap, REF, mesh=_mesh())
    rooted = translate_waypoint(snap, REF, mesh=_mesh(rootNamespace="mesh-root"))
    assert _http_filters(rooted).count("envoy.filters.http.rbac") == _http_filters(default).count(
        "envoy.filters.http.rbac") + 1


def test_a_provider_service_change_reaches_a_memoised_waypoint() -> None:
    base = _load(BASE)
    s1 = ConfigSnapshot.build(base, 1)
    t = WaypointTranslator(REF, mesh=_mesh())
    out1 = t.translate(s1)
    assert HTTP_CLUSTER in out1.clusters
    # The provider's Service (bound to no waypoint) moves its HTTP port: the provider is then
    # unusable (port 8000 is gone), so the chain denies, and the old cluster goes.
    moved = parse_object({"apiVersion": "v1", "kind": "Service",
                          "metadata": {"name": "ext-authz", "namespace": "authz"},
                          "spec": {"clusterIP": "127.10.9.9", "selector": {"app": "ext-authz"},
                                   "ports": [{"name": "http", "port": 8001}, {"name": "grpc", "port": 9000}]}})
    s2 = _replace(s1, base, moved, 2)
    out2 = t.translate(s2)
    assert "envoy.filters.http.ext_authz" not in _http_filters(out2) and HTTP_CLUSTER not in out2.clusters
    assert _same(out2, WaypointTranslator(REF, mesh=t.mesh).translate(s2))
    # A new endpoint of the provider reaches its cluster's endpoints.
    pod = parse_object({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "ext-authz-2", "namespace": "authz",
                        "labels": {"app": "ext-authz"}}, "status": {"podIP": "127.0.9.10"}})
    s3 = _replace(s1, base, pod, 3)
    out3 = WaypointTranslator(REF, mesh=t.mesh)
    t2 = WaypointTranslator(REF, mesh=t.mesh)
    t2.translate(s1)
    got = t2.translate(s3)
    assert len(got.endpoints[HTTP_CLUSTER].endpoints[0].lb_endpoints) == 2
    assert _same(got, out3.translate(s3))


def test_a_provider_port_the_service_does_not_declare_is_unusable() -> None:
    mesh = parse_mesh_config({"extensionProviders": [{"name": "http-authz", "envoyExtAuthzHttp": {
        "service": "ext-authz.authz.svc.cluster.local", "port": 8443}}]})
    providers = parse_providers(snapshot(), mesh)
    assert not providers.by_name
    assert "has no port 8443" in providers.errors["http-authz"]
