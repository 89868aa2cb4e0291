"""Why a DestinationRule or VirtualService does (not) apply on a waypoint: exportTo, precedence, merging.

istiod applies these rules without a word (docs/istio-waypoint-shape.md §3.1): a DestinationRule
in the waypoint's namespace hides the service's own, a more specific host hides a wildcard, a
private (``exportTo: ["."]``) rule elsewhere is never seen, a merged rule drops repeated subsets
and the newer top-level policy, a VirtualService or Service not exported to the waypoint's
namespace is not routed there.  Each case is reported once per waypoint and service, naming the
rule that applies instead, so ``istiod-lite validate`` says why.

Memoised per snapshot (on the kinds read) and MeshConfig (root namespace and exportTo defaults).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from istiod_lite.model import ConfigSnapshot
from istiod_lite.model.meshconfig import MeshConfig
from istiod_lite.model.networking import DestinationRule
from istiod_lite.translator.binding.service_model import ServiceInfo
from istiod_lite.translator.binding.waypoints import WaypointRef, bindings_of
from istiod_lite.translator.clusters import outbound, policy_select
from istiod_lite.translator.clusters.policy_select import ResolvedRule
from istiod_lite.translator.core import tables, visibility
from istiod_lite.translator.core.destination_rules import (
    MergeDrop,
    export_set,
    indexes_of,
    is_private_only,
)
from istiod_lite.translator.core.index import host_matches, index_of, matching_virtual_services
from istiod_lite.translator.core.names import resolve_shortname
from istiod_lite.translator.routing.mesh_routes import mesh_routes
from istiod_lite.translator.waypoint import applicable_virtual_services, bound_views

_STEP = {
    "proxy": "the waypoint's namespace is searched first",
    "service": "the service's namespace is searched before the root namespace",
    "root": "the root namespace's rule is the last resort",
}


_SERVED_ANYWAY = ("the waypoint still serves it, but applies no DestinationRule to it and resolves routes to it as "
                  "to an unknown host")

#: ``RuleOutcome.reason`` values.
SERVICE_NOT_EXPORTED = "service-not-exported"   # the Service/ServiceEntry itself
NOT_EXPORTED = "not-exported"                   # a DestinationRule or VirtualService
SELECTOR_FIRST = "selector-rule-first"          # the deciding match has only selector-scoped rules
HIDDEN_BY_HOST = "hidden-by-unexported-host"    # a more specific, unexported host of its namespace
MORE_SPECIFIC = "more-specific-host"            # a more specific host of the same namespace applies
NOT_MERGED = "not-merged"                       # same host, different exportTo: the later entry applies
EARLIER_NAMESPACE = "earlier-namespace"         # a rule of a namespace searched before applies
MERGE_DROP = "merge-drop"                       # a part of a merged rule is ignored
TARGET_NOT_EXPORTED = "route-target-not-exported"  # a VirtualService destination is not visible


@dataclass(frozen=True)
class RuleOutcome:
    """Why waypoint ``waypoint`` does not apply (part of) ``kind namespace/name`` to service ``host``.

    ``rule_host``: the host the rule matched with; ``export``: its exportTo as shown; ``winner``: the
    rule that applies instead (``winner_host``: its matched host, ``step``: where it was found);
    ``hider``: the more specific host that hides it; ``target``: an unexported route destination;
    ``drop``: the merge loss.  ``message`` is the warning ``validate`` logs."""

    kind: str
    namespace: str
    name: str
    waypoint: WaypointRef
    host: str
    reason: str
    rule_host: str = ""
    export: str = ""
    winner: DestinationRule | None = None
    winner_host: str = ""
    step: str = ""
    hider: str = ""
    target: str = ""
    drop: MergeDrop | None = None

    @property
    def subject(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}"

    @property
    def why(self) -> str:
        """The reason, for a reader who knows the subject and the service."""
        ref, ns = self.waypoint, self.waypoint.namespace
        winner = f"DestinationRule {self.winner.namespace}/{self.winner.name}" if self.winner else ""
        if self.reason == SERVICE_NOT_EXPORTED:
            return (f"not exported to namespace {ns} ({self.export}) of waypoint {ref}: {_SERVED_ANYWAY}")
        if self.reason == NOT_EXPORTED:
            if self.kind == "VirtualService":
                return f"not exported to namespace {ns} ({self.export}) of waypoint {ref}: its routes are not applied"
            return f"not exported to namespace {ns} ({self.export}) of waypoint {ref}"
        if self.reason == SELECTOR_FIRST:
            return (f"{winner} matches first (host {self.winner_host}) and has a workloadSelector, which waypoint "
                    "clusters ignore, so no DestinationRule applies")
        if self.reason == HIDDEN_BY_HOST:
            return (f"in namespace {self.namespace} the more specific host {self.hider} matches first and its rule "
                    f"is not exported to namespace {ns}")
        if self.reason == MORE_SPECIFIC:
            return f"{winner} (host {self.winner_host}) in the same namespace applies, as its host is more specific"
        if self.reason == NOT_MERGED:
            return (f"{winner} (host {self.winner_host}) in the same namespace applies, as they are not merged "
                    "(different exportTo); the later entry applies")
        if self.reason == EARLIER_NAMESPACE:
            return (f"{winner} (host {self.winner_host}) in namespace {self.step_namespace} applies, as "
                    f"{_STEP[self.step]}")
        if self.reason == TARGET_NOT_EXPORTED:
            return (f"routes to {self.target}, which is not exported to namespace {ns}: waypoint {ref} resolves it "
                    "as an unknown host (no outbound cluster)")
        assert self.drop is not None
        return self.drop.detail

    @property
    def step_namespace(self) -> str:
        return self.winner.namespace if self.winner is not None else ""

    @property
    def message(self) -> str:
        target = f"{self.host} on waypoint {self.waypoint}"
        ns = self.waypoint.namespace
        what = f"{self.subject} (host {self.rule_host})"
        if self.reason == SERVICE_NOT_EXPORTED:
            return (f"{self.subject} ({self.host}, {self.export}) is not exported to namespace {ns} of waypoint "
                    f"{self.waypoint}: {_SERVED_ANYWAY}")
        if self.reason == NOT_EXPORTED and self.kind == "VirtualService":
            return (f"{self.subject} is not exported to namespace {ns} ({self.export}); its routes are not applied "
                    f"to {target}")
        if self.reason == NOT_EXPORTED:
            return f"{what} is not exported to namespace {ns} ({self.export}); not applied to {target}"
        if self.reason == TARGET_NOT_EXPORTED:
            return f"{self.subject} {self.why}"
        if self.reason == MERGE_DROP:
            assert self.drop is not None
            return self.drop.message
        return f"{what} is not applied to {target}: {self.why}"


class PerMesh:
    """One snapshot's outcomes per MeshConfig (the value kept in the snapshot)."""

    def __init__(self) -> None:
        self.by_mesh: dict[tuple[object, ...], tuple[RuleOutcome, ...]] = {}


