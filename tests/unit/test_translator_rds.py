"""Routes over RDS: each HTTP chain names its own RouteConfiguration, and a route edit changes
route configurations only - ``main_internal`` stays the very same object (so the xDS layer neither
re-serialises nor re-sends it, and Envoy drains nothing)."""

from __future__ import annotations

from envoy.config.core.v3 import config_source_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2

from istiod_lite.model import ConfigSnapshot, parse_object
from istiod_lite.model.base import Resource
from istiod_lite.translator.core.output import EnvoyResources
from istiod_lite.translator.waypoint import WaypointTranslator
from tests.support.snapshots import load_resources, replaced, same_output
from tests.unit.test_translator_memo import MESH, REF

ECHO = "inbound-vip|80|http|echo.app.svc.cluster.local"
SIDE = "inbound-vip|80|http|side.app.svc.cluster.local"


def _rds(out: EnvoyResources) -> dict[str, str]:
    """chain name -> the route configuration its connection manager names (HTTP chains)."""
    names = {}
    for fc in out.listeners["main_internal"].filter_chains:
        hcm = hcm_pb2.HttpConnectionManager()
        if fc.filters[-1].typed_config.Unpack(hcm):
            assert hcm.WhichOneof("route_specifier") == "rds"
            cs = hcm.rds.config_source
            assert cs.HasField("ads") and cs.resource_api_version == config_source_pb2.V3
            assert cs.HasField("initial_fetch_timeout") and cs.initial_fetch_timeout.ToNanoseconds() == 0
            names[fc.name] = hcm.rds.route_config_name
    return names


def _bytes(out: EnvoyResources, kind: str) -> dict[str, bytes]:
    return {n: m.SerializeToString(deterministic=True) for n, m in getattr(out, kind).items()}


def _vs(spec_http: list[dict[str, object]], name: str = "echo", host: str = "echo") -> Resource:
    return parse_object({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
                         "metadata": {"name": name, "namespace": "app"},
                         "spec": {"hosts": [host], "http": spec_http}})


def test_each_http_chain_names_its_own_route_configuration() -> None:
    out = WaypointTranslator(REF).translate(ConfigSnapshot.build(load_resources(MESH), 1))
    names = _rds(out)
    assert names == {ECHO: ECHO, SIDE: SIDE, "direct-http": "direct-http"}
    assert set(out.routes) == set(names.values())


def test_route_edit_keeps_main_internal_and_changes_one_route_configuration() -> None:
    base = load_resources(MESH)
    s1 = ConfigSnapshot.build(base, 1)
    t = WaypointTranslator(REF)
    out1 = t.translate(s1)
    routes1, clusters1 = _bytes(out1, "routes"), _bytes(out1, "clusters")
    edited = _vs([{"match": [{"uri": {"prefix": "/api"}}], "timeout": "3s",
                   "route": [{"destination": {"host": "api.backend.svc.cluster.local"}}]},
                  {"route": [{"destination": {"host": "side"}}]}])
    s2, _ = replaced(s1, base, edited, 2)
    out2 = t.translate(s2)
    assert t.last_rebuilt == 1
    assert out2.listeners["main_internal"] is out1.listeners["main_internal"]
    routes2 = _bytes(out2, "routes")
    assert {n for n in routes2 if routes2[n] != routes1.get(n)} == {ECHO}
    assert _bytes(out2, "clusters") == clusters1
    assert same_output(out2, WaypointTranslator(REF).translate(s2))


def test_rds_names_follow_services_added_and_removed() -> None:
    base = load_resources(MESH)
    s1 = ConfigSnapshot.build(base, 1)
    t = WaypointTranslator(REF)
    t.translate(s1)
    extra = parse_object({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "more", "namespace": "app"},
                          "spec": {"clusterIP": "127.10.0.3", "ports": [{"name": "http", "port": 8080}]}})
    s2, base2 = replaced(s1, base, extra, 2)
    out2 = t.translate(s2)
    more = "inbound-vip|8080|http|more.app.svc.cluster.local"
    assert _rds(out2)[more] == more and set(out2.routes) == set(_rds(out2).values())
    s3, _ = replaced(s2, base2, extra, 3, delete=True)
    out3 = t.translate(s3)
    assert more not in out3.routes and more not in _rds(out3)
    assert set(out3.routes) == set(_rds(out3).values())
    assert same_output(out3, WaypointTranslator(REF).translate(s3))
