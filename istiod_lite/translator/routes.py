"""HTTP routes of one service port on a waypoint: VirtualService routes, else Istio's default.

Facts: shared/reference/istio-waypoint.md §4.  This module covers URI/header/method matches and
weighted destinations; the traffic-management issue completes the VirtualService surface.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.config.route.v3 import route_pb2
from envoy.extensions.retry.host.previous_hosts.v3 import previous_hosts_pb2
from envoy.type.matcher.v3 import regex_pb2, string_pb2

from istiod_lite.model.networking import HTTPRoute, StringMatch, VirtualService

#: Istio's default retry policy for routes without ``retries`` (core/route/retry/retry.go).
DEFAULT_RETRY_ON = "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes"
MAX_DIRECT_RESPONSE_BODY = 1024 * 1024

#: Resolves (destination host, port or None, subset) to a cluster name, or None if unknown.
ClusterResolver = Callable[[str, int | None, str], str | None]


def default_retry_policy() -> rc.RetryPolicy:
    rp = rc.RetryPolicy(retry_on=DEFAULT_RETRY_ON, host_selection_retry_max_attempts=5)
    rp.num_retries.value = 2
    pred = rp.retry_host_predicate.add(name="envoy.retry_host_predicates.previous_hosts")
    pred.typed_config.Pack(previous_hosts_pb2.PreviousHostsPredicate())
    return rp


def _route_action_defaults(action: rc.RouteAction) -> None:
    action.timeout.SetInParent()  # 0s: no timeout unless the VirtualService sets one
    # Istio: gRPC's grpc-timeout header may shorten, never lengthen, the route timeout (0 = none).
    action.max_stream_duration.max_stream_duration.SetInParent()
    action.max_stream_duration.grpc_timeout_header_max.SetInParent()
    action.retry_policy.CopyFrom(default_retry_policy())


def default_route(cluster: str, host: str, port: int) -> rc.Route:
    r = rc.Route(name="default", match=rc.RouteMatch(prefix="/"))
    r.decorator.operation = f"{host}:{port}/*"
    r.route.cluster = cluster
    _route_action_defaults(r.route)
    return r


def _string_matcher(m: StringMatch, ignore_case: bool = False) -> string_pb2.StringMatcher:
    sm = string_pb2.StringMatcher(ignore_case=ignore_case)
    if m.exact is not None:
        sm.exact = m.exact
    elif m.prefix is not None:
        sm.prefix = m.prefix
    elif m.regex is not None:
        sm.safe_regex.CopyFrom(regex_pb2.RegexMatcher(regex=m.regex))
    return sm


def _route_matches(route: HTTPRoute) -> list[rc.RouteMatch]:
    if not route.match:
        return [rc.RouteMatch(prefix="/")]
    out = []
    for m in route.match:
        rm = rc.RouteMatch()
        if m.uri is None:
            rm.prefix = "/"
        elif m.uri.exact is not None:
            rm.path = m.uri.exact
        elif m.uri.prefix is not None:
            rm.prefix = m.uri.prefix
        elif m.uri.regex is not None:
            rm.safe_regex.regex = m.uri.regex
        if m.ignore_uri_case:
            rm.case_sensitive.value = False
        for name, value in sorted((m.headers or {}).items()):
            if value.exact is None and value.prefix is None and value.regex is None:
                rm.headers.add(name=name, present_match=True)  # Istio: an empty match means "present"
            else:
                rm.headers.add(name=name, string_match=_string_matcher(value))
        if m.method is not None:
            rm.headers.add(name=":method", string_match=_string_matcher(m.method))
        out.append(rm)
    return out


def vs_routes(vs: VirtualService, port: int, resolve: ClusterResolver) -> list[rc.Route]:
    """Envoy routes for one VirtualService on one service port (skipping port-mismatched matches)."""
    out: list[rc.Route] = []
    for i, http in enumerate(vs.spec.http):
        if http.match and all(m.port is not None and m.port != port for m in http.match):
            continue
        dests = [(d, resolve(d.destination.host, d.destination.port.number if d.destination.port else None,
                             d.destination.subset or "")) for d in http.route]
        dests = [(d, c) for d, c in dests if c is not None and (d.weight is None or d.weight > 0)]
        if not dests:
            continue
        for rm in _route_matches(http):
            r = rc.Route(name=http.name or f"{vs.namespace}.{vs.name}.{i}", match=rm)
            r.metadata.filter_metadata["istio"].fields["config"].string_value = (
                f"/apis/networking.istio.io/v1/namespaces/{vs.namespace}/virtual-service/{vs.name}"
            )
            if len(dests) == 1:
                r.route.cluster = dests[0][1] or ""
            else:
                for d, cluster in dests:
                    wc = r.route.weighted_clusters.clusters.add(name=cluster)
                    wc.weight.value = d.weight if d.weight is not None else 0
            _route_action_defaults(r.route)
            out.append(r)
    return out


def route_configuration(name: str, vhost_name: str, routes: Sequence[rc.Route]) -> route_pb2.RouteConfiguration:
    rcfg = route_pb2.RouteConfiguration(name=name)
    rcfg.validate_clusters.value = False
    rcfg.validate_clusters.SetInParent()
    rcfg.max_direct_response_body_size_bytes.value = MAX_DIRECT_RESPONSE_BODY
    vh = rcfg.virtual_hosts.add(name=vhost_name, domains=["*"])
    vh.routes.extend(routes)
    return rcfg
