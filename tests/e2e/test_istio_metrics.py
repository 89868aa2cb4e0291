"""Istio's standard metrics from a real waypoint, checked by a real Prometheus.

Two client identities (``spiffe://cluster.local/ns/frontend/sa/web`` and ``.../ns/batch/sa/worker``,
each its own ztunnel stand-in) send known traffic through one waypoint (agent, CA, secure xDS, real
Envoy) to two HTTP services (``reviews``: two pods, several response codes, some slow requests;
``ratings``: one pod, a Telemetry ``tagOverrides`` with a literal and a header value) and one TCP
service (``echo``: known byte counts).  Prometheus (Debian's ``prometheus``) scrapes the waypoint's
``:15090/stats/prometheus`` and istiod-lite's ``:15014/metrics``; the queries are those of Istio's
Grafana dashboards and Kiali's graph, and every result must equal what was sent.

Exact checks use raw counters (``sum by``): ``rate``/``increase`` extrapolate and never see a
series' first sample as an increase, so the dashboards' ``rate`` forms are checked for the same
label sets.  Latency quantiles are checked against the bucket bounds the measured latencies imply.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

import aiohttp
import pytest

from istiod_lite.model.meshconfig import MeshConfig
from tests.support.backends import BackendsFactory
from tests.support.mesh import ambient_mesh, exclusive_ip
from tests.support.meshyaml import SHOP_WAYPOINT, versioned_service
from tests.support.ports import alloc_pod_ip, alloc_vip, free_port
from tests.support.prometheus import prometheus_server, require_prometheus
from tests.support.wait import wait_until

pytestmark = [pytest.mark.e2e]

TD = "cluster.local"
WEB = f"spiffe://{TD}/ns/frontend/sa/web"
WORKER = f"spiffe://{TD}/ns/batch/sa/worker"
REVIEWS = "reviews.shop.svc.cluster.local"
RATINGS = "ratings.shop.svc.cluster.local"
ECHO = "echo.shop.svc.cluster.local"
PROM_PORT = 15090

CONFIG = SHOP_WAYPOINT + versioned_service("reviews", "http", 9080, vip="vip_reviews", ips=("ip_r1", "ip_r2")) + """---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews, namespace: shop}}
spec:
  hosts: [reviews]
  http:
  - match: [{{headers: {{x-version: {{exact: v2}}}}}}]
    route: [{{destination: {{host: reviews, subset: v2}}}}]
  - route: [{{destination: {{host: reviews, subset: v1}}}}]
---
apiVersion: v1
kind: Service
metadata: {{name: ratings, namespace: shop}}
spec:
  clusterIP: {vip_ratings}
  selector: {{app: ratings}}
  ports: [{{name: http, port: 9080, targetPort: {port}}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: ratings-v1, namespace: shop, labels: {{app: ratings, version: v1}}}}
status: {{podIP: {ip_ratings}}}
---
apiVersion: v1
kind: Service
metadata: {{name: echo, namespace: shop}}
spec:
  clusterIP: {vip_echo}
  selector: {{app: echo}}
  ports: [{{name: tcp, port: 9000, targetPort: {tcp_port}}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: echo-v1, namespace: shop, labels: {{app: echo, version: v1}}}}
status: {{podIP: {ip_echo}}}
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {{name: ratings-tags, namespace: shop}}
spec:
  targetRefs: [{{kind: Service, name: ratings}}]
  metrics:
  - providers: [{{name: prometheus}}]
    overrides:
    - match: {{metric: REQUEST_COUNT}}
      tagOverrides:
        team: {{value: "'stars'"}}
        user: {{value: "request.headers['x-user']"}}
        grpc_response_status: {{operation: REMOVE}}
"""

DR_RATINGS = """apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: ratings, namespace: shop}
spec:
  host: ratings
  trafficPolicy: {connectionPool: {http: {maxRetries: 3}}}
