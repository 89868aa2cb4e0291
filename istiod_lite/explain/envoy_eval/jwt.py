"""``envoy.filters.http.jwt_authn`` over one request: which token each provider extracts, whether
it verifies (signature against an inline JWKS, issuer, audiences, times), whether the rule's
requirement is met, and the payload the filter writes to dynamic metadata for RBAC
(``request.auth.*`` claims).

A provider with a remote JWKS cannot be checked offline: its tokens are reported as "not
verifiable offline" and treated as valid (signature only; issuer, audience and times are still
checked), so the rest of the explanation shows what happens if the signature is good.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from envoy.extensions.filters.http.jwt_authn.v3 import config_pb2 as jwt_pb2

from istiod_lite.ca import jws
from istiod_lite.ca.jwk import parse_verification_keys
from istiod_lite.explain.envoy_eval.matchers import Headers, header_values, query_params
from istiod_lite.explain.envoy_eval.routing import HttpRequest, route_matches

FILTER = "envoy.filters.http.jwt_authn"


@dataclass
class TokenCheck:
    provider: str
    location: str
    valid: bool
    reason: str
    payload: dict[str, Any] | None = None
    offline_unverifiable: bool = False


@dataclass
class JwtOutcome:
    allowed: bool  # False: Envoy answers 401
    reason: str
    checks: list[TokenCheck] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)  # {payload_in_metadata: payload}


def _locations(p: jwt_pb2.JwtProvider) -> list[tuple[str, str, str]]:
    """(kind, name, value prefix) of each place the provider reads a token from."""
    out: list[tuple[str, str, str]] = [("header", h.name.lower(), h.value_prefix) for h in p.from_headers]
    out += [("param", q, "") for q in p.from_params]
    out += [("cookie", c, "") for c in p.from_cookies]
    if not out:
        out = [("header", "authorization", "Bearer "), ("param", "access_token", "")]
    return out


def _extract(p: jwt_pb2.JwtProvider, headers: Headers, path: str) -> tuple[str, str] | None:
    params = query_params(path)
    for kind, name, prefix in _locations(p):
        if kind == "header":
            for v in header_values(headers, name):
                if prefix:
                    if v.startswith(prefix):
                        return f"header {name}", v[len(prefix):].strip()
                    idx = v.find(prefix)
                    if idx >= 0:
                        return f"header {name}", v[idx + len(prefix):].split(",")[0].strip()
                else:
                    return f"header {name}", v.strip()
        elif kind == "param":
            for k, v in params:
                if k == name:
                    return f"query {name}", v
        elif kind == "cookie":
            for cookie_header in header_values(headers, "cookie"):
                for part in cookie_header.split(";"):
                    k, sep, v = part.strip().partition("=")
                    if sep and k == name:
                        return f"cookie {name}", v
    return None


def _normalise(payload: Mapping[str, Any], p: jwt_pb2.JwtProvider) -> dict[str, Any]:
    out = dict(payload)
    if p.HasField("normalize_payload_in_metadata"):
        for claim in p.normalize_payload_in_metadata.space_delimited_claims:
            if isinstance(out.get(claim), str):
                out[claim] = out[claim].split()
    return out


def verify(name: str, p: jwt_pb2.JwtProvider, token: str, location: str, now: float) -> TokenCheck:
    try:
        parsed = jws.parse(token)
    except jws.JwsError as exc:
        return TokenCheck(name, location, False, f"malformed token: {exc}")
    claims = parsed.claims
    if p.issuer and claims.get("iss") != p.issuer:
        return TokenCheck(name, location, False, f"issuer {claims.get('iss')!r} is not {p.issuer!r}")
    if p.audiences:
        aud = claims.get("aud")
        auds = aud if isinstance(aud, list) else [aud]
        if not any(a in p.audiences for a in auds):
            return TokenCheck(name, location, False, f"audience {aud!r} not in {list(p.audiences)}")
    skew = p.clock_skew_seconds or 60
    exp, nbf = claims.get("exp"), claims.get("nbf")
    if isinstance(exp, int | float) and now > exp + skew:
        return TokenCheck(name, location, False, "token expired")
    if isinstance(nbf, int | float) and now + skew < nbf:
        return TokenCheck(name, location, False, "token not yet valid")
    if p.WhichOneof("jwks_source_specifier") == "remote_jwks":
        uri = p.remote_jwks.http_uri.uri
        return TokenCheck(name, location, True, f"signature not verifiable offline (remote JWKS {uri}); "
                          "assumed valid", _normalise(claims, p), offline_unverifiable=True)
    try:
        keys = parse_verification_keys(p.local_jwks.inline_string or p.local_jwks.inline_bytes.decode())
        jws.verify_signature(parsed, keys)
    except (jws.JwsError, ValueError) as exc:
        return TokenCheck(name, location, False, f"signature: {exc}")
    return TokenCheck(name, location, True, "signature verified with the inline JWKS", _normalise(claims, p))


def _providers_of(req: jwt_pb2.JwtRequirement) -> list[str]:
    kind = req.WhichOneof("requires_type")
    if kind == "provider_name":
        return [req.provider_name]
    if kind == "requires_any":
        return [n for r in req.requires_any.requirements for n in _providers_of(r)]
    if kind == "requires_all":
        return [n for r in req.requires_all.requirements for n in _providers_of(r)]
    return []


def _satisfied(req: jwt_pb2.JwtRequirement, checks: dict[str, TokenCheck], any_token: bool) -> bool:
    kind = req.WhichOneof("requires_type")
    if kind == "provider_name":
        c = checks.get(req.provider_name)
        return c is not None and c.valid
    if kind == "requires_any":
        return any(_satisfied(r, checks, any_token) for r in req.requires_any.requirements)
    if kind == "requires_all":
        return all(_satisfied(r, checks, any_token) for r in req.requires_all.requirements)
    if kind == "allow_missing":
        return not any_token
    if kind == "allow_missing_or_failed":
        return True
    return True


def evaluate(cfg: jwt_pb2.JwtAuthentication, req: HttpRequest, now: float | None = None) -> JwtOutcome:
    now = time.time() if now is None else now
    rule = next((r for r in cfg.rules if route_matches(r.match, req)[0]), None)
    if rule is None or not rule.HasField("requires"):
        return JwtOutcome(True, "no jwt_authn rule applies")
    checks: dict[str, TokenCheck] = {}
    any_token = False
    for name in _providers_of(rule.requires):
        p = cfg.providers.get(name)
        if p is None:
            continue
        found = _extract(p, req.headers, req.path)
        if found is None:
            continue
        any_token = True
        location, token = found
        checks[name] = verify(name, p, token, location, now)
    ok = _satisfied(rule.requires, checks, any_token)
    metadata: dict[str, Any] = {}
    for name, check in sorted(checks.items()):
        p = cfg.providers[name]
        if check.valid and check.payload is not None and p.payload_in_metadata:
            metadata[p.payload_in_metadata] = check.payload
    if ok:
        if any(c.valid for c in checks.values()):
            reason = "token valid"
        else:
            places = sorted({f"{k} {n}" for name in _providers_of(rule.requires) if name in cfg.providers
                             for k, n, _ in _locations(cfg.providers[name])})
            reason = f"no token (allowed missing); tokens are read from: {', '.join(places)}"
    else:
        bad = [c for c in checks.values() if not c.valid]
        reason = "; ".join(f"{c.provider}: {c.reason}" for c in bad) or "token required but missing"
    return JwtOutcome(ok, reason, list(checks.values()), metadata)
