"""Istio's standard metrics on upstream Envoy: a gRPC access logger per service chain, aggregated by
the waypoint agent (``istiod_lite/agent/stats/``) into ``istio_requests_total`` and friends.

Upstream Envoy has no ``istio.stats`` filter, and Envoy's own stats cannot carry per-request labels
such as the caller's identity.  Envoy's gRPC access-log service can: each service chain of
``main_internal`` gets an ``envoy.access_loggers.http_grpc`` (HTTP) or ``tcp_grpc`` (TCP) logger
streaming to the cluster ``STATS_CLUSTER`` (the agent's Unix socket, a static cluster of the
bootstrap).  Envoy batches entries (``buffer_size_bytes`` / ``buffer_flush_interval``) and, when the
stream cannot take more (the agent falls behind), drops them and counts
``access_logs.grpc_access_log.logs_dropped``: the data path never waits for the collector.

What a chain's logger carries:

* ``log_name``: a JSON object with everything fixed for the chain (``LogConfig``): the service
  (host, name, namespace), the protocol kind, the disabled metrics and the tag overrides with
  literal values.  Envoy sends it once per stream, not per entry.
* per entry: the request/response (code, sizes, flags, timing, ``content-type`` and ``grpc-status``),
  the HBONE peer's SPIFFE id (filter state ``io.istio.peer_principal``, set on ``connect_terminate``),
  the chosen endpoint's ``istio.workload`` metadata (custom tag ``CUSTOM_TAG_WORKLOAD``) and one
  custom tag per tag override read from a request header.

Which Telemetry ``metrics`` apply (Istio's ``mergeMetrics``, server side only, since a waypoint
reports the server side of a request): providers from the most specific level that names any, else
the mesh's ``defaultProviders.metrics``; the chain is instrumented when one of them is a
``prometheus`` provider.  Overrides are applied level by level, least specific first, each in
order: ``disabled`` turns a metric (or ``ALL_METRICS``) off or on, ``tagOverrides`` upsert or remove
a label.  Upsert values are CEL in Istio; those without CEL are honoured here: a string literal
(``"'v'"``) and a request attribute read from one header (``request.headers['x']``,
``request.host``, ``request.method``, ``request.scheme``, ``request.useragent``, ``request.referer``,
``request.id``).  Anything else is reported by ``metric_problems`` and left out.
``reportingInterval`` is the TCP reporting interval (Istio's ``tcp_reporting_duration``, default
15 s): ``tcp_proxy`` flushes its loggers periodically and on connect, and the chain's other
loggers are restricted to the connection's end so files keep one line per connection.

Pure: the output depends only on the arguments.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Literal

from envoy.config.accesslog.v3 import accesslog_pb2
from envoy.config.core.v3 import config_source_pb2
from envoy.data.accesslog.v3 import accesslog_pb2 as data_pb2
from envoy.extensions.access_loggers.grpc.v3 import als_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from envoy.type.tracing.v3 import custom_tag_pb2

from istiod_lite.model.meshconfig import MeshConfig
from istiod_lite.model.telemetry import Metrics, Telemetry
from istiod_lite.translator.binding.service_model import ServiceInfo
from istiod_lite.translator.core.protos import packed

#: The agent's access-log-service cluster, a static cluster of the waypoint bootstrap.  A waypoint
#: started without it (a bare Envoy) still accepts the listener: Envoy's gRPC loggers do not check
#: the cluster, they fail to stream and count the dropped entries.
STATS_CLUSTER: Final = "istiod-lite-stats"
HTTP_GRPC_LOGGER: Final = "envoy.access_loggers.http_grpc"
TCP_GRPC_LOGGER: Final = "envoy.access_loggers.tcp_grpc"
#: Filter state carrying the HBONE peer's SPIFFE id into ``main_internal`` (``shape/hbone.py``).
PEER_PRINCIPAL_KEY: Final = "io.istio.peer_principal"
#: The chosen endpoint's ``istio.workload`` metadata (``name;namespace;canonical;revision;cluster``).
CUSTOM_TAG_WORKLOAD: Final = "istio.workload"
#: Custom tags of tag overrides read from headers: ``<prefix><index into LogConfig.tags>``.
CUSTOM_TAG_OVERRIDE_PREFIX: Final = "istio.tag."
#: Envoy's gRPC logger batching: at most this many bytes or this long before a batch is sent.  64 KiB
#: (about 110 entries of ~600 bytes; Envoy's default is 16 KiB) because the agent's cost per gRPC
#: message is several entries' worth; the reporting delay stays bounded by the flush interval.
BUFFER_SIZE_BYTES: Final = 65536
BUFFER_FLUSH_MS: Final = 500
#: Istio's default ``tcp_reporting_duration``.
DEFAULT_TCP_REPORTING_S: Final = 15.0
LOG_CONFIG_VERSION: Final = 1

#: The Telemetry API's metric names and the Prometheus families they configure.
HTTP_METRICS: Final[dict[str, str]] = {
    "REQUEST_COUNT": "istio_requests_total",
    "REQUEST_DURATION": "istio_request_duration_milliseconds",
    "REQUEST_SIZE": "istio_request_bytes",
    "RESPONSE_SIZE": "istio_response_bytes",
}
TCP_METRICS: Final[dict[str, str]] = {
    "TCP_OPENED_CONNECTIONS": "istio_tcp_connections_opened_total",
    "TCP_CLOSED_CONNECTIONS": "istio_tcp_connections_closed_total",
    "TCP_SENT_BYTES": "istio_tcp_sent_bytes_total",
    "TCP_RECEIVED_BYTES": "istio_tcp_received_bytes_total",
}
ALL_METRICS: Final = (*HTTP_METRICS, *TCP_METRICS)
#: Produced by Istio only when enabled explicitly; upstream Envoy sees no gRPC messages.
_NOT_PRODUCED: Final = frozenset({"GRPC_REQUEST_MESSAGES", "GRPC_RESPONSE_MESSAGES"})

#: Request attributes that are exactly one request header.
_ATTRIBUTE_HEADERS: Final[dict[str, str]] = {
    "request.host": ":authority",
    "request.method": ":method",
    "request.scheme": ":scheme",
    "request.useragent": "user-agent",
    "request.referer": "referer",
    "request.id": "x-request-id",
}
_HEADER_EXPR = re.compile(r"""^request\.headers\[\s*(?:'([^'\\]+)'|"([^"\\]+)")\s*\]$""")
_STRING_LITERAL = re.compile(r"""^(?:'([^'\\]*)'|"([^"\\]*)")$""")

