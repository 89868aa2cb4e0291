"""Istio's ``MeshConfig`` (mesh/v1alpha1/config.proto, Istio 1.30): every field, with its type.

Not a registered kind: in Istio it is the ``mesh`` key of the ``istio`` ConfigMap (or a file given
to istiod with ``--meshConfig``), one per mesh, not a Kubernetes object the sources watch.

Loaded leniently, as istiod loads it (``parse_mesh_config``): a known field of the wrong type is an
error with its path, an unknown field is stripped and reported as a warning with its path (so the
mesh config Istio's installer renders loads as is).  The models themselves stay strict
``IstioModel``s, so the Istio kinds that share types with it (``localityLbSetting``, ``tls``,
``defaultHttpRetryPolicy``) keep rejecting unknown fields.  Which fields a waypoint honours and why
the others are ignored: ``meshconfig_fields.py`` (listed by ``validate`` and at server start).
``defaultConfig`` (ProxyConfig) is in ``meshconfig_proxy.py``.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Final, Literal

import yaml
from pydantic import Field, PrivateAttr, ValidationError, field_validator, model_validator

from istiod_lite.model.base import IstioModel
from istiod_lite.model.errors import ConfigError, errors_from_validation, format_loc
from istiod_lite.model.meshconfig_proxy import Int32, ProxyConfig, UInt32, one_of, proto_enum
from istiod_lite.model.networking_dr import ClientTLSSettings, LocalityLoadBalancerSetting, TCPKeepalive
from istiod_lite.model.networking_vs_http import HTTPRetry
from istiod_lite.model.types import Duration, DurationField

DEFAULT_ROOT_NAMESPACE: Final = "istio-system"
#: Istio's built-in provider name for ``accessLogFile`` (``defaultEnvoyAccessLogProvider``).
ENVOY_PROVIDER: Final = "envoy"


class LogFormat(IstioModel):
    """``EnvoyFileAccessLogProvider.LogFormat``: a text format string or JSON labels (one of)."""

    text: str | None = None
    labels: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _one(self) -> LogFormat:
        if self.text is not None and self.labels is not None:
            raise ValueError("only one of text or labels may be set")
        return self


class EnvoyFileAccessLog(IstioModel):
    path: str = ""
    log_format: LogFormat | None = None
    omit_empty_values: bool = False


class HttpHeader(IstioModel):
    """``ExtensionProvider.HttpHeader``: a header (or gRPC metadata entry) with a literal ``value``
    or ``envName`` (a value istiod reads from its own environment).  The translator reads no
    environment: an ``envName`` header is accepted, listed as ignored, and not sent."""

    name: str = Field(min_length=1)
    value: str | None = None
    env_name: str | None = None

    @model_validator(mode="after")
    def _one(self) -> HttpHeader:
        one_of(self, ("value", "env_name"), "value or envName")
        return self


class Zipkin(IstioModel):
    """``ZipkinTracingProvider``: spans as Zipkin v2 JSON to ``http://<service>:<port><path>``.

    ``service`` is ``<hostname>`` or ``<namespace>/<hostname>``; ``path`` defaults to
    ``/api/v2/spans``; 128-bit trace ids unless ``enable64bitTraceId``."""

    service: str = Field(min_length=1)
    port: int = Field(ge=1, le=65535)
    max_tag_length: int = Field(default=0, ge=0)
    path: str = ""
    enable_64bit_trace_id: bool = Field(default=False, alias="enable64bitTraceId")
    trace_context_option: Literal["USE_B3", "USE_B3_WITH_W3C_PROPAGATION"] = "USE_B3"
    timeout: DurationField | None = None
    headers: tuple[HttpHeader, ...] = ()


class OtelHttp(IstioModel):
    """``OpenTelemetryTracingProvider.HttpService``: OTLP/HTTP (protobuf) export."""

    path: str = ""
    timeout: DurationField | None = None
    headers: tuple[HttpHeader, ...] = ()


class OtelGrpc(IstioModel):
    """``OpenTelemetryTracingProvider.GrpcService``: OTLP/gRPC export settings."""

    timeout: DurationField | None = None
    initial_metadata: tuple[HttpHeader, ...] = ()


class EnvironmentResourceDetector(IstioModel):
    """No fields."""


class DynatraceResourceDetector(IstioModel):
    """No fields."""


class ResourceDetectors(IstioModel):
    environment: EnvironmentResourceDetector | None = None
    dynatrace: DynatraceResourceDetector | None = None


class DynatraceApi(IstioModel):
    service: str = ""
    port: UInt32 = 0
    http: OtelHttp | None = None


class DynatraceSampler(IstioModel):
    tenant: str = ""
    cluster_id: Int32 = 0
    root_spans_per_minute: UInt32 = 0
    http_service: DynatraceApi | None = None


class OpenTelemetry(IstioModel):
    """``OpenTelemetryTracingProvider``: OTLP over gRPC (default) or HTTP (``http`` set)."""

    service: str = Field(min_length=1)
    port: int = Field(ge=1, le=65535)
    max_tag_length: int = Field(default=0, ge=0)
    http: OtelHttp | None = None
    grpc: OtelGrpc | None = None
    resource_detectors: ResourceDetectors | None = None
    service_attribute_enrichment: proto_enum(  # type: ignore[valid-type]
        "ISTIO_CANONICAL", "OTEL_SEMANTIC_CONVENTIONS") = "ISTIO_CANONICAL"
    dynatrace_sampler: DynatraceSampler | None = None

    @model_validator(mode="after")
    def _one_transport(self) -> OpenTelemetry:
        if self.http is not None and self.grpc is not None:
            raise ValueError("only one of http or grpc may be set")
        return self


class Prometheus(IstioModel):
    """``PrometheusMetricsProvider``: no fields (the waypoint's Envoy stats on ``/stats/prometheus``)."""


class Lightstep(IstioModel):
    """``LightstepTracingProvider`` (deprecated in Istio)."""

    service: str = ""
    port: UInt32 = 0
    access_token: str = ""
    max_tag_length: UInt32 = 0


class Datadog(IstioModel):
    service: str = ""
    port: UInt32 = 0
    max_tag_length: UInt32 = 0


class SkyWalking(IstioModel):
    service: str = ""
    port: UInt32 = 0
    access_token: str = ""


class StackdriverLogging(IstioModel):
    labels: dict[str, str] = Field(default_factory=dict)


class Stackdriver(IstioModel):
    debug: bool = False
    max_number_of_attributes: int | None = None
    max_number_of_annotations: int | None = None
    max_number_of_message_events: int | None = None
    max_tag_length: UInt32 = 0
    logging: StackdriverLogging | None = None


class OpenCensusAgent(IstioModel):
    """``OpenCensusAgentTracingProvider`` (deprecated in Istio)."""

    service: str = ""
    port: UInt32 = 0
    context: tuple[proto_enum("UNSPECIFIED", "W3C_TRACE_CONTEXT", "GRPC_BIN",  # type: ignore[valid-type]
                              "CLOUD_TRACE_CONTEXT", "B3"), ...] = ()
    max_tag_length: UInt32 = 0


class EnvoyHttpAls(IstioModel):
    """``EnvoyHttpGrpcV3LogProvider``: HTTP access logs to a gRPC access-log service."""

    service: str = ""
    port: UInt32 = 0
    log_name: str = ""
    filter_state_objects_to_log: tuple[str, ...] = ()
    additional_request_headers_to_log: tuple[str, ...] = ()
    additional_response_headers_to_log: tuple[str, ...] = ()
    additional_response_trailers_to_log: tuple[str, ...] = ()


class EnvoyTcpAls(IstioModel):
    """``EnvoyTcpGrpcV3LogProvider``."""

    service: str = ""
    port: UInt32 = 0
    log_name: str = ""
    filter_state_objects_to_log: tuple[str, ...] = ()


class OtelLogFormat(IstioModel):
    text: str = ""
    labels: dict[str, Any] | None = None


class EnvoyOtelAls(IstioModel):
    """``EnvoyOpenTelemetryLogProvider``: access logs over OTLP/gRPC."""

    service: str = ""
    port: UInt32 = 0
    log_name: str = ""
    log_format: OtelLogFormat | None = None


class SDSProvider(IstioModel):
    """``SDSProvider``: a remote SDS server for gateways' credentials."""

    name: str = ""
    service: str = ""
    port: UInt32 = 0


# --- ext_authz providers (CUSTOM AuthorizationPolicy; translator/authz/extauthz.py) -----------------


class ExtAuthzBufferSettings(IstioModel):
    """``MeshConfig.ExtensionProvider.EnvoyExternalAuthorizationRequestBody``."""

    max_request_bytes: int = Field(default=0, ge=0, le=2**32 - 1)
    allow_partial_message: bool = False
    pack_as_bytes: bool = False


def _ext_authz_service(v: str) -> str:
    """Istio's ``validateExtensionProviderService``: ``[<namespace>/]<hostname>``, both non-empty."""
    ns, slash, host = v.rpartition("/")
    if not host or (slash and not ns):
        raise ValueError(f"service must be [<namespace>/]<hostname>, found {v!r}")
    return v


class EnvoyExtAuthzGrpc(IstioModel):
    """``EnvoyExternalAuthorizationGrpcProvider`` (Envoy ext_authz over gRPC).  ``port`` may be a
    string of digits (proto3 JSON, as Istio's docs write it); ``timeout`` defaults to 600s in the
    translator, as in Istio."""

    service: str = Field(min_length=1)
    port: int = Field(ge=1, le=65535)
    timeout: DurationField | None = None
    fail_open: bool = False
    clear_route_cache: bool = False
    status_on_error: str = ""
    include_request_body_in_check: ExtAuthzBufferSettings | None = None

    @field_validator("service")
    @classmethod
    def _service(cls, v: str) -> str:
        return _ext_authz_service(v)


class EnvoyExtAuthzHttp(IstioModel):
    """``EnvoyExternalAuthorizationHttpProvider`` (Envoy ext_authz over HTTP).  Header lists take
    Istio's ``x*`` prefix / ``*x`` suffix forms; ``includeHeadersInCheck`` is the deprecated
    spelling of ``includeRequestHeadersInCheck`` (used only when the latter is empty)."""

    service: str = Field(min_length=1)
    port: int = Field(ge=1, le=65535)
    timeout: DurationField | None = None
    path_prefix: str = ""
    fail_open: bool = False
    clear_route_cache: bool = False
    status_on_error: str = ""
    include_request_headers_in_check: tuple[str, ...] = ()
    include_headers_in_check: tuple[str, ...] = ()
    include_additional_headers_in_check: dict[str, str] = Field(default_factory=dict)
    include_request_body_in_check: ExtAuthzBufferSettings | None = None
    headers_to_upstream_on_allow: tuple[str, ...] = ()
    headers_to_downstream_on_deny: tuple[str, ...] = ()
    headers_to_downstream_on_allow: tuple[str, ...] = ()

    @field_validator("service")
    @classmethod
    def _service(cls, v: str) -> str:
        return _ext_authz_service(v)

    @field_validator("path_prefix")
    @classmethod
    def _path_prefix(cls, v: str) -> str:
        if v and not v.startswith("/"):
            raise ValueError(f"pathPrefix should begin with `/` but found {v!r}")
        return v


#: The ``ExtensionProvider.provider`` oneof, in proto order.
PROVIDER_KINDS: Final = ("envoy_ext_authz_http", "envoy_ext_authz_grpc", "zipkin", "lightstep", "datadog",
                         "stackdriver", "opencensus", "skywalking", "opentelemetry", "prometheus",
                         "envoy_file_access_log", "envoy_http_als", "envoy_tcp_als", "envoy_otel_als", "sds")


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p.title() for p in rest)


