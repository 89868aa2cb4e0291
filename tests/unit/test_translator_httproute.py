"""Gateway API HTTPRoutes on waypoints: Istio's conversion rules one at a time (the golden cases
show whole waypoints), the precedence over VirtualServices, and the translator's memo (an edited
route rebuilds only the service it attaches to; a memoised translation equals a fresh one)."""

from __future__ import annotations

from typing import Any

from istiod_lite.model import ConfigSnapshot, parse_object
from istiod_lite.model import gateway as gw
from istiod_lite.translator.binding.waypoints import WaypointRef
from istiod_lite.translator.config_warnings import route_warnings
from istiod_lite.translator.core.output import EnvoyResources
from istiod_lite.translator.routing import httproute as rh
from istiod_lite.translator.routing import mesh_routes as mr
from istiod_lite.translator.waypoint import WaypointTranslator
from tests.support.meshyaml import APP_WAYPOINT
from tests.support.snapshots import chain_routes
from tests.support.snapshots import load_resources as _load
from tests.support.snapshots import replaced as _replace
from tests.support.snapshots import same_output as _same

MESH = APP_WAYPOINT + """\
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
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: echo, namespace: app}
spec:
  parentRefs: [{group: "", kind: Service, name: echo}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /new}}]
    backendRefs: [{name: later, port: 80}]
  - backendRefs: [{name: side, port: 80}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: side, namespace: app}
spec:
  hosts: [side]
  http: [{route: [{destination: {host: echo}}]}]
"""
REF = WaypointRef("app", "waypoint")
ECHO = "inbound-vip|80|http|echo.app.svc.cluster.local"
SIDE = "inbound-vip|80|http|side.app.svc.cluster.local"


def _route(spec: dict[str, Any], name: str = "r", ns: str = "app", created: str = "") -> gw.HTTPRoute:
    meta: dict[str, Any] = {"name": name, "namespace": ns}
    if created:
        meta["creationTimestamp"] = created
    obj = parse_object({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute", "metadata": meta,
                        "spec": spec})
    assert isinstance(obj, gw.HTTPRoute)
    return obj


def _convert(spec: dict[str, Any]) -> list[Any]:
    problems: list[str] = []
    out = rh.convert(_route(spec), problems)
    assert out is not None, problems
    return list(out)


def test_each_match_is_a_route_and_prefixes_lose_their_trailing_slash() -> None:
    (a, b) = _convert({"rules": [{"name": "two", "matches": [
        {"path": {"type": "PathPrefix", "value": "/api/"}, "method": "GET"},
        {"path": {"type": "Exact", "value": "/x/"}, "queryParams": [{"name": "q", "value": "1"}]}],
        "backendRefs": [{"name": "echo", "port": 80}]}]})
    assert a.name == b.name == "two"
    assert a.match[0].uri.prefix == "/api" and a.match[0].method.exact == "GET"
    assert b.match[0].uri.exact == "/x/" and b.match[0].query_params["q"].exact == "1"


def test_weights_zero_dropped_single_backend_unweighted_and_all_zero_is_a_500() -> None:
    (split, single, zero) = _convert({"rules": [
        {"backendRefs": [{"name": "a", "port": 80, "weight": 3}, {"name": "b", "port": 80, "weight": 0},
                         {"name": "c", "namespace": "other", "port": 81}]},
        {"backendRefs": [{"name": "a", "port": 80, "weight": 7}, {"name": "b", "port": 80, "weight": 0}]},
        {"backendRefs": [{"name": "a", "port": 80, "weight": 0}]}]})
    assert [(d.destination.host, d.destination.port.number, d.weight) for d in split.route] == [
        ("a.app.svc.cluster.local", 80, 3), ("c.other.svc.cluster.local", 81, 1)]
    assert [(d.destination.host, d.weight) for d in single.route] == [("a.app.svc.cluster.local", None)]
    assert zero.direct_response.status == 500 and not zero.route


def test_backend_request_timeout_is_per_try_with_a_retry_else_the_route_timeout() -> None:
    (with_retry, without) = _convert({"rules": [
        {"retry": {"attempts": 4, "codes": [502]}, "timeouts": {"request": "10s", "backendRequest": "2s"},
         "backendRefs": [{"name": "a", "port": 80}]},
        {"timeouts": {"request": "10s", "backendRequest": "3s"}, "backendRefs": [{"name": "a", "port": 80}]}]})
    assert with_retry.timeout.seconds == 10 and with_retry.retries.per_try_timeout.seconds == 2
    assert with_retry.retries.attempts == 4
    assert with_retry.retries.retry_on == "connect-failure,refused-stream,unavailable,cancelled,502"
    assert without.timeout.seconds == 3 and without.retries is None  # Istio: backendRequest replaces request


