"""``istiod-lite explain request``: what a waypoint does with one HTTP request, computed from the
waypoint's generated Envoy configuration (the resources ``WaypointAssembly`` gives the server).

The walk follows Envoy's own order: ``connect_terminate``'s HBONE TLS handshake (is the client's
certificate SAN, its SPIFFE ID, in the trust-domain bundle?) -> ``main_internal``'s filter chain matcher (destination
address, port, application protocol) -> the chain's network filters (RBAC slots) -> the HTTP
connection manager (path normalisation, RDS route configuration, virtual host, first matching
route) -> the HTTP filters in order (jwt_authn, RBAC deny and allow slots, ext_authz, fault) ->
the router (direct response, redirect, or the route's cluster(s), then the cluster's endpoints).
Where Envoy's answer depends on something offline evaluation cannot know (an ext_authz server, a
probabilistic fault, a remote JWKS) the explanation says so instead of guessing.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.rbac.v3 import rbac_pb2
from envoy.extensions.filters.http.jwt_authn.v3 import config_pb2 as jwt_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as http_rbac_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.filters.network.rbac.v3 import rbac_pb2 as net_rbac_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from google.protobuf.message import Message

from istiod_lite.explain.envoy_eval import jwt as jwt_eval
from istiod_lite.explain.envoy_eval import rbac as rbac_eval
from istiod_lite.explain.envoy_eval.config import EnvoyConfig, type_name, unpack
from istiod_lite.explain.envoy_eval.handshake import CONNECT_TERMINATE, HandshakeCheck, check_peer
from istiod_lite.explain.envoy_eval.listener import ConnectionInputs, select_chain
from istiod_lite.explain.envoy_eval.paths import normalize
from istiod_lite.explain.envoy_eval.routing import (
    HttpRequest,
    describe_action,
    route_fault,
    select_route,
)

MAIN_INTERNAL = "main_internal"
_POLICY_NAME = re.compile(r"ns\[(?P<ns>[^\]]*)\]-policy\[(?P<name>[^\]]*)\]-rule\[(?P<rule>\d+)\]")
#: The methods Envoy's HTTP/1.1 codec accepts (http-parser's list); anything else is a 400 before
#: any filter or route sees the request.
HTTP1_METHODS = frozenset((
    "DELETE", "GET", "HEAD", "POST", "PUT", "CONNECT", "OPTIONS", "TRACE", "COPY", "LOCK", "MKCOL", "MOVE",
    "PROPFIND", "PROPPATCH", "SEARCH", "UNLOCK", "BIND", "REBIND", "UNBIND", "ACL", "REPORT", "MKACTIVITY",
    "CHECKOUT", "MERGE", "M-SEARCH", "NOTIFY", "SUBSCRIBE", "UNSUBSCRIBE", "PATCH", "PURGE", "MKCALENDAR", "LINK",
    "UNLINK", "SOURCE"))
#: What Envoy accepts in ``:authority`` (nghttp2's check: RFC 3986 reg-name, userinfo and port
#: characters); anything else is a 400.
_VALID_AUTHORITY = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,;=:@\[\]%]+")
_CONFIG_PATH = re.compile(r"/apis/(?P<group>[^/]+)/[^/]+/namespaces/(?P<ns>[^/]+)/(?P<kind>[^/]+)/(?P<name>.+)")


class ExplainError(Exception):
    """The question cannot be answered (unknown waypoint, host, malformed identity...)."""


@dataclass(frozen=True)
class RequestQuery:
    """The request to explain, as the waypoint's ``main_internal`` sees it."""

    dest_ip: str
    dest_port: int
    method: str
    path: str
    authority: str
    headers: tuple[tuple[str, str], ...] = ()  # lower-case names, no pseudo-headers
    peer_principal: str | None = None  # spiffe://... (the HBONE client's certificate)
    source_ip: str | None = None
    scheme: str = "http"


