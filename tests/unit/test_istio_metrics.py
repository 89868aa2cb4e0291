"""Istio's standard metrics: the translator's loggers and merge (``translator/telemetry/metrics.py``),
the agent's labels, aggregation and access-log service (``agent/stats``)."""

from __future__ import annotations

import asyncio
import random
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import yaml
from envoy.config.accesslog.v3 import accesslog_pb2
from envoy.data.accesslog.v3 import accesslog_pb2 as data_pb2
from envoy.extensions.access_loggers.grpc.v3 import als_pb2 as als_config_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from envoy.service.accesslog.v3 import als_pb2, als_pb2_grpc
from google.protobuf import wrappers_pb2

from istiod_lite.agent.stats import labels as lb
from istiod_lite.agent.stats.collector import StatsCollector
from istiod_lite.agent.stats.store import BUCKETS, IstioMetricsStore
from istiod_lite.model import parse_object
from istiod_lite.model.meshconfig import MeshConfig
from istiod_lite.model.telemetry import Telemetry
from istiod_lite.translator.telemetry import metrics
from istiod_lite.translator.telemetry.metrics import LogConfig, MetricsSetting, TagRule

MESH = MeshConfig.model_validate(yaml.safe_load(
    "extensionProviders: [{name: prom, prometheus: {}}, {name: logs, envoyFileAccessLog: {path: /dev/stdout}}]"))
DEFAULT_MESH = MeshConfig.model_validate(yaml.safe_load(
    "defaultProviders: {metrics: [prom]}\nextensionProviders: [{name: prom, prometheus: {}}]"))
WEB = "spiffe://cluster.local/ns/frontend/sa/web"


def telemetry(name: str, metrics_yaml: str) -> Telemetry:
    obj = parse_object(yaml.safe_load(f"""
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {{name: {name}, namespace: app}}
spec: {{metrics: {metrics_yaml}}}
"""))
    assert isinstance(obj, Telemetry)
    return obj


# -- translator ---------------------------------------------------------------------------------------

@pytest.mark.parametrize(("expr", "want"), [
    ("'payments'", ("literal", "payments")),
    ('"a b"', ("literal", "a b")),
    ("request.headers['X-User']", ("header", "x-user")),
    ('request.headers["x-team"]', ("header", "x-team")),
    ("request.host", ("header", ":authority")),
    ("request.method", ("header", ":method")),
    ("request.size > 10 ? 'big' : 'small'", None),
    ("upstream_peer.labels['app'].value", None),
    ("'unterminated", None),
])
def test_tag_values_without_cel(expr: str, want: tuple[str, str] | None) -> None:
    assert metrics.parse_tag_value(expr) == want


def test_no_prometheus_provider_no_metrics() -> None:
    assert metrics.metrics_setting([], MESH) is None
    assert metrics.metrics_setting([telemetry("t", "[{providers: [{name: logs}]}]")], MESH) is None
    assert metrics.metrics_setting([], DEFAULT_MESH) == MetricsSetting()


def test_overrides_merge_level_by_level() -> None:
    root = telemetry("root", "[{providers: [{name: prom}], overrides: [{disabled: true}], reportingInterval: 5s}]")
    svc = telemetry("svc", """[{overrides: [
        {match: {metric: REQUEST_COUNT}, disabled: false,
         tagOverrides: {team: {value: "'a'"}, user: {value: "request.headers['x-user']"},
                        request_protocol: {operation: REMOVE}, size: {value: "request.size"}}},
        {match: {metric: REQUEST_DURATION, mode: CLIENT}, disabled: false},
        {match: {customMetric: custom}, disabled: false}]}]""")
    assert metrics.metrics_setting([root], MESH) is None  # every metric off
    got = metrics.metrics_setting([root, svc], MESH)
    assert got is not None
    assert got.disabled == frozenset(metrics.ALL_METRICS) - {"REQUEST_COUNT"}  # CLIENT mode ignored
    assert got.tags == (TagRule("REQUEST_COUNT", "request_protocol", "remove"),
                        TagRule("REQUEST_COUNT", "team", "literal", "a"),
                        TagRule("REQUEST_COUNT", "user", "header", "x-user"))  # the CEL one is left out
    assert got.tcp_reporting_s == 5.0
    problems = metrics.entry_problems("Telemetry app/svc", svc.spec.metrics[0], MESH)
    assert any("tagOverrides size value 'request.size'" in p for p in problems), problems
    assert any("REQUEST_DURATION (CLIENT) ignored" in p for p in problems), problems
    assert any("customMetric custom" in p for p in problems), problems


def test_a_level_naming_other_providers_takes_metrics_away() -> None:
    svc = telemetry("svc", "[{providers: [{name: logs}]}]")
    assert metrics.metrics_setting([svc], DEFAULT_MESH) is None


