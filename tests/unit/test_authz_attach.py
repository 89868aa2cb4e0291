"""Which policies reach which waypoint chain (docs/istio-waypoint-shape.md §5.1), what is
reported instead, and the memo: unchanged inputs give the same result object, an edit rebuilds
only the chains it touches."""

from __future__ import annotations

import yaml

from istiod_lite.model import ConfigSnapshot, ResourceKey, parse_object
from istiod_lite.translator.authz import EMPTY, AuthzTranslator, authz_for_direct, authz_for_service, authz_problems
from istiod_lite.translator.binding.waypoints import WaypointRef
from tests.unit.test_authz_helpers import WP, ap, rbac_configs, snapshot

SE = """\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ext, namespace: shop}
spec: {hosts: [api.example.com], ports: [{number: 443, name: tls, protocol: TLS}], resolution: DNS}
"""


def keys(fs: object) -> list[str]:
    return sorted(k for c in rbac_configs(fs.http) for k in c.get("rules", {}).get("policies", {}))  # type: ignore[attr-defined]


def test_service_target_attaches_to_that_service_only() -> None:
    snap = snapshot(ap("p", "rules: [{}]"))
    assert keys(authz_for_service(snap, WP, "shop", "cart")) == ["ns[shop]-policy[p]-rule[0]"]
    assert authz_for_service(snap, WP, "shop", "other") is EMPTY
    assert authz_for_direct(snap, WP) is EMPTY


def test_service_target_from_another_namespace_does_not_attach() -> None:
    snap = snapshot(ap("p", "rules: [{}]", namespace="elsewhere"))
    assert authz_for_service(snap, WP, "shop", "cart") is EMPTY


def test_service_entry_target() -> None:
    snap = snapshot(SE, ap("p", "rules: [{}]", target="serviceentry:ext"))
    assert keys(authz_for_service(snap, WP, "shop", "ext", kind="ServiceEntry")) == ["ns[shop]-policy[p]-rule[0]"]
    assert authz_for_service(snap, WP, "shop", "ext", kind="Service") is EMPTY


def test_gateway_target_attaches_to_every_chain_of_that_waypoint() -> None:
    snap = snapshot(ap("gw", "rules: [{}]", target="gateway:waypoint"))
    for name in ("cart", "other"):
        assert keys(authz_for_service(snap, WP, "shop", name)) == ["ns[shop]-policy[gw]-rule[0]"]
    assert keys(authz_for_direct(snap, WP)) == ["ns[shop]-policy[gw]-rule[0]"]
    assert authz_for_service(snap, WaypointRef("shop", "other-wp"), "shop", "cart") is EMPTY


def test_gateway_target_needs_the_policy_in_the_waypoint_namespace() -> None:
    snap = snapshot(ap("gw", "rules: [{}]", target="gateway:waypoint", namespace="infra"))
    assert authz_for_direct(snap, WP) is EMPTY
    assert authz_for_direct(snap, WaypointRef("infra", "waypoint")) is not EMPTY


def test_gateway_class_target_only_from_the_root_namespace() -> None:
    root = ap("mesh", "rules: [{}]", target="gatewayclass:istio-waypoint", namespace="istio-system")
    not_root = ap("nr", "rules: [{}]", target="gatewayclass:istio-waypoint")
    wrong_class = ap("wc", "rules: [{}]", target="gatewayclass:other", namespace="istio-system")
    snap = snapshot(root, not_root, wrong_class)
    assert keys(authz_for_service(snap, WP, "shop", "cart")) == ["ns[istio-system]-policy[mesh]-rule[0]"]
    assert keys(authz_for_direct(snap, WaypointRef("x", "y"))) == ["ns[istio-system]-policy[mesh]-rule[0]"]
    assert keys(authz_for_direct(snap, WP, root_namespace="shop")) == ["ns[shop]-policy[nr]-rule[0]"]
    problems = authz_problems(snap)
    assert any("shop/nr" in p and "only from the root namespace" in p for p in problems)
    assert any("istio-system/wc" in p and "is not 'istio-waypoint'" in p for p in problems)


def test_deprecated_single_target_ref() -> None:
    snap = snapshot(ap("old", "{targetRef: {kind: Service, group: '', name: cart}, rules: [{}]}", target=None))
    assert keys(authz_for_service(snap, WP, "shop", "cart")) == ["ns[shop]-policy[old]-rule[0]"]


