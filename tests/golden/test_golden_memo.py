"""The golden cases through the memoised path: memo on and memo off give the same bytes.

The server keeps one ``WaypointTranslator`` (and one ``TelemetryMemo``) per waypoint and feeds it
snapshot after snapshot; both skip work when their inputs are the very same objects as last time.
Here each waypoint of each golden case is first translated by such a long-lived translator
through a history of edits, as a source publishes them (``sources.Publisher``: unchanged objects
keep their identity, unchanged kinds keep their mapping):

1. every object replaced by an equal copy (nothing identical to what follows),
2. the case itself,
3. the case with each resource left out in turn (each step puts the previous one back),
4. the case itself again,

and at every step its output must be byte-identical (``SerializeToString(deterministic=True)``,
names and order included) to a fresh translator's on the same snapshot.  test_golden.py checks
that the fresh output is the expected one.

Kinds declared as not read by ``WaypointTranslator`` (``WaypointRead.NONE`` / ``AFTER``) are
checked too: leaving all of their objects out changes nothing it produces.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from istiod_lite.model import ConfigSnapshot, Resource, ResourceKey
from istiod_lite.model.kind_declaration import WaypointRead
from istiod_lite.model.meshconfig import MeshConfig, load_mesh_config
from istiod_lite.model.registry import declared_kinds
from istiod_lite.sources import DirectorySource, Publisher
from istiod_lite.translator import EnvoyResources, WaypointRef, find_waypoints
from istiod_lite.translator.telemetry import TelemetryMemo, apply_telemetry
from istiod_lite.translator.waypoint import WaypointTranslator

HERE = Path(__file__).resolve().parent
CASES = sorted(p.name for p in HERE.iterdir() if (p / "input").is_dir())
NOT_TRANSLATED = frozenset(d.kind for d in declared_kinds()
                           if d.declaration.waypoint in (WaypointRead.NONE, WaypointRead.AFTER))

Serialised = dict[str, list[tuple[str, bytes]]]


def serialised(res: EnvoyResources) -> Serialised:
    """Every resource's name and deterministic bytes, per type, in output order."""
    return {kind: [(name, msg.SerializeToString(deterministic=True)) for name, msg in getattr(res, kind).items()]
            for kind in ("listeners", "routes", "clusters", "endpoints", "secrets", "extension_configs")}


def _translator(ref: WaypointRef, mesh: MeshConfig | None) -> WaypointTranslator:
    """Configured as ``translate_waypoint`` configures its one-shot translator."""
    return WaypointTranslator(ref, path_normalization=mesh.path_normalization if mesh is not None else None,
                              mesh=mesh)


def _fresh(ref: WaypointRef, snapshot: ConfigSnapshot, mesh: MeshConfig | None) -> EnvoyResources:
    return _translator(ref, mesh).translate(snapshot)


def _history(resources: dict[ResourceKey, Resource]) -> list[ConfigSnapshot]:
    """The snapshots a long-lived translator sees before the case itself (steps 1-4 above)."""
    copies = [r.model_copy(deep=True) for r in resources.values()]
    assert all(c == r and c is not r for c, r in zip(copies, resources.values(), strict=True))
    out = [ConfigSnapshot.build(copies, 1)]
    publisher = Publisher(logging.getLogger(__name__), None)
    out.append(publisher.publish(dict(resources), ()).snapshot)
    for key in resources:
        out.append(publisher.publish({k: r for k, r in resources.items() if k != key}, ()).snapshot)
    out.append(publisher.publish(dict(resources), ()).snapshot)
    return out


@pytest.mark.parametrize("case", CASES)
def test_memoised_translation_matches_fresh(case: str) -> None:
    update = DirectorySource(HERE / case / "input").load()
    assert not update.errors, [str(e) for e in update.errors]
    mesh_file = HERE / case / "mesh.yaml"
    mesh = load_mesh_config(mesh_file) if mesh_file.exists() else None
    resources = {k: r for k in update.snapshot.keys() if (r := update.snapshot.get_key(k)) is not None}  # noqa: SIM118
    history = _history(resources)
    refs = [w.ref for w in find_waypoints(update.snapshot)]
    assert refs, f"{case}: no waypoint"
    for ref in refs:
        memo, logs = _translator(ref, mesh), TelemetryMemo(ref)
        for step, snapshot in enumerate(history):
            fresh = _fresh(ref, snapshot, mesh)
            got = memo.translate(snapshot)
            assert serialised(got) == serialised(fresh), f"{case} {ref} step {step}: memo differs from fresh"
            assert serialised(logs.apply(got, snapshot, mesh)) == serialised(
                apply_telemetry(fresh, snapshot, mesh, ref)), f"{case} {ref} step {step}: telemetry memo differs"


def test_kinds_declared_unread_do_not_change_the_translation() -> None:
    checked = 0
    for case in CASES:
        snapshot = DirectorySource(HERE / case / "input").load().snapshot
        if not any(k.kind in NOT_TRANSLATED for k in snapshot.keys()):  # noqa: SIM118 (not a dict)
            continue
        without = ConfigSnapshot.build(r for k in snapshot.keys() if k.kind not in NOT_TRANSLATED  # noqa: SIM118
                                       if (r := snapshot.get_key(k)) is not None)
        mesh_file = HERE / case / "mesh.yaml"
        mesh = load_mesh_config(mesh_file) if mesh_file.exists() else None
        for w in find_waypoints(snapshot):
            assert serialised(_fresh(w.ref, without, mesh)) == serialised(_fresh(w.ref, snapshot, mesh)), (
                f"{case} {w.ref}: a kind declared not read by WaypointTranslator changed its output")
            checked += 1
    assert checked, "no golden case has objects of a kind WaypointTranslator does not read"
