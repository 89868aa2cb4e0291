"""Prometheus text exposition with istiod's metric names.

prometheus-client exposes a counter ``pilot_xds_pushes`` as ``pilot_xds_pushes_total`` plus a
``pilot_xds_pushes_created`` timestamp.  istiod exports its counters without that suffix
(``pilot_xds_pushes{type="lds"}``), and Istio's dashboards and alerts query those names, so this
renders the registry in text format 0.0.4 with counter samples under the family's own name and
no ``_created`` samples.  The process and Python runtime families (``process_*``, ``python_*``)
keep their standard ``_total`` names (``process_cpu_seconds_total``), as Go's process collector
spells them in istiod too.  Everything else (gauges, histograms) is rendered as prometheus-client
would.
"""

from __future__ import annotations

import math

from prometheus_client import CollectorRegistry

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: Families whose counters keep the ``_total`` suffix (the standard runtime collectors').
_STANDARD_PREFIXES = ("process_", "python_")


def _escape_help(text: str) -> str:
    return text.replace("\\", r"\\").replace("\n", r"\n")


def _escape_label(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _value(v: float) -> str:
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    if math.isnan(v):
        return "NaN"
    return repr(float(v))


def render(registry: CollectorRegistry) -> bytes:
    lines: list[str] = []
    for family in registry.collect():
        kind = family.type if family.type in ("counter", "gauge", "histogram", "summary") else "untyped"
        lines.append(f"# HELP {family.name} {_escape_help(family.documentation)}")
        lines.append(f"# TYPE {family.name} {kind}")
        for s in family.samples:
            name = s.name
            if name.endswith("_created"):
                continue
            if kind == "counter" and name == family.name + "_total" and not family.name.startswith(_STANDARD_PREFIXES):
                name = family.name
            labels = ",".join(f'{k}="{_escape_label(v)}"' for k, v in s.labels.items())
            lines.append(f"{name}{{{labels}}} {_value(s.value)}" if labels else f"{name} {_value(s.value)}")
    return ("\n".join(lines) + "\n").encode()
