"""The exportTo/precedence outcomes are recomputed only for the hosts an edit can change.

``export_warnings.rule_outcomes`` runs on every config change (the server's diagnostics); on a
large mesh rebuilding every (waypoint, service) made one VirtualService edit cost tens of
milliseconds of push latency.  These tests count the per-service computations after one edit and
check the result against a snapshot built from scratch.
"""

from __future__ import annotations

from typing import Any

import pytest

from istiod_lite.model import ConfigSnapshot, Resource, ResourceKey, parse_object
from istiod_lite.translator import export_warnings as ew

NAMESPACES = 4
SERVICES = 12


def _mesh(vs_export: dict[int, list[str]] | None = None, dr_export: dict[int, list[str]] | None = None,
          weight: dict[int, int] | None = None) -> list[Resource]:
    """A waypoint per namespace, every service bound to it with a DestinationRule and a VirtualService."""
    docs: list[dict[str, Any]] = []
    for n in range(NAMESPACES):
        ns = f"ns-{n}"
        docs.append({"apiVersion": "v1", "kind": "Namespace",
                     "metadata": {"name": ns, "labels": {"istio.io/use-waypoint": "waypoint"}}})
        docs.append({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
                     "metadata": {"name": "waypoint", "namespace": ns},
                     "spec": {"gatewayClassName": "istio-waypoint",
                              "addresses": [{"type": "IPAddress", "value": f"127.0.1.{n + 1}"}],
                              "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}]}})
    for i in range(SERVICES):
        ns, name = f"ns-{i % NAMESPACES}", f"svc-{i}"
        docs.append({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns},
                     "spec": {"clusterIP": f"127.10.0.{i + 1}", "selector": {"app": name},
                              "ports": [{"name": "http", "port": 8080}]}})
        dr_spec: dict[str, Any] = {"host": name, "subsets": [{"name": "v1", "labels": {"version": "v1"}}]}
        if dr_export and i in dr_export:
            dr_spec["exportTo"] = dr_export[i]
        docs.append({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
                     "metadata": {"name": name, "namespace": ns}, "spec": dr_spec})
        w = (weight or {}).get(i, 90)
        vs_spec: dict[str, Any] = {"hosts": [name], "http": [{"route": [
            {"destination": {"host": name, "subset": "v1"}, "weight": w},
            {"destination": {"host": f"svc-{(i + NAMESPACES) % SERVICES}"}, "weight": 100 - w}]}]}
        if vs_export and i in vs_export:
            vs_spec["exportTo"] = vs_export[i]
        docs.append({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
                     "metadata": {"name": name, "namespace": ns}, "spec": vs_spec})
    # A root-namespace wildcard rule every service's search reaches last.
    docs.append({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
                 "metadata": {"name": "all", "namespace": "istio-system"},
                 "spec": {"host": "*.cluster.local", "exportTo": ["ns-3"]}})
    return [parse_object(d) for d in docs]


def _edit(previous: ConfigSnapshot, resources: list[Resource], key: ResourceKey, revision: int) -> ConfigSnapshot:
    """``previous`` with ``key`` replaced by its object in ``resources`` (as a source publishes it)."""
    new = next(r for r in resources if ResourceKey.of(r) == key)
    kept = [new if ResourceKey.of(r) == key else r for kind in previous.by_kind.values() for r in kind.values()]
    return ConfigSnapshot.build(kept, revision, previous=previous, changed=[key])


class _Counter:
    """Counts the per-service computations of each part (wraps the real functions)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: dict[str, list[str]] = {"dr": [], "vs": []}
        for part, name in (("dr", "_dr_outcomes"), ("vs", "_vs_outcomes")):
            real = getattr(ew, name)

            def counted(snapshot: Any, ref: Any, view: Any, *rest: Any, _real: Any = real, _part: str = part) -> Any:
                self.calls[_part].append(f"{ref} {view.host}")
                return _real(snapshot, ref, view, *rest)

            monkeypatch.setattr(ew, name, counted)

    def reset(self) -> None:
        self.calls = {"dr": [], "vs": []}

    def take(self) -> dict[str, list[str]]:
        """The calls so far (then none)."""
        calls, self.calls = self.calls, {"dr": [], "vs": []}
        return calls


def _fresh(snapshot: ConfigSnapshot) -> tuple[str, ...]:
    again = ConfigSnapshot.build([r for kind in snapshot.by_kind.values() for r in kind.values()], snapshot.revision)
    return tuple(o.message for o in ew.rule_outcomes(again))


def test_one_virtual_service_edit_recomputes_only_its_hosts(monkeypatch: pytest.MonkeyPatch) -> None:
    first = ConfigSnapshot.build(_mesh(vs_export={5: ["."]}), 1)
    counter = _Counter(monkeypatch)
    before = ew.rule_outcomes(first)
    assert len(counter.take()["dr"]) == SERVICES  # every bound, visible service once
    assert before == _fresh_outcomes(first)
    assert any(o.name == "all" and o.reason == ew.NOT_EXPORTED for o in before)
    counter.reset()
    # svc-2's VirtualService (ns-2) gets a new weight: only its own host can change on waypoint ns-2.
    edited = _edit(first, _mesh(vs_export={5: ["."]}, weight={2: 50}), ResourceKey("VirtualService", "ns-2", "svc-2"),
                   2)
    after = ew.rule_outcomes(edited)
    assert counter.take() == {"dr": [], "vs": ["ns-2/waypoint svc-2.ns-2.svc.cluster.local"]}
    assert tuple(o.message for o in after) == _fresh(edited)


def test_export_change_is_reported_and_recomputes_only_its_host(monkeypatch: pytest.MonkeyPatch) -> None:
    first = ConfigSnapshot.build(_mesh(), 1)
    counter = _Counter(monkeypatch)
    ew.rule_outcomes(first)
    counter.reset()
    # svc-1's DestinationRule (ns-1) exported to ns-0 only: waypoint ns-1 no longer sees it.
    edited = _edit(first, _mesh(dr_export={1: ["ns-0"]}), ResourceKey("DestinationRule", "ns-1", "svc-1"), 2)
    after = ew.rule_outcomes(edited)
    assert counter.take() == {"dr": ["ns-1/waypoint svc-1.ns-1.svc.cluster.local"], "vs": []}
    messages = tuple(o.message for o in after)
    assert messages == _fresh(edited)
    assert any("DestinationRule ns-1/svc-1" in m and "not exported to namespace ns-1" in m for m in messages)
    counter.reset()
    # And back: the outcome goes, again recomputing that one host only.
    back = _edit(edited, _mesh(), ResourceKey("DestinationRule", "ns-1", "svc-1"), 3)
    messages = tuple(o.message for o in ew.rule_outcomes(back))
    assert counter.take() == {"dr": ["ns-1/waypoint svc-1.ns-1.svc.cluster.local"], "vs": []}
    assert messages == _fresh(back)
    assert not any("DestinationRule ns-1/svc-1" in m for m in messages)


def test_root_namespace_rule_edit_reaches_every_host(monkeypatch: pytest.MonkeyPatch) -> None:
    first = ConfigSnapshot.build(_mesh(), 1)
    counter = _Counter(monkeypatch)
    ew.rule_outcomes(first)
    counter.reset()
    moved = [r for r in _mesh() if ResourceKey.of(r) != ResourceKey("DestinationRule", "istio-system", "all")]
    moved.append(parse_object({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
                               "metadata": {"name": "all", "namespace": "istio-system"},
                               "spec": {"host": "*.cluster.local", "exportTo": ["ns-2"]}}))
    edited = _edit(first, moved, ResourceKey("DestinationRule", "istio-system", "all"), 2)
    messages = tuple(o.message for o in ew.rule_outcomes(edited))
    calls = counter.take()
    assert len(calls["dr"]) == SERVICES and calls["vs"] == []
    assert messages == _fresh(edited)
    assert any("DestinationRule istio-system/all" in m and "namespace ns-3" in m for m in _fresh(first))


def _fresh_outcomes(snapshot: ConfigSnapshot) -> tuple[ew.RuleOutcome, ...]:
    again = ConfigSnapshot.build([r for kind in snapshot.by_kind.values() for r in kind.values()], snapshot.revision)
    return ew.rule_outcomes(again)
