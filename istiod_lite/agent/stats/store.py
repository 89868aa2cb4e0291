"""The waypoint's Istio metrics: counters and histograms built from access-log entries, rendered in
Prometheus' text format beside Envoy's own stats.

Names, types and buckets are Istio's: ``istio_requests_total`` and the four TCP counters are
counters; ``istio_request_duration_milliseconds``, ``istio_request_bytes`` and
``istio_response_bytes`` are histograms with Envoy's default buckets (Istio's stats filter records
into Envoy histograms, which use them).  Request/response sizes are headers plus body, as Istio's
``request.total_size`` / ``response.total_size``.

Bounded memory: at most ``max_series`` label sets per metric (a tag override read from a header
could otherwise create one series per distinct value) and ``max_open_connections`` TCP connections
tracked between reports; what does not fit is counted in ``istiod_lite_agent_stats_*`` and, for a
connection, reported whole at its end.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Final

from envoy.data.accesslog.v3 import accesslog_pb2 as data_pb2

from istiod_lite.agent.stats import labels as lb
from istiod_lite.translator.telemetry.metrics import PEER_PRINCIPAL_KEY, TCP_METRICS, LogConfig

#: Envoy's default histogram buckets (``HistogramSettingsImpl::defaultBuckets``).
BUCKETS: Final = (0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 300000, 600000,
                  1800000, 3600000)
_HELP: Final[dict[str, str]] = {
    "istio_requests_total": "Requests handled by the waypoint (Istio standard metric).",
    "istio_request_duration_milliseconds": "Request duration in milliseconds (Istio standard metric).",
    "istio_request_bytes": "Request size in bytes, headers and body (Istio standard metric).",
    "istio_response_bytes": "Response size in bytes, headers and body (Istio standard metric).",
    "istio_tcp_sent_bytes_total": "Bytes sent to the client on TCP connections (Istio standard metric).",
    "istio_tcp_received_bytes_total": "Bytes received from the client on TCP connections (Istio standard metric).",
    "istio_tcp_connections_opened_total": "TCP connections opened (Istio standard metric).",
    "istio_tcp_connections_closed_total": "TCP connections closed (Istio standard metric).",
}
_HISTOGRAMS: Final = frozenset({"istio_request_duration_milliseconds", "istio_request_bytes",
                                "istio_response_bytes"})
DEFAULT_MAX_SERIES: Final = 20000
#: The Telemetry API names of the HTTP metrics, in ``_http_labels``' order.
_HTTP_ORDER: Final = ("REQUEST_COUNT", "REQUEST_DURATION", "REQUEST_SIZE", "RESPONSE_SIZE")
_LABEL_CACHE_SIZE: Final = 10000
DEFAULT_MAX_OPEN_CONNECTIONS: Final = 100000


@dataclass
class _Histogram:
    buckets: list[int] = field(default_factory=lambda: [0] * len(BUCKETS))
    total: float = 0.0
    count: int = 0

    def observe(self, value: float) -> None:
        i = bisect.bisect_left(BUCKETS, value)  # the first bound >= value ("le")
        if i < len(BUCKETS):
            self.buckets[i] += 1
        self.total += value
        self.count += 1


@dataclass
class _Connection:
    received: int = 0
    sent: int = 0


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels_text(labels: lb.Labels, extra: str = "") -> str:
    parts = [f'{k}="{_escape(v)}"' for k, v in labels]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}"


def _number(v: float) -> str:
    if math.isinf(v):
        return "+Inf"
    return str(int(v)) if float(v).is_integer() else repr(float(v))


def _le(bound: float) -> str:
    return 'le="' + _number(bound) + '"'


class IstioMetricsStore:
    """Aggregates entries; ``render()`` gives the Prometheus text.  Not thread-safe: one owner task."""

    def __init__(self, max_series: int = DEFAULT_MAX_SERIES,
                 max_open_connections: int = DEFAULT_MAX_OPEN_CONNECTIONS) -> None:
        self.max_series = max_series
        self.max_open_connections = max_open_connections
        self._counters: dict[str, dict[lb.Labels, float]] = {m: {} for m in (
            "istio_requests_total", *TCP_METRICS.values())}
        self._histograms: dict[str, dict[lb.Labels, _Histogram]] = {m: {} for m in _HISTOGRAMS}
        self._open: dict[str, _Connection] = {}
        self._label_cache: dict[tuple[object, ...], tuple[lb.Labels | None, ...]] = {}
        self.entries = 0
        self.series_dropped = 0
        self.untracked_connections = 0

    # -- recording ---------------------------------------------------------------------------------
    def _count(self, metric: str, labels: lb.Labels, value: float) -> None:
        series = self._counters[metric]
        if labels not in series:
            if len(series) >= self.max_series:
                self.series_dropped += 1
                return
            series[labels] = 0.0
        series[labels] += value

    def _observe(self, metric: str, labels: lb.Labels, value: float) -> None:
        series = self._histograms[metric]
        hist = series.get(labels)
        if hist is None:
            if len(series) >= self.max_series:
                self.series_dropped += 1
                return
            hist = series[labels] = _Histogram()
        hist.observe(value)

    def _http_labels(self, config: LogConfig, entry: data_pb2.HTTPAccessLogEntry, code: int
                     ) -> tuple[lb.Labels | None, ...]:
        """The label sets of the four HTTP metrics (``None``: disabled) for ``entry``, memoised on
        everything they are computed from: a waypoint sees few distinct combinations, and building
        them is most of an entry's cost."""
        common = entry.common_properties
        peer = common.filter_state_objects.get(PEER_PRINCIPAL_KEY)
        key = (config, peer.value if peer is not None else b"", tuple(sorted(common.custom_tags.items())),
               common.upstream_cluster, code, common.response_flags.SerializeToString(),
               entry.request.request_headers.get("content-type", ""),
               entry.response.response_trailers.get("grpc-status", ""),
               entry.response.response_headers.get("grpc-status", ""))
        cached = self._label_cache.get(key)
        if cached is not None:
            return cached
        protocol = lb.http_protocol(entry.request)
        base = lb.base_labels(config, common, protocol)
        base["response_code"] = str(code)
        base["grpc_response_status"] = lb.grpc_status(entry.response, protocol)
        tags = common.custom_tags
        out = tuple(None if name in config.disabled else lb.for_metric(config, name, base, lb.HTTP_LABELS, tags)
                    for name in _HTTP_ORDER)
        if len(self._label_cache) >= _LABEL_CACHE_SIZE:
            self._label_cache.clear()
        self._label_cache[key] = out
        return out

    def add_http(self, config: LogConfig, entry: data_pb2.HTTPAccessLogEntry) -> None:
        self.entries += 1
        common = entry.common_properties
        code = entry.response.response_code.value if entry.response.HasField("response_code") else 0
        count, duration_labels, request_labels, response_labels = self._http_labels(config, entry, code)
        if count is not None:
            self._count("istio_requests_total", count, 1)
        if duration_labels is not None:
            duration = common.duration if common.HasField("duration") else common.time_to_last_downstream_tx_byte
            self._observe("istio_request_duration_milliseconds", duration_labels, duration.ToNanoseconds() / 1e6)
        if request_labels is not None:
            self._observe("istio_request_bytes", request_labels,
                          entry.request.request_headers_bytes + entry.request.request_body_bytes)
        if response_labels is not None:
            self._observe("istio_response_bytes", response_labels,
                          entry.response.response_headers_bytes + entry.response.response_body_bytes)

    def add_tcp(self, config: LogConfig, entry: data_pb2.TCPAccessLogEntry) -> None:
        """One TCP report: on connect (``TcpUpstreamConnected``: opened), periodic (bytes since the
        last report) or at the end (the remaining bytes; closed, and opened if never reported)."""
        self.entries += 1
        common = entry.common_properties
        kind = common.access_log_type
        key = common.stream_id
        received, sent = entry.connection_properties.received_bytes, entry.connection_properties.sent_bytes
        conn = self._open.get(key) if key else None
        if kind in (data_pb2.TcpUpstreamConnected, data_pb2.TcpPeriodic) and conn is None:
            if not key or len(self._open) >= self.max_open_connections:
                self.untracked_connections += 1
                return  # reported whole at its end
            conn = self._open[key] = _Connection()
            opened = True
        else:
            opened = conn is None
        if kind == data_pb2.TcpConnectionEnd or kind == data_pb2.NotSet:
            self._open.pop(key, None)
            closed = True
        else:
            closed = False
        prev = conn or _Connection()
        delta_rx, delta_tx = max(0, received - prev.received), max(0, sent - prev.sent)
        if conn is not None and not closed:
            conn.received, conn.sent = max(received, conn.received), max(sent, conn.sent)
        base = lb.base_labels(config, common, "tcp")
        tags = common.custom_tags
        for name, metric, value in (("TCP_OPENED_CONNECTIONS", "istio_tcp_connections_opened_total", int(opened)),
                                    ("TCP_CLOSED_CONNECTIONS", "istio_tcp_connections_closed_total", int(closed)),
                                    ("TCP_RECEIVED_BYTES", "istio_tcp_received_bytes_total", delta_rx),
                                    ("TCP_SENT_BYTES", "istio_tcp_sent_bytes_total", delta_tx)):
            if name in config.disabled:
                continue
            labels = lb.for_metric(config, name, base, lb.TCP_LABELS, tags)
            # A series appears at its first report (Istio exports a connection's counters from its start).
            self._count(metric, labels, value)

    # -- exposition --------------------------------------------------------------------------------
    def _lines(self) -> Iterator[str]:
        for metric in ("istio_requests_total", "istio_request_duration_milliseconds", "istio_request_bytes",
                       "istio_response_bytes", *TCP_METRICS.values()):
            if metric in _HISTOGRAMS:
                hseries = self._histograms[metric]
                if not hseries:
                    continue
                yield f"# HELP {metric} {_HELP[metric]}"
                yield f"# TYPE {metric} histogram"
                for labels, hist in sorted(hseries.items()):
                    running = 0
                    for bound, n in zip(BUCKETS, hist.buckets, strict=True):
                        running += n
                        yield f"{metric}_bucket{_labels_text(labels, _le(bound))} {running}"
                    yield f"{metric}_bucket{_labels_text(labels, _le(math.inf))} {hist.count}"
                    yield f"{metric}_sum{_labels_text(labels)} {_number(hist.total)}"
                    yield f"{metric}_count{_labels_text(labels)} {hist.count}"
            else:
                cseries = self._counters[metric]
                if not cseries:
                    continue
                yield f"# HELP {metric} {_HELP[metric]}"
                yield f"# TYPE {metric} counter"
                for labels, value in sorted(cseries.items()):
                    yield f"{metric}{_labels_text(labels)} {_number(value)}"

    def render(self, extra: Iterable[str] = ()) -> str:
        """The Istio metrics (and ``extra`` lines, e.g. the collector's own counters) as text."""
        return "".join(line + "\n" for line in (*self._lines(), *extra))


__all__ = ["BUCKETS", "IstioMetricsStore"]
