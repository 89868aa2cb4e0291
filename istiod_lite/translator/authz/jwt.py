"""RequestAuthentications -> one ``envoy.filters.http.jwt_authn`` filter (Istio's
``security/authn/policy_applier.go`` ``convertToEnvoyJwtConfig``).

Semantics kept from Istio: a request with a token that fails validation is rejected (401), a
request without a token passes - authentication is not authorization (bulletin 2021-001); a
required principal needs an ALLOW rule on ``requestPrincipals``.  So each ``jwtRules`` entry (all
applicable policies' rules, stably sorted by issuer) becomes provider ``origins-<i>`` and the single
requirement is ``requires_any{origins-0, allow_missing}`` for one provider, or, for several,
``requires_any{origins-0, .., origins-n, requires_all{requires_any{origins-i, allow_missing}...}}``
(the outer OR lets providers that share a token location pass).  The verified payload is written
to dynamic metadata ``payload``, where the RBAC ``requestPrincipals``/``request.auth.*`` matchers
read it.

Keys: inline ``jwks`` -> ``local_jwks``; ``jwksUri`` -> ``remote_jwks`` through cluster
``outbound|<port>||<host>`` (returned as a ``ClusterRequest``: Envoy fetches the keys itself, as
Istio does with ``PILOT_JWT_ENABLE_REMOTE_JWKS``; this translator does no I/O, so it cannot fetch and
inline them as istiod does by default).  A rule with neither (OIDC discovery) cannot be served:
it gets a JWKS whose only key nobody can sign for, so its tokens are always rejected (fail
closed, bulletin 2026-001: never fall back to a usable key), and it is reported.
"""

from __future__ import annotations

import base64
import hashlib
import json
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Final

from envoy.config.core.v3 import http_uri_pb2
from envoy.config.route.v3 import route_components_pb2
from envoy.extensions.filters.http.jwt_authn.v3 import config_pb2 as jwt_pb2
from google.protobuf import duration_pb2

from istiod_lite.model.security import JWTRule, RequestAuthentication
from istiod_lite.translator.authz.extauthz import ClusterRequest
from istiod_lite.translator.authz.rbac import HttpFilter
from istiod_lite.translator.authz.rules import JWT_FILTER, JWT_PAYLOAD
from istiod_lite.translator.core import names
from istiod_lite.translator.core.protos import packed

DEFAULT_JWKS_TIMEOUT_S: Final = 5
JWKS_CACHE_DURATION_S: Final = 300
#: Claims Istio always treats as space-delimited lists (``buildSpaceDelimitedClaims``).
DEFAULT_SPACE_DELIMITED: Final = ("permission", "scope")


@dataclass
class JwtResult:
    filter: HttpFilter | None = None
    clusters: list[ClusterRequest] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def _b64(n: int) -> str:
    return base64.urlsafe_b64encode(n.to_bytes(32, "big")).rstrip(b"=").decode()


