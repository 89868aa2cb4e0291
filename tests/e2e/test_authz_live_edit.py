"""An AuthorizationPolicy edit reaches connections that are already open, without a listener update.

Authorization filters are ECDS slots (docs/upstream-envoy.md, "Authorization over ECDS"): an edit
is a new filter config, which Envoy applies to the next request of every open HTTP connection.
Before, it was a new ``main_internal`` listener: Envoy drained the changed chain and kept-alive
connections went on with the old policy.  Here an HTTP/1.1 keep-alive connection and an HTTP/2
connection are opened through the real HBONE path before a DENY policy appears; on their next
requests (within 1 s of Envoy taking the config) the path is refused, other paths still pass, the
connections are the same ones (no close, no GOAWAY, the chain's connection count unchanged) and
Envoy received no listener update.
"""

from __future__ import annotations

import asyncio
import json
import struct
import time
import urllib.parse
from pathlib import Path

import aiohttp
import pytest

from tests.support.backends import BackendsFactory
from tests.support.envoy import parse_stats
from tests.support.mesh import ambient_mesh, exclusive_ip
from tests.support.meshyaml import one_service_mesh
from tests.support.ports import alloc_vip
from tests.support.wait import wait_until

pytestmark = pytest.mark.e2e

DENY_ADMIN = """apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: shop}
spec:
  targetRefs: [{kind: Service, group: "", name: cart}]
  action: DENY
  rules:
  - to: [{operation: {paths: ["/admin"]}}]
"""
DENY_SLOT = "authz|http|deny|cart.shop.svc.cluster.local"
#: The chain's HCM stat prefix (``inbound.http_connection_manager``): port 8080.
HCM_STATS = "http.inbound_0.0.0.0_8080;."


class ConnectionLost(AssertionError):
    """The proxy closed (or went away from) a connection the test expected to stay open."""