@dataclass
class Explanation:
    """Everything ``explain request`` reports; ``to_json`` is the ``-o json`` document."""

    query: RequestQuery
    handshake: HandshakeCheck | None = None
    chain: str | None = None
    chain_steps: list[str] = field(default_factory=list)
    protocol: str | None = None  # http / tcp
    normalized_path: str | None = None
    route_config: str | None = None
    virtual_host: str | None = None
    routes_tried: list[str] = field(default_factory=list)
    route: dict[str, Any] | None = None
    filters: list[dict[str, Any]] = field(default_factory=list)
    authorization: dict[str, Any] = field(default_factory=lambda: {"allowed": True, "decidedBy": None})
    jwt: dict[str, Any] | None = None
    fault: dict[str, Any] | None = None
    action: dict[str, Any] = field(default_factory=dict)
    outcome: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        q = self.query
        return {
            "request": {"destination": f"{q.dest_ip}:{q.dest_port}", "method": q.method, "path": q.path,
                        "authority": q.authority, "headers": [list(h) for h in q.headers],
                        "peerPrincipal": q.peer_principal, "sourceIp": q.source_ip},
            "hboneHandshake": self.handshake.to_json() if self.handshake is not None else None,
            "filterChain": {"listener": MAIN_INTERNAL, "name": self.chain, "match": self.chain_steps,
                            "protocol": self.protocol},
            "normalizedPath": self.normalized_path,
            "routeConfiguration": self.route_config,
            "virtualHost": self.virtual_host,
            "routesTried": self.routes_tried,
            "route": self.route,
            "httpFilters": self.filters,
            "jwt": self.jwt,
            "authorization": self.authorization,
            "fault": self.fault,
            "action": self.action,
            "outcome": self.outcome,
            "notes": self.notes,
        }


def policy_origin(policy: str) -> dict[str, Any] | None:
    """``ns[NS]-policy[NAME]-rule[N]`` -> the AuthorizationPolicy and rule index."""
    m = _POLICY_NAME.fullmatch(policy)
    if m is None:
        return None
    return {"authorizationPolicy": f"{m['ns']}/{m['name']}", "rule": int(m["rule"])}


def route_origin(route_name: str, metadata_config: str | None) -> dict[str, Any] | None:
    """The VirtualService (or Gateway API route) rule a route came from, from its name and its
    ``istio`` metadata (``config``: the VirtualService's path; Gateway API routes are converted
    to VirtualServices named ``<ns>~<host>``, their routes ``<ns>.<name>.<index>`` or the rule's name)."""
    if not metadata_config:
        return None
    m = _CONFIG_PATH.fullmatch(metadata_config)
    if m is None:
        return {"config": metadata_config}
    if m["kind"] == "virtual-service" and "~" in m["name"]:
        out: dict[str, Any] = {"kind": "Gateway API route", "convertedVirtualService": f"{m['ns']}/{m['name']}"}
        parts = route_name.rsplit(".", 2)
        if len(parts) == 3 and parts[2].isdigit() and parts[0] == m["ns"]:
            out.update(route=f"{parts[0]}/{parts[1]}", rule=int(parts[2]))
        else:
            out["ruleName"] = route_name
        return out
    kind = {"virtual-service": "VirtualService"}.get(m["kind"], m["kind"])
    return {"kind": kind, "name": f"{m['ns']}/{m['name']}", "rule": route_name or None}


def _filter_config(cfg: EnvoyConfig, hf: Any) -> tuple[str, Message | None, str]:
    """(name, config message, source) of one HTTP or network filter: inline or its ECDS config."""
    if hf.HasField("config_discovery"):
        ext = cfg.extension_configs.get(hf.name)
        if ext is None:
            return hf.name, None, "ecds (not served)"
        return hf.name, unpack(ext.typed_config), "ecds"
    return hf.name, unpack(hf.typed_config) if hf.HasField("typed_config") else None, "inline"


