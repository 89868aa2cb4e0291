"""The xDS-driven HBONE node (``istiod-lite hbone node``): traffic follows the control plane's data.

Real parts throughout: the control plane watching a YAML directory serves ztunnel xDS and the
waypoint's xDS; the waypoint is the agent + a real Envoy; the node's HBONE is a real Envoy; the
apps are real HTTP servers on loopback pod addresses.  Each step edits the watched YAML; the node
is never restarted, it follows the Delta pushes:

* no ``istio.io/use-waypoint``: a connection to the service VIP goes straight to the ambient pod
  over HBONE (its 15008), and the waypoint's VirtualService header is absent;
* label the namespace: the same connection now goes through the waypoint (header present, the
  waypoint's stats count it); remove the label: direct again;
* a pod outside the mesh is reached in plaintext; a namespace PeerAuthentication STRICT makes the
  node's plaintext capture of an ambient pod refuse plain connections while HBONE still works.
"""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from istiod_lite.hbone import Endpoint
from tests.support.backends import BackendsFactory
from tests.support.mesh import ambient_mesh, exclusive_ip
from tests.support.ports import alloc_vip, free_port
from tests.support.wait import wait_until

pytestmark = pytest.mark.e2e

NAMESPACE = """apiVersion: v1
kind: Namespace
metadata:
  name: shop
  labels: {{istio.io/dataplane-mode: ambient{label}}}
"""
MESH = """---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: waypoint, namespace: shop}}
spec:
  gatewayClassName: istio-waypoint
  addresses: [{{type: IPAddress, value: {waypoint_ip}}}]
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
metadata: {{name: reviews-v1, namespace: shop, labels: {{app: reviews}}}}
spec: {{serviceAccountName: reviews}}
status: {{podIP: {pod_ip}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews, namespace: shop}}
spec:
  hosts: [reviews.shop.svc.cluster.local]
  http:
  - headers: {{request: {{add: {{x-through: waypoint}}}}}}
    route: [{{destination: {{host: reviews.shop.svc.cluster.local}}}}]
---
apiVersion: v1
kind: Namespace
metadata: {{name: legacy}}
---
apiVersion: v1
kind: Service
metadata: {{name: old, namespace: legacy}}
spec:
  clusterIP: {old_vip}
  selector: {{app: old}}
  ports: [{{name: http, port: 80, targetPort: {old_port}}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: old-v1, namespace: legacy, labels: {{app: old}}}}
status: {{podIP: {old_ip}}}
"""
STRICT = """---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: shop}
spec: {mtls: {mode: STRICT}}
"""


async def get(url: str) -> tuple[str | None, str | None]:
    """(x-pod, the x-through header the app received) or (None, None) when nothing answered."""
    try:
        async with (aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3)) as http,
                    http.get(url) as resp):
            if resp.status != 200:
                return None, None
            body = await resp.json(content_type=None)
            return resp.headers.get("x-pod"), body.get("headers", {}).get("x-through") if isinstance(body, dict) \
                else None
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return None, None


async def until_get(url: str, want: tuple[str | None, str | None], message: str) -> None:
    async def matches() -> bool | None:
        return True if await get(url) == want else None

    await wait_until(matches, timeout=15, message=message)


