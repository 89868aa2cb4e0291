"""What one VirtualService HTTP route does: header operations, retries, hashing, mirroring,
fault injection, CORS, redirects and direct responses (Istio's ``route.go`` / ``retry.go``).

Facts: docs/istio-waypoint-shape.md §4 "Actions".  Each function maps one Istio field
group to its Envoy message; ``routes`` assembles them into a ``Route``.  Deterministic: header maps
are emitted sorted by name, as Istio does.
"""

from __future__ import annotations

import http
from collections.abc import Mapping
from dataclasses import dataclass, field

from envoy.config.core.v3 import base_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.extensions.filters.http.cors.v3 import cors_pb2
from envoy.extensions.filters.http.fault.v3 import fault_pb2
from envoy.extensions.retry.host.previous_hosts.v3 import previous_hosts_pb2
from envoy.extensions.retry.priority.previous_priorities.v3 import previous_priorities_config_pb2 as pp_pb2
from envoy.type.matcher.v3 import string_pb2
from envoy.type.v3 import percent_pb2

from istiod_lite.model.networking import (
    ConsistentHashLB,
    CorsPolicy,
    Headers,
    HTTPDirectResponse,
    HTTPFaultInjection,
    HTTPRedirect,
    HTTPRetry,
    Percent,
)
from istiod_lite.translator.clusters.policy_apply import set_duration
from istiod_lite.translator.core.protos import packed
from istiod_lite.translator.routing.route_match import string_matcher

#: Istio's default retry policy for routes without ``retries`` (core/route/retry/retry.go).
DEFAULT_RETRY_ON = "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes"
FAULT_FILTER = "envoy.filters.http.fault"
CORS_FILTER = "envoy.filters.http.cors"
_OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
_APPEND = base_pb2.HeaderValueOption.APPEND_IF_EXISTS_OR_ADD
_STATUS_CODES = frozenset(s.value for s in http.HTTPStatus)
#: gRPC status names Istio accepts (``grpc.SupportedGRPCStatus``) -> codes.
GRPC_STATUS = {name: code for code, name in enumerate((
    "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND", "ALREADY_EXISTS",
    "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED",
    "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED"))}
_REDIRECT_CODES = {0: rc.RedirectAction.MOVED_PERMANENTLY, 301: rc.RedirectAction.MOVED_PERMANENTLY,
                   302: rc.RedirectAction.FOUND, 303: rc.RedirectAction.SEE_OTHER,
                   307: rc.RedirectAction.TEMPORARY_REDIRECT, 308: rc.RedirectAction.PERMANENT_REDIRECT}


def _default_retry_policy(previous_hosts: bool) -> rc.RetryPolicy:
    rp = rc.RetryPolicy(retry_on=DEFAULT_RETRY_ON, host_selection_retry_max_attempts=5)
    rp.num_retries.value = 2
    if previous_hosts:
        pred = rp.retry_host_predicate.add(name="envoy.retry_host_predicates.previous_hosts")
        pred.typed_config.Pack(previous_hosts_pb2.PreviousHostsPredicate())
    return rp


_DEFAULT_RETRY = _default_retry_policy(previous_hosts=True)
_DEFAULT_HASH_RETRY = _default_retry_policy(previous_hosts=False)
_PREVIOUS_PRIORITIES = packed(pp_pb2.PreviousPrioritiesConfig(update_frequency=2))


def default_retry_policy(consistent_hash: bool = False) -> rc.RetryPolicy:
    """Istio's default; without the previous-hosts predicate when the route hashes (a retry must
    go to the same host)."""
    rp = rc.RetryPolicy()
    rp.CopyFrom(_DEFAULT_HASH_RETRY if consistent_hash else _DEFAULT_RETRY)
    return rp


def retry_policy(retries: HTTPRetry | None, consistent_hash: bool) -> rc.RetryPolicy | None:
    """``retry.ConvertPolicy``: the default, overridden field by field; ``attempts: 0`` disables."""
    out = default_retry_policy(consistent_hash)
    if retries is None:
        return out
    if (retries.attempts or 0) <= 0:
        return None
    out.num_retries.value = retries.attempts or 0
    if retries.retry_on:
        conditions, codes = [], []
        for part in (p.strip() for p in retries.retry_on.split(",")):
            if not part:
                continue
            if part.isdigit() and int(part) in _STATUS_CODES:
                codes.append(int(part))
            else:
                conditions.append(part)
        out.retry_on = ",".join(conditions)
        out.ClearField("retriable_status_codes")
        out.retriable_status_codes.extend(codes)
        if codes and "retriable-status-codes" not in out.retry_on:
            out.retry_on += ",retriable-status-codes"
    if retries.per_try_timeout is not None:
        set_duration(out.per_try_timeout, retries.per_try_timeout)
    if retries.retry_ignore_previous_hosts is not None:
        out.ClearField("retry_host_predicate")
        if retries.retry_ignore_previous_hosts:
            out.retry_host_predicate.extend(_DEFAULT_RETRY.retry_host_predicate)
    if retries.retry_remote_localities:
        out.retry_priority.name = "envoy.retry_priorities.previous_priorities"
        out.retry_priority.typed_config.CopyFrom(_PREVIOUS_PRIORITIES)
    if retries.backoff is not None:
        set_duration(out.retry_back_off.base_interval, retries.backoff)
    return out


