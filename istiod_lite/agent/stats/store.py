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
from istiod_lite.translator.telemetry.metrics import (
    CUSTOM_TAG_OVERRIDE_PREFIX,
    CUSTOM_TAG_WORKLOAD,
    HTTP_METRICS,
    PEER_PRINCIPAL_KEY,
    TCP_METRICS,
    LogConfig,
)

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
#: The Telemetry API names of the HTTP metrics, in ``_HttpCells``' order.
_HTTP_ORDER: Final = ("REQUEST_COUNT", "REQUEST_DURATION", "REQUEST_SIZE", "RESPONSE_SIZE")
#: The TCP ones, in ``_TcpCells``' order.
_TCP_ORDER: Final = ("TCP_OPENED_CONNECTIONS", "TCP_CLOSED_CONNECTIONS", "TCP_RECEIVED_BYTES", "TCP_SENT_BYTES")
_LABEL_CACHE_SIZE: Final = 10000
DEFAULT_MAX_OPEN_CONNECTIONS: Final = 100000


class _Counter:
    """One counter series' value, a cell the label cache points at (no dict lookup per entry)."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0


class _Histogram:
    """One histogram series: per-bucket counts (``buckets[i]``: values in ``(BUCKETS[i-1], BUCKETS[i]]``,
    the last slot the values above every bound), sum and count."""

    __slots__ = ("buckets", "count", "total")

    def __init__(self) -> None:
        self.buckets = [0] * (len(BUCKETS) + 1)
        self.total = 0.0
        self.count = 0


@dataclass
class _Connection:
    received: int = 0
    sent: int = 0


#: An HTTP entry's series: requests counter, duration, request and response size histograms (``None``:
#: the metric is disabled or its series did not fit), and how many of them did not fit.
_HttpCells = tuple[_Counter | None, _Histogram | None, _Histogram | None, _Histogram | None, int]
#: A TCP entry's counters (opened, closed, received, sent; ``None`` as above) and how many did not fit.
_TcpCells = tuple[_Counter | None, _Counter | None, _Counter | None, _Counter | None, int]


@dataclass
class _ChainCache:
    """Per ``LogConfig`` (looked up once per batch): the custom tags its tag overrides read, and the
    series of each combination of what the labels are computed from."""

    override_tags: tuple[str, ...]
    http: dict[tuple[object, ...], _HttpCells] = field(default_factory=dict)
    tcp: dict[tuple[object, ...], _TcpCells] = field(default_factory=dict)


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


def _by_labels(item: tuple[lb.Labels, object]) -> lb.Labels:
    return item[0]


def _le(bound: float) -> str:
    return 'le="' + _number(bound) + '"'


class IstioMetricsStore:
    """Aggregates entries; ``render()`` gives the Prometheus text.  Not thread-safe: one owner task.

    The per-entry path is the hot one (every request through the waypoint): an entry is reduced to
    the few fields its labels depend on, that key finds the entry's series cells in a per-chain
    cache, and the observation is added to the cells.  Labels are built (and series looked up or
    created, subject to ``max_series``) once per distinct key; a waypoint sees few of them."""

    def __init__(self, max_series: int = DEFAULT_MAX_SERIES,
                 max_open_connections: int = DEFAULT_MAX_OPEN_CONNECTIONS) -> None:
        self.max_series = max_series
        self.max_open_connections = max_open_connections
        self._counters: dict[str, dict[lb.Labels, _Counter]] = {m: {} for m in (
            "istio_requests_total", *TCP_METRICS.values())}
        self._histograms: dict[str, dict[lb.Labels, _Histogram]] = {m: {} for m in _HISTOGRAMS}
        self._open: dict[str, _Connection] = {}
        self._chains: dict[LogConfig, _ChainCache] = {}
        self._cached_keys = 0
        self.entries = 0
        self.series_dropped = 0
        self.untracked_connections = 0

    # -- series ------------------------------------------------------------------------------------
    def _counter(self, metric: str, labels: lb.Labels) -> _Counter | None:
        """The series of ``labels``, created if there is room; ``None`` when the limit is reached."""
        series = self._counters[metric]
        cell = series.get(labels)
        if cell is None and len(series) < self.max_series:
            cell = series[labels] = _Counter()
        return cell

    def _histogram(self, metric: str, labels: lb.Labels) -> _Histogram | None:
        series = self._histograms[metric]
        hist = series.get(labels)
        if hist is None and len(series) < self.max_series:
            hist = series[labels] = _Histogram()
        return hist

    def _chain(self, config: LogConfig) -> _ChainCache:
        chain = self._chains.get(config)
        if chain is None:
            tags = tuple(f"{CUSTOM_TAG_OVERRIDE_PREFIX}{i}" for i, r in enumerate(config.tags) if r.source == "header")
            chain = self._chains[config] = _ChainCache(tags)
        return chain

    def _remember(self) -> None:
        """Bound the caches: a key made of header values could otherwise grow without limit."""
        self._cached_keys += 1
        if self._cached_keys > _LABEL_CACHE_SIZE:
            self._chains.clear()
            self._cached_keys = 1

    # -- recording ---------------------------------------------------------------------------------
    def _http_cells(self, config: LogConfig, entry: data_pb2.HTTPAccessLogEntry, code: int) -> _HttpCells:
        """The series of the four HTTP metrics for ``entry`` (first entry of its key)."""
        protocol = lb.http_protocol(entry.request)
        base = lb.base_labels(config, entry.common_properties, protocol)
        base["response_code"] = str(code)
        base["grpc_response_status"] = lb.grpc_status(entry.response, protocol)
        tags = entry.common_properties.custom_tags
        labels = {name: None if name in config.disabled else lb.for_metric(config, name, base, lb.HTTP_LABELS, tags)
                  for name in _HTTP_ORDER}

        def histogram(name: str) -> _Histogram | None:
            found = labels[name]
            return None if found is None else self._histogram(HTTP_METRICS[name], found)

        found = labels["REQUEST_COUNT"]
        count = None if found is None else self._counter(HTTP_METRICS["REQUEST_COUNT"], found)
        duration, request, response = (histogram(n) for n in _HTTP_ORDER[1:])
        dropped = sum(1 for n, c in zip(_HTTP_ORDER, (count, duration, request, response), strict=True)
                      if c is None and labels[n] is not None)
        return count, duration, request, response, dropped

    def add_http_batch(self, config: LogConfig, entries: Iterable[data_pb2.HTTPAccessLogEntry]) -> None:
        """Aggregate a batch of one chain's HTTP entries (one cache lookup per batch for the chain)."""
        chain = self._chain(config)
        cache, override_tags = chain.http, chain.override_tags
        bisect_left, bounds = bisect.bisect_left, BUCKETS
        for entry in entries:
            self.entries += 1
            common = entry.common_properties
            response = entry.response
            code = response.response_code.value  # 0 when Envoy sent no response code
            peer = common.filter_state_objects.get(PEER_PRINCIPAL_KEY)
            tags = common.custom_tags
            headers = entry.request.request_headers  # only the logged ones: usually empty
            grpc = bool(headers) and headers.get("content-type", "").startswith("application/grpc")
            # Everything the labels are computed from (``lb.base_labels``, ``lb.for_metric``).
            key = (peer.value if peer is not None else b"", tags.get(CUSTOM_TAG_WORKLOAD),
                   tuple(tags.get(t) for t in override_tags) if override_tags else (),
                   common.upstream_cluster, code,
                   common.response_flags.SerializeToString() if common.HasField("response_flags") else b"",
                   (response.response_trailers.get("grpc-status"), response.response_headers.get("grpc-status"))
                   if grpc else None)
            cells = cache.get(key)
            if cells is None:
                self._remember()
                cells = self._http_cells(config, entry, code)
                cache = self._chain(config).http  # _remember may have cleared the caches
                cache[key] = cells
            count, duration, request, resp, dropped = cells
            if count is not None:
                count.value += 1
            if duration is not None:
                d = common.duration if common.HasField("duration") else common.time_to_last_downstream_tx_byte
                value: float = (d.seconds * 1_000_000_000 + d.nanos) / 1e6
                duration.buckets[bisect_left(bounds, value)] += 1  # the first bound >= value ("le")
                duration.total += value
                duration.count += 1
            if request is not None:
                req = entry.request
                size = req.request_headers_bytes + req.request_body_bytes
                request.buckets[bisect_left(bounds, size)] += 1
                request.total += size
                request.count += 1
            if resp is not None:
                size = response.response_headers_bytes + response.response_body_bytes
                resp.buckets[bisect_left(bounds, size)] += 1
                resp.total += size
                resp.count += 1
            if dropped:
                self.series_dropped += dropped

    def add_http(self, config: LogConfig, entry: data_pb2.HTTPAccessLogEntry) -> None:
        self.add_http_batch(config, (entry,))

    def _tcp_cells(self, config: LogConfig, common: data_pb2.AccessLogCommon) -> _TcpCells:
        base = lb.base_labels(config, common, "tcp")
        cells = [None if name in config.disabled else self._counter(
            TCP_METRICS[name], lb.for_metric(config, name, base, lb.TCP_LABELS, common.custom_tags))
            for name in _TCP_ORDER]
        dropped = sum(1 for name, c in zip(_TCP_ORDER, cells, strict=True) if c is None and name not in config.disabled)
        return cells[0], cells[1], cells[2], cells[3], dropped

    def add_tcp_batch(self, config: LogConfig, entries: Iterable[data_pb2.TCPAccessLogEntry]) -> None:
        """Aggregate a batch of TCP reports: on connect (``TcpUpstreamConnected``: opened), periodic
        (bytes since the last report) or at the end (the remaining bytes; closed, and opened if never
        reported)."""
        chain = self._chain(config)
        cache, override_tags = chain.tcp, chain.override_tags
        for entry in entries:
            self.entries += 1
            common = entry.common_properties
            kind = common.access_log_type
            key = common.stream_id
            props = entry.connection_properties
            received, sent = props.received_bytes, props.sent_bytes
            conn = self._open.get(key) if key else None
            if (kind == data_pb2.TcpUpstreamConnected or kind == data_pb2.TcpPeriodic) and conn is None:
                if not key or len(self._open) >= self.max_open_connections:
                    self.untracked_connections += 1
                    continue  # reported whole at its end
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
            peer = common.filter_state_objects.get(PEER_PRINCIPAL_KEY)
            tags = common.custom_tags
            label_key = (peer.value if peer is not None else b"", tags.get(CUSTOM_TAG_WORKLOAD),
                         tuple(tags.get(t) for t in override_tags) if override_tags else (),
                         common.upstream_cluster,
                         common.response_flags.SerializeToString() if common.HasField("response_flags") else b"")
            cells = cache.get(label_key)
            if cells is None:
                self._remember()
                cells = self._tcp_cells(config, common)
                cache = self._chain(config).tcp
                cache[label_key] = cells
            # A series appears at its first report (Istio exports a connection's counters from its start).
            opened_c, closed_c, rx_c, tx_c, dropped = cells
            if opened_c is not None:
                opened_c.value += opened
            if closed_c is not None:
                closed_c.value += closed
            if rx_c is not None:
                rx_c.value += delta_rx
            if tx_c is not None:
                tx_c.value += delta_tx
            if dropped:
                self.series_dropped += dropped

    def add_tcp(self, config: LogConfig, entry: data_pb2.TCPAccessLogEntry) -> None:
        self.add_tcp_batch(config, (entry,))

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
                for labels, hist in sorted(hseries.items(), key=_by_labels):
                    running = 0
                    for bound, n in zip(BUCKETS, hist.buckets[:-1], strict=True):
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
                for labels, cell in sorted(cseries.items(), key=_by_labels):
                    yield f"{metric}{_labels_text(labels)} {_number(cell.value)}"

    def render(self, extra: Iterable[str] = ()) -> str:
        """The Istio metrics (and ``extra`` lines, e.g. the collector's own counters) as text."""
        return "".join(line + "\n" for line in (*self._lines(), *extra))


__all__ = ["BUCKETS", "IstioMetricsStore"]
