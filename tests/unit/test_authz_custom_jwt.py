"""CUSTOM (ext_authz from mesh-config providers) and RequestAuthentication (jwt_authn), and the
HTTP filter order: CUSTOM, jwt_authn, AUDIT, DENY, ALLOW."""

from __future__ import annotations

import json
from typing import Any

from istiod_lite.translator.authz import ClusterRequest, authz_for_service, authz_problems
from tests.unit.test_authz_helpers import WP, ap, filters_json, ra, rbac_configs, snapshot

MESH: dict[str, Any] = {"extensionProviders": [
    {"name": "http-authz", "envoyExtAuthzHttp": {
        "service": "ext-authz.authz.svc.cluster.local", "port": 8000, "timeout": "2s", "pathPrefix": "/check",
        "failOpen": False, "statusOnError": "503", "includeRequestHeadersInCheck": ["x-ext-authz", "x-pre-*"],
        "includeAdditionalHeadersInCheck": {"x-b": "2", "x-a": "1"}, "headersToUpstreamOnAllow": ["x-user"],
        "headersToDownstreamOnDeny": ["*-reason"], "includeRequestBodyInCheck": {"maxRequestBytes": 4096}}},
    {"name": "grpc-authz", "envoyExtAuthzGrpc": {"service": "authz/ext-authz.authz.svc.cluster.local", "port": 9000,
                                                 "failOpen": True}},
    {"name": "zipkin", "zipkin": {"service": "zipkin.istio-system.svc.cluster.local", "port": 9411}},
]}


def custom(name: str, provider: str, rules: str = "[{to: [{operation: {paths: ['/admin/*']}}]}]") -> str:
    return ap(name, f"{{action: CUSTOM, provider: {{name: {provider}}}, rules: {rules}}}")


def gen(*docs: str, mesh: dict[str, Any] | None = MESH, **kw: Any) -> Any:
    return authz_for_service(snapshot(*docs), WP, "shop", "cart", mesh_config=mesh, **kw)


def test_http_provider_gives_shadow_rbac_then_ext_authz() -> None:
    fs = gen(custom("ext", "http-authz"))
    out = filters_json(fs.http)
    assert [f["name"] for f in out] == ["envoy.filters.http.rbac", "envoy.filters.http.ext_authz"]
    shadow = rbac_configs(fs.http)[0]
    assert shadow["shadow_rules_stat_prefix"] == "istio_ext_authz_" and "rules" not in shadow
    assert list(shadow["shadow_rules"]["policies"]) == ["istio-ext-authz-http-authz-ns[shop]-policy[ext]-rule[0]"]
    assert shadow["shadow_rules"]["action"] == "DENY"
    ea = out[1]["typed_config"]
    assert ea["filter_enabled_metadata"] == {"filter": "envoy.filters.http.rbac", "path": [
        {"key": "istio_ext_authz_shadow_effective_policy_id"}],
        "value": {"string_match": {"prefix": "istio-ext-authz-http-authz-ns["}}}
    assert ea["http_service"]["server_uri"] == {"uri": "http://ext-authz.authz.svc.cluster.local",
                                                "cluster": "outbound|8000||ext-authz.authz.svc.cluster.local",
                                                "timeout": "2s"}
    assert ea["http_service"]["path_prefix"] == "/check"
    assert ea["allowed_headers"] == {"patterns": [{"exact": "x-ext-authz", "ignore_case": True},
                                                  {"prefix": "x-pre-", "ignore_case": True}]}
    assert ea["http_service"]["authorization_request"]["headers_to_add"] == [{"key": "x-a", "value": "1"},
                                                                            {"key": "x-b", "value": "2"}]
    assert ea["http_service"]["authorization_response"] == {
        "allowed_upstream_headers": {"patterns": [{"exact": "x-user", "ignore_case": True}]},
        "allowed_client_headers": {"patterns": [{"suffix": "-reason", "ignore_case": True}]}}
    assert ea["status_on_error"] == {"code": "ServiceUnavailable"}
    assert ea["with_request_body"] == {"max_request_bytes": 4096}
    assert ea["transport_api_version"] == "V3"
    assert fs.clusters == (ClusterRequest("outbound|8000||ext-authz.authz.svc.cluster.local",
                                          "ext-authz.authz.svc.cluster.local", 8000,
                                          purpose="ext_authz provider http-authz"),)


