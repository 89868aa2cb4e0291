"""MeshConfig trustDomainAliases through a real waypoint: a peer certified in an aliased trust
domain passes the HBONE SAN check and is allowed by an AuthorizationPolicy principal written in
the main trust domain; a peer of a domain that is neither is refused at the TLS handshake."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from istiod_lite.model.meshconfig import parse_mesh_config
from tests.support.backends import BackendsFactory
from tests.support.mesh import ambient_mesh, exclusive_ip
from tests.support.meshyaml import one_service_mesh
from tests.support.ports import alloc_vip
from tests.support.wait import wait_until

pytestmark = pytest.mark.e2e

ALLOW = """apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow, namespace: shop}
spec:
  targetRefs: [{kind: Service, group: "", name: cart}]
  action: ALLOW
  rules:
  - from: [{source: {principals: [cluster.local/ns/web/sa/frontend]}}]
"""


async def status(addr: str) -> int:
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http, \
                http.get(f"http://{addr}/") as r:
            return r.status
    except (aiohttp.ClientError, OSError, TimeoutError):
        return -1


async def test_peer_of_an_aliased_trust_domain_is_allowed(tmp_path: Path, backends_factory: BackendsFactory) -> None:
    pods = await backends_factory(1, names=["cart-1"])
    wp, vip = exclusive_ip(), alloc_vip()
    cfg = tmp_path / "cfg"
    cfg.mkdir()
    (cfg / "mesh.yaml").write_text(one_service_mesh("shop", "cart", wp, vip, 8080, pods.port, pods.pods[0].address[0]))
    (cfg / "policy.yaml").write_text(ALLOW)
    mesh_config = parse_mesh_config({"trustDomain": "cluster.local", "trustDomainAliases": ["old.example"]})
    target = [(vip, 8080)]
    async with ambient_mesh(tmp_path, cfg, mesh=mesh_config) as mesh, mesh.waypoint("shop", "waypoint", wp), \
            mesh.client(target, wp, namespace="web", sa="frontend", trust_domain="old.example") as aliased, \
            mesh.client(target, wp, namespace="web", sa="other", trust_domain="old.example") as aliased_other, \
            mesh.client(target, wp, namespace="web", sa="frontend", trust_domain="foreign.example") as foreign:

        async def allowed() -> bool:
            return await status(aliased[(vip, 8080)]) == 200

        await wait_until(allowed, timeout=30, message="old.example/ns/web/sa/frontend allowed through the waypoint")
        # Same alias, another service account: past the SAN check, refused by RBAC.
        assert await status(aliased_other[(vip, 8080)]) == 403
        # A domain that is neither the trust domain nor an alias: the HBONE handshake is refused.
        assert await status(foreign[(vip, 8080)]) not in (200, 403)
        assert [r.path for r in pods.pods[0].requests] == ["/"] * len(pods.pods[0].requests)
        assert pods.pods[0].requests
