"""The ADS server against a real Envoy, SotW (GRPC) and Delta (DELTA_GRPC).

The xDS layer is driven directly through its ``SnapshotCache`` with hand-built resources, so these
tests pin protocol behaviour independently of the translator: initial sync, update, removal, NACK
handling (old config kept, ERROR status, no resend loop, a fix converges) and a server restart
during which Envoy keeps serving and never receives an empty config.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import grpc
import pytest
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from google.protobuf import any_pb2, empty_pb2

from istiod_lite.xds import typeurls
from istiod_lite.xds.cache import SnapshotCache
from istiod_lite.xds.resources import ResourceSnapshot
from istiod_lite.xds.server import AdsServer
from tests.support.envoy import EnvoyFactory, EnvoyProcess
from tests.support.plain_listener import http_connection_manager
from tests.support.ports import free_port
from tests.support.wait import wait_until

pytestmark = pytest.mark.e2e


def direct_listener(name: str, port: int, body: str) -> listener_pb2.Listener:
    rc = route_pb2.RouteConfiguration(name=name)
    route = rc.virtual_hosts.add(name="all", domains=["*"]).routes.add()
    route.match.prefix = "/"
    route.direct_response.status = 200
    route.direct_response.body.inline_string = body
    hcm = any_pb2.Any()
    hcm.Pack(http_connection_manager(name, rc))
    lst = listener_pb2.Listener(name=name)
    lst.address.socket_address.address = "127.0.0.1"
    lst.address.socket_address.port_value = port
    lst.filter_chains.add().filters.add(name="envoy.filters.network.http_connection_manager", typed_config=hcm)
    return lst


def broken_listener(name: str, port: int) -> listener_pb2.Listener:
    """Envoy rejects this: the HTTP connection manager's config is of the wrong type."""
    lst = direct_listener(name, port, "x")
    lst.filter_chains[0].filters[0].typed_config.Pack(empty_pb2.Empty())
    return lst


def snapshot(*listeners: listener_pb2.Listener) -> ResourceSnapshot:
    return ResourceSnapshot.from_messages({typeurls.LISTENER: {lst.name: lst for lst in listeners},
                                           typeurls.CLUSTER: {}})


@dataclass
class Plane:
    cache: SnapshotCache
    ads: AdsServer
    server: grpc.aio.Server
    port: int

    async def restart(self, ready_after: float) -> None:
        """Stop the gRPC server, start a fresh one (empty, not ready) on the same port."""
        await self.server.stop(0)
        self.cache = SnapshotCache(lambda node: "g")
        self.ads = AdsServer(self.cache)
        self.server = grpc.aio.server()
        self.ads.register(self.server)
        self.server.add_insecure_port(f"127.0.0.1:{self.port}")
        await self.server.start()
        await asyncio.sleep(ready_after)


@pytest.fixture
async def plane() -> AsyncIterator[Plane]:
    cache = SnapshotCache(lambda node: "g")
    ads = AdsServer(cache)
    server = grpc.aio.server()
    ads.register(server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    p = Plane(cache, ads, server, port)
    yield p
    await p.server.stop(0)


def bootstrap(xds_port: int, api_type: str) -> dict[str, object]:
    return {
        "node": {"id": "sidecar~127.0.0.1~test.default~default.svc.cluster.local", "cluster": "test"},
        "dynamic_resources": {
            "ads_config": {"api_type": api_type, "transport_api_version": "V3",
                           "grpc_services": [{"envoy_grpc": {"cluster_name": "xds"}}]},
            "cds_config": {"ads": {}, "resource_api_version": "V3"},
            "lds_config": {"ads": {}, "resource_api_version": "V3"},
        },
        "static_resources": {"clusters": [{
            "name": "xds", "type": "STATIC", "connect_timeout": "1s",
            "typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}}}},
            "load_assignment": {"cluster_name": "xds", "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
                "socket_address": {"address": "127.0.0.1", "port_value": xds_port}}}}]}]},
        }]},
    }