def hash_policy(ch: ConsistentHashLB | None) -> rc.RouteAction.HashPolicy | None:
    """``consistentHashToHashPolicy``: what the route hashes on (None: nothing, e.g. only a ring
    size was configured)."""
    if ch is None:
        return None
    hp = rc.RouteAction.HashPolicy()
    if ch.http_header_name is not None:
        hp.header.header_name = ch.http_header_name
    elif ch.http_cookie is not None:
        cookie = ch.http_cookie
        hp.cookie.name = cookie.name
        hp.cookie.path = cookie.path
        if cookie.ttl is not None:
            set_duration(hp.cookie.ttl, cookie.ttl)
    elif ch.use_source_ip is not None:
        hp.connection_properties.source_ip = ch.use_source_ip
        hp.connection_properties.SetInParent()
    elif ch.http_query_parameter_name is not None:
        hp.query_parameter.name = ch.http_query_parameter_name
    else:
        return None
    return hp


@dataclass
class HeaderOps:
    """``HeadersOperations``: header mutations plus the authority a ``set``/``add`` asks for."""

    request_add: list[base_pb2.HeaderValueOption] = field(default_factory=list)
    response_add: list[base_pb2.HeaderValueOption] = field(default_factory=list)
    request_remove: list[str] = field(default_factory=list)
    response_remove: list[str] = field(default_factory=list)
    authority: str = ""


def _internal(name: str) -> bool:
    return name.startswith(":") or name.lower() == "host"


def _header_options(headers: Mapping[str, str], action: int) -> tuple[list[base_pb2.HeaderValueOption], str]:
    out, authority = [], ""
    for key in sorted(headers):
        if key.lower() in (":authority", "host"):
            authority = headers[key]
        if _internal(key):
            continue  # Envoy cannot mutate pseudo-headers; the authority becomes a host rewrite
        hvo = base_pb2.HeaderValueOption(append_action=action)
        hvo.header.key = key
        hvo.header.value = headers[key]
        out.append(hvo)
    return out, authority


def header_operations(h: Headers) -> HeaderOps:
    """``set`` -> OVERWRITE_IF_EXISTS_OR_ADD, ``add`` -> APPEND_IF_EXISTS_OR_ADD (each sorted),
    ``remove`` as is; pseudo-headers and ``host`` are dropped (an authority wins from ``set``)."""
    ops = HeaderOps()
    if h.request is not None:
        req_set, set_authority = _header_options(h.request.set, _OVERWRITE)
        req_add, add_authority = _header_options(h.request.add, _APPEND)
        ops.request_add = req_set + req_add
        ops.request_remove = [k for k in h.request.remove if not _internal(k)]
        ops.authority = set_authority or add_authority
    if h.response is not None:
        ops.response_add = _header_options(h.response.set, _OVERWRITE)[0] + \
            _header_options(h.response.add, _APPEND)[0]
        ops.response_remove = [k for k in h.response.remove if not _internal(k)]
    return ops


def percent(p: Percent) -> percent_pb2.FractionalPercent:
    """An Istio ``Percent`` as Envoy's parts-per-million (Istio truncates, as ``uint32(v*10000)``)."""
    return percent_pb2.FractionalPercent(numerator=int(p.value * 10000),
                                         denominator=percent_pb2.FractionalPercent.MILLION)


def hundred(value: int) -> percent_pb2.FractionalPercent:
    return percent_pb2.FractionalPercent(numerator=value, denominator=percent_pb2.FractionalPercent.HUNDRED)


def mirror_fraction(percentage: Percent | None, legacy_percent: int | None = None
                    ) -> percent_pb2.FractionalPercent | None:
    """``MirrorPercent``/``MirrorPercentByPolicy``: 100% unless given; an explicit 0 disables."""
    if percentage is not None:
        return percent(percentage) if percentage.value > 0 else None
    if legacy_percent is not None:
        return hundred(legacy_percent) if legacy_percent > 0 else None
    return hundred(100)


