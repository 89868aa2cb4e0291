"""Access logging for a waypoint's service chains, from ``Telemetry`` resources and the mesh config.

Istio's attachment and merge (``pilot/pkg/model/telemetry.go``), for a waypoint serving a service:

1. levels, least to most specific: a Telemetry in the mesh's root namespace without selector or
   targets (mesh-wide) < one in the waypoint's namespace without selector or targets < one in the
   waypoint's namespace with a ``targetRefs`` entry naming the waypoint's Gateway < one in the
   service's namespace naming the Service (or ServiceEntry).  At each level the oldest Telemetry
   (creation time, then name) is used, as Istio uses one; ``selector`` Telemetries do not apply to
   waypoints (Istio: use ``targetRefs``);
2. providers: an entry's ``providers``, else the level above's, else the mesh's
   ``defaultProviders.accessLogging``, else - when ``accessLogFile`` is set - the built-in ``envoy``
   provider (Istio's pre-Telemetry behaviour, so a mesh config alone turns logs on);
3. the most specific entry naming providers decides which are in scope (it replaces, not adds to,
   the list above it); then each level, least specific first, disables a provider in scope
   (``disabled: true``) or enables it with its ``filter`` (if any): the most specific level wins.

Only ``envoyFileAccessLog`` providers (and the built-in ``envoy``) produce loggers; a provider of
another kind named under ``accessLogging`` (OpenTelemetry access-log service, gRPC ALS) is not
supported on this waypoint and is left out, as is an unknown provider name (Istio logs and skips
it too).  Entries whose ``match.mode`` is ``CLIENT`` do not apply: a waypoint serves the server
side of a request.

Filters become Envoy's CEL access-log filter (``envoy.access_loggers.extension_filters.cel``,
available in upstream Envoy), so every expression Istio accepts (``response.code >= 400``,
``request.headers['x'] == 'y'`` ...) is passed through unchanged.

Tracing (``Telemetry.tracing``, ``enableTracing``, ``defaultProviders.tracing``) is built by
``tracing.py`` on the same attachment levels and applied with the access logs by
``apply_telemetry`` / ``TelemetryMemo``.  ``Telemetry.metrics`` (Istio's standard metrics, with a
``prometheus`` provider) adds a gRPC access logger per chain that the waypoint agent aggregates
(``metrics.py``); ``telemetry_warnings`` reports what of it cannot be honoured.

Pure: the output depends only on the snapshot, the mesh config and the arguments.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, TypeAlias

from envoy.config.accesslog.v3 import accesslog_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.extensions.access_loggers.file.v3 import file_pb2
from envoy.extensions.access_loggers.filters.cel.v3 import cel_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from google.protobuf import struct_pb2

from istiod_lite.model import ConfigSnapshot
from istiod_lite.model.meshconfig import ENVOY_PROVIDER, ExtensionProvider, MeshConfig
from istiod_lite.model.telemetry import AccessLogging, Metrics, Telemetry
from istiod_lite.translator.binding import service_model
from istiod_lite.translator.binding.service_model import ServiceInfo
from istiod_lite.translator.binding.waypoints import WaypointRef, bindings_of
from istiod_lite.translator.core.output import EnvoyResources, as_message
from istiod_lite.translator.core.protos import packed
from istiod_lite.translator.shape import hbone
from istiod_lite.translator.telemetry import metrics, tracing

#: An Envoy ``config.accesslog.v3.AccessLog`` (what HCM and tcp_proxy ``access_log`` hold).
AccessLog: TypeAlias = accesslog_pb2.AccessLog

FILE_LOGGER: Final = "envoy.access_loggers.file"
CEL_FILTER: Final = "envoy.access_loggers.extension_filters.cel"
DEV_STDOUT: Final = "/dev/stdout"

#: Istio's default TEXT access-log format (``EnvoyTextLogFormat``, Istio 1.9 onwards).
ISTIO_TEXT_FORMAT: Final = (
    '[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% '
    '%PROTOCOL%" %RESPONSE_CODE% %RESPONSE_FLAGS% '
    "%RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS% "
    '"%UPSTREAM_TRANSPORT_FAILURE_REASON%" %BYTES_RECEIVED% %BYTES_SENT% '
    '%DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% "%REQ(X-FORWARDED-FOR)%" '
    '"%REQ(USER-AGENT)%" "%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%" '
    "%UPSTREAM_CLUSTER% %UPSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% "
    "%DOWNSTREAM_REMOTE_ADDRESS% %REQUESTED_SERVER_NAME% %ROUTE_NAME%\n"
)

#: Istio's default JSON access-log fields (``EnvoyJSONLogFormatIstio``).
ISTIO_JSON_FORMAT: Final[dict[str, str]] = {
    "start_time": "%START_TIME%",
    "route_name": "%ROUTE_NAME%",
    "method": "%REQ(:METHOD)%",
    "path": "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%",
    "protocol": "%PROTOCOL%",
    "response_code": "%RESPONSE_CODE%",
    "response_flags": "%RESPONSE_FLAGS%",
    "response_code_details": "%RESPONSE_CODE_DETAILS%",
    "connection_termination_details": "%CONNECTION_TERMINATION_DETAILS%",
    "bytes_received": "%BYTES_RECEIVED%",
    "bytes_sent": "%BYTES_SENT%",
    "duration": "%DURATION%",
    "upstream_service_time": "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%",
    "x_forwarded_for": "%REQ(X-FORWARDED-FOR)%",
    "user_agent": "%REQ(USER-AGENT)%",
    "request_id": "%REQ(X-REQUEST-ID)%",
    "authority": "%REQ(:AUTHORITY)%",
    "upstream_host": "%UPSTREAM_HOST%",
    "upstream_cluster": "%UPSTREAM_CLUSTER%",
    "upstream_local_address": "%UPSTREAM_LOCAL_ADDRESS%",
    "downstream_local_address": "%DOWNSTREAM_LOCAL_ADDRESS%",
    "downstream_remote_address": "%DOWNSTREAM_REMOTE_ADDRESS%",
    "requested_server_name": "%REQUESTED_SERVER_NAME%",
    "upstream_transport_failure_reason": "%UPSTREAM_TRANSPORT_FAILURE_REASON%",
}

_GATEWAY_GROUP: Final = "gateway.networking.k8s.io"
_SE_GROUP: Final = "networking.istio.io"


@dataclass(frozen=True)
class ProviderSetting:
    """The effective setting of one access-log provider for one service: its filter, if any."""

    name: str
    filter_expression: str | None = None


def _order(t: Telemetry) -> tuple[str, str, str]:
    return (t.metadata.creation_timestamp, t.namespace, t.name)


def _oldest(items: Sequence[Telemetry]) -> Telemetry | None:
    return min(items, key=_order) if items else None


def applicable_telemetries(snapshot: ConfigSnapshot, mesh: MeshConfig, ref: WaypointRef, sv: ServiceInfo
                           ) -> list[Telemetry]:
    """The Telemetries for ``sv`` on waypoint ``ref``, least specific first (at most one per level:
    mesh-wide, waypoint namespace, Gateway target, Service target)."""
    all_t = sorted(snapshot.of_kind(Telemetry), key=_order)
    if not all_t:
        return []
    unscoped = [t for t in all_t if t.spec.selector is None and not t.spec.targets]
    root = _oldest([t for t in unscoped if t.namespace == mesh.root_namespace])
    ns = _oldest([t for t in unscoped if t.namespace == ref.namespace and ref.namespace != mesh.root_namespace])
    gateway = _oldest([t for t in all_t if t.namespace == ref.namespace and any(
        r.canonical_group == _GATEWAY_GROUP and r.kind == "Gateway" and r.name == ref.name for r in t.spec.targets)])
    if sv.is_service_entry:
        group, kind, name = _SE_GROUP, "ServiceEntry", sv.source.name
    else:
        group, kind, name = "core", "Service", sv.source.name
    service = _oldest([t for t in all_t if t.namespace == sv.namespace and any(
        r.canonical_group == group and r.kind == kind and r.name == name for r in t.spec.targets)])
    return [t for t in (root, ns, gateway, service) if t is not None]


def default_providers(mesh: MeshConfig) -> tuple[str, ...]:
    """``defaultProviders.accessLogging``, else ``envoy`` when ``accessLogFile`` is set."""
    if mesh.default_providers.access_logging:
        return mesh.default_providers.access_logging
    return (ENVOY_PROVIDER,) if mesh.access_log_file else ()


def _applies(entry: AccessLogging) -> bool:
    return entry.match is None or entry.match.mode != "CLIENT"


def effective_providers(telemetries: Sequence[Telemetry], mesh: MeshConfig) -> list[ProviderSetting]:
    """Istio's ``mergeLogs``: which providers log, with which filter, sorted by name.

    The most specific entry that names providers decides which are in scope at all (a namespace
    naming ``text-log`` replaces a mesh-wide ``envoy``, it does not add to it); entries without
    providers inherit the level above's.  Each level then updates the providers in scope: disable,
    or enable with its filter (the most specific level wins)."""
    entries = [e for t in telemetries for e in t.spec.access_logging if _applies(e)]
    defaults = default_providers(mesh)
    if not entries:
        return [ProviderSetting(name) for name in sorted(set(defaults))]
    in_scope = set(defaults)
    for entry in entries:
        if entry.providers:
            in_scope = {p.name for p in entry.providers}
    settings: dict[str, ProviderSetting] = {}
    parent = defaults
    for entry in entries:
        names = tuple(p.name for p in entry.providers) or parent
        parent = names
        for name in names:
            if name not in in_scope:
                continue
            if entry.disabled:
                settings.pop(name, None)
            else:
                settings[name] = ProviderSetting(name, entry.filter.expression if entry.filter else None)
    return [settings[n] for n in sorted(settings)]


def _json_struct(fields: dict[str, object]) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(fields)
    return s


def _file_logger(path: str, text: str | None, labels: dict[str, object] | None) -> file_pb2.FileAccessLog:
    fl = file_pb2.FileAccessLog(path=path or DEV_STDOUT)
    if labels is not None:
        fl.log_format.json_format.CopyFrom(_json_struct(labels or dict(ISTIO_JSON_FORMAT)))
    else:
        fmt = text or ISTIO_TEXT_FORMAT
        if not fmt.endswith("\n"):  # Istio: "a newline is inserted on all formats (if missing)"
            fmt += "\n"
        fl.log_format.text_format_source.inline_string = fmt
    return fl


def _logger_for(provider: ExtensionProvider, mesh: MeshConfig) -> file_pb2.FileAccessLog | None:
    fal = provider.envoy_file_access_log
    if fal is None:
        return None  # OpenTelemetry / gRPC access-log services: not supported on this waypoint
    if provider.name == ENVOY_PROVIDER:
        # The built-in provider is formatted by the mesh config (Istio: FileAccessLogFromMeshConfig).
        path = mesh.access_log_file or fal.path or DEV_STDOUT
        if mesh.access_log_encoding == "JSON":
            labels = json.loads(mesh.access_log_format) if mesh.access_log_format else dict(ISTIO_JSON_FORMAT)
            return _file_logger(path, None, labels)
        return _file_logger(path, mesh.access_log_format or None, None)
    fmt = fal.log_format
    if fmt is not None and fmt.labels is not None:
        fl = _file_logger(fal.path, None, dict(fmt.labels))
    else:
        fl = _file_logger(fal.path, fmt.text if fmt is not None else None, None)
    if fal.omit_empty_values:  # Istio: the provider's omitEmptyValues -> log_format.omit_empty_values
        fl.log_format.omit_empty_values = True
    return fl


def access_log(setting: ProviderSetting, mesh: MeshConfig) -> AccessLog | None:
    """One Envoy access logger for a provider setting (``None`` for unknown/unsupported providers)."""
    provider = mesh.provider(setting.name)
    if provider is None:
        return None
    logger = _logger_for(provider, mesh)
    if logger is None:
        return None
    al = AccessLog(name=FILE_LOGGER, typed_config=packed(logger))
    if setting.filter_expression is not None:
        al.filter.extension_filter.name = CEL_FILTER
        al.filter.extension_filter.typed_config.CopyFrom(
            packed(cel_pb2.ExpressionFilter(expression=setting.filter_expression)))
    return al


def access_logs_for(snapshot: ConfigSnapshot, mesh: MeshConfig | None, waypoint_ref: WaypointRef,
                    service: ServiceInfo) -> list[AccessLog]:
    """The access loggers of ``service``'s chains on the waypoint; ``[]`` without a mesh config
    and without Telemetries (so output is unchanged for configs that never mention telemetry)."""
    if mesh is None:
        mesh = MeshConfig()
    telemetries = applicable_telemetries(snapshot, mesh, waypoint_ref, service)
    if not telemetries and not default_providers(mesh):
        return []
    out: list[AccessLog] = []
    for setting in effective_providers(telemetries, mesh):
        al = access_log(setting, mesh)
        if al is not None:
            out.append(al)
    return out


def telemetry_inputs(snapshot: ConfigSnapshot) -> tuple[object, ...]:
    """What access logs are computed from, for memo keys: every Telemetry object (identity)."""
    return tuple(snapshot.by_kind.get(Telemetry.KIND, {}).values())


def with_access_logs(chain: listener_components_pb2.FilterChain, logs: Sequence[AccessLog]
                     ) -> listener_components_pb2.FilterChain:
    """``chain`` with ``logs`` added to its terminal HCM or tcp_proxy (for chains built elsewhere,
    e.g. ``tcp_routes.tcp_chain``); the chain itself is returned unchanged when ``logs`` is empty."""
    if not logs or not chain.filters:
        return chain
    out = listener_components_pb2.FilterChain()
    out.CopyFrom(chain)
    last = out.filters[-1]
    if last.name == hbone.HCM:
        hcm = hcm_pb2.HttpConnectionManager()
        last.typed_config.Unpack(hcm)
        hcm.access_log.extend(logs)
        last.typed_config.CopyFrom(packed(hcm))
    elif last.name == hbone.TCP_PROXY:
        proxy = tcp_proxy_pb2.TcpProxy()
        last.typed_config.Unpack(proxy)
        proxy.access_log.extend(logs)
        last.typed_config.CopyFrom(packed(proxy))
    return out


def _views_by_host(snapshot: ConfigSnapshot, ref: WaypointRef) -> dict[str, ServiceInfo]:
    """The waypoint's bound services by host (oldest definition of a host wins, as in the translator)."""
    b = bindings_of(snapshot)
    views = [service_model.of_service(s) for s in b.services.get(ref, ())]
    views += [v for se in b.service_entries.get(ref, ()) for v in service_model.of_service_entry(se)]
    views.sort(key=service_model.sort_key)
    out: dict[str, ServiceInfo] = {}
    for v in views:
        out.setdefault(v.host, v)
    return out


