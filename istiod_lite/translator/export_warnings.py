"""Why a DestinationRule or VirtualService does (not) apply on a waypoint: exportTo, precedence, merging.

istiod applies these rules without a word (docs/istio-waypoint-shape.md §3.1): a DestinationRule
in the waypoint's namespace hides the service's own, a more specific host hides a wildcard, a
private (``exportTo: ["."]``) rule elsewhere is never seen, a merged rule drops repeated subsets
and the newer top-level policy, a VirtualService or Service not exported to the waypoint's
namespace is not routed there.  Each case is reported once per waypoint and service, naming the
rule that applies instead, so ``istiod-lite validate`` says why.

Memoised per snapshot (on the kinds read) and MeshConfig (root namespace and exportTo defaults),
and incrementally across snapshots: each (waypoint, service host)'s DestinationRule outcomes and
VirtualService outcomes are kept with exactly the config objects they were computed from (compared
by identity, as the waypoint translator's fragment memo does), so one DestinationRule or
VirtualService edit recomputes only the hosts whose inputs it changed (``_Incremental``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from istiod_lite.model import ConfigSnapshot
from istiod_lite.model.meshconfig import MeshConfig
from istiod_lite.model.networking import DestinationRule, VirtualService
from istiod_lite.translator.binding.service_model import ServiceInfo
from istiod_lite.translator.binding.waypoints import Bindings, WaypointRef, bindings_of
from istiod_lite.translator.clusters import outbound, policy_select
from istiod_lite.translator.clusters.policy_select import ResolvedRule
from istiod_lite.translator.core import tables, visibility
from istiod_lite.translator.core.destination_rules import (
    MergeDrop,
    export_set,
    indexes_of,
    is_private_only,
)
from istiod_lite.translator.core.index import (
    host_matches,
    index_of,
    matching_virtual_services,
    service_entries_by_host,
)
from istiod_lite.translator.core.names import resolve_shortname
from istiod_lite.translator.routing.mesh_routes import MeshRoutes, mesh_routes
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


class Incremental:
    """The per-(waypoint, host) memo per MeshConfig, passed from snapshot to snapshot (it reads no
    kind whole: every entry keeps the objects it was computed from and is checked against them)."""

    def __init__(self) -> None:
        self.by_mesh: dict[tuple[object, ...], dict[WaypointRef, _WaypointMemo]] = {}


@tables.EXPORT_WARNING_MEMO.computed_by
def _incremental(snapshot: ConfigSnapshot) -> Incremental:
    return Incremental()


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
        memo = tables.EXPORT_WARNING_MEMO.of(snapshot)
        previous = memo.by_mesh.get(key, {})
        current: dict[WaypointRef, _WaypointMemo] = {}
        unique = {o.message: o for o in _build(snapshot, m, previous, current)}
        memo.by_mesh[key] = current
        found = holder.by_mesh.setdefault(key, tuple(unique[k] for k in sorted(unique)))
    return found


def export_warnings(snapshot: ConfigSnapshot, mesh: MeshConfig | None = None) -> list[str]:
    """One message per DestinationRule / VirtualService / Service a waypoint does not apply or see
    because of exportTo, precedence or merging; sorted."""
    return [o.message for o in rule_outcomes(snapshot, mesh)]


def _build(snapshot: ConfigSnapshot, mesh: MeshConfig, previous: dict[WaypointRef, _WaypointMemo],
           current: dict[WaypointRef, _WaypointMemo]) -> list[RuleOutcome]:
    """Every outcome, waypoint by waypoint and service by service (Istio's order); each
    waypoint's share re-used from ``previous`` where its inputs are the same objects, and
    recorded in ``current``."""
    bindings = bindings_of(snapshot)
    rules = rules_by_host(snapshot)
    routes = mesh_routes(snapshot)
    vs_by_namespace = tables.VS_BY_NAMESPACE.of(snapshot)
    # What routes or targets read besides VirtualServices: while these and the VirtualServices of
    # a waypoint's namespaces are the same objects, none of its VirtualService outcomes changed.
    vs_kinds = (routes, snapshot.by_kind.get("Service"), snapshot.by_kind.get("ServiceEntry"))
    out: list[RuleOutcome] = []
    for ref in bindings.waypoints:
        bound = (*bindings.services.get(ref, ()), None, *bindings.service_entries.get(ref, ()))
        old = previous.get(ref)
        same_bound = old is not None and _same(old.bound, bound)
        if old is not None and same_bound:
            namespaces = old.namespaces
        else:
            namespaces = tuple(sorted({ref.namespace, *(o.namespace for o in bound if o is not None)}))
        # Only DestinationRules of these namespaces and the root's can apply or be reported here,
        # only VirtualServices of these namespaces.
        dr_gate = rules.of_namespaces((*namespaces, mesh.root_namespace))
        vs_gate = (*(vs for ns in namespaces for vs in (*vs_by_namespace.get(ns, ()), _END)), *vs_kinds, _END)
        if old is not None and same_bound and _same(old.dr_gate, dr_gate) and _same(old.vs_gate, vs_gate):
            memo = old
        else:
            memo = _waypoint_outcomes(snapshot, mesh, ref, bindings, rules, routes, old,
                                      _WaypointMemo(bound, namespaces, dr_gate, vs_gate, {}, ()))
        current[ref] = memo
        out += memo.outcomes
    return out


def _same(a: tuple[object, ...], b: tuple[object, ...]) -> bool:
    return len(a) == len(b) and all(x is y for x, y in zip(a, b, strict=True))


@dataclass(frozen=True)
class _HostMemo:
    """One service's outcomes on one waypoint, with what they were computed from: ``view`` (its
    Service/ServiceEntry: visibility, host, namespace), ``dr_inputs`` (every DestinationRule of the
    searched namespaces whose host can match it) and ``vs_inputs`` (whether mesh routes attach to
    it, the VirtualServices matching it, and the Service/ServiceEntries of the hosts they route
    to).  ``None`` inputs: that part was not computed (service not visible)."""

    view: ServiceInfo
    dr_inputs: tuple[object, ...] | None
    dr_outcomes: tuple[RuleOutcome, ...]
    vs_inputs: tuple[object, ...] | None
    vs_outcomes: tuple[RuleOutcome, ...]
    #: The outcome when the service itself is not exported to the waypoint's namespace.
    hidden: RuleOutcome | None = None

    @property
    def source(self) -> object:
        return self.view.source


@dataclass(frozen=True)
class _WaypointMemo:
    """One waypoint's outcomes (in order) and what decides whether they can be re-used whole."""

    bound: tuple[object, ...]
    #: The waypoint's and its services' namespaces (sorted).
    namespaces: tuple[str, ...]
    dr_gate: tuple[object, ...]
    vs_gate: tuple[object, ...]
    hosts: dict[str, _HostMemo]
    outcomes: tuple[RuleOutcome, ...]


