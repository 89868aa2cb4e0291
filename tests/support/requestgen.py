"""Requests that probe a waypoint's generated configuration: for each HTTP filter chain of
``main_internal``, every value its routes and RBAC rules match on (paths, prefixes, regexes,
URI templates, headers, query parameters, methods, hosts, principals, ports) and near misses of
each (one character more or less, other case, a wrong value, the header missing).

Used by the explain-request differential test: the same requests go through a real Envoy and
through ``explain request``. Deterministic (sorted, deduplicated, capped).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import re2
from envoy.config.rbac.v3 import rbac_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.extensions.filters.http.jwt_authn.v3 import config_pb2 as jwt_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as http_rbac_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.path.match.uri_template.v3 import uri_template_match_pb2
from envoy.type.matcher.v3 import string_pb2
from xds.type.matcher.v3 import ip_pb2

from istiod_lite.explain.envoy_eval.config import EnvoyConfig, unpack
from istiod_lite.explain.request import MAIN_INTERNAL

Identity = tuple[str, str]  # (namespace, service account)
DEFAULT_IDENTITY: Identity = ("client", "client")


@dataclass(frozen=True, order=True)
class GenRequest:
    vip: str
    port: int
    method: str
    path: str
    authority: str
    headers: tuple[tuple[str, str], ...]
    identity: Identity


def regex_samples(pattern: str) -> list[str]:
    """A few strings built from ``pattern`` (crudely: the first branch of each group, one
    repetition, the first character of each class); the caller keeps what really matches."""
    p = pattern.replace("(?i)", "")
    out = []
    for filler in ("a", "ab/c", "1"):
        s = p.replace(".*", filler).replace(".+", filler).replace("\\d", "1")
        s = re.sub(r"\[\^[^\]]*\][*+]?", "z", s)
        s = re.sub(r"\[([^\]])[^\]]*\][*+?]?", r"\1", s)
        s = re.sub(r"\{\d+(,\d*)?\}", "", s)
        s = re.sub(r"\(([^()|]*)(\|[^()]*)?\)[?*+]?", r"\1", s)
        s = s.replace("^", "").replace("$", "")
        s = re.sub(r"(?<!\\)[?*+]", "", s)
        s = re.sub(r"\\(.)", r"\1", s)
        out.append(s)
    return [s for s in dict.fromkeys(out)]


def _re2_full(pattern: str, s: str) -> bool:
    try:
        return re2.fullmatch(pattern, s) is not None
    except re2.error:
        return False


def string_samples(m: string_pb2.StringMatcher) -> tuple[list[str], list[str]]:
    """(values that match, near misses)."""
    kind = m.WhichOneof("match_pattern")
    if kind == "safe_regex":
        samples = regex_samples(m.safe_regex.regex)
        hits = [s for s in samples if _re2_full(m.safe_regex.regex, s)]
        return hits[:2], [s + "~" for s in hits[:1]] + [s for s in samples if s not in hits][:1]
    v = getattr(m, kind) if kind else ""
    if kind == "exact":
        return [v] + ([v.upper()] if m.ignore_case and v.upper() != v else []), [v + "x", v[:-1]] if v else ["x"]
    if kind == "prefix":
        return [v, v + "zz"], ["q" + v] + ([v[:-1]] if len(v) > 1 else [])
    if kind == "suffix":
        return ["zz" + v], [v + "q"]
    if kind == "contains":
        return ["a" + v + "b"], [v[1:] if len(v) > 1 else "q"]
    return [], []


def path_samples(match: rc.RouteMatch) -> tuple[list[str], list[str]]:
    kind = match.WhichOneof("path_specifier")
    if kind == "prefix":
        p = match.prefix
        hits = [p, p.rstrip("/") + "/sub", p + "x"]
        misses = ([p[:-1]] if len(p) > 1 else []) + ([p.swapcase()] if p.swapcase() != p else [])
        return hits, misses
    if kind == "path":
        p = match.path
        return [p], [p + "/", p + "x"] + ([p.swapcase()] if p.swapcase() != p else [])
    if kind == "path_separated_prefix":
        p = match.path_separated_prefix
        return [p, p + "/a"], [p + "a", p.swapcase() if p.swapcase() != p else p + "%2Fa"]
    if kind == "safe_regex":
        samples = ["/" + s.lstrip("/") for s in regex_samples(match.safe_regex.regex)]
        return samples[:2], [s + "~/x" for s in samples[:1]]
    if kind == "path_match_policy":
        cfg = unpack(match.path_match_policy.typed_config)
        if isinstance(cfg, uri_template_match_pb2.UriTemplateMatchConfig):
            t = cfg.path_template
            filled = re.sub(r"\{[^}=]*=\*\*\}", "a/b", t)
            filled = re.sub(r"\{[^}]*\}", "v", filled).replace("**", "a/b").replace("*", "x")
            return [filled], [filled.rsplit("/", 1)[0] or "/x", filled + "/extra"]
    return ["/"], []


def header_samples(h: rc.HeaderMatcher) -> tuple[list[str | None], list[str | None]]:
    """Values (None = header absent) that match and that do not, ignoring ``invert_match``."""
    kind = h.WhichOneof("header_match_specifier")
    if kind == "present_match":
        return (["1"], [None]) if h.present_match else ([None], ["1"])
    if kind == "string_match":
        hits, misses = string_samples(h.string_match)
        return list(hits), [*misses, None]
    if kind == "exact_match":
        return [h.exact_match], [h.exact_match + "x", None]
    if kind == "prefix_match":
        return [h.prefix_match + "z"], ["z" + h.prefix_match, None]
    if kind == "suffix_match":
        return ["z" + h.suffix_match], [h.suffix_match + "z", None]
    if kind == "safe_regex_match":
        m = string_pb2.StringMatcher(safe_regex=h.safe_regex_match)
        hits, misses = string_samples(m)
        return list(hits), [*misses, None]
    if kind == "range_match":
        return [str(h.range_match.start)], [str(h.range_match.end), None]
    return ["1"], [None]


def _walk_rbac(node: rbac_pb2.Permission | rbac_pb2.Principal) -> Iterator[rbac_pb2.Permission | rbac_pb2.Principal]:
    yield node
    for f in ("and_rules", "or_rules"):
        if isinstance(node, rbac_pb2.Permission) and node.HasField(f):
            for r in getattr(node, f).rules:
                yield from _walk_rbac(r)
    if isinstance(node, rbac_pb2.Permission) and node.HasField("not_rule"):
        yield from _walk_rbac(node.not_rule)
    for f in ("and_ids", "or_ids"):
        if isinstance(node, rbac_pb2.Principal) and node.HasField(f):
            for r in getattr(node, f).ids:
                yield from _walk_rbac(r)
    if isinstance(node, rbac_pb2.Principal) and node.HasField("not_id"):
        yield from _walk_rbac(node.not_id)


_NS_SA = re.compile(r"/ns/([a-z0-9-]+)/(?:.*/)?sa/([a-z0-9-]+)")
_NS = re.compile(r"/ns/([a-z0-9-]+)/")
_SA = re.compile(r"/sa/([a-z0-9-]+)")


def identities_of(values: Iterable[str]) -> list[Identity]:
    out: list[Identity] = [DEFAULT_IDENTITY]
    for v in values:
        m = _NS_SA.search(v)
        if m:
            out += [(m[1], m[2]), (m[1], m[2] + "-x")]
            continue
        ns, sa = _NS.search(v), _SA.search(v)
        if ns or sa:
            out.append((ns[1] if ns else "other", sa[1] if sa else "someone"))
    return list(dict.fromkeys(out))


def http_chains(cfg: EnvoyConfig) -> list[tuple[str, int, str, hcm_pb2.HttpConnectionManager]]:
    """(VIP, port, chain name, HCM) of every HTTP chain a VIP:port of ``main_internal`` reaches
    (the app-protocol split sends an HTTP/1.1 request to the HTTP chain)."""
    lst = cfg.listeners[MAIN_INTERNAL]
    chains = {fc.name: fc for fc in lst.filter_chains}
    ipm = unpack(lst.filter_chain_matcher.matcher_tree.custom_match.typed_config)
    out = []
    if not isinstance(ipm, ip_pb2.IPMatcher):
        return out
    for rm in ipm.range_matchers:
        if not rm.on_match.HasField("matcher"):
            continue
        ports = rm.on_match.matcher.matcher_tree.exact_match_map.map
        for r in rm.ranges:
            if r.prefix_len.value != 32 and r.HasField("prefix_len"):
                continue
            for port, om in sorted(ports.items()):
                if not port.isdigit():
                    continue  # the workload (direct) entry: app-protocol keyed
                names = [om.action.name] if not om.HasField("matcher") else [
                    a.action.name for a in om.matcher.matcher_tree.exact_match_map.map.values()]
                for name in dict.fromkeys(names):
                    fc = chains.get(name)
                    if fc is None:
                        continue
                    for f in fc.filters:
                        msg = unpack(f.typed_config) if f.HasField("typed_config") else None
                        if isinstance(msg, hcm_pb2.HttpConnectionManager):
                            out.append((r.address_prefix, int(port), name, msg))
    return out


def generate(cfg: EnvoyConfig, cap: int = 90) -> list[GenRequest]:
    """Probe requests for every HTTP chain of the waypoint (at most ``cap`` per chain)."""
    out: list[GenRequest] = []
    for vip, port, chain, hcm in http_chains(cfg):
        host = chain.rsplit("|", 1)[-1]
        authority = host if port == 80 else f"{host}:{port}"
        reqs: list[GenRequest] = []

        def add(path: str, headers: Iterable[tuple[str, str | None]] = (), method: str = "GET",
                identity: Identity = DEFAULT_IDENTITY, authority_: str | None = None,
                _reqs: list[GenRequest] = reqs, _vip: str = vip, _port: int = port, _auth: str = authority) -> None:
            hs = tuple((k, v) for k, v in headers if v is not None)
            m = next((v for k, v in hs if k == ":method"), method)
            a = next((v for k, v in hs if k in (":authority", "host")), authority_ or _auth)
            p = next((v for k, v in hs if k == ":path"), path)
            plain = tuple((k, v) for k, v in hs if not k.startswith(":") and k != "host")
            if not p.startswith("/") or any(c in p for c in " \r\n") or not m.isalpha() or not a:
                return
            _reqs.append(GenRequest(_vip, _port, m.upper(), p, a, plain, identity))

        add("/")
        rcfg = cfg.routes.get(hcm.rds.route_config_name) if hcm.HasField("rds") else None
        principals: list[str] = []
        for vh in rcfg.virtual_hosts if rcfg is not None else []:
            for route in vh.routes:
                hits, misses = path_samples(route.match)
                base = hits[0] if hits else "/"
                good_headers: list[tuple[str, str | None]] = []
                for h in route.match.headers:
                    hh, hm = header_samples(h)
                    if h.invert_match:
                        hh, hm = hm, hh
                    good_headers.append((h.name, hh[0] if hh else None))
                query = []
                for q in route.match.query_parameters:
                    kind = q.WhichOneof("query_parameter_match_specifier")
                    if kind == "string_match":
                        qh, qm = string_samples(q.string_match)
                        query.append((q.name, qh[0] if qh else "v", qm[0] if qm else None))
                    else:
                        query.append((q.name, "1", None))
                qs = "&".join(f"{n}={v}" for n, v, _ in query)
                full = base + ("?" + qs if qs else "")
                for p in hits:
                    add(p + ("?" + qs if qs else ""), good_headers)
                for p in misses:
                    add(p + ("?" + qs if qs else ""), good_headers)
                for i, (name, _) in enumerate(good_headers):
                    h = route.match.headers[i]
                    hh, hm = header_samples(h)
                    if h.invert_match:
                        hh, hm = hm, hh
                    for miss in hm[:2]:
                        add(full, [*good_headers[:i], (name, miss), *good_headers[i + 1:]])
                for i, (_, _, miss) in enumerate(query):
                    q2 = "&".join(f"{n}={v if j != i else miss}" for j, (n, v, _) in enumerate(query)
                                  if j != i or miss is not None)
                    add(base + ("?" + q2 if q2 else ""), good_headers)
        # RBAC rules of the chain's filters.
        jwt_issuers: list[str] = []
        for hf in hcm.http_filters:
            ext = cfg.extension_configs.get(hf.name) if hf.HasField("config_discovery") else None
            msg = unpack(ext.typed_config) if ext is not None else None
            if isinstance(msg, jwt_pb2.JwtAuthentication):
                jwt_issuers += [p.issuer for p in msg.providers.values()]
            if not isinstance(msg, http_rbac_pb2.RBAC) or not msg.HasField("rules"):
                continue
            for pol in msg.rules.policies.values():
                for node in [n for perm in pol.permissions for n in _walk_rbac(perm)] + \
                        [n for pr in pol.principals for n in _walk_rbac(pr)]:
                    kind = node.WhichOneof("rule" if isinstance(node, rbac_pb2.Permission) else "identifier")
                    if kind == "url_path":
                        hits, misses = string_samples(node.url_path.path)
                        for p in hits + misses:
                            add(p if p.startswith("/") else "/" + p)
                    elif kind == "uri_template":
                        tmpl = unpack(node.uri_template.typed_config)
                        if isinstance(tmpl, uri_template_match_pb2.UriTemplateMatchConfig):
                            hits, misses = path_samples(rc.RouteMatch(path_match_policy=node.uri_template))
                            for p in hits + misses:
                                add(p)
                    elif kind == "header":
                        hh, hm = header_samples(node.header)
                        for v in hh + hm[:1]:
                            add("/", [(node.header.name, v)])
                    elif kind == "filter_state":
                        sm = node.filter_state.string_match
                        pattern = sm.WhichOneof("match_pattern") or "exact"
                        raw = sm.safe_regex.regex if pattern == "safe_regex" else getattr(sm, pattern, "")
                        principals += [*string_samples(sm)[0], raw]
        for ident in identities_of(principals)[1:6]:
            add("/", identity=ident)
            if reqs:
                add(reqs[min(1, len(reqs) - 1)].path, identity=ident)
        for iss in jwt_issuers[:2]:
            add("/", [("authorization", "Bearer not.a.jwt")])
            add("/", [("authorization", f"Bearer {unsigned_token(iss)}")])
        out += sorted(set(reqs))[:cap]
    return out


def unsigned_token(issuer: str) -> str:
    """A well-formed RS256 JWT for ``issuer`` whose signature is garbage (Envoy must reject it)."""
    import base64
    import json

    def b64(d: object) -> str:
        return base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()

    header = b64({"alg": "RS256", "kid": "k1", "typ": "JWT"})
    payload = b64({"iss": issuer, "sub": "x", "exp": 4102444800})
    return f"{header}.{payload}." + base64.urlsafe_b64encode(b"\x01" * 256).rstrip(b"=").decode()
