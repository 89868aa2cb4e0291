"""Distributed tracing on a waypoint's service chains, from ``Telemetry.tracing`` and the mesh config.

Istio's semantics (``pilot/pkg/model/telemetry.go`` ``Tracing``, ``pilot/pkg/networking/core/tracing.go``),
for the server side of a waypoint (Istio builds waypoint chains as ``ListenerClassSidecarInbound``,
so entries whose ``match.mode`` is ``CLIENT`` do not apply):

* attachment: the Telemetries of ``telemetry.applicable_telemetries`` (mesh-wide < waypoint
  namespace < ``targetRefs`` to the waypoint's Gateway < ``targetRefs`` to the Service), least
  specific first;
* merge: the provider starts as the mesh's first ``defaultProviders.tracing``; each entry, in order,
  replaces it with the first of its ``providers`` (an unknown name leaves *no* provider), and
  replaces ``disableSpanReporting``, ``customTags`` (the whole map), ``randomSamplingPercentage``,
  ``useRequestIdForTraceSampling`` and ``enableIstioTags`` when it sets them; no provider, or
  span reporting disabled, means no tracing at all;
* no Telemetry tracing entry and no default provider: the legacy mesh setting ``enableTracing``
  gives tracing without a provider (sampling and Istio's tags; Envoy then reports nowhere, but the
  chain keeps its sampling decision), and without it nothing;
* HCM ``tracing``: ``client_sampling`` and ``overall_sampling`` 100%, ``random_sampling`` the
  Telemetry's percentage, else Istio's default 1% (``PILOT_TRACE_SAMPLING``); ``custom_tags`` sorted
  by name: Istio's own (``istio.canonical_service`` ... and the dry-run policy tags) unless
  ``enableIstioTags: false``, plus the Telemetry's literal / header / environment tags;
  ``max_path_tag_length`` from the provider's ``maxTagLength``;
* providers: ``zipkin`` -> ``envoy.tracers.zipkin`` (Zipkin v2 JSON to ``collector_endpoint``,
  default ``/api/v2/spans``, 128-bit trace ids, ``shared_span_context: false``); ``opentelemetry``
  -> ``envoy.tracers.opentelemetry`` over gRPC (``envoy_grpc`` with the host as authority) or,
  with ``http``, OTLP/HTTP (``http_service``); the span's service name is the proxy's service
  cluster, ``<waypoint>.<namespace>`` (Envoy's node cluster for Zipkin);
* the collector cluster is ``outbound|<port>||<host>``: a known Service or ServiceEntry port gets
  its outbound cluster (EDS endpoints, HBONE to ambient pods) as for a route target; an unknown host
  (or a port the service does not declare) gets a ``STRICT_DNS`` cluster to ``host:port`` (Istio
  refuses to configure tracing then; here an out-of-mesh collector works without a ServiceEntry).

The waypoint joins an incoming trace: Envoy's tracers read ``x-b3-*`` / ``b3`` (Zipkin) and
``traceparent`` (OpenTelemetry), make the waypoint's span a child of the caller's span (same trace
id, parent id = the caller's span id) and honour the caller's sampled flag.

Pure: the output depends only on the snapshot, the mesh config and the arguments.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Final

from envoy.config.core.v3 import base_pb2, grpc_service_pb2, http_service_pb2, http_uri_pb2
from envoy.config.trace.v3 import http_tracer_pb2, opentelemetry_pb2, zipkin_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.request_id.uuid.v3 import uuid_pb2
from envoy.type.metadata.v3 import metadata_pb2
from envoy.type.tracing.v3 import custom_tag_pb2

from istiod_lite.model import ConfigSnapshot
from istiod_lite.model.meshconfig import ExtensionProvider, HttpHeader, MeshConfig
from istiod_lite.model.telemetry import CustomTag, Telemetry, Tracing
from istiod_lite.model.types import Duration
from istiod_lite.translator.binding.waypoints import WaypointRef
from istiod_lite.translator.clusters import outbound
from istiod_lite.translator.clusters.for_host import host_cluster
from istiod_lite.translator.core import names
from istiod_lite.translator.core.output import EnvoyResources
from istiod_lite.translator.core.protos import packed

ZIPKIN: Final = "envoy.tracers.zipkin"
OPENTELEMETRY: Final = "envoy.tracers.opentelemetry"
#: Istio's default ``randomSamplingPercentage`` (``PILOT_TRACE_SAMPLING``, Helm ``pilot.traceSampling``).
DEFAULT_SAMPLING: Final = 1.0
DEFAULT_ZIPKIN_PATH: Final = "/api/v2/spans"
DEFAULT_OTLP_HTTP_PATH: Final = "/v1/traces"
#: Envoy requires an ``HttpUri`` timeout; Istio uses 5s for Zipkin's when none is configured.
DEFAULT_HTTP_TIMEOUT_S: Final = 5
#: Istio's default cluster id and canonical revision (``buildServiceTags`` fallbacks).
DEFAULT_CLUSTER_ID: Final = "Kubernetes"
DEFAULT_MESH_ID: Final = names.DEFAULT_DOMAIN
_RBAC: Final = "envoy.filters.http.rbac"
#: Istio's dry-run policy tags (``optionalPolicyTags``): RBAC shadow-rule results, when present.
_DRY_RUN_TAGS: Final = (
    ("istio.authorization.dry_run.allow_policy.name", "istio_dry_run_allow_shadow_effective_policy_id"),
    ("istio.authorization.dry_run.allow_policy.result", "istio_dry_run_allow_shadow_engine_result"),
    ("istio.authorization.dry_run.deny_policy.name", "istio_dry_run_deny_shadow_effective_policy_id"),
    ("istio.authorization.dry_run.deny_policy.result", "istio_dry_run_deny_shadow_engine_result"),
)


@dataclass(frozen=True)
class TracingSpec:
    """Istio's ``TracingSpec`` (server side) after merging the applicable Telemetries."""

    provider: ExtensionProvider | None = None
    disabled: bool = False
    random_sampling_percentage: float | None = None
    custom_tags: Mapping[str, CustomTag] = field(default_factory=dict)
    use_request_id_for_trace_sampling: bool = True
    enable_istio_tags: bool = True


