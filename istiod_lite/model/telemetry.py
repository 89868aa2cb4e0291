"""telemetry.istio.io ``Telemetry`` (v1, v1alpha1): access logging, tracing and metrics settings.

Fields follow istio/api ``telemetry/v1/telemetry.proto``.  Strict like every Istio kind (a typo in
``accessLogging`` must not silently turn logging off), with the checks of Istio's webhook
(``ValidateTelemetry``): one of selector/targetRef/targetRefs, at most one tracing entry, a sampling
percentage within 0-100, exactly one kind of custom tag, non-empty provider names, a filter
expression that is not blank.  Whether a named provider exists in the mesh config is a
translation-time question, as it is in Istio (the mesh config can change independently).
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Final, Literal

from pydantic import Field, field_validator, model_validator

from istiod_lite.model.base import IstioModel, Resource
from istiod_lite.model.kind_declaration import LDS, KindDeclaration, StatusWriter, WaypointRead
from istiod_lite.model.registry import register
from istiod_lite.model.security import PolicyTargetReference, PolicyWorkloadSelector, TargetRefs

GROUP: Final = "telemetry.istio.io"
VERSIONS: Final = ("v1", "v1alpha1")


class ProviderRef(IstioModel):
    """A reference to a mesh config ``extensionProviders`` entry, by name."""

    name: str

    @field_validator("name")
    @classmethod
    def _non_empty(cls, v: str) -> str:
        if not v:
            raise ValueError("providers.name may not be empty")
        return v


Providers = tuple[ProviderRef, ...]


class AccessLogFilter(IstioModel):
    """``AccessLogging.Filter``: a CEL expression; only matching requests are logged."""

    expression: str

    @field_validator("expression")
    @classmethod
    def _non_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("filter expression must not be empty")
        return v


WorkloadMode = Literal["CLIENT_AND_SERVER", "CLIENT", "SERVER"]


class TelemetrySelectorMatch(IstioModel):
    """``AccessLogging.LogSelector``: which side of traffic the entry applies to."""

    mode: WorkloadMode = "CLIENT_AND_SERVER"


class AccessLogging(IstioModel):
    match: TelemetrySelectorMatch | None = None
    providers: Providers = ()
    disabled: bool | None = None
    filter: AccessLogFilter | None = None


class Literal_(IstioModel):
    """``CustomTag.Literal``: a fixed value (``literal`` would shadow the typing name)."""

    value: str = Field(min_length=1)


class HeaderTag(IstioModel):
    name: str = Field(min_length=1)
    default_value: str = ""


class EnvironmentTag(IstioModel):
    name: str = Field(min_length=1)
    default_value: str = ""


class FormatterTag(IstioModel):
    """``CustomTag.Formatter``: an access-log substitution format (``%REQ(x-user)%``) as the tag value."""

    value: str = Field(min_length=1)


class CustomTag(IstioModel):
    """``Tracing.CustomTag``: exactly one of literal, header, environment or formatter."""

    literal: Literal_ | None = None
    header: HeaderTag | None = None
    environment: EnvironmentTag | None = None
    formatter: FormatterTag | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> CustomTag:
        kinds = (self.literal, self.header, self.environment, self.formatter)
        if sum(k is not None for k in kinds) != 1:
            raise ValueError("custom tag must set exactly one of literal, header, environment or formatter")
        return self


class Tracing(IstioModel):
    match: TelemetrySelectorMatch | None = None
    providers: Providers = ()
    random_sampling_percentage: float | None = None
    disable_span_reporting: bool | None = None
    custom_tags: dict[str, CustomTag] = Field(default_factory=dict)
    use_request_id_for_trace_sampling: bool | None = None
    enable_istio_tags: bool | None = None
    #: Istio 1.30+: Envoy's ``Tracing.no_context_propagation``, absent from the Envoy API this project
    #: builds against; accepted and reported as ignored (``telemetry_warnings``).
    disable_context_propagation: bool | None = None

    @field_validator("random_sampling_percentage")
    @classmethod
    def _percent(cls, v: float | None) -> float | None:
        if v is not None and not 0.0 <= v <= 100.0:
            raise ValueError("randomSamplingPercentage must be in range [0.0, 100.0]")
        return v


IstioMetric = Literal["ALL_METRICS", "REQUEST_COUNT", "REQUEST_DURATION", "REQUEST_SIZE", "RESPONSE_SIZE",
                      "TCP_OPENED_CONNECTIONS", "TCP_CLOSED_CONNECTIONS", "TCP_SENT_BYTES", "TCP_RECEIVED_BYTES",
                      "GRPC_REQUEST_MESSAGES", "GRPC_RESPONSE_MESSAGES"]


class MetricSelector(IstioModel):
    """``MetricSelector``: a built-in ``metric`` or a ``customMetric`` name (not both)."""

    metric: IstioMetric | None = None
    custom_metric: str | None = None
    mode: WorkloadMode = "CLIENT_AND_SERVER"

    @model_validator(mode="after")
    def _one(self) -> MetricSelector:
        if self.metric is not None and self.custom_metric is not None:
            raise ValueError("only one of metric or customMetric may be set")
        return self


class TagOverride(IstioModel):
    operation: Literal["UPSERT", "REMOVE"] = "UPSERT"
    value: str = ""

    @model_validator(mode="after")
    def _value(self) -> TagOverride:
        if self.operation == "UPSERT" and not self.value:
            raise ValueError("must provide a value for UPSERT")
        if self.operation == "REMOVE" and self.value:
            raise ValueError("value must not be set for REMOVE")
        return self


class MetricsOverrides(IstioModel):
    match: MetricSelector | None = None
    disabled: bool | None = None
    tag_overrides: dict[str, TagOverride] = Field(default_factory=dict)


class Metrics(IstioModel):
    providers: Providers = ()
    overrides: tuple[MetricsOverrides, ...] = ()
    reporting_interval: str | None = None


class TelemetrySpec(IstioModel):
    selector: PolicyWorkloadSelector | None = None
    target_ref: PolicyTargetReference | None = None
    target_refs: TargetRefs = ()
    tracing: Annotated[tuple[Tracing, ...], Field(max_length=1)] = ()
    metrics: tuple[Metrics, ...] = ()
    access_logging: tuple[AccessLogging, ...] = ()

    @property
    def targets(self) -> tuple[PolicyTargetReference, ...]:
        """``targetRefs``, or the deprecated single ``targetRef`` as a one-element tuple."""
        return self.target_refs or ((self.target_ref,) if self.target_ref is not None else ())

    @model_validator(mode="after")
    def _check(self) -> TelemetrySpec:
        if (self.selector is not None) + (self.target_ref is not None) + bool(self.target_refs) > 1:
            raise ValueError("only one of selector, targetRef or targetRefs can be set")
        return self


# Access logs are inline in the listeners' HCM and TCP proxy filters; applied after translation.
@register(KindDeclaration("telemetries", frozenset({LDS}), WaypointRead.AFTER, status=StatusWriter.REJECTIONS))
class Telemetry(Resource):
    KIND: ClassVar[str] = "Telemetry"
    GROUP: ClassVar[str] = GROUP
    VERSIONS: ClassVar[tuple[str, ...]] = VERSIONS
    kind: Literal["Telemetry"]
    spec: TelemetrySpec = Field(default_factory=TelemetrySpec)
    status: dict[str, object] | None = None


__all__ = [
    "AccessLogFilter",
    "AccessLogging",
    "CustomTag",
    "Metrics",
    "MetricsOverrides",
    "ProviderRef",
    "Telemetry",
    "TelemetrySpec",
    "Tracing",
]