def _waypoint_outcomes(snapshot: ConfigSnapshot, mesh: MeshConfig, ref: WaypointRef, bindings: Bindings,
                       rules: RulesByHost, routes: MeshRoutes, old: _WaypointMemo | None, new: _WaypointMemo
                       ) -> _WaypointMemo:
    """``new`` (gates only) with the waypoint's outcomes: per service, each part re-used from
    ``old`` unless an object its gate holds that can reach the service's host changed (then
    re-used while its own inputs are the same objects, else computed)."""
    dr_dirty = vs_dirty = None
    if old is not None:
        dr_dirty = _changed_hosts(old.dr_gate, new.dr_gate, _dr_host)
        if _same(old.vs_gate[-len(_VS_KINDS_END):], new.vs_gate[-len(_VS_KINDS_END):]):
            vs_dirty = _changed_hosts(old.vs_gate, new.vs_gate, _vs_hosts)
    if old is not None and _same(old.bound, new.bound) and dr_dirty is not None and vs_dirty is not None:
        views = [m.view for m in old.hosts.values()]  # the same bound objects: the same views, in order
    else:
        views = bound_views(bindings, ref)
    old_hosts = old.hosts if old is not None else {}
    hosts: dict[str, _HostMemo] = {}
    out: list[RuleOutcome] = []
    for view in views:
        host = view.host
        was = old_hosts.get(host)
        if was is not None and was.source is not view.source:
            was = None
        # Visibility depends on the source alone (and the MeshConfig of this memo).
        if was is not None and was.hidden is not None:
            hosts[host] = was
            out.append(was.hidden)
            continue
        if was is None and not visibility.service_visible(view.source, ref.namespace, mesh):
            hidden = _not_exported(view, ref, mesh)
            hosts[host] = _HostMemo(view, None, (), None, (), hidden)
            out.append(hidden)
            continue
        dr_keep = was is not None and was.dr_inputs is not None and dr_dirty is not None and host not in dr_dirty
        vs_keep = was is not None and was.vs_inputs is not None and vs_dirty is not None and host not in vs_dirty
        if was is not None and dr_keep and vs_keep:
            hosts[host] = was
            out += was.dr_outcomes
            out += was.vs_outcomes
            continue
        # DestinationRule part: re-used while the DestinationRules it can see are the same objects.
        dr_inputs: tuple[object, ...] | None = None
        if was is not None and dr_keep:
            dr_inputs, dr_out = was.dr_inputs, was.dr_outcomes
        else:
            dr_inputs = rules.inputs((ref.namespace, view.namespace, mesh.root_namespace), host)
            if was is not None and was.dr_inputs is not None and _same(was.dr_inputs, dr_inputs):
                dr_out = was.dr_outcomes
            else:
                resolved = policy_select.waypoint_destination_rule(snapshot, ref.namespace, view, mesh)
                dr_out = tuple(_dr_outcomes(snapshot, ref, view, resolved, rules, mesh))
        # VirtualService part: re-used while its routes, VirtualServices and their targets are.
        vs_inputs: tuple[object, ...] | None = None
        if was is not None and vs_keep:
            vs_inputs, vs_out = was.vs_inputs, was.vs_outcomes
        else:
            vs_inputs = _vs_inputs(snapshot, ref, view, routes)
            if was is not None and was.vs_inputs is not None and _same(was.vs_inputs, vs_inputs):
                vs_out = was.vs_outcomes
            elif vs_inputs[0]:
                vs_out = ()  # VirtualServices are ignored there anyway (reported by config_warnings)
            else:
                vs_out = tuple(_vs_outcomes(snapshot, ref, view, mesh))
        hosts[host] = _HostMemo(view, dr_inputs, dr_out, vs_inputs, vs_out)
        out += dr_out
        out += vs_out
    return dataclasses.replace(new, hosts=hosts, outcomes=tuple(out))