@tables.EXPORT_WARNINGS.computed_by
def _holder(snapshot: ConfigSnapshot) -> PerMesh:
    return PerMesh()


def rule_outcomes(snapshot: ConfigSnapshot, mesh: MeshConfig | None = None) -> tuple[RuleOutcome, ...]:
    """Every DestinationRule / VirtualService / Service a waypoint does not apply or see because of
    exportTo, precedence or merging, per waypoint and service (the structured form of the
    warnings, for ``explain`` and ``analyze``); in message order, without repeats."""
    m = visibility.mesh_or_default(mesh)
    key = (m.root_namespace, m.default_service_export_to, m.default_virtual_service_export_to,
           m.default_destination_rule_export_to)
    holder = tables.EXPORT_WARNINGS.of(snapshot)
    found = holder.by_mesh.get(key)
    if found is None:
        unique = {o.message: o for o in _build(snapshot, m)}
        found = holder.by_mesh.setdefault(key, tuple(unique[k] for k in sorted(unique)))
    return found


def export_warnings(snapshot: ConfigSnapshot, mesh: MeshConfig | None = None) -> list[str]:
    """One message per DestinationRule / VirtualService / Service a waypoint does not apply or see
    because of exportTo, precedence or merging; sorted."""
    return [o.message for o in rule_outcomes(snapshot, mesh)]