def mirror_policy(cluster: str, fraction: percent_pb2.FractionalPercent) -> rc.RouteAction.RequestMirrorPolicy:
    mp = rc.RouteAction.RequestMirrorPolicy(cluster=cluster)
    mp.runtime_fraction.default_value.CopyFrom(fraction)
    mp.trace_sampled.SetInParent()  # false
    return mp


def fault(f: HTTPFaultInjection) -> fault_pb2.HTTPFault | None:
    """``TranslateFault``: a fixed delay and/or an HTTP or gRPC abort, each for a percentage of
    requests (``percentage`` in ppm, else the legacy integer ``percent``)."""
    out = fault_pb2.HTTPFault()
    d = f.delay
    if d is not None and d.fixed_delay is not None:
        out.delay.percentage.CopyFrom(percent(d.percentage) if d.percentage is not None else hundred(d.percent or 0))
        set_duration(out.delay.fixed_delay, d.fixed_delay)
    a = f.abort
    if a is not None and (a.http_status is not None or a.grpc_status is not None):
        if a.percentage is not None:
            out.abort.percentage.CopyFrom(percent(a.percentage))
        if a.http_status is not None:
            out.abort.http_status = a.http_status
        else:
            out.abort.grpc_status = GRPC_STATUS[a.grpc_status or "OK"]
    if not out.HasField("delay") and not out.HasField("abort"):
        return None
    return out


def cors(c: CorsPolicy) -> cors_pb2.CorsPolicy:
    """``TranslateCORSPolicy``: origins (``allowOrigins`` matchers, else the legacy exact list),
    lists joined by ",", max age in seconds, always enabled."""
    out = cors_pb2.CorsPolicy()
    out.forward_not_matching_preflights.value = c.unmatched_preflights != "IGNORE"
    out.forward_not_matching_preflights.SetInParent()
    if c.allow_origins:
        out.allow_origin_string_match.extend(m for o in c.allow_origins if (m := string_matcher(o)) is not None)
    else:
        out.allow_origin_string_match.extend(string_pb2.StringMatcher(exact=o) for o in c.allow_origin)
    out.filter_enabled.default_value.CopyFrom(hundred(100))
    if c.allow_credentials is not None:
        out.allow_credentials.value = c.allow_credentials
        out.allow_credentials.SetInParent()
    out.allow_headers = ",".join(c.allow_headers)
    out.allow_methods = ",".join(c.allow_methods)
    out.expose_headers = ",".join(c.expose_headers)
    if c.max_age is not None:
        out.max_age = str(c.max_age.seconds)
    return out


#: Gateway API prefix-replacing redirects arrive as ``%PREFIX()%<replacement>`` (Istio's marker).
PREFIX_MARKER = "%PREFIX()%"


def redirect(r: rc.Route, red: HTTPRedirect, listen_port: int, gateway: bool = False) -> bool:
    """``ApplyRedirect``; False for a redirect code Envoy cannot express (the route is dropped:
    Istio would emit a route without action, which Envoy rejects).  With gateway semantics a
    ``%PREFIX()%`` URI replaces the matched prefix (``prefix_rewrite``) instead of the whole path."""
    code = _REDIRECT_CODES.get(red.redirect_code)
    if code is None:
        return False
    ra = r.redirect
    ra.host_redirect = red.authority
    if red.prefix_rewrite:
        ra.prefix_rewrite = red.prefix_rewrite
    elif gateway and red.uri.startswith(PREFIX_MARKER):
        ra.prefix_rewrite = red.uri[len(PREFIX_MARKER):]
    else:
        ra.path_redirect = red.uri
    ra.response_code = code
    if red.scheme:
        ra.scheme_redirect = red.scheme
    if red.port is not None or red.derive_port is not None:
        port = red.port if red.port is not None else (listen_port if red.derive_port == "FROM_REQUEST_PORT" else 0)
        scheme = red.scheme or "http"  # a waypoint never terminates TLS
        if (port, scheme) not in ((80, "http"), (443, "https")):
            ra.port_redirect = port
    r.redirect.SetInParent()
    return True


def direct_response(r: rc.Route, d: HTTPDirectResponse) -> None:
    """``ApplyDirectResponse``: status and an inline string or bytes body."""
    r.direct_response.status = d.status
    if d.body is not None:
        if d.body.bytes_ is not None:
            r.direct_response.body.inline_bytes = d.body.content
        else:
            r.direct_response.body.inline_string = d.body.string or ""
