"""GRPCRoute, TCPRoute and TLSRoute: the model's checks (with field paths), Istio's conversion to
VirtualService rules, how they attach to a service on a waypoint, and the cluster watch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from istiod_lite.model import ResourceInvalid, parse_object
from istiod_lite.model import gateway_routes as gr
from istiod_lite.model.networking import TLSMatchAttributes, TLSRoute
from istiod_lite.sources import DirectorySource, KubeSource, KubeSourceOptions
from istiod_lite.translator import find_waypoints
from istiod_lite.translator.binding.waypoints import bindings_of
from istiod_lite.translator.config_warnings import route_warnings
from istiod_lite.translator.routing import grpcroute, l4route
from istiod_lite.translator.routing.mesh_routes import mesh_routes
from istiod_lite.translator.waypoint import bound_views
from istiod_lite.translator.waypoint.translator import service_routes
from tests.support.fakekube import FakeKubeApiServer
from tests.support.meshyaml import APP_WAYPOINT, documents, pod, service

GW = "gateway.networking.k8s.io"


def obj(kind: str, spec: dict[str, Any], version: str = "v1", name: str = "r") -> dict[str, Any]:
    return {"apiVersion": f"{GW}/{version}", "kind": kind, "metadata": {"name": name, "namespace": "app"},
            "spec": spec}


def errors(doc: dict[str, Any]) -> str:
    with pytest.raises(ResourceInvalid) as e:
        parse_object(doc)
    return str(e.value)


PARENT = [{"group": "", "kind": "Service", "name": "echo"}]
BACKEND = [{"name": "b", "port": 80}]


# --------------------------------------------------------------------------- model


@pytest.mark.parametrize("version", ["v1", "v1alpha2"])
@pytest.mark.parametrize("kind", ["GRPCRoute", "TCPRoute", "TLSRoute"])
def test_every_version_istio_reads_is_accepted(kind: str, version: str) -> None:
    spec: dict[str, Any] = {"parentRefs": PARENT, "rules": [{"backendRefs": BACKEND}]}
    if kind == "TLSRoute":
        spec["hostnames"] = ["echo.app.svc.cluster.local"]
    assert isinstance(parse_object(obj(kind, spec, version)), gr.MeshRoute)


def test_v1_is_stricter_than_v1alpha2() -> None:
    two = {"parentRefs": PARENT, "rules": [{"backendRefs": BACKEND}, {"backendRefs": BACKEND}]}
    assert "TCPRoute app/r" in errors(obj("TCPRoute", two)) and "spec.rules: must have at most 1 item" in errors(
        obj("TCPRoute", two))
    parse_object(obj("TCPRoute", two, "v1alpha2"))
    no_hosts = {"parentRefs": PARENT, "rules": [{"backendRefs": BACKEND}]}
    assert "spec.hostnames: at least one hostname is required" in errors(obj("TLSRoute", no_hosts))
    parse_object(obj("TLSRoute", no_hosts, "v1alpha2"))
    assert "unsupported apiVersion/kind" in errors(obj("TLSRoute", no_hosts, "v1alpha3"))


@pytest.mark.parametrize(("match", "message"), [
    ({"method": {}}, "spec.rules[0].matches[0].method: One or both of 'service' or 'method'"),
    ({"method": {"service": "bad/name"}}, "spec.rules[0].matches[0].method: service 'bad/name'"),
    ({"method": {"method": "a.b"}}, "method 'a.b' must only contain valid characters"),
    ({"method": {"type": "RegularExpression", "service": "(x"}}, "invalid RE2 regex"),
    ({"headers": [{"name": "x", "value": "1"}, {"name": "X", "value": "2"}]}, "duplicate names: x"),
])
def test_grpc_match_checks_carry_the_field_path(match: dict[str, Any], message: str) -> None:
    got = errors(obj("GRPCRoute", {"rules": [{"matches": [match]}]}))
    assert got.startswith("GRPCRoute app/r: ") and message in got, got


def test_grpc_filter_names_its_one_field_and_modifiers_are_not_repeated() -> None:
    wrong = {"type": "RequestHeaderModifier", "responseHeaderModifier": {"set": [{"name": "a", "value": "b"}]}}
    got = errors(obj("GRPCRoute", {"rules": [{"filters": [wrong]}]}))
    assert "filter.requestHeaderModifier must be specified" in got
    assert "filter.responseHeaderModifier must be nil" in got
    twice = {"type": "RequestHeaderModifier", "requestHeaderModifier": {"remove": ["x"]}}
    assert "RequestHeaderModifier filter cannot be repeated" in errors(
        obj("GRPCRoute", {"rules": [{"backendRefs": [{**BACKEND[0], "filters": [twice, twice]}]}]}))
    assert "spec.rules[0].filters[0].type: Input should be 'RequestHeaderModifier'" in errors(
        obj("GRPCRoute", {"rules": [{"filters": [{"type": "URLRewrite"}]}]}))  # not a gRPC filter


def test_l4_backends_are_required_and_need_a_port() -> None:
    assert "spec.rules[0].backendRefs" in errors(obj("TCPRoute", {"rules": [{"backendRefs": []}]}))
    assert "Must have port for Service reference" in errors(obj("TCPRoute", {"rules": [{"backendRefs": [
        {"name": "b"}]}]}))


# --------------------------------------------------------------------------- conversion


@pytest.mark.parametrize(("method", "want"), [
    ({"service": "pkg.Svc", "method": "Get"}, {"exact": "/pkg.Svc/Get"}),
    ({"service": "pkg.Svc"}, {"prefix": "/pkg.Svc/"}),
    ({"method": "Get"}, {"regex": "/[^/]+/Get"}),
    ({"type": "RegularExpression", "service": "pkg\\..*", "method": "G.t"}, {"regex": "/pkg\\..*/G.t"}),
    ({"type": "RegularExpression", "service": "pkg\\..*"}, {"regex": "/pkg\\..*/.+"}),
    ({"type": "RegularExpression", "method": "G.t"}, {"regex": "/[^/]+/G.t"}),
])
def test_grpc_method_becomes_a_path_match(method: dict[str, Any], want: dict[str, str]) -> None:
    m = gr.GRPCMethodMatch.model_validate(method)
    got = grpcroute.uri_match(m)
    assert {k: v for k, v in (("exact", got.exact), ("prefix", got.prefix), ("regex", got.regex)) if v} == want


def test_tls_rule_for_a_mesh_parent_matches_its_hosts() -> None:
    star = (TLSRoute.model_construct(match=(TLSMatchAttributes.model_construct(sni_hosts=("*",)),), route=()),)
    (r,) = l4route.tls_for_parent(star, 443, ("a.example.com", "b.example.com"), "a.example.com")
    # "*" becomes the parent's hosts; with several, only those overlapping this host stay.
    assert r.match[0].sni_hosts == ("a.example.com",) and r.match[0].port == 443
    many = (TLSRoute.model_construct(match=(TLSMatchAttributes.model_construct(
        sni_hosts=("*.example.com", "x.other.org")),), route=()),)
    (r,) = l4route.tls_for_parent(many, None, ("a.example.com",), "a.example.com")
    assert r.match[0].sni_hosts == ("*.example.com",) and r.match[0].port is None


def _snapshot(tmp_path: Path, *docs: str) -> Any:
    (tmp_path / "in.yaml").write_text(APP_WAYPOINT + documents(*docs))
    update = DirectorySource(tmp_path).load()
    assert not update.errors, [str(e) for e in update.errors]
    return update.snapshot


SERVICES = (service("app", "echo", "127.10.0.1", [("grpc", 80, 8080)]),
            service("app", "b", "127.10.0.2", [("grpc", 80, 8080)]),
            pod("app", "b-1", "127.0.2.2", {"app": "b"}))


def _yaml(doc: dict[str, Any], ts: str) -> str:
    doc["metadata"]["creationTimestamp"] = ts
    return yaml.safe_dump(doc)


def test_grpc_and_http_routes_of_a_host_merge_into_one_virtual_service(tmp_path: Path) -> None:
    grpc_doc = obj("GRPCRoute", {"parentRefs": PARENT, "rules": [
        {"matches": [{"method": {"service": "pkg.Svc"}}], "backendRefs": BACKEND}]}, name="g")
    http_doc = obj("HTTPRoute", {"parentRefs": PARENT, "rules": [
        {"matches": [{"path": {"type": "Exact", "value": "/healthz"}}], "backendRefs": BACKEND}]}, name="h")
    snap = _snapshot(tmp_path, *SERVICES, _yaml(grpc_doc, "2024-01-01T00:00:00Z"),
                     _yaml(http_doc, "2024-01-02T00:00:00Z"))
    (vs,) = mesh_routes(snap).vs_by_host["echo.app.svc.cluster.local"]
    assert vs.name == "app~echo.app.svc.cluster.local"
    # Gateway API precedence across both kinds: the exact path first, though its route is newer.
    assert [r.name for r in vs.spec.http] == ["app.h.0", "app.g.0"]
    assert [r.name for r in mesh_routes(snap).routes_by_host["echo.app.svc.cluster.local"]] == ["g", "h"]


def test_a_route_istio_refuses_does_not_take_a_service_from_its_virtual_services(tmp_path: Path) -> None:
    bad = obj("GRPCRoute", {"parentRefs": PARENT, "rules": [
        {"filters": [{"type": "ExtensionRef", "extensionRef": {"group": "x.io", "kind": "K", "name": "n"}}],
         "backendRefs": BACKEND}]})
    vs = {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
          "metadata": {"name": "v", "namespace": "app"},
          "spec": {"hosts": ["echo"], "http": [{"route": [{"destination": {"host": "b"}}]}]}}
    snap = _snapshot(tmp_path, *SERVICES, yaml.safe_dump(bad), yaml.safe_dump(vs))
    (wp,) = find_waypoints(snap)
    view = next(v for v in bound_views(bindings_of(snap), wp.ref) if v.host == "echo.app.svc.cluster.local")
    vss, _ = service_routes(snap, wp.ref, view)
    assert [v.name for v in vss] == ["v"]
    assert any("GRPCRoute app/r rules[0]: unsupported filter type 'ExtensionRef'" in w for w in route_warnings(snap))


def test_l4_routes_become_tcp_and_tls_rules_per_parent_host(tmp_path: Path) -> None:
    tcp = obj("TCPRoute", {"parentRefs": [{**PARENT[0], "port": 80}], "rules": [
        {"backendRefs": [{**BACKEND[0], "weight": 3}, {"name": "echo", "port": 80, "weight": 0}]}]}, name="t")
    tls = obj("TLSRoute", {"parentRefs": [{**PARENT[0], "name": "b"}], "rules": [
        {"backendRefs": [{**BACKEND[0], "weight": 0}]}]}, "v1alpha2", name="s")
    snap = _snapshot(tmp_path, *SERVICES, yaml.safe_dump(tcp), yaml.safe_dump(tls))
    routes = mesh_routes(snap)
    (t,) = routes.vs_by_host["echo.app.svc.cluster.local"]
    assert t.name == "t~tcp~0~istio-autogenerated-k8s-gateway" and t.spec.gateways == ("mesh",)
    (rule,) = t.spec.tcp
    assert [m.port for m in rule.match] == [80]
    # weight 0 dropped; a lone remaining backend has no weight
    assert [(d.destination.host, d.weight) for d in rule.route] == [("b.app.svc.cluster.local", None)]
    (s,) = routes.vs_by_host["b.app.svc.cluster.local"]
    (rule2,) = s.spec.tls
    assert rule2.match[0].sni_hosts == ("b.app.svc.cluster.local",)
    assert [d.destination for d in rule2.route] == [l4route.ZERO_WEIGHT]


# --------------------------------------------------------------------------- the cluster watch


def test_the_cluster_source_reads_the_new_kinds(tmp_path: Path) -> None:
    with FakeKubeApiServer() as kube:
        kube.apply(obj("GRPCRoute", {"parentRefs": PARENT, "rules": [{"backendRefs": BACKEND}]}, name="g"))
        kube.apply(obj("TCPRoute", {"parentRefs": PARENT, "rules": [{"backendRefs": BACKEND}]}, name="t"))
        kube.apply(obj("TLSRoute", {"parentRefs": PARENT, "hostnames": ["echo.app.svc.cluster.local"],
                                    "rules": [{"backendRefs": BACKEND}]}, name="s"))
        kube.apply(obj("TCPRoute", {"parentRefs": PARENT, "rules": [{"backendRefs": BACKEND}] * 2}, name="bad"))
        src = KubeSource(KubeSourceOptions(kubeconfig=kube.write_kubeconfig(tmp_path / "kubeconfig"),
                                           sync_timeout=10.0))
        try:
            update = src.load()
        finally:
            src.close()
    keys = update.snapshot.keys()
    assert sorted((k.kind, k.name) for k in keys) == [
        ("GRPCRoute", "g"), ("TCPRoute", "t"), ("TLSRoute", "s")]
    (err,) = update.errors
    assert "TCPRoute app/bad" in str(err) and "spec.rules: must have at most 1 item" in str(err)
