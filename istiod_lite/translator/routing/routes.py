"""HTTP routes of one service port on a waypoint: VirtualService routes, else Istio's default.

Facts: docs/istio-waypoint-shape.md §4 (``waypointInboundRoute``, ``TranslateRoute``,
``applyHTTPRouteDestination``).  The VirtualServices that apply to a service are concatenated in
Istio's order; within them the first matching route wins, and a catch-all route (no match, or
``prefix: /`` without header/parameter conditions) ends the list.  Matches with ``sourceLabels``
are dropped (ambient cannot know the client's labels; ``config_warnings`` reports them).  If no
route comes out, the service gets the default route.

Destinations are resolved by a ``Targets`` object (``outbound.DestinationResolver``): an owned
service becomes ``inbound-vip|P|http[/subset]|H``, any other ``outbound|P|subset|H``.

Gateway semantics: Gateway API HTTPRoutes arrive here as VirtualServices annotated
``internal.istio.io/route-semantics: gateway`` (``route_httproute``), as in Istio.  For them a prefix
match is path-separated, a missing backend answers 500 (``cluster_not_found_response_code``), a
``ReplacePrefixMatch`` of ``/`` strips the matched prefix with a regex, and a ``%PREFIX()%``
redirect replaces only the prefix (``model.UseGatewaySemantics`` in Istio's ``route.go``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.config.route.v3 import route_pb2

from istiod_lite.model.networking import (
    ConsistentHashLB,
    Destination,
    HTTPMatchRequest,
    HTTPRoute,
    VirtualService,
)
from istiod_lite.translator.clusters.policy_apply import set_duration
from istiod_lite.translator.core.protos import packed
from istiod_lite.translator.routing import route_actions as act
from istiod_lite.translator.routing.route_match import is_catch_all, path_pattern, route_match

DEFAULT_RETRY_ON = act.DEFAULT_RETRY_ON
MAX_DIRECT_RESPONSE_BODY = 1024 * 1024
VS_PATH = "/apis/networking.istio.io/v1/namespaces/{}/virtual-service/{}"
#: Istio's annotation on VirtualServices converted from Gateway API routes (``constants.InternalRouteSemantics``).
ROUTE_SEMANTICS = "internal.istio.io/route-semantics"
GATEWAY_SEMANTICS = "gateway"
default_retry_policy = act.default_retry_policy


_GO_REGEX_SPECIAL = frozenset("\\.+*?()|[]{}^$")


def quote_meta(text: str) -> str:
    """Go's ``regexp.QuoteMeta`` (Python's ``re.escape`` escapes more, e.g. ``-``)."""
    return "".join("\\" + c if c in _GO_REGEX_SPECIAL else c for c in text)


def gateway_semantics(vs: VirtualService) -> bool:
    """``model.UseGatewaySemantics``: the VirtualService stands for a Gateway API route."""
    return vs.metadata.annotations.get(ROUTE_SEMANTICS) == GATEWAY_SEMANTICS


class Targets(Protocol):
    """Where a VirtualService destination goes (cluster name) and how it is hashed."""

    def cluster(self, dest: Destination, namespace: str, listen_port: int) -> str: ...

    def consistent_hash(self, dest: Destination, namespace: str) -> ConsistentHashLB | None: ...

    def exists(self, dest: Destination, namespace: str) -> bool:
        """Whether the destination's service exists (Gateway API mirrors to a missing one are dropped)."""
        ...


@dataclass(frozen=True)
class RouteScope:
    """The listener a route list is for: its port, the waypoint's namespace (``sourceNamespace``
    matches compare against it, as for any proxy) and the destination resolver."""

    listen_port: int
    waypoint_namespace: str
    targets: Targets


def _route_action_defaults(action: rc.RouteAction) -> None:
    action.timeout.SetInParent()  # 0s: no timeout unless the VirtualService sets one
    # Istio (``setTimeout``): gRPC's grpc-timeout header may shorten, never lengthen, the route
    # timeout (0 = none), through the deprecated ``max_grpc_timeout``.  Not ``max_stream_duration``:
    # its mere presence switches Envoy's router to "new timeouts", which ignore ``timeout``.
    action.max_grpc_timeout.SetInParent()