def _rbac_outcome(name: str, rules: rbac_pb2.RBAC | None, shadow: rbac_pb2.RBAC | None,
                  ctx: rbac_eval.RbacContext) -> tuple[dict[str, Any], bool]:
    out = rbac_eval.evaluate(rules, ctx, shadow)
    info: dict[str, Any] = {"name": name, "type": "rbac", "action": out.action, "enforced": out.enforced,
                            "matchedPolicies": [{"policy": p, **(policy_origin(p) or {})} for p in out.matched],
                            "allowed": out.allowed}
    if out.shadow_action is not None:
        info["dryRun"] = {"action": out.shadow_action,
                          "matchedPolicies": [{"policy": p, **(policy_origin(p) or {})} for p in out.shadow_matched]}
    return info, out.allowed


#: The authorization verdict when the request is answered before the RBAC filters run.
_NOT_REACHED: dict[str, Any] = {"allowed": None, "decidedBy": None,
                                "reason": "not reached: the request was answered before the RBAC filters"}


def _deny(exp: Explanation, info: dict[str, Any]) -> None:
    matched = info["matchedPolicies"]
    if info["action"] == "DENY":
        decided = matched[0] if matched else None
        reason = "a DENY policy matched"
    else:
        decided = None
        reason = "no ALLOW policy matched"
    exp.authorization = {"allowed": False, "filter": info["name"], "reason": reason, "decidedBy": decided,
                         "matchedPolicies": matched}


def _cluster_targets(cfg: EnvoyConfig, names: Sequence[str]) -> list[dict[str, Any]]:
    out = []
    for name in names:
        c = cfg.clusters.get(name)
        entry: dict[str, Any] = {"name": name}
        if c is None:
            entry["missing"] = True
        else:
            entry["type"] = cluster_pb2.Cluster.DiscoveryType.Name(c.type) if c.HasField("type") else "CLUSTER_TYPE"
            entry["endpoints"] = cfg.endpoint_addresses(name)
        out.append(entry)
    return out


#: ``RouteAction.cluster_not_found_response_code``.
_NOT_FOUND_CODES = {0: 503, 1: 404, 2: 500}


def _upstream_outcome(exp: Explanation, targets: list[dict[str, Any]], weights: dict[str, int],
                      not_found_status: int = 503) -> None:
    live = [t for t in targets if weights.get(t["name"], 0) > 0]
    unusable = [t for t in live if t.get("missing") or (t.get("type") == "EDS" and not t.get("endpoints"))]
    if live and len(unusable) == len(live):
        missing = all(t.get("missing") for t in unusable)
        exp.outcome = {"kind": "local_reply", "status": not_found_status if missing else 503, "by": "router",
                       "reason": "cluster not found" if missing else "no healthy upstream"}
    else:
        exp.outcome = {"kind": "upstream", "status": None, "by": "router",
                       "clusters": [t["name"] for t in live if t not in unusable],
                       "reason": "forwarded; the status is the upstream's"}
        if unusable:
            exp.notes.append("some weighted clusters cannot serve (503 when chosen): "
                             + ", ".join(t["name"] for t in unusable))


