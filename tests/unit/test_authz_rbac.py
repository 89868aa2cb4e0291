"""AuthorizationPolicy -> RBAC JSON: every field's value mapping, rule structure and the filter
layout (docs/istio-waypoint-shape.md §5.2-5.3)."""

from __future__ import annotations

from typing import Any

import pytest
import re2

from istiod_lite.translator.authz import AuthzFilters, authz_for_service
from tests.unit.test_authz_helpers import (
    WP,
    ap,
    first_permission_rules,
    first_principal_ids,
    only_policy,
    peer,
    rbac_configs,
    snapshot,
)


def gen(*docs: str) -> AuthzFilters:
    return authz_for_service(snapshot(*docs), WP, "shop", "cart")


def perm(spec: str) -> list[dict[str, Any]]:
    return first_permission_rules(only_policy(gen(ap("p", spec))))


def prin(spec: str) -> list[dict[str, Any]]:
    return first_principal_ids(only_policy(gen(ap("p", spec))))


def hdr(name: str, **match: Any) -> dict[str, Any]:
    return {"header": {"name": name, "string_match": match}}


# --- to.operation ------------------------------------------------------------------------------


def test_hosts_exact_matches_with_and_without_port_case_insensitively() -> None:
    assert perm("rules: [{to: [{operation: {hosts: [cart.shop]}}]}]") == [{"or_rules": {"rules": [
        hdr(":authority", exact="cart.shop", ignore_case=True),
        hdr(":authority", prefix="cart.shop:", ignore_case=True)]}}]


def test_hosts_suffix_wildcard_also_matches_the_port_form() -> None:
    assert perm("rules: [{to: [{operation: {hosts: ['*.example.com']}}]}]") == [{"or_rules": {"rules": [
        hdr(":authority", suffix=".example.com", ignore_case=True),
        hdr(":authority", safe_regex={"regex": r"(?i).*\.example\.com:[0-9]+"})]}}]


def test_hosts_prefix_and_presence() -> None:
    assert perm("rules: [{to: [{operation: {hosts: ['api.*', '*']}}]}]") == [{"or_rules": {"rules": [
        hdr(":authority", prefix="api.", ignore_case=True),
        {"header": {"name": ":authority", "present_match": True}}]}}]


def test_not_hosts_is_a_negated_or() -> None:
    assert perm("rules: [{to: [{operation: {notHosts: [a]}}]}]") == [{"not_rule": {"or_rules": {"rules": [
        hdr(":authority", exact="a", ignore_case=True), hdr(":authority", prefix="a:", ignore_case=True)]}}}]


def test_methods_are_case_sensitive_with_wildcards() -> None:
    assert perm("rules: [{to: [{operation: {methods: [GET, 'P*', '*T', '*']}}]}]") == [{"or_rules": {"rules": [
        hdr(":method", exact="GET"), hdr(":method", prefix="P"), hdr(":method", suffix="T"),
        {"header": {"name": ":method", "present_match": True}}]}}]


def test_paths_exact_prefix_suffix_and_any() -> None:
    assert perm("rules: [{to: [{operation: {paths: [/a, '/b/*', '*.js', '*']}}]}]") == [{"or_rules": {"rules": [
        {"url_path": {"path": {"exact": "/a"}}}, {"url_path": {"path": {"prefix": "/b/"}}},
        {"url_path": {"path": {"suffix": ".js"}}}, {"url_path": {"path": {"safe_regex": {"regex": ".+"}}}}]}}]


def test_path_templates_use_the_uri_template_matcher() -> None:
    rules = perm("rules: [{to: [{operation: {paths: ['/api/{*}/items/{**}']}}]}]")
    assert rules == [{"or_rules": {"rules": [{"uri_template": {"name": "uri-template", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.path.match.uri_template.v3.UriTemplateMatchConfig",
        "path_template": "/api/*/items/**"}}}]}}]