async def test_traffic_follows_use_waypoint_label_and_strict_peer_authentication(
        tmp_path: Path, backends_factory: BackendsFactory) -> None:
    pod_ip, waypoint_ip = exclusive_ip(), exclusive_ip()
    pod = (await backends_factory(1, names=["reviews-v1"], hosts=[pod_ip]))[0]
    old = (await backends_factory(1, names=["old-v1"]))[0]
    vip, old_vip = alloc_vip(), alloc_vip()
    cfg = tmp_path / "cfg"
    cfg.mkdir()
    mesh_yaml = MESH.format(waypoint_ip=waypoint_ip, vip=vip, port=pod.port, pod_ip=pod.host,
                            old_vip=old_vip, old_port=old.port, old_ip=old.host)

    def write(label: bool, strict: bool = False) -> None:
        text = NAMESPACE.format(label=", istio.io/use-waypoint: waypoint" if label else "") + mesh_yaml
        (cfg / "mesh.yaml.tmp").write_text(text + (STRICT if strict else ""))
        (cfg / "mesh.yaml.tmp").replace(cfg / "mesh.yaml")

    write(label=False)
    plain_capture = Endpoint(pod.host, free_port())
    async with (ambient_mesh(tmp_path, cfg) as mesh,
                mesh.waypoint("shop", "waypoint", waypoint_ip),
                mesh.pod_ztunnels([pod.host], namespace="shop", sa="reviews"),
                mesh.ztunnel(capture=True, plaintext=[(plain_capture, Endpoint(pod.host, pod.port))]) as node):
        assert Endpoint(vip, 9080) in node.captured and Endpoint(old_vip, 80) in node.captured
        url = f"http://{vip}:9080/reviews"

        # 1. No waypoint named: straight to the ambient pod over HBONE; the waypoint's header is absent.
        await until_get(url, ("reviews-v1", None), "direct HBONE to the ambient pod")
        assert node.stats["hbone"] >= 1 and node.stats["waypoint"] == 0
        assert pod.requests[-1].header("x-through") is None

        # 2. Label the namespace: the next connection goes through the waypoint (its VirtualService header).
        gen = node.generation
        write(label=True)
        await node.wait_generation(gen)
        await until_get(url, ("reviews-v1", "waypoint"), "traffic through the waypoint after labelling")
        assert node.stats["waypoint"] >= 1
        assert pod.requests[-1].header("x-through") == "waypoint"

        # 3. Remove the label: direct again.
        hbone_before = node.stats["hbone"]
        gen = node.generation
        write(label=False)
        await node.wait_generation(gen)
        await until_get(url, ("reviews-v1", None), "direct again after removing the label")
        assert node.stats["hbone"] > hbone_before

        # 4. A pod outside the mesh: plaintext, no tunnel.
        assert await get(f"http://{old_vip}/x") == ("old-v1", None)
        assert node.stats["plaintext"] >= 1

        # 5. Plain TCP captured for the ambient pod is delivered (PERMISSIVE by default) ...
        plain_url = f"http://{plain_capture}/plain"
        assert await get(plain_url) == ("reviews-v1", None)
        assert node.stats["refused"] == 0
        # ... and refused once the namespace is STRICT; HBONE to the same pod still works.
        gen = node.generation
        write(label=False, strict=True)
        await node.wait_generation(gen)
        await until_get(plain_url, (None, None), "plaintext refused under STRICT")
        assert node.stats["refused"] >= 1
        assert await get(url) == ("reviews-v1", None)


CLI_MESH = """apiVersion: v1
kind: Namespace
metadata: {{name: shop, labels: {{istio.io/dataplane-mode: ambient}}}}
---
apiVersion: v1
kind: Service
metadata: {{name: cart, namespace: shop}}
spec:
  clusterIP: {vip}
  selector: {{app: cart}}
  ports: [{{name: http, port: 80, targetPort: {port}}}]
"""
CLI_POD = """---
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: shop, labels: {{app: cart}}}}
status: {{podIP: {ip}}}
"""


async def test_cli_node_follows_a_new_pod_without_restart(tmp_path: Path, backends_factory: BackendsFactory) -> None:
    """``istiod-lite hbone node`` as a process: a second pod appearing in the config gets traffic."""
    import asyncio
    import json
    import sys

    ips = [exclusive_ip(), exclusive_ip()]
    pods = await backends_factory(2, names=["cart-1", "cart-2"], hosts=ips)
    vip = alloc_vip()
    cfg = tmp_path / "cfg"
    cfg.mkdir()
    (cfg / "mesh.yaml").write_text(CLI_MESH.format(vip=vip, port=pods[0].port)
                                   + CLI_POD.format(name="cart-1", ip=ips[0]))
    async with (ambient_mesh(tmp_path, cfg) as mesh,
                mesh.pod_ztunnels(ips, namespace="shop", sa="cart")):
        creds = mesh.credentials("client", "client")
        ready = tmp_path / "ready.json"
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "istiod_lite.cli.main", "hbone", "node",
            "--xds-address", f"127.0.0.1:{mesh.cp.grpc_port}", "--xds-plaintext",
            "--route", f"127.0.0.1:0={vip}:80", "--root-cert", str(creds.roots), "--cert", str(creds.cert),
            "--key", str(creds.key), "--identity", "client/client", "--ready-file", str(ready),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        try:
            await wait_until(lambda: ready.exists() or proc.returncode is not None, timeout=20,
                             message="the node never became ready")
            assert proc.returncode is None
            route = json.loads(ready.read_text())["routes"][0]
            url = f"http://{route}/cart"
            await until_get(url, ("cart-1", None), "traffic through the CLI node")
            # The second pod appears in the watched config: the running node sends to it too.
            (cfg / "mesh.yaml").write_text(CLI_MESH.format(vip=vip, port=pods[0].port)
                                           + CLI_POD.format(name="cart-1", ip=ips[0])
                                           + CLI_POD.format(name="cart-2", ip=ips[1]))
            await until_get(url, ("cart-2", None), "the new pod never got traffic")
        finally:
            proc.terminate()
            out, err = await asyncio.wait_for(proc.communicate(), 15)
        assert proc.returncode == 0, err.decode()[-2000:]
        text = out.decode()
        assert f"{vip}:80 -> hbone {ips[0]}:{pods[0].port} (workload shop/cart-1)" in text, text
        assert "ready (Envoy admin http://" in text