@cache
def unverifiable_jwks() -> str:
    """A JWK Set with one P-256 public key derived by hashing a fixed string to a curve point
    ("nothing up my sleeve"): its discrete logarithm - the private key - is unknown to anyone, so
    no token ever verifies against it.  Envoy needs at least one valid key in a local JWKS."""
    p = 2**256 - 2**224 + 2**192 + 2**96 - 1
    b = 0x5AC635D8AA3A93E7B3EBBD55769886BC651D06B0CC53B0F63BCE3C3E27D2604B
    x = int.from_bytes(hashlib.sha256(b"istiod-lite: no signing key exists for this issuer").digest(), "big") % p
    while True:
        rhs = (pow(x, 3, p) - 3 * x + b) % p
        y = pow(rhs, (p + 1) // 4, p)  # p = 3 (mod 4): a square root if rhs is a square
        if y * y % p == rhs:
            break
        x += 1
    key = {"kty": "EC", "crv": "P-256", "alg": "ES256", "kid": "istiod-lite-unverifiable", "x": _b64(x), "y": _b64(y)}
    return json.dumps({"keys": [key]}, separators=(",", ":"))


def jwks_cluster(uri: str) -> ClusterRequest:
    """Istio's ``ParseJwksURI`` + ``BuildSubsetKey``: port from the URI, else 80/443 by scheme."""
    parts = urllib.parse.urlsplit(uri)
    tls = parts.scheme.lower() == "https"
    port = parts.port or (443 if tls else 80)
    host = parts.hostname or ""
    return ClusterRequest(names.outbound_cluster(port, host), host, port, tls=tls, purpose=f"JWKS {uri}")


def _provider(rule: JWTRule, out: JwtResult) -> jwt_pb2.JwtProvider:
    p = jwt_pb2.JwtProvider(issuer=rule.issuer, audiences=list(rule.audiences), forward=rule.forward_original_token,
                            forward_payload_header=rule.output_payload_to_header, payload_in_metadata=JWT_PAYLOAD)
    p.normalize_payload_in_metadata.space_delimited_claims.extend(
        sorted({*rule.space_delimited_claims, *DEFAULT_SPACE_DELIMITED}))
    for c in rule.output_claim_to_headers:
        p.claim_to_headers.add(header_name=c.header, claim_name=c.claim)
    for h in rule.from_headers:
        p.from_headers.add(name=h.name, value_prefix=h.prefix)
    p.from_params.extend(rule.from_params)
    p.from_cookies.extend(rule.from_cookies)
    if rule.jwks:
        p.local_jwks.inline_string = rule.jwks
    elif rule.jwks_uri:
        timeout = duration_pb2.Duration(seconds=DEFAULT_JWKS_TIMEOUT_S)
        if rule.timeout is not None:
            timeout = duration_pb2.Duration(seconds=rule.timeout.seconds, nanos=rule.timeout.subsecond_nanos)
        cluster = jwks_cluster(rule.jwks_uri)
        p.remote_jwks.http_uri.CopyFrom(http_uri_pb2.HttpUri(uri=rule.jwks_uri, cluster=cluster.name, timeout=timeout))
        p.remote_jwks.cache_duration.seconds = JWKS_CACHE_DURATION_S
        out.clusters.append(cluster)
    else:
        p.local_jwks.inline_string = unverifiable_jwks()
        out.problems.append(f"issuer {rule.issuer!r} has neither jwks nor jwksUri: its keys cannot be "
                            "discovered without I/O, so its tokens are always rejected")
    return p


def _req(name: str) -> jwt_pb2.JwtRequirement:
    return jwt_pb2.JwtRequirement(provider_name=name)


def jwt_filter(policies: Sequence[RequestAuthentication]) -> JwtResult:
    """The jwt_authn filter for the RequestAuthentications that apply to a chain (None if no rule)."""
    out = JwtResult()
    tagged = [(rule, f"RequestAuthentication {ra.namespace}/{ra.name}")
              for ra in policies for rule in ra.spec.jwt_rules]
    tagged.sort(key=lambda t: t[0].issuer)
    if not tagged:
        return out
    cfg = jwt_pb2.JwtAuthentication(bypass_cors_preflight=True)
    inner: list[jwt_pb2.JwtRequirement] = []
    outer: list[jwt_pb2.JwtRequirement] = []
    for i, (rule, origin) in enumerate(tagged):
        name = f"origins-{i}"
        problems_before = len(out.problems)
        cfg.providers[name].CopyFrom(_provider(rule, out))
        out.problems[problems_before:] = [f"{origin}: {p}" for p in out.problems[problems_before:]]
        either = jwt_pb2.JwtRequirement()
        either.requires_any.requirements.extend([_req(name), jwt_pb2.JwtRequirement(allow_missing={})])
        inner.append(either)
        outer.append(_req(name))
    requirement = inner[0]
    if len(inner) > 1:
        every = jwt_pb2.JwtRequirement()
        every.requires_all.requirements.extend(inner)
        requirement = jwt_pb2.JwtRequirement()
        requirement.requires_any.requirements.extend([*outer, every])
    cfg.rules.append(jwt_pb2.RequirementRule(match=route_components_pb2.RouteMatch(prefix="/"), requires=requirement))
    out.filter = HttpFilter(name=JWT_FILTER, typed_config=packed(cfg))
    return out