def test_ports_and_not_ports_are_destination_ports() -> None:
    assert perm("rules: [{to: [{operation: {ports: ['80', '8080'], notPorts: ['9090']}}]}]") == [
        {"or_rules": {"rules": [{"destination_port": 80}, {"destination_port": 8080}]}},
        {"not_rule": {"or_rules": {"rules": [{"destination_port": 9090}]}}}]


# --- DENY/AUDIT widening: hosts and paths also match other spellings (never ALLOW) -----------

_DENY_HOST_RE = r"(?i)^(.*,)?\s*secret\.example\.com(:[0-9]+)?\s*(,.*)?$"


def _re2_full(pattern: str, text: str) -> bool:
    return re2.fullmatch(pattern, text) is not None


@pytest.mark.parametrize("action", ["DENY", "AUDIT"])
def test_deny_hosts_also_match_any_item_of_a_comma_joined_authority(action: str) -> None:
    rules = perm(f"{{action: {action}, rules: [{{to: [{{operation: {{hosts: [secret.example.com]}}}}]}}]}}")
    assert rules == [{"or_rules": {"rules": [
        hdr(":authority", exact="secret.example.com", ignore_case=True),
        hdr(":authority", prefix="secret.example.com:", ignore_case=True),
        {"header": {"name": ":authority", "safe_regex_match": {"regex": _DENY_HOST_RE}}}]}}]
    for hit in ("secret.example.com", "other,secret.example.com", "Secret.Example.COM:80, other",
                "a, secret.example.com ,b"):
        assert _re2_full(_DENY_HOST_RE, hit), hit
    for miss in ("other.example.com", "secretxexample.com", "notsecret.example.com", "secret.example.com.evil"):
        assert not _re2_full(_DENY_HOST_RE, miss), miss


def test_deny_host_wildcards_are_list_items_too() -> None:
    rules = perm("{action: DENY, rules: [{to: [{operation: {hosts: ['*.example.com', 'api.*', '*']}}]}]}")
    regexes = [r["header"]["safe_regex_match"]["regex"] for r in rules[0]["or_rules"]["rules"]
               if "safe_regex_match" in r.get("header", {})]
    assert regexes == [r"(?i)^(.*,)?\s*[^,]*\.example\.com(:[0-9]+)?\s*(,.*)?$",
                       r"(?i)^(.*,)?\s*api\.[^,]*(:[0-9]+)?\s*(,.*)?$"]
    assert _re2_full(regexes[0], "x,A.example.com:8080") and not _re2_full(regexes[0], "example.com,x")


def test_allow_and_negated_hosts_and_paths_are_not_widened() -> None:
    spec = "rules: [{to: [{operation: {hosts: [h], paths: [/a, '/b/*']}}]}]"
    assert perm(spec) == [
        {"or_rules": {"rules": [hdr(":authority", exact="h", ignore_case=True),
                                hdr(":authority", prefix="h:", ignore_case=True)]}},
        {"or_rules": {"rules": [{"url_path": {"path": {"exact": "/a"}}}, {"url_path": {"path": {"prefix": "/b/"}}}]}}]
    # DENY with notHosts/notPaths: widening the negated set would narrow the DENY.
    assert perm("{action: DENY, rules: [{to: [{operation: {notHosts: [h], notPaths: [/a]}}]}]}") == [
        {"not_rule": {"or_rules": {"rules": [hdr(":authority", exact="h", ignore_case=True),
                                             hdr(":authority", prefix="h:", ignore_case=True)]}}},
        {"not_rule": {"or_rules": {"rules": [{"url_path": {"path": {"exact": "/a"}}}]}}}]


def _deny_path_rules(paths: str) -> list[dict[str, Any]]:
    rules = perm(f"{{action: DENY, rules: [{{to: [{{operation: {{paths: {paths}}}}}]}}]}}")
    out: list[dict[str, Any]] = rules[0]["or_rules"]["rules"]
    return out


