"""L4 authorization on inbound HBONE: the node that terminates a pod's ``<podIP>:15008`` checks the
served AuthorizationPolicies against the peer certificate's identity before it answers the CONNECT.

Real parts: the control plane watching a YAML directory serves the ztunnel xDS; the destination
node (``HboneNode`` with ``inbound_pods``) runs a real Envoy whose ext_authz filter asks the node;
two source "ztunnels" are real Envoys with CA-issued certificates for two identities, each tunnelling
plain TCP as ``CONNECT podIP:port`` to the pod's 15008; the app is a real HTTP server.  Each step
edits the watched YAML; nothing is restarted.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from istiod_lite.hbone import HBONE_PORT, Endpoint, HboneConfig, HboneProxy, OutboundTunnel
from istiod_lite.hbone.bootstrap import inbound_listener_name
from tests.support.backends import BackendsFactory
from tests.support.mesh import Mesh, ambient_mesh, exclusive_ip
from tests.support.wait import wait_until

pytestmark = pytest.mark.e2e

MESH = """apiVersion: v1
kind: Namespace
metadata: {{name: shop, labels: {{istio.io/dataplane-mode: ambient}}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: reviews-v1, namespace: shop, labels: {{app: reviews}}}}
spec: {{serviceAccountName: reviews}}
status: {{podIP: {pod_ip}}}
"""
ALLOW_WEB = """---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: only-web, namespace: shop}
spec:
  action: ALLOW
  rules: [{from: [{source: {principals: [cluster.local/ns/front/sa/web]}}]}]
"""
DENY_WEB = """---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-web, namespace: shop}
spec:
  action: DENY
  rules: [{from: [{source: {namespaces: [front], principals: ["*/sa/web"]}}]}]
"""
WEB = "spiffe://cluster.local/ns/front/sa/web"
OTHER = "spiffe://cluster.local/ns/front/sa/other"


async def pod_answers(url: str) -> bool:
    """True when the app answered through the tunnel; False when the tunnel was refused."""
    try:
        async with (aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3)) as http,
                    http.get(url) as resp):
            return resp.status == 200 and resp.headers.get("x-pod") == "reviews-v1"
    except (aiohttp.ClientError, TimeoutError):
        return False


async def envoy_counter(admin: Endpoint, name: str) -> int:
    async with aiohttp.ClientSession() as http, http.get(f"http://{admin}/stats?filter=^{name}$") as resp:
        text = await resp.text()
    for line in text.splitlines():
        key, _, value = line.partition(": ")
        if key == name:
            return int(value)
    return 0


@contextlib.asynccontextmanager
async def source(mesh: Mesh, sa: str, pod: Endpoint) -> AsyncIterator[str]:
    """A client ztunnel for ``front/<sa>``: plain HTTP to the returned URL is tunnelled to ``pod``."""
    tunnel = OutboundTunnel(Endpoint("127.0.0.1", 0), pod, Endpoint(pod.host, HBONE_PORT))
    async with HboneProxy(HboneConfig(outbound=(tunnel,)), mesh.credentials("front", sa), concurrency=1) as proxy:
        yield f"http://{proxy.outbound_addresses[0]}/reviews"


async def test_inbound_hbone_follows_served_policies_by_peer_identity(
        tmp_path: Path, backends_factory: BackendsFactory) -> None:
    pod_ip = exclusive_ip()
    app = (await backends_factory(1, names=["reviews-v1"], hosts=[pod_ip]))[0]
    cfg = tmp_path / "cfg"
    cfg.mkdir()

    def write(extra: str = "") -> None:
        (cfg / "mesh.yaml.tmp").write_text(MESH.format(pod_ip=pod_ip) + extra)
        (cfg / "mesh.yaml.tmp").replace(cfg / "mesh.yaml")

    write()
    pod = Endpoint(app.host, app.port)
    async with (ambient_mesh(tmp_path, cfg) as mesh,
                mesh.ztunnel(capture=False, inbound_pods=[pod_ip], namespace="istio-system", sa="ztunnel",
                             node_name="node-b") as node,
                source(mesh, "web", pod) as web,
                source(mesh, "other", pod) as other):
        admin = node.proxy.admin
        assert admin is not None
        denied_stat = f"http.{inbound_listener_name(0)}.ext_authz.denied"

        async def expect(web_ok: bool, other_ok: bool, message: str) -> None:
            async def settled() -> bool | None:
                return True if (await pod_answers(web), await pod_answers(other)) == (web_ok, other_ok) else None
            await wait_until(settled, timeout=15, message=message)

        # 1. No policy: both identities reach the pod; the check saw each certificate's identity.
        await expect(True, True, "both identities reach the pod without a policy")
        seen = {d.peer.identity for d in node.authorizer.decisions if d.allowed}
        assert seen == {WEB, OTHER}
        assert all(d.target == pod for d in node.authorizer.decisions)
        assert await envoy_counter(admin, denied_stat) == 0

        # 2. Namespace-wide ALLOW from web's principal: web still reaches it, other is refused.
        gen = node.generation
        write(ALLOW_WEB)
        await node.wait_generation(gen)
        await expect(True, False, "ALLOW from web: other refused")
        last = next(d for d in reversed(node.authorizer.decisions) if not d.allowed)
        assert (last.peer.identity, last.why, last.status) == (OTHER, "no ALLOW policy matched", 401)
        assert await envoy_counter(admin, denied_stat) >= 1
        # Envoy answered the refused CONNECT itself, with a 4xx (the check's 401), not a 200 then a reset.
        assert await envoy_counter(admin, f"http.{inbound_listener_name(0)}.downstream_rq_4xx") >= 1
        assert node.stats["refused_hbone"] >= 1

        # 3. Replace it by a DENY for web: web refused (by that policy), other reaches the pod.
        gen = node.generation
        write(DENY_WEB)
        await node.wait_generation(gen)
        await expect(False, True, "DENY web: web refused, other allowed")
        refused = [d for d in node.authorizer.decisions if not d.allowed]
        assert (refused[-1].peer.identity, refused[-1].why) == (WEB, "denied by shop/no-web")

        # 4. Remove the policy: both reach the pod again.
        gen = node.generation
        write()
        await node.wait_generation(gen)
        await expect(True, True, "both reach the pod after the policy is removed")
        # Every refusal stopped at the CONNECT: the app saw one request per allowed tunnel, no more.
        assert len(app.requests) == node.stats["hbone_in"]
