"""Route selection as Envoy's router does it: the virtual host by ``:authority``, then the first
route whose match accepts the request; and what the chosen route does (cluster or weighted
clusters, rewrites, redirect, direct response, fault, retries, timeout, mirrors)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.http.fault.v3 import fault_pb2
from envoy.extensions.path.match.uri_template.v3 import uri_template_match_pb2
from envoy.type.v3 import percent_pb2
from google.protobuf import json_format

from istiod_lite.explain.envoy_eval.config import unpack
from istiod_lite.explain.envoy_eval.matchers import (
    Headers,
    describe_header_match,
    header_match,
    query_match,
    query_params,
    regex_full_match,
)
from istiod_lite.explain.envoy_eval.paths import split_query, uri_template_match

_REDIRECT_CODES = {0: 301, 1: 302, 2: 303, 3: 307, 4: 308}


@dataclass(frozen=True)
class HttpRequest:
    """One request as the routing table sees it (header names lower-case, pseudo-headers included)."""

    method: str
    path: str  # after the connection manager's normalisation, with the query string
    authority: str
    headers: Headers  # includes :method, :path, :authority, :scheme

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k == name:
                return v
        return None


def select_virtual_host(rcfg: route_pb2.RouteConfiguration, authority: str) -> rc.VirtualHost | None:
    """Envoy's order: exact domain, then the longest ``*suffix``, then the longest ``prefix*``,
    then ``*``.  Hosts compare case-insensitively; a wildcard matches at least one character."""
    host = authority.lower()
    exact: rc.VirtualHost | None = None
    suffix: tuple[int, rc.VirtualHost] | None = None
    prefix: tuple[int, rc.VirtualHost] | None = None
    star: rc.VirtualHost | None = None
    for vh in rcfg.virtual_hosts:
        for d in vh.domains:
            d = d.lower()
            if d == "*":
                star = star or vh
            elif d.startswith("*"):
                s = d[1:]
                if len(host) > len(s) and host.endswith(s) and (suffix is None or len(s) > suffix[0]):
                    suffix = (len(s), vh)
            elif d.endswith("*"):
                p = d[:-1]
                if len(host) > len(p) and host.startswith(p) and (prefix is None or len(p) > prefix[0]):
                    prefix = (len(p), vh)
            elif d == host and exact is None:
                exact = vh
    if exact is not None:
        return exact
    if suffix is not None:
        return suffix[1]
    if prefix is not None:
        return prefix[1]
    return star


def _case(value: str, sensitive: bool) -> str:
    return value if sensitive else value.lower()


def route_matches(match: rc.RouteMatch, req: HttpRequest) -> tuple[bool, str]:
    """(matched, why) for one ``RouteMatch``."""
    sensitive = match.case_sensitive.value if match.HasField("case_sensitive") else True
    path_only = split_query(req.path)[0]
    kind = match.WhichOneof("path_specifier")
    if kind == "prefix":
        ok = _case(req.path, sensitive).startswith(_case(match.prefix, sensitive))
        why = f"prefix {match.prefix!r}"
    elif kind == "path":
        ok = _case(path_only, sensitive) == _case(match.path, sensitive)
        why = f"path {match.path!r}"
    elif kind == "safe_regex":
        ok = regex_full_match(match.safe_regex, path_only)
        why = f"regex {match.safe_regex.regex!r}"
    elif kind == "path_separated_prefix":
        p, want = _case(path_only, sensitive), _case(match.path_separated_prefix, sensitive)
        ok = p == want or p.startswith(want + "/")
        why = f"path_separated_prefix {match.path_separated_prefix!r}"
    elif kind == "path_match_policy":
        cfg = unpack(match.path_match_policy.typed_config)
        if isinstance(cfg, uri_template_match_pb2.UriTemplateMatchConfig):
            ok = uri_template_match(cfg.path_template, path_only)
            why = f"uri template {cfg.path_template!r}"
        else:
            ok, why = False, f"unknown path matcher {match.path_match_policy.name}"
    elif kind == "connect_matcher":
        ok, why = req.method == "CONNECT", "CONNECT"
    else:
        ok, why = False, "no path specifier"
    if not ok:
        return False, f"{why}: no"
    for h in match.headers:
        if not header_match(h, req.headers):
            return False, f"{why}: yes; header {describe_header_match(h)}: no"
    params = query_params(req.path)
    for q in match.query_parameters:
        if not query_match(q, params):
            return False, f"{why}: yes; query {q.name}: no"
    if match.HasField("grpc") and not (req.header("content-type") or "").startswith("application/grpc"):
        return False, f"{why}: yes; gRPC content-type: no"
    extra = [describe_header_match(h) for h in match.headers] + [f"query {q.name}" for q in match.query_parameters]
    return True, why + (" and " + ", ".join(extra) if extra else "")


@dataclass
class RouteChoice:
    virtual_host: str | None
    route: rc.Route | None
    tried: list[str] = field(default_factory=list)


def select_route(rcfg: route_pb2.RouteConfiguration, req: HttpRequest) -> RouteChoice:
    vh = select_virtual_host(rcfg, req.authority)
    if vh is None:
        return RouteChoice(None, None, [f"no virtual host for {req.authority!r}"])
    tried: list[str] = []
    for route in vh.routes:
        ok, why = route_matches(route.match, req)
        tried.append(f"{route.name or '(unnamed)'}: {why}")
        if ok:
            return RouteChoice(vh.name, route, tried)
    return RouteChoice(vh.name, None, tried)


def _percent(p: percent_pb2.FractionalPercent) -> float:
    den = {0: 100, 1: 10_000, 2: 1_000_000}.get(p.denominator, 100)
    return float(100.0 * p.numerator / den)


def _duration(d: Any) -> str:
    return f"{d.seconds + d.nanos / 1e9:g}s"


@dataclass
class FaultSpec:
    abort_status: int | None = None
    abort_grpc_status: int | None = None
    abort_percent: float = 0.0
    delay: str | None = None
    delay_percent: float = 0.0

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.abort_status is not None or self.abort_grpc_status is not None:
            out["abort"] = {"httpStatus": self.abort_status, "grpcStatus": self.abort_grpc_status,
                            "percent": self.abort_percent}
        if self.delay is not None:
            out["delay"] = {"fixedDelay": self.delay, "percent": self.delay_percent}
        return out


def route_fault(route: rc.Route, vh: rc.VirtualHost | None = None) -> FaultSpec | None:
    """The per-route ``envoy.filters.http.fault`` config (the filter itself is empty)."""
    packed = route.typed_per_filter_config.get("envoy.filters.http.fault")
    if packed is None and vh is not None:
        packed = vh.typed_per_filter_config.get("envoy.filters.http.fault")
    if packed is None:
        return None
    cfg = unpack(packed)
    if not isinstance(cfg, fault_pb2.HTTPFault):
        return None
    spec = FaultSpec()
    if cfg.HasField("abort"):
        if cfg.abort.WhichOneof("error_type") == "http_status":
            spec.abort_status = cfg.abort.http_status
        elif cfg.abort.WhichOneof("error_type") == "grpc_status":
            spec.abort_grpc_status = cfg.abort.grpc_status
        spec.abort_percent = _percent(cfg.abort.percentage) if cfg.abort.HasField("percentage") else 100.0
    if cfg.HasField("delay"):
        spec.delay = _duration(cfg.delay.fixed_delay)
        spec.delay_percent = _percent(cfg.delay.percentage) if cfg.delay.HasField("percentage") else 100.0
    return spec


def describe_action(route: rc.Route) -> dict[str, Any]:
    """What the route does, in ``-o json`` shape (Envoy's field names where they exist)."""
    out: dict[str, Any] = {}
    action = route.WhichOneof("action")
    if action == "direct_response":
        dr = route.direct_response
        out["directResponse"] = {"status": dr.status,
                                 "body": dr.body.inline_string or dr.body.inline_bytes.decode(errors="replace")
                                 if dr.HasField("body") else ""}
    elif action == "redirect":
        r = route.redirect
        red: dict[str, Any] = {"status": _REDIRECT_CODES.get(r.response_code, 301)}
        for f in ("scheme_redirect", "host_redirect", "port_redirect", "path_redirect", "prefix_rewrite",
                  "https_redirect", "strip_query"):
            if getattr(r, f):
                red[f] = getattr(r, f)
        if r.HasField("regex_rewrite"):
            red["regex_rewrite"] = {"pattern": r.regex_rewrite.pattern.regex,
                                    "substitution": r.regex_rewrite.substitution}
        out["redirect"] = red
    elif action == "route":
        ra = route.route
        spec = ra.WhichOneof("cluster_specifier")
        if spec == "cluster":
            out["clusters"] = [{"name": ra.cluster, "weight": 100}]
        elif spec == "weighted_clusters":
            total = sum(c.weight.value for c in ra.weighted_clusters.clusters) or 1
            out["clusters"] = [{"name": c.name, "weight": c.weight.value,
                                "percent": round(100.0 * c.weight.value / total, 2)}
                               for c in ra.weighted_clusters.clusters]
        elif spec == "cluster_header":
            out["clusterHeader"] = ra.cluster_header
        rewrite: dict[str, Any] = {}
        if ra.prefix_rewrite:
            rewrite["prefix"] = ra.prefix_rewrite
        if ra.HasField("regex_rewrite"):
            rewrite["regex"] = {"pattern": ra.regex_rewrite.pattern.regex,
                                "substitution": ra.regex_rewrite.substitution}
        if ra.HasField("path_rewrite_policy"):
            cfg = unpack(ra.path_rewrite_policy.typed_config)
            rewrite["pathTemplate"] = getattr(cfg, "path_template_rewrite", ra.path_rewrite_policy.name)
        if ra.host_rewrite_literal:
            rewrite["authority"] = ra.host_rewrite_literal
        if ra.HasField("auto_host_rewrite") and ra.auto_host_rewrite.value:
            rewrite["authority"] = "(the upstream host)"
        if rewrite:
            out["rewrite"] = rewrite
        if ra.HasField("timeout"):
            out["timeout"] = _duration(ra.timeout)
        if ra.HasField("retry_policy"):
            rp = ra.retry_policy
            retry: dict[str, Any] = {"retryOn": rp.retry_on,
                                     "numRetries": rp.num_retries.value if rp.HasField("num_retries") else 1}
            if rp.HasField("per_try_timeout"):
                retry["perTryTimeout"] = _duration(rp.per_try_timeout)
            out["retries"] = retry
        else:
            out["retries"] = None
        if ra.request_mirror_policies:
            out["mirrors"] = [{"cluster": m.cluster, "percent": _percent(m.runtime_fraction.default_value)
                               if m.HasField("runtime_fraction") else 100.0} for m in ra.request_mirror_policies]
        if ra.hash_policy:
            out["hashPolicy"] = [json_format.MessageToDict(h, preserving_proto_field_name=True) for h in ra.hash_policy]
    headers: dict[str, Any] = {}
    for f in ("request_headers_to_add", "request_headers_to_remove", "response_headers_to_add",
              "response_headers_to_remove"):
        vals = getattr(route, f)
        if vals:
            headers[f] = [v if isinstance(v, str) else {v.header.key: v.header.value} for v in vals]
    if headers:
        out["headers"] = headers
    return out