def test_deny_paths_also_match_slash_encoding_and_dot_segment_spellings() -> None:
    exact, exact_re, prefix, prefix_re = _deny_path_rules("[/admin, '/admin/*']")
    assert exact == {"url_path": {"path": {"exact": "/admin"}}}
    assert prefix == {"url_path": {"path": {"prefix": "/admin/"}}}
    one, sub = exact_re["url_path"]["path"]["safe_regex"]["regex"], prefix_re["url_path"]["path"]["safe_regex"]["regex"]
    for hit in ("/admin", "//admin", "/%2Fadmin", "/%2fadmin", "/%5Cadmin", "/%5cadmin", "/\\admin",
                "/./admin", "/a/../admin", "/.//a/..//admin"):
        assert _re2_full(one, hit), hit
    for miss in ("/public", "/adminx", "/x/admin", "/admin/", "/ADMIN"):
        assert not _re2_full(one, miss), miss
    for hit in ("/admin/", "//admin//x", "/%2Fadmin%2fx", "/./admin/x", "/admin%5Cx"):
        assert _re2_full(sub, hit), hit
    for miss in ("/admin", "/adminx", "/public/admin/x"):
        assert not _re2_full(sub, miss), miss


def test_deny_paths_keep_suffix_presence_and_templates_as_they_are() -> None:
    assert _deny_path_rules("['*.js', '*', '/api/{*}']") == [
        {"url_path": {"path": {"suffix": ".js"}}}, {"url_path": {"path": {"safe_regex": {"regex": ".+"}}}},
        {"uri_template": {"name": "uri-template", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.path.match.uri_template.v3.UriTemplateMatchConfig",
            "path_template": "/api/*"}}}]


def test_deny_widening_over_the_program_size_limit_falls_back_and_is_reported() -> None:
    long_host = "h" * 80 + ".example.com"
    deep = "/a/b/c/d"
    very_deep = "/" + "/".join("abcdefghijklmnopqrstu")
    f = gen(ap("p", f"{{action: DENY, rules: [{{to: [{{operation: {{hosts: [{long_host}], "
                    f"paths: ['{deep}', '{very_deep}']}}}}]}}]}}"))
    hosts, paths = first_permission_rules(only_policy(f))
    assert hosts == {"or_rules": {"rules": [hdr(":authority", exact=long_host, ignore_case=True),
                                            hdr(":authority", prefix=long_host + ":", ignore_case=True)]}}
    deep_exact, deep_re, very_exact = paths["or_rules"]["rules"]
    assert deep_exact == {"url_path": {"path": {"exact": deep}}}
    assert _re2_full(deep_re["url_path"]["path"]["safe_regex"]["regex"], "//a/%2Fb/c%5Cd")
    assert very_exact == {"url_path": {"path": {"exact": very_deep}}}
    loc = "AuthorizationPolicy shop/p: spec.rules[0].to[0].operation"
    widening = [p for p in f.problems if p.startswith(loc)]
    assert [p.split(":")[0] + ":" + p.split(":")[1] for p in widening] == [
        f"{loc}.hosts[0]", f"{loc}.paths[0]", f"{loc}.paths[1]"]
    assert all("the value matches only as written" in p and "program size" in p for p in widening)
    assert "repeated Host headers" in widening[0] and "dot segments" in widening[1]
    assert "alternative spellings" in widening[2]


def test_operation_field_order_is_hosts_methods_paths_ports() -> None:
    rules = perm("rules: [{to: [{operation: {ports: ['1'], paths: [/p], methods: [GET], hosts: [h]}}]}]")
    kinds = [next(iter(r["or_rules"]["rules"][0])) for r in rules]
    names = [r["or_rules"]["rules"][0].get("header", {}).get("name") for r in rules]
    assert kinds == ["header", "header", "url_path", "destination_port"]
    assert names[:2] == [":authority", ":method"]


# --- from.source -------------------------------------------------------------------------------


