"""Issue 14, finding 2: what unauthenticated clients can make the server keep is bounded by the
streams they hold open.

Each test failed before the fix: groups stayed until the next config push (forever in a quiet
mesh), every invented type URL became a Prometheus label value, a stream could subscribe any number
of types, and an unauthenticated flood was admitted in arrival order ahead of authenticated
reconnects.
"""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import generate_latest

from istiod_lite.controlplane.proxykinds import PROXY_KINDS, KindContext, ProxyKindTable, WaypointProxies
from istiod_lite.xds.admission import LoadAdmission
from istiod_lite.xds.cache import SnapshotCache
from istiod_lite.xds.connection import Connection
from istiod_lite.xds.metrics import XdsMetrics, type_label
from istiod_lite.xds.server import AdsServer, XdsServerOptions
from tests.support.meshyaml import APP_WAYPOINT
from tests.unit.test_proxy_kinds import REF, _load, node


def test_a_group_is_forgotten_when_its_last_stream_leaves() -> None:
    """No config push in between: a client inventing an address per connect leaves nothing behind."""
    table = ProxyKindTable(PROXY_KINDS, KindContext())
    cache = SnapshotCache(table.group_of, on_demand=lambda g: table.on_demand(cache, g), on_release=table.release)
    table.update(_load(APP_WAYPOINT))
    gen = table.generator("waypoint")
    for i in range(200):
        group, ev = WaypointProxies(REF, f"10.1.{i // 250}.{i % 250}"), asyncio.Event()
        cache.watch(group, ev)
        assert cache.get(group) is not None
        cache.unwatch(group, ev)
    assert cache.groups() == [] and gen.held_groups == frozenset()
    # A group with a stream left keeps its snapshot; the next stream of a forgotten group is served again.
    keep, ev = WaypointProxies(REF, "10.0.0.1"), asyncio.Event()
    cache.watch(keep, ev)
    cache.watch(keep, ev2 := asyncio.Event())
    cache.unwatch(keep, ev2)
    assert cache.get(keep) is not None and cache.groups() == [keep]


def test_unknown_type_urls_share_one_metric_label() -> None:
    metrics = XdsMetrics()
    for i in range(300):
        metrics.rejected(f"type.googleapis.com/junk.v{i}.Thing")
        metrics.stale_nonce(f"type.googleapis.com/junk.v{i}.Thing")
    text = generate_latest(metrics.registry).decode()
    assert 'type="other"' in text and "junk" not in text and "Thing" not in text
    assert type_label("type.googleapis.com/envoy.config.cluster.v3.Cluster") == "cds"


def test_a_stream_may_subscribe_only_so_many_types() -> None:
    from envoy.service.discovery.v3 import discovery_pb2 as d

    server = AdsServer(SnapshotCache(lambda n: "g"), XdsServerOptions(max_types_per_stream=4))
    conn = Connection(conn_id="c", variant="delta", peer="p", node=node("n"), group="g")
    for i in range(4):
        server._apply("delta", conn, d.DeltaDiscoveryRequest(type_url=f"type.googleapis.com/t{i}"))
    assert conn.fatal is None and len(conn.subs) == 4
    server._apply("delta", conn, d.DeltaDiscoveryRequest(type_url="type.googleapis.com/t4"))
    assert conn.fatal is not None and conn.fatal[0] == "RESOURCE_EXHAUSTED" and len(conn.subs) == 4


def test_a_stream_may_subscribe_only_so_many_names() -> None:
    from envoy.service.discovery.v3 import discovery_pb2 as d

    server = AdsServer(SnapshotCache(lambda n: "g"), XdsServerOptions(max_names_per_type=100))
    conn = Connection(conn_id="c", variant="delta", peer="p", node=node("n"), group="g")
    eds = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
    server._apply("delta", conn, d.DeltaDiscoveryRequest(type_url=eds, resource_names_subscribe=[
        f"n{i}" for i in range(100)]))
    assert conn.fatal is None
    server._apply("delta", conn, d.DeltaDiscoveryRequest(type_url=eds, resource_names_subscribe=["one-more"]))
    assert conn.fatal is not None and conn.fatal[0] == "RESOURCE_EXHAUSTED"


@pytest.mark.asyncio
async def test_authenticated_streams_are_admitted_before_waiting_unauthenticated_ones() -> None:
    admission = LoadAdmission(max_syncing=1, max_lag=0.0, lag=None, sync_timeout=0)
    first = await admission.admit(1.0)
    assert first is not None
    flood = [asyncio.ensure_future(admission.admit(5.0)) for _ in range(20)]
    await asyncio.sleep(0)
    proxy = asyncio.ensure_future(admission.admit(5.0, priority=True))
    await asyncio.sleep(0)
    first.release()  # one place frees: the authenticated reconnect gets it, not the flood's head
    ticket = await asyncio.wait_for(proxy, 1.0)
    await asyncio.sleep(0.01)
    assert ticket is not None and not any(f.done() for f in flood)
    ticket.release()
    await asyncio.sleep(0.01)
    assert sum(f.done() for f in flood) == 1
    for f in flood:
        f.cancel()
    await asyncio.gather(*flood, return_exceptions=True)