def _wants_telemetry(snapshot: ConfigSnapshot, mesh: MeshConfig | None) -> bool:
    if telemetry_inputs(snapshot):
        return True
    return mesh is not None and bool(default_providers(mesh) or mesh.enable_tracing
                                     or mesh.default_providers.tracing or mesh.default_providers.metrics)


def _telemetry_listener(resources: EnvoyResources, snapshot: ConfigSnapshot, mesh: MeshConfig | None,
                        ref: WaypointRef) -> tuple[listener_pb2.Listener | None, tuple[tracing.Collector, ...]]:
    """``main_internal`` with each service chain's access loggers and (HTTP chains) tracing, and the
    tracing collectors it names; ``(None, ())`` when nothing changes."""
    main = resources.listeners.get(hbone.MAIN_INTERNAL)
    if main is None or not _wants_telemetry(snapshot, mesh):
        return None, ()
    m = mesh if mesh is not None else MeshConfig()
    views = _views_by_host(snapshot, ref)
    per_host: dict[str, tuple[list[AccessLog], tracing.ChainTracing, metrics.MetricsSetting | None]] = {}
    listener = listener_pb2.Listener()
    listener.CopyFrom(as_message(main))  # the server's translator keeps it serialised
    changed = False
    collectors: set[tracing.Collector] = set()
    for i, chain in enumerate(listener.filter_chains):
        parts = chain.name.split("|")
        if len(parts) != 4 or parts[0] != "inbound-vip" or parts[3] not in views:
            continue  # direct-http / direct-tcp: workload-addressed, no service to attach to
        host = parts[3]
        if host not in per_host:
            telemetries = applicable_telemetries(snapshot, m, ref, views[host])
            per_host[host] = (access_logs_for(snapshot, mesh, ref, views[host]),
                              tracing.chain_tracing(telemetries, m, ref), metrics.metrics_setting(telemetries, m))
        logs, traced, stats = per_host[host]
        new = _with_metrics(with_access_logs(chain, logs), stats, views[host])
        if traced.tracing is not None and new.filters and new.filters[-1].name == hbone.HCM:
            if new is chain:
                new = listener_components_pb2.FilterChain()
                new.CopyFrom(chain)
            hcm = hcm_pb2.HttpConnectionManager()
            new.filters[-1].typed_config.Unpack(hcm)
            tracing.with_tracing(hcm, traced)
            new.filters[-1].typed_config.CopyFrom(packed(hcm))
            if traced.collector is not None:
                collectors.add(traced.collector)
        if new is not chain:
            listener.filter_chains[i].CopyFrom(new)
            changed = True
    if not changed:
        return None, ()
    return listener, tuple(sorted(collectors, key=lambda c: (c.host, c.port)))