def test_redirect_port_and_rewrite_prefix_rules() -> None:
    (scheme, plain, prefix, strip) = _convert({"rules": [
        {"filters": [{"type": "RequestRedirect", "requestRedirect": {"scheme": "https"}}]},
        {"filters": [{"type": "RequestRedirect", "requestRedirect": {"hostname": "b.example.com"}}]},
        {"matches": [{"path": {"type": "PathPrefix", "value": "/old"}}],
         "filters": [{"type": "RequestRedirect", "requestRedirect": {
             "path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/new"}}}]},
        {"matches": [{"path": {"type": "PathPrefix", "value": "/strip"}}],
         "filters": [{"type": "URLRewrite", "urlRewrite": {
             "path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/"}}}],
         "backendRefs": [{"name": "a", "port": 80}]}]})
    assert scheme.redirect.derive_port == "FROM_PROTOCOL_DEFAULT" and scheme.redirect.scheme == "https"
    assert plain.redirect.derive_port == "FROM_REQUEST_PORT" and plain.redirect.redirect_code == 302
    assert prefix.redirect.uri == "%PREFIX()%/new"
    assert strip.rewrite.uri == "/"


def test_an_extension_ref_filter_refuses_the_whole_route() -> None:
    problems: list[str] = []
    route = _route({"rules": [{"backendRefs": [{"name": "a", "port": 80}]},
                              {"filters": [{"type": "ExtensionRef", "extensionRef": {
                                  "group": "x.io", "kind": "K", "name": "n"}}]}]})
    assert rh.convert(route, problems) is None
    assert problems and "ExtensionRef" in problems[0]


def test_precedence_exact_prefix_regex_then_length_method_headers_queries() -> None:
    routes = _convert({"rules": [
        {"matches": [{"path": {"type": "RegularExpression", "value": "/long/regex/.*"}}]},
        {"matches": [{"path": {"type": "PathPrefix", "value": "/a"}, "queryParams": [{"name": "q", "value": "1"}]}]},
        {"matches": [{"path": {"type": "PathPrefix", "value": "/a"}, "headers": [{"name": "h", "value": "1"}]}]},
        {"matches": [{"path": {"type": "PathPrefix", "value": "/a"}, "method": "GET"}]},
        {"matches": [{"path": {"type": "PathPrefix", "value": "/a/b"}}]},
        {"matches": [{"path": {"type": "Exact", "value": "/z"}}]},
        {"matches": []}]})
    ordered = sorted(routes, key=mr.precedence_key)
    assert [r.name for r in ordered] == [f"app.r.{i}" for i in (5, 4, 3, 2, 1, 0, 6)]


def _clusters_of_chain(out: EnvoyResources, chain: str) -> list[str]:
    """Route targets of one HTTP chain, in route order (cluster or weighted cluster names)."""
    return [r.route.cluster or ",".join(c.name for c in r.route.weighted_clusters.clusters)
            for r in chain_routes(out, chain)]


