"""ztunnel's view over real gRPC: a client speaking Delta xDS as ztunnel does, against the real server.

Wildcard, on-demand by name, reconnect with ``initial_resource_versions``; every resource decoded
with the compiled workload API protos and compared with the translation; one pod edit arrives as
exactly one resource.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import grpc
import pytest

from istiod_lite.ca.identity import Identity
from istiod_lite.controlplane.secure import node_matches_identity
from istiod_lite.sources import DirectorySource
from istiod_lite.translator.core.output import as_message
from istiod_lite.translator.ztunnel import ZtunnelTranslator
from tests.support.controlplane import control_plane
from tests.support.ztunnelclient import ADDRESS, AUTHORIZATION, ZtunnelClient

GOLDEN = Path(__file__).resolve().parent.parent / "golden_ztunnel"

POD = """apiVersion: v1
kind: Pod
metadata: {{name: extra, namespace: shop, labels: {{app: cart, version: {version}}}}}
spec: {{serviceAccountName: cart, nodeName: node-a}}
status: {{podIP: 10.244.9.9, phase: Running}}
"""


def _config(tmp_path: Path) -> Path:
    cfg = tmp_path / "config"
    cfg.mkdir()
    for case in ("sources", "authz-l4"):
        shutil.copy(GOLDEN / case / "input" / "config.yaml", cfg / f"{case}.yaml")
    # Both cases declare Namespace shop the same way; keep one.
    text = (cfg / "authz-l4.yaml").read_text().split("---\n", 1)[1]
    (cfg / "authz-l4.yaml").write_text(text)
    (cfg / "extra-pod.yaml").write_text(POD.format(version="v1"))
    return cfg


def _expected(cfg: Path) -> dict[str, dict[str, bytes]]:
    update = DirectorySource(cfg).load()
    assert not update.errors, [str(e) for e in update.errors]
    res = ZtunnelTranslator().translate(update.snapshot).resources
    return {t: {n: as_message(m).SerializeToString(deterministic=True) for n, m in res.by_type[t].items()}
            for t in (ADDRESS, AUTHORIZATION)}


def _serialised(update_resources: dict[str, object]) -> dict[str, bytes]:
    return {n: m.SerializeToString(deterministic=True) for n, m in update_resources.items()}


async def test_ztunnel_wildcard_on_demand_and_reconnect(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    want = _expected(cfg)
    async with control_plane(cfg) as cp, grpc.aio.insecure_channel(f"127.0.0.1:{cp.grpc_port}") as channel:
        zt = ZtunnelClient(channel)
        await zt.connect()
        addresses = await zt.next(ADDRESS)
        policies = await zt.next(AUTHORIZATION)
        assert _serialised(addresses.resources) == want[ADDRESS]
        assert _serialised(policies.resources) == want[AUTHORIZATION]
        uid = "Kubernetes//Pod/shop/extra"
        assert addresses.resources[uid].workload.canonical_revision == "v1"

        # One pod changes: exactly that workload arrives, nothing else.
        (cfg / "extra-pod.yaml").write_text(POD.format(version="v2"))
        change = await zt.next(ADDRESS)
        assert list(change.resources) == [uid] and not change.removed
        assert change.resources[uid].workload.canonical_revision == "v2"
        assert change.wire_bytes < 2048
        assert await zt.quiet() == []

        # Reconnect with what it holds: nothing to resend.
        await zt.connect()
        again = await zt.next(ADDRESS)
        assert again.resources == {} and again.removed == []
        # A change while disconnected: only it is sent on reconnect.
        await zt.close()
        (cfg / "extra-pod.yaml").write_text(POD.format(version="v3"))
        await _wait_for_translation(cp, uid, zt.held[ADDRESS][uid][0])
        await zt.connect()
        after = await zt.next(ADDRESS)
        assert list(after.resources) == [uid]
        await zt.close()

        # On-demand: a fresh ztunnel asks for one service and one workload by name.
        od = ZtunnelClient(channel)
        svc = "shop/cart.shop.svc.cluster.local"
        await od.connect(names={ADDRESS: [svc], AUTHORIZATION: []})
        first = await od.next(ADDRESS)
        assert list(first.resources) == [svc]
        await od.subscribe(ADDRESS, [uid, "shop/no-such.example.com"])
        more = await od.next(ADDRESS)
        assert list(more.resources) == [uid]
        assert more.removed == ["shop/no-such.example.com"]  # answered as absent
        await od.close()


async def _wait_for_translation(cp: object, uid: str, old_version: str) -> None:
    """Until the server's translation holds a new version of ``uid`` (no proxy connected meanwhile)."""
    import asyncio

    from istiod_lite.controlplane.proxykinds import ZtunnelGenerator, ZtunnelProxies

    gen = cp.proxies.generator("ztunnel")
    assert isinstance(gen, ZtunnelGenerator)
    for _ in range(100):
        res = gen.snapshot(ZtunnelProxies()).of_type(ADDRESS).get(uid)
        if res is not None and res.version != old_version:
            return
        await asyncio.sleep(0.05)
    pytest.fail("the change never reached the translation")


def test_identity_check_compares_the_service_account_only_when_stated() -> None:
    ident = Identity("cluster.local", "istio-system", "ztunnel")
    assert node_matches_identity("istio-system", "", ident)  # ztunnel states none
    assert node_matches_identity("istio-system", "ztunnel", ident)
    assert not node_matches_identity("istio-system", "other", ident)
    assert not node_matches_identity("app", "", ident)