TagSource = Literal["literal", "header", "remove"]


@dataclass(frozen=True)
class TagRule:
    """One label override for one metric: ``literal`` (value), ``header`` (value = header name,
    read per request) or ``remove``."""

    metric: str
    label: str
    source: TagSource
    value: str = ""


@dataclass(frozen=True)
class MetricsSetting:
    """The effective metrics of one service on the waypoint."""

    disabled: frozenset[str] = frozenset()
    tags: tuple[TagRule, ...] = ()
    tcp_reporting_s: float = DEFAULT_TCP_REPORTING_S


def parse_tag_value(expr: str) -> tuple[TagSource, str] | None:
    """A CEL-free tag value: ``("literal", v)`` or ``("header", name)``; ``None`` if it needs CEL."""
    text = expr.strip()
    m = _STRING_LITERAL.match(text)
    if m is not None:
        return "literal", m[1] if m[1] is not None else m[2]
    m = _HEADER_EXPR.match(text)
    if m is not None:
        return "header", (m[1] or m[2]).lower()
    header = _ATTRIBUTE_HEADERS.get(text)
    return ("header", header) if header is not None else None


def parse_duration(text: str) -> float | None:
    """A protobuf Duration in JSON form (``15s``, ``1.5s``, ``500ms`` is not JSON but accepted)."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m)", text.strip())
    if m is None:
        return None
    return float(m[1]) * {"ms": 0.001, "s": 1.0, "m": 60.0}[m[2]]


def _prometheus_names(mesh: MeshConfig, names: Sequence[str]) -> set[str]:
    out = set()
    for name in names:
        provider = mesh.provider(name)
        if provider is not None and provider.prometheus is not None:
            out.add(name)
    return out


def metrics_setting(telemetries: Sequence[Telemetry], mesh: MeshConfig) -> MetricsSetting | None:
    """The merged ``metrics`` of ``telemetries`` (least specific first) for one service, or ``None``
    when no prometheus provider is in scope or every metric is disabled."""
    entries = [e for t in telemetries for e in t.spec.metrics]
    scope: tuple[str, ...] = mesh.default_providers.metrics
    for entry in entries:
        if entry.providers:
            scope = tuple(p.name for p in entry.providers)
    prometheus = _prometheus_names(mesh, scope)
    if not prometheus:
        return None
    disabled: set[str] = set()
    tags: dict[tuple[str, str], TagRule] = {}
    interval = DEFAULT_TCP_REPORTING_S
    parent = mesh.default_providers.metrics
    for entry in entries:
        names = tuple(p.name for p in entry.providers) or parent
        parent = names
        if not prometheus.intersection(names):
            continue
        if entry.reporting_interval:
            seconds = parse_duration(entry.reporting_interval)
            if seconds is not None and seconds > 0:
                interval = seconds
        for o in entry.overrides:
            if o.match is not None and o.match.mode == "CLIENT":
                continue  # a waypoint reports the server side only
            metric = (o.match.metric if o.match is not None else None) or "ALL_METRICS"
            if (o.match is not None and o.match.custom_metric is not None) or metric in _NOT_PRODUCED:
                continue  # reported by ``entry_problems``
            targets = ALL_METRICS if metric == "ALL_METRICS" else (metric,)
            if o.disabled is not None:
                for t in targets:
                    (disabled.add if o.disabled else disabled.discard)(t)
            for label, override in sorted(o.tag_overrides.items()):
                if override.operation == "REMOVE":
                    rule_source: TagSource = "remove"
                    value = ""
                else:
                    parsed = parse_tag_value(override.value)
                    if parsed is None:
                        continue  # needs CEL: reported by ``entry_problems``
                    rule_source, value = parsed
                for t in targets:
                    tags[(t, label)] = TagRule(t, label, rule_source, value)
    if disabled.issuperset(ALL_METRICS):
        return None
    return MetricsSetting(frozenset(disabled), tuple(tags[k] for k in sorted(tags)), interval)


@dataclass(frozen=True)
class LogConfig:
    """What the agent learns from a stream's ``log_name`` (JSON): the chain's fixed facts."""

    kind: Literal["http", "tcp"]
    host: str
    name: str
    namespace: str
    disabled: frozenset[str] = frozenset()
    tags: tuple[TagRule, ...] = ()

    def encode(self) -> str:
        return json.dumps({
            "v": LOG_CONFIG_VERSION, "kind": self.kind,
            "service": {"host": self.host, "name": self.name, "namespace": self.namespace},
            "disabled": sorted(self.disabled),
            "tags": [[r.metric, r.label, r.source, r.value] for r in self.tags],
        }, sort_keys=True, separators=(",", ":"))

    @classmethod
    def decode(cls, text: str) -> LogConfig:
        """Raises ``ValueError`` for anything but this module's own encoding."""
        try:
            data = json.loads(text)
            if data.get("v") != LOG_CONFIG_VERSION or data["kind"] not in ("http", "tcp"):
                raise ValueError(f"unsupported log config {text[:80]!r}")
            svc = data["service"]
            tags = tuple(TagRule(str(m), str(label), src, str(v)) for m, label, src, v in data["tags"]
                         if src in ("literal", "header", "remove"))
            return cls(data["kind"], str(svc["host"]), str(svc["name"]), str(svc["namespace"]),
                       frozenset(str(d) for d in data["disabled"]), tags)
        except (KeyError, TypeError, AttributeError, json.JSONDecodeError) as exc:
            raise ValueError(f"malformed log config {text[:80]!r}: {exc}") from exc


