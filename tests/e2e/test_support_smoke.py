"""Smoke test of the test-support helpers: real backends behind a real Envoy with a static bootstrap."""

from __future__ import annotations

import asyncio
import copy
import ipaddress
from pathlib import Path

import aiohttp
import pytest

from tests.support.backends import BackendsFactory, start_backends
from tests.support.envoy import (
    EnvoyError,
    EnvoyFactory,
    EnvoyProcess,
    envoy_validate,
    parse_stats,
    static_http_proxy_bootstrap,
)
from tests.support.ports import alloc_pod_ip, alloc_vip, check_loopback, free_port, port_free_on_all
from tests.support.wait import WaitTimeout

pytestmark = pytest.mark.e2e

N = 20


async def test_round_robin_through_real_envoy(
    backends_factory: BackendsFactory, envoy_factory: EnvoyFactory
) -> None:
    group = await backends_factory(2)
    assert len({p.host for p in group.pods}) == 2
    assert all(ipaddress.ip_address(p.host) in ipaddress.ip_network("127.0.0.0/8") for p in group.pods)
    listen = free_port()
    bootstrap = static_http_proxy_bootstrap(listen_port=listen, endpoints=group.endpoints, cluster="backend")
    envoy = await envoy_factory(bootstrap, name="smoke")
    assert envoy.running and envoy.admin_port

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
        served = []
        for i in range(N):
            async with http.get(f"http://127.0.0.1:{listen}/hello?i={i}", headers={"x-test": "yes"}) as r:
                assert r.status == 200
                body = await r.json()
                assert r.headers["x-pod"] == body["pod"]
                assert body["path"] == f"/hello?i={i}"
                assert body["headers"]["x-test"] == "yes"
                served.append(body["pod"])

    assert set(served) == {"pod-1", "pod-2"}
    assert group.counts() == {"pod-1": N // 2, "pod-2": N // 2}  # round robin, one worker
    for rec in group.requests():
        assert rec.header("x-envoy-expected-rq-timeout-ms") == "15000"  # default route timeout
        assert rec.header("x-request-id")
        assert rec.remote is not None and rec.remote.startswith("127.")
    assert await envoy.wait_for("cluster.backend.upstream_rq_total", N, timeout=5) == N
    stats = await envoy.stats(filter="^cluster\\.backend\\.")
    assert stats["cluster.backend.upstream_rq_total"] == N
    assert stats["cluster.backend.upstream_rq_200"] == N

    dump = await envoy.config_dump()
    types = [c["@type"] for c in dump["configs"]]
    assert any(t.endswith("ClustersConfigDump") for t in types)
    assert "backend::" in await envoy.admin_get("/clusters")
    assert (await envoy.listeners())["http"] == ("127.0.0.1", listen)

    group.reset()
    assert group.counts() == {"pod-1": 0, "pod-2": 0}


async def test_backend_behaviours(backends_factory: BackendsFactory) -> None:
    group = await backends_factory(2, fail_first=2, fail_status=503, names=["a", "b"])
    a, b = group.by_name["a"], group.by_name["b"]
    assert a.port == b.port == group.port  # same "targetPort" on distinct pod addresses
    b.configure(status=201, delay=0.05, fail_first=0, response_headers={"x-extra": "1"})
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
        statuses = []
        for _ in range(3):
            async with http.post(a.url + "/p?q=1", data=b"12345") as r:
                statuses.append(r.status)
                assert r.headers["x-pod"] == "a"
        assert statuses == [503, 503, 200]
        async with http.get(b.url + "/x", headers=[("x-multi", "1"), ("x-multi", "2")]) as r:
            body = await r.json()
            assert r.status == 201 and r.headers["x-extra"] == "1"
            assert body["headers"]["x-multi"] == ["1", "2"]
        async with http.get(b.url + "/y", headers={"x-echo-status": "418", "x-echo-delay-ms": "0"}) as r:
            assert r.status == 418
    assert [(r.method, r.path, r.body_len, r.status) for r in a.requests] == [("POST", "/p?q=1", 5, s)
                                                                             for s in (503, 503, 200)]
    assert group.counts() == {"a": 3, "b": 2}
    a.reset()
    assert a.count == 0


async def test_explicit_ports_and_addresses() -> None:
    hosts = [alloc_pod_ip(), alloc_pod_ip()]
    assert hosts[0] != hosts[1]
    port = port_free_on_all(hosts)
    async with await start_backends(2, hosts=hosts, port=port) as group:
        assert group.endpoints == [(hosts[0], port), (hosts[1], port)]
    vip = alloc_vip()
    assert vip.startswith("127.10.") and vip != alloc_vip()
    with pytest.raises(ValueError):
        check_loopback("10.0.0.1")


def test_envoy_validate_accepts_and_rejects() -> None:
    good = static_http_proxy_bootstrap(listen_port=free_port(), endpoints=[("127.0.2.1", 8080)])
    ok, out = envoy_validate(good)
    assert ok, out
    bad = copy.deepcopy(good)
    bad["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"] = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.no_such_filter.v3.Nope"
    }
    ok, out = envoy_validate(bad)
    assert not ok
    assert "no_such_filter" in out


async def test_failed_start_raises_with_log_tail(envoy_factory: EnvoyFactory) -> None:
    bad = static_http_proxy_bootstrap(listen_port=free_port(), endpoints=[("127.0.2.1", 8080)])
    bad["static_resources"]["clusters"][0]["lb_policy"] = "NOT_A_POLICY"
    with pytest.raises(EnvoyError) as ei:
        await envoy_factory(bad, name="broken", timeout=15)
    msg = str(ei.value)
    assert "exited with code" in msg and "log tail" in msg
    assert "NOT_A_POLICY" in msg
    assert not envoy_factory.instances[-1].running


async def test_side_by_side_and_context_manager(tmp_path: Path) -> None:
    yaml_text = "node: {id: a, cluster: c}\n"  # YAML text bootstrap; admin section added automatically
    async with EnvoyProcess(yaml_text, workdir=tmp_path / "a") as e1, \
            EnvoyProcess(yaml_text, log_level="debug", workdir=tmp_path / "b") as e2:
        assert e1.admin_port != e2.admin_port
        s1 = parse_stats(await e1.admin_get("/stats"))
        assert "server.live" in s1
        assert await e2.wait_for("server.live", 1, timeout=5) == 1
        assert await e1.wait_for(lambda: e1.running) is True
        with pytest.raises(WaitTimeout):
            await e1.wait_for("server.no_such_stat", timeout=0.2)
        pid = e1.pid
    assert not e1.running and not e2.running and pid is not None
    assert "debug" in e2.log_text()
    e3 = EnvoyProcess(yaml_text)  # own temp workdir, removed at stop
    await e3.start()
    workdir = e3.workdir
    assert await e3.stop() is not None
    assert not workdir.exists() and "starting main dispatch loop" in e3.log_text()
    await asyncio.sleep(0)
