"""``istiod-lite proxy-config`` against a running server with a real Envoy waypoint connected:
the tables name the listeners, routes, clusters and endpoints the server sent and say they were
ACKed; a listener Envoy rejects shows as NACKED with Envoy's error; ``-o json`` is protobuf JSON."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from istiod_lite.cli import proxy_config
from istiod_lite.xds import typeurls
from istiod_lite.xds.resources import ResourceSnapshot, VersionedResource
from tests.e2e.test_envoy_xds import broken_listener
from tests.e2e.test_waypoint_traffic import VS, serving, write
from tests.support.backends import BackendsFactory
from tests.support.mesh import ambient_mesh, exclusive_ip
from tests.support.ports import alloc_vip, free_port
from tests.support.wait import wait_until

pytestmark = pytest.mark.e2e


async def cli(*args: str) -> tuple[int, str, str]:
    """The command as a user runs it (a subprocess: the server shares this event loop)."""
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "istiod_lite.cli.main", *args,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def section(out: str, title: str) -> str:
    """One section of the text output: from its ``TITLE [XDS]`` line to the next blank line."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(title + " ["))
    end = next((i for i in range(start + 1, len(lines)) if not lines[i].strip()), len(lines))
    return "\n".join(lines[start:end])


async def test_proxy_config_tables_json_and_nack(tmp_path: Path, backends_factory: BackendsFactory) -> None:
    pods = await backends_factory(2, names=["reviews-v1", "reviews-v2"])
    wp, vip = exclusive_ip(), alloc_vip()
    cfg = tmp_path / "cfg"
    cfg.mkdir()
    write(cfg, wp=wp, vip=vip, port=pods.port, ip1=pods.pods[0].address[0], ip2=pods.pods[1].address[0])
    (cfg / "vs.yaml").write_text(VS.format(w1=50, w2=50))
    async with ambient_mesh(tmp_path, cfg) as mesh, mesh.waypoint("shop", "waypoint", wp) as agent, \
            mesh.client([(vip, 9080)], wp) as local:
        cp = mesh.cp
        mon = f"127.0.0.1:{cp.monitoring_port}"
        await wait_until(lambda: serving(local[(vip, 9080)]), timeout=30, message="waypoint serving")
        await wait_until(lambda: all(s.state.value == "SYNCED" for c in cp.ads.connections.values()
                                     for s in c.subs.values()), timeout=10, message="every type ACKed")
        (conn,) = cp.ads.connections.values()
        sent = cp.cache.get(conn.group)
        assert sent is not None

        rc, out, err = await cli("proxy-config", "shop/waypoint", "all", "--monitoring-addr", mon)
        assert rc == 0, err
        assert out.startswith(f"Proxy {conn.node_id} (group waypoint/shop/waypoint/{wp}")
        listeners = section(out, "LISTENERS")
        assert "ACKED (SYNCED)" in listeners.splitlines()[0]
        for name in sent.of_type(typeurls.LISTENER):  # every listener the server holds for the group
            assert f"\n{name} " in listeners
        assert f"connect_terminate  {wp}" in listeners and "15008" in listeners
        routes = section(out, "ROUTES")
        assert "ACKED (SYNCED)" in routes.splitlines()[0]
        reviews_route = "inbound-vip|9080|http|reviews.shop.svc.cluster.local"
        assert any(line.startswith(reviews_route) and "reviews.shop" in line  # VirtualService reviews.shop
                   for line in routes.splitlines())
        clusters = section(out, "CLUSTERS")
        assert "ACKED (SYNCED)" in clusters.splitlines()[0]
        rows = [line.split() for line in clusters.splitlines()[2:]]
        assert ["reviews.shop.svc.cluster.local", "9080", "http/v1", "inbound-vip", "EDS", "-"] in rows
        assert ["reviews.shop.svc.cluster.local", "9080", "http/v2", "inbound-vip", "EDS", "-"] in rows
        endpoints = section(out, "ENDPOINTS")
        ip1 = pods.pods[0].address[0]
        assert any(line.startswith(f"{ip1}:{pods.port} ") and "HEALTHY" in line
                   and "inbound-vip|9080|http/v1|reviews.shop.svc.cluster.local" in line
                   for line in endpoints.splitlines())
        assert "not served by this server" in section(out, "SECRETS") + out.split("SECRETS", 1)[1]

        # The pod's NS/NAME and the node id name the same proxy; one section at a time (in process:
        # the command's own functions, without a subprocess start each).
        pod = f"shop/{agent.config.identity.effective_pod_name}"
        for who in (pod, conn.node_id):
            dump = await asyncio.to_thread(proxy_config.fetch, mon, who)
            only = proxy_config.text(dump, "clusters")
            assert only.startswith(f"Proxy {conn.node_id} ") and "CLUSTERS [CDS]" in only and "LISTENERS" not in only

        # Every type the proxy holds decodes in the server (ECDS filter configs included).
        whole = await asyncio.to_thread(proxy_config.fetch, mon, "shop/waypoint")
        (p,) = whole["proxies"]
        decoded = [r["resource"] for t in p["dump"] for r in t["resources"]]
        assert {t["type"] for t in p["dump"]} >= {"LDS", "RDS", "CDS", "EDS", "ECDS"}
        assert decoded and all(r is not None and "error" not in r for r in decoded)

        # -o json: protobuf JSON of what was sent, byte-for-byte the server's resources.
        rc, js, err = await cli("proxy-config", "shop/waypoint", "routes", "-o", "json", "--monitoring-addr", mon)
        assert rc == 0, err
        (proxy,) = json.loads(js)["proxies"]
        (rds,) = proxy["dump"]
        assert rds["type"] == "RDS" and rds["state"] == "SYNCED"
        by_name: dict[str, Any] = {r["name"]: r for r in rds["resources"]}
        assert set(by_name) == set(sent.of_type(typeurls.ROUTE))
        got = by_name[reviews_route]
        assert got["resource"]["@type"] == typeurls.ROUTE and got["resource"]["name"] == reviews_route
        assert got["version"] == sent.of_type(typeurls.ROUTE)[reviews_route].version

        # A listener Envoy rejects (HCM config of the wrong type) pushed to this group: NACK.
        bad = broken_listener("broken", free_port())
        types = {t: list(sent.of_type(t).values()) for t in sent.types}
        types[typeurls.LISTENER] = [*types[typeurls.LISTENER],
                                    VersionedResource.from_message("broken", typeurls.LISTENER, bad)]
        cp.cache.set_snapshot(conn.group, ResourceSnapshot.build(types))
        lds = conn.subs[typeurls.LISTENER]
        await wait_until(lambda: lds.state.value == "ERROR", timeout=10, message="NACK recorded")
        rc, out, err = await cli("proxy-config", "shop/waypoint", "listeners", "--monitoring-addr", mon)
        assert rc == 0, err
        head = section(out, "LISTENERS").splitlines()[0]
        assert "NACKED (ERROR)" in head and "broken" in head.split("Envoy:", 1)[1], head
        assert "\nbroken " in out  # what was sent, and rejected, is shown

        # Unknown proxy: a clear error (exit 1); a malformed name: exit 2.
        with pytest.raises(proxy_config.ProxyConfigError, match="no connected proxy is 'shop/nope'"):
            await asyncio.to_thread(proxy_config.fetch, mon, "shop/nope")
        assert proxy_config.run("nope", "all", mon, "table") == 2

        # The endpoint is loopback-only and needs proxyID.
        async with aiohttp.ClientSession() as http, \
                http.get(f"http://{mon}/debug/config_dump") as r:
            assert r.status == 400
