"""Istio's DestinationRule index: per namespace, every rule by host, merged as istiod merges them.

Why an index of its own: which DestinationRule a waypoint applies to a service is not "the rule
for this host" but a search - the waypoint's namespace, then the service's namespace (rules
exported to the waypoint's), then the root namespace, each time the most specific host
(``*.local`` < ``*.ns.svc.cluster.local`` < the exact host) - over rules that istiod has merged
first.  The search itself is ``clusters/policy_select.py``; this module builds what it searches,
once per snapshot and MeshConfig (root namespace, default ``exportTo``), memoised on the
DestinationRules alone (``tables.DESTINATION_RULE_INDEXES``).

Facts (istio/istio ``pilot/pkg/model/push_context.go`` ``setDestinationRules``,
``destination_rule.go`` ``mergeDestinationRule``), kept exactly:

* rules are taken in order: those with a ``workloadSelector`` first, then by creation time, then
  name, then namespace; a short host is qualified to the rule's namespace (``*`` stays ``*``);
* a rule with a ``workloadSelector`` counts as ``exportTo: ["."]``;
* three pools: *namespace-local* (rules whose ``exportTo`` is empty or holds ``*``, ``.`` or their
  own namespace: what proxies of that namespace see first), *exported* (every rule that is not
  private-only; private-only: exactly one ``exportTo`` entry that is ``.`` or its own namespace,
  or none and the mesh default holds ``.``) and *root-local* (the private-only rules of the root
  namespace);
* within a pool, rules for the same host string merge (Istio's default "enhanced" merge): into an
  earlier entry with an equal ``exportTo`` set; into one whose set the new set strictly contains,
  while also being kept as an entry of its own; never across different selectors.  Merging
  appends the new rule's subsets whose names are new (a repeated name keeps the earlier subset)
  and takes its ``trafficPolicy`` only if the merged rule has none; the merged rule keeps the
  first rule's name and namespace (the cluster metadata names it).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from istiod_lite.model import ConfigSnapshot
from istiod_lite.model.networking import DestinationRule
from istiod_lite.translator.core import tables
from istiod_lite.translator.core.names import resolve_shortname
from istiod_lite.translator.core.visibility import PRIVATE, PUBLIC


@dataclass(frozen=True, eq=False)
class MergeDrop:
    """A part of ``rule`` that merging into ``first`` (same host and exportTo) ignores: its subset
    ``subset`` (already defined by ``first``), or, with ``subset`` empty, its trafficPolicy."""

    rule: DestinationRule
    first: DestinationRule
    host: str
    subset: str = ""

    @property
    def detail(self) -> str:
        """What is ignored and why (the message without its subject)."""
        first_name = f"DestinationRule {self.first.namespace}/{self.first.name}"
        if self.subset:
            return (f"subset {self.subset!r} for host {self.host} is already defined by {first_name}, with which it "
                    "is merged; the first definition wins, this one is ignored")
        return (f"trafficPolicy for host {self.host} is ignored: merged with {first_name}, whose trafficPolicy wins "
                "(the older rule's)")

    @property
    def message(self) -> str:
        return f"DestinationRule {self.rule.namespace}/{self.rule.name}: {self.detail}"


@dataclass(frozen=True, eq=False)
class ConsolidatedRule:
    """One entry of a pool: a rule, or several merged (Istio's ``ConsolidatedDestRule``).

    ``rule`` is the rule whose settings apply: the first source itself, or a copy of it carrying
    the merged subsets and traffic policy.  ``sources`` are the rules it was made from (first
    first): the memo keys on them, since a merged copy is a new object whenever any rule changes.
    ``drops`` say what merging dropped (for the warnings and ``explain``)."""

    host: str
    rule: DestinationRule
    export_to: frozenset[str]
    sources: tuple[DestinationRule, ...]
    drops: tuple[MergeDrop, ...] = ()

    @property
    def notes(self) -> tuple[str, ...]:
        return tuple(d.message for d in self.drops)

    @property
    def has_selector(self) -> bool:
        return self.rule.spec.workload_selector is not None


@dataclass(frozen=True)
class Pool:
    """One namespace's rules (Istio's ``consolidatedDestRules``): exact hosts and wildcard hosts."""

    specific: Mapping[str, tuple[ConsolidatedRule, ...]]
    wildcard: Mapping[str, tuple[ConsolidatedRule, ...]]

    def most_specific(self, host: str) -> tuple[str, tuple[ConsolidatedRule, ...]] | None:
        """``MostSpecificHostMatch``: the exact host, else the longest matching wildcard (equal
        lengths: alphabetical), with its entries; None if nothing matches."""
        if host.startswith("*"):
            if host in self.wildcard:
                return host, self.wildcard[host]
            needle = host[1:]
        else:
            if host in self.specific:
                return host, self.specific[host]
            needle = host
        best: str | None = None
        for h in self.wildcard:
            if needle.endswith(h[1:]) and (best is None or _more_specific(h, best)):
                best = h
        return (best, self.wildcard[best]) if best is not None else None


EMPTY_POOL = Pool({}, {})


def _more_specific(a: str, b: str) -> bool:
    """``host.MoreSpecific`` for two wildcard hosts: longer first, then alphabetical."""
    return a < b if len(a) == len(b) else len(a) > len(b)


@dataclass(frozen=True)
class DestinationRuleIndex:
    """The three pools of one snapshot for one (root namespace, default ``exportTo``)."""

    root_namespace: str
    namespace_local: Mapping[str, Pool]
    exported: Mapping[str, Pool]
    root_local: Pool
    #: (proxy namespace, service namespace, host) -> the lookup's answer (``policy_select``).
    lookups: dict[tuple[str, str, str], object] = field(default_factory=dict, compare=False, repr=False)


class DestinationRuleIndexes:
    """The index per (root namespace, default-private) of one snapshot's DestinationRules: the
    value kept in the snapshot, so every MeshConfig seen builds its index once."""

    def __init__(self, rules: tuple[DestinationRule, ...]) -> None:
        self._rules = rules
        self._built: dict[tuple[str, bool], DestinationRuleIndex] = {}

    @property
    def rules(self) -> tuple[DestinationRule, ...]:
        """Every DestinationRule, in Istio's processing order."""
        return self._rules

    def get(self, root_namespace: str, default_export_to: tuple[str, ...]) -> DestinationRuleIndex:
        key = (root_namespace, PRIVATE in default_export_to)
        idx = self._built.get(key)
        if idx is None:
            idx = self._built.setdefault(key, _build(self._rules, root_namespace, key[1]))
        return idx