def _changed_hosts(old: tuple[object, ...], new: tuple[object, ...], hosts_of: Callable[[Any], Iterable[str]]
                   ) -> frozenset[str] | None:
    """The hosts of the objects in one gate and not the other (by identity), i.e. the only hosts
    whose inputs can differ; None when one of them has a wildcard host (any host may differ).
    Only config objects are asked for hosts; markers and kind mappings are compared, not read."""
    if _same(old, new):
        return frozenset()
    before = {id(o) for o in old}
    after = {id(o) for o in new}
    out: set[str] = set()
    for o in (*(o for o in new if id(o) not in before), *(o for o in old if id(o) not in after)):
        if not isinstance(o, DestinationRule | VirtualService):
            continue  # a marker (the kind mappings are compared before)
        for h in hosts_of(o):
            if h.startswith("*"):
                return None
            out.add(h)
    return frozenset(out)


def _dr_host(dr: DestinationRule) -> tuple[str]:
    return (resolve_shortname(dr.spec.host, dr.namespace),)


def _vs_hosts(vs: VirtualService) -> tuple[str, ...]:
    return tables.VS_QUALIFIED_HOSTS.of(vs)


def _not_exported(view: ServiceInfo, ref: WaypointRef, mesh: MeshConfig) -> RuleOutcome:
    kind = "ServiceEntry" if view.is_service_entry else "Service"
    declared = visibility.service_export_to(view.source)
    return RuleOutcome(kind, view.namespace, view.source.name, ref, view.host, SERVICE_NOT_EXPORTED,
                       export=visibility.describe(declared, mesh.default_service_export_to))


