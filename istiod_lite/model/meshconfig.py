"""Istio's ``MeshConfig`` (mesh/v1alpha1/config.proto): the subset istiod-lite reads (telemetry,
root namespace, path normalisation, ext_authz providers for CUSTOM authorization).

Not a registered kind: in Istio it is the ``mesh`` key of the ``istio`` ConfigMap (or a file given
to istiod with ``--meshConfig``), one per mesh, not a Kubernetes object the sources watch.  Strict
like the Istio kinds, so ``accessLogFiles`` (a typo) is an error rather than logging silently off.
Fields of MeshConfig that istiod-lite does not use yet are rejected too, so an operator who relies
on one learns that it is not honoured.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Final, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from istiod_lite.model.base import IstioModel
from istiod_lite.model.errors import ConfigError, errors_from_validation
from istiod_lite.model.networking_dr import LocalityLoadBalancerSetting
from istiod_lite.model.types import DurationField

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


class HttpHeader(IstioModel):
    """``ExtensionProvider.HttpHeader``: a header (or gRPC metadata entry) with a literal ``value``.
    Istio's ``envName`` (a value read from istiod's environment) is not supported: the translator
    reads no environment, so it is rejected rather than sent empty."""

    name: str = Field(min_length=1)
    value: str


class OtelHttp(IstioModel):
    """``OpenTelemetryTracingProvider.HttpService``: OTLP/HTTP (protobuf) export."""

    path: str = ""
    timeout: DurationField | None = None
    headers: tuple[HttpHeader, ...] = ()


class OtelGrpc(IstioModel):
    """``OpenTelemetryTracingProvider.GrpcService``: OTLP/gRPC export settings."""

    timeout: DurationField | None = None
    initial_metadata: tuple[HttpHeader, ...] = ()


class OpenTelemetry(IstioModel):
    """``OpenTelemetryTracingProvider``: OTLP over gRPC (default) or HTTP (``http`` set)."""

    service: str = Field(min_length=1)
    port: int = Field(ge=1, le=65535)
    max_tag_length: int = Field(default=0, ge=0)
    http: OtelHttp | None = None
    grpc: OtelGrpc | None = None

    @model_validator(mode="after")
    def _one_transport(self) -> OpenTelemetry:
        if self.http is not None and self.grpc is not None:
            raise ValueError("only one of http or grpc may be set")
        return self


class Prometheus(IstioModel):
    """``PrometheusMetricsProvider``: no fields (the waypoint's Envoy stats on ``/stats/prometheus``)."""


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


class ExtensionProvider(IstioModel):
    """``MeshConfig.ExtensionProvider``: a name and exactly one provider kind."""

    name: str = Field(min_length=1)
    envoy_file_access_log: EnvoyFileAccessLog | None = None
    zipkin: Zipkin | None = None
    opentelemetry: OpenTelemetry | None = None
    prometheus: Prometheus | None = None
    envoy_ext_authz_http: EnvoyExtAuthzHttp | None = None
    envoy_ext_authz_grpc: EnvoyExtAuthzGrpc | None = None

    @model_validator(mode="after")
    def _one(self) -> ExtensionProvider:
        kinds = (self.envoy_file_access_log, self.zipkin, self.opentelemetry, self.prometheus,
                 self.envoy_ext_authz_http, self.envoy_ext_authz_grpc)
        if sum(k is not None for k in kinds) != 1:
            raise ValueError("extension provider must set exactly one of envoyFileAccessLog, zipkin, "
                             "opentelemetry, prometheus, envoyExtAuthzHttp or envoyExtAuthzGrpc")
        return self


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


class MeshConfig(IstioModel):
    """The telemetry part of Istio's MeshConfig (plus ``pathNormalization``), with Istio's defaults."""

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
        """The extension provider named ``name``; ``envoy`` is built in (Istio's default stdout
        file logger, formatted by ``accessLogEncoding``/``accessLogFormat``) unless redefined."""
        for p in self.extension_providers:
            if p.name == name:
                return p
        if name == ENVOY_PROVIDER:
            return ExtensionProvider(name=ENVOY_PROVIDER, envoy_file_access_log=EnvoyFileAccessLog(path="/dev/stdout"))
        return None


class MeshConfigInvalid(Exception):
    def __init__(self, errors: list[ConfigError]) -> None:
        super().__init__("; ".join(str(e) for e in errors))
        self.errors = errors


def parse_mesh_config(data: Any, *, source: str = "") -> MeshConfig:
    """Validate a decoded mesh config document (``None`` or empty means all defaults)."""
    if data is None:
        return MeshConfig()
    if not isinstance(data, dict):
        raise MeshConfigInvalid([ConfigError("mesh config is not a mapping", source=source)])
    try:
        return MeshConfig.model_validate(data)
    except ValidationError as exc:
        raise MeshConfigInvalid(errors_from_validation(exc, source=source, kind="MeshConfig")) from None


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
