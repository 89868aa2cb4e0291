"""Istio's ``ProxyConfig`` (mesh/v1alpha1/proxy.proto, Istio 1.30): MeshConfig ``defaultConfig``.

Every field is modelled with its proto type so that a wrong type is an error with its path
(``defaultConfig.drainDuration: invalid duration ...``) while a field of a newer Istio is only a
warning (``load_mesh_config`` strips unknown fields and retries, as istiod does).  Which of these
fields the waypoint honours is decided in ``meshconfig_fields.py``, not here.

proto3 JSON is what istiod reads: enums by name (or number), wrapper types as plain values,
64-bit integers as numbers or strings, durations as ``"1.5s"``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, Literal, get_args

from pydantic import BeforeValidator, Field, model_validator

from istiod_lite.model.base import IstioModel
from istiod_lite.model.networking_dr import ClientTLSSettings, TCPKeepalive
from istiod_lite.model.types import DurationField, bounded_int

UInt32 = Annotated[int, bounded_int(0, 2**32 - 1)]
Int32 = Annotated[int, bounded_int(-(2**31), 2**31 - 1)]
Int64 = Annotated[int, bounded_int(-(2**63), 2**63 - 1)]


def proto_enum(*names: str) -> Any:
    """A proto enum field: one of ``names``, or its number (proto3 JSON accepts both)."""

    def check(v: Any) -> str:
        if isinstance(v, int) and not isinstance(v, bool):
            if 0 <= v < len(names):
                return names[v]
            raise ValueError(f"unknown enum number {v}; expected one of {', '.join(names)}")
        if isinstance(v, str) and v in names:
            return v
        raise ValueError(f"unknown enum value {v!r}; expected one of {', '.join(names)}")

    return Annotated[str, BeforeValidator(check)]


def one_of(model: IstioModel, fields: Sequence[str], what: str) -> None:
    """A proto ``oneof``: at most one of ``fields`` set."""
    set_ = [f for f in fields if getattr(model, f) is not None]
    if len(set_) > 1:
        raise ValueError(f"only one of {what} may be set")


def by_number(literal: Any) -> Any:
    """A validator for ``Annotated[Literal[...], by_number(...)]``: proto enum numbers to names."""
    names = get_args(literal)

    def check(v: Any) -> Any:
        if isinstance(v, int) and not isinstance(v, bool) and 0 <= v < len(names):
            return names[v]
        return v

    return BeforeValidator(check)


_AuthenticationPolicy = Literal["NONE", "MUTUAL_TLS", "INHERIT"]
AuthenticationPolicy = Annotated[_AuthenticationPolicy, by_number(_AuthenticationPolicy)]
_ForwardClientCertDetails = Literal["UNDEFINED", "SANITIZE", "FORWARD_ONLY", "APPEND_FORWARD", "SANITIZE_SET",
                                    "ALWAYS_FORWARD_ONLY"]
ForwardClientCertDetails = Annotated[_ForwardClientCertDetails, by_number(_ForwardClientCertDetails)]


class TracingZipkin(IstioModel):
    address: str = ""


class TracingLightstep(IstioModel):
    address: str = ""
    access_token: str = ""


class TracingDatadog(IstioModel):
    address: str = ""


class TracingStackdriver(IstioModel):
    debug: bool = False
    max_number_of_attributes: Int64 | None = None
    max_number_of_annotations: Int64 | None = None
    max_number_of_message_events: Int64 | None = None


class TracingOpenCensusAgent(IstioModel):
    address: str = ""
    context: tuple[proto_enum("UNSPECIFIED", "W3C_TRACE_CONTEXT", "GRPC_BIN",  # type: ignore[valid-type]
                              "CLOUD_TRACE_CONTEXT", "B3"), ...] = ()


class TracingLiteral(IstioModel):
    value: str = ""


class TracingEnvironment(IstioModel):
    name: str = ""
    default_value: str = ""


class TracingRequestHeader(IstioModel):
    name: str = ""
    default_value: str = ""


class TracingCustomTag(IstioModel):
    literal: TracingLiteral | None = None
    environment: TracingEnvironment | None = None
    header: TracingRequestHeader | None = None

    @model_validator(mode="after")
    def _one(self) -> TracingCustomTag:
        one_of(self, ("literal", "environment", "header"), "literal, environment or header")
        return self


class Tracing(IstioModel):
    """``Tracing``: the legacy per-proxy tracer (Telemetry API providers replace it) and ``sampling``."""

    zipkin: TracingZipkin | None = None
    lightstep: TracingLightstep | None = None
    datadog: TracingDatadog | None = None
    stackdriver: TracingStackdriver | None = None
    open_census_agent: TracingOpenCensusAgent | None = None
    custom_tags: dict[str, TracingCustomTag] = Field(default_factory=dict)
    max_path_tag_length: UInt32 = 0
    #: Percentage 0.0-100.0 of requests traced (istiod: over 100 means 1.0; 0 means unset).
    sampling: float = Field(default=0.0, ge=0.0, le=100.0)
    tls_settings: ClientTLSSettings | None = None
    enable_istio_tags: bool | None = None

    @model_validator(mode="after")
    def _one(self) -> Tracing:
        one_of(self, ("zipkin", "lightstep", "datadog", "stackdriver", "open_census_agent"),
               "zipkin, lightstep, datadog, stackdriver or openCensusAgent")
        return self


class SDS(IstioModel):
    enabled: bool = False
    k8s_sa_jwt_path: str = ""


class ProxyProtocolConfiguration(IstioModel):
    """``Topology.ProxyProtocolConfiguration``: no fields."""


class Topology(IstioModel):
    num_trusted_proxies: UInt32 = 0
    forward_client_cert_details: ForwardClientCertDetails = "UNDEFINED"
    proxy_protocol: ProxyProtocolConfiguration | None = None


class PrivateKeyPolling(IstioModel):
    poll_delay: DurationField | None = None
    fallback: bool | None = None


class PrivateKeyProvider(IstioModel):
    cryptomb: PrivateKeyPolling | None = None
    qat: PrivateKeyPolling | None = None

    @model_validator(mode="after")
    def _one(self) -> PrivateKeyProvider:
        one_of(self, ("cryptomb", "qat"), "cryptomb or qat")
        return self


class RemoteService(IstioModel):
    address: str = ""
    tls_settings: ClientTLSSettings | None = None
    tcp_keepalive: TCPKeepalive | None = None


class HttpHeaderValue(IstioModel):
    name: str = ""
    value: str = ""


class HTTPHealthCheckConfig(IstioModel):
    """networking v1alpha3 ``HTTPHealthCheckConfig`` (WorkloadGroup probes)."""

    path: str = ""
    port: UInt32 = 0
    host: str = ""
    scheme: str = ""
    http_headers: tuple[HttpHeaderValue, ...] = ()


class TCPHealthCheckConfig(IstioModel):
    host: str = ""
    port: UInt32 = 0


class ExecHealthCheckConfig(IstioModel):
    command: tuple[str, ...] = ()


class GrpcHealthCheckConfig(IstioModel):
    port: UInt32 = 0
    service: str | None = None


class ReadinessProbe(IstioModel):
    """networking v1alpha3 ``ReadinessProbe`` (the sidecar's own readiness; not a waypoint setting)."""

    initial_delay_seconds: Int32 = 0
    timeout_seconds: Int32 = 0
    period_seconds: Int32 = 0
    success_threshold: Int32 = 0
    failure_threshold: Int32 = 0
    http_get: HTTPHealthCheckConfig | None = None
    tcp_socket: TCPHealthCheckConfig | None = None
    exec_: ExecHealthCheckConfig | None = Field(default=None, alias="exec")
    grpc: GrpcHealthCheckConfig | None = None


class ProxyImage(IstioModel):
    """networking v1beta1 ``ProxyImage``."""

    image_type: str = ""


class ProxyStatsMatcher(IstioModel):
    """Extra Envoy stats to keep (Envoy bootstrap ``stats_config.stats_matcher`` inclusion list)."""

    inclusion_prefixes: tuple[str, ...] = ()
    inclusion_suffixes: tuple[str, ...] = ()
    inclusion_regexps: tuple[str, ...] = ()


class Disabled(IstioModel):
    disabled: bool | None = None


class ServerHeader(IstioModel):
    disabled: bool | None = None
    value: str = ""


class Enabled(IstioModel):
    enabled: bool | None = None


class MetadataExchangeHeaders(IstioModel):
    mode: proto_enum("UNDEFINED", "IN_MESH") = "UNDEFINED"  # type: ignore[valid-type]


class SetCurrentClientCertDetails(IstioModel):
    subject: bool | None = None
    cert: bool | None = None
    chain: bool | None = None
    dns: bool | None = None
    uri: bool | None = None


class ProxyHeaders(IstioModel):
    """``ProxyConfig.ProxyHeaders``: the headers the proxy adds, removes or rewrites."""

    forwarded_client_cert: ForwardClientCertDetails = "UNDEFINED"
    set_current_client_cert_details: SetCurrentClientCertDetails | None = None
    request_id: Disabled | None = None
    server: ServerHeader | None = None
    attempt_count: Disabled | None = None
    envoy_debug_headers: Disabled | None = None
    metadata_exchange_headers: MetadataExchangeHeaders | None = None
    preserve_http1_header_case: bool | None = Field(default=None, alias="preserveHttp1HeaderCase")
    x_forwarded_host: Enabled | None = None
    x_forwarded_port: Enabled | None = None


class ProxyConfig(IstioModel):
    """``ProxyConfig`` with every field of Istio 1.30's proto."""

    config_path: str = ""
    binary_path: str = ""
    service_cluster: str | None = None
    tracing_service_name: proto_enum(  # type: ignore[valid-type]
        "APP_LABEL_AND_NAMESPACE", "CANONICAL_NAME_ONLY", "CANONICAL_NAME_AND_NAMESPACE") | None = None
    drain_duration: DurationField | None = None
    discovery_address: str = ""
    discovery_refresh_delay: DurationField | None = None
    zipkin_address: str = ""
    statsd_udp_address: str = ""
    envoy_metrics_service_address: str = ""
    proxy_admin_port: Int32 = 0
    availability_zone: str = ""
    control_plane_auth_policy: AuthenticationPolicy = "NONE"
    custom_config_file: str = ""
    stat_name_length: Int32 = 0
    concurrency: Int32 | None = None
    proxy_bootstrap_template_path: str = ""
    interception_mode: proto_enum("REDIRECT", "TPROXY", "NONE") = "REDIRECT"  # type: ignore[valid-type]
    tracing: Tracing | None = None
    sds: SDS | None = None
    envoy_access_log_service: RemoteService | None = None
    envoy_metrics_service: RemoteService | None = None
    proxy_metadata: dict[str, str] = Field(default_factory=dict)
    runtime_values: dict[str, str] = Field(default_factory=dict)
    status_port: Int32 = 0
    extra_stat_tags: tuple[str, ...] = ()
    gateway_topology: Topology | None = None
    termination_drain_duration: DurationField | None = None
    mesh_id: str = ""
    readiness_probe: ReadinessProbe | None = None
    proxy_stats_matcher: ProxyStatsMatcher | None = None
    hold_application_until_proxy_starts: bool | None = None
    ca_certificates_pem: tuple[str, ...] = Field(default=(), alias="caCertificatesPem")
    image: ProxyImage | None = None
    private_key_provider: PrivateKeyProvider | None = None
    proxy_headers: ProxyHeaders | None = None
    file_flush_interval: DurationField | None = None
    file_flush_min_size_kb: UInt32 = Field(default=0, alias="fileFlushMinSizeKb")
    stats_compression: bool | None = None

    @model_validator(mode="after")
    def _one(self) -> ProxyConfig:
        one_of(self, ("service_cluster", "tracing_service_name"), "serviceCluster or tracingServiceName")
        return self


__all__ = [
    "ProxyConfig",
    "ProxyHeaders",
    "ProxyStatsMatcher",
    "Tracing",
    "UInt32",
    "one_of",
    "proto_enum",
]