def test_httproute_wins_over_a_virtual_service_and_edits_reach_a_memoised_waypoint() -> None:
    base = _load(MESH)
    s1 = ConfigSnapshot.build(base, 1)
    t = WaypointTranslator(REF)
    out1 = t.translate(s1)
    # The missing backend "later" keeps its (unresolved) inbound-vip name: Envoy answers 500.
    assert _clusters_of_chain(out1, ECHO) == ["inbound-vip|80|http|later.app.svc.cluster.local", SIDE]
    assert _clusters_of_chain(out1, SIDE) == [ECHO]  # side has only a VirtualService

    # A VirtualService for echo is ignored (and reported): nothing to rebuild.
    vs = parse_object({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
                       "metadata": {"name": "echo", "namespace": "app"},
                       "spec": {"hosts": ["echo"], "http": [{"route": [{"destination": {"host": "side"}}]}]}})
    s2, base = _replace(s1, base, vs, 2)
    out2 = t.translate(s2)
    assert t.last_rebuilt == 0 and _same(out2, out1)
    assert any("VirtualService app/echo: ignored" in w for w in route_warnings(s2))

    # The missing backend appears (a Service of no waypoint): the route now names its outbound cluster.
    later = parse_object({"apiVersion": "v1", "kind": "Service", "metadata": {
        "name": "later", "namespace": "app", "labels": {"istio.io/use-waypoint": "none"}},
        "spec": {"clusterIP": "127.10.0.3", "selector": {"app": "later"}, "ports": [{"name": "http", "port": 80}]}})
    s3, base = _replace(s2, base, later, 3)
    out3 = t.translate(s3)
    assert _clusters_of_chain(out3, ECHO) == ["outbound|80||later.app.svc.cluster.local", SIDE]
    assert "outbound|80||later.app.svc.cluster.local" in out3.clusters
    assert _same(out3, WaypointTranslator(REF).translate(s3))

    # Editing the HTTPRoute rebuilds only echo's fragment.
    edited = _route({"parentRefs": [{"group": "", "kind": "Service", "name": "echo"}],
                     "rules": [{"backendRefs": [{"name": "side", "port": 80, "weight": 1},
                                                {"name": "echo", "port": 80, "weight": 1}]}]}, name="echo")
    s4, base = _replace(s3, base, edited, 4)
    out4 = t.translate(s4)
    assert t.last_rebuilt == 1
    assert _clusters_of_chain(out4, ECHO) == [f"{SIDE},{ECHO}"]
    assert _same(out4, WaypointTranslator(REF).translate(s4))

    # Removing the HTTPRoute: the (previously ignored) VirtualService applies.
    s5, base = _replace(s4, base, edited, 5, delete=True)
    out5 = t.translate(s5)
    assert _clusters_of_chain(out5, ECHO) == [SIDE]
    assert _same(out5, WaypointTranslator(REF).translate(s5))


def test_routes_of_one_namespace_merge_oldest_first_and_a_parent_port_restricts_them() -> None:
    older = _route({"parentRefs": [{"group": "", "kind": "Service", "name": "echo"}],
                    "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": "/p"}}],
                               "backendRefs": [{"name": "side", "port": 80}]}]},
                   name="zz-older", created="2024-01-01T00:00:00Z")
    newer = _route({"parentRefs": [{"group": "", "kind": "Service", "name": "echo"}],
                    "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": "/p"}}],
                               "backendRefs": [{"name": "echo", "port": 80}]}]},
                   name="aa-newer", created="2024-02-01T00:00:00Z")
    ported = _route({"parentRefs": [{"group": "", "kind": "Service", "name": "side", "port": 8080}],
                     "rules": [{"backendRefs": [{"name": "echo", "port": 80}]}]}, name="ported")
    snap = ConfigSnapshot.build([older, newer, ported], 1)
    mesh = mr.mesh_routes(snap)
    (vs,) = mesh.virtual_services(["app"], "echo.app.svc.cluster.local")
    assert vs.name == "app~echo.app.svc.cluster.local"
    assert [r.route[0].destination.host.split(".")[0] for r in vs.spec.http] == ["side", "echo"]  # tie: older first
    (pvs,) = mesh.virtual_services(["app"], "side.app.svc.cluster.local")
    assert pvs.name == "app~8080~side.app.svc.cluster.local"
    assert [m.port for r in pvs.spec.http for m in r.match] == [8080]
    assert mesh.virtual_services(["other"], "echo.app.svc.cluster.local") == []  # a consumer namespace


OTHER = """\
---
apiVersion: v1
kind: Namespace
metadata: {name: other, labels: {istio.io/use-waypoint: waypoint}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: other}
spec:
  gatewayClassName: istio-waypoint
  addresses: [{type: IPAddress, value: 127.0.1.2}]
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: other}
spec: {clusterIP: 127.10.1.1, selector: {app: web}, ports: [{name: http, port: 80}]}
"""


def test_a_route_edit_reaches_only_its_waypoint_and_moving_a_route_is_noticed() -> None:
    base = _load(MESH + OTHER)
    s1 = ConfigSnapshot.build(base, 1)
    mine, theirs = WaypointTranslator(REF), WaypointTranslator(WaypointRef("other", "waypoint"))
    mine.translate(s1)
    before = theirs.translate(s1)
    moved = _route({"parentRefs": [{"group": "", "kind": "Service", "name": "side"}],
                    "rules": [{"backendRefs": [{"name": "side", "port": 80}]}]}, name="echo")
    s2, base = _replace(s1, base, moved, 2)
    assert theirs.translate(s2) is before  # the whole-waypoint shortcut: no HTTPRoute of its services changed
    out = mine.translate(s2)
    # The route left echo (default route again) and attaches to side (whose VirtualService, to echo, is ignored).
    assert _clusters_of_chain(out, ECHO) == [ECHO]
    assert _clusters_of_chain(out, SIDE) == [SIDE]
    assert _same(out, WaypointTranslator(REF).translate(s2))