def explain(cfg: EnvoyConfig, q: RequestQuery) -> Explanation:
    """Walk ``q`` through the waypoint's configuration ``cfg``."""
    exp = Explanation(q)
    exp.handshake = check_peer(cfg.listeners.get(CONNECT_TERMINATE), q.peer_principal)
    if not exp.handshake.accepted:
        exp.outcome = {"kind": "refused", "status": None, "by": CONNECT_TERMINATE,
                       "reason": "refused at the HBONE TLS handshake: the client certificate "
                                 f"{q.peer_principal or '(none)'} is not accepted"}
        exp.authorization = {"allowed": None, "decidedBy": None,
                             "reason": "not reached: the connection was refused at the HBONE TLS handshake"}
        return exp
    if not exp.handshake.checked:
        exp.notes.append(f"HBONE peer check not evaluated: {exp.handshake.reason}")
    listener = cfg.listeners.get(MAIN_INTERNAL)
    if listener is None:
        raise ExplainError(f"the configuration has no {MAIN_INTERNAL} listener")
    match = select_chain(listener, ConnectionInputs(q.dest_ip, q.dest_port))
    exp.chain_steps = match.steps
    if match.chain is None:
        exp.outcome = {"kind": "reset", "status": None, "by": "listener",
                       "reason": f"no filter chain of {MAIN_INTERNAL} matches {q.dest_ip}:{q.dest_port}"}
        return exp
    fc = match.chain
    exp.chain = fc.name
    filter_state = {"io.istio.peer_principal": q.peer_principal} if q.peer_principal else {}
    base_ctx = rbac_eval.RbacContext(headers=(), path=q.path, dest_ip=q.dest_ip, dest_port=q.dest_port,
                                     source_ip=q.source_ip, remote_ip=q.source_ip, filter_state=filter_state)
    hcm: hcm_pb2.HttpConnectionManager | None = None
    for nf in fc.filters:
        name, msg, source = _filter_config(cfg, nf)
        if isinstance(msg, net_rbac_pb2.RBAC):
            info, allowed = _rbac_outcome(name, msg.rules if msg.HasField("rules") else None,
                                          msg.shadow_rules if msg.HasField("shadow_rules") else None, base_ctx)
            info["layer"] = "network"
            exp.filters.append(info)
            if not allowed:
                _deny(exp, info)
                exp.outcome = {"kind": "reset", "status": None, "by": "rbac", "reason": "connection closed by RBAC"}
                return exp
        elif isinstance(msg, hcm_pb2.HttpConnectionManager):
            hcm = msg
            break
        elif isinstance(msg, tcp_proxy_pb2.TcpProxy):
            exp.protocol = "tcp"
            spec = msg.WhichOneof("cluster_specifier")
            if spec == "weighted_clusters":
                weights = {c.name: c.weight for c in msg.weighted_clusters.clusters}
            else:
                weights = {msg.cluster: 1}
            exp.action = {"tcpProxy": {"clusters": [{"name": n, "weight": w} for n, w in weights.items()]}}
            _upstream_outcome(exp, _cluster_targets(cfg, list(weights)), weights)
            exp.notes.append("a TCP chain: the HTTP request is forwarded as bytes, without HTTP routing")
            return exp
        elif msg is None:
            exp.notes.append(f"network filter {name}: config unavailable ({source})")
    if hcm is None:
        exp.outcome = {"kind": "reset", "status": None, "by": "listener", "reason": "chain has no HTTP or TCP proxy"}
        return exp
    exp.protocol = "http"
    if q.method not in HTTP1_METHODS:
        exp.outcome = {"kind": "local_reply", "status": 400, "by": "http1_codec",
                       "reason": f"Envoy's HTTP/1.1 codec does not accept the method {q.method!r}"}
        exp.authorization = dict(_NOT_REACHED)
        return exp
    if not _VALID_AUTHORITY.fullmatch(q.authority):
        exp.outcome = {"kind": "local_reply", "status": 400, "by": "http1_codec",
                       "reason": f"invalid :authority {q.authority!r}"}
        exp.authorization = dict(_NOT_REACHED)
        return exp
    _explain_http(cfg, hcm, q, exp, base_ctx)
    return exp


