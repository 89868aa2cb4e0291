"""Gateway API GRPCRoutes as VirtualService HTTP routes with gateway semantics, as Istio converts
them (``convertGRPCRoute``, ``createGRPCURIMatch``, ``createGRPCHeadersMatch``,
``buildGRPCDestination`` in istio/istio ``pilot/pkg/config/kube/gateway/conversion.go``).

gRPC is HTTP/2 with the path ``/<service>/<method>``, so a method match becomes a path match:

* ``Exact`` with service and method -> exact ``/<service>/<method>``; service only -> prefix
  ``/<service>/``; method only -> regex ``/[^/]+/<method>``;
* ``RegularExpression`` -> regex ``/<service>/<method>`` (service only: ``/<service>/.+``; method
  only: ``/[^/]+/<method>``);
* header matches are exact or regex header matches; a match with neither is a catch-all match.

Each rule is split into one route per match (the rule's name, else ``<ns>.<name>.<index>``), as
for HTTPRoutes, and merged with the HTTPRoutes of the same host (``mesh_routes``): Istio merges
both kinds into one VirtualService per (namespace, parent port, host) and sorts them together.
Filters: ``RequestHeaderModifier``/``ResponseHeaderModifier`` and ``RequestMirror``; an
``ExtensionRef`` fails the whole route, as in Istio.  Backends: weight 0 dropped, a lone backend
loses its weight, no positive weight -> a direct 500; backend filters are header modifiers only.
"""

from __future__ import annotations

from istiod_lite.model import gateway_routes as gr
from istiod_lite.model.networking import (
    Headers,
    HTTPDirectResponse,
    HTTPMatchRequest,
    HTTPMirrorPolicy,
    HTTPRoute,
    HTTPRouteDestination,
    StringMatch,
)
from istiod_lite.translator.core import tables
from istiod_lite.translator.routing.httproute import (
    ConversionError,
    header_ops,
    mirror_policy,
    with_headers,
)
from istiod_lite.translator.routing.httproute import backends as httproute_backends


def uri_match(m: gr.GRPCMethodMatch) -> StringMatch:
    """``createGRPCURIMatch``: the gRPC path ``/<service>/<method>`` as a string match."""
    service, method = m.service, m.method
    if m.type == "Exact":
        if method is None:
            return StringMatch.model_construct(prefix=f"/{service}/")
        if service is None:
            return StringMatch.model_construct(regex=f"/[^/]+/{method}")
        return StringMatch.model_construct(exact=f"/{service}/{method}")
    if method is None:
        return StringMatch.model_construct(regex=f"/{service}/.+")
    if service is None:
        return StringMatch.model_construct(regex=f"/[^/]+/{method}")
    return StringMatch.model_construct(regex=f"/{service}/{method}")


def _match(m: gr.GRPCRouteMatch) -> HTTPMatchRequest:
    headers = {h.name: StringMatch.model_construct(regex=h.value) if h.type == "RegularExpression"
               else StringMatch.model_construct(exact=h.value) for h in m.headers}
    return HTTPMatchRequest.model_construct(uri=uri_match(m.method) if m.method is not None else None,
                                            headers=headers)


def convert_rule(route: gr.GRPCRoute, index: int, rule: gr.GRPCRouteRule, match: gr.GRPCRouteMatch | None,
                 problems: list[str]) -> HTTPRoute:
    """``convertGRPCRoute`` for one (rule, match) pair."""
    what = f"GRPCRoute {route.namespace}/{route.name} rules[{index}]"
    headers: Headers | None = None
    mirrors: list[HTTPMirrorPolicy] = []
    for f in rule.filters:
        if f.type == "RequestHeaderModifier" and f.request_header_modifier is not None:
            headers = with_headers(headers, request=header_ops(f.request_header_modifier))
        elif f.type == "ResponseHeaderModifier" and f.response_header_modifier is not None:
            headers = with_headers(headers, response=header_ops(f.response_header_modifier))
        elif f.type == "RequestMirror" and f.request_mirror is not None:
            mirror = mirror_policy(f.request_mirror, route.namespace, problems, f"{what} RequestMirror")
            if mirror is not None:
                mirrors.append(mirror)
        else:
            raise ConversionError(f"{what}: unsupported filter type {f.type!r}")
    direct: HTTPDirectResponse | None = None
    backends: tuple[HTTPRouteDestination, ...] = ()
    if sum(b.weight for b in rule.backend_refs) == 0:
        direct = HTTPDirectResponse.model_construct(status=500, body=None)
    else:
        backends = httproute_backends(rule, route.namespace, problems, what)
    return HTTPRoute.model_construct(
        name=rule.name or f"{route.namespace}.{route.name}.{index}",
        match=(_match(match),) if match is not None else (), route=backends, direct_response=direct,
        mirrors=tuple(mirrors), headers=headers)


def convert(route: gr.GRPCRoute, problems: list[str]) -> tuple[HTTPRoute, ...] | None:
    """Every rule of ``route`` (one entry per match); None if Istio would reject the route."""
    out = []
    try:
        for i, rule in enumerate(route.spec.rules):
            for m in rule.matches or (None,):
                out.append(convert_rule(route, i, rule, m, problems))
    except ConversionError as e:
        problems.append(f"{e}; the route is not applied")
        return None
    return tuple(out)


@tables.CONVERTED_GRPC_ROUTE.computed_by
def _converted(route: gr.GRPCRoute) -> tuple[tuple[HTTPRoute, ...] | None, tuple[str, ...]]:
    """``convert`` with its problems, once per GRPCRoute object."""
    problems: list[str] = []
    return convert(route, problems), tuple(problems)
