"""ECDS (``TypedExtensionConfig``) through the generic ADS server to a real Envoy, SotW and Delta.

Pins what the authorization slots rely on (docs/upstream-envoy.md, "Authorization over ECDS"),
independently of the translator: Envoy subscribes to the names its listeners' ``config_discovery``
filters give, for an HTTP filter and a network filter alike; an updated config reaches the next
request of an open HTTP/1.1 connection with no listener update; and a slot whose config never
arrives (SotW: after the initial fetch timeout) answers 500 instead of letting requests through.
"""

from __future__ import annotations

import asyncio
import socket
import time

import pytest
from envoy.config.core.v3 import config_source_pb2, extension_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.rbac.v3 import rbac_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as http_rbac_pb2
from envoy.extensions.filters.network.rbac.v3 import rbac_pb2 as net_rbac_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from google.protobuf import any_pb2
from google.protobuf.message import Message

from istiod_lite.xds import typeurls
from istiod_lite.xds.resources import ResourceSnapshot
from tests.e2e.test_envoy_xds import Plane, bootstrap, plane  # noqa: F401  (the fixture)
from tests.support.envoy import EnvoyFactory
from tests.support.plain_listener import http_connection_manager
from tests.support.ports import free_port
from tests.support.wait import wait_until

pytestmark = pytest.mark.e2e

HTTP_SLOT, TCP_SLOT = "authz|http|deny|x", "authz|tcp|deny|x"


def _any(m: Message) -> any_pb2.Any:
    a = any_pb2.Any()
    a.Pack(m)
    return a


def _source(type_url: str) -> config_source_pb2.ExtensionConfigSource:
    src = config_source_pb2.ExtensionConfigSource(type_urls=[type_url])
    src.config_source.ads.SetInParent()
    src.config_source.resource_api_version = config_source_pb2.V3
    return src


def http_listener(port: int) -> listener_pb2.Listener:
    rc = route_pb2.RouteConfiguration(name="r")
    route = rc.virtual_hosts.add(name="all", domains=["*"]).routes.add()
    route.match.prefix = "/"
    route.direct_response.status = 200
    route.direct_response.body.inline_string = "ok"
    hcm = http_connection_manager("h", rc)
    router = hcm.http_filters.pop()
    hcm.http_filters.add(name=HTTP_SLOT, config_discovery=_source(_any(http_rbac_pb2.RBAC()).type_url))
    hcm.http_filters.append(router)
    lst = listener_pb2.Listener(name="http")
    lst.address.socket_address.address, lst.address.socket_address.port_value = "127.0.0.1", port
    lst.filter_chains.add().filters.add(name="envoy.filters.network.http_connection_manager", typed_config=_any(hcm))
    return lst


def tcp_listener(port: int, upstream: str) -> listener_pb2.Listener:
    lst = listener_pb2.Listener(name="tcp")
    lst.address.socket_address.address, lst.address.socket_address.port_value = "127.0.0.1", port
    chain = lst.filter_chains.add()
    chain.filters.add(name=TCP_SLOT, config_discovery=_source(_any(net_rbac_pb2.RBAC()).type_url))
    chain.filters.add(name="envoy.filters.network.tcp_proxy",
                      typed_config=_any(tcp_proxy_pb2.TcpProxy(stat_prefix="t", cluster=upstream)))
    return lst


def deny(path: str | None) -> rbac_pb2.RBAC:
    """DENY ``path`` (HTTP), or every connection (``None``, network)."""
    pol = rbac_pb2.Policy()
    if path is None:
        pol.permissions.add().any = True
    else:
        pol.permissions.add().url_path.path.exact = path
    pol.principals.add().any = True
    return rbac_pb2.RBAC(action=rbac_pb2.RBAC.DENY, policies={"p": pol})


