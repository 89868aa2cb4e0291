"""Who may talk HBONE to whom: both ends insist on mesh mTLS (root + trust-domain SAN prefix)."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from istiod_lite.hbone import Endpoint, HboneConfig, InboundTerminator, OutboundTunnel
from tests.e2e.test_hbone_fixtures import CLIENT_ID, SERVER_ID, Mesh, h2_accepted, hbone, hbone_ip
from tests.e2e.test_hbone_forward import admin_stats
from tests.support.backends import BackendsFactory

pytestmark = pytest.mark.e2e


async def test_inbound_requires_a_client_certificate_from_the_mesh(tmp_path: Path,
                                                                    backends_factory: BackendsFactory) -> None:
    mesh, other_root, other_domain = Mesh(tmp_path / "a"), Mesh(tmp_path / "b"), Mesh(tmp_path / "c", "evil.local")
    pod = (await backends_factory(1))[0]
    listen = Endpoint(hbone_ip(), 15008)
    config = HboneConfig(inbound=(InboundTerminator(listen, Endpoint(pod.host, pod.port)),))
    # The probe trusts all three roots, so only the server's judgement of *us* decides.
    trust_all = tmp_path / "all-roots.pem"
    trust_all.write_text(mesh.root_pem + other_root.root_pem + other_domain.root_pem)
    async with hbone(config, mesh.issue(SERVER_ID)) as proxy:
        assert await h2_accepted(listen, mesh.issue(CLIENT_ID), trust_all)  # the probe works
        assert not await h2_accepted(listen, None, trust_all)
        assert not await h2_accepted(listen, other_root.issue(CLIENT_ID), trust_all)
        # Same root as the mesh, but a SPIFFE ID outside its trust domain.
        foreign = Mesh(tmp_path / "d", authority=mesh.authority).issue("spiffe://evil.local/ns/default/sa/sleep")
        assert not await h2_accepted(listen, foreign, trust_all)
        stats = await admin_stats(proxy)
    prefix = f"listener.{listen.host}_15008.ssl"
    assert stats[f"{prefix}.fail_verify_no_cert"] == 1
    assert stats[f"{prefix}.fail_verify_error"] == 1
    assert stats[f"{prefix}.fail_verify_san"] == 1
    assert stats[f"{prefix}.handshake"] == 1
    assert pod.count == 0


async def test_forwarder_with_foreign_certificate_is_refused(tmp_path: Path,
                                                             backends_factory: BackendsFactory) -> None:
    """The whole client path: a forwarder holding another root's certificate gets nothing through."""
    mesh, other = Mesh(tmp_path / "a"), Mesh(tmp_path / "b")
    pod = (await backends_factory(1))[0]
    waypoint = Endpoint(hbone_ip(), 15008)
    terminator = HboneConfig(inbound=(InboundTerminator(waypoint, Endpoint(pod.host, pod.port)),))
    # The forwarder trusts the mesh root, so the failure is the terminator refusing it.
    client = other.issue(CLIENT_ID, extra_roots=mesh.root_pem)
    forwarder = HboneConfig(outbound=(OutboundTunnel(Endpoint("127.0.0.1", 0), Endpoint(pod.host, pod.port),
                                                     waypoint),))
    async with hbone(terminator, mesh.issue(SERVER_ID)) as wp, hbone(forwarder, client) as fwd:
        with pytest.raises(aiohttp.ClientError):
            await get(f"http://{fwd.outbound_addresses[0]}/")
        stats = await admin_stats(wp)
    assert stats[f"listener.{waypoint.host}_15008.ssl.fail_verify_error"] >= 1
    assert pod.count == 0


@pytest.mark.parametrize("server_problem", ["other_root", "other_trust_domain"])
async def test_forwarder_refuses_a_server_outside_the_mesh(tmp_path: Path, backends_factory: BackendsFactory,
                                                           server_problem: str) -> None:
    mesh = Mesh(tmp_path / "a")
    pod = (await backends_factory(1))[0]
    waypoint = Endpoint(hbone_ip(), 15008)
    if server_problem == "other_root":
        # The impostor trusts the mesh root too, so it would accept the forwarder: only the
        # forwarder's check of the server can stop the traffic.
        server = Mesh(tmp_path / "b").issue(SERVER_ID, extra_roots=mesh.root_pem)
        stat = "fail_verify_error"
        terminator = HboneConfig(inbound=(InboundTerminator(waypoint, Endpoint(pod.host, pod.port)),))
    else:
        server = Mesh(tmp_path / "b", authority=mesh.authority).issue("spiffe://evil.local/ns/default/sa/waypoint")
        stat = "fail_verify_san"
        terminator = HboneConfig(inbound=(InboundTerminator(waypoint, Endpoint(pod.host, pod.port)),),
                                 trust_domain="evil.local")
    forwarder = HboneConfig(outbound=(OutboundTunnel(Endpoint("127.0.0.1", 0), Endpoint(pod.host, pod.port),
                                                     waypoint),))
    async with hbone(terminator, server) as wp, hbone(forwarder, mesh.issue(CLIENT_ID)) as fwd:
        with pytest.raises(aiohttp.ClientError):
            await get(f"http://{fwd.outbound_addresses[0]}/")
        stats = await admin_stats(fwd)
        server_stats = await admin_stats(wp)
    assert stats[f"cluster.waypoint_{waypoint.host}_15008.ssl.{stat}"] >= 1
    assert stats.get(f"cluster.waypoint_{waypoint.host}_15008.ssl.handshake", 0) == 0
    assert server_stats.get("cluster.hbone_in_0_app.upstream_cx_total", 0) == 0
    assert pod.count == 0


async def get(url: str) -> int:
    async with (aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http,
                http.get(url) as resp):
        return resp.status
