"""Per-snapshot lookups ``explain`` needs for every service: which objects *name* a host (whether or
not they apply), the hosts each waypoint serves, and the diagnostics by subject.

Built once per explanation run, so explaining every service (``analyze``) is linear in the config,
not services x objects.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Generic, TypeVar

from istiod_lite.model import ConfigSnapshot
from istiod_lite.model import gateway as gw
from istiod_lite.model import gateway_routes as gr
from istiod_lite.model.networking import DestinationRule, VirtualService
from istiod_lite.model.security import AuthorizationPolicy, RequestAuthentication
from istiod_lite.model.telemetry import Telemetry
from istiod_lite.translator.authz import attach
from istiod_lite.translator.binding.service_model import ServiceInfo
from istiod_lite.translator.binding.waypoints import WaypointRef, bindings_of
from istiod_lite.translator.core.index import host_matches, qualify
from istiod_lite.translator.diagnostics import Finding
from istiod_lite.translator.export_warnings import RuleOutcome
from istiod_lite.translator.routing import httproute
from istiod_lite.translator.waypoint import bound_views

T = TypeVar("T", VirtualService, DestinationRule, gr.MeshRoute, Telemetry)


def order(obj: VirtualService | DestinationRule | gr.MeshRoute | Telemetry | AuthorizationPolicy
          | RequestAuthentication) -> tuple[str, str, str]:
    """Creation time, then namespace/name: the order Istio merges and picks in."""
    return (obj.metadata.creation_timestamp, obj.namespace, obj.name)


class _ByHost(Generic[T]):
    """Objects by the (qualified) hosts they name; wildcard patterns are matched per lookup."""

    def __init__(self, items: Iterable[tuple[str, T]]) -> None:
        self.exact: dict[str, list[T]] = {}
        self.wildcard: list[tuple[str, T]] = []
        for host, obj in items:
            if "*" in host:
                self.wildcard.append((host, obj))
            else:
                self.exact.setdefault(host, []).append(obj)

    def naming(self, host: str) -> list[T]:
        found = {id(o): o for o in self.exact.get(host, ())}
        found.update((id(o), o) for pattern, o in self.wildcard if host_matches(pattern, host))
        return sorted(found.values(), key=order)


class Lookup:
    """What names each host, which hosts each waypoint serves, the diagnostics by subject, and the
    exportTo/precedence outcomes (``export_warnings.rule_outcomes``) by waypoint and host.

    The diagnostics that are outcomes are not notes: ``explain`` reads the outcomes themselves (a
    note on an object would otherwise tell about other services and waypoints)."""

    def __init__(self, snapshot: ConfigSnapshot, found: Iterable[Finding], outcomes: Iterable[RuleOutcome] = ()
                 ) -> None:
        self.snapshot = snapshot
        self.virtual_services: _ByHost[VirtualService] = _ByHost(
            (qualify(h, vs.namespace), vs) for vs in snapshot.of_kind(VirtualService) for h in vs.spec.hosts)
        self.destination_rules: _ByHost[DestinationRule] = _ByHost(
            (qualify(dr.spec.host, dr.namespace), dr) for dr in snapshot.of_kind(DestinationRule))
        routes: list[gr.MeshRoute] = [*snapshot.of_kind(gw.HTTPRoute), *snapshot.of_kind(gr.GRPCRoute),
                                      *snapshot.of_kind(gr.TCPRoute), *snapshot.of_kind(gr.TLSRoute)]
        #: Every Gateway API route kind, by the hosts of its parents.
        self.routes: _ByHost[gr.MeshRoute] = _ByHost(
            (h, r) for r in routes for p in r.spec.parent_refs for h in httproute.parent_hosts(snapshot, r, p))
        self.telemetry_by_namespace: dict[str, list[Telemetry]] = {}
        for t in sorted(snapshot.of_kind(Telemetry), key=order):
            self.telemetry_by_namespace.setdefault(t.namespace, []).append(t)
        self._untargeted: dict[tuple[str, str], list[AuthorizationPolicy | RequestAuthentication]] = {}
        for kind, policies in (("AuthorizationPolicy", attach.ap_index(snapshot).untargeted),
                               ("RequestAuthentication", attach.ra_index(snapshot).untargeted)):
            for pol in sorted(policies, key=order):
                self._untargeted.setdefault((kind, pol.namespace), []).append(pol)
        self._served: dict[WaypointRef, dict[str, ServiceInfo]] = {}
        self._outcomes: dict[tuple[WaypointRef, str], list[RuleOutcome]] = {}
        for o in outcomes:
            self._outcomes.setdefault((o.waypoint, o.host), []).append(o)
        hidden = {o.message for o in self._outcomes_all()}
        self._findings: dict[tuple[str, str, str], list[Finding]] = {}
        for f in found:
            if f.message not in hidden:
                self._findings.setdefault((f.kind, f.namespace, f.name), []).append(f)

    def _outcomes_all(self) -> list[RuleOutcome]:
        return [o for found in self._outcomes.values() for o in found]

    def outcomes(self, ref: WaypointRef, host: str) -> list[RuleOutcome]:
        """Why waypoint ``ref`` does not apply DestinationRules / VirtualServices (or parts) to ``host``."""
        return self._outcomes.get((ref, host), [])

    def served(self, ref: WaypointRef, host: str) -> ServiceInfo | None:
        """The view waypoint ``ref`` serves ``host`` with (the oldest definition of a host wins)."""
        hosts = self._served.get(ref)
        if hosts is None:
            hosts = self._served[ref] = {v.host: v for v in bound_views(bindings_of(self.snapshot), ref)}
        return hosts.get(host)

    def untargeted(self, kind: str, namespace: str) -> Sequence[AuthorizationPolicy | RequestAuthentication]:
        """``kind`` policies of ``namespace`` with a selector or namespace-wide, oldest first."""
        return self._untargeted.get((kind, namespace), ())

    def telemetries(self, namespace: str) -> Sequence[Telemetry]:
        return self.telemetry_by_namespace.get(namespace, ())

    def about(self, kind: str, namespace: str, name: str) -> list[Finding]:
        return self._findings.get((kind, namespace, name), [])

    def notes(self, kind: str, namespace: str, name: str, host: str) -> tuple[str, ...]:
        """The diagnostics about an object, without its subject, minus those about other hosts."""
        return tuple(f.detail for f in self.about(kind, namespace, name)
                     if not (": ignored for " in f.message and f" {host} " not in f.message))
