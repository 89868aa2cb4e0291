"""Fail closed, and never emit what Envoy would reject: hostile strings are RE2-escaped, oversized
or unsupported values make an ALLOW rule match nothing and a DENY rule match everything, and
the reason is reported with the field path."""

from __future__ import annotations

import random

import pytest
import re2

from istiod_lite.translator.authz import Limits, authz_for_service, authz_problems
from istiod_lite.translator.authz.matchers import check_regex, re2_escape
from tests.unit.test_authz_helpers import WP, ap, first_principal_ids, only_policy, rbac_configs, snapshot

HOSTILE = ["a.b", "a*b", ".*", "(a|b)", "[x]", "{1,2}", "^$", "\\d", "a+?", "ns\\", "x\ny", "\x00\x7f",
           "ünï/cödé", "a)(b", "(?i)X", "\\Q.\\E", "|", "$(rm -rf)", "a" * 50]


@pytest.mark.parametrize("text", HOSTILE)
def test_re2_escape_matches_exactly_the_literal(text: str) -> None:
    pattern = check_regex(re2_escape(text), Limits(max_regex_program_size=10_000))
    assert re2.fullmatch(pattern, text)
    assert not re2.fullmatch(pattern, text + "x")
    if len(text) > 1:
        assert not re2.fullmatch(pattern, text[::-1]) or text == text[::-1]


def test_re2_escape_fuzz() -> None:
    rnd = random.Random(7)
    alphabet = "ab.*+?()[]{}|^$\\-/:\n\t\x00é"
    for _ in range(500):
        s = "".join(rnd.choice(alphabet) for _ in range(rnd.randint(1, 12)))
        assert re2.fullmatch(re2_escape(s), s), s


def test_namespace_with_dots_does_not_match_other_namespaces() -> None:
    snap = snapshot(ap("p", "rules: [{from: [{source: {namespaces: [a.b]}}]}]"))
    ids = first_principal_ids(only_policy(authz_for_service(snap, WP, "shop", "cart")))
    regex = ids[0]["or_ids"]["ids"][0]["filter_state"]["string_match"]["safe_regex"]["regex"]
    assert re2.fullmatch(regex, "spiffe://td/ns/a.b/sa/x")
    assert not re2.fullmatch(regex, "spiffe://td/ns/axb/sa/x")


def gen_policy(spec: str, **kw: object) -> tuple[dict[str, object] | None, tuple[str, ...]]:
    fs = authz_for_service(snapshot(ap("p", spec)), WP, "shop", "cart", **kw)  # type: ignore[arg-type]
    cfg = rbac_configs(fs.http)[0]
    policies = cfg.get("rules", {}).get("policies", {})
    return policies.get("ns[shop]-policy[p]-rule[0]"), fs.problems


LONG_NS = "n" * 120


def test_oversized_regex_in_allow_matches_nothing() -> None:
    policy, problems = gen_policy(f"rules: [{{from: [{{source: {{namespaces: [ok, {LONG_NS}]}}}}]}}, {{}}]")
    assert policy is None  # rule 0 dropped; rule 1 still allows
    assert any("spec.rules[0].from[0].source.namespaces[1]" in p and "RE2 program size" in p
               and "matches nothing" in p for p in problems)


def test_oversized_regex_in_deny_matches_every_request() -> None:
    policy, problems = gen_policy(f"{{action: DENY, rules: [{{from: [{{source: {{namespaces: [ok, {LONG_NS}]}}}}]}}]}}")
    assert policy == {"permissions": [{"any": True}], "principals": [{"any": True}]}
    assert any("matches every request" in p for p in problems)


def test_the_program_size_limit_follows_the_proxy() -> None:
    policy, problems = gen_policy(f"rules: [{{from: [{{source: {{namespaces: [{LONG_NS}]}}}}]}}]",
                                  limits=Limits(max_regex_program_size=1024))
    assert policy is not None and not problems


@pytest.mark.parametrize("spec, loc", [
    ('{when: [{key: "request.headers[x\\ny]", values: [v]}]}', "spec.rules[0].when[0].values[0]"),
    ("{when: [{key: 'request.auth.claims[a][]', values: [v]}]}", "spec.rules[0].when[0].values"),
    ("{to: [{operation: {paths: ['/" + "a/" * 140 + "{**}']}}]}", "spec.rules[0].to[0].operation.paths[0]"),
    ("{to: [{operation: {hosts: ['" + "h" * 1100 + "']}}]}", "spec.rules[0].to[0].operation.hosts[0]"),
    ("{to: [{operation: {methods: [" + ",".join(["M"] * 1025) + "]}}]}", "spec.rules[0].to[0].operation.methods"),
])
@pytest.mark.parametrize("action", ["ALLOW", "DENY", "AUDIT"])
def test_unusable_values_fail_closed(spec: str, loc: str, action: str) -> None:
    policy, problems = gen_policy(f"{{action: {action}, rules: [{spec}]}}")
    if action == "ALLOW":
        assert policy is None
    else:
        assert policy == {"permissions": [{"any": True}], "principals": [{"any": True}]}
    assert any(f"AuthorizationPolicy shop/p: {loc}" in p and "fails closed" in p for p in problems), problems


def test_fail_closed_reports_reach_authz_problems() -> None:
    snap = snapshot(ap("p", f"rules: [{{from: [{{source: {{namespaces: [{LONG_NS}]}}}}]}}]"))
    assert any(p.startswith("AuthorizationPolicy shop/p: spec.rules[0].from[0].source.namespaces[0]")
               for p in authz_problems(snap))


def test_deny_with_several_values_never_narrows() -> None:
    """Istio drops just the bad value (the DENY then misses what it named); here the rule widens."""
    policy, _ = gen_policy(f"{{action: DENY, rules: [{{from: [{{source: {{principals: [a, '*{'x' * 200}']}}}}]}}]}}")
    assert policy == {"permissions": [{"any": True}], "principals": [{"any": True}]}