class ExtensionProvider(IstioModel):
    """``MeshConfig.ExtensionProvider``: a name and exactly one provider kind."""

    name: str = Field(min_length=1)
    envoy_file_access_log: EnvoyFileAccessLog | None = None
    zipkin: Zipkin | None = None
    opentelemetry: OpenTelemetry | None = None
    prometheus: Prometheus | None = None
    envoy_ext_authz_http: EnvoyExtAuthzHttp | None = None
    envoy_ext_authz_grpc: EnvoyExtAuthzGrpc | None = None
    lightstep: Lightstep | None = None
    datadog: Datadog | None = None
    stackdriver: Stackdriver | None = None
    opencensus: OpenCensusAgent | None = None
    skywalking: SkyWalking | None = None
    envoy_http_als: EnvoyHttpAls | None = None
    envoy_tcp_als: EnvoyTcpAls | None = None
    envoy_otel_als: EnvoyOtelAls | None = None
    sds: SDSProvider | None = None

    @model_validator(mode="after")
    def _one(self) -> ExtensionProvider:
        if sum(getattr(self, k) is not None for k in PROVIDER_KINDS) != 1:
            raise ValueError("extension provider must set exactly one of "
                             + ", ".join(_camel(k) for k in PROVIDER_KINDS))
        return self

    @property
    def kind(self) -> str:
        """The provider kind's field name (snake_case), e.g. ``envoy_otel_als``."""
        return next(k for k in PROVIDER_KINDS if getattr(self, k) is not None)