def test_principals_match_the_peer_filter_state_with_spiffe_prefix() -> None:
    ids = prin("rules: [{from: [{source: {principals: [td/ns/a/sa/b, 'td/ns/a/*', '*/sa/b', '*']}}]}]")
    assert ids == [{"or_ids": {"ids": [
        peer({"exact": "spiffe://td/ns/a/sa/b"}), peer({"prefix": "spiffe://td/ns/a/"}),
        peer({"safe_regex": {"regex": "spiffe://.*/sa/b"}}), peer({"safe_regex": {"regex": ".+"}})]}}]


def test_namespaces_regex_escapes_and_keeps_wildcards() -> None:
    ids = prin("rules: [{from: [{source: {namespaces: [a.b, 'team-*']}}]}]")
    assert ids == [{"or_ids": {"ids": [peer({"safe_regex": {"regex": r".*/ns/a\.b/.*"}}),
                                       peer({"safe_regex": {"regex": ".*/ns/team-.*/.*"}})]}}]


def test_service_accounts_default_to_the_policy_namespace() -> None:
    ids = prin("rules: [{from: [{source: {serviceAccounts: [web, other/api.v1]}}]}]")
    assert ids == [{"or_ids": {"ids": [
        peer({"safe_regex": {"regex": "spiffe://.+/ns/shop/(.+/|)sa/web(/.+)?"}}),
        peer({"safe_regex": {"regex": r"spiffe://.+/ns/other/(.+/|)sa/api\.v1(/.+)?"}})]}}]


def test_ip_blocks_are_the_tunnel_source_and_remote_ip_blocks_remote_ip() -> None:
    ids = prin("rules: [{from: [{source: {ipBlocks: [10.1.2.3, 10.0.0.0/8], remoteIpBlocks: ['fd00::/64']}}]}]")
    assert ids == [
        {"or_ids": {"ids": [{"remote_ip": {"address_prefix": "fd00::", "prefix_len": 64}}]}},
        {"or_ids": {"ids": [{"source_ip": {"address_prefix": "10.1.2.3", "prefix_len": 32}},
                            {"source_ip": {"address_prefix": "10.0.0.0", "prefix_len": 8}}]}}]


def _jwt(claim: str, **match: Any) -> dict[str, Any]:
    return {"metadata": {"filter": "envoy.filters.http.jwt_authn", "path": [{"key": "payload"}, {"key": claim}],
                         "value": {"string_match": match}}}


def test_request_principals_split_issuer_and_subject() -> None:
    ids = prin("rules: [{from: [{source: {requestPrincipals: ['https://iss/sub', 'iss/*', '*']}}]}]")
    assert ids == [{"or_ids": {"ids": [
        {"and_ids": {"ids": [_jwt("iss", exact="https://iss"), _jwt("sub", exact="sub")]}},
        {"and_ids": {"ids": [_jwt("iss", exact="iss"), _jwt("sub", safe_regex={"regex": ".+"})]}},
        {"and_ids": {"ids": [_jwt("iss", safe_regex={"regex": ".+"}), _jwt("sub", safe_regex={"regex": ".+"})]}},
    ]}}]


def test_not_request_principals_negate_the_single_extended_matcher() -> None:
    ids = prin("rules: [{from: [{source: {notRequestPrincipals: ['*']}}]}]")
    assert ids == [{"not_id": {"and_ids": {"ids": [_jwt("iss", safe_regex={"regex": ".+"}),
                                                    _jwt("sub", safe_regex={"regex": ".+"})]}}}]


def test_source_field_order() -> None:
    ids = prin("rules: [{from: [{source: {ipBlocks: [1.1.1.1], remoteIpBlocks: [2.2.2.2], namespaces: [n], "
               "requestPrincipals: [i/s], principals: [p]}}]}]")
    first = [next(iter(i["or_ids"]["ids"][0])) if "or_ids" in i else "request" for i in ids]
    assert first == ["filter_state", "request", "filter_state", "remote_ip", "source_ip"]
    assert ids[2]["or_ids"]["ids"][0]["filter_state"]["string_match"]["safe_regex"]["regex"] == ".*/ns/n/.*"


