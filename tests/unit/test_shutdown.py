"""Graceful shutdown (issue 14): ``/ready`` fails first, new streams are refused with UNAVAILABLE,
open streams are closed with UNAVAILABLE spread over the drain period, and no proxy is ever sent an
empty config on the way out."""

from __future__ import annotations

import asyncio
import itertools
import time
from pathlib import Path

import aiohttp
import grpc
import pytest
from envoy.service.discovery.v3 import ads_pb2_grpc

from istiod_lite.xds.admission import LoadAdmission
from istiod_lite.xds.server import DRAINING
from tests.support.adsclient import FakeWaypoint
from tests.support.controlplane import control_plane
from tests.support.meshyaml import APP_WAYPOINT, documents, pod, service


def write_config(cfg: Path) -> None:
    cfg.mkdir()
    (cfg / "mesh.yaml").write_text(APP_WAYPOINT + documents(
        service("app", "cart", "10.96.0.1", [("http", 80, 8080)]),
        service("app", "shop", "10.96.0.2", [("http", 80, 8080)]),
        pod("app", "cart-1", "127.0.2.10", {"app": "cart"}),
        pod("app", "shop-1", "127.0.2.11", {"app": "shop"}),
    ))


async def ready_status(port: int) -> int:
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/ready") as resp:
        return resp.status


async def test_drain_fails_ready_refuses_new_streams_and_spreads_closes(tmp_path: Path) -> None:
    write_config(tmp_path / "cfg")
    n, period = 20, 1.0
    async with control_plane(tmp_path / "cfg") as cp, \
            grpc.aio.insecure_channel(f"127.0.0.1:{cp.grpc_port}") as channel:
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
        stop = asyncio.Event()
        clients = [FakeWaypoint(i) for i in range(n)]
        streams = [asyncio.ensure_future(c.stream(stub, stop)) for c in clients]
        await asyncio.wait_for(asyncio.gather(*(c.synced.wait() for c in clients)), 20)
        assert len(cp.ads.connections) == n and await ready_status(cp.monitoring_port) == 200

        started = time.monotonic()
        drain = asyncio.ensure_future(cp.drain(period))
        await asyncio.sleep(0)  # the drain has begun: nothing else has run yet
        assert not cp.ready
        assert await ready_status(cp.monitoring_port) == 503

        # A new stream gets UNAVAILABLE: its channel got GOAWAY, so it needs a new connection, and the
        # listener is closed.  (A stream already on its way when the GOAWAY was sent may instead be
        # CANCELLED by gRPC; a client retries either.  The handler's own refusal is tested below.)
        await asyncio.sleep(0.2)
        late = FakeWaypoint(n)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await asyncio.wait_for(late.stream(stub, stop), 5)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert late.responses == 0

        ended = await asyncio.gather(*streams, return_exceptions=True)
        closed_at = time.monotonic()
        await asyncio.wait_for(drain, 10)
        stop.set()

    for c, result in zip(clients, ended, strict=True):
        assert isinstance(result, grpc.aio.AioRpcError), result
        assert result.code() == grpc.StatusCode.UNAVAILABLE, (c.idx, result)
        assert not c.violations, c.violations  # never a removal, never an empty LDS/CDS
        assert all(c.counts().values())  # what it saw last left it with its config
    # Spread over the period (stream i at i * period / n), not all at once; and done within it.
    # The client-side time of each close is when the status arrived: it follows the server's schedule.
    times = sorted(c.closed[0].at if c.closed else closed_at for c in clients)
    assert times[-1] - times[0] >= 0.6 * period, times
    assert max(b - a for a, b in itertools.pairwise(times)) < 0.5 * period
    assert closed_at - started < period + 1.0


async def test_a_stream_reaching_a_draining_server_is_refused_unavailable(tmp_path: Path) -> None:
    """The handler's own check: here the gRPC server is still accepting (only the ADS layer drains)."""
    write_config(tmp_path / "cfg")
    async with control_plane(tmp_path / "cfg") as cp, \
            grpc.aio.insecure_channel(f"127.0.0.1:{cp.grpc_port}") as channel:
        await cp.ads.drain(0.0)
        # The stream is opened and nothing written: the handler refuses before it reads a request.
        # (A client write racing that refusal fails locally in grpc.aio as INTERNAL and replaces
        # the call's status, so a writing client would make this test depend on timing.)
        call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).DeltaAggregatedResources()
        assert await asyncio.wait_for(call.code(), 5) == grpc.StatusCode.UNAVAILABLE
        assert await call.details() == DRAINING
        with pytest.raises(grpc.aio.AioRpcError) as read:  # and no response was sent before it
            await call.read()
        assert read.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_drain_with_no_streams_returns_at_once(tmp_path: Path) -> None:
    write_config(tmp_path / "cfg")
    async with control_plane(tmp_path / "cfg") as cp:
        started = time.monotonic()
        await asyncio.wait_for(cp.drain(10.0), 5)
        assert time.monotonic() - started < 1.5
        assert await ready_status(cp.monitoring_port) == 503


async def test_closed_admission_refuses_waiters_at_once() -> None:
    admission = LoadAdmission(max_syncing=1, max_lag=0.0, lag=None, sync_timeout=0)
    held = await admission.admit(1.0)
    assert held is not None
    waiting = asyncio.ensure_future(admission.admit(30.0))
    await asyncio.sleep(0.01)
    admission.close()
    assert await asyncio.wait_for(waiting, 1) is None
    assert await admission.admit(30.0) is None
    held.release()