def resources(http_port: int, tcp_port: int, configs: dict[str, Message]) -> ResourceSnapshot:
    return ResourceSnapshot.from_messages({
        typeurls.LISTENER: {"http": http_listener(http_port), "tcp": tcp_listener(tcp_port, "xds")},
        typeurls.CLUSTER: {},
        typeurls.EXTENSION_CONFIG: {n: extension_pb2.TypedExtensionConfig(name=n, typed_config=_any(m))
                                    for n, m in configs.items()}})


class KeepAlive:
    """One HTTP/1.1 connection for all requests (a blocking socket: requests are short)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), 2)

    def status(self, path: str) -> int:
        self.sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        data = self.sock.recv(65536)
        assert data, "connection closed by Envoy"
        return int(data.split(b" ", 2)[1])


async def poke(port: int) -> None:
    """One TCP connection with one byte (network RBAC decides on the first byte; the verdict is in
    the ``tcp.rbac.*`` counters - the upstream here may close the connection either way)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"x")
    try:
        await asyncio.wait_for(reader.read(4096), 2)
    except (TimeoutError, OSError):
        pass
    finally:
        writer.close()


@pytest.fixture(params=["GRPC", "DELTA_GRPC"])
def api_type(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def test_filter_configs_by_name_update_open_connections(plane: Plane, api_type: str) -> None:  # noqa: F811
    hp, tp = free_port(), free_port()
    plane.cache.mark_ready()
    plane.cache.set_snapshot("g", resources(hp, tp, {HTTP_SLOT: http_rbac_pb2.RBAC(),
                                                      TCP_SLOT: net_rbac_pb2.RBAC(stat_prefix="tcp.")}))
    envoy = await EnvoyFactory()(bootstrap(plane.port, api_type))
    try:
        await wait_until(lambda: envoy.stat("listener_manager.total_listeners_active", 0),
                         timeout=15, message="listeners active")
        conn = KeepAlive(hp)
        assert conn.status("/a") == 200 and conn.status("/b") == 200
        await poke(tp)
        assert await envoy.stat("tcp.rbac.denied", 0) == 0  # the empty config enforces nothing
        lds_updates = await envoy.stat("listener_manager.lds.update_success")

        plane.cache.set_snapshot("g", resources(hp, tp, {
            HTTP_SLOT: http_rbac_pb2.RBAC(rules=deny("/a")),
            TCP_SLOT: net_rbac_pb2.RBAC(stat_prefix="tcp.", rules=deny(None))}))
        t0 = time.monotonic()
        while conn.status("/a") != 403:
            assert time.monotonic() - t0 < 5, "the open connection never saw the new config"
            await asyncio.sleep(0.02)
        assert conn.status("/b") == 200  # same connection, other path
        await poke(tp)
        await wait_until(lambda: envoy.stat("tcp.rbac.denied", 0), timeout=5, message="network RBAC denied")
        assert await envoy.stat("listener_manager.lds.update_success") == lds_updates  # no listener update
        sub = next(iter(plane.ads.connections.values())).subs[typeurls.EXTENSION_CONFIG]
        assert sub.names == {HTTP_SLOT, TCP_SLOT}  # subscribed by name, as the listeners name them
    finally:
        await envoy.stop()


async def test_missing_filter_config_fails_closed(plane: Plane) -> None:  # noqa: F811
    """SotW has no "does not exist": Envoy waits for the config (the listener stays warming), then,
    after the initial fetch timeout (15 s), answers 500 - never a request let through unchecked."""
    hp, tp = free_port(), free_port()
    plane.cache.mark_ready()
    plane.cache.set_snapshot("g", resources(hp, tp, {}))
    envoy = await EnvoyFactory()(bootstrap(plane.port, "GRPC"), wait_ready=False)
    try:
        def status() -> int:
            try:
                return KeepAlive(hp).status("/a")
            except (OSError, AssertionError):
                return -1

        await wait_until(lambda: status() != -1, timeout=30, interval=0.5, message="listener active")
        assert status() == 500
    finally:
        await envoy.stop()
