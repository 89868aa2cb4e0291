"""Real traffic through a real waypoint, every hop the product's own: client ztunnel (hbone
forward) -> waypoint Envoy (agent, CA certificate, secure xDS) -> pods (plain, or ambient behind
their ztunnel's HBONE terminator)."""

from __future__ import annotations

import asyncio
import collections
import math
import ssl
from pathlib import Path

import aiohttp
import pytest

from tests.support.backends import BackendsFactory
from tests.support.controlplane import waypoint_resources
from tests.support.mesh import HBONE_PORT, ambient_mesh, exclusive_ip
from tests.support.meshyaml import SHOP_WAYPOINT
from tests.support.ports import alloc_vip
from tests.support.wait import wait_until

pytestmark = pytest.mark.e2e

BASE = SHOP_WAYPOINT + """apiVersion: v1
kind: Service
metadata: {{name: reviews, namespace: shop{svc_labels}}}
spec:
  clusterIP: {vip}
  selector: {{app: reviews}}
  ports: [{{name: http, port: 9080, targetPort: {port}}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: reviews-v1, namespace: shop, labels: {{app: reviews, version: v1}}}}
status: {{podIP: {ip1}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: reviews-v2, namespace: shop, labels: {{app: reviews, version: v2{ambient2}}}}}
status: {{podIP: {ip2}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: reviews, namespace: shop}}
spec:
  host: reviews
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
"""

VS = """apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews, namespace: shop}}
spec:
  hosts: [reviews]
  http:
  - route:
    - {{destination: {{host: reviews, subset: v1}}, weight: {w1}}}
    - {{destination: {{host: reviews, subset: v2}}, weight: {w2}}}
"""


async def send(addr: str, n: int, path: str = "/") -> collections.Counter[str]:
    counts: collections.Counter[str] = collections.Counter()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
        for _ in range(n):
            async with http.get(f"http://{addr}{path}") as r:
                counts[r.headers.get("x-pod", f"status {r.status}")] += 1
    return counts


async def serving(addr: str) -> bool:
    try:
        return not any(k.startswith("status") for k in await send(addr, 1))
    except (aiohttp.ClientError, OSError, TimeoutError):
        return False


def write(cfg: Path, *, wp: str, vip: str, port: int, ip1: str, ip2: str, ambient2: bool = False,
          svc_labels: str = "") -> None:
    (cfg / "mesh.yaml").write_text(BASE.format(wp=wp, vip=vip, port=port, ip1=ip1, ip2=ip2, svc_labels=svc_labels,
                                               ambient2=", istio.io/dataplane-mode: ambient" if ambient2 else ""))


async def test_80_20_split_and_edits(tmp_path: Path, backends_factory: BackendsFactory) -> None:
    pods = await backends_factory(2, names=["reviews-v1", "reviews-v2"])
    wp, vip = exclusive_ip(), alloc_vip()
    cfg = tmp_path / "cfg"
    cfg.mkdir()
    write(cfg, wp=wp, vip=vip, port=pods.port, ip1=pods.pods[0].address[0], ip2=pods.pods[1].address[0])
    (cfg / "vs.yaml").write_text(VS.format(w1=80, w2=20))
    async with ambient_mesh(tmp_path, cfg) as mesh, mesh.waypoint("shop", "waypoint", wp), \
            mesh.client([(vip, 9080)], wp) as local:
        addr = local[(vip, 9080)]
        await wait_until(lambda: serving(addr), timeout=30, message="traffic through the waypoint")
        pods.reset()
        n = 1000
        counts = await send(addr, n)
        # Envoy picks a weighted cluster per request at random: v2's count is Binomial(1000, 0.2),
        # sd = 12.6.  Accept +-5 sd (+-63): a false failure below one in a million.
        sd = math.sqrt(n * 0.2 * 0.8)
        assert set(counts) == {"reviews-v1", "reviews-v2"}, counts
        assert abs(counts["reviews-v2"] - 200) <= 5 * sd, counts
        assert pods.counts() == dict(counts)  # every request reached a real pod

        # Edit: all traffic to v2.
        (cfg / "vs.yaml").write_text(VS.format(w1=0, w2=100))

        async def moved() -> bool:
            return await send(addr, 5) == {"reviews-v2": 5}

        await wait_until(moved, timeout=15, message="traffic moved to v2 after the edit")
        # A broken edit is rejected and the last good VirtualService keeps being served.
        (cfg / "vs.yaml").write_text(VS.format(w1=0, w2=100).replace("weight: 100", "weight: -1"))
        await asyncio.sleep(0.5)
        assert any("spec.http[0].route[1].weight" in str(e) for e in mesh.cp.errors)
        assert await send(addr, 10) == {"reviews-v2": 10}


