"""The translator's memo declarations: one typed list, values living exactly as long as their input."""

from __future__ import annotations

import gc
import importlib
import pkgutil

import istiod_lite.translator
from istiod_lite.model import ConfigSnapshot, parse_object
from istiod_lite.model.base import Resource
from istiod_lite.translator.authz import authz_for_service, translator_for
from istiod_lite.translator.authz.matchers import DEFAULT_LIMITS
from istiod_lite.translator.authz.rbac import compile_policy
from istiod_lite.translator.binding.waypoints import WaypointRef, bindings_of
from istiod_lite.translator.core import tables
from istiod_lite.translator.core.index import index_of, service_entries_by_host
from istiod_lite.translator.core.memo import Derived, PerObject, Unbound
from tests.support.snapshots import replaced

WP = WaypointRef("shop", "waypoint")


def pod(name: str, app: str) -> Resource:
    return parse_object({"apiVersion": "v1", "kind": "Pod",
                         "metadata": {"name": name, "namespace": "shop", "labels": {"app": app}},
                         "status": {"podIP": "10.0.0.1"}})


def vs(name: str, host: str) -> Resource:
    return parse_object({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
                         "metadata": {"name": name, "namespace": "shop"},
                         "spec": {"hosts": [host], "http": [{"route": [{"destination": {"host": host}}]}]}})


def policy(name: str, action: str = "DENY") -> Resource:
    return parse_object({"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
                         "metadata": {"name": name, "namespace": "shop"},
                         "spec": {"targetRefs": [{"kind": "Service", "group": "", "name": "cart"}],
                                  "action": action, "rules": [{"to": [{"operation": {"paths": ["/x"]}}]}]}})


def test_every_declaration_is_bound_once_under_its_own_name() -> None:
    for mod in pkgutil.walk_packages(istiod_lite.translator.__path__, "istiod_lite.translator."):
        importlib.import_module(mod.name)
    assert tables.ALL and all(isinstance(d, Derived | PerObject) for d in tables.ALL)
    assert [d for d in tables.ALL if not d.bound] == []
    names = [d.name for d in tables.ALL]
    assert len(names) == len(set(names))


def test_an_unbound_declaration_says_so() -> None:
    lonely: Derived[int] = Derived("lonely")
    try:
        lonely.of(ConfigSnapshot.build([]))
    except Unbound as exc:
        assert "lonely" in str(exc)
    else:
        raise AssertionError("expected Unbound")
    lonely.computed_by(len)
    assert lonely.of(ConfigSnapshot.build([pod("a", "x")])) == 1


def test_tables_live_in_the_snapshot_and_pass_on_only_while_their_kinds_are_unchanged() -> None:
    base = [pod("a", "x"), vs("r", "cart")]
    s1 = ConfigSnapshot.build(base, 1)
    idx1, pods1, vs1, b1 = index_of(s1), tables.PODS_BY_LABEL.of(s1), tables.VS_BY_HOST.of(s1), bindings_of(s1)
    assert index_of(s1) is idx1 and s1.derived[tables.SNAPSHOT_INDEX] is idx1
    # A VirtualService edit keeps the pod table (and everything else reading only unchanged kinds)
    # computed by then.
    s2, base2 = replaced(s1, base, vs("r", "other"), 2)
    assert tables.PODS_BY_LABEL.of(s2) is pods1 and bindings_of(s2) is b1
    assert tables.VS_BY_HOST.of(s2) is not vs1 and index_of(s2) is not idx1
    assert index_of(s2).pods_by_label is pods1
    # A pod edit rebuilds the pod table; a snapshot built on its own shares nothing.
    s3, _ = replaced(s2, base2, pod("a", "y"), 3)
    assert tables.PODS_BY_LABEL.of(s3) is not pods1
    fresh = ConfigSnapshot.build(base, 1)
    assert fresh == s1 and not fresh.derived
    assert service_entries_by_host(fresh) is not service_entries_by_host(s1)


def test_a_per_object_value_goes_with_its_object() -> None:
    count: PerObject[Resource, str] = PerObject("test-names")
    count.computed_by(lambda r: r.name)
    obj = pod("a", "x")
    assert count.of(obj) == "a" and count.of(obj) == "a" and len(count) == 1
    del obj
    gc.collect()
    assert len(count) == 0


def test_compiled_policies_are_kept_per_object_and_limits() -> None:
    ap = policy("p")
    one = compile_policy(ap, DEFAULT_LIMITS)  # type: ignore[arg-type]
    assert compile_policy(ap, DEFAULT_LIMITS) is one  # type: ignore[arg-type]
    assert compile_policy(policy("p"), DEFAULT_LIMITS) is not one  # type: ignore[arg-type]
    assert compile_policy(ap, DEFAULT_LIMITS).source is ap  # type: ignore[arg-type]


def test_values_that_keep_their_object_alive_are_bounded() -> None:
    echo: PerObject[Resource, Resource] = PerObject("test-echo", max_entries=3)
    echo.computed_by(lambda r: r)
    objs = [pod(f"p{i}", "x") for i in range(5)]
    assert [echo.of(o) for o in objs] == objs
    assert len(echo) == 3
    del objs
    gc.collect()
    assert len(echo) == 3  # held through their values, but no more than the bound


def test_authz_translators_follow_the_snapshot_lineage() -> None:
    base = [pod("a", "x"), policy("p")]
    s1 = ConfigSnapshot.build(base, 1)
    first = authz_for_service(s1, WP, "shop", "cart")
    assert first.http
    s2, _ = replaced(s1, base, pod("a", "y"), 2)
    assert translator_for(s2) is translator_for(s1)
    assert authz_for_service(s2, WP, "shop", "cart") is first  # an unrelated edit re-uses the chain
    fresh = ConfigSnapshot.build(base, 1)
    assert translator_for(fresh) is not translator_for(s1)
    again = authz_for_service(fresh, WP, "shop", "cart")
    assert again is not first
    assert [f.SerializeToString() for f in again.http] == [f.SerializeToString() for f in first.http]
