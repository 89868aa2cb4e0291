"""The change-scope table: every registered kind is declared, and reasons follow istiod."""

from __future__ import annotations

from istiod_lite.controlplane.affects import AFFECTS, ALL, affected_types, push_reason
from istiod_lite.model import ResourceKey, known_kinds


def test_every_kind_is_declared() -> None:
    assert set(known_kinds()) <= set(AFFECTS), set(known_kinds()) - set(AFFECTS)


def test_reasons() -> None:
    pod = ResourceKey("Pod", "ns", "p")
    vs = ResourceKey("VirtualService", "ns", "v")
    sa = ResourceKey("ServiceAccount", "ns", "sa")
    assert push_reason([pod]) == "endpoint"
    assert push_reason([pod, vs]) == "config"
    assert affected_types([sa]) == frozenset()
    assert affected_types([ResourceKey("SomethingNew", "", "x")]) == ALL
