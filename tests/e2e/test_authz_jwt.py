"""RequestAuthentication + AuthorizationPolicy on a real waypoint, with a real JWT issuer.

The issuer (``tests/support/jwtissuer.py``) signs RS256 tokens with its own RSA key and serves the
JWK Set over HTTP on a loopback address outside the mesh: the waypoint's ``jwt_authn`` fetches it
itself through cluster ``outbound|<port>||<ip>`` (a STATIC cluster the translator adds for a JWKS
host that is not a service).  The client reaches the service through its ztunnel and the
waypoint with a CA-issued identity, as in tests/e2e/test_authz.py.

Istio's semantics, row by row:

* a valid token that carries the required claim -> 200;
* a valid token without the claim -> 403 (authorization);
* an expired token, or one signed by a key the JWKS does not publish -> 401 (authentication),
  whatever the path;
* no token -> authentication passes, authorization decides: 403 where a requestPrincipal is
  required, 200 where the ALLOW rule does not need one (``/public``).

``outputPayloadToHeader`` and ``forwardOriginalToken`` are checked where they land: on the backend.
A DENY on ``request.auth.audiences`` denies the audience whether ``aud`` is a string or a list.
"""

from __future__ import annotations

import json
from pathlib import Path

import aiohttp
import pytest

from tests.support.backends import BackendsFactory
from tests.support.jwtissuer import JwtIssuer, b64url_decode
from tests.support.mesh import ambient_mesh, exclusive_ip
from tests.support.meshyaml import one_service_mesh
from tests.support.ports import alloc_vip
from tests.support.wait import wait_until

pytestmark = pytest.mark.e2e

ISSUER = "https://issuer.test"

POLICIES = """apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: jwt, namespace: shop}}
spec:
  targetRefs: [{{kind: Service, group: "", name: cart}}]
  jwtRules:
  - issuer: {issuer}
    jwksUri: {jwks_uri}
    forwardOriginalToken: true
    outputPayloadToHeader: x-jwt-payload
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: require-admins, namespace: shop}}
spec:
  targetRefs: [{{kind: Service, group: "", name: cart}}]
  action: ALLOW
  rules:
  - from: [{{source: {{requestPrincipals: ["{issuer}/*"]}}}}]
    to: [{{operation: {{paths: ["/private/*"]}}}}]
    when: [{{key: "request.auth.claims[group]", values: [admins]}}]
  - to: [{{operation: {{paths: ["/public"]}}}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: deny-audience, namespace: shop}}
spec:
  targetRefs: [{{kind: Service, group: "", name: cart}}]
  action: DENY
  rules:
  - when: [{{key: request.auth.audiences, values: [blocked]}}]
"""


async def call(addr: str, path: str, token: str | None = None) -> int:
    headers = {"authorization": f"Bearer {token}"} if token is not None else {}
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http, \
                http.get(f"http://{addr}{path}", headers=headers) as r:
            return r.status
    except (aiohttp.ClientError, OSError, TimeoutError):
        return -1


async def test_jwt_claims_decide_and_bad_tokens_are_rejected(tmp_path: Path,
                                                              backends_factory: BackendsFactory) -> None:
    pods = await backends_factory(1, names=["cart-1"])
    wp, vip = exclusive_ip(), alloc_vip()
    cfg = tmp_path / "cfg"
    cfg.mkdir()
    async with JwtIssuer(ISSUER) as issuer:
        (cfg / "mesh.yaml").write_text(
            one_service_mesh("shop", "cart", wp, vip, 8080, pods.port, pods.pods[0].address[0]))
        (cfg / "policy.yaml").write_text(POLICIES.format(issuer=ISSUER, jwks_uri=issuer.jwks_uri))
        admin = issuer.token("alice", claims={"group": "admins"})
        async with ambient_mesh(tmp_path, cfg) as mesh, mesh.waypoint("shop", "waypoint", wp), \
                mesh.client([(vip, 8080)], wp, namespace="web", sa="frontend") as client:
            addr = client[(vip, 8080)]

            async def admin_allowed() -> bool:
                return await call(addr, "/private/x", admin) == 200

            await wait_until(admin_allowed, timeout=30, message="a token with the claim allowed")
            assert issuer.jwks_fetches >= 1  # Envoy fetched the keys from the issuer itself

            # The backend got the original token and the verified payload.
            seen = pods.pods[0].requests[-1]
            assert seen.header("authorization") == f"Bearer {admin}"
            payload = json.loads(b64url_decode(seen.header("x-jwt-payload") or ""))
            assert (payload["iss"], payload["sub"], payload["group"]) == (ISSUER, "alice", "admins")

            pods.reset()
            cases = [
                ("valid token without the claim", "/private/x", issuer.token("bob", claims={"group": "users"}), 403),
                ("valid token, claim as a list", "/private/x", issuer.token("carol", claims={"group": ["x", "admins"]}),
                 200),
                ("expired token", "/private/x", issuer.token("alice", claims={"group": "admins"}, expires_in=-600),
                 401),
                ("token signed by an unpublished key", "/private/x",
                 issuer.token("alice", claims={"group": "admins"}, signer=issuer.other_key), 401),
                ("token from another issuer", "/private/x",
                 issuer.token("alice", claims={"group": "admins"}, issuer="https://other.test"), 401),
                ("not a JWT", "/public", "not-a-jwt", 401),
                ("expired token on the open path", "/public", issuer.token("x", expires_in=-600), 401),
                ("no token where a principal is required", "/private/x", None, 403),
                ("no token where none is required", "/public", None, 200),
                ("valid token on the open path", "/public", issuer.token("bob"), 200),
                # DENY on an audience: ``aud`` as a string and as a list (RFC 7519) are both denied.
                ("denied audience, string", "/public", issuer.token("bob", audience="blocked"), 403),
                ("denied audience, in a list", "/public",
                 issuer.token("bob", claims={"aud": ["other", "blocked"]}), 403),
                ("other audience", "/private/x",
                 issuer.token("dave", claims={"group": "admins", "aud": ["other"]}), 200),
            ]
            got = {name: await call(addr, path, token) for name, path, token, _ in cases}
            assert got == {name: want for name, _, _, want in cases}
            # Only the allowed requests reached the pod.
            assert sorted(r.path for r in pods.pods[0].requests) == ["/private/x", "/private/x", "/public", "/public"]
            forwarded = [r for r in pods.pods[0].requests if r.path == "/public" and r.header("authorization")]
            assert len(forwarded) == 1 and forwarded[0].header("x-jwt-payload")
            anonymous = [r for r in pods.pods[0].requests if r.path == "/public" and not r.header("authorization")]
            assert len(anonymous) == 1 and anonymous[0].header("x-jwt-payload") is None
