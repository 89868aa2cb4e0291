"""The agent's xDS proxy between a client on its Unix socket (Envoy's role) and the in-process istiod.

The upstream is the harness's TLS port (the CA's serving certificate, server-auth only), so what
these tests see on the server side is what istiod's secure port sees: the bearer token in the call
metadata, read from the token file when each upstream stream opened.
"""

from __future__ import annotations

import asyncio
import contextlib
import stat
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf import struct_pb2

from istiod_lite.agent.xdsproxy import XdsProxy, XdsProxyConfig
from istiod_lite.controlplane.secure import XdsAuthenticator
from istiod_lite.xds import typeurls
from istiod_lite.xds.connection import Connection
from istiod_lite.xds.resources import ResourceSnapshot
from istiod_lite.xds.server import StreamRefused
from tests.support.ports import free_port
from tests.support.wait import wait_until
from tests.unit.test_agent_fixtures import NAMESPACE, WAYPOINT, Istiod, running_istiod


@pytest.fixture
async def istiod(tmp_path: Path) -> AsyncIterator[Istiod]:
    async with running_istiod(tmp_path) as harness:
        yield harness


@pytest.fixture
def short() -> Iterator[Path]:
    """A directory short enough for a Unix socket path (pytest's tmp_path may not be)."""
    with tempfile.TemporaryDirectory(prefix="xp-") as d:
        yield Path(d)


def node(namespace: str = NAMESPACE, sa: str = WAYPOINT) -> base_pb2.Node:
    metadata = struct_pb2.Struct()
    metadata.update({"NAMESPACE": namespace, "SERVICE_ACCOUNT": sa})
    return base_pb2.Node(id=f"waypoint~127.0.1.1~{WAYPOINT}-1.{namespace}~{namespace}.svc.cluster.local",
                         cluster=f"{WAYPOINT}.{namespace}", metadata=metadata)


def clusters(*names: str) -> ResourceSnapshot:
    return ResourceSnapshot.from_messages({
        typeurls.CLUSTER: {n: cluster_pb2.Cluster(name=n) for n in names}, typeurls.LISTENER: {}})


@pytest.fixture
async def proxy(istiod: Istiod, tmp_path: Path, short: Path) -> AsyncIterator[XdsProxy]:
    istiod.token_file(tmp_path / "token")
    p = XdsProxy(XdsProxyConfig(socket_path=short / "proxy" / "XDS", upstream=istiod.tls_address,
                                root_cert=istiod.root_path.read_bytes(), token_file=tmp_path / "token"))
    await p.start()
    try:
        yield p
    finally:
        await p.stop(0)


@pytest.fixture
async def envoy(proxy: XdsProxy) -> AsyncIterator[ads_pb2_grpc.AggregatedDiscoveryServiceStub]:
    """An ADS client on the proxy's socket, as Envoy's ``xds-grpc`` cluster is."""
    async with grpc.aio.insecure_channel(f"unix:{proxy.socket_path}") as channel:
        yield ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)


async def refused(call: Any, request: discovery_pb2.DeltaDiscoveryRequest) -> tuple[grpc.StatusCode, str]:
    """The status of a stream the proxy ends before it reads a request (no token, no istiod).

    The first write may then already fail, at a moment gRPC only reports as ``InvalidStateError``
    or a core-internal error; the stream's real status is what ``code()`` and ``details()`` say.
    """
    with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
        await call.write(request)
    code = await asyncio.wait_for(call.code(), 10)
    return code, await call.details()


def unpack_cluster(resource: Any) -> str:
    c = cluster_pb2.Cluster()
    assert resource.Unpack(c)
    return str(c.name)


async def test_delta_stream_passes_both_ways_with_the_token(istiod: Istiod, proxy: XdsProxy, tmp_path: Path,
                                                            envoy: ads_pb2_grpc.AggregatedDiscoveryServiceStub
                                                            ) -> None:
    istiod.serve(clusters("a"))
    call = envoy.DeltaAggregatedResources()
    await call.write(discovery_pb2.DeltaDiscoveryRequest(node=node(), type_url=typeurls.CLUSTER,
                                                         resource_names_subscribe=["*"]))
    first = await asyncio.wait_for(call.read(), 5)
    assert [unpack_cluster(r.resource) for r in first.resources] == ["a"]
    # The request reached istiod intact (node and all), over TLS, with the token as metadata.
    [conn] = istiod.ads.connections.values()
    assert conn.node == node() and conn.variant == "delta"
    [seen] = istiod.streams.seen
    assert seen.tls
    assert seen.values("authorization") == [f"Bearer {(tmp_path / 'token').read_text().strip()}"]
    assert seen.values("clusterid") == ["Kubernetes"]
    # ACK, then a push: the same stream keeps flowing in both directions.
    await call.write(discovery_pb2.DeltaDiscoveryRequest(type_url=typeurls.CLUSTER, response_nonce=first.nonce))
    await wait_until(lambda: conn.subs[typeurls.CLUSTER].nonce_acked == first.nonce, timeout=5, message="ACK")
    istiod.serve(clusters("a", "b"))
    second = await asyncio.wait_for(call.read(), 5)
    assert [unpack_cluster(r.resource) for r in second.resources] == ["b"]
    call.cancel()
    assert proxy.streams == 1