def test_log_config_round_trip_and_refusals() -> None:
    cfg = LogConfig("http", "a.b.svc.cluster.local", "a", "b", frozenset({"REQUEST_SIZE"}),
                    (TagRule("REQUEST_COUNT", "team", "literal", "x"),))
    assert LogConfig.decode(cfg.encode()) == cfg
    for bad in ("", "{}", '{"v": 2}', "[1]", '{"v":1,"kind":"udp","service":{}}', "not json"):
        with pytest.raises(ValueError):
            LogConfig.decode(bad)


def test_tcp_reporting_keeps_file_logs_at_connection_end() -> None:
    setting = MetricsSetting(tcp_reporting_s=7)
    file_log = accesslog_pb2.AccessLog(name="envoy.access_loggers.file")
    filtered = accesslog_pb2.AccessLog(name="envoy.access_loggers.file")
    filtered.filter.extension_filter.name = "cel"
    proxy = tcp_proxy_pb2.TcpProxy(access_log=[file_log, filtered])
    from istiod_lite.translator.binding.service_model import ServiceInfo

    svc = ServiceInfo("a.b.svc.cluster.local", "a", "b", (), (), "", None, "")  # type: ignore[arg-type]
    proxy.access_log.append(metrics.stats_logger(setting, svc, tcp=True))
    metrics.with_tcp_reporting(proxy, setting)
    assert proxy.access_log_options.flush_access_log_on_connected
    assert proxy.access_log_options.access_log_flush_interval.seconds == 7
    assert list(proxy.access_log[0].filter.log_type_filter.types) == [data_pb2.TcpConnectionEnd]
    both = proxy.access_log[1].filter.and_filter.filters
    assert list(both[0].log_type_filter.types) == [data_pb2.TcpConnectionEnd]
    assert both[1].extension_filter.name == "cel"
    grpc_log = proxy.access_log[2]
    assert grpc_log.name == metrics.TCP_GRPC_LOGGER and not grpc_log.HasField("filter")
    cfg = als_config_pb2.TcpGrpcAccessLogConfig()
    grpc_log.typed_config.Unpack(cfg)
    assert cfg.common_config.grpc_service.envoy_grpc.cluster_name == metrics.STATS_CLUSTER
    assert LogConfig.decode(cfg.common_config.log_name).kind == "tcp"


# -- agent: labels and aggregation -----------------------------------------------------------------

CONFIG = LogConfig("http", "reviews.shop.svc.cluster.local", "reviews", "shop")


def http_entry(code: int = 200, ms: int = 3, peer: str = WEB, workload: str = "reviews-v1;shop;reviews;v1;Kubernetes",
               cluster: str = "inbound-vip|9080|http/v1|reviews.shop.svc.cluster.local",
               headers: dict[str, str] | None = None) -> data_pb2.HTTPAccessLogEntry:
    e = data_pb2.HTTPAccessLogEntry()
    c = e.common_properties
    if peer:
        c.filter_state_objects[metrics.PEER_PRINCIPAL_KEY].Pack(wrappers_pb2.StringValue(value=peer))
    if workload:
        c.custom_tags[metrics.CUSTOM_TAG_WORKLOAD] = workload
    c.upstream_cluster = cluster
    c.duration.FromMilliseconds(ms)
    e.request.request_headers_bytes, e.request.request_body_bytes = 100, 20
    e.response.response_headers_bytes, e.response.response_body_bytes = 50, 1000
    e.response.response_code.value = code
    for k, v in (headers or {}).items():
        e.request.request_headers[k] = v
    return e


def test_labels_of_an_entry() -> None:
    flags = data_pb2.ResponseFlags(no_healthy_upstream=True, upstream_retry_limit_exceeded=True)
    assert lb.response_flags(flags) == "UH,URX" and lb.response_flags(data_pb2.ResponseFlags()) == "-"
    assert lb.spiffe_namespace(WEB) == "frontend" and lb.spiffe_namespace("spiffe://x/y") == "unknown"
    assert lb.cluster_host("outbound|80||api.example.com") == "api.example.com" and lb.cluster_host("xds") == ""
    e = http_entry(cluster="outbound|9080||ratings.other.svc.cluster.local", workload="", peer="")
    got = lb.base_labels(CONFIG, e.common_properties, "http")
    assert got["destination_service"] == "ratings.other.svc.cluster.local"
    assert (got["destination_service_name"], got["destination_service_namespace"]) == ("ratings", "other")
    assert got["destination_workload"] == got["source_principal"] == "unknown"
    assert got["connection_security_policy"] == "none"
    e = http_entry(cluster="", workload="a;b;;;")  # no route; no canonical name or revision
    got = lb.base_labels(CONFIG, e.common_properties, "http")
    assert got["destination_service"] == CONFIG.host and got["destination_service_name"] == "reviews"
    assert (got["destination_workload"], got["destination_app"], got["destination_version"]) == ("a", "unknown",
                                                                                                 "latest")


