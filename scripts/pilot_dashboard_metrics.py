"""Print every metric name the PromQL of Istio's control-plane Grafana dashboards queries, for
``tests/unit/data/pilot_dashboard_metrics.txt`` (the list ``tests/unit/test_pilot_dashboard_metrics.py``
checks istiod-lite's ``/metrics`` and docs against).

Usage: ``python scripts/pilot_dashboard_metrics.py --git-dir DIR > tests/unit/data/pilot_dashboard_metrics.txt``

Two dashboards are read from an istio/istio git directory (a mirror or a clone): the current one at
``--rev`` (default ``HEAD``), ``manifests/addons/dashboards/pilot-dashboard.gen.json``, and the last
hand-written one (``pilot-dashboard.json`` at ``--legacy-rev``, the parent of the commit that moved
the dashboard to jsonnet), which many installations still import and which queries more series
(the per-type reject gauges, listener conflicts, write timeouts, process memory).

A name is written as the query writes it (``pilot_xds_push_time_bucket``, not the histogram's family
name), one a line, with the dashboards that use it after a tab (``current``, ``legacy``).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

CURRENT_PATH = "manifests/addons/dashboards/pilot-dashboard.gen.json"
LEGACY_PATH = "manifests/addons/dashboards/pilot-dashboard.json"
#: The parent of "dashboards: migrate pilot dashboard over to modern jsonnet dashboard-as-code (#51554)".
LEGACY_REV = "0b5978eabdf4b3bac7f87424013f1e626b0a79ca"

#: PromQL words that look like identifiers but are not metric names.
_PROMQL_WORDS = frozenset({
    "sum", "min", "max", "avg", "count", "stddev", "stdvar", "topk", "bottomk", "quantile", "count_values",
    "group", "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool",
    "offset", "rate", "irate", "increase", "delta", "idelta", "deriv", "absent", "absent_over_time",
    "histogram_quantile", "label_replace", "label_join", "vector", "scalar", "time", "abs", "ceil", "floor",
    "round", "clamp_max", "clamp_min", "sort", "sort_desc", "avg_over_time", "max_over_time", "min_over_time",
    "sum_over_time", "count_over_time", "quantile_over_time", "changes", "resets", "inf", "nan",
})
_IDENT = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")


def metric_names(expr: str) -> set[str]:
    """The metric names ``expr`` selects: identifiers outside strings, label matchers, ranges and
    ``by``/``without``/``on``/``ignoring`` lists, that are not PromQL functions or keywords."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings (label values)
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # ranges ([1m], [$__rate_interval])
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\$\w+", " ", text)  # Grafana variables
    return {m for m in _IDENT.findall(text) if m.lower() not in _PROMQL_WORDS}


def expressions(dashboard: Any) -> Iterator[str]:
    """Every panel target's ``expr`` (templating queries name datasources, not metrics)."""
    if isinstance(dashboard, dict):
        for key, value in dashboard.items():
            if key == "templating":
                continue
            if key == "expr" and isinstance(value, str):
                yield value
            else:
                yield from expressions(value)
    elif isinstance(dashboard, list):
        for item in dashboard:
            yield from expressions(item)


def git_show(git_dir: str, rev: str, path: str) -> str:
    return subprocess.run(["git", "--git-dir", git_dir, "show", f"{rev}:{path}"], check=True,
                          capture_output=True, text=True).stdout


def resolve(git_dir: str, rev: str) -> str:
    return subprocess.run(["git", "--git-dir", git_dir, "rev-parse", f"{rev}^{{commit}}"], check=True,
                          capture_output=True, text=True).stdout.strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--git-dir", required=True, help="an istio/istio git directory")
    parser.add_argument("--rev", default="HEAD")
    parser.add_argument("--legacy-rev", default=LEGACY_REV)
    args = parser.parse_args(argv)
    sources = {"current": (resolve(args.git_dir, args.rev), CURRENT_PATH),
               "legacy": (resolve(args.git_dir, args.legacy_rev), LEGACY_PATH)}
    used: dict[str, set[str]] = {}
    for label, (commit, path) in sources.items():
        for expr in expressions(json.loads(git_show(args.git_dir, commit, path))):
            for name in metric_names(expr):
                used.setdefault(name, set()).add(label)
    out = sys.stdout
    out.write("# Metric names queried by Istio's control-plane (pilot) Grafana dashboards\n")
    out.write("# (scripts/pilot_dashboard_metrics.py), read by tests/unit/test_pilot_dashboard_metrics.py.\n")
    out.write("# Generated from istio/istio (Apache-2.0):\n")
    for label, (commit, path) in sources.items():
        out.write(f"#   {label}: {path} at {commit}\n")
    out.write("# <name>\\t<dashboards using it>\n")
    for name in sorted(used):
        out.write(f"{name}\t{','.join(sorted(used[name]))}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
