"""Routes over RDS, proven on the real ambient path: a VirtualService edit reaches connections that are
already open, on their next request, without a listener update or a drain.

client -> ``hbone forward`` (the client's ztunnel) -> waypoint Envoy (agent, CA certificate, secure
xDS) -> two plain HTTP pods.  An HTTP/1.1 keep-alive connection and a cleartext HTTP/2 connection
are opened while the VirtualService sends everything to ``reviews-v1``; the VirtualService is then
rewritten to send everything to ``reviews-v2``, and each connection keeps sending requests.  Both
must be routed to v2 within 1 s of the file write, on the very same connection (the clients in
``tests/support/rawhttp.py`` own one socket each and fail if the server closes it or sends GOAWAY),
and Envoy must have received an RDS update but no listener update (no drain).  With routes inline
in the listener (Istio's waypoint shape), the edit replaced the service's filter chain and open
connections kept the old routes while it drained.
"""

from __future__ import annotations

import asyncio
import time
import urllib.request
from pathlib import Path

import pytest

from tests.support.backends import BackendsFactory
from tests.support.envoy import parse_stats
from tests.support.mesh import ambient_mesh, exclusive_ip
from tests.support.meshyaml import SHOP_WAYPOINT, versioned_service
from tests.support.ports import alloc_vip
from tests.support.rawhttp import H2cConnection, Http1Connection
from tests.support.wait import wait_until

pytestmark = pytest.mark.e2e

BASE = SHOP_WAYPOINT + versioned_service("reviews", "http", 9080)

VS = """apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews, namespace: shop}}
spec:
  hosts: [reviews]
  http:
  - route:
    - {{destination: {{host: reviews, subset: {subset}}}}}
"""

ROUTE = "inbound-vip|9080|http|reviews.shop.svc.cluster.local"
#: From the file write to both open connections being routed by the new VirtualService.
DEADLINE = 1.0


def envoy_stats(admin_port: int) -> dict[str, int]:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/stats", timeout=5) as r:
        return parse_stats(r.read().decode())


def rds_updates(stats: dict[str, int]) -> int:
    """RDS updates Envoy accepted for the service's route configuration."""
    return sum(v for k, v in stats.items() if k.endswith(f".rds.{ROUTE}.update_success"))


async def pod_of_h1(conn: Http1Connection) -> str:
    status, headers, _ = await conn.get(authority="reviews")
    return headers.get("x-pod", f"status {status}")


async def pod_of_h2(conn: H2cConnection) -> str:
    return str((await conn.get(authority="reviews"))["pod"])


async def test_open_connections_follow_a_virtual_service_edit(tmp_path: Path, backends_factory: BackendsFactory
                                                              ) -> None:
    pods = await backends_factory(2, names=["reviews-v1", "reviews-v2"])
    wp, vip = exclusive_ip(), alloc_vip()
    cfg = tmp_path / "cfg"
    cfg.mkdir()
    (cfg / "mesh.yaml").write_text(BASE.format(wp=wp, vip=vip, port=pods.port, ip1=pods.pods[0].address[0],
                                               ip2=pods.pods[1].address[0]))
    (cfg / "vs.yaml").write_text(VS.format(subset="v1"))
    async with ambient_mesh(tmp_path, cfg) as mesh, mesh.waypoint("shop", "waypoint", wp) as agent, \
            mesh.client([(vip, 9080)], wp) as local:
        host, port = local[(vip, 9080)].rsplit(":", 1)

        async def serving_v1() -> bool:
            try:
                conn = await Http1Connection.open(host, int(port))
                try:
                    return await pod_of_h1(conn) == "reviews-v1"
                finally:
                    await conn.close()
            except (OSError, AssertionError, ValueError, IndexError):
                return False

        await wait_until(serving_v1, timeout=30, message="traffic through the waypoint")
        h1 = await Http1Connection.open(host, int(port))
        h2 = await H2cConnection.open(host, int(port))
        try:
            for _ in range(3):
                assert await pod_of_h1(h1) == "reviews-v1"
                assert await pod_of_h2(h2) == "reviews-v1"
            admin = agent.config.envoy.admin_port
            before = await asyncio.to_thread(envoy_stats, admin)

            t0 = time.monotonic()
            (cfg / "vs.yaml").write_text(VS.format(subset="v2"))
            moved: dict[str, float] = {}
            while len(moved) < 2 and time.monotonic() - t0 < 5:
                for name, probe in (("http/1.1", pod_of_h1(h1)), ("h2c", pod_of_h2(h2))):
                    pod = await probe
                    if name in moved:
                        assert pod == "reviews-v2", f"{name}: back to {pod} after the edit"
                    elif pod == "reviews-v2":
                        moved[name] = time.monotonic() - t0
                    else:
                        assert pod == "reviews-v1", pod
                await asyncio.sleep(0.01)
            print(f"new routes on open connections after the VirtualService write: "
                  f"{ {k: f'{v * 1000:.0f} ms' for k, v in moved.items()} }")
            assert set(moved) == {"http/1.1", "h2c"}, f"still on the old routes after 5 s: {moved}"
            assert max(moved.values()) <= DEADLINE, moved

            # Same connections all along: each client owns one socket and raises if the server closed
            # it; a few more requests prove it is still open and routed by the new VirtualService.
            for _ in range(5):
                assert await pod_of_h1(h1) == "reviews-v2"
                assert await pod_of_h2(h2) == "reviews-v2"
            assert h2.goaway is None
            after = await asyncio.to_thread(envoy_stats, admin)
            assert rds_updates(after) > rds_updates(before)  # the edit came as an RDS update...
            for key in ("listener_manager.lds.update_success", "listener_manager.listener_modified",
                        "listener_manager.listener_added", "listener_manager.listener_removed"):
                assert after.get(key, 0) == before.get(key, 0), key  # ...and no listener changed or drained
            assert after.get("listener_manager.total_listeners_draining", 0) == 0
        finally:
            await h1.close()
            await h2.close()
