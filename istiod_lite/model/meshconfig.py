"""Istio's ``MeshConfig`` (mesh/v1alpha1/config.proto): the telemetry subset istiod-lite reads.

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
    service: str = Field(min_length=1)
    port: int = Field(ge=1, le=65535)
    max_tag_length: int = Field(default=0, ge=0)


class OtelHttp(IstioModel):
    path: str = ""
    timeout: str = ""
    headers: tuple[dict[str, Any], ...] = ()


class OpenTelemetry(IstioModel):
    service: str = Field(min_length=1)
    port: int = Field(ge=1, le=65535)
    max_tag_length: int = Field(default=0, ge=0)
    http: OtelHttp | None = None


class Prometheus(IstioModel):
    pass


class ExtensionProvider(IstioModel):
    """``MeshConfig.ExtensionProvider``: a name and exactly one provider kind."""

    name: str = Field(min_length=1)
    envoy_file_access_log: EnvoyFileAccessLog | None = None
    zipkin: Zipkin | None = None
    opentelemetry: OpenTelemetry | None = None
    prometheus: Prometheus | None = None

    @model_validator(mode="after")
    def _one(self) -> ExtensionProvider:
        kinds = (self.envoy_file_access_log, self.zipkin, self.opentelemetry, self.prometheus)
        if sum(k is not None for k in kinds) != 1:
            raise ValueError("extension provider must set exactly one of envoyFileAccessLog, zipkin, "
                             "opentelemetry or prometheus")
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
    "ExtensionProvider",
    "MeshConfig",
    "MeshConfigInvalid",
    "PathNormalizationType",
    "ProxyPathNormalization",
    "load_mesh_config",
    "parse_mesh_config",
]
