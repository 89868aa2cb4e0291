"""Gateway API HTTPRoutes attached to a service (mesh routes) as VirtualServices with gateway
semantics - what Istio does with them before a waypoint ever sees them.

Facts: istio/istio ``pilot/pkg/config/kube/gateway/route_collections.go`` (``HTTPRouteCollection``,
``mergeHTTPRoutes``) and ``conversion.go`` (``convertHTTPRoute``, ``buildHTTPDestination``,
``createURIMatch``, ``createRedirectFilter``, ``createRewriteFilter``, ``createMirrorFilter``,
``sortHTTPRoutes``); docs/istio-waypoint-shape.md §4 ("gateway semantics").

* Parents: ``parentRefs`` of kind ``Service`` (group ``""`` or ``core``; the route's namespace
  unless given) make the route apply to ``<name>.<namespace>.svc.cluster.local``; kind
  ``ServiceEntry`` (group ``networking.istio.io``) to every host of that entry.  Other parents
  (Gateways) are not mesh parents.  A parent ``port`` restricts every match to that port.
* Each rule is split into one route per match (the rule's name, else ``<ns>.<name>.<index>``):
  path ``PathPrefix`` (a trailing ``/`` dropped, except for ``/``), ``Exact``, ``RegularExpression``;
  header and query matches (``Exact``/``RegularExpression``); ``method`` as an exact ``:method``.
* Filters: ``RequestHeaderModifier``/``ResponseHeaderModifier`` (names lower-cased, first wins),
  ``RequestRedirect`` (no port: the request's port, or the scheme's default when a scheme is set;
  ``ReplacePrefixMatch`` as ``%PREFIX()%<value>``), ``URLRewrite`` (``ReplacePrefixMatch`` without
  trailing ``/``, an empty result meaning "strip the prefix"; ``ReplaceFullPath`` as the regex
  ``/.*``; ``hostname`` as the authority), ``RequestMirror`` (``fraction`` or ``percent``),
  ``CORS``.  An ``ExtensionRef`` (or any unknown filter) fails the whole route, as in Istio.
* Backends: weight 0 dropped; a lone remaining backend loses its weight; no positive weight and no
  redirect -> a direct 500.  A Service backend is ``<name>.<ns>.svc.cluster.local:<port>`` whether or
  not the Service exists (the route then answers 500); a ``Hostname`` backend (group
  ``networking.istio.io``) is its name; any other kind is an empty destination (``UnknownService``).
* ``retry``: attempts (default 2), ``retryOn`` = connect-failure, refused-stream, unavailable,
  cancelled plus the codes, ``backoff``.  ``timeouts.request`` -> the route timeout;
  ``timeouts.backendRequest`` -> the per-try timeout when a retry is configured, else the route
  timeout (it then replaces ``request``: Istio's ``convertHTTPRoute`` does exactly this).
* Merging (with GRPCRoutes) into one VirtualService per (namespace, parent port, host):
  ``mesh_routes.py``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from istiod_lite.model import ConfigSnapshot
from istiod_lite.model import gateway as gw
from istiod_lite.model import gateway_routes as gr
from istiod_lite.model.base import Resource
from istiod_lite.model.networking import (
    CorsPolicy,
    Destination,
    HeaderOperations,
    Headers,
    HTTPDirectResponse,
    HTTPMatchRequest,
    HTTPMirrorPolicy,
    HTTPRedirect,
    HTTPRetry,
    HTTPRewrite,
    HTTPRoute,
    HTTPRouteDestination,
    Percent,
    PortSelector,
    RegexRewrite,
    ServiceEntry,
    StringMatch,
)
from istiod_lite.model.types import Duration
from istiod_lite.translator.core import names, tables
from istiod_lite.translator.routing.route_actions import PREFIX_MARKER

ISTIO_GROUP = "networking.istio.io"
CORE_GROUPS = ("", "core")
#: Istio's default retry conditions for a Gateway API ``retry`` stanza.
RETRY_ON = ("connect-failure", "refused-stream", "unavailable", "cancelled")
#: Kinds that read these tables (for memo keys and the whole-waypoint shortcut).
ROUTE_KINDS = tables.ROUTE_KINDS


class ConversionError(Exception):
    """A rule Istio refuses to convert: the whole route then gives no mesh routes."""


def is_service_parent(p: gw.ParentReference) -> bool:
    return p.kind == "Service" and p.group in CORE_GROUPS


def is_service_entry_parent(p: gw.ParentReference) -> bool:
    return p.kind == "ServiceEntry" and p.group == ISTIO_GROUP


def parent_hosts(snapshot: ConfigSnapshot, route: Resource, p: gw.ParentReference) -> tuple[str, ...]:
    """The hosts a mesh parent stands for (``()`` for other parents or a missing ServiceEntry)."""
    ns = p.namespace or route.namespace
    if is_service_parent(p):
        return (names.service_fqdn(p.name, ns),)
    if is_service_entry_parent(p):
        se = snapshot.get(ServiceEntry, ns, p.name)
        return se.spec.hosts if se is not None else ()
    return ()


# --------------------------------------------------------------------------- one rule


def _uri(path: gw.HTTPPathMatch) -> StringMatch:
    if path.type == "Exact":
        return StringMatch.model_construct(exact=path.value)
    if path.type == "RegularExpression":
        return StringMatch.model_construct(regex=path.value)
    value = path.value if path.value == "/" else path.value.removesuffix("/")
    return StringMatch.model_construct(prefix=value)


def _string_match(kind: str, value: str) -> StringMatch:
    return StringMatch.model_construct(regex=value) if kind == "RegularExpression" \
        else StringMatch.model_construct(exact=value)


def _match(m: gw.HTTPRouteMatch) -> HTTPMatchRequest:
    return HTTPMatchRequest.model_construct(
        uri=_uri(m.path),
        headers={h.name: _string_match(h.type, h.value) for h in m.headers},
        query_params={q.name: _string_match(q.type, q.value) for q in m.query_params},
        method=StringMatch.model_construct(exact=m.method) if m.method is not None else None,
    )


def _header_map(headers: Sequence[gw.HTTPHeader]) -> dict[str, str]:
    """``headerListToMap``: names lower-cased; a repeated name keeps its first value."""
    out: dict[str, str] = {}
    for h in headers:
        out.setdefault(h.name.lower(), h.value)
    return out


def _header_ops(f: gw.HTTPHeaderFilter) -> HeaderOperations:
    return HeaderOperations.model_construct(set=_header_map(f.set), add=_header_map(f.add), remove=tuple(f.remove))


def _with_headers(current: Headers | None, request: HeaderOperations | None = None,
                  response: HeaderOperations | None = None) -> Headers:
    base = current or Headers.model_construct()
    return Headers.model_construct(request=request if request is not None else base.request,
                                   response=response if response is not None else base.response)


def _redirect(f: gw.HTTPRequestRedirectFilter) -> HTTPRedirect:
    """``createRedirectFilter``: no port means the request's port, or the scheme's default."""
    port = f.port
    derive: Literal["FROM_PROTOCOL_DEFAULT", "FROM_REQUEST_PORT"] | None = None
    if port is None:
        derive = "FROM_PROTOCOL_DEFAULT" if f.scheme else "FROM_REQUEST_PORT"
    uri = ""
    if f.path is not None and f.path.type == "ReplaceFullPath":
        uri = f.path.replace_full_path or ""
    elif f.path is not None:
        uri = PREFIX_MARKER + (f.path.replace_prefix_match or "")
    return HTTPRedirect.model_construct(uri=uri, authority=f.hostname or "", port=port, derive_port=derive,
                                        scheme=f.scheme or "", redirect_code=f.status_code)


def _rewrite(f: gw.HTTPURLRewriteFilter) -> HTTPRewrite | None:
    uri, regex = "", None
    if f.path is not None:
        if f.path.type == "ReplacePrefixMatch":
            uri = (f.path.replace_prefix_match or "").removesuffix("/") or "/"  # "/" strips the prefix
        else:
            regex = RegexRewrite.model_construct(match="/.*", rewrite=f.path.replace_full_path or "")
    authority = f.hostname or ""
    if not uri and regex is None and not authority:
        return None
    return HTTPRewrite.model_construct(uri=uri, authority=authority, uri_regex_rewrite=regex)


def _cors(f: gw.HTTPCORSFilter) -> CorsPolicy:
    return CorsPolicy.model_construct(
        allow_origins=tuple(StringMatch.model_construct(exact=o) for o in f.allow_origins if o),
        allow_credentials=True if f.allow_credentials else None,
        allow_methods=tuple(f.allow_methods), allow_headers=tuple(f.allow_headers),
        expose_headers=tuple(f.expose_headers),
        max_age=Duration(f.max_age * 1_000_000_000) if f.max_age > 0 else None)


def _destination(kind: str, group: str, name: str, namespace: str | None, port: int | None, route_ns: str,
                 problems: list[str], what: str) -> Destination:
    """``buildDestination``: a Service (hard error if its name has dots), an Istio ``Hostname``, or
    an empty destination for any other kind (kept, so its share of traffic fails)."""
    if kind == "Service" and group in CORE_GROUPS:
        if "." in name:
            raise ConversionError(f"{what}: service name {name!r} invalid; the name of the Service must be used, "
                                  "not the hostname")
        host = names.service_fqdn(name, namespace or route_ns)
    elif kind == "Hostname" and group == ISTIO_GROUP:
        if namespace is not None:
            raise ConversionError(f"{what}: namespace may not be set with Hostname type")
        host = name
    else:
        problems.append(f"{what}: backend kind {group or 'core'}/{kind} is not supported; its traffic fails (500)")
        return Destination.model_construct(host="")
    return Destination.model_construct(host=host, port=PortSelector.model_construct(number=port) if port else None)


def backends(rule: gw.HTTPRouteRule | gr.GRPCRouteRule, route_ns: str, problems: list[str], what: str
             ) -> tuple[HTTPRouteDestination, ...]:
    """A rule's weighted destinations (an HTTPRoute's or a GRPCRoute's: the same backendRef shape,
    Istio converts both alike): weight 0 dropped, a lone backend unweighted, header filters kept."""
    kept = [b for b in rule.backend_refs if b.weight > 0]
    out = []
    for b in kept:
        dest = _destination(b.kind, b.group, b.name, b.namespace, b.port, route_ns, problems, what)
        headers: Headers | None = None
        for f in b.filters:
            if f.type == "RequestHeaderModifier" and f.request_header_modifier is not None:
                headers = _with_headers(headers, request=_header_ops(f.request_header_modifier))
            elif f.type == "ResponseHeaderModifier" and f.response_header_modifier is not None:
                headers = _with_headers(headers, response=_header_ops(f.response_header_modifier))
            else:
                raise ConversionError(f"{what}: unsupported backendRef filter type {f.type!r}")
        out.append(HTTPRouteDestination.model_construct(destination=dest, weight=b.weight if len(kept) > 1 else None,
                                                        headers=headers))
    return tuple(out)


def _retry(r: gw.HTTPRouteRetry) -> HTTPRetry:
    attempts = r.attempts if r.attempts is not None else 2
    retry_on = ",".join((*RETRY_ON, *(str(c) for c in r.codes))) if attempts else ""
    return HTTPRetry.model_construct(attempts=attempts, retry_on=retry_on, backoff=r.backoff)


def convert_rule(route: gw.HTTPRoute, index: int, rule: gw.HTTPRouteRule, match: gw.HTTPRouteMatch | None,
                 problems: list[str]) -> HTTPRoute:
    """``convertHTTPRoute`` for one (rule, match) pair."""
    what = f"HTTPRoute {route.namespace}/{route.name} rules[{index}]"
    headers: Headers | None = None
    redirect: HTTPRedirect | None = None
    rewrite: HTTPRewrite | None = None
    cors: CorsPolicy | None = None
    mirrors: list[HTTPMirrorPolicy] = []
    for f in rule.filters:
        if f.type == "RequestHeaderModifier" and f.request_header_modifier is not None:
            headers = _with_headers(headers, request=_header_ops(f.request_header_modifier))
        elif f.type == "ResponseHeaderModifier" and f.response_header_modifier is not None:
            headers = _with_headers(headers, response=_header_ops(f.response_header_modifier))
        elif f.type == "RequestRedirect" and f.request_redirect is not None:
            redirect = _redirect(f.request_redirect)
        elif f.type == "URLRewrite" and f.url_rewrite is not None:
            rewrite = _rewrite(f.url_rewrite)
        elif f.type == "RequestMirror" and f.request_mirror is not None:
            mirror = _mirror(f.request_mirror, route.namespace, problems, f"{what} RequestMirror")
            if mirror is not None:
                mirrors.append(mirror)
        elif f.type == "CORS" and f.cors is not None:
            cors = _cors(f.cors)
        else:
            raise ConversionError(f"{what}: unsupported filter type {f.type!r}")
    retries = _retry(rule.retry) if rule.retry is not None else None
    timeout: Duration | None = None
    t = rule.timeouts
    if t is not None:
        if t.request is not None and t.request.nanos:
            timeout = t.request
        if t.backend_request is not None and t.backend_request.nanos:
            if retries is not None:
                retries = retries.model_copy(update={"per_try_timeout": t.backend_request})
            else:
                timeout = t.backend_request
    direct: HTTPDirectResponse | None = None
    dests: tuple[HTTPRouteDestination, ...] = ()
    if sum(b.weight for b in rule.backend_refs) == 0 and redirect is None:
        # "When no backends have a positive weight, the implementation MUST return a 500."
        direct = HTTPDirectResponse.model_construct(status=500, body=None)
    else:  # with a redirect too, as Istio (the redirect wins; the backends still get clusters)
        dests = backends(rule, route.namespace, problems, what)
    return HTTPRoute.model_construct(
        name=rule.name or f"{route.namespace}.{route.name}.{index}",
        match=(_match(match),) if match is not None else (), route=dests, redirect=redirect,
        direct_response=direct, rewrite=rewrite, timeout=timeout, retries=retries, mirrors=tuple(mirrors),
        cors_policy=cors, headers=headers)


def _mirror(m: gw.HTTPRequestMirrorFilter, route_ns: str, problems: list[str], what: str) -> HTTPMirrorPolicy | None:
    """``createMirrorFilter``; an invalid backend drops the mirror only (Istio keeps the route)."""
    b = m.backend_ref
    try:
        dest = _destination(b.kind, b.group, b.name, b.namespace, b.port, route_ns, problems, what)
    except ConversionError as e:
        problems.append(str(e))
        return None
    if not dest.host:
        return None
    pct = None
    if m.fraction is not None:
        pct = Percent.model_construct(value=100 * m.fraction.numerator / m.fraction.denominator)
    elif m.percent is not None:
        pct = Percent.model_construct(value=float(m.percent))
    return HTTPMirrorPolicy.model_construct(destination=dest, percentage=pct)


def convert(route: gw.HTTPRoute, problems: list[str]) -> tuple[HTTPRoute, ...] | None:
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


@tables.CONVERTED_ROUTE.computed_by
def _converted(route: gw.HTTPRoute) -> tuple[tuple[HTTPRoute, ...] | None, tuple[str, ...]]:
    """``convert`` with its problems, once per HTTPRoute object: a change to one route does not
    convert the others again (conversion is a pure function of the route)."""
    problems: list[str] = []
    return convert(route, problems), tuple(problems)


#: The helpers GRPCRoute and TCPRoute/TLSRoute conversion share with HTTPRoute's (Istio's
#: ``buildDestination``, ``createHeadersFilter``, ``createMirrorFilter``).
destination = _destination
header_ops = _header_ops
with_headers = _with_headers
mirror_policy = _mirror
