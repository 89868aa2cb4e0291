"""Client-supplied strings (node id, metadata, NACK messages) never reach a log line or the
``proxy-status`` table raw: a newline or an ANSI escape in them must not forge a log line or
repaint a terminal (issue 14, finding 5)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc
from envoy.service.discovery.v3 import discovery_pb2 as d
from google.rpc import status_pb2

from istiod_lite.cli.proxy_status import table
from istiod_lite.xds.cache import SnapshotCache
from istiod_lite.xds.server import AdsServer
from istiod_lite.xds.typeurls import CLUSTER
from tests.unit.xds_helpers import snap

FORGED = "\n2026-01-01 00:00:00,000 INFO istiod_lite.xds.server: forged"
EVIL_ID = f"sidecar~1.2.3.4~x.ns~ns.svc.cluster.local{FORGED}\x1b[2J\x1b[31m"
RAW = ("\n", "\r", "\x1b")


@pytest.fixture
async def stub() -> AsyncIterator[ads_pb2_grpc.AggregatedDiscoveryServiceStub]:
    cache = SnapshotCache(lambda node: "g")
    cache.mark_ready()
    cache.set_snapshot("g", snap({"a": 1}))
    server = grpc.aio.server()
    AdsServer(cache).register(server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    yield ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
    await channel.close()
    await server.stop(0)


async def test_forged_node_id_and_nack_message_stay_on_one_escaped_log_line(
        stub: ads_pb2_grpc.AggregatedDiscoveryServiceStub, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="istiod_lite")
    call = stub.StreamAggregatedResources()
    await call.write(d.DiscoveryRequest(node=base_pb2.Node(id=EVIL_ID), type_url=CLUSTER))
    resp = await asyncio.wait_for(call.read(), 5)
    await call.write(d.DiscoveryRequest(type_url=CLUSTER, response_nonce=resp.nonce,  # type: ignore[union-attr]
                                        error_detail=status_pb2.Status(code=3, message=f"bad{FORGED}\r\x1b[0m")))
    for _ in range(100):
        if any("NACK" in r.getMessage() for r in caplog.records):
            break
        await asyncio.sleep(0.02)
    call.cancel()
    await asyncio.sleep(0.1)
    messages = [r.getMessage() for r in caplog.records if r.name.startswith("istiod_lite")]
    assert any("connected" in m for m in messages), messages
    nack = [m for m in messages if "NACK" in m]
    assert nack, messages
    for m in messages:
        assert not any(c in m for c in RAW), repr(m)
    # Escaped, not dropped: an operator still sees what the client sent.
    assert "\\n2026-01-01" in nack[0] and "\\x1b[2J" in nack[0] and "\\r" in nack[0]


def test_proxy_status_table_has_no_raw_control_characters() -> None:
    status = [{"node_id": EVIL_ID, "group": "waypoint/ns/w\x1b]0;title\x07/1.2.3.4", "variant": "sotw\r",
               "types": {"CDS": {"state": "SYNCED\x1b[0m"}}}]
    out = table(status)
    assert out.count("\n") == 1, out  # header and one row
    assert not any(c in out for c in ("\r", "\x1b", "\x07")), repr(out)
    assert "\\x1b[2J" in out