def log_config(setting: MetricsSetting, service: ServiceInfo, tcp: bool) -> LogConfig:
    relevant = TCP_METRICS if tcp else HTTP_METRICS
    return LogConfig("tcp" if tcp else "http", service.host, service.name, service.namespace,
                     frozenset(d for d in setting.disabled if d in relevant),
                     tuple(r for r in setting.tags if r.metric in relevant))


def _common(config: LogConfig) -> als_pb2.CommonGrpcAccessLogConfig:
    common = als_pb2.CommonGrpcAccessLogConfig(log_name=config.encode(), transport_api_version=config_source_pb2.V3)
    common.grpc_service.envoy_grpc.cluster_name = STATS_CLUSTER
    common.buffer_size_bytes.value = BUFFER_SIZE_BYTES
    common.buffer_flush_interval.FromMilliseconds(BUFFER_FLUSH_MS)
    common.filter_state_objects_to_log.append(PEER_PRINCIPAL_KEY)
    workload = common.custom_tags.add(tag=CUSTOM_TAG_WORKLOAD)
    workload.metadata.kind.host.SetInParent()
    workload.metadata.metadata_key.key = "istio"
    workload.metadata.metadata_key.path.add(key="workload")
    for i, rule in enumerate(config.tags):
        if rule.source == "header":
            tag = common.custom_tags.add(tag=f"{CUSTOM_TAG_OVERRIDE_PREFIX}{i}")
            tag.request_header.CopyFrom(custom_tag_pb2.CustomTag.Header(name=rule.value, default_value="unknown"))
    return common