async def test_sotw_stream_passes_through(istiod: Istiod, proxy: XdsProxy,
                                          envoy: ads_pb2_grpc.AggregatedDiscoveryServiceStub) -> None:
    istiod.serve(clusters("a", "b"))
    call = envoy.StreamAggregatedResources()
    await call.write(discovery_pb2.DiscoveryRequest(node=node(), type_url=typeurls.CLUSTER))
    resp = await asyncio.wait_for(call.read(), 5)
    assert sorted(unpack_cluster(r) for r in resp.resources) == ["a", "b"]
    assert [c.variant for c in istiod.ads.connections.values()] == ["sotw"]
    call.cancel()


async def test_every_upstream_stream_reads_the_token_file_again(
        istiod: Istiod, proxy: XdsProxy, tmp_path: Path, envoy: ads_pb2_grpc.AggregatedDiscoveryServiceStub
) -> None:
    istiod.serve(clusters("a"))
    tokens = []
    for sa in (WAYPOINT, "rotated"):  # a different identity makes a different token for sure
        istiod.token_file(tmp_path / "token", sa=sa)  # "kubelet" rewrites the projected token
        tokens.append(f"Bearer {(tmp_path / 'token').read_text().strip()}")
        call = envoy.DeltaAggregatedResources()
        await call.write(discovery_pb2.DeltaDiscoveryRequest(node=node(), type_url=typeurls.CLUSTER,
                                                             resource_names_subscribe=["*"]))
        await asyncio.wait_for(call.read(), 5)
        call.cancel()
    assert [s.values("authorization") for s in istiod.streams.seen] == [[t] for t in tokens]
    assert tokens[0] != tokens[1]


async def test_upstream_status_reaches_envoy(istiod: Istiod, proxy: XdsProxy,
                                             envoy: ads_pb2_grpc.AggregatedDiscoveryServiceStub) -> None:
    istiod.serve(clusters("a"))

    async def refuse(conn: Connection, context: grpc.aio.ServicerContext) -> None:
        raise StreamRefused(grpc.StatusCode.PERMISSION_DENIED, "not yours")

    istiod.streams.check = refuse
    call = envoy.DeltaAggregatedResources()
    await call.write(discovery_pb2.DeltaDiscoveryRequest(node=node(), type_url=typeurls.CLUSTER))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await asyncio.wait_for(call.read(), 5)
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert info.value.details() == "not yours"
    assert proxy.last_error == (grpc.StatusCode.PERMISSION_DENIED, "not yours")
    await wait_until(lambda: proxy.active == 0, timeout=5, message="downstream stream closed")


async def test_the_control_planes_authenticator_accepts_the_proxied_token(
        istiod: Istiod, proxy: XdsProxy, envoy: ads_pb2_grpc.AggregatedDiscoveryServiceStub) -> None:
    """The real secure-port check: the token authenticates, and the node must claim its identity."""
    istiod.serve(clusters("a"))
    istiod.streams.check = XdsAuthenticator(istiod.authenticators())
    ok = envoy.DeltaAggregatedResources()
    await ok.write(discovery_pb2.DeltaDiscoveryRequest(node=node(), type_url=typeurls.CLUSTER,
                                                       resource_names_subscribe=["*"]))
    assert len((await asyncio.wait_for(ok.read(), 5)).resources) == 1
    ok.cancel()
    other = envoy.DeltaAggregatedResources()
    await other.write(discovery_pb2.DeltaDiscoveryRequest(node=node(namespace="ns2"), type_url=typeurls.CLUSTER))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await asyncio.wait_for(other.read(), 5)
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_missing_token_fails_the_stream_as_unavailable(
        istiod: Istiod, proxy: XdsProxy, tmp_path: Path, envoy: ads_pb2_grpc.AggregatedDiscoveryServiceStub
) -> None:
    istiod.serve(clusters("a"))
    (tmp_path / "token").unlink()
    code, details = await refused(envoy.DeltaAggregatedResources(),
                                  discovery_pb2.DeltaDiscoveryRequest(node=node(), type_url=typeurls.CLUSTER))
    assert code == grpc.StatusCode.UNAVAILABLE
    assert "token file" in details
    assert istiod.streams.seen == []  # nothing went upstream


