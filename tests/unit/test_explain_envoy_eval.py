"""Unit tests of the Envoy-config evaluator behind ``explain request`` (the differential test in
tests/e2e/test_explain_request_differential.py checks it against a real Envoy)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from envoy.config.rbac.v3 import rbac_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.http.jwt_authn.v3 import config_pb2 as jwt_pb2
from envoy.type.matcher.v3 import metadata_pb2, string_pb2
from google.protobuf import json_format

from istiod_lite.ca import jws
from istiod_lite.ca.jwk import jwks_document, public_jwk
from istiod_lite.explain.envoy_eval import jwt as jwt_eval
from istiod_lite.explain.envoy_eval import rbac as rbac_eval
from istiod_lite.explain.envoy_eval.config import EnvoyConfig
from istiod_lite.explain.envoy_eval.matchers import header_match, metadata_match, string_match
from istiod_lite.explain.envoy_eval.paths import normalize, uri_template_match
from istiod_lite.explain.envoy_eval.routing import HttpRequest, route_matches, select_route, select_virtual_host
from istiod_lite.explain.request import RequestQuery, explain, policy_origin, route_origin
from istiod_lite.sources import DirectorySource
from istiod_lite.translator import WaypointAssembly, WaypointRef

GOLDEN = Path(__file__).resolve().parents[1] / "golden"


def hm(**kw: object) -> rc.HeaderMatcher:
    return json_format.ParseDict(kw, rc.HeaderMatcher())


def req(path: str = "/", method: str = "GET", authority: str = "svc", headers: tuple[tuple[str, str], ...] = ()
        ) -> HttpRequest:
    return HttpRequest(method, path, authority, ((":method", method), (":path", path), (":authority", authority),
                                                 *headers))


# ---------------------------------------------------------------- matchers


def test_header_matcher_missing_header_fails_even_inverted_but_presence_inverts() -> None:
    assert not header_match(hm(name="x", string_match={"exact": "a"}, invert_match=True), [])
    assert header_match(hm(name="x", string_match={"exact": "a"}, invert_match=True), [("x", "b")])
    assert header_match(hm(name="x", present_match=True, invert_match=True), [])
    assert not header_match(hm(name="x", present_match=True, invert_match=True), [("x", "1")])
    assert header_match(hm(name="x", string_match={"exact": ""}, treat_missing_header_as_empty=True), [])


def test_header_values_are_joined_with_commas() -> None:
    assert header_match(hm(name="x", string_match={"exact": "a,b"}), [("x", "a"), ("x", "b")])
    assert not header_match(hm(name="x", string_match={"exact": "a"}), [("x", "a"), ("x", "b")])


def test_string_matchers_ignore_case_and_re2_full_match() -> None:
    assert string_match(string_pb2.StringMatcher(prefix="/API", ignore_case=True), "/api/x")
    assert not string_match(string_pb2.StringMatcher(prefix="/API"), "/api/x")
    m = json_format.ParseDict({"safe_regex": {"regex": "/v[0-9]+"}}, string_pb2.StringMatcher())
    assert string_match(m, "/v12") and not string_match(m, "/v12/x")


def test_metadata_list_and_or_matchers() -> None:
    m = json_format.ParseDict({"filter": "f", "path": [{"key": "payload"}, {"key": "aud"}], "value": {"or_match": {
        "value_matchers": [{"list_match": {"one_of": {"string_match": {"exact": "shop"}}}},
                           {"string_match": {"exact": "shop"}}]}}}, metadata_pb2.MetadataMatcher())
    assert metadata_match(m, {"f": {"payload": {"aud": ["x", "shop"]}}})
    assert metadata_match(m, {"f": {"payload": {"aud": "shop"}}})
    assert not metadata_match(m, {"f": {"payload": {"aud": "other"}}})
    assert not metadata_match(m, {})


# ---------------------------------------------------------------- paths and routes


@pytest.mark.parametrize(("path", "kw", "want"), [
    ("/a/./b/../c", {"normalize_path": True}, "/a/c"),
    ("/a//b", {"normalize_path": True}, "/a//b"),
    ("/a//b", {"normalize_path": True, "merge_slashes": True}, "/a/b"),
    ("/a%2Fb", {"normalize_path": True}, "/a%2Fb"),
    ("/a%2fb", {"normalize_path": True, "escaped_slashes": "UNESCAPE_AND_FORWARD"}, "/a/b"),
    ("/%61pi?q=/../x", {"normalize_path": True}, "/api?q=/../x"),
    ("/a/../../b", {"normalize_path": False}, "/a/../../b"),
])
def test_path_normalisation(path: str, kw: dict[str, object], want: str) -> None:
    args = {"normalize_path": False, "merge_slashes": False, "escaped_slashes": "KEEP_UNCHANGED", **kw}
    assert normalize(path, **args) == want  # type: ignore[arg-type]


def test_uri_templates() -> None:
    assert uri_template_match("/api/{id}/items/**", "/api/7/items/a/b")
    assert not uri_template_match("/api/{id}/items/**", "/api/7/8/items/a")
    assert uri_template_match("/api/*", "/api/x?y=1")
    assert not uri_template_match("/api/*", "/api/x/y")


def test_virtual_host_order_exact_suffix_prefix_star() -> None:
    rcfg = json_format.ParseDict({"virtual_hosts": [
        {"name": "star", "domains": ["*"]}, {"name": "prefix", "domains": ["foo.*"]},
        {"name": "suffix", "domains": ["*.example.com"]}, {"name": "exact", "domains": ["Foo.example.com"]}]},
        route_pb2.RouteConfiguration())

    def vh(host: str) -> str | None:
        v = select_virtual_host(rcfg, host)
        return v.name if v is not None else None

    assert vh("foo.example.com") == "exact"
    assert vh("bar.example.com") == "suffix"
    assert vh("foo.bar") == "prefix"
    assert vh("other") == "star"


def test_route_match_kinds() -> None:
    def m(**kw: object) -> rc.RouteMatch:
        return json_format.ParseDict(kw, rc.RouteMatch())

    assert route_matches(m(prefix="/API", case_sensitive=False), req("/api/x"))[0]
    assert not route_matches(m(prefix="/API"), req("/api/x"))[0]
    assert route_matches(m(path="/a"), req("/a?x=1"))[0]
    assert route_matches(m(path_separated_prefix="/a"), req("/a/b"))[0]
    assert not route_matches(m(path_separated_prefix="/a"), req("/ab"))[0]
    assert route_matches(m(safe_regex={"regex": "/v[0-9]"}), req("/v1?x"))[0]
    q = m(prefix="/", query_parameters=[{"name": "debug", "string_match": {"exact": "1"}}])
    assert route_matches(q, req("/?debug=1"))[0]
    assert not route_matches(q, req("/?debug=2"))[0]
    ok, why = route_matches(m(prefix="/", headers=[{"name": "x", "present_match": True}]), req("/"))
    assert not ok and "header x present: no" in why


def test_first_matching_route_wins() -> None:
    rcfg = json_format.ParseDict({"virtual_hosts": [{"name": "vh", "domains": ["*"], "routes": [
        {"name": "a", "match": {"prefix": "/a"}, "direct_response": {"status": 200}},
        {"name": "all", "match": {"prefix": "/"}, "direct_response": {"status": 404}}]}]},
        route_pb2.RouteConfiguration())
    choice = select_route(rcfg, req("/ab"))
    assert choice.route is not None and choice.route.name == "a"
    assert select_route(rcfg, req("/b")).route.name == "all"  # type: ignore[union-attr]


# ---------------------------------------------------------------- RBAC


def _ctx(principal: str | None = None, path: str = "/", port: int = 80) -> rbac_eval.RbacContext:
    return rbac_eval.RbacContext(headers=((":path", path), (":method", "GET")), path=path, dest_ip="127.10.0.1",
                                 dest_port=port, source_ip="127.0.0.1", remote_ip="127.0.0.1",
                                 filter_state={"io.istio.peer_principal": principal} if principal else {})


def _rules(action: str, policies: dict[str, object]) -> rbac_pb2.RBAC:
    return json_format.ParseDict({"action": action, "policies": policies}, rbac_pb2.RBAC())


POLICY = {"ns[shop]-policy[p]-rule[0]": {
    "permissions": [{"and_rules": {"rules": [{"url_path": {"path": {"prefix": "/admin"}}},
                                             {"not_rule": {"destination_port": 9090}}]}}],
    "principals": [{"filter_state": {"key": "io.istio.peer_principal",
                                     "string_match": {"exact": "spiffe://cluster.local/ns/web/sa/fe"}}}]}}


def test_rbac_allow_deny_and_no_rules() -> None:
    fe = "spiffe://cluster.local/ns/web/sa/fe"
    assert rbac_eval.evaluate(_rules("ALLOW", POLICY), _ctx(fe, "/admin/x")).allowed
    assert not rbac_eval.evaluate(_rules("ALLOW", POLICY), _ctx(fe, "/admin/x", port=9090)).allowed
    assert not rbac_eval.evaluate(_rules("ALLOW", POLICY), _ctx("spiffe://cluster.local/ns/web/sa/x", "/admin")).allowed
    out = rbac_eval.evaluate(_rules("DENY", POLICY), _ctx(fe, "/admin?x=1"))
    assert not out.allowed and out.matched == ("ns[shop]-policy[p]-rule[0]",)
    assert rbac_eval.evaluate(None, _ctx()).allowed
    assert not rbac_eval.evaluate(_rules("ALLOW", {}), _ctx()).allowed  # rules without policies: deny all
    assert rbac_eval.evaluate(_rules("LOG", POLICY), _ctx(fe, "/admin")).allowed


def test_policy_and_route_origins() -> None:
    assert policy_origin("ns[shop]-policy[allow-fe]-rule[2]") == {"authorizationPolicy": "shop/allow-fe", "rule": 2}
    assert route_origin("split", "/apis/networking.istio.io/v1/namespaces/app/virtual-service/echo") == {
        "kind": "VirtualService", "name": "app/echo", "rule": "split"}
    got = route_origin("app.older.0", "/apis/networking.istio.io/v1/namespaces/app/virtual-service/app~echo.app")
    assert got is not None and got["route"] == "app/older" and got["rule"] == 0


# ---------------------------------------------------------------- JWT


def _jwt_config(key: ec.EllipticCurvePrivateKey, *, remote: bool = False, allow_missing: bool = True
                ) -> jwt_pb2.JwtAuthentication:
    provider: dict[str, object] = {"issuer": "https://issuer.test", "audiences": ["shop"],
                                   "payload_in_metadata": "payload",
                                   "normalize_payload_in_metadata": {"space_delimited_claims": ["scope"]}}
    if remote:
        provider["remote_jwks"] = {"http_uri": {"uri": "https://issuer.test/jwks", "cluster": "c",
                                                "timeout": "5s"}}
    else:
        provider["local_jwks"] = {"inline_string": jwks_document([key.public_key()])}
    reqs: list[dict[str, object]] = [{"provider_name": "p"}] + ([{"allow_missing": {}}] if allow_missing else [])
    return json_format.ParseDict({"providers": {"p": provider}, "rules": [
        {"match": {"prefix": "/"}, "requires": {"requires_any": {"requirements": reqs}}}]},
        jwt_pb2.JwtAuthentication())


def _token(key: ec.EllipticCurvePrivateKey, **claims: object) -> str:
    base: dict[str, object] = {"iss": "https://issuer.test", "aud": "shop", "sub": "alice",
                               "exp": int(time.time()) + 600, "scope": "read write"}
    base.update(claims)
    return jws.sign_es256(base, key, public_jwk(key.public_key())["kid"])


def _auth(token: str) -> HttpRequest:
    return req(headers=(("authorization", f"Bearer {token}"),))


def test_jwt_verified_with_inline_jwks_and_claims_in_metadata() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    out = jwt_eval.evaluate(_jwt_config(key), _auth(_token(key)))
    assert out.allowed and out.checks[0].valid
    assert out.metadata["payload"]["scope"] == ["read", "write"]


@pytest.mark.parametrize(("claims", "why"), [
    ({"iss": "https://other"}, "issuer"), ({"aud": "nope"}, "audience"), ({"exp": 1000}, "expired")])
def test_jwt_rejections(claims: dict[str, object], why: str) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    out = jwt_eval.evaluate(_jwt_config(key), _auth(_token(key, **claims)))
    assert not out.allowed and why in out.reason


def test_jwt_wrong_key_missing_token_and_remote_jwks() -> None:
    key, other = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    assert not jwt_eval.evaluate(_jwt_config(key), _auth(_token(other))).allowed
    assert jwt_eval.evaluate(_jwt_config(key), req()).allowed  # missing, allow_missing
    assert not jwt_eval.evaluate(_jwt_config(key, allow_missing=False), req()).allowed
    out = jwt_eval.evaluate(_jwt_config(key, remote=True), _auth(_token(other)))
    assert out.allowed and out.checks[0].offline_unverifiable


# ---------------------------------------------------------------- whole walk on golden inputs


def _cfg(case: str, ns: str, name: str) -> EnvoyConfig:
    update = DirectorySource(GOLDEN / case / "input").load()
    return EnvoyConfig.of(WaypointAssembly(WaypointRef(ns, name)).proxy_resources(update.snapshot))


def test_explain_weighted_route_from_its_virtual_service() -> None:
    cfg = _cfg("vs-weighted-subsets", "app", "waypoint")
    exp = explain(cfg, RequestQuery("127.10.0.1", 80, "GET", "/split/a", "echo", (),
                                    "spiffe://cluster.local/ns/app/sa/c"))
    assert exp.route == {"name": "split", "origin": {"kind": "VirtualService", "name": "app/echo", "rule": "split"}}
    assert [(c["name"], c["weight"]) for c in exp.action["clusters"]] == [
        ("inbound-vip|80|http/v1|echo.app.svc.cluster.local", 70),
        ("inbound-vip|80|http/v2|echo.app.svc.cluster.local", 30)]
    assert exp.outcome["kind"] == "upstream"
    none = explain(cfg, RequestQuery("127.10.9.9", 80, "GET", "/", "echo"))
    assert none.outcome["kind"] == "reset" and none.chain is None


def test_explain_authorization_names_the_deciding_rule() -> None:
    cfg = _cfg("authz-principals", "shop", "waypoint")
    vip = next(iter(explain_targets(cfg)))
    ok = explain(cfg, RequestQuery(vip, 8080, "GET", "/", "cart", (), "spiffe://cluster.local/ns/web/sa/frontend"))
    assert ok.authorization["allowed"] and ok.authorization["decidedBy"]["authorizationPolicy"] == "shop/allow"
    bad = explain(cfg, RequestQuery(vip, 8080, "GET", "/", "cart", (), "spiffe://cluster.local/ns/web/sa/intruder"))
    assert bad.authorization["allowed"] is False and bad.outcome["status"] == 403


def explain_targets(cfg: EnvoyConfig) -> list[str]:
    from istiod_lite.cli.explain_request_cmd import _hosts_by_vip

    return sorted(_hosts_by_vip(cfg))
