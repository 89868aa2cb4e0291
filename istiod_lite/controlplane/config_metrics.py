"""Gauges of what the config says is wrong right now: rejected resources, and accepted config that
is not applied as written (bindings that do not fit, ignored route fields, authorization parts that
fail closed, Telemetry upstream Envoy cannot honour).

Why gauges and not log lines only: an operator alerts on "a policy is not enforced as written"
(``istiod_lite_authorization_problems``, one series per policy) without scraping logs; the
``validate`` command and the server log say which field and why.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Gauge

from istiod_lite.model import ConfigError

#: ``<Kind> <namespace>/<name>`` as the authorization problem strings name their resource.
_AUTHZ_RESOURCE = re.compile(r"\b(AuthorizationPolicy|RequestAuthentication) ([^/\s]+)/([^:\s]+)")


class ConfigMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.errors = Gauge("istiod_lite_config_errors", "Config errors the sources report now (rejected "
                            "resources, unreadable files), by kind ('' when no resource could be named).",
                            ["kind"], registry=registry)
        self.warnings = Gauge("istiod_lite_config_warnings", "Accepted config not applied as written, by "
                              "category (binding, route, authorization, telemetry).", ["category"], registry=registry)
        self.authorization = Gauge("istiod_lite_authorization_problems", "Parts of an AuthorizationPolicy or "
                                   "RequestAuthentication that waypoints do not enforce as written (they fail "
                                   "closed), per resource.", ["kind", "namespace", "name"], registry=registry)
        self._error_kinds: set[tuple[str, ...]] = set()
        self._authz_resources: set[tuple[str, ...]] = set()
        for category in ("binding", "route", "authorization", "telemetry"):
            self.warnings.labels(category=category).set(0)

    def set_errors(self, errors: Iterable[ConfigError]) -> None:
        counts: Counter[tuple[str, ...]] = Counter((e.kind,) for e in errors)
        _replace(self.errors, self._error_kinds, counts)
        self._error_kinds = set(counts)

    def set_warnings(self, *, binding: Iterable[str], route: Iterable[str], authorization: Iterable[str],
                     telemetry: Iterable[str]) -> None:
        authz = list(authorization)
        for category, items in (("binding", binding), ("route", route), ("authorization", authz),
                                ("telemetry", telemetry)):
            self.warnings.labels(category=category).set(len(list(items)))
        counts: Counter[tuple[str, ...]] = Counter()
        for problem in authz:
            m = _AUTHZ_RESOURCE.search(problem)
            if m is not None:
                counts[m.groups()] += 1
        _replace(self.authorization, self._authz_resources, counts)
        self._authz_resources = set(counts)


def _replace(gauge: Gauge, previous: set[tuple[str, ...]], counts: Counter[tuple[str, ...]]) -> None:
    """Set every labelled series of ``counts``; series no longer present are removed, not left at
    their last value."""
    for labels in previous - set(counts):
        gauge.remove(*labels)
    for labels, n in counts.items():
        gauge.labels(*labels).set(n)


__all__ = ["ConfigMetrics"]