def _explain_http(cfg: EnvoyConfig, hcm: hcm_pb2.HttpConnectionManager, q: RequestQuery, exp: Explanation,
                  base_ctx: rbac_eval.RbacContext) -> None:
    normalize_path = hcm.normalize_path.value if hcm.HasField("normalize_path") else False
    escaped = hcm_pb2.HttpConnectionManager.PathWithEscapedSlashesAction.Name(hcm.path_with_escaped_slashes_action)
    path = normalize(q.path, normalize_path=normalize_path, merge_slashes=hcm.merge_slashes, escaped_slashes=escaped)
    exp.normalized_path = path
    if escaped == "UNESCAPE_AND_REDIRECT" and path != q.path and re.search(r"%2[Ff]|%5[Cc]", q.path):
        exp.outcome = {"kind": "local_reply", "status": 307, "by": "http_connection_manager",
                       "reason": "escaped slashes: redirect to the unescaped path"}
        return
    headers = ((":method", q.method), (":path", path), (":authority", q.authority), (":scheme", q.scheme),
               *q.headers)
    req = HttpRequest(q.method, path, q.authority, headers)
    rcfg = None
    if hcm.HasField("rds"):
        exp.route_config = hcm.rds.route_config_name
        rcfg = cfg.routes.get(hcm.rds.route_config_name)
        if rcfg is None:
            exp.notes.append(f"route configuration {exp.route_config} is not served")
    elif hcm.HasField("route_config"):
        exp.route_config = hcm.route_config.name or "(inline)"
        rcfg = hcm.route_config
    choice = select_route(rcfg, req) if rcfg is not None else None
    route = choice.route if choice is not None else None
    vh = None
    if choice is not None:
        exp.virtual_host = choice.virtual_host
        exp.routes_tried = choice.tried
        vh = next((v for v in rcfg.virtual_hosts if v.name == choice.virtual_host), None) if rcfg else None
    if route is not None:
        md = route.metadata.filter_metadata.get("istio")
        config_path = md.fields["config"].string_value if md is not None and "config" in md.fields else None
        exp.route = {"name": route.name, "origin": route_origin(route.name, config_path)}
    metadata: dict[str, dict[str, Any]] = {}
    ctx = rbac_eval.RbacContext(headers=headers, path=path, dest_ip=base_ctx.dest_ip, dest_port=base_ctx.dest_port,
                                source_ip=base_ctx.source_ip, remote_ip=_remote_ip(q, hcm),
                                filter_state=base_ctx.filter_state, metadata=metadata)
    for hf in hcm.http_filters:
        name, msg, source = _filter_config(cfg, hf)
        per_route = route.typed_per_filter_config.get(name) if route is not None else None
        if msg is None:
            exp.filters.append({"name": name, "type": "unknown", "source": source})
            exp.notes.append(f"filter {name}: no config ({source}); Envoy would not serve this listener")
            continue
        kind = type_name(hf.typed_config) if hf.HasField("typed_config") else msg.DESCRIPTOR.full_name
        if isinstance(msg, jwt_pb2.JwtAuthentication):
            out = jwt_eval.evaluate(msg, req)
            exp.jwt = {"filter": name, "allowed": out.allowed, "reason": out.reason,
                       "tokens": [{"provider": c.provider, "location": c.location, "valid": c.valid,
                                   "reason": c.reason, "offlineUnverifiable": c.offline_unverifiable}
                                  for c in out.checks]}
            exp.filters.append({"name": name, "type": "jwt_authn", "allowed": out.allowed})
            if any(c.offline_unverifiable for c in out.checks):
                exp.notes.append("JWT signature not verifiable offline (remote JWKS): evaluated as if valid")
            if not out.allowed:
                exp.outcome = {"kind": "local_reply", "status": 401, "by": "jwt_authn", "reason": out.reason}
                exp.authorization = dict(_NOT_REACHED)
                return
            metadata[jwt_eval.FILTER] = out.metadata
        elif isinstance(msg, http_rbac_pb2.RBAC):
            rules = msg.rules if msg.HasField("rules") else None
            if per_route is not None:
                pr = unpack(per_route)
                if isinstance(pr, http_rbac_pb2.RBACPerRoute):
                    rules = pr.rbac.rules if pr.HasField("rbac") and pr.rbac.HasField("rules") else None
            try:
                info, allowed = _rbac_outcome(name, rules, msg.shadow_rules if msg.HasField("shadow_rules") else None,
                                              ctx)
            except rbac_eval.UnsupportedMatcher as exc:
                exp.filters.append({"name": name, "type": "rbac", "unsupported": str(exc)})
                exp.outcome = {"kind": "unknown", "status": None, "by": "rbac", "reason": f"cannot evaluate {exc}"}
                return
            exp.filters.append(info)
            if not allowed:
                _deny(exp, info)
                exp.outcome = {"kind": "local_reply", "status": 403, "by": "rbac",
                               "reason": "RBAC: access denied"}
                return
            if info["enforced"] and info["action"] == "ALLOW" and exp.authorization.get("decidedBy") is None:
                exp.authorization = {"allowed": True, "filter": name, "reason": "an ALLOW policy matched",
                                     "decidedBy": info["matchedPolicies"][0],
                                     "matchedPolicies": info["matchedPolicies"]}
        elif kind.endswith("ExtAuthz"):
            exp.filters.append({"name": name, "type": "ext_authz"})
            exp.authorization = {"allowed": None, "filter": name, "reason": "decided by an external authorization "
                                 "server (CUSTOM policy): not evaluated offline", "decidedBy": None}
            exp.outcome = {"kind": "unknown", "status": None, "by": "ext_authz",
                           "reason": "the external authorization server decides"}
            return
        elif kind.endswith("HTTPFault"):
            spec = route_fault(route, vh) if route is not None else None
            exp.filters.append({"name": name, "type": "fault", "active": spec is not None})
            if spec is not None:
                exp.fault = spec.to_json()
                if spec.abort_status is not None or spec.abort_grpc_status is not None:
                    if spec.abort_percent >= 100.0:
                        status = spec.abort_status if spec.abort_status is not None else 200
                        exp.outcome = {"kind": "local_reply", "status": status, "by": "fault",
                                       "reason": "fault injection: abort"}
                        return
                    if spec.abort_percent > 0:
                        exp.notes.append(f"fault abort on {spec.abort_percent:g}% of requests "
                                         f"(status {spec.abort_status}); the rest continue as below")
        elif kind.endswith("Router"):
            exp.filters.append({"name": name, "type": "router"})
            _route_action(cfg, exp, route)
            return
        else:
            exp.filters.append({"name": name, "type": kind.rsplit(".", 1)[-1]})
    exp.outcome = {"kind": "unknown", "status": None, "by": None, "reason": "no router filter"}