@dataclass(frozen=True)
class Collector:
    """The cluster a tracing provider sends to: ``outbound|port||host``."""

    host: str
    port: int
    h2: bool

    @property
    def cluster(self) -> str:
        return names.outbound_cluster(self.port, self.host)


@dataclass(frozen=True)
class ChainTracing:
    """What one HTTP chain's HCM gets: ``tracing`` (``None``: leave the HCM alone), the request-id
    extension's ``use_request_id_for_trace_sampling`` (``None``: unchanged) and the collector."""

    tracing: hcm_pb2.HttpConnectionManager.Tracing | None
    use_request_id: bool | None = None
    collector: Collector | None = None


NO_TRACING: Final = ChainTracing(None)


def _applies(entry: Tracing) -> bool:
    return entry.match is None or entry.match.mode != "CLIENT"


def entries(telemetries: Sequence[Telemetry]) -> list[Tracing]:
    """The server-side tracing entries of ``telemetries``, least specific first."""
    return [e for t in telemetries for e in t.spec.tracing if _applies(e)]


def tracing_spec(telemetries: Sequence[Telemetry], mesh: MeshConfig) -> TracingSpec | None:
    """Istio's ``Telemetries.Tracing`` server spec; ``None`` when neither a Telemetry tracing entry
    nor a default provider exists (the legacy ``enableTracing`` path)."""
    found = entries(telemetries)
    defaults = mesh.default_providers.tracing
    if not found and not defaults:
        return None
    provider = mesh.provider(defaults[0]) if defaults else None
    spec = TracingSpec(provider=provider)
    for e in found:
        if e.providers:
            spec = replace(spec, provider=mesh.provider(e.providers[0].name))
        if e.disable_span_reporting is not None:
            spec = replace(spec, disabled=e.disable_span_reporting)
        if e.custom_tags:
            spec = replace(spec, custom_tags=dict(e.custom_tags))
        if e.random_sampling_percentage is not None:
            spec = replace(spec, random_sampling_percentage=e.random_sampling_percentage)
        if e.use_request_id_for_trace_sampling is not None:
            spec = replace(spec, use_request_id_for_trace_sampling=e.use_request_id_for_trace_sampling)
        if e.enable_istio_tags is not None:
            spec = replace(spec, enable_istio_tags=e.enable_istio_tags)
    if spec.provider is None:
        spec = replace(spec, disabled=True)
    return spec


