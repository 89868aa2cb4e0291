"""Waypoint metrics through real traffic: the client's ztunnel (hbone forward) -> waypoint Envoy
(agent, CA, secure xDS) -> pods; the waypoint's ``/stats/prometheus`` carries per-service request
counts labelled by the bootstrap's stat tags (``destination_service``, ``destination_port``,
``subset``, ``response_code``) that match the requests sent.

Access-log lines through the same path (mesh config ``accessLogFile`` + JSON), and a Telemetry
``disabled: true`` that stops them without restarting Envoy.  Tracing: ``test_tracing.py``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.e2e.test_waypoint_traffic import VS, send, serving, write
from tests.support.backends import BackendsFactory
from tests.support.mesh import ambient_mesh, exclusive_ip
from tests.support.ports import alloc_vip
from tests.support.wait import wait_until

pytestmark = pytest.mark.e2e

HOST = "reviews.shop.svc.cluster.local"
_SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)\{(?P<labels>[^}]*)\} (?P<value>\S+)$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def samples(text: str, metric: str) -> list[tuple[dict[str, str], float]]:
    """Every sample of ``metric`` in Prometheus text format, as (labels, value)."""
    out = []
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if m is not None and m["name"] == metric:
            out.append((dict(_LABEL.findall(m["labels"])), float(m["value"])))
    return out


async def prometheus(admin_port: int) -> str:
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{admin_port}/stats/prometheus") as r:
        return await r.text()


async def test_per_service_request_counts(tmp_path: Path, backends_factory: BackendsFactory) -> None:
    pods = await backends_factory(2, names=["reviews-v1", "reviews-v2"])
    wp, vip = exclusive_ip(), alloc_vip()
    cfg = tmp_path / "cfg"
    cfg.mkdir()
    write(cfg, wp=wp, vip=vip, port=pods.port, ip1=pods.pods[0].address[0], ip2=pods.pods[1].address[0])
    (cfg / "vs.yaml").write_text(VS.format(w1=50, w2=50))
    async with ambient_mesh(tmp_path, cfg) as mesh, mesh.waypoint("shop", "waypoint", wp) as agent, \
            mesh.client([(vip, 9080)], wp) as local:
        addr = local[(vip, 9080)]
        await wait_until(lambda: serving(addr), timeout=30, message="traffic through the waypoint")
        admin = agent.config.envoy.admin_port
        before = samples(await prometheus(admin), "envoy_cluster_inbound_vip_http_upstream_rq_total")
        counts = await send(addr, 40)
        assert sum(counts.values()) == 40 and set(counts) == {"reviews-v1", "reviews-v2"}, counts

        text = await prometheus(admin)
        totals = samples(text, "envoy_cluster_inbound_vip_http_upstream_rq_total")
        # The VirtualService splits between the subsets' clusters; the service's own cluster (no
        # subset label) carries nothing new.
        by_subset = {s.get("subset", ""): v for s, v in totals
                     if s.get("destination_service") == HOST and s.get("destination_port") == "9080"}
        sent_before = {s.get("subset", ""): v for s, v in before if s.get("destination_service") == HOST}
        assert {k: v - sent_before.get(k, 0) for k, v in by_subset.items()} == {
            "": 0, "v1": counts["reviews-v1"], "v2": counts["reviews-v2"]}, totals
        ok = {s.get("subset", ""): v for s, v in samples(text, "envoy_cluster_inbound_vip_http_upstream_rq")
              if s.get("response_code") == "200" and s.get("destination_service") == HOST}
        assert sum(ok.values()) >= 40
        # The port's HCM: every request, by response class.
        rq = [v for s, v in samples(text, "envoy_http_inbound_0_0_0_0__downstream_rq")
              if s.get("destination_port") == "9080" and s.get("response_code_class") == "2xx"]
        assert rq and rq[0] >= 40


TELEMETRY_OFF = """apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: quiet, namespace: shop}
spec:
  targetRefs: [{kind: Service, name: reviews}]
  accessLogging:
  - disabled: true