def _remote_ip(q: RequestQuery, hcm: hcm_pb2.HttpConnectionManager) -> str | None:
    """The "trusted" client address RBAC's ``remote_ip`` reads: with ``use_remote_address`` false,
    the last ``x-forwarded-for`` entry (``xff_num_trusted_hops`` 0), else the peer's address."""
    use_remote = hcm.use_remote_address.value if hcm.HasField("use_remote_address") else False
    if not use_remote:
        xff = [v for k, v in q.headers if k == "x-forwarded-for"]
        if xff:
            entries = [e.strip() for e in ",".join(xff).split(",") if e.strip()]
            idx = len(entries) - 1 - hcm.xff_num_trusted_hops
            if 0 <= idx < len(entries):
                return str(entries[idx])
    return q.source_ip


def _route_action(cfg: EnvoyConfig, exp: Explanation, route: Any) -> None:
    if route is None:
        exp.outcome = {"kind": "local_reply", "status": 404, "by": "router", "reason": "no route matched"}
        return
    action = describe_action(route)
    exp.action = action
    if "directResponse" in action:
        exp.outcome = {"kind": "local_reply", "status": action["directResponse"]["status"], "by": "direct_response",
                       "reason": "the route answers itself"}
    elif "redirect" in action:
        exp.outcome = {"kind": "local_reply", "status": action["redirect"]["status"], "by": "redirect",
                       "reason": "the route redirects"}
    elif "clusters" in action:
        weights = {c["name"]: c["weight"] for c in action["clusters"]}
        targets = _cluster_targets(cfg, list(weights))
        action["clusters"] = [{**c, **t} for c, t in zip(action["clusters"], targets, strict=True)]
        _upstream_outcome(exp, targets, weights,
                          _NOT_FOUND_CODES.get(route.route.cluster_not_found_response_code, 503))
    else:
        exp.outcome = {"kind": "unknown", "status": None, "by": "router", "reason": "cluster chosen by a header"}
