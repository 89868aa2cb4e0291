"""Proxy kinds (``controlplane/proxykinds``): how nodes are grouped, what each group is served, that
groups and their state go when unused, and that a kind can be added without touching the core."""

from __future__ import annotations

import asyncio
import tempfile
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc
from envoy.service.discovery.v3 import discovery_pb2 as d
from google.protobuf import struct_pb2, wrappers_pb2

from istiod_lite.controlplane.proxykinds import (
    PROXY_KINDS,
    Generator,
    KindContext,
    ProxyKind,
    ProxyKindTable,
    ProxylessClients,
    UnrecognisedProxies,
    WaypointGenerator,
    WaypointKind,
    WaypointProxies,
)
from istiod_lite.controlplane.snapshots import to_resource_snapshot
from istiod_lite.model import ConfigSnapshot
from istiod_lite.model.core import Service
from istiod_lite.model.meshconfig import load_mesh_config
from istiod_lite.sources import DirectorySource
from istiod_lite.translator import EnvoyResources, WaypointAssembly, find_waypoints, proxy_locality_of
from istiod_lite.translator.binding.waypoints import WaypointRef
from istiod_lite.translator.core import output
from istiod_lite.xds import typeurls
from istiod_lite.xds.cache import SnapshotCache
from istiod_lite.xds.resources import EMPTY, ResourceSnapshot, VersionedResource
from tests.support.controlplane import control_plane
from tests.support.meshyaml import APP_WAYPOINT, documents, service

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
REF = WaypointRef("app", "waypoint")


def node(node_id: str = "", *, labels: dict[str, str] | None = None, user_agent: str = "",
         **metadata: str) -> base_pb2.Node:
    n = base_pb2.Node(id=node_id, user_agent_name=user_agent)
    for k, v in metadata.items():
        n.metadata.fields[k].string_value = v
    if labels is not None:
        n.metadata.fields["LABELS"].struct_value.CopyFrom(struct_pb2.Struct(fields={
            k: struct_pb2.Value(string_value=v) for k, v in labels.items()}))
    return n


GW = {"gateway.networking.k8s.io/gateway-name": "waypoint"}


# -- grouping --------------------------------------------------------------------------------------
@pytest.fixture
def table() -> ProxyKindTable:
    return ProxyKindTable(PROXY_KINDS, KindContext())


def test_waypoint_group_from_metadata(table: ProxyKindTable) -> None:
    group = table.group_of(node("router~10.1.2.3~w.app~app.svc.cluster.local", labels=GW, NAMESPACE="app",
                                INSTANCE_IPS="10.9.9.9,fd00::1"))
    assert group == WaypointProxies(REF, "10.9.9.9")
    assert str(group) == "waypoint/app/waypoint/10.9.9.9"  # the name /debug/syncz shows


def test_waypoint_namespace_and_address_from_node_id(table: ProxyKindTable) -> None:
    assert table.group_of(node("router~10.1.2.3~w.app~app.svc.cluster.local", labels=GW)) == WaypointProxies(
        REF, "10.1.2.3")
    assert table.group_of(node("w", labels=GW, NAMESPACE="app")) == WaypointProxies(REF, "0.0.0.0")


def test_waypoint_label_without_namespace_is_not_a_waypoint(table: ProxyKindTable) -> None:
    assert table.group_of(node("w", labels=GW)) == UnrecognisedProxies()


def test_proxyless_and_unrecognised(table: ProxyKindTable) -> None:
    assert table.group_of(node("c", user_agent="gRPC Python")) == ProxylessClients()
    assert table.group_of(node("c", GENERATOR="grpc")) == ProxylessClients()
    assert str(ProxylessClients()) == "proxyless"
    assert table.group_of(node("sidecar~1.2.3.4~x.ns~ns.svc.cluster.local")) == UnrecognisedProxies()
    assert str(UnrecognisedProxies()) == "unknown"


def test_first_kind_wins(table: ProxyKindTable) -> None:
    """A waypoint that also says gRPC is a waypoint: waypoints come first in ``PROXY_KINDS``."""
    assert isinstance(table.group_of(node("w", labels=GW, NAMESPACE="app", GENERATOR="grpc")), WaypointProxies)


def test_table_needs_a_catch_all_and_distinct_kinds() -> None:
    with pytest.raises(ValueError, match="last proxy kind"):
        ProxyKindTable([WaypointKind()], KindContext())
    with pytest.raises(ValueError, match="already registered"):
        ProxyKindTable([WaypointKind(), *PROXY_KINDS], KindContext())


def test_translator_type_urls_are_the_xds_layers() -> None:
    """The translator derives type URLs from descriptors (it may not import xds): they must agree."""
    assert output.ENVOY_TYPES == (typeurls.LISTENER, typeurls.ROUTE, typeurls.CLUSTER, typeurls.ENDPOINT,
                                  typeurls.SECRET, typeurls.EXTENSION_CONFIG)
    assert list(EnvoyResources().by_type) == list(output.ENVOY_TYPES)


# -- the waypoint kind serves exactly what the assembly says ---------------------------------------
@pytest.mark.parametrize("case", sorted(p.name for p in GOLDEN.iterdir() if (p / "input").is_dir()))
def test_waypoint_group_is_the_assembly_of_its_proxy(case: str) -> None:
    """What the server serves a proxy equals ``WaypointAssembly.proxy_resources`` (what golden files hold)."""
    snapshot = DirectorySource(GOLDEN / case / "input").load().snapshot
    mesh_file = GOLDEN / case / "mesh.yaml"
    mesh = load_mesh_config(mesh_file) if mesh_file.exists() else None
    gen = WaypointKind().generator(KindContext(mesh=mesh))
    gen.update(snapshot)
    for w in find_waypoints(snapshot):
        address = WaypointAssembly(w.ref).default_address(snapshot)
        # located as the generator locates it: the pod at its address and that pod's node
        assembly = WaypointAssembly(w.ref, mesh=mesh, proxy=proxy_locality_of(snapshot, w.ref, address, mesh))
        served = gen.snapshot(WaypointProxies(w.ref, address))
        assert served.types == to_resource_snapshot(assembly.proxy_resources(snapshot, address)).types


