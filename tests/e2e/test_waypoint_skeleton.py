"""Walking skeleton end to end: YAML directory -> control plane -> real Envoy waypoint -> real pods.

The waypoint Envoy is started from the bootstrap that ``istiod-lite waypoint bootstrap`` prints
(the real CLI, as a subprocess), so the node identity the server sees is the one users get.
"""

from __future__ import annotations

import asyncio
import collections
import json
import math
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from tests.support.backends import BackendsFactory
from tests.support.controlplane import ServerProcess, control_plane
from tests.support.envoy import EnvoyFactory
from tests.support.ports import alloc_vip
from tests.support.wait import wait_until

pytestmark = pytest.mark.e2e

CONFIG = """apiVersion: v1
kind: Namespace
metadata: {{name: shop, labels: {{istio.io/use-waypoint: waypoint}}}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: waypoint, namespace: shop}}
spec:
  gatewayClassName: istio-waypoint
  addresses: [{{type: IPAddress, value: 127.0.1.1}}]
  listeners: [{{name: mesh, port: 15008, protocol: HBONE}}]
---
apiVersion: v1
kind: Service
metadata: {{name: reviews, namespace: shop}}
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
metadata: {{name: reviews-v2, namespace: shop, labels: {{app: reviews, version: v2}}}}
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


def cli_bootstrap(xds_port: int, sotw: bool = False) -> dict[str, object]:
    cmd = [sys.executable, "-m", "istiod_lite.cli.main", "waypoint", "bootstrap", "--name", "waypoint",
           "--namespace", "shop", "--ip", "127.0.1.1", "--xds-address", f"127.0.0.1:{xds_port}"]
    out = subprocess.run(cmd + (["--sotw"] if sotw else []), check=True, capture_output=True, text=True).stdout
    boot: dict[str, object] = json.loads(out)
    boot.pop("admin")  # the fixture binds the admin port itself (port 0, read back)
    return boot


async def send(vip: str, n: int) -> collections.Counter[str]:
    counts: collections.Counter[str] = collections.Counter()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
        for _ in range(n):
            async with http.get(f"http://{vip}:9080/") as r:
                counts[r.headers.get("x-pod", f"status {r.status}")] += 1
    return counts


async def serving(vip: str) -> bool:
    try:
        return not any(k.startswith("status") for k in await send(vip, 1))
    except (aiohttp.ClientError, OSError, TimeoutError):
        return False


def write_config(cfg: Path, vip: str, port: int, ip1: str, ip2: str, w1: int, w2: int) -> None:
    (cfg / "mesh.yaml").write_text(CONFIG.format(vip=vip, port=port, ip1=ip1, ip2=ip2))
    (cfg / "vs.yaml").write_text(VS.format(w1=w1, w2=w2))


async def test_80_20_split_through_real_envoy(
    tmp_path: Path, backends_factory: BackendsFactory, envoy_factory: EnvoyFactory
) -> None:
    pods = await backends_factory(2, names=["reviews-v1", "reviews-v2"])
    vip = alloc_vip()
    cfg = tmp_path / "cfg"
    cfg.mkdir()
    write_config(cfg, vip, pods.port, pods.pods[0].address[0], pods.pods[1].address[0], 80, 20)
    async with control_plane(cfg) as cp:
        await envoy_factory(cli_bootstrap(cp.grpc_port))
        await wait_until(lambda: serving(vip), timeout=20, message="waypoint listener serving the VIP")
        pods.reset()
        n = 1000
        counts = await send(vip, n)
        # Envoy picks a weighted cluster per request at random: v2's count is Binomial(1000, 0.2),
        # sd = 12.6.  Accept +-5 sd (+-63), a false failure chance below 1e-6.
        sd = math.sqrt(n * 0.2 * 0.8)
        assert set(counts) == {"reviews-v1", "reviews-v2"}, counts
        assert abs(counts["reviews-v2"] - 200) <= 5 * sd, counts
        assert sum(counts.values()) == n
        assert pods.counts() == dict(counts)  # every request reached a real pod


async def test_subprocess_server_sotw_follows_file_edits(
    tmp_path: Path, backends_factory: BackendsFactory, envoy_factory: EnvoyFactory
) -> None:
    pods = await backends_factory(2, names=["reviews-v1", "reviews-v2"])
    vip = alloc_vip()
    cfg = tmp_path / "cfg"
    cfg.mkdir()
    write_config(cfg, vip, pods.port, pods.pods[0].address[0], pods.pods[1].address[0], 100, 0)
    server = ServerProcess(cfg, tmp_path / "server.log")
    await server.start()
    try:
        await envoy_factory(cli_bootstrap(server.grpc_port, sotw=True))
        await wait_until(lambda: serving(vip), timeout=20, message="waypoint listener serving the VIP")
        assert await send(vip, 20) == {"reviews-v1": 20}
        (cfg / "vs.yaml").write_text(VS.format(w1=0, w2=100))

        async def moved() -> bool:
            return await send(vip, 5) == {"reviews-v2": 5}

        await wait_until(moved, timeout=15, message="traffic moved to v2 after the file edit")
        # A broken edit is rejected and the last good VirtualService keeps being served.
        (cfg / "vs.yaml").write_text(VS.format(w1=0, w2=100).replace("weight: 100", "weight: -1"))
        await asyncio.sleep(1.0)
        assert await send(vip, 10) == {"reviews-v2": 10}
        assert "spec.http[0].route[1].weight" in server.log_tail(200)
    finally:
        await server.stop()
        if server.proc is not None and server.proc.returncode not in (0, None, -15):
            print(server.log_tail())
