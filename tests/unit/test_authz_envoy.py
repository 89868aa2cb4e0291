"""The real Envoy accepts every generated filter set (``envoy --mode validate`` with the default
runtime, i.e. RE2 program size <= 100), and enforces what the policies say: JWT (invalid token
401, none passes), requestPrincipals, peer principals from filter state, hosts with ports, DENY
before ALLOW."""

from __future__ import annotations

import base64
import json
import time
import urllib.error
import urllib.request
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from istiod_lite.translator.authz import AuthzFilters, authz_for_direct, authz_for_service
from tests.support.envoy import EnvoyFactory, envoy_validate
from tests.unit.test_authz_custom_jwt import MESH
from tests.unit.test_authz_helpers import WP, ap, as_dict, ra, snapshot, validation_bootstrap

pytestmark = pytest.mark.e2e

_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _jwks() -> str:
    nums = _KEY.public_key().public_numbers()
    n = nums.n.to_bytes((nums.n.bit_length() + 7) // 8, "big")
    return json.dumps({"keys": [{"kty": "RSA", "alg": "RS256", "kid": "k1", "n": _b64(n),
                                 "e": _b64(nums.e.to_bytes(3, "big"))}]})


def token(iss: str = "https://issuer.test", sub: str = "alice", *, key: rsa.RSAPrivateKey = _KEY) -> str:
    header = _b64(json.dumps({"alg": "RS256", "kid": "k1", "typ": "JWT"}).encode())
    payload = _b64(json.dumps({"iss": iss, "sub": sub, "exp": int(time.time()) + 3600}).encode())
    sig = key.sign(f"{header}.{payload}".encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{header}.{payload}.{_b64(sig)}"


KITCHEN_SINK = [
    ap("fields", """
rules:
- from: [{source: {principals: [td/ns/a/sa/b, '*-x', 'td/*', '*'], notPrincipals: [bad], namespaces: [a.b, 'x*'],
                   remoteIpBlocks: [10.0.0.0/8], notIpBlocks: ['fd00::1'], requestPrincipals: ['iss/sub', '*']}},
         {source: {serviceAccounts: [web, other/api.v1], ipBlocks: [1.2.3.4]}}]
  to: [{operation: {hosts: [cart, '*.example.com', 'api.*', '*'], notHosts: [evil], methods: [GET, 'P*'],
                    paths: [/a, '/b/*', '*.js', '*', '/t/{*}/x/{**}'], notPaths: [/admin], ports: ['80'],
                    notPorts: ['81']}}]
  when:
  - {key: 'request.headers[x-a]', values: [v, '*'], notValues: [w]}
  - {key: source.namespace, values: [ns]}
  - {key: source.serviceAccount, values: [ns/sa]}
  - {key: source.principal, values: [p]}
  - {key: source.ip, values: [10.1.0.0/16]}
  - {key: remote.ip, values: [10.2.0.1]}
  - {key: destination.ip, values: [10.3.0.1]}
  - {key: destination.port, values: ['8080']}
  - {key: connection.sni, values: ['*.svc']}
  - {key: request.auth.principal, values: [i/s]}
  - {key: request.auth.audiences, values: [a, b]}
  - {key: request.auth.presenter, values: [p]}
  - {key: 'request.auth.claims[groups][x]', values: [g]}
  - {key: 'experimental.envoy.filters.network.mysql_proxy[db.table]', values: ['[update]', x]}
  - {key: 'request.experimental.inline.headers[x-l]', values: ['a.*']}
"""),
    ap("deny", "{action: DENY, rules: [{to: [{operation: {paths: [/admin]}}]}, {}]}"),
    ap("audit", "{action: AUDIT, rules: [{from: [{source: {namespaces: [x]}}]}]}"),
    ap("dry", "{action: DENY, rules: [{}]}", annotations={"istio.io/dry-run": "true"}),
    ap("nothing", "{}"),
    ap("failclosed", "{action: DENY, rules: [{from: [{source: {namespaces: [" + "n" * 150 + "]}}]}]}"),
    ap("custom", "{action: CUSTOM, provider: {name: http-authz}, rules: [{to: [{operation: {paths: [/c]}}]}]}"),
    ap("gw", "rules: [{}]", target="gateway:waypoint"),
    ra("jwt", [{"issuer": "a", "jwks": _jwks()}, {"issuer": "b", "jwksUri": "https://keys.test/jwks"},
               {"issuer": "c"}]),
]


def test_generated_filters_are_accepted_by_envoy() -> None:
    snap = snapshot(*KITCHEN_SINK)
    sets: list[AuthzFilters] = [authz_for_service(snap, WP, "shop", "cart", mesh_config=MESH),
                                authz_for_service(snap, WP, "shop", "other", mesh_config=MESH),
                                authz_for_direct(snap, WP, mesh_config=MESH)]
    for mesh_variant in ({"extensionProviders": []}, MESH):
        other = snapshot(ap("c1", "{action: CUSTOM, provider: {name: grpc-authz}, rules: [{}]}"),
                         ap("c2", "{action: CUSTOM, provider: {name: http-authz}, rules: [{}]}"))
        sets.append(authz_for_service(other, WP, "shop", "cart", mesh_config=mesh_variant))
        sets.append(authz_for_service(other, WP, "shop", "cart", mesh_config=mesh_variant,
                                      multiple_custom_providers=True))
    assert all(fs.http and fs.tcp for fs in sets)
    ok, out = envoy_validate(validation_bootstrap(sets))
    if not ok:  # say which set Envoy rejected
        for i, fs in enumerate(sets):
            one_ok, one_out = envoy_validate(validation_bootstrap([fs]))
            assert one_ok, f"filter set {i} rejected:\n{one_out[-3000:]}"
    assert ok, out[-3000:]


# --- behaviour ---------------------------------------------------------------------------------

BEHAVIOUR = [
    ra("jwt", [{"issuer": "https://issuer.test", "jwks": _jwks()}]),
    ap("deny-admin", "{action: DENY, rules: [{to: [{operation: {paths: ['/admin/*']}}]}]}"),
    ap("allow", """
rules:
- to: [{operation: {paths: [/public, /admin/x]}}]
- from: [{source: {requestPrincipals: [https://issuer.test/alice]}}]
  to: [{operation: {paths: [/secure]}}]
- from: [{source: {principals: [cluster.local/ns/shop/sa/web]}}]
  to: [{operation: {paths: [/peer]}}]
- to: [{operation: {hosts: [cart.shop], paths: [/host]}}]
"""),
]


def _behaviour_bootstrap(fs: AuthzFilters) -> dict[str, Any]:
    """An HCM that, for the test only, sets ``io.istio.peer_principal`` from a request header (the
    waypoint sets it from the HBONE client certificate), then the generated filters."""
    set_peer = {"name": "envoy.filters.http.set_filter_state", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.set_filter_state.v3.Config",
        "on_request_headers": [{"object_key": "io.istio.peer_principal", "factory_key": "envoy.string",
                                "format_string": {"text_format_source": {"inline_string": "%REQ(x-test-peer)%"}}}]}}
    filters = [set_peer, *(as_dict(f) for f in fs.http), {"name": "envoy.filters.http.router", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]
    hcm = {"@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
                    "HttpConnectionManager",
           "stat_prefix": "authz", "http_filters": filters,
           "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
               {"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": "ok"}}}]}]}}
    return {"static_resources": {"listeners": [{"name": "authz", "address": {"socket_address": {
        "address": "127.0.0.1", "port_value": 0}}, "filter_chains": [{"filters": [
            {"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}]}]}}


def _get(port: int, path: str, headers: dict[str, str]) -> int:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


async def test_envoy_enforces_the_generated_policies(envoy_factory: EnvoyFactory) -> None:
    fs = authz_for_service(snapshot(*BEHAVIOUR), WP, "shop", "cart")
    envoy = await envoy_factory(_behaviour_bootstrap(fs))
    port = (await envoy.listeners())["authz"][1]
    good, forged = token(), token(key=rsa.generate_private_key(public_exponent=65537, key_size=2048))
    bearer = {"Authorization": f"Bearer {good}"}
    cases = [
        ("/public", {}, 200),                                         # no token passes authentication
        ("/public", {"Authorization": f"Bearer {forged}"}, 401),      # an invalid token does not
        ("/public", {"Authorization": "Bearer not.a.jwt"}, 401),
        ("/secure", {}, 403),                                         # authentication is not authorization
        ("/secure", bearer, 200),
        ("/secure", {"Authorization": f"Bearer {token(sub='bob')}"}, 403),
        ("/admin/x", {}, 403),                                        # DENY runs before ALLOW
        ("/peer", {"x-test-peer": "spiffe://cluster.local/ns/shop/sa/web"}, 200),
        ("/peer", {"x-test-peer": "spiffe://cluster.local/ns/shop/sa/other"}, 403),
        ("/host", {"Host": "cart.shop"}, 200),
        ("/host", {"Host": "CART.shop:8080"}, 200),                   # port form, case-insensitive
        ("/host", {"Host": "cart.shop.evil"}, 403),
        ("/other", {}, 403),                                          # nothing allows it
    ]
    got = [(path, headers, _get(port, path, headers)) for path, headers, _ in cases]
    assert [g[2] for g in got] == [c[2] for c in cases], got