"""

MESH = """
defaultProviders: {metrics: [prometheus]}
extensionProviders: [{name: prometheus, prometheus: {}}]
"""

#: TCP: (bytes the client sends, bytes the pod answers) per connection.
TCP_EXCHANGES = ((1000, 500), (2000, 500), (3000, 700))


def mesh_config() -> MeshConfig:
    import yaml

    return MeshConfig.model_validate(yaml.safe_load(MESH))


class SizedEchoPod:
    """A TCP pod: reads ``<n>:<m>\\n`` then n bytes, answers m bytes and closes."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._server: asyncio.Server | None = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            header = await asyncio.wait_for(reader.readline(), 10)
            n, m = (int(x) for x in header.decode().split(":"))
            await asyncio.wait_for(reader.readexactly(n - len(header)), 10)
            writer.write(b"x" * m)
            await writer.drain()
        except (OSError, TimeoutError, ValueError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def __aenter__(self) -> SizedEchoPod:
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


async def tcp_exchange(addr: str, send: int, answer: int) -> int:
    """One connection of exactly ``send`` bytes up; returns the bytes that came back."""
    host, port = addr.rsplit(":", 1)
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, int(port)), 5)
    try:
        header = f"{send}:{answer}\n".encode()
        writer.write(header + b"y" * (send - len(header)))
        await writer.drain()
        got = await asyncio.wait_for(reader.read(-1), 10)
        return len(got)
    finally:
        writer.close()


async def get(http: aiohttp.ClientSession, addr: str, headers: dict[str, str]) -> tuple[int, float]:
    start = time.perf_counter()
    async with http.get(f"http://{addr}/", headers=headers) as r:
        await r.read()
        return r.status, (time.perf_counter() - start) * 1000


async def scrape(url: str) -> str:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http, http.get(url) as r:
        assert r.status == 200, r.status
        return await r.text()


def _bucket_bounds(value_ms: float) -> tuple[float, float]:
    """The (lower, upper] Istio/Envoy bucket holding ``value_ms``."""
    from istiod_lite.agent.stats.store import BUCKETS

    lower = 0.0
    for b in BUCKETS:
        if value_ms <= b:
            return lower, float(b)
        lower = float(b)
    return lower, float("inf")


