"""The real ambient path: hbone forward -> a real waypoint (control plane + agent + Envoy) -> hbone
inbound on the pod's 15008 -> the app.

Everything is the product: the control plane serves the translated waypoint (connect_terminate,
main_internal, connect_originate), the waypoint agent gets its certificate from the CA and runs
Envoy, and both ztunnel stand-ins hold CA-issued certificates of the same mesh.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest

from istiod_lite.agent.bootstrap import WaypointIdentity
from istiod_lite.agent.runner import AgentConfig, EnvoySettings, WaypointAgent
from istiod_lite.envoy_binary import envoy_binary
from istiod_lite.hbone import Endpoint, HboneConfig, InboundTerminator, OutboundTunnel
from tests.e2e.test_hbone_fixtures import CLIENT_ID, CaServer, Mesh, ca_server, hbone, hbone_ip
from tests.e2e.test_hbone_forward import admin_stats
from tests.support.backends import BackendsFactory
from tests.support.controlplane import control_plane
from tests.support.ports import alloc_vip, free_port
from tests.support.wait import wait_until

pytestmark = pytest.mark.e2e

CONFIG = """apiVersion: v1
kind: Namespace
metadata: {{name: shop, labels: {{istio.io/use-waypoint: waypoint, istio.io/dataplane-mode: ambient}}}}
---
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
status: {{podIP: {pod_ip}}}
"""


@contextlib.contextmanager
def short_dir() -> Iterator[Path]:
    """The agent's SDS socket path must fit in 107 bytes; pytest's tmp_path may not."""
    path = Path(tempfile.mkdtemp(prefix="wp-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.asynccontextmanager
async def waypoint(ca: CaServer, xds_port: int, ip: str, tmp_path: Path) -> AsyncIterator[WaypointAgent]:
    with short_dir() as work:
        config = AgentConfig(
            identity=WaypointIdentity(name="waypoint", namespace="shop", ip=ip),
            token_file=ca.token_file(tmp_path, "shop", "waypoint"),
            xds_address=f"127.0.0.1:{xds_port}", xds_tls=False,
            ca_address=ca.address, root_cert=ca.root_file,
            envoy=EnvoySettings(binary=envoy_binary(), admin_port=free_port(), concurrency=1,
                                output_path=work / "envoy.out"),
            work_dir=work,
        )
        agent = WaypointAgent(config)
        stop = asyncio.Event()
        task = asyncio.create_task(agent.run(stop))
        try:
            yield agent
        except BaseException:
            out = work / "envoy.out"
            print("\n----- waypoint Envoy -----\n" + (out.read_text()[-4000:] if out.exists() else "(none)"))
            raise
        finally:
            stop.set()
            await asyncio.wait_for(task, 15)


async def test_forward_through_a_real_waypoint_to_the_pods_ztunnel(
        tmp_path: Path, backends_factory: BackendsFactory) -> None:
    pod = (await backends_factory(1, names=["reviews-v1"], hosts=[hbone_ip()]))[0]
    waypoint_ip, vip = hbone_ip(), alloc_vip()
    cfg = tmp_path / "cfg"
    cfg.mkdir()
    (cfg / "mesh.yaml").write_text(CONFIG.format(waypoint_ip=waypoint_ip, vip=vip, port=pod.port, pod_ip=pod.host))
    async with ca_server(tmp_path) as ca, control_plane(cfg) as cp:
        mesh = Mesh(tmp_path / "creds", authority=ca.runtime.authority)
        # The pod's ztunnel: HBONE on <podIP>:15008, delivered to the CONNECT authority (the pod).
        pod_ztunnel = HboneConfig(inbound=(InboundTerminator(Endpoint(pod.host, 15008)),))
        # The client's ztunnel: service traffic to the VIP goes to the waypoint.
        client = HboneConfig(outbound=(OutboundTunnel(Endpoint("127.0.0.1", 0), Endpoint(vip, 9080),
                                                      Endpoint(waypoint_ip, 15008)),))
        async with (waypoint(ca, cp.grpc_port, waypoint_ip, tmp_path),
                    hbone(pod_ztunnel, mesh.issue("spiffe://cluster.local/ns/shop/sa/reviews")) as ztunnel,
                    hbone(client, mesh.issue(CLIENT_ID)) as forwarder):
            url = f"http://{forwarder.outbound_addresses[0]}/ratings"

            async def served() -> str | None:
                try:
                    async with (aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3)) as http,
                                http.get(url) as resp):
                        return resp.headers.get("x-pod") if resp.status == 200 else None
                except (aiohttp.ClientError, TimeoutError):
                    return None

            assert await wait_until(served, timeout=15, message="traffic through the waypoint") == "reviews-v1"
            for _ in range(5):
                assert await served() == "reviews-v1"
            # The pod's ztunnel received the waypoint's CONNECT (mTLS, the waypoint's certificate);
            # the waypoint keeps its HTTP connection to the pod, so one tunnel carries all requests.
            stats = await admin_stats(ztunnel)
            assert stats["http.hbone_in_0.downstream_rq_total"] >= 1
            assert stats[f"listener.{pod.host}_15008.ssl.handshake"] >= 1
    # The app saw plain HTTP relayed by an HTTP proxy (the waypoint adds x-request-id; the two
    # ztunnel stand-ins only move bytes).
    assert pod.count >= 6
    assert pod.requests[-1].path == "/ratings"
    assert pod.requests[-1].header("x-request-id")