def resolve_host(service: str) -> str:
    """A provider's ``service`` (``<hostname>`` or ``<namespace>/<hostname>``) -> the hostname; a
    bare name after a namespace is a Service name (``ns/zipkin`` -> ``zipkin.ns.svc.cluster.local``)."""
    ns, slash, host = service.rpartition("/")
    if slash and ns and "." not in host:
        return names.service_fqdn(host, ns)
    return host


#: Istio tracing provider kinds upstream Envoy on a waypoint cannot export to here.
_UNSUPPORTED_TRACERS: Final = ("lightstep", "datadog", "stackdriver", "opencensus", "skywalking")


def _camel_kind(kind: str) -> str:
    head, *rest = kind.split("_")
    return head + "".join(w.title() for w in rest)


def supports_tracing(provider: ExtensionProvider) -> bool:
    return provider.zipkin is not None or provider.opentelemetry is not None


def _duration(d: Duration | None, default_s: int | None) -> tuple[int, int] | None:
    if d is None:
        return (default_s, 0) if default_s is not None else None
    return divmod(d.nanos, 1_000_000_000)


def _headers(headers: Iterable[HttpHeader]) -> list[base_pb2.HeaderValueOption]:
    return [base_pb2.HeaderValueOption(
        header=base_pb2.HeaderValue(key=h.name, value=h.value),
        append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD) for h in headers
        if h.value is not None]  # envName headers: istiod's environment is not read (listed as ignored)


def _zipkin(provider: ExtensionProvider, host: str, cluster: str) -> zipkin_pb2.ZipkinConfig:
    z = provider.zipkin
    assert z is not None
    zc = zipkin_pb2.ZipkinConfig(
        collector_cluster=cluster,
        collector_endpoint=z.path or DEFAULT_ZIPKIN_PATH,
        collector_endpoint_version=zipkin_pb2.ZipkinConfig.HTTP_JSON,
        collector_hostname=host,
        trace_id_128bit=not z.enable_64bit_trace_id,
    )
    zc.shared_span_context.value = False
    zc.shared_span_context.SetInParent()
    if z.trace_context_option == "USE_B3_WITH_W3C_PROPAGATION":
        zc.trace_context_option = zipkin_pb2.ZipkinConfig.USE_B3_WITH_W3C_PROPAGATION
    return zc


def _otel(provider: ExtensionProvider, host: str, cluster: str, service_name: str
          ) -> opentelemetry_pb2.OpenTelemetryConfig:
    o = provider.opentelemetry
    assert o is not None
    oc = opentelemetry_pb2.OpenTelemetryConfig(service_name=service_name)
    if o.http is not None:
        path = o.http.path or DEFAULT_OTLP_HTTP_PATH
        uri = http_uri_pb2.HttpUri(uri=host + (path if path.startswith("/") else "/" + path), cluster=cluster)
        timeout = _duration(o.http.timeout, DEFAULT_HTTP_TIMEOUT_S)
        assert timeout is not None
        uri.timeout.seconds, uri.timeout.nanos = timeout
        oc.http_service.CopyFrom(http_service_pb2.HttpService(
            http_uri=uri, request_headers_to_add=_headers(o.http.headers)))
    else:
        grpc = grpc_service_pb2.GrpcService()
        grpc.envoy_grpc.cluster_name = cluster
        grpc.envoy_grpc.authority = host
        if o.grpc is not None:
            timeout = _duration(o.grpc.timeout, None)
            if timeout is not None:
                grpc.timeout.seconds, grpc.timeout.nanos = timeout
            grpc.initial_metadata.extend(base_pb2.HeaderValue(key=h.name, value=h.value)
                                         for h in o.grpc.initial_metadata if h.value is not None)
        oc.grpc_service.CopyFrom(grpc)
    return oc