def test_http_provider_fails_closed_on_tcp_chains() -> None:
    fs = gen(custom("ext", "http-authz"))
    tcp = rbac_configs(fs.tcp)
    assert tcp == [{"rules": {"action": "DENY", "policies": {
        "istio-ext-authz-http-authz-ns[shop]-policy[ext]-rule[0]-deny-due-to-bad-CUSTOM-action": {
            "permissions": [{"and_rules": {"rules": [{"any": True}]}}],
            "principals": [{"and_ids": {"ids": [{"any": True}]}}]}}}, "stat_prefix": "tcp."}]
    assert any("cannot check TCP traffic" in p for p in fs.problems)


def test_grpc_provider_on_http_and_tcp() -> None:
    fs = gen(custom("ext", "grpc-authz"))
    http = filters_json(fs.http)
    grpc = http[1]["typed_config"]["grpc_service"]
    assert grpc == {"envoy_grpc": {"cluster_name": "outbound|9000||ext-authz.authz.svc.cluster.local",
                                   # the provider's hostname, as istiod sets it (istio/istio#46289)
                                   "authority": "ext-authz.authz.svc.cluster.local"},
                    "timeout": "600s"}
    assert http[1]["typed_config"]["failure_mode_allow"] is True
    tcp = filters_json(fs.tcp)
    assert [f["name"] for f in tcp] == ["envoy.filters.network.rbac", "envoy.filters.network.ext_authz"]
    assert tcp[0]["typed_config"]["shadow_rules_stat_prefix"] == "istio_ext_authz_"
    assert tcp[1]["typed_config"]["stat_prefix"] == "tcp."
    assert tcp[1]["typed_config"]["filter_enabled_metadata"]["filter"] == "envoy.filters.network.rbac"
    assert fs.problems == ("TCP chains: AuthorizationPolicy shop/ext: spec.rules[0]: HTTP-only attributes (paths) "
                           "are ignored on TCP chains (the rule applies without them)",)


def test_unknown_provider_denies_with_bad_custom_keys() -> None:
    fs = gen(custom("ext", "nope"))
    cfg = rbac_configs(fs.http)
    assert list(cfg[0]["rules"]["policies"]) == [
        "istio-ext-authz-nope-ns[shop]-policy[ext]-rule[0]-deny-due-to-bad-CUSTOM-action"]
    assert [f.name for f in fs.http] == ["envoy.filters.http.rbac"]
    assert any("not defined in the mesh config" in p for p in fs.problems)
    assert any("shop/ext" in p and "enforced as DENY" in p for p in authz_problems(snapshot(custom("ext", "nope"))))


def test_provider_of_another_kind_or_with_missing_service_fails_closed() -> None:
    for provider, reason in (("zipkin", "not an ext_authz provider"), ("bad", "could not find service")):
        mesh = {"extensionProviders": [*MESH["extensionProviders"], {"name": "bad", "envoyExtAuthzHttp": {
            "service": "missing.x.svc.cluster.local", "port": 80}}]}
        fs = gen(custom("ext", provider), mesh=mesh)
        assert "deny-due-to-bad-CUSTOM-action" in json.dumps(rbac_configs(fs.http))
        assert any(reason in p for p in fs.problems), fs.problems


def test_several_providers_need_the_switch() -> None:
    docs = (custom("a", "http-authz"), custom("b", "grpc-authz"))
    fs = gen(*docs)
    assert [f.name for f in fs.http] == ["envoy.filters.http.rbac", "envoy.filters.http.rbac"]
    assert all("deny-due-to-bad-CUSTOM-action" in k for c in rbac_configs(fs.http) for k in c["rules"]["policies"])
    fs = gen(*docs, multiple_custom_providers=True)
    assert [f.name for f in fs.http] == ["envoy.filters.http.rbac", "envoy.filters.http.ext_authz"] * 2
    # sorted by provider name: grpc-authz before http-authz
    assert list(rbac_configs(fs.http)[0]["shadow_rules"]["policies"]) == [
        "istio-ext-authz-grpc-authz-ns[shop]-policy[b]-rule[0]"]


# --- RequestAuthentication -------------------------------------------------------------------------

JWKS = json.dumps({"keys": [{"kty": "RSA", "n": "AQAB", "e": "AQAB", "kid": "k"}]})