async def get(port: int) -> str:
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as s, \
                s.get(f"http://127.0.0.1:{port}/") as r:
            return await r.text()
    except (aiohttp.ClientError, TimeoutError):
        return ""


async def start_envoy(plane: Plane, api_type: str) -> EnvoyProcess:
    factory = EnvoyFactory()
    return await factory(bootstrap(plane.port, api_type))


@pytest.fixture(params=["GRPC", "DELTA_GRPC"])
def api_type(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def test_sync_update_and_removal(plane: Plane, api_type: str) -> None:
    p1, p2 = free_port(), free_port()
    plane.cache.mark_ready()
    plane.cache.set_snapshot("g", snapshot(direct_listener("one", p1, "v1")))
    envoy = await start_envoy(plane, api_type)
    try:
        await wait_until(lambda: get(p1), timeout=15, message="listener one serving")
        assert await get(p1) == "v1"
        plane.cache.set_snapshot("g", snapshot(direct_listener("one", p1, "v2"), direct_listener("two", p2, "t")))
        await wait_until(lambda: _equals(get(p1), "v2"), timeout=10, message="update applied")
        await wait_until(lambda: _equals(get(p2), "t"), timeout=10, message="added listener serving")
        plane.cache.set_snapshot("g", snapshot(direct_listener("two", p2, "t")))
        await wait_until(lambda: _equals(get(p1), ""), timeout=10, message="removed listener gone")
        assert set(await envoy.listeners()) == {"two"}
        conn = next(iter(plane.ads.connections.values()))
        await wait_until(lambda: conn.subs[typeurls.LISTENER].state.value == "SYNCED", timeout=5,
                         message="LDS acked")
    finally:
        await envoy.stop()


async def _equals(coro: object, value: str) -> bool:
    return await coro == value  # type: ignore[misc]


async def test_nack_keeps_old_config_without_resend_loop(plane: Plane, api_type: str) -> None:
    p1 = free_port()
    plane.cache.mark_ready()
    plane.cache.set_snapshot("g", snapshot(direct_listener("one", p1, "good")))
    envoy = await start_envoy(plane, api_type)
    try:
        await wait_until(lambda: _equals(get(p1), "good"), timeout=15, message="initial config")
        conn = next(iter(plane.ads.connections.values()))
        lds = conn.subs[typeurls.LISTENER]
        plane.cache.set_snapshot("g", snapshot(broken_listener("one", p1)))
        await wait_until(lambda: lds.state.value == "ERROR", timeout=10, message="NACK recorded")
        assert "one" in lds.last_error
        sent = lds.responses
        await asyncio.sleep(1.5)
        assert lds.responses == sent, "rejected config must not be resent"
        assert await get(p1) == "good"  # Envoy kept its last good listener
        assert await envoy.stat("listener_manager.lds.update_rejected") == 1
        plane.cache.set_snapshot("g", snapshot(direct_listener("one", p1, "fixed")))
        await wait_until(lambda: _equals(get(p1), "fixed"), timeout=10, message="fix applied")
        await wait_until(lambda: lds.state.value == "SYNCED", timeout=5, message="fix acked")
    finally:
        await envoy.stop()


async def test_server_restart_keeps_envoy_serving(plane: Plane, api_type: str) -> None:
    p1 = free_port()
    plane.cache.mark_ready()
    plane.cache.set_snapshot("g", snapshot(direct_listener("one", p1, "v1")))
    envoy = await start_envoy(plane, api_type)
    try:
        await wait_until(lambda: _equals(get(p1), "v1"), timeout=15, message="initial config")
        await plane.restart(ready_after=0)
        # The new server is up but has no config yet: streams are refused, Envoy keeps serving.
        for _ in range(10):
            assert await get(p1) == "v1"
            await asyncio.sleep(0.1)
        plane.cache.set_snapshot("g", snapshot(direct_listener("one", p1, "v2")))
        plane.cache.mark_ready()
        await wait_until(lambda: _equals(get(p1), "v2"), timeout=20, message="reconnected and updated")
        assert await envoy.stat("listener_manager.listener_removed", 0) == 0  # never an empty LDS
    finally:
        await envoy.stop()
