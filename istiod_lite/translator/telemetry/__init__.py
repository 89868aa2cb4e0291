"""Telemetry API and MeshConfig on the waypoint: access logs and tracing applied to the translated
listeners (``apply``), tracing providers and their collector clusters (``tracing``), and the settings
upstream Envoy cannot honour (reported).  The stage's API is re-exported here."""

from istiod_lite.translator.telemetry import tracing
from istiod_lite.translator.telemetry.apply import (
    CEL_FILTER,
    FILE_LOGGER,
    ISTIO_JSON_FORMAT,
    ISTIO_TEXT_FORMAT,
    AccessLog,
    ProviderSetting,
    TelemetryMemo,
    access_log,
    access_logs_for,
    applicable_telemetries,
    apply_access_logs,
    apply_telemetry,
    effective_providers,
    telemetry_inputs,
    telemetry_warnings,
    with_access_logs,
)

__all__ = [
    "CEL_FILTER",
    "FILE_LOGGER",
    "ISTIO_JSON_FORMAT",
    "ISTIO_TEXT_FORMAT",
    "AccessLog",
    "ProviderSetting",
    "TelemetryMemo",
    "access_log",
    "access_logs_for",
    "applicable_telemetries",
    "apply_access_logs",
    "apply_telemetry",
    "effective_providers",
    "telemetry_inputs",
    "telemetry_warnings",
    "tracing",
    "with_access_logs",
]