def indexes_of(snapshot: ConfigSnapshot) -> DestinationRuleIndexes:
    return tables.DESTINATION_RULE_INDEXES.of(snapshot)


@tables.DESTINATION_RULE_INDEXES.computed_by
def _sorted_rules(snapshot: ConfigSnapshot) -> DestinationRuleIndexes:
    """``sortConfigBySelectorAndCreationTime``."""
    rules = sorted(snapshot.of_kind(DestinationRule),
                   key=lambda d: (d.spec.workload_selector is None, d.metadata.creation_timestamp, d.name,
                                  d.namespace))
    return DestinationRuleIndexes(tuple(rules))


class _MutablePool:
    def __init__(self) -> None:
        self.specific: dict[str, list[ConsolidatedRule]] = {}
        self.wildcard: dict[str, list[ConsolidatedRule]] = {}

    def frozen(self) -> Pool:
        return Pool({k: tuple(v) for k, v in self.specific.items()}, {k: tuple(v) for k, v in self.wildcard.items()})


def export_set(dr: DestinationRule) -> frozenset[str]:
    """The rule's ``exportTo`` as Istio indexes it (a selector makes it ``.``)."""
    if dr.spec.workload_selector is not None:
        return frozenset({PRIVATE})
    return frozenset(dr.spec.export_to)


def is_private_only(dr: DestinationRule, export: frozenset[str], default_private: bool) -> bool:
    if not export:
        return default_private
    return len(export) == 1 and (PRIVATE in export or dr.namespace in export)


def _build(rules: tuple[DestinationRule, ...], root: str, default_private: bool) -> DestinationRuleIndex:
    local: dict[str, _MutablePool] = {}
    exported: dict[str, _MutablePool] = {}
    root_local = _MutablePool()
    for dr in rules:
        host = resolve_shortname(dr.spec.host, dr.namespace)
        export = export_set(dr)
        ns = dr.namespace
        if not export or PUBLIC in export or PRIVATE in export or ns in export:
            _merge(local.setdefault(ns, _MutablePool()), dr, host, export)
        if not is_private_only(dr, export, default_private):
            _merge(exported.setdefault(ns, _MutablePool()), dr, host, export)
        elif ns == root:
            _merge(root_local, dr, host, export)
    return DestinationRuleIndex(root, {k: v.frozen() for k, v in local.items()},
                                {k: v.frozen() for k, v in exported.items()}, root_local.frozen())


def _merge(pool: _MutablePool, dr: DestinationRule, host: str, export: frozenset[str]) -> None:
    """``mergeDestinationRule`` (enhanced merge, Istio's default)."""
    table = pool.wildcard if host.startswith("*") else pool.specific
    entries = table.get(host)
    if entries is None:
        table[host] = [ConsolidatedRule(host, dr, export, (dr,))]
        return
    separately = True
    sel = dr.spec.workload_selector
    for i, mdr in enumerate(entries):
        if export == mdr.export_to:
            separately = False
        elif mdr.export_to and export > mdr.export_to:
            separately = True
        else:
            separately = True
            continue
        existing_sel = mdr.rule.spec.workload_selector
        both_with = sel is not None and existing_sel is not None
        if both_with and dict(existing_sel.match_labels) != dict(sel.match_labels):  # type: ignore[union-attr]
            separately = True
            continue
        if (sel is None and existing_sel is None) or both_with:
            separately = False
        entries[i] = _merged(mdr, dr)
    if separately:
        entries.append(ConsolidatedRule(host, dr, export, (dr,)))


def _merged(into: ConsolidatedRule, dr: DestinationRule) -> ConsolidatedRule:
    spec = into.rule.spec
    first = into.sources[0]
    have = {s.name for s in spec.subsets}
    added = tuple(s for s in dr.spec.subsets if s.name not in have)
    drops = list(into.drops)
    drops += [MergeDrop(dr, first, into.host, s.name) for s in dr.spec.subsets if s.name in have]
    policy = spec.traffic_policy
    if policy is None:
        policy = dr.spec.traffic_policy
    elif dr.spec.traffic_policy is not None:
        drops.append(MergeDrop(dr, first, into.host))
    new_spec = spec.model_copy(update={"subsets": spec.subsets + added, "traffic_policy": policy})
    rule = into.rule.model_copy(update={"spec": new_spec})
    return ConsolidatedRule(into.host, rule, into.export_to, (*into.sources, dr), tuple(drops))