def _vs_inputs(snapshot: ConfigSnapshot, ref: WaypointRef, view: ServiceInfo, routes: MeshRoutes
               ) -> tuple[object, ...]:
    """What ``_vs_outcomes`` reads for one service (first: whether mesh routes attach to it, which
    makes it read nothing else): the matching VirtualServices, then per host they route to its
    Kubernetes Service and ServiceEntries (``outbound.host_visible``)."""
    namespaces = (ref.namespace, view.namespace)
    if routes.routes(namespaces, view.host):
        return (True,)
    matching = matching_virtual_services(index_of(snapshot), namespaces, view.host)
    if not matching:
        return (False,)
    out: list[object] = [False, *matching, _END]
    for host in sorted({h for vs in matching for h in tables.VS_REFERENCED_HOSTS.of(vs)}):
        out += (outbound.kube_service_for_host(snapshot, host), *service_entries_by_host(snapshot).get(
            host, ()), _END)
    return tuple(out)


#: Separates the groups of objects in an inputs tuple (never a config object).
_END = object()
#: How many entries end a VirtualService gate: the mesh routes, the Service and ServiceEntry
#: mappings, and a marker.
_VS_KINDS_END = (None, None, None, _END)


def rules_by_host(snapshot: ConfigSnapshot) -> RulesByHost:
    return tables.EXPORT_RULES_BY_HOST.of(snapshot)


@tables.EXPORT_RULES_BY_HOST.computed_by
class RulesByHost:
    """The DestinationRules without a selector by (namespace, exact host), and the wildcard ones by
    namespace, in Istio's order: a service's candidates cost a few lookups, not a scan.  The same
    with the selector-scoped rules too (``all_*``): what one service's outcomes are computed from."""

    def __init__(self, snapshot: ConfigSnapshot) -> None:
        self.exact: dict[tuple[str, str], list[DestinationRule]] = {}
        self.wildcard: dict[str, list[tuple[str, DestinationRule]]] = {}
        self.all_exact: dict[tuple[str, str], tuple[DestinationRule, ...]] = {}
        self.all_wildcard: dict[str, tuple[tuple[str, DestinationRule], ...]] = {}
        all_exact: dict[tuple[str, str], list[DestinationRule]] = {}
        all_wildcard: dict[str, list[tuple[str, DestinationRule]]] = {}
        for dr in indexes_of(snapshot).rules:
            host = resolve_shortname(dr.spec.host, dr.namespace)
            selector = dr.spec.workload_selector is not None
            if host.startswith("*"):
                all_wildcard.setdefault(dr.namespace, []).append((host, dr))
                if not selector:
                    self.wildcard.setdefault(dr.namespace, []).append((host, dr))
            else:
                all_exact.setdefault((dr.namespace, host), []).append(dr)
                if not selector:
                    self.exact.setdefault((dr.namespace, host), []).append(dr)
        by_namespace: dict[str, list[DestinationRule]] = {}
        for dr in indexes_of(snapshot).rules:
            by_namespace.setdefault(dr.namespace, []).append(dr)
        #: namespace -> every DestinationRule of it (Istio's order).
        self.by_namespace = {k: tuple(v) for k, v in by_namespace.items()}
        self.all_exact = {k: tuple(v) for k, v in all_exact.items()}
        self.all_wildcard = {k: tuple(v) for k, v in all_wildcard.items()}

    def of_namespaces(self, namespaces: tuple[str, ...]) -> tuple[object, ...]:
        """Every DestinationRule of ``namespaces`` (repeats dropped), namespace by namespace."""
        return tuple(o for ns in dict.fromkeys(namespaces) for o in (*self.by_namespace.get(ns, ()), _END))

    def inputs(self, namespaces: tuple[str, ...], host: str) -> tuple[object, ...]:
        """Every DestinationRule (with a selector or not) of ``namespaces`` whose host can match
        ``host`` (exactly, or as a wildcard by either matching rule: ``host_matches``,
        ``Pool.most_specific``): the search, precedence and merging of ``host`` read no other."""
        out: list[object] = []
        for ns in dict.fromkeys(namespaces):
            out += self.all_exact.get((ns, host), ())
            out += [dr for h, dr in self.all_wildcard.get(ns, ()) if host.endswith(h[1:])]
            out.append(_END)
        return tuple(out)

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
                rules: RulesByHost, mesh: MeshConfig) -> list[RuleOutcome]:
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
