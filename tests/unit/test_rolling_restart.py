"""A rolling restart of two replicas under 200 connected proxies (issue 14): SIGTERM replica A, start
it again, SIGTERM replica B.  Every proxy ends connected and synced, none ever held an empty config
or gave up, and each replica's closes were spread over its drain period."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path

import aiohttp
import grpc
import pytest
from envoy.service.discovery.v3 import ads_pb2_grpc

from tests.support.adsclient import FakeWaypoint
from tests.support.controlplane import ServerProcess
from tests.unit.test_shutdown import write_config

CLIENTS = 200
DRAIN = 3.0
#: Connections per replica shared by the clients (as many proxies share a node's few connections
#: would not be realistic; 200 connections in one test process would only cost time).
CHANNELS = 8
#: Reconnect quickly to a restarted replica (gRPC's default backoff starts at 1 s).
CHANNEL_OPTIONS = [("grpc.initial_reconnect_backoff_ms", 100), ("grpc.max_reconnect_backoff_ms", 1000)]


async def streams_on(server: ServerProcess) -> int:
    async with aiohttp.ClientSession() as http, \
            http.get(f"http://127.0.0.1:{server.monitoring_port}/debug/syncz") as resp:
        return len(await resp.json())


async def all_synced_on(clients: list[FakeWaypoint], address: int, timeout: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not all(c.synced.is_set() and c.address == address for c in clients):
        gave_up = [c.idx for c in clients if c.gave_up]
        assert not gave_up, f"clients gave up: {gave_up}"
        if loop.time() > deadline:
            behind = [(c.idx, c.address, c.synced.is_set()) for c in clients
                      if not (c.synced.is_set() and c.address == address)]
            raise AssertionError(f"{len(behind)} clients not synced on address {address}: {behind[:10]}")
        await asyncio.sleep(0.1)


def assert_spread(clients: list[FakeWaypoint], address: int) -> None:
    """The replica at ``address`` closed its streams over its drain period, not all at once."""
    times = sorted(c.at for client in clients for c in client.closed
                   if c.address == address and c.code == grpc.StatusCode.UNAVAILABLE and any(c.held.values()))
    assert times, f"no stream was closed by address {address}"
    assert times[-1] - times[0] >= 0.5 * DRAIN, (len(times), times[-1] - times[0])
    assert max(b - a for a, b in itertools.pairwise(times)) < 0.5 * DRAIN


@pytest.mark.slow
async def test_rolling_restart_loses_no_proxy_and_sends_no_empty_config(tmp_path: Path) -> None:
    write_config(tmp_path / "cfg")
    args = ["--shutdown-drain-duration", str(DRAIN)]
    replicas = [ServerProcess(tmp_path / "cfg", tmp_path / f"{name}.log", args) for name in ("a", "b")]
    a, b = replicas
    channels: list[grpc.aio.Channel] = []
    stop = asyncio.Event()
    tasks: list[asyncio.Task[None]] = []
    try:
        await asyncio.gather(a.start(), b.start())
        channels = [grpc.aio.insecure_channel(f"127.0.0.1:{r.grpc_port}", options=CHANNEL_OPTIONS)
                    for r in replicas for _ in range(CHANNELS)]
        stubs = [ads_pb2_grpc.AggregatedDiscoveryServiceStub(ch) for ch in channels]
        clients = [FakeWaypoint(i, address=i % 2) for i in range(CLIENTS)]
        tasks = [asyncio.create_task(c.run([stubs[k * CHANNELS + c.idx % CHANNELS] for k in (0, 1)], stop))
                 for c in clients]
        await asyncio.wait_for(asyncio.gather(*(c.synced.wait() for c in clients)), 30)

        assert await a.terminate(DRAIN + 15) == 0, a.log_tail()
        await all_synced_on(clients, 1, timeout=15)
        assert_spread(clients, 0)

        await a.start()
        assert await b.terminate(DRAIN + 15) == 0, b.log_tail()
        await all_synced_on(clients, 0, timeout=15)
        assert_spread(clients, 1)
        assert await streams_on(a) == CLIENTS

        for c in clients:
            assert not c.violations, (c.idx, c.violations)  # no removal, never an empty LDS or CDS
            assert not c.gave_up and not tasks[c.idx].done(), c.idx
            # Every close left the proxy with the config it had: it reconnected holding it.
            assert all(all(closed.held.values()) for closed in c.closed), (c.idx, c.closed)
            assert {closed.code for closed in c.closed} <= {grpc.StatusCode.UNAVAILABLE}, (c.idx, c.closed)
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        for ch in channels:
            await ch.close()
        for r in replicas:
            await r.stop()