async def test_istio_standard_metrics_with_prometheus(tmp_path: Path, backends_factory: BackendsFactory) -> None:
    require_prometheus()
    pods = await backends_factory(3, names=["reviews-v1", "reviews-v2", "ratings-v1"])
    ip_echo = alloc_pod_ip()
    tcp_port = free_port(ip_echo)
    wp = exclusive_ip()
    vips = {k: alloc_vip() for k in ("reviews", "ratings", "echo")}
    cfg = tmp_path / "cfg"
    cfg.mkdir()
    (cfg / "mesh.yaml").write_text(CONFIG.format(
        wp=wp, port=pods.port, ip_r1=pods[0].address[0], ip_r2=pods[1].address[0], ip_ratings=pods[2].address[0],
        vip_reviews=vips["reviews"], vip_ratings=vips["ratings"], vip_echo=vips["echo"], ip_echo=ip_echo,
        tcp_port=tcp_port))

    targets_web = [(vips["reviews"], 9080), (vips["echo"], 9000)]
    targets_worker = [(vips["reviews"], 9080), (vips["ratings"], 9080)]
    async with SizedEchoPod(ip_echo, tcp_port), \
            ambient_mesh(tmp_path, cfg, mesh=mesh_config()) as mesh, \
            mesh.waypoint("shop", "waypoint", wp, prometheus_port=PROM_PORT) as agent, \
            mesh.client(targets_web, wp, namespace="frontend", sa="web") as web, \
            mesh.client(targets_worker, wp, namespace="batch", sa="worker") as worker, \
            prometheus_server(tmp_path, {"waypoint": [f"{wp}:{PROM_PORT}"],
                                         "istiod": [f"127.0.0.1:{mesh.cp.monitoring_port}"]},
                              metrics_paths={"waypoint": "/stats/prometheus"}) as prom:
        web_reviews, web_echo = web[targets_web[0]], web[targets_web[1]]
        worker_reviews, worker_ratings = worker[targets_worker[0]], worker[targets_worker[1]]

        async def serving() -> bool:
            try:
                async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3)) as http:
                    return all([(await get(http, a, {}))[0] == 200
                                for a in (web_reviews, worker_reviews, worker_ratings)])
            except (aiohttp.ClientError, OSError, TimeoutError):
                return False

        await wait_until(serving, timeout=30, message="traffic through the waypoint")
        # A config edit (a second DestinationRule): one config event and one push trigger for istiod.
        (cfg / "dr-ratings.yaml").write_text(DR_RATINGS)
        # What the readiness probes sent (1 + retries): counted, then included in the expectations.
        base = await scrape(f"http://{wp}:{PROM_PORT}/stats/prometheus")
        assert "envoy_server_live" in base  # Envoy's own stats are still there
        await asyncio.sleep(1.0)  # let the probes' entries arrive (0.5 s flush)
        pre = await prom_counts_direct(wp)
        # Prometheus holds a first sample of the probes' series, so rate() sees the traffic below.
        await prom.scraped_after("waypoint", time.time())

        sent: Counter[tuple[str, str, str, str]] = Counter()  # (principal, service, workload, code)
        latencies: dict[str, list[float]] = {"fast": [], "slow": []}
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
            plan = ([(web_reviews, WEB, {}, "200", "reviews-v1")] * 30
                    + [(web_reviews, WEB, {"x-echo-status": "503"}, "503", "reviews-v1")] * 6
                    + [(web_reviews, WEB, {"x-echo-status": "404", "x-version": "v2"}, "404", "reviews-v2")] * 4
                    + [(worker_reviews, WORKER, {"x-version": "v2"}, "200", "reviews-v2")] * 10
                    + [(worker_ratings, WORKER, {"x-user": "alice"}, "200", "ratings-v1")] * 5
                    + [(worker_ratings, WORKER, {}, "201", "ratings-v1")] * 7)
            for addr, principal, headers, code, workload in plan:
                h = dict(headers)
                if code == "201":
                    h["x-echo-status"] = "201"
                status, _ = await get(http, addr, h)
                assert str(status) == code
                service = RATINGS if addr == worker_ratings else REVIEWS
                sent[(principal, service, workload, code)] += 1
            # Latency: 40 fast and 10 slow (120 ms at the pod) requests to reviews-v1 from web.
            for i in range(50):
                slow = i % 5 == 4
                status, ms = await get(http, web_reviews, {"x-echo-delay-ms": "120"} if slow else {})
                assert status == 200
                latencies["slow" if slow else "fast"].append(ms)
                sent[(WEB, REVIEWS, "reviews-v1", "200")] += 1
        for up, down in TCP_EXCHANGES:
            assert await tcp_exchange(web_echo, up, down) == down

        expected = Counter(sent)
        for key, n in pre.items():
            expected[key] += n
        total_tcp_rx = sum(u for u, _ in TCP_EXCHANGES)
        total_tcp_tx = sum(d for _, d in TCP_EXCHANGES)

        async def arrived() -> bool:
            counts = await prom_counts_direct(wp)
            return counts == expected and await tcp_closed_direct(wp) == len(TCP_EXCHANGES)

        await wait_until(arrived, timeout=15, message=lambda: "every request in the waypoint's metrics")
        # Two scrapes after everything arrived: rate() needs two samples of each series.
        for _ in range(2):
            last = await prom.scraped_after("waypoint", time.time())
            await prom.scraped_after("istiod", time.time())

        # --- Kiali's graph: requests by source and destination (raw counters for exact values) ---
        kiali_by = ("source_workload_namespace", "source_principal", "destination_service",
                    "destination_workload", "destination_workload_namespace", "destination_canonical_service",
                    "response_code")
        got = await prom.by('sum(istio_requests_total{reporter="waypoint",destination_service_namespace="shop"}) '
                            f'by ({",".join(kiali_by)})', *kiali_by)
        want: Counter[tuple[str, ...]] = Counter()
        for (principal, service, workload, code), n in expected.items():
            ns = principal.split("/")[4]
            want[(ns, principal, service, workload, "shop", workload.rsplit("-", 1)[0], code)] += n
        assert got == {k: float(v) for k, v in want.items()}
        # The same grouping with Kiali's rate(): the same edges.
        rate_edges = await prom.by(
            'sum(rate(istio_requests_total{reporter=~"destination|waypoint",destination_service_namespace="shop"}'
            f'[1m])) by ({",".join(kiali_by)})', *kiali_by, at=last)
        assert set(rate_edges) == set(want)
        # The edges the probes had already opened grew during the test: a positive rate.
        warm = {k for k, v in want.items() if k[1] == WEB and k[2] == REVIEWS and k[-1] == "200"}
        assert warm and all(rate_edges[k] > 0 for k in warm), rate_edges

        # --- Istio service dashboard: requests by response code for one service ---
        by_code = await prom.by(f'sum(istio_requests_total{{reporter="waypoint",destination_service=~"{REVIEWS}"}}) '
                                "by (response_code)", "response_code")
        want_codes: Counter[str] = Counter()
        for (_, service, _, code), n in expected.items():
            if service == REVIEWS:
                want_codes[code] += n
        assert by_code == {(c,): float(n) for c, n in want_codes.items()}
        rate_codes = await prom.by(f'sum(rate(istio_requests_total{{reporter="waypoint",destination_service=~'
                                   f'"{REVIEWS}"}}[1m])) by (response_code)', "response_code", at=last)
        assert set(rate_codes) == set(by_code) and rate_codes[("200",)] > 0, rate_codes
        # Mesh dashboard: 5xx and success rate.
        five = await prom.query('round(sum(istio_requests_total{reporter=~"source|waypoint",response_code=~"5.."}))')
        assert five == [({}, float(want_codes["503"]))]
        total = sum(expected.values())
        ok = await prom.query('sum(istio_requests_total{reporter=~"source|waypoint",response_code!~"5.."}) / '
                              'sum(istio_requests_total{reporter=~"source|waypoint"})')
        assert ok[0][1] == pytest.approx((total - want_codes["503"]) / total, abs=1e-9)

        # --- labels the waypoint knows, and Istio's "unknown" where it does not ---
        labels = await prom.query(f'istio_requests_total{{destination_service="{REVIEWS}",response_code="503"}}')
        assert len(labels) == 1
        lab = labels[0][0]
        assert {k: lab[k] for k in ("reporter", "source_principal", "source_workload_namespace", "source_workload",
                                    "destination_service_name", "destination_service_namespace",
                                    "destination_app", "destination_version", "destination_cluster",
                                    "destination_principal", "request_protocol", "response_flags",
                                    "connection_security_policy")} == {
            "reporter": "waypoint", "source_principal": WEB, "source_workload_namespace": "frontend",
            "source_workload": "unknown", "destination_service_name": "reviews",
            "destination_service_namespace": "shop", "destination_app": "reviews", "destination_version": "v1",
            "destination_cluster": "Kubernetes", "destination_principal": "unknown", "request_protocol": "http",
            "response_flags": "-", "connection_security_policy": "mutual_tls"}

        # --- Telemetry tagOverrides on ratings: literal, header, removed label ---
        tagged = await prom.by(f'sum(istio_requests_total{{destination_service="{RATINGS}"}}) by (team, user)',
                               "team", "user")
        assert tagged == {("stars", "alice"): 5.0, ("stars", "unknown"): 7.0 + pre_count(pre, RATINGS)}
        assert await prom.query(f'istio_requests_total{{destination_service="{RATINGS}",'
                                'grpc_response_status!=""}') == []
        # Other metrics of ratings keep Istio's labels (the overrides name REQUEST_COUNT only).
        assert await prom.query(f'istio_request_bytes_count{{destination_service="{RATINGS}",team!=""}}') == []

        # --- latency (workload dashboard's histogram_quantile over the waypoint's buckets) ---
        sel = f'reporter="waypoint",destination_workload="reviews-v1",source_principal="{WEB}",response_code="200"'
        count = await prom.query(f"sum(istio_request_duration_milliseconds_count{{{sel}}})")
        n_web_v1_ok = expected[(WEB, REVIEWS, "reviews-v1", "200")]
        assert count == [({}, float(n_web_v1_ok))]
        fast_upper = _bucket_bounds(max(latencies["fast"]))[1]
        for q in (0.5, 0.9, 0.99):
            res = await prom.query(f"histogram_quantile({q}, sum(istio_request_duration_milliseconds_bucket"
                                   f"{{{sel}}}) by (le))")
            value = res[0][1]
            rank = q * n_web_v1_ok
            if rank <= n_web_v1_ok - len(latencies["slow"]):
                assert 0 < value <= fast_upper, (q, value, latencies["fast"])
            else:
                # Slow requests took >= 120 ms at the pod and less than the client measured.
                low, high = _bucket_bounds(120)[0], _bucket_bounds(max(latencies["slow"]))[1]
                assert low < value <= high, (q, value, latencies["slow"])
        # The dashboards' rate() form evaluates too (a p50 over the last minute's samples).
        rate_p50 = await prom.query("histogram_quantile(0.5, sum(rate(istio_request_duration_milliseconds_bucket"
                                    f"{{{sel}}}[1m])) by (le))")
        assert len(rate_p50) == 1
        sizes = await prom.query(f'sum(istio_response_bytes_count{{destination_service="{REVIEWS}"}})')
        assert sizes == [({}, float(want_codes.total()))]

        # --- TCP bytes by source and destination (workload dashboard's TCP panels) ---
        tcp_by = ("source_principal", "destination_service", "destination_workload")
        key = (WEB, ECHO, "echo-v1")
        assert await prom.by(f"sum(istio_tcp_received_bytes_total{{reporter=\"waypoint\"}}) by ({','.join(tcp_by)})",
                             *tcp_by) == {key: float(total_tcp_rx)}
        assert await prom.by(f"sum(istio_tcp_sent_bytes_total{{reporter=\"waypoint\"}}) by ({','.join(tcp_by)})",
                             *tcp_by) == {key: float(total_tcp_tx)}
        for metric in ("istio_tcp_connections_opened_total", "istio_tcp_connections_closed_total"):
            assert await prom.by(f"sum({metric}) by ({','.join(tcp_by)})", *tcp_by) == {
                key: float(len(TCP_EXCHANGES))}
        tcp_labels = (await prom.query("istio_tcp_connections_closed_total"))[0][0]
        assert tcp_labels["request_protocol"] == "tcp" and "response_code" not in tcp_labels

        # --- the collector kept up ---
        dropped = await prom.query("istiod_lite_agent_stats_dropped_entries_total")
        assert dropped == [({"instance": f"{wp}:{PROM_PORT}", "job": "waypoint"}, 0.0)]

        # --- control plane: Istio's pilot dashboard queries on :15014 ---
        await check_pilot_dashboard(prom)

        # --- a collector that is gone never holds traffic up: Envoy's loggers do not wait for it ---
        assert agent.stats is not None
        received = agent.stats.received_entries
        await agent.stats.stop()
        start = time.monotonic()
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
            for _ in range(20):
                assert (await get(http, web_reviews, {}))[0] == 200
        assert time.monotonic() - start < 3, "requests slowed down without a collector"
        assert agent.stats.received_entries == received