"""

# A second service on the same pods: it keeps logging to the same file after reviews' logs are off.
DETAILS = """apiVersion: v1
kind: Service
metadata: {{name: details, namespace: shop}}
spec:
  clusterIP: {vip}
  selector: {{app: reviews}}
  ports: [{{name: http, port: 9080, targetPort: {port}}}]
"""


async def test_json_access_log_lines_and_disabling_them(tmp_path: Path, backends_factory: BackendsFactory) -> None:
    import json

    from istiod_lite.model.meshconfig import load_mesh_config

    pods = await backends_factory(2, names=["reviews-v1", "reviews-v2"])
    wp, vip, vip2 = exclusive_ip(), alloc_vip(), alloc_vip()
    cfg = tmp_path / "cfg"
    cfg.mkdir()
    write(cfg, wp=wp, vip=vip, port=pods.port, ip1=pods.pods[0].address[0], ip2=pods.pods[1].address[0])
    (cfg / "details.yaml").write_text(DETAILS.format(vip=vip2, port=pods.port))
    log = tmp_path / "access.log"
    mesh_file = tmp_path / "mesh.yaml"
    mesh_file.write_text(f"accessLogFile: {log}\naccessLogEncoding: JSON\n")
    async with ambient_mesh(tmp_path, cfg, mesh=load_mesh_config(mesh_file)) as mesh, \
            mesh.waypoint("shop", "waypoint", wp) as agent, mesh.client([(vip, 9080), (vip2, 9080)], wp) as local:
        addr, details = local[(vip, 9080)], local[(vip2, 9080)]
        await wait_until(lambda: serving(addr), timeout=30, message="traffic through the waypoint")
        await send(addr, 10, path="/logged?q=1")

        def lines() -> list[dict[str, object]]:
            if not log.exists():
                return []
            return [json.loads(x) for x in log.read_text().splitlines() if x.strip()]

        def paths(prefix: str) -> list[dict[str, object]]:
            return [e for e in lines() if str(e.get("path", "")).startswith(prefix)]

        # Envoy flushes its log files every 10 s (or every 64 KiB).
        await wait_until(lambda: len(paths("/logged")) >= 10, timeout=30, message="10 access-log lines")
        entry = paths("/logged")[0]
        assert entry["response_code"] == 200 and entry["method"] == "GET"
        assert str(entry["upstream_cluster"]).startswith(f"inbound-vip|9080|http|{HOST}")
        assert entry["path"] == "/logged?q=1"
        admin = agent.config.envoy.admin_port
        server_info = await _admin_json(admin, "/server_info")

        # Telemetry disabled for reviews: its chain loses its logger in the running Envoy.
        (cfg / "telemetry.yaml").write_text(TELEMETRY_OFF)

        async def reviews_unlogged() -> bool:
            dump = await _admin_json(admin, "/config_dump", resource="dynamic_listeners")
            main = [c for c in dump.get("configs", []) if c.get("name") == "main_internal"]
            if not main or "warming_state" in main[0] or "active_state" not in main[0]:
                return False
            chains = {c.get("name"): json.dumps(c) for c in main[0]["active_state"]["listener"]["filter_chains"]}
            return "access_log" not in chains[f"inbound-vip|9080|http|{HOST}"] and \
                "access_log" in chains["inbound-vip|9080|http|details.shop.svc.cluster.local"]

        await wait_until(reviews_unlogged, timeout=15, message="reviews' access log off in the waypoint's Envoy")
        await send(addr, 10, path="/quiet")
        await send(details, 1, path="/marker")
        # The marker shares the file (one buffer, written in order): once it is there, any line for
        # the /quiet requests sent before it would be there too.
        await wait_until(lambda: paths("/marker"), timeout=30, message="the details service's line")
        assert paths("/quiet") == []
        # The same Envoy process throughout (no restart): its uptime only grew.
        def uptime(info: dict[str, Any]) -> float:
            return float(str(info["uptime_current_epoch"]).rstrip("s"))

        assert uptime(await _admin_json(admin, "/server_info")) >= uptime(server_info) > 0


async def _admin_json(admin_port: int, path: str, **params: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as http, \
            http.get(f"http://127.0.0.1:{admin_port}{path}", params=params) as r:
        data: dict[str, Any] = await r.json(content_type=None)
        return data