async def test_plain_and_ambient_pods_refusals_and_unbinding(tmp_path: Path, backends_factory: BackendsFactory) -> None:
    # reviews-v2 is ambient: the waypoint reaches it through HBONE to its ztunnel on <podIP>:15008.
    plain_ip, ambient_ip = exclusive_ip(), exclusive_ip()
    pods = await backends_factory(2, names=["reviews-v1", "reviews-v2"], hosts=[plain_ip, ambient_ip])
    wp, vip = exclusive_ip(), alloc_vip()
    cfg = tmp_path / "cfg"
    cfg.mkdir()
    write(cfg, wp=wp, vip=vip, port=pods.port, ip1=plain_ip, ip2=ambient_ip, ambient2=True)
    async with ambient_mesh(tmp_path, cfg) as mesh, mesh.waypoint("shop", "waypoint", wp), \
            mesh.pod_ztunnels([ambient_ip], "shop", "reviews") as ztunnel, \
            mesh.client([(vip, 9080)], wp) as local:
        addr = local[(vip, 9080)]
        await wait_until(lambda: serving(addr), timeout=30, message="traffic through the waypoint")
        counts = await send(addr, 60)
        assert set(counts) == {"reviews-v1", "reviews-v2"}, counts  # default route: both pods
        async with aiohttp.ClientSession() as http, \
                http.get(f"http://127.0.0.1:{ztunnel.admin.port}/stats?format=json&filter=downstream_rq_total") as r:
            stats = {s["name"]: s.get("value", 0) for s in (await r.json(content_type=None))["stats"]}
        assert sum(v for k, v in stats.items() if k.endswith("downstream_rq_total")) >= 1  # HBONE reached the pod

        # Without a client certificate, 15008 refuses the TLS handshake.
        ctx = ssl.create_default_context(cafile=str(mesh.root))
        ctx.check_hostname = False
        ctx.set_alpn_protocols(["h2"])
        with pytest.raises((ssl.SSLError, ConnectionError, asyncio.IncompleteReadError)):
            reader, writer = await asyncio.open_connection(wp, HBONE_PORT, ssl=ctx)
            writer.write(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
            await writer.drain()
            await asyncio.wait_for(reader.readexactly(9), 5)

        # Opting the Service out of the waypoint removes it from the waypoint's config.
        write(cfg, wp=wp, vip=vip, port=pods.port, ip1=plain_ip, ip2=ambient_ip, ambient2=True,
              svc_labels=", labels: {istio.io/use-waypoint: none}")

        async def gone() -> bool:
            return not await serving(addr)

        await wait_until(gone, timeout=15, message="service removed from the waypoint")
        assert "reviews" not in str(waypoint_resources(mesh.cp))


async def test_service_of_another_waypoint_is_not_routed(tmp_path: Path, backends_factory: BackendsFactory) -> None:
    pods = await backends_factory(2, names=["reviews-v1", "reviews-v2"])
    wp, other_wp, vip = exclusive_ip(), exclusive_ip(), alloc_vip()
    cfg = tmp_path / "cfg"
    cfg.mkdir()
    write(cfg, wp=wp, vip=vip, port=pods.port, ip1=pods.pods[0].address[0], ip2=pods.pods[1].address[0],
          svc_labels=", labels: {istio.io/use-waypoint: other}")
    (cfg / "other.yaml").write_text(f"""apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: other, namespace: shop}}
spec:
  gatewayClassName: istio-waypoint
  addresses: [{{type: IPAddress, value: {other_wp}}}]
  listeners: [{{name: mesh, port: 15008, protocol: HBONE}}]
""")
    async with ambient_mesh(tmp_path, cfg) as mesh, mesh.waypoint("shop", "waypoint", wp), \
            mesh.waypoint("shop", "other", other_wp), \
            mesh.client([(vip, 9080)], wp) as via_wrong, mesh.client([(vip, 9080)], other_wp) as via_right:
        await wait_until(lambda: serving(via_right[(vip, 9080)]), timeout=30, message="traffic via its own waypoint")
        assert not await serving(via_wrong[(vip, 9080)])  # the other waypoint has no chain for this VIP
