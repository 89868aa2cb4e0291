"""DestinationRule resolution for waypoints (``policy_select``): Istio's search order, host
specificity, exportTo and merging, the corners the golden cases do not show, and the memo: a
DestinationRule edit rebuilds only the services whose applied rule it is part of."""

from __future__ import annotations

from typing import Any

from istiod_lite.model import ConfigSnapshot, parse_object
from istiod_lite.model.base import Resource
from istiod_lite.model.meshconfig import MeshConfig
from istiod_lite.translator.binding.waypoints import WaypointRef
from istiod_lite.translator.clusters.policy_select import resolve_destination_rule
from istiod_lite.translator.diagnostics import diagnose
from istiod_lite.translator.waypoint import WaypointTranslator
from tests.support.snapshots import load_resources, replaced, same_output

HOST = "cart.shop.svc.cluster.local"

BASE = """\
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {istio.io/dataplane-mode: ambient, istio.io/use-waypoint: wp}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: wp, namespace: shop}
spec:
  gatewayClassName: istio-waypoint
  addresses: [{type: IPAddress, value: 127.0.1.50}]
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
---
apiVersion: v1
kind: Service
metadata: {name: cart, namespace: shop}
spec: {clusterIP: 127.10.1.50, selector: {app: cart}, ports: [{name: http, port: 8080}]}
---
apiVersion: v1
kind: Service
metadata: {name: pay, namespace: shop}
spec: {clusterIP: 127.10.1.51, selector: {app: pay}, ports: [{name: http, port: 8080}]}
"""
REF = WaypointRef("shop", "wp")


def _dr(ns: str, name: str, host: str, created: str = "", **spec: Any) -> Resource:
    meta: dict[str, Any] = {"name": name, "namespace": ns}
    if created:
        meta["creationTimestamp"] = created
    return parse_object({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule", "metadata": meta,
                         "spec": {"host": host, **spec}})


def _snap(*drs: Resource) -> ConfigSnapshot:
    return ConfigSnapshot.build([*load_resources(BASE), *drs], 1)


def _applied(snap: ConfigSnapshot, proxy_ns: str, mesh: MeshConfig | None = None) -> list[str]:
    r = resolve_destination_rule(snap, proxy_ns, "shop", HOST, mesh)
    return [f"{d.namespace}/{d.name}" for d in r.sources]


def test_a_selector_rule_in_the_proxy_namespace_hides_the_others() -> None:
    """The first namespace with a host match decides; a selector-scoped rule never applies to
    waypoint clusters, so nothing applies (Istio does not fall through to the next namespace)."""
    snap = _snap(_dr("infra", "selected", HOST, workloadSelector={"matchLabels": {"app": "x"}}),
                 _dr("shop", "cart", "cart"))
    assert _applied(snap, "infra") == []
    assert _applied(snap, "other") == ["shop/cart"]


def test_a_more_specific_unexported_rule_hides_a_less_specific_exported_one() -> None:
    snap = _snap(_dr("shop", "exact", "cart", exportTo=["other"]),
                 _dr("shop", "wild", "*.shop.svc.cluster.local"),
                 _dr("istio-system", "root", "*.local"))
    assert _applied(snap, "other") == ["shop/exact"]
    assert _applied(snap, "infra") == ["istio-system/root"]  # shop's wildcard is never considered
    assert _applied(snap, "shop") == ["shop/wild"]  # exact is not exported to its own namespace
    messages = diagnose(snap).routes
    # The waypoint runs in shop: wild applies there, exact is reported as not exported to shop.
    assert not any(m.startswith("DestinationRule shop/wild") for m in messages), messages
    assert any(m.startswith("DestinationRule shop/exact") and "is not exported to namespace shop" in m
               for m in messages), messages


def test_a_waypoint_in_the_root_namespace_sees_its_private_rules_first_and_public_ones_last() -> None:
    snap = _snap(_dr("istio-system", "private", "*.local", exportTo=["."]),
                 _dr("istio-system", "public", HOST),
                 _dr("shop", "cart", "cart"))
    assert _applied(snap, "istio-system") == ["istio-system/private"]
    snap2 = _snap(_dr("istio-system", "public", HOST), _dr("shop", "cart", "cart"))
    assert _applied(snap2, "istio-system") == ["shop/cart"]  # the service's namespace before the root's