def default_route(cluster: str, host: str, port: int, hash_policy: rc.RouteAction.HashPolicy | None = None
                  ) -> rc.Route:
    """Istio's outbound-style default route; with the service's consistent hash if its
    DestinationRule has one (the retry policy keeps its previous-hosts predicate, as in
    ``BuildDefaultHTTPOutboundRoute``)."""
    r = rc.Route(name="default", match=rc.RouteMatch(prefix="/"))
    r.decorator.operation = f"{host}:{port}/*"
    r.route.cluster = cluster
    _route_action_defaults(r.route)
    r.route.retry_policy.CopyFrom(act.default_retry_policy())
    if hash_policy is not None:
        r.route.hash_policy.append(hash_policy)
    return r


def http_routes(vss: Sequence[VirtualService], scope: RouteScope) -> list[rc.Route]:
    """Routes of every applicable VirtualService, in order, up to the first catch-all."""
    out: list[rc.Route] = []
    for vs in vss:
        if vs_routes(vs, scope, out):
            break
    return out


def vs_routes(vs: VirtualService, scope: RouteScope, out: list[rc.Route]) -> bool:
    """Append ``vs``'s routes for the listener; True if a catch-all ended the list."""
    for http in vs.spec.http:
        if not http.match:
            r = translate_route(vs, http, None, scope)
            if r is not None:
                out.append(r)
            return True
        for m in http.match:
            if m.source_labels:
                continue  # no source labels in ambient (istio/istio#51565)
            r = translate_route(vs, http, m, scope)
            if r is not None:
                out.append(r)
                if is_catch_all(r.match):
                    return True
    return False


def _source_matches(m: HTTPMatchRequest, waypoint_namespace: str) -> bool:
    """``sourceMatchHTTP``: ``gateways`` must name ``mesh``; otherwise ``sourceNamespace`` is the proxy's."""
    if m.gateways:
        return "mesh" in m.gateways
    return not m.source_namespace or m.source_namespace == waypoint_namespace


def translate_route(vs: VirtualService, http: HTTPRoute, m: HTTPMatchRequest | None, scope: RouteScope
                    ) -> rc.Route | None:
    """One Envoy route for one (route, match) pair; None when it does not apply to this listener."""
    if m is not None:
        if m.port is not None and m.port != scope.listen_port:
            return None
        if not _source_matches(m, scope.waypoint_namespace):
            return None
    if not http.route and http.redirect is None and http.direct_response is None:
        return None  # a delegating route: delegation is not supported (config_warnings)
    gateway = gateway_semantics(vs)
    r = rc.Route(name=f"{http.name}.{m.name}" if m is not None and m.name else http.name)
    r.match.CopyFrom(route_match(m, gateway))
    r.metadata.filter_metadata["istio"].fields["config"].string_value = VS_PATH.format(vs.namespace, vs.name)
    if m is not None and m.stat_prefix:
        r.stat_prefix = m.stat_prefix
    authority = ""
    if http.headers is not None:
        ops = act.header_operations(http.headers)
        r.request_headers_to_add.extend(ops.request_add)
        r.response_headers_to_add.extend(ops.response_add)
        r.request_headers_to_remove.extend(ops.request_remove)
        r.response_headers_to_remove.extend(ops.response_remove)
        authority = ops.authority
    if http.redirect is not None:
        if not act.redirect(r, http.redirect, scope.listen_port, gateway):
            return None
    elif http.direct_response is not None:
        act.direct_response(r, http.direct_response)
    else:
        _route_action(r, vs, http, scope, authority, gateway)
    r.decorator.operation = _operation(r, vs.name, scope.listen_port)
    if http.fault is not None and (f := act.fault(http.fault)) is not None:
        r.typed_per_filter_config[act.FAULT_FILTER].CopyFrom(packed(f))
    if http.cors_policy is not None:
        r.typed_per_filter_config[act.CORS_FILTER].CopyFrom(packed(act.cors(http.cors_policy)))
    return r