# --- when --------------------------------------------------------------------------------------


def test_when_request_header() -> None:
    ids = prin("rules: [{when: [{key: 'request.headers[x-user]', values: [alice, 'bo*'], notValues: [eve]}]}]")
    assert ids == [{"or_ids": {"ids": [hdr("x-user", exact="alice"), hdr("x-user", prefix="bo")]}},
                   {"not_id": {"or_ids": {"ids": [hdr("x-user", exact="eve")]}}}]


def test_when_source_identity_keys() -> None:
    ids = prin("""
rules: [{when: [{key: source.ip, values: [10.0.0.1]}, {key: source.namespace, values: [ns1]},
                {key: source.principal, values: [td/ns/x/sa/y]}, {key: source.serviceAccount, values: [sa1]},
                {key: remote.ip, values: [10.9.0.0/16]}]}]""")
    assert ids == [
        {"or_ids": {"ids": [{"source_ip": {"address_prefix": "10.0.0.1", "prefix_len": 32}}]}},
        {"or_ids": {"ids": [peer({"safe_regex": {"regex": ".*/ns/ns1/.*"}})]}},
        {"or_ids": {"ids": [peer({"exact": "spiffe://td/ns/x/sa/y"})]}},
        {"or_ids": {"ids": [peer({"safe_regex": {"regex": "spiffe://.+/ns/shop/(.+/|)sa/sa1(/.+)?"}})]}},
        {"or_ids": {"ids": [{"remote_ip": {"address_prefix": "10.9.0.0", "prefix_len": 16}}]}}]


def test_when_destination_keys_are_permissions() -> None:
    rules = perm("""
rules: [{when: [{key: destination.ip, values: [10.0.0.1]}, {key: destination.port, values: ['8080']},
                {key: connection.sni, values: ['*.example.com']}]}]""")
    assert rules == [
        {"or_rules": {"rules": [{"destination_ip": {"address_prefix": "10.0.0.1", "prefix_len": 32}}]}},
        {"or_rules": {"rules": [{"destination_port": 8080}]}},
        {"or_rules": {"rules": [{"requested_server_name": {"suffix": ".example.com"}}]}}]


def test_when_jwt_claims_audiences_and_presenter() -> None:
    ids = prin("""
rules: [{when: [{key: 'request.auth.claims[groups][admin]', values: ['yes']},
                {key: request.auth.audiences, values: [a, b]},
                {key: request.auth.presenter, values: [azp1]},
                {key: request.auth.principal, values: [iss/sub]}]}]""")
    claim_value = {"or_match": {"value_matchers": [
        {"list_match": {"one_of": {"string_match": {"exact": "yes"}}}}, {"string_match": {"exact": "yes"}}]}}
    assert ids[0] == {"metadata": {"filter": "envoy.filters.http.jwt_authn", "path": [
        {"key": "payload"}, {"key": "groups"}, {"key": "admin"}], "value": claim_value}}
    # ``aud`` may be a string or a list (RFC 7519): both forms match.
    either = {"or_match": {"value_matchers": [{"string_match": {"exact": "a"}}, {"string_match": {"exact": "b"}}]}}
    assert ids[1] == {"metadata": {"filter": "envoy.filters.http.jwt_authn", "path": [
        {"key": "payload"}, {"key": "aud"}], "value": {"or_match": {"value_matchers": [
            {"list_match": {"one_of": either}}, either]}}}}
    assert ids[2]["metadata"]["path"][1] == {"key": "azp"}
    assert ids[3] == {"and_ids": {"ids": [_jwt("iss", exact="iss"), _jwt("sub", exact="sub")]}}