def parse(text: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def test_http_aggregation_and_exposition() -> None:
    store = IstioMetricsStore()
    cfg = LogConfig("http", CONFIG.host, "reviews", "shop", frozenset({"REQUEST_SIZE"}),
                    (TagRule("REQUEST_COUNT", "user", "header", "x-user"),
                     TagRule("REQUEST_COUNT", "grpc_response_status", "remove")))
    e = http_entry(ms=3)
    e.common_properties.custom_tags[f"{metrics.CUSTOM_TAG_OVERRIDE_PREFIX}0"] = 'al"ice'
    store.add_http(cfg, e)
    store.add_http(cfg, http_entry(ms=30, code=503))
    store.add_http(cfg, http_entry(ms=30, code=200, headers={"content-type": "application/grpc"}))
    samples = parse(store.render())
    counts = {k: v for k, v in samples.items() if k.startswith("istio_requests_total{")}
    assert sum(counts.values()) == 3 and len(counts) == 3
    assert any('user="al\\"ice"' in k and 'response_code="200"' in k for k in counts)  # escaped
    assert not any("grpc_response_status" in k for k in counts)  # removed from REQUEST_COUNT only
    assert any('request_protocol="grpc"' in k for k in counts)
    assert not any(k.startswith("istio_request_bytes") for k in samples)  # disabled
    dur = {k: v for k, v in samples.items() if k.startswith("istio_request_duration_milliseconds_bucket")
           and 'response_code="200"' in k and 'request_protocol="http"' in k}
    assert len(dur) == len(BUCKETS) + 1
    assert dur[next(k for k in dur if 'le="1"' in k)] == 0 and dur[next(k for k in dur if 'le="5"' in k)] == 1
    assert dur[next(k for k in dur if 'le="+Inf"' in k)] == 1
    resp = [v for k, v in samples.items() if k.startswith("istio_response_bytes_sum")]
    assert sum(resp) == 3 * 1050
    text = store.render()
    assert "# TYPE istio_requests_total counter" in text and "# TYPE istio_response_bytes histogram" in text


def tcp_entry(kind: int, stream: str, rx: int, tx: int) -> data_pb2.TCPAccessLogEntry:
    e = data_pb2.TCPAccessLogEntry()
    c = e.common_properties
    c.access_log_type = kind  # type: ignore[assignment]
    c.stream_id = stream
    c.filter_state_objects[metrics.PEER_PRINCIPAL_KEY].Pack(wrappers_pb2.StringValue(value=WEB))
    e.connection_properties.received_bytes, e.connection_properties.sent_bytes = rx, tx
    return e


def tcp_totals(store: IstioMetricsStore) -> dict[str, float]:
    out: dict[str, float] = {}
    for k, v in parse(store.render()).items():
        name = k.split("{", 1)[0]
        out[name] = out.get(name, 0) + v
    return out


def test_tcp_reports_count_each_byte_once() -> None:
    store = IstioMetricsStore(max_open_connections=1)
    cfg = LogConfig("tcp", "echo.shop.svc.cluster.local", "echo", "shop")
    store.add_tcp(cfg, tcp_entry(data_pb2.TcpUpstreamConnected, "a", 0, 0))
    assert tcp_totals(store)["istio_tcp_connections_opened_total"] == 1
    store.add_tcp(cfg, tcp_entry(data_pb2.TcpPeriodic, "a", 100, 10))
    store.add_tcp(cfg, tcp_entry(data_pb2.TcpPeriodic, "b", 5, 5))  # over the limit: reported at its end
    store.add_tcp(cfg, tcp_entry(data_pb2.TcpPeriodic, "a", 250, 30))
    store.add_tcp(cfg, tcp_entry(data_pb2.TcpConnectionEnd, "a", 300, 40))
    store.add_tcp(cfg, tcp_entry(data_pb2.TcpConnectionEnd, "b", 7, 9))
    assert tcp_totals(store) == {"istio_tcp_connections_opened_total": 2, "istio_tcp_connections_closed_total": 2,
                                 "istio_tcp_received_bytes_total": 307, "istio_tcp_sent_bytes_total": 49}
    assert store.untracked_connections == 1


def test_series_limit_bounds_memory() -> None:
    store = IstioMetricsStore(max_series=2)
    cfg = LogConfig("http", CONFIG.host, "reviews", "shop", frozenset(),
                    (TagRule("REQUEST_COUNT", "user", "header", "x-user"),))
    for i in range(5):
        e = http_entry()
        e.common_properties.custom_tags[f"{metrics.CUSTOM_TAG_OVERRIDE_PREFIX}0"] = str(i)
        store.add_http(cfg, e)
    assert len([k for k in parse(store.render()) if k.startswith("istio_requests_total")]) == 2
    assert store.series_dropped == 3


# -- agent: the access-log service --------------------------------------------------------------------

def message(cfg: LogConfig | None, n: int) -> als_pb2.StreamAccessLogsMessage:
    m = als_pb2.StreamAccessLogsMessage()
    if cfg is not None:
        m.identifier.log_name = cfg.encode()
    for _ in range(n):
        m.http_logs.log_entry.add().CopyFrom(http_entry())
    return m


async def test_a_full_queue_drops_and_counts() -> None:
    """The aggregator is not running: one batch fits, the rest are dropped at once (never awaited)."""
    collector = StatsCollector(Path(tempfile.mkdtemp(prefix="st-")) / "als", max_pending=1)

    async def stream() -> AsyncIterator[als_pb2.StreamAccessLogsMessage]:
        yield message(CONFIG, 3)
        yield message(None, 4)
        yield message(None, 5)

    await asyncio.wait_for(collector.StreamAccessLogs(stream(), None), 1)  # type: ignore[arg-type]
    assert (collector.received_entries, collector.dropped_entries) == (12, 9)
    await collector.drain()
    assert collector.store.entries == 3
    assert "istiod_lite_agent_stats_dropped_entries_total 9" in "\n".join(collector.own_metrics())


async def test_streams_over_grpc_on_the_unix_socket() -> None:
    collector = StatsCollector(Path(tempfile.mkdtemp(prefix="st-")) / "als")
    await collector.start()
    try:
        async with grpc.aio.insecure_channel(f"unix:{collector.socket_path}") as channel:
            stub = als_pb2_grpc.AccessLogServiceStub(channel)

            async def stream() -> AsyncIterator[als_pb2.StreamAccessLogsMessage]:
                yield message(CONFIG, 2)
                yield message(None, 1)  # same stream: the identifier came with the first message
                bad = message(None, 1)
                bad.identifier.log_name = "not ours"
                yield bad

            await stub.StreamAccessLogs(stream())
        for _ in range(100):
            if collector.store.entries == 3:
                break
            await asyncio.sleep(0.01)
        assert collector.store.entries == 3 and collector.malformed_entries == 1
        assert oct(collector.socket_path.stat().st_mode & 0o777) == "0o600"
    finally:
        await collector.stop()
    assert not collector.socket_path.exists()


def test_cached_series_aggregate_like_labels_built_per_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    """The per-chain cache keys an entry on what its labels are computed from: a varied batch
    aggregated with the cache gives the same text as with labels built for every entry."""
    cfg = LogConfig("http", CONFIG.host, "reviews", "shop", frozenset(),
                    (TagRule("REQUEST_COUNT", "user", "header", "x-user"),))
    entries = []
    rnd = random.Random(17)  # each property varies independently of the others
    for i in range(300):
        e = http_entry(code=rnd.choice((0, 200, 404, 503)), ms=i, peer=rnd.choice(("", WEB, "spiffe://c/ns/a/sa/b")),
                       cluster=rnd.choice(("", "outbound|9080||ratings.other.svc.cluster.local")),
                       workload=rnd.choice(("", "reviews-v1;shop;reviews;v1;Kubernetes", "r2;shop;reviews;v2;")),
                       headers={"content-type": "application/grpc"} if rnd.random() < 0.3 else None)
        for props in (e.response.response_trailers, e.response.response_headers):
            if rnd.random() < 0.3:
                props["grpc-status"] = rnd.choice(("0", "14"))
        if rnd.random() < 0.3:
            e.common_properties.response_flags.upstream_connection_failure = True
        if rnd.random() < 0.7:
            e.common_properties.custom_tags[f"{metrics.CUSTOM_TAG_OVERRIDE_PREFIX}0"] = rnd.choice(("u0", "u1"))
        entries.append(e)
    tcp = [tcp_entry(data_pb2.TcpConnectionEnd, f"c{i}", i, 2 * i) for i in range(10)]
    tcp_cfg = LogConfig("tcp", "echo.shop.svc.cluster.local", "echo", "shop")
    cached = IstioMetricsStore()
    cached.add_http_batch(cfg, entries)
    cached.add_tcp_batch(tcp_cfg, tcp)
    monkeypatch.setattr("istiod_lite.agent.stats.store._LABEL_CACHE_SIZE", 0)  # cleared for every entry
    fresh = IstioMetricsStore()
    for e in entries:
        fresh.add_http(cfg, e)
    for t in tcp:
        fresh.add_tcp(tcp_cfg, t)
    assert cached.render() == fresh.render()
    assert len([k for k in parse(cached.render()) if k.startswith("istio_requests_total")]) > 10