def provider_config(provider: ExtensionProvider, ref: WaypointRef
                    ) -> tuple[http_tracer_pb2.Tracing.Http, int, Collector] | None:
    """Envoy's ``Tracing.Http`` for a tracing provider, its ``maxTagLength`` and its collector;
    ``None`` for a provider of another kind (Istio: "does not support tracing")."""
    z, o = provider.zipkin, provider.opentelemetry
    if z is not None:
        host = resolve_host(z.service)
        collector = Collector(host, z.port, h2=False)
        typed = packed(_zipkin(provider, host, collector.cluster))
        return http_tracer_pb2.Tracing.Http(name=ZIPKIN, typed_config=typed), z.max_tag_length, collector
    if o is not None:
        host = resolve_host(o.service)
        collector = Collector(host, o.port, h2=o.http is None)
        typed = packed(_otel(provider, host, collector.cluster, service_cluster(ref)))
        return http_tracer_pb2.Tracing.Http(name=OPENTELEMETRY, typed_config=typed), o.max_tag_length, collector
    return None


def service_cluster(ref: WaypointRef) -> str:
    """The waypoint's service cluster (its Envoy node ``cluster``), the span's service name."""
    return f"{ref.name}.{ref.namespace}"


def _literal(tag: str, value: str) -> custom_tag_pb2.CustomTag:
    return custom_tag_pb2.CustomTag(tag=tag, literal=custom_tag_pb2.CustomTag.Literal(value=value))


def istio_tags(ref: WaypointRef) -> list[custom_tag_pb2.CustomTag]:
    """Istio's ``buildServiceTags`` for a waypoint (its canonical name is the Gateway's) and the
    dry-run policy tags.  Istio's waypoint source-peer tags need the ``peer_metadata`` filter
    (absent from upstream Envoy) and are left out."""
    tags = [
        _literal("istio.canonical_revision", "latest"),
        _literal("istio.canonical_service", ref.name),
        _literal("istio.cluster_id", DEFAULT_CLUSTER_ID),
        _literal("istio.mesh_id", DEFAULT_MESH_ID),
        _literal("istio.namespace", ref.namespace),
    ]
    for tag, key in _DRY_RUN_TAGS:
        t = custom_tag_pb2.CustomTag(tag=tag)
        t.metadata.kind.request.SetInParent()
        t.metadata.metadata_key.CopyFrom(metadata_pb2.MetadataKey(
            key=_RBAC, path=[metadata_pb2.MetadataKey.PathSegment(key=key)]))
        tags.append(t)
    return tags


def custom_tags(tags: Mapping[str, CustomTag]) -> list[custom_tag_pb2.CustomTag]:
    out = []
    for name, t in tags.items():
        ct = custom_tag_pb2.CustomTag(tag=name)
        if t.literal is not None:
            ct.literal.value = t.literal.value
        elif t.header is not None:
            ct.request_header.name = t.header.name
            ct.request_header.default_value = t.header.default_value
        elif t.environment is not None:
            ct.environment.name = t.environment.name
            ct.environment.default_value = t.environment.default_value
        elif t.formatter is not None:
            ct.value = t.formatter.value
        out.append(ct)
    return out


def _sampling(tr: hcm_pb2.HttpConnectionManager.Tracing, percent: float) -> None:
    tr.client_sampling.value = 100.0
    tr.overall_sampling.value = 100.0
    tr.random_sampling.value = percent


def mesh_sampling(mesh: MeshConfig) -> float:
    """The sampling % where no Telemetry sets one: MeshConfig ``defaultConfig.tracing.sampling``
    when set (non-zero), else istiod's ``PILOT_TRACE_SAMPLING`` default (istiod's
    ``proxyConfigSamplingValue``)."""
    t = mesh.default_config.tracing
    return t.sampling if t is not None and t.sampling else DEFAULT_SAMPLING


