"""Draining like pilot-agent, through the real agent path: when a change replaces a filter chain,
a kept-alive client is told at once to close and reconnects to the new config.

The waypoint runs as ``istiod-lite waypoint run`` runs it (``WaypointAgent``, whose Envoy gets
``--drain-time-s 45 --drain-strategy immediate`` by default); the client reaches it through the
client ztunnel stand-in (HBONE).  Changing the Service's port from ``http`` to ``tcp`` replaces the
port's HTTP chain in ``main_internal`` with a TCP proxy chain.  With Envoy's default (gradual)
strategy a connection on the old chain would most likely keep being served by it for many seconds,
up to the 45 s drain time; with ``immediate`` its next response says ``Connection: close`` (or
the connection is closed), and a new connection is served by the TCP chain: the backend then sees
the request exactly as sent, without the ``x-request-id`` the HTTP chain adds.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from tests.support.backends import BackendsFactory
from tests.support.mesh import ambient_mesh, exclusive_ip
from tests.support.meshyaml import SHOP_WAYPOINT, documents, pod, service
from tests.support.ports import alloc_vip
from tests.support.wait import wait_until

pytestmark = pytest.mark.e2e

#: Envoy's drain time the agent sets by default (Istio's drainDuration).
DRAIN_TIME = 45.0
REQUEST = b"GET /drain HTTP/1.1\r\nHost: reviews.shop.svc.cluster.local\r\n\r\n"


class HttpConnection:
    """One kept-alive HTTP/1.1 connection, read by hand so its fate is visible."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, addr: str) -> HttpConnection:
        host, port = addr.rsplit(":", 1)
        return cls(*await asyncio.open_connection(host, int(port)))

    async def get(self) -> tuple[dict[str, str], dict[str, object]] | None:
        """(response headers, backend's JSON echo), or None if the connection was closed.  A
        response from Envoy itself (e.g. a 503 while clusters change) has an empty echo."""
        try:
            self.writer.write(REQUEST)
            await self.writer.drain()
            head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 10)
        except (OSError, asyncio.IncompleteReadError):
            return None
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
        body = await asyncio.wait_for(self.reader.readexactly(int(headers.get("content-length", "0"))), 10)
        return headers, json.loads(body) if lines[0].startswith("HTTP/1.1 200") else {}

    def close(self) -> None:
        self.writer.close()


def through_http_chain(echo: dict[str, object]) -> bool:
    """The HTTP connection manager adds ``x-request-id``; a TCP proxy passes the bytes as sent."""
    headers = echo["headers"]
    assert isinstance(headers, dict)
    return "x-request-id" in headers


def served(got: tuple[dict[str, str], dict[str, object]] | None) -> dict[str, object]:
    """The backend's echo of a response that reached it (fails on a closed connection or a 5xx)."""
    assert got is not None and got[1], got
    return got[1]


def mesh_yaml(wp: str, vip: str, pod_ip: str, port: int, port_name: str) -> str:
    return SHOP_WAYPOINT.format(wp=wp) + documents(
        service("shop", "reviews", vip, [(port_name, 9080, port)]),
        pod("shop", "reviews-v1", pod_ip, {"app": "reviews"}))


async def test_replaced_chain_tells_kept_alive_clients_to_close_at_once(
        tmp_path: Path, backends_factory: BackendsFactory) -> None:
    pods = await backends_factory(1, names=["reviews-v1"])
    wp, vip = exclusive_ip(), alloc_vip()
    cfg = tmp_path / "cfg"
    cfg.mkdir()
    pod_ip = pods.pods[0].address[0]
    (cfg / "mesh.yaml").write_text(mesh_yaml(wp, vip, pod_ip, pods.port, "http"))
    async with ambient_mesh(tmp_path, cfg) as mesh, mesh.waypoint("shop", "waypoint", wp) as agent, \
            mesh.client([(vip, 9080)], wp) as local:
        addr = local[(vip, 9080)]
        cmd = agent.supervisor.command()
        assert cmd[cmd.index("--drain-time-s") + 1] == "45" and cmd[cmd.index("--drain-strategy") + 1] == "immediate"

        async def http_served() -> bool:
            try:
                conn = await HttpConnection.open(addr)
            except OSError:
                return False
            try:
                got = await conn.get()
                return got is not None and bool(got[1]) and through_http_chain(got[1])
            finally:
                conn.close()

        await wait_until(http_served, timeout=30, message="HTTP through the waypoint")

        kept = await HttpConnection.open(addr)
        try:
            first = await kept.get()
            assert through_http_chain(served(first)) and first is not None
            assert first[0].get("connection", "").lower() != "close"
            second = await kept.get()  # kept alive: the same connection serves again
            assert through_http_chain(served(second)) and second is not None
            assert second[0].get("connection", "").lower() != "close"

            # The port becomes TCP: its HTTP chain is replaced, and drained.
            changed_at = time.monotonic()
            (cfg / "mesh.yaml").write_text(mesh_yaml(wp, vip, pod_ip, pods.port, "tcp"))

            async def new_config_served() -> bool:
                try:
                    conn = await HttpConnection.open(addr)
                except OSError:
                    return False
                try:
                    got = await conn.get()
                    return got is not None and bool(got[1]) and not through_http_chain(got[1])
                finally:
                    conn.close()

            await wait_until(new_config_served, timeout=15, interval=0.1,
                             message="a new connection served by the new (TCP) chain")
            applied = time.monotonic() - changed_at

            # The kept-alive connection: told to close on its next response, or already closed.
            told = await kept.get()
            told_after = time.monotonic() - changed_at
            if told is not None:
                headers, _ = told  # still the old chain, which is draining (its route may now be a 503)...
                assert headers.get("connection", "").lower() == "close", headers  # ...and says so
            assert told_after < DRAIN_TIME / 4, (applied, told_after)
        finally:
            kept.close()

        # A new connection after the drain started is the new config's, for every request on it.
        fresh = await HttpConnection.open(addr)
        try:
            for _ in range(3):
                assert not through_http_chain(served(await fresh.get()))
        finally:
            fresh.close()
