"""A VirtualService ``tcp`` route through a real waypoint: connections to a TCP service (port name
``tcp``) are split between two subsets by weight, one pick per connection (tcp_proxy
``weighted_clusters``), and an edit moves them.

The pods are plain asyncio TCP servers: each answers one line with its name and the line it got.
"""

from __future__ import annotations

import asyncio
import collections
import json
import math
from pathlib import Path

import aiohttp
import pytest

from tests.support.mesh import ambient_mesh, exclusive_ip
from tests.support.meshyaml import SHOP_WAYPOINT, versioned_service
from tests.support.ports import alloc_pod_ip, alloc_vip, port_free_on_all
from tests.support.wait import wait_until

pytestmark = pytest.mark.e2e

CONFIG = SHOP_WAYPOINT + versioned_service("echo", "tcp", 9000)

VS = """apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: echo, namespace: shop}}
spec:
  hosts: [echo]
  tcp:
  - route:
    - {{destination: {{host: echo, subset: v1}}, weight: {w1}}}
    - {{destination: {{host: echo, subset: v2}}, weight: {w2}}}
"""


class TcpPod:
    """Answers each connection's first line with ``<name> <line>``; counts connections."""

    def __init__(self, name: str, host: str, port: int) -> None:
        self.name, self.host, self.port = name, host, port
        self.connections = 0
        self._server: asyncio.Server | None = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            line = await asyncio.wait_for(reader.readline(), 10)
            writer.write(f"{self.name} {line.decode().strip()}\n".encode())
            await writer.drain()
        except (OSError, TimeoutError):
            pass
        finally:
            writer.close()

    async def __aenter__(self) -> TcpPod:
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


async def exchange(addr: str, text: str) -> str:
    """One connection through the client's ztunnel: send a line, return the answer ("" if none)."""
    host, port = addr.rsplit(":", 1)
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, int(port)), 5)
    try:
        writer.write(text.encode() + b"\n")
        await writer.drain()
        return (await asyncio.wait_for(reader.readline(), 5)).decode().strip()
    finally:
        writer.close()


async def tcp_proxy_updated(admin_port: int) -> bool:
    """The active listener routes to v2 only (``weight: 100``) and no listener is warming."""
    async with aiohttp.ClientSession() as http, \
            http.get(f"http://127.0.0.1:{admin_port}/config_dump", params={"resource": "dynamic_listeners"}) as r:
        listeners = (await r.json(content_type=None)).get("configs", [])
    if any("warming_state" in lis for lis in listeners):
        return False
    active = json.dumps([lis.get("active_state", {}) for lis in listeners])
    return '"weight": 100' in active and "tcp/v1|echo" not in active


async def test_tcp_weighted_split_between_subsets(tmp_path: Path) -> None:
    ip1, ip2 = alloc_pod_ip(), alloc_pod_ip()
    port = port_free_on_all([ip1, ip2])
    wp, vip = exclusive_ip(), alloc_vip()
    cfg = tmp_path / "cfg"
    cfg.mkdir()
    (cfg / "mesh.yaml").write_text(CONFIG.format(wp=wp, vip=vip, port=port, ip1=ip1, ip2=ip2))
    (cfg / "vs.yaml").write_text(VS.format(w1=50, w2=50))
    async with TcpPod("echo-v1", ip1, port) as v1, TcpPod("echo-v2", ip2, port) as v2, \
            ambient_mesh(tmp_path, cfg) as mesh, mesh.waypoint("shop", "waypoint", wp) as agent, \
            mesh.client([(vip, 9000)], wp) as local:
        addr = local[(vip, 9000)]

        async def answered() -> bool:
            try:
                return (await exchange(addr, "ping")).endswith(" ping")
            except (OSError, TimeoutError):
                return False

        await wait_until(answered, timeout=30, message="TCP through the waypoint")
        v1.connections = v2.connections = 0
        n = 200
        counts: collections.Counter[str] = collections.Counter()
        for i in range(n):
            name, _, echoed = (await exchange(addr, f"hello {i}")).partition(" ")
            assert echoed == f"hello {i}"  # the bytes went through unchanged, both ways
            counts[name] += 1
        # One weighted pick per connection: echo-v2's count is Binomial(200, 0.5), sd 7.1; accept
        # +-5 sd (+-35), a false failure below one in a million.
        sd = math.sqrt(n * 0.25)
        print(f"\ntcp 50/50: {n} connections -> {dict(counts)} (tolerance +-{5 * sd:.0f})")
        assert set(counts) == {"echo-v1", "echo-v2"}, counts
        assert abs(counts["echo-v2"] - n / 2) <= 5 * sd, counts
        assert (v1.connections, v2.connections) == (counts["echo-v1"], counts["echo-v2"])

        # Edit: every new connection to v2 (once the waypoint's listener has the new tcp_proxy).
        (cfg / "vs.yaml").write_text(VS.format(w1=0, w2=100))
        await wait_until(lambda: tcp_proxy_updated(agent.config.envoy.admin_port), timeout=15,
                         message="the 0/100 route in the waypoint's active listener")
        after = collections.Counter([(await exchange(addr, "y")).split(" ")[0] for _ in range(50)])
        print(f"tcp 0/100: 50 connections -> {dict(after)}")
        assert after == {"echo-v2": 50}