class DefaultProviders(IstioModel):
    access_logging: tuple[str, ...] = ()
    tracing: tuple[str, ...] = ()
    metrics: tuple[str, ...] = ()


#: ``MeshConfig.ProxyPathNormalization.NormalizationType``.  ``DEFAULT`` is ``BASE``.
PathNormalizationType = Literal["DEFAULT", "NONE", "BASE", "MERGE_SLASHES", "DECODE_AND_MERGE_SLASHES"]


class ProxyPathNormalization(IstioModel):
    """``MeshConfig.ProxyPathNormalization``: how proxies normalise the path before authorization
    and routing (Envoy HCM ``normalize_path``/``merge_slashes``/``path_with_escaped_slashes_action``)."""

    normalization: PathNormalizationType = "DEFAULT"


class OutboundTrafficPolicy(IstioModel):
    mode: proto_enum("REGISTRY_ONLY", "ALLOW_ANY", "ALLOW_ANY_DYNAMIC_DNS") = "ALLOW_ANY"  # type: ignore[valid-type]
    tls: ClientTLSSettings | None = None


class InboundTrafficPolicy(IstioModel):
    mode: proto_enum("PASSTHROUGH", "LOCALHOST") = "PASSTHROUGH"  # type: ignore[valid-type]


class LabelSelectorRequirement(IstioModel):
    key: str = ""
    operator: str = ""
    values: tuple[str, ...] = ()