def test_a_strict_superset_exportto_merges_into_the_older_rule_and_keeps_its_exportto() -> None:
    """As istiod's ``mergeDestinationRule`` does: the newer rule (exportTo [infra, other]) is merged
    into the older (exportTo [infra]) and, both being without a selector, not kept as an entry of
    its own; the merged entry keeps the older exportTo, so a proxy in "other" sees neither."""
    snap = _snap(_dr("shop", "a", "cart", "2024-01-01T00:00:00Z", exportTo=["infra"],
                     subsets=[{"name": "v1", "labels": {"v": "1"}}]),
                 _dr("shop", "b", "cart", "2024-01-02T00:00:00Z", exportTo=["infra", "other"],
                     subsets=[{"name": "v2", "labels": {"v": "2"}}]))
    r = resolve_destination_rule(snap, "infra", "shop", HOST)
    assert [[d.name for d in e.sources] for e in r.found] == [["a", "b"]]
    assert r.rule is not None and [s.name for s in r.rule.spec.subsets] == ["v1", "v2"]
    assert _applied(snap, "other") == []


def test_mesh_root_namespace_and_default_export() -> None:
    mesh = MeshConfig.model_validate({"rootNamespace": "mesh-root", "defaultDestinationRuleExportTo": ["."]})
    snap = _snap(_dr("shop", "cart", "cart"), _dr("mesh-root", "all", "*.local", exportTo=["*"]),
                 _dr("istio-system", "not-root", "*.local"))
    assert _applied(snap, "infra", mesh) == ["mesh-root/all"]
    assert _applied(snap, "shop", mesh) == ["shop/cart"]
    assert _applied(snap, "infra") == ["shop/cart"]  # default mesh: exported everywhere


def test_merged_rule_memo_rebuilds_only_the_services_it_touches() -> None:
    """A merged rule is a new object whenever any DestinationRule changes; the fragment memo keys
    on the rules it is made of, so an unrelated edit rebuilds nothing and an edit to a root
    wildcard rebuilds only the services it applies to."""
    base = [*load_resources(BASE),
            _dr("shop", "cart-a", "cart", "2024-01-01T00:00:00Z", subsets=[{"name": "v1", "labels": {"v": "1"}}]),
            _dr("shop", "cart-b", "cart", "2024-01-02T00:00:00Z", subsets=[{"name": "v2", "labels": {"v": "2"}}]),
            _dr("istio-system", "root", "*.local", trafficPolicy={"loadBalancer": {"simple": "RANDOM"}})]
    s1 = ConfigSnapshot.build(base, 1)
    t = WaypointTranslator(REF)
    out1 = t.translate(s1)
    assert "inbound-vip|8080|http/v2|cart.shop.svc.cluster.local" in out1.clusters
    assert out1.clusters["inbound-vip|8080|http|pay.shop.svc.cluster.local"].lb_policy == 3  # RANDOM

    s2, base2 = replaced(s1, base, _dr("elsewhere", "x", "other.example.com"), 2)
    out2 = t.translate(s2)
    assert t.last_rebuilt == 0 and same_output(out2, out1)

    s3, _ = replaced(s2, base2, _dr("istio-system", "root", "*.local",
                                    trafficPolicy={"loadBalancer": {"simple": "LEAST_REQUEST"}}), 3)
    out3 = t.translate(s3)
    assert t.last_rebuilt == 1  # pay only: cart's rules come from shop
    assert out3.clusters["inbound-vip|8080|http|pay.shop.svc.cluster.local"].lb_policy == 1  # LEAST_REQUEST
    assert same_output(out3, WaypointTranslator(REF).translate(s3))


def test_service_not_exported_to_the_waypoint_gets_no_rule_and_is_reported() -> None:
    svc = parse_object({"apiVersion": "v1", "kind": "Service",
                        "metadata": {"name": "cart", "namespace": "shop",
                                     "annotations": {"networking.istio.io/exportTo": "~"}},
                        "spec": {"clusterIP": "127.10.1.50", "selector": {"app": "cart"},
                                 "ports": [{"name": "http", "port": 8080}]}})
    base = [r for r in load_resources(BASE) if getattr(r, "name", "") != "cart"]
    snap = ConfigSnapshot.build([*base, svc, _dr("shop", "cart", "cart",
                                                 trafficPolicy={"loadBalancer": {"simple": "RANDOM"}})], 1)
    out = WaypointTranslator(REF).translate(snap)
    cluster = out.clusters["inbound-vip|8080|http|cart.shop.svc.cluster.local"]
    assert cluster.lb_policy != 3  # served, but without the rule
    routes = diagnose(snap).routes
    assert any("Service shop/cart" in m and "not exported to namespace shop" in m for m in routes), routes
