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

from istiod_lite.model import ConfigSnapshot
from istiod_lite.model.meshconfig import MeshConfig
from istiod_lite.model.networking import DestinationRule, VirtualService
from istiod_lite.translator.binding.service_model import ServiceInfo
from istiod_lite.translator.binding.waypoints import WaypointRef, bindings_of
from istiod_lite.translator.clusters import outbound, policy_select
from istiod_lite.translator.clusters.policy_select import ResolvedRule
from istiod_lite.translator.core import tables, visibility
from istiod_lite.translator.core.destination_rules import (
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


class PerMesh:
    """One snapshot's warnings per MeshConfig (the value kept in the snapshot)."""

    def __init__(self) -> None:
        self.by_mesh: dict[tuple[object, ...], tuple[str, ...]] = {}


@tables.EXPORT_WARNINGS.computed_by
def _holder(snapshot: ConfigSnapshot) -> PerMesh:
    return PerMesh()


def export_warnings(snapshot: ConfigSnapshot, mesh: MeshConfig | None = None) -> list[str]:
    """One message per DestinationRule / VirtualService / Service a waypoint does not apply or see
    because of exportTo, precedence or merging; sorted."""
    m = visibility.mesh_or_default(mesh)
    key = (m.root_namespace, m.default_service_export_to, m.default_virtual_service_export_to,
           m.default_destination_rule_export_to)
    holder = tables.EXPORT_WARNINGS.of(snapshot)
    found = holder.by_mesh.get(key)
    if found is None:
        found = holder.by_mesh.setdefault(key, tuple(sorted(set(_build(snapshot, m)))))
    return list(found)


def _name(dr: DestinationRule | VirtualService) -> str:
    return f"{dr.kind} {dr.namespace}/{dr.name}"


def _build(snapshot: ConfigSnapshot, mesh: MeshConfig) -> list[str]:
    bindings = bindings_of(snapshot)
    rules = _RulesByHost(snapshot)
    routes = mesh_routes(snapshot)
    out: list[str] = []
    for ref in bindings.waypoints:
        for view in bound_views(bindings, ref):
            if not visibility.service_visible(view.source, ref.namespace, mesh):
                kind = "ServiceEntry" if view.is_service_entry else "Service"
                declared = visibility.service_export_to(view.source)
                out.append(f"{kind} {view.namespace}/{view.source.name} ({view.host}, "
                           f"{visibility.describe(declared, mesh.default_service_export_to)}) is not exported to "
                           f"namespace {ref.namespace} of waypoint {ref}: the waypoint still serves it, but applies "
                           "no DestinationRule to it and resolves routes to it as to an unknown host")
                continue
            resolved = policy_select.waypoint_destination_rule(snapshot, ref.namespace, view, mesh)
            out += _dr_warnings(snapshot, ref, view, resolved, rules, mesh)
            if routes.routes((ref.namespace, view.namespace), view.host):
                continue  # VirtualServices are ignored there anyway (reported by config_warnings)
            out += _vs_warnings(snapshot, ref, view, mesh)
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


def _dr_warnings(snapshot: ConfigSnapshot, ref: WaypointRef, view: ServiceInfo, resolved: ResolvedRule,
                 rules: _RulesByHost, mesh: MeshConfig) -> list[str]:
    root = mesh.root_namespace
    default_private = visibility.PRIVATE in mesh.default_destination_rule_export_to
    searched = list(dict.fromkeys((ref.namespace, view.namespace, root)))
    applied = resolved.sources
    out: list[str] = []
    entry = resolved.entry
    if entry is not None:
        out += entry.notes
    target = f"{view.host} on waypoint {ref}"
    winner = f"{_name(applied[0])} (host {resolved.matched_host})" if applied else ""
    for host, dr in rules.candidates(searched, view.host):
        if any(dr is a for a in applied):
            continue
        what = f"{_name(dr)} (host {host})"
        if not _reachable(dr, ref.namespace, root, default_private):
            desc = visibility.describe(dr.spec.export_to, mesh.default_destination_rule_export_to)
            out.append(f"{what} is not exported to namespace {ref.namespace} ({desc}); not applied to {target}")
            continue
        if resolved.rule is None:
            if resolved.found:
                out.append(f"{what} is not applied to {target}: DestinationRule "
                           f"{resolved.found[0].rule.namespace}/{resolved.found[0].rule.name} matches first "
                           f"(host {resolved.matched_host}) and has a workloadSelector, which waypoint clusters "
                           "ignore, so no DestinationRule applies")
            else:
                hider = _hidden_by(snapshot, mesh, dr, host, view.host)
                out.append(f"{what} is not applied to {target}: in namespace {dr.namespace} the more specific "
                           f"host {hider} matches first and its rule is not exported to namespace {ref.namespace}")
            continue
        hider = _hidden_by(snapshot, mesh, dr, host, view.host) if dr.namespace != resolved.namespace else None
        if hider is not None:
            out.append(f"{what} is not applied to {target}: in namespace {dr.namespace} the more specific host "
                       f"{hider} matches first and its rule is not exported to namespace {ref.namespace}")
        elif dr.namespace == resolved.namespace:
            if host != resolved.matched_host:
                reason = "its host is more specific"
            else:
                reason = "they are not merged (different exportTo); the later entry applies"
            out.append(f"{what} is not applied to {target}: {winner} in the same namespace applies, as {reason}")
        else:
            out.append(f"{what} is not applied to {target}: {winner} in namespace {resolved.namespace} applies, "
                       f"as {_STEP[resolved.step]}")
    return out


def _hidden_by(snapshot: ConfigSnapshot, mesh: MeshConfig, dr: DestinationRule, host: str, service_host: str
               ) -> str | None:
    """The more specific host of ``dr``'s namespace's exported rules that matches ``service_host``
    before ``dr``'s own ``host`` (None if ``dr``'s host is the best match there)."""
    pool = policy_select.dr_index(snapshot, mesh).exported.get(dr.namespace)
    m = pool.most_specific(service_host) if pool is not None else None
    return m[0] if m is not None and m[0] != host else None


def _vs_warnings(snapshot: ConfigSnapshot, ref: WaypointRef, view: ServiceInfo, mesh: MeshConfig) -> list[str]:
    out: list[str] = []
    target = f"{view.host} on waypoint {ref}"
    for vs in matching_virtual_services(index_of(snapshot), (ref.namespace, view.namespace), view.host):
        if visibility.vs_bucket(vs, ref.namespace, mesh) is None:
            desc = visibility.describe(vs.spec.export_to, mesh.default_virtual_service_export_to)
            out.append(f"{_name(vs)} is not exported to namespace {ref.namespace} ({desc}); its routes are not "
                       f"applied to {target}")
    for vs in applicable_virtual_services(snapshot, ref, view, mesh):
        for host in sorted(set(tables.VS_REFERENCED_HOSTS.of(vs))):
            if outbound.host_visible(snapshot, host, ref.namespace, mesh) is False:
                out.append(f"{_name(vs)} routes to {host}, which is not exported to namespace {ref.namespace}: "
                           f"waypoint {ref} resolves it as an unknown host (no outbound cluster)")
    return out