def chain_tracing(telemetries: Sequence[Telemetry], mesh: MeshConfig, ref: WaypointRef) -> ChainTracing:
    """The tracing of one service's HTTP chains (``configureTracingFromTelemetry``)."""
    spec = tracing_spec(telemetries, mesh)
    tr = hcm_pb2.HttpConnectionManager.Tracing()
    if spec is None:
        if not mesh.enable_tracing:
            return NO_TRACING
        _sampling(tr, mesh_sampling(mesh))
        tr.custom_tags.extend(sorted(istio_tags(ref), key=lambda t: t.tag))
        return ChainTracing(tr)
    if spec.disabled or spec.provider is None:
        return NO_TRACING
    built = provider_config(spec.provider, ref)
    if built is None:
        return NO_TRACING  # not a tracing provider: reported by telemetry_warnings
    http, max_tag_length, collector = built
    tr.provider.CopyFrom(http)
    if max_tag_length:
        tr.max_path_tag_length.value = max_tag_length
    pct = spec.random_sampling_percentage
    _sampling(tr, mesh_sampling(mesh) if pct is None else pct)
    tags = (istio_tags(ref) if spec.enable_istio_tags else []) + custom_tags(spec.custom_tags)
    tr.custom_tags.extend(sorted(tags, key=lambda t: t.tag))
    return ChainTracing(tr, spec.use_request_id_for_trace_sampling, collector)


def with_tracing(hcm: hcm_pb2.HttpConnectionManager, ct: ChainTracing) -> bool:
    """Set ``ct`` on ``hcm`` in place; ``False`` when there is nothing to set."""
    if ct.tracing is None:
        return False
    hcm.tracing.CopyFrom(ct.tracing)
    if ct.use_request_id is not None:
        cfg = uuid_pb2.UuidRequestIdConfig()
        cfg.use_request_id_for_trace_sampling.value = ct.use_request_id
        cfg.use_request_id_for_trace_sampling.SetInParent()
        hcm.request_id_extension.typed_config.CopyFrom(packed(cfg))
    return True


def collector_resources(snapshot: ConfigSnapshot, ref: WaypointRef, collectors: Iterable[Collector]
                        ) -> EnvoyResources:
    """The clusters (and EDS endpoints) of ``collectors``: a known service's outbound cluster for
    that port, else a ``STRICT_DNS`` cluster."""
    out = EnvoyResources()
    for c in sorted(set(collectors), key=lambda c: (c.host, c.port)):
        svc = outbound.service_for_host(snapshot, c.host)
        if svc is not None and svc.port(c.port) is not None:
            resolver = outbound.DestinationResolver(snapshot, ref.namespace, {})
            resolver.include([c.host])
            built = resolver.outbound_resources()
            if c.cluster in built.clusters:
                out.clusters[c.cluster] = built.clusters[c.cluster]
                if c.cluster in built.endpoints:
                    out.endpoints[c.cluster] = built.endpoints[c.cluster]
                continue
        out.clusters[c.cluster] = host_cluster(c.cluster, c.host, c.port, h2=c.h2)
    return out


def provider_problems(mesh: MeshConfig, names_: Iterable[str], where: str) -> list[str]:
    """Messages for tracing provider names that do not resolve or are not tracing providers."""
    out = []
    for name in names_:
        p = mesh.provider(name)
        if p is None:
            out.append(f"{where}: tracing provider {name!r} is not in the mesh config's extensionProviders "
                       "(no tracing)")
        elif p.kind in _UNSUPPORTED_TRACERS:
            out.append(f"{where}: tracing provider {name!r} is a {_camel_kind(p.kind)} provider, which the waypoint "
                       "cannot trace to (only zipkin and opentelemetry; no tracing)")
        elif not supports_tracing(p):
            out.append(f"{where}: provider {name!r} does not support tracing (no tracing)")
    return out


__all__ = [
    "DEFAULT_SAMPLING",
    "NO_TRACING",
    "OPENTELEMETRY",
    "ZIPKIN",
    "ChainTracing",
    "Collector",
    "TracingSpec",
    "chain_tracing",
    "collector_resources",
    "custom_tags",
    "entries",
    "istio_tags",
    "mesh_sampling",
    "provider_config",
    "provider_problems",
    "resolve_host",
    "service_cluster",
    "supports_tracing",
    "tracing_spec",
    "with_tracing",
]