def _build(snapshot: ConfigSnapshot, mesh: MeshConfig) -> list[RuleOutcome]:
    bindings = bindings_of(snapshot)
    rules = _RulesByHost(snapshot)
    routes = mesh_routes(snapshot)
    out: list[RuleOutcome] = []
    for ref in bindings.waypoints:
        for view in bound_views(bindings, ref):
            if not visibility.service_visible(view.source, ref.namespace, mesh):
                kind = "ServiceEntry" if view.is_service_entry else "Service"
                declared = visibility.service_export_to(view.source)
                out.append(RuleOutcome(kind, view.namespace, view.source.name, ref, view.host, SERVICE_NOT_EXPORTED,
                                       export=visibility.describe(declared, mesh.default_service_export_to)))
                continue
            resolved = policy_select.waypoint_destination_rule(snapshot, ref.namespace, view, mesh)
            out += _dr_outcomes(snapshot, ref, view, resolved, rules, mesh)
            if routes.routes((ref.namespace, view.namespace), view.host):
                continue  # VirtualServices are ignored there anyway (reported by config_warnings)
            out += _vs_outcomes(snapshot, ref, view, mesh)
    return out


class _RulesByHost:
    """The DestinationRules without a selector by (namespace, exact host), and the wildcard ones by
    namespace, in Istio's order: a service's candidates cost a few lookups, not a scan."""

    def __init__(self, snapshot: ConfigSnapshot) -> None:
        self.exact: dict[tuple[str, str], list[DestinationRule]] = {}
        self.wildcard: dict[str, list[tuple[str, DestinationRule]]] = {}
        for dr in indexes_of(snapshot).rules:
            if dr.spec.workload_selector is not None:
                continue
            host = resolve_shortname(dr.spec.host, dr.namespace)
            if host.startswith("*"):
                self.wildcard.setdefault(dr.namespace, []).append((host, dr))
            else:
                self.exact.setdefault((dr.namespace, host), []).append(dr)

    def candidates(self, namespaces: list[str], host: str) -> list[tuple[str, DestinationRule]]:
        out: list[tuple[str, DestinationRule]] = []
        for ns in namespaces:
            out += [(host, dr) for dr in self.exact.get((ns, host), ())]
            out += [(h, dr) for h, dr in self.wildcard.get(ns, ()) if host_matches(h, host)]
        return out


def _reachable(dr: DestinationRule, waypoint_ns: str, root: str, default_private: bool) -> bool:
    """Whether the search from ``waypoint_ns`` can find ``dr`` at all (exportTo only)."""
    export = export_set(dr)
    if dr.namespace == waypoint_ns and waypoint_ns != root:
        return not export or bool(export & {visibility.PUBLIC, visibility.PRIVATE, dr.namespace})
    if dr.namespace == waypoint_ns and is_private_only(dr, export, default_private):
        return True  # the root namespace's own private rules, for a waypoint running there
    if is_private_only(dr, export, default_private):
        return False
    return not export or visibility.PUBLIC in export or waypoint_ns in export


