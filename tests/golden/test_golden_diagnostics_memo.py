"""The golden cases' diagnostics through the incremental path: memoised and fresh agree.

``export_warnings.rule_outcomes`` keeps each (waypoint, host)'s outcomes from one snapshot to the
next and re-uses them while the objects they were computed from are the same.  Here each golden
case goes through a history of edits as a source publishes them (``sources.Publisher``: unchanged
objects keep their identity, unchanged kinds keep their mapping):

1. the case itself,
2. the case with each resource left out in turn (each step puts the previous one back),
3. each DestinationRule, VirtualService, Service and ServiceEntry edited in turn (exportTo made
   private; a DestinationRule's and a VirtualService's host made a namespace wildcard), then put back,
4. the case itself again,

and at every step the outcomes (every field, in order) and the whole ``diagnose`` output must equal
those of the same objects in a snapshot built from scratch (no memo).  test_golden.py checks that
the fresh messages are the expected ones.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from istiod_lite.model import ConfigSnapshot, Resource, ResourceKey
from istiod_lite.model.meshconfig import MeshConfig, load_mesh_config
from istiod_lite.sources import DirectorySource, Publisher
from istiod_lite.translator.core.visibility import SERVICE_EXPORT_TO_ANNOTATION
from istiod_lite.translator.diagnostics import diagnose
from istiod_lite.translator.export_warnings import RuleOutcome, rule_outcomes

HERE = Path(__file__).resolve().parent
CASES = sorted(p.name for p in HERE.iterdir() if (p / "input").is_dir())


def _fields(o: RuleOutcome) -> tuple[object, ...]:
    """Every field of an outcome, objects by what names them (merged copies are new objects)."""
    winner = (o.winner.namespace, o.winner.name, o.winner.spec) if o.winner is not None else None
    drop = (o.drop.message, o.drop.rule.namespace, o.drop.rule.name) if o.drop is not None else None
    return (o.kind, o.namespace, o.name, o.waypoint, o.host, o.reason, o.rule_host, o.export, winner,
            o.winner_host, o.step, o.hider, o.target, drop, o.message)


def _edits(res: Resource) -> Iterator[Resource]:
    """Edited copies of ``res`` that change what the exportTo/precedence outcomes read."""
    wildcard = f"*.{res.namespace}.svc.cluster.local"
    if res.kind in ("DestinationRule", "VirtualService", "ServiceEntry"):
        spec = res.spec  # type: ignore[attr-defined]
        yield res.model_copy(update={"spec": spec.model_copy(update={"export_to": (".",)})})
        if res.kind == "DestinationRule":
            yield res.model_copy(update={"spec": spec.model_copy(update={"host": wildcard})})
        if res.kind == "VirtualService":
            yield res.model_copy(update={"spec": spec.model_copy(update={"hosts": (wildcard,)})})
    elif res.kind == "Service":
        meta = res.metadata
        annotations = {**meta.annotations, SERVICE_EXPORT_TO_ANNOTATION: "."}
        yield res.model_copy(update={"metadata": meta.model_copy(update={"annotations": annotations})})


def _history(resources: dict[ResourceKey, Resource]) -> Iterator[ConfigSnapshot]:
    publisher = Publisher(logging.getLogger(__name__), None)
    yield publisher.publish(dict(resources), ()).snapshot
    for key in resources:
        yield publisher.publish({k: r for k, r in resources.items() if k != key}, ()).snapshot
    for key, res in resources.items():
        for edited in _edits(res):
            yield publisher.publish({**resources, key: edited}, ()).snapshot
    yield publisher.publish(dict(resources), ()).snapshot


def _fresh(snapshot: ConfigSnapshot) -> ConfigSnapshot:
    """The same objects in a snapshot without any memo."""
    return ConfigSnapshot.build([r for k in snapshot.keys() if (r := snapshot.get_key(k)) is not None],  # noqa: SIM118
                                snapshot.revision)


@pytest.mark.parametrize("case", CASES)
def test_memoised_diagnostics_match_fresh(case: str) -> None:
    update = DirectorySource(HERE / case / "input").load()
    assert not update.errors, [str(e) for e in update.errors]
    mesh_file = HERE / case / "mesh.yaml"
    mesh: MeshConfig | None = load_mesh_config(mesh_file) if mesh_file.exists() else None
    resources = {k: r for k in update.snapshot.keys() if (r := update.snapshot.get_key(k)) is not None}  # noqa: SIM118
    for step, snapshot in enumerate(_history(resources)):
        fresh = _fresh(snapshot)
        got = [_fields(o) for o in rule_outcomes(snapshot, mesh)]
        assert got == [_fields(o) for o in rule_outcomes(fresh, mesh)], f"{case} step {step}: memo differs from fresh"
        assert diagnose(snapshot, mesh) == diagnose(fresh, mesh), f"{case} step {step}: diagnostics differ"