def stats_logger(setting: MetricsSetting, service: ServiceInfo, tcp: bool) -> accesslog_pb2.AccessLog:
    """The chain's metrics logger (gRPC access-log service to the agent)."""
    config = log_config(setting, service, tcp)
    if tcp:
        return accesslog_pb2.AccessLog(name=TCP_GRPC_LOGGER,
                                       typed_config=packed(als_pb2.TcpGrpcAccessLogConfig(common_config=_common(config))))
    http = als_pb2.HttpGrpcAccessLogConfig(common_config=_common(config),
                                           additional_request_headers_to_log=["content-type"],
                                           additional_response_headers_to_log=["grpc-status"],
                                           additional_response_trailers_to_log=["grpc-status"])
    return accesslog_pb2.AccessLog(name=HTTP_GRPC_LOGGER, typed_config=packed(http))


def _at_connection_end(log: accesslog_pb2.AccessLog) -> accesslog_pb2.AccessLog:
    """``log`` restricted to the end of a TCP connection (its own filter kept, ANDed)."""
    out = accesslog_pb2.AccessLog()
    out.CopyFrom(log)
    end = accesslog_pb2.AccessLogFilter()
    end.log_type_filter.types.append(data_pb2.TcpConnectionEnd)
    if log.HasField("filter"):
        both = accesslog_pb2.AccessLogFilter()
        both.and_filter.filters.add().CopyFrom(end)
        both.and_filter.filters.add().CopyFrom(log.filter)
        out.filter.CopyFrom(both)
    else:
        out.filter.CopyFrom(end)
    return out


def with_tcp_reporting(proxy: tcp_proxy_pb2.TcpProxy, setting: MetricsSetting) -> None:
    """Istio's TCP reporting on ``proxy`` (already holding every logger, the metrics one last):
    flush on connect and every ``tcp_reporting_s``; the other loggers log the connection's end only."""
    for i, log in enumerate(proxy.access_log):
        if log.name != TCP_GRPC_LOGGER:
            proxy.access_log[i].CopyFrom(_at_connection_end(log))
    opts = proxy.access_log_options
    opts.flush_access_log_on_connected = True
    opts.access_log_flush_interval.FromMilliseconds(round(setting.tcp_reporting_s * 1000))


def entry_problems(where: str, entry: Metrics, mesh: MeshConfig) -> list[str]:
    """What of one Telemetry ``metrics`` entry a waypoint cannot honour, one message each."""
    out = []
    for p in entry.providers:
        provider = mesh.provider(p.name)
        if provider is None:
            out.append(f"{where}: metrics provider {p.name!r} is not in the mesh config's extensionProviders")
        elif provider.prometheus is None:
            out.append(f"{where}: metrics provider {p.name!r} is not a prometheus provider; the waypoint "
                       "only exports Prometheus metrics")
    for o in entry.overrides:
        what = (o.match.custom_metric or o.match.metric or "ALL_METRICS") if o.match else "ALL_METRICS"
        mode = f" ({o.match.mode})" if o.match and o.match.mode != "CLIENT_AND_SERVER" else ""
        if o.match is not None and o.match.custom_metric is not None:
            out.append(f"{where}: metrics override customMetric {what}{mode} ignored: only Istio's standard "
                       "metrics are produced on upstream Envoy")
            continue
        if what in _NOT_PRODUCED:
            out.append(f"{where}: metrics override {what}{mode} ignored: gRPC message counts are not "
                       "produced on upstream Envoy")
            continue
        if o.match is not None and o.match.mode == "CLIENT":
            out.append(f"{where}: metrics override {what} (CLIENT) ignored: a waypoint reports the server side")
            continue
        for label, override in sorted(o.tag_overrides.items()):
            if override.operation == "UPSERT" and parse_tag_value(override.value) is None:
                out.append(f"{where}: metrics override {what}{mode} tagOverrides {label} value "
                           f"{override.value!r} ignored: only string literals, request.headers['...'] and "
                           "request.host/method/scheme/useragent/referer/id are supported (no CEL on "
                           "upstream Envoy)")
    if entry.reporting_interval:
        seconds = parse_duration(entry.reporting_interval)
        if seconds is None or seconds <= 0:
            out.append(f"{where}: metrics reportingInterval {entry.reporting_interval!r} ignored: not a "
                       "positive duration")
    return out


__all__ = [
    "ALL_METRICS",
    "HTTP_METRICS",
    "STATS_CLUSTER",
    "TCP_METRICS",
    "LogConfig",
    "MetricsSetting",
    "TagRule",
    "entry_problems",
    "log_config",
    "metrics_setting",
    "parse_tag_value",
    "stats_logger",
    "with_tcp_reporting",
]