async def test_unreachable_upstream_fails_the_stream_as_unavailable(istiod: Istiod, tmp_path: Path,
                                                                    short: Path) -> None:
    istiod.token_file(tmp_path / "token")
    proxy = XdsProxy(XdsProxyConfig(socket_path=short / "XDS", upstream=f"127.0.0.1:{free_port()}",
                                    root_cert=istiod.root_path.read_bytes(), token_file=tmp_path / "token"))
    await proxy.start()
    try:
        async with grpc.aio.insecure_channel(f"unix:{proxy.socket_path}") as channel:
            call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).DeltaAggregatedResources()
            code, _ = await refused(call, discovery_pb2.DeltaDiscoveryRequest(node=node(), type_url=typeurls.CLUSTER))
        assert code == grpc.StatusCode.UNAVAILABLE
        assert proxy.last_error is not None and proxy.last_error[0] == grpc.StatusCode.UNAVAILABLE
    finally:
        await proxy.stop(0)


async def test_envoy_going_away_cancels_the_upstream_stream(
        istiod: Istiod, proxy: XdsProxy, envoy: ads_pb2_grpc.AggregatedDiscoveryServiceStub) -> None:
    istiod.serve(clusters("a"))
    call = envoy.DeltaAggregatedResources()
    await call.write(discovery_pb2.DeltaDiscoveryRequest(node=node(), type_url=typeurls.CLUSTER,
                                                         resource_names_subscribe=["*"]))
    await asyncio.wait_for(call.read(), 5)
    assert len(istiod.ads.connections) == 1 and proxy.active == 1
    call.cancel()
    await wait_until(lambda: not istiod.ads.connections, timeout=5, message="upstream stream closed")
    await wait_until(lambda: proxy.active == 0, timeout=5, message="proxy stream finished")


async def test_half_close_reaches_istiod_and_the_end_comes_back(
        istiod: Istiod, proxy: XdsProxy, envoy: ads_pb2_grpc.AggregatedDiscoveryServiceStub) -> None:
    istiod.serve(clusters("a"))
    call = envoy.DeltaAggregatedResources()
    await call.write(discovery_pb2.DeltaDiscoveryRequest(node=node(), type_url=typeurls.CLUSTER,
                                                         resource_names_subscribe=["*"]))
    await asyncio.wait_for(call.read(), 5)
    await call.done_writing()  # istiod sees the end of requests and closes its side
    assert await asyncio.wait_for(call.read(), 5) is grpc.aio.EOF
    assert await call.code() == grpc.StatusCode.OK
    await wait_until(lambda: not istiod.ads.connections and proxy.active == 0, timeout=5)


async def test_plaintext_upstream_never_sends_the_token(istiod: Istiod, tmp_path: Path, short: Path) -> None:
    istiod.serve(clusters("a"))
    istiod.token_file(tmp_path / "token")
    proxy = XdsProxy(XdsProxyConfig(socket_path=short / "XDS", upstream=istiod.plain_address, root_cert=None,
                                    token_file=tmp_path / "token"))
    await proxy.start()
    try:
        async with grpc.aio.insecure_channel(f"unix:{proxy.socket_path}") as channel:
            call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).DeltaAggregatedResources()
            await call.write(discovery_pb2.DeltaDiscoveryRequest(node=node(), type_url=typeurls.CLUSTER,
                                                                 resource_names_subscribe=["*"]))
            assert len((await asyncio.wait_for(call.read(), 5)).resources) == 1
            call.cancel()
    finally:
        await proxy.stop(0)
    [seen] = istiod.streams.seen
    assert not seen.tls and seen.values("authorization") == []


async def test_socket_is_private_and_removed_on_stop(proxy: XdsProxy) -> None:
    assert stat.S_IMODE(proxy.socket_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(proxy.socket_path.parent.stat().st_mode) == 0o700
    await proxy.stop(0)
    assert not proxy.socket_path.exists()


def test_tls_upstream_needs_a_token_file(short: Path) -> None:
    with pytest.raises(ValueError, match="token"):
        XdsProxyConfig(socket_path=short / "XDS", upstream="127.0.0.1:15012", root_cert=b"pem")
    with pytest.raises(ValueError, match="107 bytes"):
        XdsProxy(XdsProxyConfig(socket_path=Path("/tmp") / ("x" * 120) / "XDS", upstream="127.0.0.1:15010",
                                root_cert=None))


async def test_responses_larger_than_grpcs_default_limit_pass(istiod: Istiod, proxy: XdsProxy) -> None:
    """A full CDS/LDS can exceed gRPC's default 4 MiB receive limit; the proxy sets none (as Envoy)."""
    big = {f"c{i}": cluster_pb2.Cluster(name=f"c{i}", alt_stat_name="x" * (1 << 20)) for i in range(5)}
    istiod.serve(ResourceSnapshot.from_messages({typeurls.CLUSTER: big, typeurls.LISTENER: {}}))
    options = [("grpc.max_receive_message_length", -1)]
    async with grpc.aio.insecure_channel(f"unix:{proxy.socket_path}", options=options) as channel:
        call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources()
        await call.write(discovery_pb2.DiscoveryRequest(node=node(), type_url=typeurls.CLUSTER))
        resp = await asyncio.wait_for(call.read(), 10)
        assert resp.ByteSize() > 5 << 20
        assert len(resp.resources) == 5
        call.cancel()