def test_selector_and_namespace_wide_policies_never_attach_and_are_reported() -> None:
    snap = snapshot(ap("sel", "{selector: {matchLabels: {app: cart}}, rules: [{}]}", target=None),
                    ap("nsw", "rules: [{}]", target=None), ap("root", "{}", target=None, namespace="istio-system"))
    assert authz_for_service(snap, WP, "shop", "cart") is EMPTY
    assert authz_for_direct(snap, WP) is EMPTY
    problems = authz_problems(snap)
    assert any(p.startswith("AuthorizationPolicy shop/sel: selects workloads") for p in problems)
    assert any(p.startswith("AuthorizationPolicy shop/nsw: has no spec.targetRefs") for p in problems)
    assert any(p.startswith("AuthorizationPolicy istio-system/root: has no spec.targetRefs") for p in problems)


def test_dangling_targets_are_reported() -> None:
    snap = snapshot(ap("a", "rules: [{}]", target="service:gone"), ap("b", "rules: [{}]", target="gateway:nope"))
    problems = authz_problems(snap)
    assert "AuthorizationPolicy shop/a: spec.targetRefs[0]: Service shop/gone does not exist" in problems
    assert any("Gateway shop/nope is not a waypoint" in p for p in problems)


def test_service_and_gateway_targets_merge_without_duplicates() -> None:
    both = ap("both", "{targetRefs: [{kind: Service, group: '', name: cart}, {kind: Gateway, group: "
                      "gateway.networking.k8s.io, name: waypoint}], rules: [{}]}", target=None)
    snap = snapshot(both, ap("svc", "rules: [{}]"))
    assert keys(authz_for_service(snap, WP, "shop", "cart")) == ["ns[shop]-policy[both]-rule[0]",
                                                                 "ns[shop]-policy[svc]-rule[0]"]


# --- memo --------------------------------------------------------------------------------------


def _edit(snap: ConfigSnapshot, doc: str) -> ConfigSnapshot:
    res = parse_object(yaml.safe_load(doc))
    resources = {ResourceKey.of(r): r for kind in snap.by_kind.values() for r in kind.values()}
    resources[ResourceKey.of(res)] = res
    return ConfigSnapshot.build(resources.values(), previous=snap, changed=[ResourceKey.of(res)])


def test_memo_returns_the_same_object_until_an_attached_policy_changes() -> None:
    t = AuthzTranslator()
    snap = snapshot(ap("p", "rules: [{}]"), ap("q", "rules: [{}]", target="service:other"))
    cart, other = t.for_service(snap, WP, "shop", "cart"), t.for_service(snap, WP, "shop", "other")
    assert t.for_service(snap, WP, "shop", "cart") is cart
    edited = _edit(snap, ap("q", "rules: [{to: [{operation: {paths: [/x]}}]}]", target="service:other"))
    assert t.for_service(edited, WP, "shop", "cart") is cart
    new_other = t.for_service(edited, WP, "shop", "other")
    assert new_other is not other
    assert keys(new_other) == ["ns[shop]-policy[q]-rule[0]"]
    fresh = AuthzTranslator().for_service(edited, WP, "shop", "other")
    assert [f.SerializeToString(deterministic=True) for f in fresh.http] == [
        f.SerializeToString(deterministic=True) for f in new_other.http]


def test_memo_gateway_policy_edit_rebuilds_every_chain_of_that_waypoint_only() -> None:
    t = AuthzTranslator()
    other_wp = WaypointRef("infra", "waypoint")
    snap = snapshot(ap("gw", "rules: [{}]", target="gateway:waypoint"), ap("p", "rules: [{}]"),
                    ap("igw", "rules: [{}]", target="gateway:waypoint", namespace="infra"))
    before = [t.for_service(snap, WP, "shop", "cart"), t.for_service(snap, WP, "shop", "other"),
              t.for_direct(snap, WP), t.for_direct(snap, other_wp)]
    edited = _edit(snap, ap("gw", "{action: DENY, rules: [{}]}", target="gateway:waypoint"))
    after = [t.for_service(edited, WP, "shop", "cart"), t.for_service(edited, WP, "shop", "other"),
             t.for_direct(edited, WP), t.for_direct(edited, other_wp)]
    assert [a is b for a, b in zip(before, after, strict=True)] == [False, False, False, True]
    assert [f.name for f in after[0].http] == ["envoy.filters.http.rbac"] * 2
