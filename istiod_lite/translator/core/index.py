"""Lookup tables derived from one ConfigSnapshot, built once and shared by every translation of it.

Why: translating a waypoint asks "which pods does this Service select?", "which VirtualServices
name this host?" once per service.  Scanning the snapshot for each answer is O(services x pods);
with these tables each answer costs a dictionary lookup.  The tables are a pure function of the
snapshot, declared in ``tables.py`` and kept in the snapshot (they die with it).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from istiod_lite.model import ConfigSnapshot
from istiod_lite.model.core import Pod
from istiod_lite.model.meshconfig import MeshConfig
from istiod_lite.model.networking import ServiceEntry, VirtualService, WorkloadEntry
from istiod_lite.translator.core import names, tables, visibility


def qualify(host: str, namespace: str) -> str:
    """Short names in Istio configs are relative to the config's namespace (``*`` and IP
    addresses stay as written: ``ResolveShortnameToFQDN``)."""
    return names.resolve_shortname(host, namespace)


@dataclass(frozen=True)
class SnapshotIndex:
    #: (namespace, label key, label value) -> pods with an IP carrying that label, sorted by name.
    pods_by_label: Mapping[tuple[str, str, str], tuple[Pod, ...]]
    #: (namespace, fully qualified host) -> mesh-bound VirtualServices naming that exact host.
    vs_by_host: Mapping[tuple[str, str], tuple[VirtualService, ...]]
    #: namespace -> mesh-bound VirtualServices with a wildcard host (matched per service).
    vs_wildcard: Mapping[str, tuple[VirtualService, ...]]

    def selected_pods(self, namespace: str, selector: Mapping[str, str]) -> list[Pod]:
        """Pods in ``namespace`` with an IP whose labels include every ``selector`` entry."""
        if not selector:
            return []
        items = sorted(selector.items())
        candidates = min((self.pods_by_label.get((namespace, k, v), ()) for k, v in items), key=len)
        return [p for p in candidates if all(p.metadata.labels.get(k) == v for k, v in items)]


def index_of(snapshot: ConfigSnapshot) -> SnapshotIndex:
    """The tables, each memoised on its own kind: a VirtualService edit re-indexes only the
    VirtualServices (2,000 pods are not re-indexed for it).  DestinationRules have their own index
    (``destination_rules.py``: it depends on the MeshConfig too)."""
    return tables.SNAPSHOT_INDEX.of(snapshot)


@tables.SNAPSHOT_INDEX.computed_by
def _compose(snapshot: ConfigSnapshot) -> SnapshotIndex:
    pods = tables.PODS_BY_LABEL.of(snapshot)
    vs_by_host, vs_wildcard = tables.VS_BY_HOST.of(snapshot)
    return SnapshotIndex(pods_by_label=pods, vs_by_host=vs_by_host, vs_wildcard=vs_wildcard)


@tables.PODS_BY_LABEL.computed_by
def _pods_table(snapshot: ConfigSnapshot) -> Mapping[tuple[str, str, str], tuple[Pod, ...]]:
    pods: dict[tuple[str, str, str], list[Pod]] = {}
    for pod in snapshot.of_kind(Pod):
        if not pod.ips:
            continue
        ns = pod.namespace
        for k, v in pod.metadata.labels.items():
            pods.setdefault((ns, k, v), []).append(pod)
    return {k: tuple(v) for k, v in pods.items()}


@tables.VS_BY_HOST.computed_by
def _vs_tables(snapshot: ConfigSnapshot) -> tuple[Mapping[tuple[str, str], tuple[VirtualService, ...]],
                                                  Mapping[str, tuple[VirtualService, ...]]]:
    by_host: dict[tuple[str, str], list[VirtualService]] = {}
    wild: dict[str, list[VirtualService]] = {}
    for vs in snapshot.of_kind(VirtualService):
        if vs.spec.gateways and "mesh" not in vs.spec.gateways:
            continue  # bound to ingress gateways only
        for h in tables.VS_QUALIFIED_HOSTS.of(vs):
            if h.startswith("*"):
                if not wild.get(vs.namespace) or wild[vs.namespace][-1] is not vs:
                    wild.setdefault(vs.namespace, []).append(vs)
            else:
                by_host.setdefault((vs.namespace, h), []).append(vs)
    return {k: tuple(v) for k, v in by_host.items()}, {k: tuple(v) for k, v in wild.items()}


@tables.VS_QUALIFIED_HOSTS.computed_by
def _qualified_hosts(vs: VirtualService) -> tuple[str, ...]:
    return tuple(sorted({qualify(h, vs.namespace) for h in vs.spec.hosts}))


def host_matches(pattern: str, host: str) -> bool:
    if pattern == "*":
        return True
    if pattern.startswith("*."):
        return host.endswith(pattern[1:])
    return pattern == host


def matching_virtual_services(index: SnapshotIndex, namespaces: tuple[str, ...], host: str) -> list[VirtualService]:
    """Mesh VirtualServices from ``namespaces`` whose hosts match ``host``, visible or not, in
    creation order (then name, then namespace: ``configCompareByCreationTime``)."""
    found: dict[tuple[str, str], VirtualService] = {}
    for ns in dict.fromkeys(namespaces):
        for vs in index.vs_by_host.get((ns, host), ()):
            found[(vs.namespace, vs.name)] = vs
        for vs in index.vs_wildcard.get(ns, ()):
            if any(host_matches(h, host) for h in tables.VS_QUALIFIED_HOSTS.of(vs)):
                found[(vs.namespace, vs.name)] = vs
    return sorted(found.values(), key=lambda v: (v.metadata.creation_timestamp, v.name, v.namespace))


def virtual_services_for(index: SnapshotIndex, namespaces: tuple[str, ...], host: str,
                         mesh: MeshConfig | None = None) -> list[VirtualService]:
    """The mesh VirtualServices a proxy of namespace ``namespaces[0]`` (a waypoint's) applies to
    ``host``: those of ``namespaces`` matching it that are exported to that namespace, in Istio's
    order (``VirtualServicesForGateway``: its own private ones, those exported to it by name, the
    public ones; each in creation order)."""
    client = namespaces[0]
    keyed = [(b, i, vs) for i, vs in enumerate(matching_virtual_services(index, namespaces, host))
             if (b := visibility.vs_bucket(vs, client, mesh)) is not None]
    return [vs for _, _, vs in sorted(keyed, key=lambda t: (t[0], t[1]))]


def workload_entry_labels(we: WorkloadEntry) -> Mapping[str, str]:
    """Istio merges a WorkloadEntry's ``spec.labels`` with its metadata labels (metadata wins)."""
    if not we.spec.labels:
        return we.metadata.labels
    return {**we.spec.labels, **we.metadata.labels}


@dataclass(frozen=True)
class WorkloadEntryIndex:
    """WorkloadEntries with an address, by (namespace, label key, label value), sorted by name.

    Separate from ``SnapshotIndex`` on purpose: it is memoised on the WorkloadEntry map alone, so a
    pod or VirtualService change does not rebuild it (nor a WorkloadEntry change the pod table)."""

    by_label: Mapping[tuple[str, str, str], tuple[WorkloadEntry, ...]]

    def selected(self, namespace: str, selector: Mapping[str, str]) -> list[WorkloadEntry]:
        """WorkloadEntries in ``namespace`` whose (merged) labels include every ``selector`` entry."""
        if not selector or not self.by_label:
            return []
        items = sorted(selector.items())
        candidates = min((self.by_label.get((namespace, k, v), ()) for k, v in items), key=len)
        return [we for we in candidates if all(workload_entry_labels(we).get(k) == v for k, v in items)]


def workload_entries_of(snapshot: ConfigSnapshot) -> WorkloadEntryIndex:
    return tables.WORKLOAD_ENTRIES.of(snapshot)


@tables.WORKLOAD_ENTRIES.computed_by
def _build_workload_entries(snapshot: ConfigSnapshot) -> WorkloadEntryIndex:
    by_label: dict[tuple[str, str, str], list[WorkloadEntry]] = {}
    for we in snapshot.of_kind(WorkloadEntry):
        if not we.spec.address:
            continue  # network-only entries are reached through a gateway: not supported here
        for k, v in workload_entry_labels(we).items():
            by_label.setdefault((we.namespace, k, v), []).append(we)
    return WorkloadEntryIndex({k: tuple(v) for k, v in by_label.items()})


def service_entries_by_host(snapshot: ConfigSnapshot) -> Mapping[str, tuple[ServiceEntry, ...]]:
    """host -> the ServiceEntries declaring it, oldest first (Istio's choice when several do)."""
    return tables.SERVICE_ENTRIES_BY_HOST.of(snapshot)


@tables.SERVICE_ENTRIES_BY_HOST.computed_by
def _build_se_hosts(snapshot: ConfigSnapshot) -> Mapping[str, tuple[ServiceEntry, ...]]:
    out: dict[str, list[ServiceEntry]] = {}
    for se in sorted(snapshot.of_kind(ServiceEntry),
                     key=lambda s: (s.metadata.creation_timestamp, s.namespace, s.name)):
        for h in se.spec.hosts:
            out.setdefault(h, []).append(se)
    return {k: tuple(v) for k, v in out.items()}