def _dr_outcomes(snapshot: ConfigSnapshot, ref: WaypointRef, view: ServiceInfo, resolved: ResolvedRule,
                rules: _RulesByHost, mesh: MeshConfig) -> list[RuleOutcome]:
    root = mesh.root_namespace
    default_private = visibility.PRIVATE in mesh.default_destination_rule_export_to
    searched = list(dict.fromkeys((ref.namespace, view.namespace, root)))
    applied = resolved.sources
    out: list[RuleOutcome] = []
    entry = resolved.entry
    if entry is not None:
        out += [RuleOutcome("DestinationRule", d.rule.namespace, d.rule.name, ref, view.host, MERGE_DROP,
                            rule_host=d.host, drop=d) for d in entry.drops]
    winner = applied[0] if applied else None
    for host, dr in rules.candidates(searched, view.host):
        if any(dr is a for a in applied):
            continue

        def outcome(reason: str, dr: DestinationRule = dr, host: str = host, **kw: Any) -> RuleOutcome:
            return RuleOutcome("DestinationRule", dr.namespace, dr.name, ref, view.host, reason, rule_host=host,
                               **kw)

        if not _reachable(dr, ref.namespace, root, default_private):
            desc = visibility.describe(dr.spec.export_to, mesh.default_destination_rule_export_to)
            out.append(outcome(NOT_EXPORTED, export=desc))
            continue
        if resolved.rule is None:
            if resolved.found:
                out.append(outcome(SELECTOR_FIRST, winner=resolved.found[0].rule, winner_host=resolved.matched_host))
            else:
                out.append(outcome(HIDDEN_BY_HOST, hider=_hidden_by(snapshot, mesh, dr, host, view.host) or host))
            continue
        # A namespace searched before the one that decided can only have lost to a more specific,
        # unexported host of its own; one searched after was never reached.
        earlier = searched.index(dr.namespace) < searched.index(resolved.namespace)
        hider = _hidden_by(snapshot, mesh, dr, host, view.host) if earlier else None
        if hider is not None:
            out.append(outcome(HIDDEN_BY_HOST, hider=hider))
        elif dr.namespace == resolved.namespace:
            reason = MORE_SPECIFIC if host != resolved.matched_host else NOT_MERGED
            out.append(outcome(reason, winner=winner, winner_host=resolved.matched_host, step=resolved.step))
        else:
            out.append(outcome(EARLIER_NAMESPACE, winner=winner, winner_host=resolved.matched_host,
                               step=resolved.step))
    return out


def _hidden_by(snapshot: ConfigSnapshot, mesh: MeshConfig, dr: DestinationRule, host: str, service_host: str
               ) -> str | None:
    """The more specific host of ``dr``'s namespace's exported rules that matches ``service_host``
    before ``dr``'s own ``host`` (None if ``dr``'s host is the best match there)."""
    pool = policy_select.dr_index(snapshot, mesh).exported.get(dr.namespace)
    m = pool.most_specific(service_host) if pool is not None else None
    return m[0] if m is not None and m[0] != host else None


def _vs_outcomes(snapshot: ConfigSnapshot, ref: WaypointRef, view: ServiceInfo, mesh: MeshConfig
                ) -> list[RuleOutcome]:
    out: list[RuleOutcome] = []
    for vs in matching_virtual_services(index_of(snapshot), (ref.namespace, view.namespace), view.host):
        if visibility.vs_bucket(vs, ref.namespace, mesh) is None:
            desc = visibility.describe(vs.spec.export_to, mesh.default_virtual_service_export_to)
            out.append(RuleOutcome("VirtualService", vs.namespace, vs.name, ref, view.host, NOT_EXPORTED,
                                   export=desc))
    for vs in applicable_virtual_services(snapshot, ref, view, mesh):
        for host in sorted(set(tables.VS_REFERENCED_HOSTS.of(vs))):
            if outbound.host_visible(snapshot, host, ref.namespace, mesh) is False:
                out.append(RuleOutcome("VirtualService", vs.namespace, vs.name, ref, view.host, TARGET_NOT_EXPORTED,
                                       target=host))
    return out
