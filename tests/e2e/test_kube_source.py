"""Config from a (fake) cluster reaches a waypoint's translated config, byte-identical to the YAML route.

No Envoy: the check is the control plane's own per-waypoint resources (``cp._shared``), which is
what every waypoint proxy of the group is served.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from istiod_lite.controlplane.app import ControlPlane, ControlPlaneOptions
from istiod_lite.controlplane.debounce import DebounceOptions
from istiod_lite.sources import KubeSourceOptions
from istiod_lite.translator.waypoints import WaypointRef
from tests.support.fakekube import FakeKubeApiServer

pytestmark = pytest.mark.e2e

BOOKINFO = Path(__file__).resolve().parents[2] / "examples" / "bookinfo"
WAYPOINT = WaypointRef("bookinfo", "waypoint")


def bookinfo_docs() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted(BOOKINFO.glob("*.yaml")):
        docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    return docs


@contextlib.asynccontextmanager
async def control_plane(config_dir: Path | None, kube: KubeSourceOptions | None) -> AsyncIterator[ControlPlane]:
    cp = ControlPlane(ControlPlaneOptions(
        config_dir=config_dir, kube=kube, grpc_addr="127.0.0.1:0", monitoring_addr="127.0.0.1:0",
        poll_interval=0.05, debounce=DebounceOptions(quiet=0.02, max_delay=1.0)))
    await cp.start()
    try:
        yield cp
    finally:
        await cp.stop(grace=0)


def versions(cp: ControlPlane) -> dict[str, dict[str, str]]:
    return {t: {r.name: r.version for r in items} for t, items in cp._shared[WAYPOINT].items()}


async def test_cluster_config_reaches_the_waypoint(tmp_path: Path) -> None:
    with FakeKubeApiServer() as kube:
        for doc in bookinfo_docs():
            kube.apply(doc)
        opts = KubeSourceOptions(kubeconfig=kube.write_kubeconfig(tmp_path / "kubeconfig"), sync_timeout=10.0,
                                 backoff_initial=0.05, backoff_max=0.2)
        async with control_plane(BOOKINFO, None) as from_files:
            expected = versions(from_files)
        async with control_plane(None, opts) as cp:
            assert cp.cache.ready and cp.errors == ()
            assert versions(cp) == expected  # same config, same bytes, whichever source it came from
            routes_before = versions(cp)
            vs = next(d for d in bookinfo_docs() if d["kind"] == "VirtualService")
            vs["spec"]["http"] = [{"route": [{"destination": {"host": vs["spec"]["hosts"][0]}, "weight": 100}],
                                   "timeout": "7s"}]
            while kube.open_watches() < len(opts.kinds):
                await asyncio.sleep(0.01)
            kube.apply(vs)
            deadline = time.monotonic() + 5
            while versions(cp) == routes_before:
                assert time.monotonic() < deadline, "the cluster change never reached the waypoint"
                await asyncio.sleep(0.02)
            kube.delete("gateway.networking.k8s.io/v1", "Gateway", "bookinfo", "waypoint")
            deadline = time.monotonic() + 5
            while WAYPOINT in cp._shared:
                assert time.monotonic() < deadline, "deleting the Gateway never removed the waypoint"
                await asyncio.sleep(0.02)


async def test_waypoint_controller_deploys_the_waypoint(tmp_path: Path) -> None:
    from istiod_lite.controlplane.waypoint_controller import WaypointControllerOptions

    with FakeKubeApiServer() as kube:
        for doc in bookinfo_docs():
            kube.apply(doc)
        opts = KubeSourceOptions(kubeconfig=kube.write_kubeconfig(tmp_path / "kubeconfig"), sync_timeout=10.0,
                                 backoff_initial=0.05, backoff_max=0.2)
        cp = ControlPlane(ControlPlaneOptions(
            config_dir=None, kube=opts, grpc_addr="127.0.0.1:0", monitoring_addr="127.0.0.1:0",
            debounce=DebounceOptions(quiet=0.02, max_delay=1.0),
            waypoint_controller=WaypointControllerOptions(image="istiod-lite:test",
                                                          istiod_address="istiod-lite.istio-system.svc")))
        await cp.start()
        try:
            deadline = time.monotonic() + 10
            # The controller applies ServiceAccount, Deployment, then Service: wait for all three.
            while any(kube.get(v, k, "bookinfo", "waypoint") is None
                      for v, k in (("v1", "ServiceAccount"), ("apps/v1", "Deployment"), ("v1", "Service"))):
                assert time.monotonic() < deadline, "the waypoint's objects were never applied"
                await asyncio.sleep(0.05)
            dep = kube.get("apps/v1", "Deployment", "bookinfo", "waypoint")
            assert dep is not None
            container = dep["spec"]["template"]["spec"]["containers"][0]
            assert container["image"] == "istiod-lite:test"
            assert "--xds-address" in container["args"]
            assert kube.get("v1", "Service", "bookinfo", "waypoint") is not None
            assert kube.get("v1", "ServiceAccount", "bookinfo", "waypoint") is not None
        finally:
            await cp.stop(grace=0)