class Http1Connection:
    """One HTTP/1.1 keep-alive connection; every request goes over the same socket."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, addr: str) -> Http1Connection:
        host, port = addr.rsplit(":", 1)
        return cls(*await asyncio.open_connection(host, int(port)))

    async def get(self, path: str) -> tuple[int, bytes]:
        self.writer.write(f"GET {path} HTTP/1.1\r\nHost: cart.shop:8080\r\n\r\n".encode())
        await self.writer.drain()
        status_line = await self.reader.readline()
        if not status_line:
            raise ConnectionLost("HTTP/1.1 connection closed by the proxy")
        headers: dict[str, str] = {}
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            headers[name.strip().lower()] = value.strip()
        if headers.get("connection", "").lower() == "close":
            raise ConnectionLost(f"the proxy closes the HTTP/1.1 connection after {path}")
        body = await self.reader.readexactly(int(headers.get("content-length", "0")))
        return int(status_line.split()[1]), body

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


class Http2Connection:
    """One cleartext HTTP/2 connection (prior knowledge), one stream per request.

    Minimal on purpose: requests use HPACK literals without indexing (no encoder state), and the
    response's header block is not decoded - the status is told by the body (the pod answers JSON,
    RBAC answers ``RBAC: access denied``), so no decoder state or Huffman table is needed."""

    DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY = 0x0, 0x1, 0x3, 0x4, 0x6, 0x7
    END_STREAM, END_HEADERS, ACK = 0x1, 0x4, 0x1

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.next_stream = 1

    @classmethod
    async def open(cls, addr: str) -> Http2Connection:
        host, port = addr.rsplit(":", 1)
        conn = cls(*await asyncio.open_connection(host, int(port)))
        conn.writer.write(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + conn._frame(cls.SETTINGS, 0, 0, b""))
        await conn.writer.drain()
        return conn

    @staticmethod
    def _frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload

    @staticmethod
    def _literal(name: str, value: str) -> bytes:
        """HPACK "literal header field without indexing, new name" (lengths < 127, no Huffman)."""
        n, v = name.encode(), value.encode()
        return b"\x00" + bytes([len(n)]) + n + bytes([len(v)]) + v

    async def _read_frame(self) -> tuple[int, int, int, bytes]:
        try:
            head = await self.reader.readexactly(9)
            length = int.from_bytes(head[:3], "big")
            payload = await self.reader.readexactly(length)
        except asyncio.IncompleteReadError:
            raise ConnectionLost("HTTP/2 connection closed by the proxy") from None
        return head[3], head[4], int.from_bytes(head[5:9], "big") & 0x7FFFFFFF, payload

    async def get(self, path: str) -> tuple[int, bytes]:
        stream, self.next_stream = self.next_stream, self.next_stream + 2
        block = b"".join(self._literal(k, v) for k, v in (
            (":method", "GET"), (":scheme", "http"), (":path", path), (":authority", "cart.shop:8080")))
        self.writer.write(self._frame(self.HEADERS, self.END_STREAM | self.END_HEADERS, stream, block))
        await self.writer.drain()
        body = b""
        while True:
            kind, flags, sid, payload = await self._read_frame()
            if kind == self.SETTINGS and not flags & self.ACK:
                self.writer.write(self._frame(self.SETTINGS, self.ACK, 0, b""))
            elif kind == self.PING and not flags & self.ACK:
                self.writer.write(self._frame(self.PING, self.ACK, 0, payload))
            elif kind == self.GOAWAY:
                raise ConnectionLost("the proxy sent GOAWAY on the HTTP/2 connection")
            elif sid == stream and kind == self.RST_STREAM:
                raise AssertionError(f"stream {stream} ({path}) reset")
            elif sid == stream and kind in (self.DATA, self.HEADERS):
                if kind == self.DATA:
                    body += payload
                if flags & self.END_STREAM:
                    break
        await self.writer.drain()
        return (403 if body.startswith(b"RBAC: access denied") else 200 if body.startswith(b"{") else 0), body

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


async def envoy_stats(admin_port: int, pattern: str) -> dict[str, int]:
    query = urllib.parse.urlencode({"filter": pattern})
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http, \
            http.get(f"http://127.0.0.1:{admin_port}/stats?{query}") as r:
        return parse_stats(await r.text())


async def test_policy_edit_reaches_open_http1_and_http2_connections(
        tmp_path: Path, backends_factory: BackendsFactory) -> None:
    pods = await backends_factory(1, names=["cart-1"])
    wp, vip = exclusive_ip(), alloc_vip()
    cfg = tmp_path / "cfg"
    cfg.mkdir()
    (cfg / "mesh.yaml").write_text(one_service_mesh("shop", "cart", wp, vip, 8080, pods.port, pods.pods[0].address[0]))
    async with ambient_mesh(tmp_path, cfg) as mesh, mesh.waypoint("shop", "waypoint", wp) as agent, \
            mesh.client([(vip, 8080)], wp, namespace="web", sa="frontend") as client:
        addr = client[(vip, 8080)]
        admin = agent.config.envoy.admin_port

        async def serving() -> bool:
            try:
                c = await Http1Connection.open(addr)
                try:
                    return (await c.get("/"))[0] == 200
                finally:
                    await c.close()
            except (OSError, ConnectionLost):
                return False

        await wait_until(serving, timeout=30, message="cart served through the waypoint")
        h1, h2 = await Http1Connection.open(addr), await Http2Connection.open(addr)
        try:
            for conn in (h1, h2):
                assert (await conn.get("/admin"))[0] == 200  # no policy yet: only the empty slots
                assert json.loads((await conn.get("/other"))[1])["path"] == "/other"
            before = await envoy_stats(admin, r"^(listener_manager\.|" + HCM_STATS.replace(".", r"\.")
                                       + r"downstream_cx_total$|extension_config_discovery\.http_filter\.)")
            assert before[HCM_STATS + "downstream_cx_total"] >= 2

            (cfg / "deny.yaml").write_text(DENY_ADMIN)
            written = time.monotonic()
            update_key = f"extension_config_discovery.http_filter.{DENY_SLOT}.update_success"

            async def config_taken() -> bool:
                return (await envoy_stats(admin, "update_success$")).get(update_key, 0) > before[update_key]

            await wait_until(config_taken, timeout=15, interval=0.02, message="the DENY config reached Envoy")
            taken = time.monotonic()
            for name, conn in (("HTTP/1.1", h1), ("HTTP/2", h2)):
                while (status := (await conn.get("/admin"))[0]) != 403 and time.monotonic() - taken < 1.0:
                    await asyncio.sleep(0.02)
                assert status == 403, f"{name}: /admin still allowed 1 s after Envoy took the DENY config"
                assert (await conn.get("/other"))[0] == 200, f"{name}: /other must still pass"
                assert (await conn.get("/admin"))[0] == 403
            print(f"file write -> config in Envoy {taken - written:.2f} s; 403 on both open connections "
                  f"{time.monotonic() - taken:.2f} s later")

            after = await envoy_stats(admin, r"^(listener_manager\.|" + HCM_STATS.replace(".", r"\.")
                                      + r"downstream_cx_total$)")
            # Same connections: none opened on the chain meanwhile, none closed (the reads above
            # would have failed), and no listener update or drain at all.
            assert after[HCM_STATS + "downstream_cx_total"] == before[HCM_STATS + "downstream_cx_total"]
            for stat in ("listener_manager.lds.update_success", "listener_manager.listener_modified",
                         "listener_manager.listener_in_place_updated", "listener_manager.total_filter_chains_draining"):
                assert after[stat] == before[stat], stat
            assert [r.path for r in pods.pods[0].requests].count("/admin") == 2  # only the two before the edit
        finally:
            await h1.close()
            await h2.close()