def test_single_rule_requires_provider_or_missing_token() -> None:
    fs = gen(ra("jwt", [{"issuer": "iss", "jwks": JWKS, "audiences": ["a"], "forwardOriginalToken": True,
                         "outputPayloadToHeader": "x-payload", "fromHeaders": [{"name": "x-jwt", "prefix": "Bearer "}],
                         "fromParams": ["token"], "fromCookies": ["session"],
                         "outputClaimToHeaders": [{"header": "x-sub", "claim": "sub"}],
                         "spaceDelimitedClaims": ["roles"]}]))
    out = filters_json(fs.http)
    assert [f["name"] for f in out] == ["envoy.filters.http.jwt_authn"]
    cfg = out[0]["typed_config"]
    assert cfg["rules"] == [{"match": {"prefix": "/"}, "requires": {"requires_any": {"requirements": [
        {"provider_name": "origins-0"}, {"allow_missing": {}}]}}}]
    assert cfg["bypass_cors_preflight"] is True
    assert cfg["providers"]["origins-0"] == {
        "issuer": "iss", "audiences": ["a"], "local_jwks": {"inline_string": JWKS}, "forward": True,
        "from_headers": [{"name": "x-jwt", "value_prefix": "Bearer "}], "from_params": ["token"],
        "from_cookies": ["session"], "forward_payload_header": "x-payload", "payload_in_metadata": "payload",
        "normalize_payload_in_metadata": {"space_delimited_claims": ["permission", "roles", "scope"]},
        "claim_to_headers": [{"header_name": "x-sub", "claim_name": "sub"}]}
    assert fs.tcp == () and not fs.problems


def test_remote_jwks_names_an_outbound_cluster() -> None:
    fs = gen(ra("jwt", [{"issuer": "iss", "jwksUri": "https://keys.example.com/jwks.json", "timeout": "3s"},
                        {"issuer": "abc", "jwksUri": "http://10.0.0.5:8080/keys"}]))
    cfg = filters_json(fs.http)[0]["typed_config"]
    assert cfg["providers"]["origins-1"]["remote_jwks"] == {"http_uri": {
        "uri": "https://keys.example.com/jwks.json", "cluster": "outbound|443||keys.example.com", "timeout": "3s"},
        "cache_duration": "300s"}
    assert cfg["providers"]["origins-0"]["remote_jwks"]["http_uri"]["cluster"] == "outbound|8080||10.0.0.5"
    assert [(c.name, c.tls) for c in fs.clusters] == [("outbound|8080||10.0.0.5", False),
                                                      ("outbound|443||keys.example.com", True)]
    outer = cfg["rules"][0]["requires"]["requires_any"]["requirements"]
    assert outer[:2] == [{"provider_name": "origins-0"}, {"provider_name": "origins-1"}]
    assert outer[2]["requires_all"]["requirements"][1] == {"requires_any": {"requirements": [
        {"provider_name": "origins-1"}, {"allow_missing": {}}]}}


def test_issuer_without_keys_gets_an_unverifiable_jwks() -> None:
    fs = gen(ra("jwt", [{"issuer": "https://accounts.example.com"}]))
    jwks = json.loads(filters_json(fs.http)[0]["typed_config"]["providers"]["origins-0"]["local_jwks"]["inline_string"])
    assert jwks["keys"][0]["kty"] == "EC" and jwks["keys"][0]["kid"] == "istiod-lite-unverifiable"
    assert any("always rejected" in p for p in fs.problems)


def test_several_request_authentications_merge_sorted_by_issuer() -> None:
    fs = gen(ra("b", [{"issuer": "zeta", "jwks": JWKS}]), ra("a", [{"issuer": "alpha", "jwks": JWKS}]))
    providers = filters_json(fs.http)[0]["typed_config"]["providers"]
    assert providers["origins-0"]["issuer"] == "alpha" and providers["origins-1"]["issuer"] == "zeta"


def test_http_filter_order_custom_jwt_audit_deny_allow() -> None:
    fs = gen(ap("allow", "rules: [{}]"), ap("deny", "{action: DENY, rules: [{to: [{operation: {paths: [/x]}}]}]}"),
             ap("audit", "{action: AUDIT, rules: [{}]}"), custom("ext", "http-authz"),
             ra("jwt", [{"issuer": "iss", "jwks": JWKS}]))
    names = [f.name for f in fs.http]
    assert names == ["envoy.filters.http.rbac", "envoy.filters.http.ext_authz", "envoy.filters.http.jwt_authn",
                     "envoy.filters.http.rbac", "envoy.filters.http.rbac", "envoy.filters.http.rbac"]
    actions = [c.get("rules", {}).get("action", "ALLOW") if "rules" in c else "SHADOW"
               for c in rbac_configs(fs.http)]
    assert actions == ["SHADOW", "LOG", "DENY", "ALLOW"]
