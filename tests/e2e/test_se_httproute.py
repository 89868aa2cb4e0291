"""Real traffic through a real waypoint for ServiceEntries and Gateway API HTTPRoutes: client
ztunnel (hbone forward) -> waypoint Envoy (agent, CA certificate, secure xDS) -> real HTTP backends.

* a STATIC ServiceEntry whose only endpoint is a loopback "external" server, reached at its VIP;
* an HTTPRoute attached to a Service splitting 50/50 between two other Services of the waypoint;
* an HTTPRoute header match sending one client's requests to a specific backend.
"""

from __future__ import annotations

import collections
import math
from pathlib import Path

import aiohttp
import pytest

from tests.support.backends import BackendGroup, BackendsFactory
from tests.support.mesh import ambient_mesh, exclusive_ip
from tests.support.meshyaml import SHOP_WAYPOINT
from tests.support.ports import alloc_vip, alloc_vips
from tests.support.wait import wait_until

pytestmark = pytest.mark.e2e

EXTERNAL = """apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: payments, namespace: shop}}
spec:
  hosts: [payments.example.com]
  addresses: [{vip}]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  endpoints: [{{address: {ip}, ports: {{http: {port}}}}}]
"""

SERVICES = """apiVersion: v1
kind: Service
metadata: {{name: reviews, namespace: shop}}
spec:
  clusterIP: {vip}
  selector: {{app: reviews}}
  ports: [{{name: http, port: 9080, targetPort: {port}}}]
---
apiVersion: v1
kind: Service
metadata: {{name: reviews-v1, namespace: shop}}
spec:
  clusterIP: {vip1}
  selector: {{app: reviews, version: v1}}
  ports: [{{name: http, port: 9080, targetPort: {port}}}]
---
apiVersion: v1
kind: Service
metadata: {{name: reviews-v2, namespace: shop}}
spec:
  clusterIP: {vip2}
  selector: {{app: reviews, version: v2}}
  ports: [{{name: http, port: 9080, targetPort: {port}}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: reviews-v1, namespace: shop, labels: {{app: reviews, version: v1}}}}
status: {{podIP: {ip1}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: reviews-v2, namespace: shop, labels: {{app: reviews, version: v2}}}}
status: {{podIP: {ip2}}}
"""

SPLIT = """apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: reviews, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: reviews}]
  rules:
  - matches: [{headers: [{name: x-user, value: jason}]}]
    backendRefs: [{name: reviews-v2, port: 9080}]
  - backendRefs:
    - {name: reviews-v1, port: 9080, weight: 50}
    - {name: reviews-v2, port: 9080, weight: 50}
"""


async def send(addr: str, n: int, headers: dict[str, str] | None = None) -> collections.Counter[str]:
    """``n`` sequential GETs; counts of the answering pod (``x-pod``), or of the status if none."""
    counts: collections.Counter[str] = collections.Counter()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
        for _ in range(n):
            async with http.get(f"http://{addr}/", headers=headers or {}) as r:
                counts[r.headers.get("x-pod", f"status {r.status}")] += 1
    return counts


async def serving(addr: str, pod: str | None = None) -> bool:
    try:
        got = await send(addr, 1)
    except (aiohttp.ClientError, OSError, TimeoutError):
        return False
    return not any(k.startswith("status") for k in got) and (pod is None or pod in got)


async def test_service_entry_to_a_loopback_external_host(tmp_path: Path, backends_factory: BackendsFactory) -> None:
    """A STATIC ServiceEntry bound to the waypoint: traffic to its VIP reaches its endpoint (the
    port taken from ``endpoints[].ports`` by name), with the client's Host kept."""
    external = await backends_factory(1, names=["payments-external"])
    wp, vip = exclusive_ip(), alloc_vip()
    ip, port = external.pods[0].address
    cfg = tmp_path / "cfg"
    cfg.mkdir()
    (cfg / "mesh.yaml").write_text(SHOP_WAYPOINT.format(wp=wp) + EXTERNAL.format(vip=vip, ip=ip, port=port))
    async with ambient_mesh(tmp_path, cfg) as mesh, mesh.waypoint("shop", "waypoint", wp), \
            mesh.client([(vip, 80)], wp) as local:
        addr = local[(vip, 80)]
        await wait_until(lambda: serving(addr), timeout=15, message="traffic through the waypoint to the entry")
        external.reset()
        assert await send(addr, 20) == {"payments-external": 20}
        assert external.counts() == {"payments-external": 20}  # every request reached the real endpoint
        assert all(r.header("host") == addr for r in external.pods[0].requests)


async def _split_mesh(tmp_path: Path, backends_factory: BackendsFactory) -> tuple[Path, str, BackendGroup, str]:
    pods = await backends_factory(2, names=["reviews-v1", "reviews-v2"])
    wp = exclusive_ip()
    vip, vip1, vip2 = alloc_vips(3)
    cfg = tmp_path / "cfg"
    cfg.mkdir()
    (cfg / "mesh.yaml").write_text(SHOP_WAYPOINT.format(wp=wp) + SERVICES.format(
        vip=vip, vip1=vip1, vip2=vip2, port=pods.port, ip1=pods.pods[0].address[0], ip2=pods.pods[1].address[0]))
    (cfg / "route.yaml").write_text(SPLIT)
    return cfg, wp, pods, vip


async def test_httproute_50_50_split_between_two_services(tmp_path: Path, backends_factory: BackendsFactory) -> None:
    cfg, wp, pods, vip = await _split_mesh(tmp_path, backends_factory)
    async with ambient_mesh(tmp_path, cfg) as mesh, mesh.waypoint("shop", "waypoint", wp), \
            mesh.client([(vip, 9080)], wp) as local:
        addr = local[(vip, 9080)]
        await wait_until(lambda: serving(addr), timeout=15, message="traffic through the waypoint")
        pods.reset()
        n = 400
        counts = await send(addr, n)
        # Envoy draws a weighted cluster per request: reviews-v2's count is Binomial(400, 0.5), sd = 10.
        # Accept +-5 sd (+-50): a false failure below one in a million.
        sd = math.sqrt(n * 0.5 * 0.5)
        assert set(counts) == {"reviews-v1", "reviews-v2"}, counts
        assert abs(counts["reviews-v2"] - n / 2) <= 5 * sd, counts
        assert pods.counts() == dict(counts)


async def test_httproute_header_match_picks_a_backend(tmp_path: Path, backends_factory: BackendsFactory) -> None:
    cfg, wp, pods, vip = await _split_mesh(tmp_path, backends_factory)
    async with ambient_mesh(tmp_path, cfg) as mesh, mesh.waypoint("shop", "waypoint", wp), \
            mesh.client([(vip, 9080)], wp) as local:
        addr = local[(vip, 9080)]
        await wait_until(lambda: serving(addr), timeout=15, message="traffic through the waypoint")
        pods.reset()
        assert await send(addr, 30, {"x-user": "jason"}) == {"reviews-v2": 30}
        assert pods.by_name["reviews-v2"].count == 30 and pods.by_name["reviews-v1"].count == 0
        # Without the header the split applies: both backends answer (P(one side only) = 2 * 0.5**30).
        assert set(await send(addr, 30)) == {"reviews-v1", "reviews-v2"}
        # Removing the HTTPRoute puts the Service's own pods back (the default route).
        (cfg / "route.yaml").unlink()

        async def default_route() -> bool:
            got = await send(addr, 20, {"x-user": "jason"})
            return set(got) == {"reviews-v1", "reviews-v2"}

        await wait_until(default_route, timeout=10, message="default route after the HTTPRoute was removed")