class LabelSelector(IstioModel):
    """MeshConfig's own ``LabelSelector`` (Kubernetes' shape; field names as in Kubernetes)."""

    match_labels: dict[str, str] = Field(default_factory=dict, alias="matchLabels")
    match_expressions: tuple[LabelSelectorRequirement, ...] = Field(default=(), alias="matchExpressions")


class ConfigSource(IstioModel):
    address: str = ""
    tls_settings: ClientTLSSettings | None = None
    subscribed_resources: tuple[proto_enum("SERVICE_REGISTRY"), ...] = ()  # type: ignore[valid-type]


class CertificateData(IstioModel):
    pem: str | None = None
    spiffe_bundle_url: str | None = None
    cert_signers: tuple[str, ...] = ()
    trust_domains: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _one(self) -> CertificateData:
        one_of(self, ("pem", "spiffe_bundle_url"), "pem or spiffeBundleUrl")
        return self


class Certificate(IstioModel):
    secret_name: str = ""
    dns_names: tuple[str, ...] = ()


class ServiceSettingsValues(IstioModel):
    cluster_local: bool = False


class ServiceSettings(IstioModel):
    settings: ServiceSettingsValues | None = None
    hosts: tuple[str, ...] = ()


class ServiceScopeConfigs(IstioModel):
    namespace_selector: LabelSelector | None = None
    services_selector: LabelSelector | None = None
    scope: proto_enum("LOCAL", "GLOBAL") = "LOCAL"  # type: ignore[valid-type]