def _load(yaml_text: str) -> ConfigSnapshot:
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "c.yaml").write_text(yaml_text)
        return DirectorySource(Path(tmp)).load().snapshot


def test_waypoint_state_is_pruned() -> None:
    """A waypoint's translation and its groups' ``connect_terminate`` go when it leaves the config;
    a group's when no proxy of it is connected any more."""
    gen = WaypointKind().generator(KindContext())
    assert isinstance(gen, WaypointGenerator)
    with_wp = _load(APP_WAYPOINT + service("app", "cart", "10.96.0.1", [("http", 80, 8080)]))
    a, b = WaypointProxies(REF, "10.0.0.1"), WaypointProxies(REF, "10.0.0.2")
    gen.update(with_wp)
    assert gen.snapshot(a) is not EMPTY and gen.snapshot(b) is not EMPTY
    assert gen.held_groups == {a, b} and set(gen.shared) == {REF}
    gen.release(b)
    assert gen.held_groups == {a}
    gen.update(_load(service("app", "cart", "10.96.0.1", [("http", 80, 8080)])))
    assert gen.shared == {} and gen.held_groups == set()
    assert gen.snapshot(a) is EMPTY  # still connected: served nothing, never an error


def test_unwatched_groups_are_dropped() -> None:
    table = ProxyKindTable(PROXY_KINDS, KindContext())
    cache = SnapshotCache(table.group_of, on_demand=lambda g: table.on_demand(cache, g))
    gen = table.generator("waypoint")
    assert isinstance(gen, WaypointGenerator)
    table.update(_load(APP_WAYPOINT))
    group, ev = WaypointProxies(REF, "10.0.0.1"), asyncio.Event()
    cache.watch(group, ev)
    cache.watch(ProxylessClients(), ev)
    assert cache.get(group) is not None and cache.get(ProxylessClients()) is not None
    cache.unwatch(group, ev)
    table.publish(cache)
    assert cache.groups() == [ProxylessClients()] and gen.held_groups == set()


# -- adding a kind ---------------------------------------------------------------------------------
#: A made-up resource type: not Envoy's, unknown to the xDS layer.
BEACON = "type.googleapis.com/example.test.v1.Beacon"


@dataclass(frozen=True)
class BeaconGroup:
    namespace: str


class BeaconGenerator(Generator[BeaconGroup]):
    """One resource per Service of the group's namespace: its cluster IP."""

    def __init__(self) -> None:
        self.config = ConfigSnapshot()

    def update(self, config: ConfigSnapshot) -> None:
        self.config = config

    def snapshot(self, group: BeaconGroup) -> ResourceSnapshot:
        return ResourceSnapshot.build({BEACON: [
            VersionedResource.from_message(s.name, BEACON, wrappers_pb2.StringValue(value=s.spec.cluster_ip or ""))
            for s in self.config.of_kind(Service) if s.namespace == group.namespace]})


class BeaconKind(ProxyKind[BeaconGroup]):
    name = "beacon"
    group_type = BeaconGroup
    reads = frozenset({"Service"})

    def recognise(self, node: base_pb2.Node) -> BeaconGroup | None:
        ns = node.metadata.fields.get("BEACON_NAMESPACE")
        return BeaconGroup(ns.string_value) if ns is not None else None

    def generator(self, context: KindContext) -> BeaconGenerator:
        return BeaconGenerator()


async def test_an_added_kind_is_served_over_ads(tmp_path: Path) -> None:
    cfg = tmp_path / "cfg"
    cfg.mkdir()
    (cfg / "svc.yaml").write_text(documents(service("app", "cart", "10.96.0.1", [("http", 80, 8080)]),
                                            service("other", "cart", "10.96.0.9", [("http", 80, 8080)])))
    async with control_plane(cfg, proxy_kinds=(BeaconKind(), *PROXY_KINDS)) as cp:
        beacon = base_pb2.Node(id="beacon-1")
        beacon.metadata.fields["BEACON_NAMESPACE"].string_value = "app"
        async with grpc.aio.insecure_channel(f"127.0.0.1:{cp.grpc_port}") as channel:
            call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources()
            await call.write(d.DiscoveryRequest(node=beacon, type_url=BEACON, resource_names=["cart"]))
            first: d.DiscoveryResponse = await asyncio.wait_for(call.read(), 10)
            assert first.type_url == BEACON and [r.type_url for r in first.resources] == [BEACON]
            assert wrappers_pb2.StringValue.FromString(first.resources[0].value).value == "10.96.0.1"
            assert [str(c.group) for c in cp.ads.connections.values()] == ["BeaconGroup(namespace='app')"]

            await call.write(d.DiscoveryRequest(type_url=BEACON, resource_names=["cart"],
                                                version_info=first.version_info, response_nonce=first.nonce))
            (cfg / "svc.yaml").write_text(service("app", "cart", "10.96.0.2", [("http", 80, 8080)]))
            update: d.DiscoveryResponse = await asyncio.wait_for(call.read(), 10)
            assert wrappers_pb2.StringValue.FromString(update.resources[0].value).value == "10.96.0.2"
            call.cancel()
        assert typeurls.short(BEACON) == "Beacon"  # the xDS layer never needed to know the type