def pre_count(pre: Counter[tuple[str, str, str, str]], service: str) -> int:
    return sum(n for (_, s, _, code), n in pre.items() if s == service)


async def prom_counts_direct(wp: str) -> Counter[tuple[str, str, str, str]]:
    """``istio_requests_total`` read straight from the waypoint: (principal, service, workload, code)."""
    from tests.e2e.test_observability import samples

    text = await scrape(f"http://{wp}:{PROM_PORT}/stats/prometheus")
    out: Counter[tuple[str, str, str, str]] = Counter()
    for labels, value in samples(text, "istio_requests_total"):
        out[(labels["source_principal"], labels["destination_service"], labels["destination_workload"],
             labels["response_code"])] += int(value)
    return out


async def tcp_closed_direct(wp: str) -> int:
    from tests.e2e.test_observability import samples

    text = await scrape(f"http://{wp}:{PROM_PORT}/stats/prometheus")
    return int(sum(v for _, v in samples(text, "istio_tcp_connections_closed_total")))


async def check_pilot_dashboard(prom: object) -> None:
    from tests.support.prometheus import Prometheus

    assert isinstance(prom, Prometheus)
    # Pilot Versions, Connections (server reported), XDS pushes, push errors, push time and size, events.
    builds = await prom.query('sum(istio_build{component="pilot"}) by (tag)')
    assert len(builds) == 1 and builds[0][1] == 1.0 and builds[0][0]["tag"]
    assert await prom.query('sum(pilot_xds{job="istiod"})') == [({}, 1.0)]  # the one waypoint's stream
    pushes = await prom.by('sum(pilot_xds_pushes{job="istiod"}) by (type)', "type")
    assert {("cds",), ("lds",), ("eds",)} <= set(pushes) and all(v >= 1 for v in pushes.values()), pushes
    assert (await prom.by('sum(irate(pilot_xds_pushes{job="istiod"}[1m])) by (type)', "type")).keys() <= pushes.keys()
    assert await prom.query('sum(pilot_total_xds_rejects{job="istiod"}) by (type)') == []
    assert await prom.query('pilot_total_xds_internal_errors{job="istiod"}') != []
    push_count = await prom.query('sum(pilot_xds_push_time_count{job="istiod"})')
    assert push_count[0][1] == sum(pushes.values())
    assert await prom.query('sum(rate(pilot_xds_push_time_bucket{job="istiod"}[1m])) by (le)') != []
    assert await prom.query('sum(rate(pilot_xds_config_size_bytes_bucket{job="istiod"}[1m])) by (le)') != []
    events = await prom.by('sum(pilot_k8s_cfg_events{job="istiod"}) by (type, event)', "type", "event")
    assert events[("VirtualService", "add")] == 1.0 and events[("Telemetry", "add")] == 1.0, events
    assert events[("DestinationRule", "add")] == 2.0, events  # the test's edit added the second
    assert "update" not in {e for _, e in events} and "delete" not in {e for _, e in events}, events
    registry = await prom.by('sum(pilot_k8s_reg_events{job="istiod"}) by (type, event)', "type", "event")
    assert registry[("Services", "add")] == 3.0 and registry[("Pods", "add")] == 4.0, registry
    triggers = await prom.by('sum(pilot_push_triggers{job="istiod"}) by (type)', "type")
    assert sum(triggers.values()) >= 1, triggers
    assert await prom.query('sum(rate(pilot_push_triggers{job="istiod"}[1m])) by (type)') != []
    # Services and virtual services pilot knows (the older dashboard's "Pilot Services" panel).
    assert await prom.query('pilot_services{job="istiod"}') == [({"instance": prom.jobs["istiod"][0],
                                                                  "job": "istiod"}, 3.0)]
    assert (await prom.query('pilot_virt_services{job="istiod"}'))[0][1] == 1.0
    # The older dashboard's panels: per-type rejects (real Envoy NACKs nothing: no series, so the
    # panel's ``absent(...) - 1`` fallback, 0), listener conflicts (0 for waypoints), write timeouts,
    # and the process's CPU and memory.
    for short in ("cds", "eds", "lds", "rds"):
        assert await prom.query(f'sum(pilot_xds_{short}_reject{{job="istiod"}}) or '
                                f'(absent(pilot_xds_{short}_reject{{job="istiod"}}) - 1)') == [
            ({"job": "istiod"}, 0.0)]
    for conflict in ("pilot_conflict_inbound_listener", "pilot_conflict_outbound_listener_tcp_over_current_tcp"):
        assert [v for _, v in await prom.query(f'{conflict}{{job="istiod"}}')] == [0.0]
    assert [v for _, v in await prom.query('sum(rate(pilot_xds_write_timeout{job="istiod"}[1m]))')] == [0.0]
    assert (await prom.query('irate(process_cpu_seconds_total{job="istiod"}[1m])')) != []
    assert (await prom.query('process_resident_memory_bytes{job="istiod"}'))[0][1] > 0
    # Citadel: the waypoint's CSR was signed.
    assert (await prom.query('sum(citadel_server_csr_count{job="istiod"})'))[0][1] >= 1
    assert (await prom.query('sum(citadel_server_success_cert_issuance_count{job="istiod"})'))[0][1] >= 1