class CA(IstioModel):
    address: str = ""
    tls_settings: ClientTLSSettings | None = None
    request_timeout: DurationField | None = None
    istiod_side: bool = False


class TLSConfig(IstioModel):
    min_protocol_version: proto_enum("TLS_AUTO", "TLSV1_2", "TLSV1_3") = "TLS_AUTO"  # type: ignore[valid-type]
    ecdh_curves: tuple[str, ...] = ()
    cipher_suites: tuple[str, ...] = ()


class MeshConfig(IstioModel):
    """Istio's MeshConfig (Istio 1.30's proto, every field), with Istio's defaults where the
    translator reads the field.  Which fields the waypoint honours: ``meshconfig_fields.FIELDS``."""

    access_log_file: str = ""
    access_log_encoding: Literal["TEXT", "JSON"] = "TEXT"
    access_log_format: str = ""
    enable_tracing: bool = False
    default_providers: DefaultProviders = Field(default_factory=DefaultProviders)
    extension_providers: tuple[ExtensionProvider, ...] = ()
    root_namespace: str = DEFAULT_ROOT_NAMESPACE
    path_normalization: ProxyPathNormalization = Field(default_factory=ProxyPathNormalization)
    #: Shared fields read by several translator stages (issue 15): the mesh trust domain and the
    #: domains treated as equal to it, the ``exportTo`` defaults (Istio: ``["*"]`` each), and the
    #: mesh-wide locality load-balancing setting (a DestinationRule's own setting overrides it).
    trust_domain: str = "cluster.local"
    trust_domain_aliases: tuple[str, ...] = ()
    default_service_export_to: tuple[str, ...] = ("*",)
    default_virtual_service_export_to: tuple[str, ...] = ("*",)
    default_destination_rule_export_to: tuple[str, ...] = ("*",)
    locality_lb_setting: LocalityLoadBalancerSetting | None = None
    # --- the rest of Istio's MeshConfig (see meshconfig_fields.py for what each does here) -----
    proxy_listen_port: Int32 = 0
    proxy_inbound_listen_port: Int32 = 0
    proxy_http_port: Int32 = 0
    #: Istio's default 10s: the connect timeout of every cluster whose DestinationRule sets none.
    connect_timeout: DurationField | None = None
    hbone_idle_timeout: DurationField | None = None
    protocol_detection_timeout: DurationField | None = None
    tcp_keepalive: TCPKeepalive | None = None
    ingress_class: str = ""
    ingress_service: str = ""
    ingress_controller_mode: proto_enum("UNSPECIFIED", "OFF", "DEFAULT", "STRICT") = "UNSPECIFIED"  # type: ignore[valid-type]
    ingress_selector: str = ""
    enable_envoy_access_log_service: bool = False
    disable_envoy_listener_log: bool = False
    default_config: ProxyConfig = Field(default_factory=ProxyConfig)
    outbound_traffic_policy: OutboundTrafficPolicy | None = None
    inbound_traffic_policy: InboundTrafficPolicy | None = None
    config_sources: tuple[ConfigSource, ...] = ()
    enable_auto_mtls: bool | None = None
    ca_certificates: tuple[CertificateData, ...] = ()
    dns_refresh_rate: DurationField | None = None
    h2_upgrade_policy: proto_enum("DO_NOT_UPGRADE", "UPGRADE") = "DO_NOT_UPGRADE"  # type: ignore[valid-type]
    inbound_cluster_stat_name: str = ""
    outbound_cluster_stat_name: str = ""
    certificates: tuple[Certificate, ...] = ()
    service_settings: tuple[ServiceSettings, ...] = ()
    service_scope_configs: tuple[ServiceScopeConfigs, ...] = ()
    enable_prometheus_merge: bool | None = None
    verify_certificate_at_client: bool | None = None
    ca: CA | None = None
    discovery_selectors: tuple[LabelSelector, ...] = ()
    default_http_retry_policy: HTTPRetry | None = None
    mesh_mtls: TLSConfig | None = Field(default=None, alias="meshMTLS")
    tls_defaults: TLSConfig | None = None
    #: Paths of the fields the loader stripped as unknown (``parse_mesh_config``), and the file.
    _unknown_fields: tuple[str, ...] = PrivateAttr(default=())
    _source: str = PrivateAttr(default="")

    @property
    def unknown_fields(self) -> tuple[str, ...]:
        return self._unknown_fields

    @property
    def source(self) -> str:
        return self._source

    @field_validator("root_namespace")
    @classmethod
    def _root(cls, v: str) -> str:
        return v or DEFAULT_ROOT_NAMESPACE

    @model_validator(mode="after")
    def _check(self) -> MeshConfig:
        names = [p.name for p in self.extension_providers]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate extension provider names: {', '.join(dupes)}")
        if self.access_log_encoding == "JSON" and self.access_log_format:
            try:
                parsed = json.loads(self.access_log_format)
            except ValueError as exc:
                raise ValueError(f"accessLogFormat is not valid JSON for accessLogEncoding JSON: {exc}") from None
            if not isinstance(parsed, dict):
                raise ValueError("accessLogFormat must be a JSON object for accessLogEncoding JSON")
        return self

    def provider(self, name: str) -> ExtensionProvider | None:
        """The extension provider named ``name``; ``envoy`` (Istio's default stdout file logger,
        formatted by ``accessLogEncoding``/``accessLogFormat``), ``prometheus`` and ``stackdriver``
        are built in (Istio's ``DefaultMeshConfig``) unless the mesh config redefines them."""
        for p in self.extension_providers:
            if p.name == name:
                return p
        return BUILTIN_PROVIDERS.get(name)

    @property
    def connect_timeout_or_default(self) -> Duration:
        """``connectTimeout``, else Istio's default (10s)."""
        return self.connect_timeout if self.connect_timeout is not None else DEFAULT_CONNECT_TIMEOUT

    def trust_domain_or(self, default: str) -> str:
        """``trustDomain`` when the mesh config sets it, else ``default`` (the server's
        ``--trust-domain``; ``serve`` refuses the two set and different)."""
        return self.trust_domain if "trust_domain" in self.model_fields_set else default

    @property
    def trust_domains(self) -> tuple[str, ...]:
        """The trust domain, then its aliases (istiod's trust-domain bundle order)."""
        return (self.trust_domain, *(a for a in self.trust_domain_aliases if a != self.trust_domain))


