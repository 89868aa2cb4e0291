"""``ipBlocks`` / ``source.ip`` match the address the HBONE tunnel came from, never a client's
``x-forwarded-for`` (issue 14, finding 6d): a forged XFF must not pass an ipBlocks ALLOW."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.test_authz import SOURCE_POLICY, status_with
from tests.support.backends import BackendsFactory
from tests.support.mesh import ambient_mesh, exclusive_ip
from tests.support.meshyaml import one_service_mesh
from tests.support.ports import alloc_vip
from tests.support.wait import wait_until

pytestmark = pytest.mark.e2e

FORGED = "203.0.113.7"


async def test_forged_x_forwarded_for_does_not_pass_an_ip_blocks_allow(
        tmp_path: Path, backends_factory: BackendsFactory) -> None:
    pods = await backends_factory(1, names=["cart-1"])
    wp, vip = exclusive_ip(), alloc_vip()
    cfg = tmp_path / "cfg"
    cfg.mkdir()
    (cfg / "mesh.yaml").write_text(one_service_mesh("shop", "cart", wp, vip, 8080, pods.port, pods.pods[0].address[0]))
    # Positive control first: the tunnel's own source (the stand-in ztunnel on 127.0.0.1) passes.
    (cfg / "policy.yaml").write_text(SOURCE_POLICY.format(action="ALLOW",
                                                          rule="from: [{source: {ipBlocks: [127.0.0.1]}}]"))
    async with ambient_mesh(tmp_path, cfg) as mesh, mesh.waypoint("shop", "waypoint", wp), \
            mesh.client([(vip, 8080)], wp, namespace="web", sa="frontend") as client:
        addr = client[(vip, 8080)]

        async def allowed() -> bool:
            return await status_with(addr, {}) == 200

        await wait_until(allowed, timeout=30, message="ipBlocks 127.0.0.1 allows the tunnel's source")
        for rule in (f"from: [{{source: {{ipBlocks: [{FORGED}]}}}}]",
                     f"when: [{{key: source.ip, values: [{FORGED}]}}]"):
            (cfg / "policy.yaml").write_text(SOURCE_POLICY.format(action="ALLOW", rule=rule))

            async def refused() -> bool:
                return await status_with(addr, {}) == 403

            await wait_until(refused, timeout=15, message=f"{rule} applied")
            for xff in (FORGED, f"{FORGED}, {FORGED}", f"10.0.0.1, {FORGED}"):
                assert await status_with(addr, {"x-forwarded-for": xff}) == 403, (rule, xff)