def _with_metrics(chain: listener_components_pb2.FilterChain, setting: metrics.MetricsSetting | None,
                  service: ServiceInfo) -> listener_components_pb2.FilterChain:
    """``chain`` with the metrics logger of ``setting`` (none: unchanged) after its other loggers;
    a TCP chain also gets Istio's TCP reporting (``metrics.with_tcp_reporting``)."""
    if setting is None or not chain.filters or chain.filters[-1].name not in (hbone.HCM, hbone.TCP_PROXY):
        return chain
    tcp = chain.filters[-1].name == hbone.TCP_PROXY
    out = with_access_logs(chain, [metrics.stats_logger(setting, service, tcp)])
    if tcp:
        last = out.filters[-1]
        proxy = tcp_proxy_pb2.TcpProxy()
        last.typed_config.Unpack(proxy)
        metrics.with_tcp_reporting(proxy, setting)
        last.typed_config.CopyFrom(packed(proxy))
    return out


def _with(resources: EnvoyResources, listener: listener_pb2.Listener | None, collectors: EnvoyResources | None
          ) -> EnvoyResources:
    if listener is None:
        return resources
    out = resources.copy()
    out.listeners[hbone.MAIN_INTERNAL] = listener
    if collectors is not None:
        for name, c in collectors.clusters.items():
            out.clusters.setdefault(name, c)  # a route's own outbound cluster of the same name stays
        for name, e in collectors.endpoints.items():
            out.endpoints.setdefault(name, e)
    return out