#: Istio's built-in providers (``DefaultMeshConfig().extensionProviders``); a provider of the same
#: name in the mesh config replaces one (istiod merges by name).
BUILTIN_PROVIDERS: Final = {
    "prometheus": ExtensionProvider(name="prometheus", prometheus=Prometheus()),
    "stackdriver": ExtensionProvider(name="stackdriver", stackdriver=Stackdriver()),
    ENVOY_PROVIDER: ExtensionProvider(name=ENVOY_PROVIDER,
                                      envoy_file_access_log=EnvoyFileAccessLog(path="/dev/stdout")),
}
DEFAULT_CONNECT_TIMEOUT: Final = Duration(10 * 1_000_000_000)


class MeshConfigInvalid(Exception):
    def __init__(self, errors: list[ConfigError]) -> None:
        super().__init__("; ".join(str(e) for e in errors))
        self.errors = errors


#: Rounds of strip-and-retry (each round strips every unknown field pydantic reported).
_MAX_RETRIES: Final = 8


def _drop_nulls(v: Any) -> Any:
    """proto3 JSON: ``null`` for a field means unset (``trustDomain: null`` is the default).
    ``labels`` maps (a ``google.protobuf.Struct`` in log formats) keep their nulls."""
    if isinstance(v, dict):
        return {k: (w if k == "labels" else _drop_nulls(w)) for k, w in v.items() if w is not None}
    if isinstance(v, list):
        return [_drop_nulls(w) for w in v]
    return v