def test_when_envoy_filter_metadata_and_inline_headers() -> None:
    policy = only_policy(gen(ap("p", """
rules: [{when: [{key: 'experimental.envoy.filters.network.mysql_proxy[db.table]', values: ['[update]', x]},
                {key: 'request.experimental.inline.headers[x-list]', values: [a.b]}]}]""")))
    assert first_permission_rules(policy) == [{"metadata": {
        "filter": "envoy.filters.network.mysql_proxy", "path": [{"key": "db.table"}],
        "value": {"or_match": {"value_matchers": [
            {"list_match": {"one_of": {"string_match": {"exact": "update"}}}}, {"string_match": {"exact": "x"}}]}}}}]
    item = r"a\.b"
    assert first_principal_ids(policy) == [{"or_ids": {"ids": [{"header": {"name": "x-list", "safe_regex_match": {
        "regex": f"^{item}$|^{item},.*|.*,{item},.*|.*,{item}$"}}}]}}]


def test_when_conditions_are_appended_to_every_to_and_from() -> None:
    policy = only_policy(gen(ap("p", """
rules:
- from: [{source: {principals: [a]}}, {source: {namespaces: [b]}}]
  to: [{operation: {methods: [GET]}}, {operation: {methods: [POST]}}]
  when: [{key: destination.port, values: ['80']}, {key: source.ip, values: [1.2.3.4]}]""")))
    assert len(policy["permissions"]) == 2 and len(policy["principals"]) == 2
    for p in policy["permissions"]:
        assert p["and_rules"]["rules"][-1] == {"or_rules": {"rules": [{"destination_port": 80}]}}
    for p in policy["principals"]:
        assert p["and_ids"]["ids"][-1]["or_ids"]["ids"][0]["source_ip"]["address_prefix"] == "1.2.3.4"


# --- policies, actions, filters ------------------------------------------------------------------


def test_empty_rule_matches_everything() -> None:
    assert only_policy(gen(ap("p", "rules: [{}]"))) == {
        "permissions": [{"and_rules": {"rules": [{"any": True}]}}],
        "principals": [{"and_ids": {"ids": [{"any": True}]}}]}


def test_allow_without_rules_is_a_never_matching_rule_zero() -> None:
    cfg = rbac_configs(gen(ap("deny-all", "{}")).http)
    assert cfg == [{"rules": {"policies": {"ns[shop]-policy[deny-all]-rule[0]": {
        "permissions": [{"not_rule": {"any": True}}], "principals": [{"not_id": {"any": True}}]}}},
        "shadow_rules_stat_prefix": "istio_dry_run_allow_"}]


def test_audit_without_rules_is_a_noop_log_filter() -> None:
    cfg = rbac_configs(gen(ap("audit", "action: AUDIT")).http)
    assert cfg[0]["rules"]["action"] == "LOG"
    assert cfg[0]["rules"]["policies"]["ns[shop]-policy[audit]-rule[0]"]["permissions"] == [
        {"not_rule": {"any": True}}]


def test_policy_keys_per_rule() -> None:
    cfg = rbac_configs(gen(ap("multi", "rules: [{to: [{operation: {paths: [/a]}}]}, {}, {from: [{source: "
                                       "{namespaces: [x]}}]}]")).http)
    assert sorted(cfg[0]["rules"]["policies"]) == [f"ns[shop]-policy[multi]-rule[{i}]" for i in range(3)]


def test_one_filter_per_action_in_audit_deny_allow_order() -> None:
    fs = gen(ap("a1", "rules: [{}]"), ap("d1", "{action: DENY, rules: [{}]}"), ap("l1", "{action: AUDIT, rules: [{}]}"),
             ap("a2", "rules: [{to: [{operation: {paths: [/x]}}]}]"))
    cfgs = rbac_configs(fs.http)
    assert [c["rules"].get("action", "ALLOW") for c in cfgs] == ["LOG", "DENY", "ALLOW"]
    assert sorted(cfgs[2]["rules"]["policies"]) == ["ns[shop]-policy[a1]-rule[0]", "ns[shop]-policy[a2]-rule[0]"]
    assert [f.name for f in fs.http] == ["envoy.filters.http.rbac"] * 3
    assert [f.name for f in fs.tcp] == ["envoy.filters.network.rbac"] * 3
    assert all(c["stat_prefix"] == "tcp." for c in rbac_configs(fs.tcp))