def apply_telemetry(resources: EnvoyResources, snapshot: ConfigSnapshot, mesh: MeshConfig | None,
                    ref: WaypointRef) -> EnvoyResources:
    """``resources`` with each service chain of ``main_internal`` (``inbound-vip|P|KIND|HOST``)
    given the access loggers of its service and, for HTTP chains, its tracing (``tracing.py``), plus
    the tracing collectors' clusters: the whole-waypoint form of ``access_logs_for`` and
    ``tracing.chain_tracing``, so the translator needs one call after translating.  Returns
    ``resources`` itself (no copy, no cost) when the mesh config turns on no default provider and
    no legacy tracing and there is no Telemetry: output is then byte-identical to a translation that
    never heard of telemetry."""
    listener, collectors = _telemetry_listener(resources, snapshot, mesh, ref)
    extra = tracing.collector_resources(snapshot, ref, collectors) if collectors else None
    return _with(resources, listener, extra)


#: The original name (access logs came first); it applies tracing too.
apply_access_logs = apply_telemetry


class TelemetryMemo:
    """``apply_telemetry`` (access logs and tracing) for a server that translates one waypoint again
    and again: when the translated ``main_internal`` listener, the Telemetries, the bound services
    and the mesh config are the very same objects as last time, the previous listener object is
    re-used, so the xDS layer (which caches serialisations by message identity) does not serialise it
    again.  The tracing collectors' clusters are rebuilt from each new snapshot (their endpoints
    follow the collector's pods).  One instance per waypoint; the output equals ``apply_telemetry``'s."""

    def __init__(self, ref: WaypointRef) -> None:
        self.ref = ref
        self._last: tuple[tuple[object, ...], EnvoyResources, ConfigSnapshot, EnvoyResources,
                          listener_pb2.Listener | None, tuple[tracing.Collector, ...]] | None = None

    def apply(self, resources: EnvoyResources, snapshot: ConfigSnapshot, mesh: MeshConfig | None) -> EnvoyResources:
        b = bindings_of(snapshot)
        key = (resources.listeners.get(hbone.MAIN_INTERNAL), mesh, None, *telemetry_inputs(snapshot), None,
               *b.services.get(self.ref, ()), None, *b.service_entries.get(self.ref, ()))
        last = self._last
        if last is not None and len(last[0]) == len(key) and all(
                a is b_ for a, b_ in zip(last[0], key, strict=True)):
            if last[1] is resources and (last[2] is snapshot or not last[5]):
                return last[3]
            listener, collectors = last[4], last[5]
        else:
            listener, collectors = _telemetry_listener(resources, snapshot, mesh, self.ref)
        extra = tracing.collector_resources(snapshot, self.ref, collectors) if collectors else None
        out = _with(resources, listener, extra)
        self._last = (key, resources, snapshot, out, listener, collectors)
        return out


