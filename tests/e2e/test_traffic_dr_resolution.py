"""DestinationRule resolution and exportTo on real traffic: client ztunnel (hbone forward) -> waypoint
Envoy in namespace ``infra`` (serving namespace ``shop``) -> real HTTP pods.

1. Only the root namespace (istio-system) has a rule: a ``*.local`` wildcard defining subsets
   v1/v2; shop's VirtualService sends everything to subset v2, and every request reaches the v2 pod.
2. shop adds its own rule for the host, exportTo ".", whose subset "v2" selects the *v1* pod: it is
   private to shop, the waypoint in infra does not see it, traffic stays on the v2 pod.
3. The same rule with exportTo "*": the service's namespace now comes before the root namespace,
   subset "v2" means the v1 pod, and every request moves there.
"""

from __future__ import annotations

import asyncio
import collections
from pathlib import Path

import aiohttp
import pytest

from istiod_lite.model.networking import DestinationRule
from tests.support.backends import BackendsFactory
from tests.support.mesh import ambient_mesh, exclusive_ip
from tests.support.meshyaml import documents, namespace, pod, service, waypoint_gateway
from tests.support.ports import alloc_vip
from tests.support.wait import wait_until

pytestmark = pytest.mark.e2e

ROOT_DR = """apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: mesh-subsets, namespace: istio-system}
spec:
  host: "*.local"
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: shop}
spec:
  hosts: [reviews]
  http:
  - route: [{destination: {host: reviews, subset: v2}}]
"""

SHOP_DR = """apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: reviews, namespace: shop}}
spec:
  host: reviews
  exportTo: ["{export}"]
  subsets:
  - {{name: v2, labels: {{version: v1}}}}
"""


async def pods_reached(http: aiohttp.ClientSession, addr: str, n: int = 12) -> collections.Counter[str]:
    """Which pod answered each of ``n`` requests (errors count as their status)."""
    seen: collections.Counter[str] = collections.Counter()
    for _ in range(n):
        try:
            async with http.get(f"http://{addr}/") as r:
                await r.read()
                seen[r.headers.get("x-pod", "") if r.status == 200 else str(r.status)] += 1
        except (aiohttp.ClientError, OSError, TimeoutError) as e:
            seen[type(e).__name__] += 1
    return seen


async def test_root_wildcard_subsets_then_private_then_exported_rule(
        tmp_path: Path, backends_factory: BackendsFactory) -> None:
    pods = await backends_factory(2, names=["reviews-v1", "reviews-v2"])
    v1, v2 = pods.pods
    wp, vip = exclusive_ip(), alloc_vip()
    cfg = tmp_path / "cfg"
    cfg.mkdir()
    (cfg / "mesh.yaml").write_text(documents(
        namespace("infra", None), namespace("istio-system", None),
        namespace("shop", "wp", labels={"istio.io/use-waypoint-namespace": "infra"}),
        waypoint_gateway("infra", wp, "wp", allowed_from="All"),
        service("shop", "reviews", vip, [("http", 9080, pods.port)]),
        pod("shop", v1.name, v1.host, {"app": "reviews", "version": "v1"}),
        pod("shop", v2.name, v2.host, {"app": "reviews", "version": "v2"})))
    (cfg / "root.yaml").write_text(ROOT_DR)
    async with ambient_mesh(tmp_path, cfg) as mesh, mesh.waypoint("infra", "wp", wp), \
            mesh.client([(vip, 9080)], wp) as local, \
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5),
                                  connector=aiohttp.TCPConnector(force_close=True)) as http:
        addr = local[(vip, 9080)]

        # 1. The root namespace's wildcard rule gives the subsets: only the v2 pod answers.
        async def only(name: str) -> bool:
            return set(await pods_reached(http, addr)) == {name}

        await wait_until(lambda: only("reviews-v2"), timeout=30, message="subset v2 (root-namespace rule) served")

        # 2. A private rule in shop is invisible to the waypoint in infra: still the v2 pod.
        # Its output is the same, so there is no push to wait for: wait until the control plane holds
        # the rule, then long enough for a (wrong) push to reach Envoy.
        (cfg / "shop-dr.yaml").write_text(SHOP_DR.format(export="."))
        await wait_until(lambda: mesh.cp.config.get(DestinationRule, "shop", "reviews") is not None, timeout=10,
                         message="shop's private rule loaded")
        await asyncio.sleep(1.0)
        assert (await pods_reached(http, addr, 20)) == {"reviews-v2": 20}

        # 3. Exported: shop's rule now applies before the root one; subset "v2" is the v1 pod.
        (cfg / "shop-dr.yaml").write_text(SHOP_DR.format(export="*"))
        await wait_until(lambda: only("reviews-v1"), timeout=15, message="shop's exported rule applied")
        assert (await pods_reached(http, addr, 20)) == {"reviews-v1": 20}
