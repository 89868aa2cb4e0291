"""The ADS server over real gRPC (in-process server, raw stream clients)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc
from envoy.service.discovery.v3 import discovery_pb2 as d

from istiod_lite.xds.cache import SnapshotCache
from istiod_lite.xds.looplag import LoopLagMonitor
from istiod_lite.xds.server import AdsServer, XdsServerOptions
from istiod_lite.xds.typeurls import CLUSTER, ENDPOINT
from tests.unit.xds_helpers import snap

NODE = base_pb2.Node(id="sidecar~1.2.3.4~x.ns~ns.svc.cluster.local")


class Harness:
    def __init__(self) -> None:
        self.cache = SnapshotCache(lambda node: "g")
        self.server = grpc.aio.server()
        self.ads = AdsServer(self.cache)
        self.ads.register(self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{self.port}")
        self.stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(self.channel)


@pytest.fixture
async def h() -> AsyncIterator[Harness]:
    harness = Harness()
    await harness.server.start()
    yield harness
    await harness.channel.close()
    await harness.server.stop(0)


async def read(call: grpc.aio.StreamStreamCall, timeout: float = 5.0) -> object:
    return await asyncio.wait_for(call.read(), timeout)


async def test_not_ready_streams_get_unavailable(h: Harness) -> None:
    call = h.stub.StreamAggregatedResources()
    with contextlib.suppress(grpc.aio.AioRpcError):  # the server may refuse before the write lands
        await call.write(d.DiscoveryRequest(node=NODE, type_url=CLUSTER))
    assert await asyncio.wait_for(call.code(), 5) == grpc.StatusCode.UNAVAILABLE


async def test_missing_node_is_invalid_argument(h: Harness) -> None:
    h.cache.mark_ready()
    call = h.stub.DeltaAggregatedResources()
    await call.write(d.DeltaDiscoveryRequest(type_url=CLUSTER))
    assert await asyncio.wait_for(call.code(), 5) == grpc.StatusCode.INVALID_ARGUMENT


async def test_empty_type_url_fails_only_that_stream(h: Harness) -> None:
    h.cache.mark_ready()
    h.cache.set_snapshot("g", snap({"a": 1}))
    good = h.stub.StreamAggregatedResources()
    await good.write(d.DiscoveryRequest(node=NODE, type_url=CLUSTER))
    first = await read(good)
    bad = h.stub.StreamAggregatedResources()
    await bad.write(d.DiscoveryRequest(node=NODE, type_url=""))
    assert await asyncio.wait_for(bad.code(), 5) == grpc.StatusCode.INVALID_ARGUMENT
    await good.write(d.DiscoveryRequest(type_url=CLUSTER, response_nonce=first.nonce))  # type: ignore[attr-defined]
    h.cache.set_snapshot("g", snap({"a": 2}))
    update = await read(good)
    assert update.version_info != first.version_info  # type: ignore[attr-defined]
    good.cancel()


async def test_sotw_push_on_change_in_push_order(h: Harness) -> None:
    h.cache.mark_ready()
    h.cache.set_snapshot("g", snap({"a": 1}, {"a": 1}))
    call = h.stub.StreamAggregatedResources()
    await call.write(d.DiscoveryRequest(node=NODE, type_url=CLUSTER))
    cds = await read(call)
    await call.write(d.DiscoveryRequest(type_url=CLUSTER, response_nonce=cds.nonce,  # type: ignore[attr-defined]
                                        version_info=cds.version_info))  # type: ignore[attr-defined]
    await call.write(d.DiscoveryRequest(type_url=ENDPOINT, resource_names=["a"]))
    eds = await read(call)
    assert eds.type_url == ENDPOINT  # type: ignore[attr-defined]
    await call.write(d.DiscoveryRequest(type_url=ENDPOINT, resource_names=["a"], response_nonce=eds.nonce))  # type: ignore[attr-defined]
    h.cache.set_snapshot("g", snap({"a": 2}, {"a": 2}))
    got = [await read(call), await read(call)]
    assert [r.type_url for r in got] == [CLUSTER, ENDPOINT]  # type: ignore[attr-defined]
    call.cancel()


async def test_delta_reconnect_and_removal(h: Harness) -> None:
    h.cache.mark_ready()
    h.cache.set_snapshot("g", snap({"a": 1, "b": 1}))
    call = h.stub.DeltaAggregatedResources()
    await call.write(d.DeltaDiscoveryRequest(node=NODE, type_url=CLUSTER))
    r1 = await read(call)
    held = {r.name: r.version for r in r1.resources}  # type: ignore[attr-defined]
    assert sorted(held) == ["a", "b"]
    call.cancel()
    h.cache.set_snapshot("g", snap({"a": 1}))
    again = h.stub.DeltaAggregatedResources()
    await again.write(d.DeltaDiscoveryRequest(node=NODE, type_url=CLUSTER, initial_resource_versions=held))
    r2 = await read(again)
    assert [r.name for r in r2.resources] == [] and list(r2.removed_resources) == ["b"]  # type: ignore[attr-defined]
    again.cancel()


async def test_ack_convergence_is_measured_from_the_config_change(h: Harness) -> None:
    """syncz reports, per type, how long after the config change the proxy ACKed the response
    that carried it (the server's monotonic clock at both ends)."""
    h.cache.mark_ready()
    h.cache.set_snapshot("g", snap({"a": 1}), trigger_time=time.monotonic() - 0.5)
    call = h.stub.DeltaAggregatedResources()
    await call.write(d.DeltaDiscoveryRequest(node=NODE, type_url=CLUSTER))
    r1 = await read(call)

    def cds_status() -> dict[str, object]:
        [conn] = h.ads.status()
        types = conn["types"]
        assert isinstance(types, dict)
        return types["CDS"]  # type: ignore[no-any-return]

    assert cds_status()["ack_convergence_ms"] is None  # sent, not yet ACKed
    await call.write(d.DeltaDiscoveryRequest(type_url=CLUSTER, response_nonce=r1.nonce))  # type: ignore[attr-defined]
    for _ in range(100):
        if cds_status()["ack_convergence_ms"] is not None:
            break
        await asyncio.sleep(0.02)
    ms = cds_status()["ack_convergence_ms"]
    assert isinstance(ms, float) and 500 <= ms < 60_000
    call.cancel()


async def test_streams_getting_the_same_large_change_share_one_response_and_each_acks_it(h: Harness) -> None:
    """One large change to many replicas: every stream is sent the same response (nonce included)
    and each stream's ACK of it is recognised as an ACK, so every replica shows SYNCED."""
    from envoy.config.cluster.v3 import cluster_pb2

    from istiod_lite.xds.resources import ResourceSnapshot

    def big(marker: str) -> ResourceSnapshot:
        cluster = cluster_pb2.Cluster(name="a", alt_stat_name=marker * 100_000)
        return ResourceSnapshot.from_messages({CLUSTER: {"a": cluster}})

    h.cache.mark_ready()
    h.cache.set_snapshot("g", big("x"))
    calls = [h.stub.DeltaAggregatedResources() for _ in range(3)]
    for call in calls:
        await call.write(d.DeltaDiscoveryRequest(node=NODE, type_url=CLUSTER))
    for call in calls:
        first = await read(call)
        await call.write(d.DeltaDiscoveryRequest(type_url=CLUSTER, response_nonce=first.nonce))  # type: ignore[attr-defined]
    h.cache.set_snapshot("g", big("y"))
    got = [await read(call) for call in calls]
    assert len({r.nonce for r in got}) == 1  # type: ignore[attr-defined]
    assert all(r.resources[0].resource.value.endswith(b"y" * 1000) for r in got)  # type: ignore[attr-defined]
    for call, r in zip(calls, got, strict=True):
        await call.write(d.DeltaDiscoveryRequest(type_url=CLUSTER, response_nonce=r.nonce))  # type: ignore[attr-defined]

    def states() -> list[object]:
        return [c["types"]["CDS"]["state"] for c in h.ads.status()]  # type: ignore[index]

    for _ in range(100):
        if states() == ["SYNCED"] * 3:
            break
        await asyncio.sleep(0.02)
    assert states() == ["SYNCED"] * 3
    for call in calls:
        call.cancel()


async def test_two_servers_share_no_responses_and_a_server_drops_its_memo_with_its_last_stream(h: Harness) -> None:
    """The shared-response memo is the server's: a second server in the process builds its own
    (its own nonce), and once a server's last stream is gone it holds no response."""
    from envoy.config.cluster.v3 import cluster_pb2

    from istiod_lite.xds.resources import ResourceSnapshot

    other = AdsServer(h.cache)
    server2 = grpc.aio.server()
    other.register(server2)
    port2 = server2.add_insecure_port("127.0.0.1:0")
    await server2.start()
    channel2 = grpc.aio.insecure_channel(f"127.0.0.1:{port2}")
    try:
        cluster = cluster_pb2.Cluster(name="a", alt_stat_name="x" * 100_000)
        h.cache.mark_ready()
        h.cache.set_snapshot("g", ResourceSnapshot.from_messages({CLUSTER: {"a": cluster}}))
        stubs = [h.stub, ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel2)]
        calls = [stub.DeltaAggregatedResources() for stub in stubs for _ in range(2)]
        for call in calls:
            await call.write(d.DeltaDiscoveryRequest(node=NODE, type_url=CLUSTER))
        nonces = [(await read(call)).nonce for call in calls]  # type: ignore[attr-defined]
        assert nonces[0] == nonces[1] and nonces[2] == nonces[3] and nonces[0] != nonces[2]
        assert h.ads.memo is not other.memo and len(h.ads.memo.responses) == len(other.memo.responses) == 1
        for call in calls:
            call.cancel()
        for _ in range(100):
            if not h.ads.connections and not other.connections:
                break
            await asyncio.sleep(0.02)
        assert len(h.ads.memo.responses) == len(other.memo.responses) == 0
    finally:
        await channel2.close()
        await server2.stop(0)