def _strip(data: Any, loc: tuple[int | str, ...]) -> bool:
    """Remove the field at ``loc`` (a pydantic error location) from ``data``; pydantic's own tags
    in ``loc`` (validator and union names) match no key and are skipped."""
    node = data
    for part in loc[:-1]:
        in_dict = isinstance(node, dict) and isinstance(part, str) and part in node
        in_list = isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)
        if in_dict or in_list:
            node = node[part]
    last = loc[-1] if loc else None
    if isinstance(node, dict) and last in node:
        del node[last]
        return True
    return False


def parse_mesh_config(data: Any, *, source: str = "") -> MeshConfig:
    """Validate a decoded mesh config document (``None`` or empty means all defaults).

    Lenient like istiod, which retries with unknown fields allowed: a field the model does not know
    (a newer Istio's, or a typo) is stripped and remembered (``unknown_fields``, reported as a
    warning with its path); a known field of the wrong type or value is an error with its path
    (``MeshConfigInvalid``).  The Istio kinds stay strict: only this loader strips."""
    if data is None:
        return MeshConfig()
    if not isinstance(data, dict):
        raise MeshConfigInvalid([ConfigError("mesh config is not a mapping", source=source)])
    work = _drop_nulls(copy.deepcopy(data))
    unknown: list[str] = []
    for _ in range(_MAX_RETRIES):
        try:
            mesh = MeshConfig.model_validate(work)
        except ValidationError as exc:
            extra = [e for e in exc.errors(include_url=False) if e["type"] == "extra_forbidden"]
            if len(extra) != exc.error_count():
                errors = [e for e in errors_from_validation(exc, source=source, kind="MeshConfig")
                          if e.message != "unknown field"]
                raise MeshConfigInvalid(errors) from None
            stripped = False
            for e in extra:
                if _strip(work, tuple(e["loc"])):
                    stripped = True
                    unknown.append(format_loc(tuple(e["loc"])))
            if not stripped:
                raise MeshConfigInvalid(errors_from_validation(exc, source=source, kind="MeshConfig")) from None
            continue
        mesh._unknown_fields = tuple(dict.fromkeys(unknown))
        mesh._source = source
        return mesh
    raise MeshConfigInvalid([ConfigError("too many rounds of unknown fields", source=source)])


def load_mesh_config(path: str | Path) -> MeshConfig:
    """Read a mesh config YAML file (the ``mesh`` value of Istio's ConfigMap)."""
    p = Path(path)
    return parse_mesh_config(yaml.safe_load(p.read_text()), source=str(p))


__all__ = [
    "DEFAULT_ROOT_NAMESPACE",
    "ENVOY_PROVIDER",
    "DefaultProviders",
    "EnvoyExtAuthzGrpc",
    "EnvoyExtAuthzHttp",
    "ExtAuthzBufferSettings",
    "ExtensionProvider",
    "HttpHeader",
    "MeshConfig",
    "MeshConfigInvalid",
    "OpenTelemetry",
    "OtelGrpc",
    "OtelHttp",
    "PathNormalizationType",
    "Prometheus",
    "ProxyPathNormalization",
    "Zipkin",
    "load_mesh_config",
    "parse_mesh_config",
]
