"""MeshConfig ``pathNormalization`` -> the waypoint HCM, with Istio's mapping (listener_builder.go):
NONE -> normalize_path false; BASE/DEFAULT -> normalize_path true; MERGE_SLASHES -> + merge_slashes;
DECODE_AND_MERGE_SLASHES -> + path_with_escaped_slashes_action UNESCAPE_AND_FORWARD."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2

from istiod_lite.model import ConfigSnapshot, parse_object
from istiod_lite.model.meshconfig import (
    MeshConfig,
    MeshConfigInvalid,
    PathNormalizationType,
    ProxyPathNormalization,
    parse_mesh_config,
)
from istiod_lite.translator.core.output import EnvoyResources
from istiod_lite.translator.listeners import inbound
from istiod_lite.translator.shape import hbone
from istiod_lite.translator.waypoint import WaypointTranslator
from istiod_lite.translator.waypoint.assembly import translate_waypoint
from tests.unit.test_translator_memo import MESH, REF

HCM = hcm_pb2.HttpConnectionManager
KEEP, UNESCAPE = HCM.KEEP_UNCHANGED, HCM.UNESCAPE_AND_FORWARD


def _hcm(mode: PathNormalizationType | None = None) -> Any:
    if mode is None:
        return inbound.http_connection_manager(8080, "r", h2=False)
    return inbound.http_connection_manager(8080, "r", h2=False, path_normalization=mode)


@pytest.mark.parametrize(("mode", "normalize", "merge", "escaped"), [
    ("NONE", False, False, KEEP),
    ("BASE", True, False, KEEP),
    ("DEFAULT", True, False, KEEP),
    ("MERGE_SLASHES", True, True, KEEP),
    ("DECODE_AND_MERGE_SLASHES", True, True, UNESCAPE),
])
def test_istio_mapping(mode: PathNormalizationType, normalize: bool, merge: bool, escaped: int) -> None:
    hcm = _hcm(mode)
    assert hcm.HasField("normalize_path")  # explicitly set, also when false (Istio: proto.BoolFalse)
    assert hcm.normalize_path.value is normalize
    assert hcm.merge_slashes is merge
    assert hcm.path_with_escaped_slashes_action == escaped


def test_default_is_byte_identical_to_base() -> None:
    base = _hcm().SerializeToString(deterministic=True)
    assert _hcm("BASE").SerializeToString(deterministic=True) == base
    assert _hcm("DEFAULT").SerializeToString(deterministic=True) == base
    assert _hcm("NONE").SerializeToString(deterministic=True) != base


def test_templates_are_not_shared_between_modes() -> None:
    _hcm("MERGE_SLASHES")
    _hcm("NONE")
    assert not _hcm().merge_slashes
    assert _hcm().normalize_path.value


def test_mesh_config_field() -> None:
    assert MeshConfig().path_normalization.normalization == "DEFAULT"
    mc = parse_mesh_config({"pathNormalization": {"normalization": "DECODE_AND_MERGE_SLASHES"}})
    assert mc.path_normalization == ProxyPathNormalization(normalization="DECODE_AND_MERGE_SLASHES")
    with pytest.raises(MeshConfigInvalid):
        parse_mesh_config({"pathNormalization": {"normalization": "merge_slashes"}})
    # A field this model does not know is stripped with a warning (istiod loads mesh config leniently).
    assert parse_mesh_config({"pathNormalization": {"normalisation": "NONE"}}).unknown_fields == (
        "pathNormalization.normalisation",)


def _hcms(resources: EnvoyResources) -> list[Any]:
    """The HCMs of the service and direct chains (connect_terminate's is HBONE, not this)."""
    out = []
    for lst in (resources.listeners[hbone.MAIN_INTERNAL],):
        for chain in lst.filter_chains:
            for f in chain.filters:
                if f.typed_config.Is(HCM.DESCRIPTOR):
                    h = HCM()
                    f.typed_config.Unpack(h)
                    out.append(h)
    return out


def _bytes(resources: EnvoyResources) -> dict[str, bytes]:
    return {k: v.SerializeToString(deterministic=True) for k, v in resources.listeners.items()
            if k != hbone.CONNECT_TERMINATE}  # translate_waypoint adds it; the translator does not


def test_threaded_through_the_waypoint_translator() -> None:
    snap = ConfigSnapshot.build([parse_object(d) for d in yaml.safe_load_all(MESH)], 1)
    default = translate_waypoint(snap, REF)
    hcms = _hcms(default)
    assert hcms and all(h.normalize_path.value and not h.merge_slashes for h in hcms)
    decode = translate_waypoint(snap, REF, mesh=MeshConfig(
        path_normalization=ProxyPathNormalization(normalization="DECODE_AND_MERGE_SLASHES")))
    hcms = _hcms(decode)
    assert hcms and all(h.merge_slashes and h.path_with_escaped_slashes_action == UNESCAPE for h in hcms)
    none = WaypointTranslator(REF, path_normalization=ProxyPathNormalization(normalization="NONE")).translate(snap)
    assert all(not h.normalize_path.value for h in _hcms(none))
    # BASE is the default: byte-identical to a translator built without the option.
    base = WaypointTranslator(REF, path_normalization=ProxyPathNormalization(normalization="BASE")).translate(snap)
    assert _bytes(base) == _bytes(WaypointTranslator(REF).translate(snap)) == _bytes(default)
    # The memo of a translator built with a mode keeps it on the next snapshot.
    t = WaypointTranslator(REF, path_normalization=ProxyPathNormalization(normalization="MERGE_SLASHES"))
    t.translate(snap)
    again = t.translate(ConfigSnapshot.build([parse_object(d) for d in yaml.safe_load_all(MESH)], 2))
    assert all(h.merge_slashes for h in _hcms(again))