async def test_garbage_bytes_do_not_break_server(h: Harness) -> None:
    h.cache.mark_ready()
    h.cache.set_snapshot("g", snap({"a": 1}))
    raw = h.channel.stream_stream(
        "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources",
        request_serializer=lambda b: b, response_deserializer=lambda b: b,
    )
    call = raw()
    await call.write(b"\xff\xff\xff\x00garbage")
    code = await asyncio.wait_for(call.code(), 5)
    assert code != grpc.StatusCode.OK
    ok = h.stub.StreamAggregatedResources()
    await ok.write(d.DiscoveryRequest(node=NODE, type_url=CLUSTER))
    assert len((await read(ok)).resources) == 1  # type: ignore[attr-defined]
    ok.cancel()


async def test_admission_limits_new_streams() -> None:
    cache = SnapshotCache(lambda node: "g")
    cache.mark_ready()
    cache.set_snapshot("g", snap({"a": 1}))
    opts = XdsServerOptions(max_new_streams_per_second=1.0, new_stream_burst=2, admission_wait=0.05)
    server = grpc.aio.server()
    AdsServer(cache, opts).register(server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(ch)
            calls = [stub.StreamAggregatedResources() for _ in range(3)]
            for c in calls:
                # Admission refuses a stream as it opens, so the refusal may already have ended the
                # call before this write: the read below still reports its status.
                with contextlib.suppress(asyncio.InvalidStateError):
                    await c.write(d.DiscoveryRequest(node=NODE, type_url=CLUSTER))
            outcomes = []
            for c in calls:
                try:
                    outcomes.append(len((await read(c)).resources))  # type: ignore[attr-defined]
                except grpc.aio.AioRpcError as exc:
                    outcomes.append(exc.code())
            assert sorted(outcomes, key=str) == sorted([1, 1, grpc.StatusCode.RESOURCE_EXHAUSTED], key=str)
            for c in calls:
                c.cancel()
    finally:
        await server.stop(0)


async def test_stuck_client_is_closed_and_does_not_delay_others() -> None:
    big = {f"cluster-{i:04d}-{'x' * 200}": i for i in range(3000)}  # ~1 MB per response
    cache = SnapshotCache(lambda node: node.cluster)
    cache.mark_ready()
    cache.set_snapshot("slow", snap(big))
    cache.set_snapshot("fast", snap({"a": 1}))
    server = grpc.aio.server()
    ads = AdsServer(cache, XdsServerOptions(write_timeout=1.0))
    ads.register(server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(ch)
            slow = stub.DeltaAggregatedResources()
            await slow.write(d.DeltaDiscoveryRequest(node=base_pb2.Node(id="s", cluster="slow"), type_url=CLUSTER))
            for i in range(2, 12):  # keep changing the slow group's config; the slow client never reads
                cache.set_snapshot("slow", snap({k: v + i for k, v in big.items()}))
                await asyncio.sleep(0.02)
            fast = stub.DeltaAggregatedResources()
            await fast.write(d.DeltaDiscoveryRequest(node=base_pb2.Node(id="f", cluster="fast"), type_url=CLUSTER))
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            first = await read(fast)
            cache.set_snapshot("fast", snap({"a": 2}))
            await fast.write(d.DeltaDiscoveryRequest(type_url=CLUSTER, response_nonce=first.nonce))  # type: ignore[attr-defined]
            await read(fast)
            assert loop.time() - t0 < 1.0
            # The stuck stream is dropped server-side: its state is gone, memory is bounded.
            for _ in range(100):
                if not any(c.group == "slow" for c in ads.connections.values()):
                    break
                await asyncio.sleep(0.1)
            assert [c.group for c in ads.connections.values()] == ["fast"]
            # istiod's pilot_xds_write_timeout counts it.
            assert ads.metrics.registry.get_sample_value("pilot_xds_write_timeout_total") == 1
            slow.cancel()
            fast.cancel()
    finally:
        await server.stop(0)


@pytest.mark.parametrize("variant", ["sotw", "delta"])
async def test_unknown_type_keeps_stream_alive(h: Harness, variant: str) -> None:
    """R38/R39 (docs/xds-rules.md): an unknown type gets at most an empty answer; the stream keeps serving others."""
    h.cache.mark_ready()
    h.cache.set_snapshot("g", snap({"a": 1}))
    unknown = "type.googleapis.com/example.Unknown"
    if variant == "sotw":
        call = h.stub.StreamAggregatedResources()
        await call.write(d.DiscoveryRequest(node=NODE, type_url=unknown))
        await call.write(d.DiscoveryRequest(type_url=CLUSTER))
    else:
        call = h.stub.DeltaAggregatedResources()
        await call.write(d.DeltaDiscoveryRequest(node=NODE, type_url=unknown, resource_names_subscribe=["x"]))
        await call.write(d.DeltaDiscoveryRequest(type_url=CLUSTER))
    seen: dict[str, int] = {}
    while CLUSTER not in seen:
        resp = await read(call)
        seen[resp.type_url] = len(resp.resources)  # type: ignore[attr-defined]
    assert seen[CLUSTER] == 1
    assert seen.get(unknown, 0) == 0
    call.cancel()


@pytest.mark.parametrize("variant", ["sotw", "delta"])
async def test_subscription_to_missing_name_is_answered_when_it_appears(h: Harness, variant: str) -> None:
    h.cache.mark_ready()
    h.cache.set_snapshot("g", snap(endpoints={"a": 1}))
    if variant == "sotw":
        call = h.stub.StreamAggregatedResources()
        await call.write(d.DiscoveryRequest(node=NODE, type_url=ENDPOINT, resource_names=["later"]))
    else:
        call = h.stub.DeltaAggregatedResources()
        await call.write(d.DeltaDiscoveryRequest(node=NODE, type_url=ENDPOINT, resource_names_subscribe=["later"]))
    first = await read(call)
    assert len(first.resources) == 0  # type: ignore[attr-defined]
    if variant == "sotw":
        await call.write(d.DiscoveryRequest(type_url=ENDPOINT, resource_names=["later"],
                                            response_nonce=first.nonce,  # type: ignore[attr-defined]
                                            version_info=first.version_info))  # type: ignore[attr-defined]
    else:
        await call.write(d.DeltaDiscoveryRequest(type_url=ENDPOINT,
                                                 response_nonce=first.nonce))  # type: ignore[attr-defined]
    await asyncio.sleep(0.1)
    h.cache.set_snapshot("g", snap(endpoints={"a": 1, "later": 1}))
    second = await read(call)
    assert [r.name if variant == "delta" else "later" for r in second.resources] == ["later"]  # type: ignore[attr-defined]
    call.cancel()


# -- admission that follows load (R49) ----------------------------------------------------------------
class Admission:
    """A server with load admission only, and a lag monitor the test feeds (its timer never fires)."""

    def __init__(self, **opts: object) -> None:
        self.cache = SnapshotCache(lambda node: "g")
        self.cache.mark_ready()
        self.cache.set_snapshot("g", snap({"a": 1}))
        self.lag = LoopLagMonitor(interval=3600)
        self.ads = AdsServer(self.cache, XdsServerOptions(**opts), lag=self.lag)  # type: ignore[arg-type]
        self.server = grpc.aio.server()
        self.ads.register(self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{self.port}")
        self.stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(self.channel)

    async def open(self) -> grpc.aio.StreamStreamCall:
        call = self.stub.StreamAggregatedResources()
        with contextlib.suppress(asyncio.InvalidStateError):  # refused before the write landed
            await call.write(d.DiscoveryRequest(node=NODE, type_url=CLUSTER))
        return call

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Admission]:
        await self.server.start()
        try:
            yield self
        finally:
            await self.channel.close()
            await self.server.stop(0)


async def outcome(call: grpc.aio.StreamStreamCall, timeout: float = 5.0) -> object:
    """The first response, or the status code the stream ended with."""
    try:
        return await read(call, timeout)
    except grpc.aio.AioRpcError as exc:
        return exc.code()


async def ack(call: grpc.aio.StreamStreamCall, resp: object) -> None:
    await call.write(d.DiscoveryRequest(type_url=CLUSTER, response_nonce=resp.nonce,  # type: ignore[attr-defined]
                                        version_info=resp.version_info))  # type: ignore[attr-defined]


async def test_bound_reached_delays_then_refuses() -> None:
    async with Admission(max_syncing_streams=1, max_loop_lag=0, admission_wait=0.3).running() as h:
        first = await h.open()
        assert isinstance(await outcome(first), d.DiscoveryResponse)  # admitted; never ACKs: stays syncing
        assert h.ads.admission is not None and h.ads.admission.syncing == 1
        t0 = time.monotonic()
        second = await h.open()
        assert await outcome(second) == grpc.StatusCode.RESOURCE_EXHAUSTED  # waited, then refused
        assert 0.25 <= time.monotonic() - t0 < 3  # bounded: never a hang
        assert h.ads.admission.refused == 1 and h.ads.admission.waiting == 0
        first.cancel()


async def test_bound_reached_delays_until_a_stream_is_synced() -> None:
    async with Admission(max_syncing_streams=1, max_loop_lag=0, admission_wait=5).running() as h:
        first = await h.open()
        resp = await outcome(first)
        second = await h.open()
        await asyncio.sleep(0.2)
        assert h.ads.admission is not None and h.ads.admission.waiting == 1  # delayed, not refused
        await ack(first, resp)  # the first stream's initial sync is done: its place goes to the next
        assert isinstance(await outcome(second), d.DiscoveryResponse)
        assert h.ads.admission.refused == 0
        first.cancel()
        second.cancel()


async def test_stream_stops_counting_after_the_sync_timeout() -> None:
    async with Admission(max_syncing_streams=1, max_loop_lag=0, initial_sync_timeout=0.2,
                         admission_wait=5).running() as h:
        first = await h.open()
        await outcome(first)  # never ACKed
        second = await h.open()
        assert isinstance(await outcome(second), d.DiscoveryResponse)  # admitted once the first timed out
        first.cancel()
        second.cancel()


async def test_high_lag_refuses_and_lag_back_admits() -> None:
    async with Admission(max_syncing_streams=0, max_loop_lag=0.05, admission_wait=0.3).running() as h:
        syncing = await h.open()
        assert isinstance(await outcome(syncing), d.DiscoveryResponse)  # one stream in its initial sync
        h.lag.record(0.5)  # the loop runs 500 ms late
        assert await outcome(await h.open()) == grpc.StatusCode.RESOURCE_EXHAUSTED
        waiting = await h.open()
        await asyncio.sleep(0.1)
        assert h.ads.admission is not None and h.ads.admission.waiting == 1
        h.lag.record(0.01)  # lag back under the threshold: the waiting stream goes in at once
        assert isinstance(await outcome(waiting, 1.0), d.DiscoveryResponse)
        syncing.cancel()
        waiting.cancel()


async def test_high_lag_never_locks_out_the_only_stream() -> None:
    async with Admission(max_syncing_streams=0, max_loop_lag=0.05, admission_wait=0.3).running() as h:
        h.lag.record(0.5)  # slow for another reason (a big push); nobody is syncing
        call = await h.open()
        assert isinstance(await outcome(call), d.DiscoveryResponse)
        call.cancel()


async def test_fixed_rate_alone_still_works() -> None:
    opts = {"max_new_streams_per_second": 1.0, "new_stream_burst": 1, "admission_wait": 0.05,
            "max_syncing_streams": 0, "max_loop_lag": 0}
    async with Admission(**opts).running() as h:
        assert h.ads.admission is None
        first, second = await h.open(), await h.open()
        outcomes = sorted([str(await outcome(first)), str(await outcome(second))])
        assert "StatusCode.RESOURCE_EXHAUSTED" in outcomes and len(set(outcomes)) == 2
        first.cancel()
        second.cancel()


async def test_load_status_reports_lag_and_admission() -> None:
    async with Admission(max_syncing_streams=7).running() as h:
        h.lag.record(0.02)
        h.lag.record(0.2)
        status = h.ads.load_status()
        assert status["count"] == 2 and status["max_ms"] == 200.0 and status["current_ms"] == 200.0
        assert status["admission"] == {"syncing": 0, "waiting": 0, "refused": 0, "max_syncing_streams": 7,
                                       "max_loop_lag_ms": 25.0, "max_new_streams_per_second": 0.0}
        assert h.ads.load_status(since=time.time() + 60)["count"] == 0


async def test_loop_lag_monitor_sees_a_blocked_loop() -> None:
    monitor = LoopLagMonitor(interval=0.01)
    monitor.start()
    await asyncio.sleep(0.05)
    time.sleep(0.15)  # a callback that holds the loop (the point of the test)
    assert monitor.current >= 0.1  # overdue now, before the late tick even ran
    await asyncio.sleep(0.05)
    monitor.stop()
    assert max(lag for _, lag in monitor.samples()) >= 0.1
    assert monitor.summary()["max_ms"] >= 100  # type: ignore[operator]
