"""Every registered kind is declared once and appears everywhere that declaration is used.

A kind missing from the cluster watch list is never read from a cluster; missing from the
ClusterRole, the control plane never becomes ready in one; missing from AFFECTS, its changes are
assumed to alter everything; read by waypoints but missing from their read set, it serves stale
config (the whole-waypoint shortcut skips translation).  Each of those is derived from the
declarations, and this checks the derived places, deploy/ included, against them.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from istiod_lite.controlplane.affects import AFFECTS
from istiod_lite.model import known_kinds
from istiod_lite.model.kind_declaration import KindDeclaration, StatusWriter, WaypointRead
from istiod_lite.model.registry import declared_kinds
from istiod_lite.sources.kube import KINDS
from istiod_lite.translator.binding.waypoints import BINDING_KINDS
from istiod_lite.translator.waypoint.translator import _READ_KINDS
from tests.support.fakekube import RESOURCES

ROOT = Path(__file__).resolve().parents[2]
DECLARED = {d.kind: d for d in declared_kinds()}


def _gen_rbac() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_rbac", ROOT / "scripts" / "gen_rbac.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _granted() -> set[tuple[str, str]]:
    """(verb, ``plural.group``) of every rule in deploy/rbac.yaml's ClusterRole."""
    docs = [d for d in yaml.safe_load_all((ROOT / "deploy" / "rbac.yaml").read_text()) if d]
    (role,) = [d for d in docs if d["kind"] == "ClusterRole"]
    out: set[tuple[str, str]] = set()
    for rule in role["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                out |= {(verb, f"{resource}.{group}" if group else resource) for verb in rule["verbs"]}
    return out


def _crd_names() -> set[str]:
    docs: list[dict[str, Any]] = []
    for path in sorted((ROOT / "deploy").glob("crds-*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return {d["metadata"]["name"] for d in docs if d["kind"] == "CustomResourceDefinition"}


def test_every_registered_kind_is_declared() -> None:
    assert set(DECLARED) == set(known_kinds())


@pytest.mark.parametrize("kind", sorted(known_kinds()))
def test_kind_is_everywhere_its_declaration_says(kind: str) -> None:
    d = DECLARED[kind]
    decl = d.declaration
    # the cluster watch list, at the declared path
    (watched,) = [k for k in KINDS if k.kind == kind]
    assert (watched.group, watched.version, watched.plural, watched.namespaced) == (
        d.group, d.version, decl.plural, d.namespaced)
    assert watched.optional == decl.crd
    assert watched.reports_rejections == (decl.status is StatusWriter.REJECTIONS)
    # RBAC: list + watch, and patch on the status subresource iff something writes it
    granted = _granted()
    assert {("list", d.resource_name), ("watch", d.resource_name)} <= granted, f"{kind}: deploy/rbac.yaml"
    status = (f"{decl.plural}/status.{d.group}" if d.group else f"{decl.plural}/status")
    writes_status = decl.status is not StatusWriter.NONE or decl.ambient_status
    assert (("patch", status) in granted) == writes_status, f"{kind}: status RBAC"
    # a CRD in deploy/ for every CRD-defined kind (and none for built-in kinds)
    assert (d.resource_name in _crd_names()) == decl.crd, f"{kind}: deploy/crds-*.yaml"
    # what a change affects
    assert AFFECTS[kind] == decl.affects
    # the waypoint's read set: whole kinds are compared by the shortcut, every other kind says why not
    assert (kind in _READ_KINDS) == (decl.waypoint is WaypointRead.WHOLE), f"{kind}: waypoint read set"
    if decl.waypoint is WaypointRead.BOUND:  # read through the bindings: they must be recomputed when it changes
        assert kind in BINDING_KINDS, f"{kind}: translator/binding/waypoints.py BINDING_KINDS"
    # the fake API server plays the cluster in tests: it must serve the kind too
    assert any((r.group, r.version, r.plural, r.kind) == (d.group, d.version, decl.plural, kind)
               for r in RESOURCES), f"{kind}: tests/support/fakekube.py RESOURCES"


def test_derived_lists_hold_nothing_else() -> None:
    assert {k.kind for k in KINDS} == set(DECLARED)
    assert set(AFFECTS) == set(DECLARED)
    assert set(_READ_KINDS) <= set(DECLARED)


def test_rbac_manifest_is_current() -> None:
    """deploy/rbac.yaml is what scripts/gen_rbac.py writes (run it after declaring a kind)."""
    assert _gen_rbac().main(["--check"]) == 0


def test_declarations_reject_what_no_one_can_use() -> None:
    with pytest.raises(ValueError, match="unknown xDS types"):
        KindDeclaration("things", frozenset({"SDS"}), WaypointRead.NONE)
    with pytest.raises(ValueError, match="lowercase"):
        KindDeclaration("Things", frozenset(), WaypointRead.NONE)