def test_dry_run_allow_goes_to_shadow_rules_and_rules_are_omitted() -> None:
    fs = gen(ap("dry", "rules: [{}]", annotations={"istio.io/dry-run": "true"}))
    cfg = rbac_configs(fs.http)[0]
    assert "rules" not in cfg
    assert cfg["shadow_rules_stat_prefix"] == "istio_dry_run_allow_"
    assert list(cfg["shadow_rules"]["policies"]) == ["ns[shop]-policy[dry]-rule[0]"]


def test_dry_run_deny_mixed_with_enforced_deny() -> None:
    fs = gen(ap("dry", "{action: DENY, rules: [{}]}", annotations={"istio.io/dry-run": "true"}),
             ap("real", "{action: DENY, rules: [{to: [{operation: {paths: [/admin]}}]}]}"))
    cfg = rbac_configs(fs.http)[0]
    assert cfg["shadow_rules_stat_prefix"] == "istio_dry_run_deny_"
    assert list(cfg["shadow_rules"]["policies"]) == ["ns[shop]-policy[dry]-rule[0]"]
    assert list(cfg["rules"]["policies"]) == ["ns[shop]-policy[real]-rule[0]"]
    assert cfg["rules"]["action"] == cfg["shadow_rules"]["action"] == "DENY"


# --- TCP chains (forTCP) -------------------------------------------------------------------------


def test_tcp_allow_rule_with_http_attributes_is_dropped() -> None:
    fs = gen(ap("p", "rules: [{to: [{operation: {paths: [/a], ports: ['80']}}]}, "
                     "{to: [{operation: {ports: ['81']}}]}]"))
    tcp = rbac_configs(fs.tcp)[0]
    assert list(tcp["rules"]["policies"]) == ["ns[shop]-policy[p]-rule[1]"]
    assert any("dropped on TCP chains" in p for p in fs.problems)


def test_tcp_allow_with_only_http_rules_denies_everything() -> None:
    tcp = rbac_configs(gen(ap("p", "rules: [{to: [{operation: {methods: [GET]}}]}]")).tcp)[0]
    assert tcp == {"rules": {}, "stat_prefix": "tcp.", "shadow_rules_stat_prefix": "istio_dry_run_allow_"}


def test_tcp_deny_drops_only_the_http_condition() -> None:
    fs = gen(ap("p", "{action: DENY, rules: [{to: [{operation: {paths: [/a], ports: ['80']}}], "
                     "when: [{key: 'request.headers[x]', values: [y]}, {key: source.ip, values: [1.1.1.1]}]}]}"))
    policy = only_policy(fs, tcp=True)
    assert first_permission_rules(policy) == [{"or_rules": {"rules": [{"destination_port": 80}]}}]
    assert first_principal_ids(policy) == [{"or_ids": {"ids": [
        {"source_ip": {"address_prefix": "1.1.1.1", "prefix_len": 32}}]}}]


def test_tcp_deny_with_request_principals_only_becomes_wider() -> None:
    policy = only_policy(gen(ap("p", "{action: DENY, rules: [{from: [{source: {requestPrincipals: ['*']}}]}]}")),
                         tcp=True)
    assert first_principal_ids(policy) == [{"any": True}]


@pytest.mark.parametrize("action", ["ALLOW", "DENY", "AUDIT"])
def test_l4_only_rules_are_identical_on_http_and_tcp(action: str) -> None:
    fs = gen(ap("p", f"{{action: {action}, rules: [{{from: [{{source: {{principals: [a]}}}}], "
                     "to: [{operation: {ports: ['80']}}]}]}"))
    assert only_policy(fs) == only_policy(fs, tcp=True)