def _metrics_warnings(where: str, entries: Sequence[Metrics], mesh: MeshConfig) -> list[str]:
    return [p for entry in entries for p in metrics.entry_problems(where, entry, mesh)]


def telemetry_warnings(snapshot: ConfigSnapshot, mesh: MeshConfig | None = None) -> list[str]:
    """Telemetry (and mesh telemetry) settings a waypoint ignores or cannot honour, one message each,
    sorted: Telemetry ``metrics`` settings the metrics loggers cannot honour (custom metrics, tag
    values that need CEL, client-side overrides, providers other than ``prometheus``; ``metrics.py``),
    tracing providers that do not exist or do not trace, more than one tracing provider (Istio uses the
    first), access-log providers the waypoint cannot log with, and
    ``selector`` Telemetries (they never apply to a waypoint)."""
    m = mesh if mesh is not None else MeshConfig()
    out: list[str] = []
    for t in sorted(snapshot.of_kind(Telemetry), key=_order):
        where = f"Telemetry {t.namespace}/{t.name}"
        spec = t.spec
        if spec.selector is not None:
            if spec.metrics or spec.tracing or spec.access_logging:
                out.append(f"{where}: a selector Telemetry does not apply to waypoints (use targetRefs)")
            continue
        out += _metrics_warnings(where, spec.metrics, m)
        for tr in spec.tracing:
            if len(tr.providers) > 1:
                out.append(f"{where}: only the first tracing provider ({tr.providers[0].name}) is used")
            if tr.providers:
                out += tracing.provider_problems(m, [tr.providers[0].name], where)
            if tr.disable_context_propagation:
                out.append(f"{where}: tracing[0].disableContextPropagation is not in the Envoy API istiod-lite "
                           "builds against; ignored (trace context is propagated)")
        for al in spec.access_logging:
            for p in al.providers:
                provider = m.provider(p.name)
                if provider is None:
                    out.append(f"{where}: access-log provider {p.name!r} is not in the mesh config's "
                               "extensionProviders (left out)")
                elif provider.envoy_file_access_log is None:
                    out.append(f"{where}: access-log provider {p.name!r} is not an envoyFileAccessLog provider; "
                               "the waypoint only logs to files (left out)")
    if m.default_providers.tracing:
        out += tracing.provider_problems(m, m.default_providers.tracing[:1], "mesh defaultProviders.tracing")
    return sorted(set(out))