def _route_action(r: rc.Route, vs: VirtualService, http: HTTPRoute, scope: RouteScope, authority: str,
                  gateway: bool = False) -> None:
    """``applyHTTPRouteDestination``: timeout, rewrites, mirrors, destinations, hashing, retries."""
    a = r.route
    _route_action_defaults(a)
    if http.timeout is not None:
        set_duration(a.timeout, http.timeout)
        set_duration(a.max_grpc_timeout, http.timeout)
    if gateway:
        # Gateway API: a backend that does not exist answers 500, not 503.
        a.cluster_not_found_response_code = rc.RouteAction.INTERNAL_SERVER_ERROR
    ns, port, targets = vs.namespace, scope.listen_port, scope.targets
    rw = http.rewrite
    if rw is not None:
        if rw.uri_regex_rewrite is not None:
            a.regex_rewrite.pattern.regex = rw.uri_regex_rewrite.match
            a.regex_rewrite.substitution = rw.uri_regex_rewrite.rewrite
        elif rw.uri == "/" and gateway:
            # ReplacePrefixMatch "/": drop the matched prefix, keeping a "/" if nothing is left.
            a.regex_rewrite.pattern.regex = f"^{quote_meta(r.match.path_separated_prefix)}(/?)(.*)"
            a.regex_rewrite.substitution = r"/\2"
        elif rw.uri:
            a.prefix_rewrite = rw.uri
        authority = rw.authority or authority
    if authority:
        a.host_rewrite_literal = authority
    if http.mirror is not None and (frac := act.mirror_fraction(http.mirror_percentage, http.mirror_percent)):
        a.request_mirror_policies.append(act.mirror_policy(targets.cluster(http.mirror, ns, port), frac))
    for mirror in http.mirrors:
        if gateway and not targets.exists(mirror.destination, ns):
            continue  # Istio's createMirrorFilter drops a mirror whose backend is not found
        if (frac := act.mirror_fraction(mirror.percentage)) is not None:
            a.request_mirror_policies.append(act.mirror_policy(targets.cluster(mirror.destination, ns, port), frac))
    consistent_hash = False
    if len(http.route) == 1:
        d = http.route[0]
        a.cluster = targets.cluster(d.destination, ns, port)
        if d.headers is not None:
            ops = act.header_operations(d.headers)  # after the route's own: a destination ``set`` wins
            r.request_headers_to_add.extend(ops.request_add)
            r.request_headers_to_remove.extend(ops.request_remove)
            r.response_headers_to_add.extend(ops.response_add)
            r.response_headers_to_remove.extend(ops.response_remove)
            if ops.authority and not a.HasField("host_rewrite_literal"):
                a.host_rewrite_literal = ops.authority
        ch = targets.consistent_hash(d.destination, ns)
        if (hp := act.hash_policy(ch)) is not None:
            a.hash_policy.append(hp)
        consistent_hash = ch is not None
    else:
        a.weighted_clusters.SetInParent()
        for d in http.route:
            if not d.weight:
                continue  # weight 0 (or unset among several) never receives traffic
            cw = a.weighted_clusters.clusters.add(name=targets.cluster(d.destination, ns, port))
            cw.weight.value = d.weight
            if d.headers is not None:
                ops = act.header_operations(d.headers)
                cw.request_headers_to_add.extend(ops.request_add)
                cw.request_headers_to_remove.extend(ops.request_remove)
                cw.response_headers_to_add.extend(ops.response_add)
                cw.response_headers_to_remove.extend(ops.response_remove)
                if ops.authority:
                    cw.host_rewrite_literal = ops.authority
            if (hp := act.hash_policy(targets.consistent_hash(d.destination, ns))) is not None:
                a.hash_policy.append(hp)
    rp = act.retry_policy(http.retries, consistent_hash)
    if rp is not None:
        a.retry_policy.CopyFrom(rp)


def _operation(r: rc.Route, vs_name: str, port: int) -> str:
    """``GetRouteOperation``: ``host:port<path>`` for a single cluster, else ``vs:port<path>``."""
    path = path_pattern(r.match)
    cluster = r.route.cluster if r.HasField("route") else ""
    parts = cluster.split("|")
    if len(parts) == 4:
        return f"{parts[3]}:{int(parts[1]) if parts[1].isdigit() else 0}{path}"
    return f"{vs_name}:{port}{path}"


def route_configuration(name: str, vhost_name: str, routes: Sequence[rc.Route],
                        domains: Sequence[str] = ("*",)) -> route_pb2.RouteConfiguration:
    """``domains``: ``*``, except for a ``DYNAMIC_DNS`` host: only names under its wildcard, so a
    client cannot send the forward proxy anywhere else (``buildRouteVHostDomains``)."""
    rcfg = route_pb2.RouteConfiguration(name=name)
    rcfg.validate_clusters.value = False
    rcfg.validate_clusters.SetInParent()
    rcfg.max_direct_response_body_size_bytes.value = MAX_DIRECT_RESPONSE_BODY
    vh = rcfg.virtual_hosts.add(name=vhost_name, domains=list(domains))
    vh.routes.extend(routes)
    return rcfg
