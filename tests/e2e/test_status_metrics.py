"""Status and metrics as an operator sees them, with a real Envoy waypoint connected:
``/debug/syncz`` JSON, the ``proxy-status`` table, Prometheus ``/metrics`` with Istio's names."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.test_waypoint_traffic import VS, serving, write
from tests.support.backends import BackendsFactory
from tests.support.mesh import ambient_mesh, exclusive_ip
from tests.support.ports import alloc_vip
from tests.support.wait import wait_until

pytestmark = pytest.mark.e2e


async def get_json(url: str) -> Any:
    async with aiohttp.ClientSession() as http, http.get(url) as r:
        assert r.status == 200
        return await r.json()


async def get_text(url: str) -> str:
    async with aiohttp.ClientSession() as http, http.get(url) as r:
        assert r.status == 200
        return await r.text()


def metric(text: str, name: str, **labels: str) -> float:
    """Value of one sample in Prometheus text format (0 if absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        sample, _, rest = head.partition("{")
        got = ",".join(sorted(rest.rstrip("}").split(","))) if rest else ""
        if sample == name and got == want:
            return float(value)
    return 0.0


async def test_syncz_proxy_status_and_metrics(tmp_path: Path, backends_factory: BackendsFactory) -> None:
    pods = await backends_factory(2, names=["reviews-v1", "reviews-v2"])
    wp, vip = exclusive_ip(), alloc_vip()
    cfg = tmp_path / "cfg"
    cfg.mkdir()
    write(cfg, wp=wp, vip=vip, port=pods.port, ip1=pods.pods[0].address[0], ip2=pods.pods[1].address[0])
    (cfg / "vs.yaml").write_text(VS.format(w1=50, w2=50))
    async with ambient_mesh(tmp_path, cfg) as mesh, mesh.waypoint("shop", "waypoint", wp), \
            mesh.client([(vip, 9080)], wp) as local:
        cp = mesh.cp
        base = f"http://127.0.0.1:{cp.monitoring_port}"
        assert (await get_text(f"{base}/ready")).strip()
        await wait_until(lambda: serving(local[(vip, 9080)]), timeout=30, message="waypoint serving")

        async def all_synced() -> bool:
            status = await get_json(f"{base}/debug/syncz")
            return len(status) == 1 and all(t["state"] == "SYNCED" for t in status[0]["types"].values())

        await wait_until(all_synced, timeout=10, message="every type SYNCED in /debug/syncz")
        (conn,) = await get_json(f"{base}/debug/syncz")
        assert conn["group"] == f"waypoint/shop/waypoint/{wp}"
        assert conn["node_id"].startswith(f"waypoint~{wp}~waypoint-")
        cds = conn["types"]["CDS"]
        assert cds["nonce_sent"] and cds["nonce_sent"] == cds["nonce_acked"]

        # The server runs in this event loop: the CLI must run without blocking it.
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "istiod_lite.cli.main", "proxy-status",
            "--monitoring-addr", f"127.0.0.1:{cp.monitoring_port}",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 0, err.decode()
        header, row = out.decode().strip().splitlines()
        assert header.split()[:3] == ["NAME", "GROUP", "XDS"]
        assert row.startswith(conn["node_id"]) and "SYNCED" in row and f"waypoint/shop/waypoint/{wp}" in row

        text = await get_text(f"{base}/metrics")
        # Istio's names: counters without prometheus-client's "_total"; still valid exposition.
        families = {f.name: f.type for f in text_string_to_metric_families(text)}
        assert families["pilot_xds_pushes"] == "counter" and "_created" not in text
        assert metric(text, "pilot_xds", version="") == 1
        pushes_before = metric(text, "pilot_xds_pushes", type="lds")
        rds_before = metric(text, "pilot_xds_pushes", type="rds")
        assert pushes_before >= 1 and metric(text, "pilot_xds_pushes", type="cds") >= 1
        assert metric(text, "pilot_proxy_convergence_time_count") >= 0
        assert "pilot_xds_config_size_bytes_bucket" in text and "pilot_xds_push_time_bucket" in text

        # A config change is a push with reason "config", observed by the debounce histogram.
        (cfg / "vs.yaml").write_text(VS.format(w1=100, w2=0))

        async def pushed() -> bool:
            t = await get_text(f"{base}/metrics")
            return metric(t, "pilot_xds_pushes", type="rds") > rds_before

        await wait_until(pushed, timeout=10, message="RDS push counted after the VirtualService edit")
        text = await get_text(f"{base}/metrics")
        assert metric(text, "pilot_push_triggers", type="config") >= 1
        assert metric(text, "pilot_debounce_time_count") >= 1
        assert metric(text, "pilot_proxy_convergence_time_count") >= 1
        assert metric(text, "pilot_total_xds_rejects", type="lds") == 0
