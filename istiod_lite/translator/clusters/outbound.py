"""Where a VirtualService destination goes from a waypoint, and the outbound clusters that needs.

Facts: docs/istio-waypoint-shape.md §1.5 and §4 (``getWaypointDestinationCluster``,
``portToSubset``, ``filterWaypointOutboundServices``):

* port: the destination's, else the target service's only port, else the listener's;
* a service this waypoint owns (or an unknown host) -> ``inbound-vip|P|<kind>[/<subset>]|H``, where
  ``kind`` is ``http`` for HTTP and sniffed ports (and unknown ports), ``tcp`` otherwise;
* a known service owned by no one or another waypoint -> ``outbound|P|<subset>|H``; the waypoint
  then gets that service's outbound clusters (every non-UDP port, every DestinationRule subset),
  with endpoints straight to its workloads (a waypoint never sends to the target's own waypoint);
* "known" covers Kubernetes Services (by FQDN) and ServiceEntry hosts (the oldest entry declaring
  the host wins, as Istio's ``ServiceForHostname``);
* an empty host (a Gateway API backend of a kind Istio cannot route to) -> ``UnknownService``, a
  cluster that never exists (the route answers 500 under gateway semantics).

One ``DestinationResolver`` per service fragment: it records the outbound targets its routes
name (and, as Istio, every other non-owned service its VirtualServices reference), so the
fragment carries their clusters.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

from istiod_lite.model import ConfigSnapshot
from istiod_lite.model.core import Service
from istiod_lite.model.networking import ConsistentHashLB, Destination, DestinationRule, VirtualService
from istiod_lite.model.types import Duration
from istiod_lite.translator.binding import service_model
from istiod_lite.translator.binding.service_model import ServiceInfo
from istiod_lite.translator.clusters import for_service
from istiod_lite.translator.clusters.policy_select import destination_hash
from istiod_lite.translator.core import names
from istiod_lite.translator.core.index import index_of, qualify, service_entries_by_host
from istiod_lite.translator.core.output import EnvoyResources

_SUFFIX = ".svc." + names.DEFAULT_DOMAIN
#: Istio's cluster name for a destination it cannot resolve (``getWaypointDestinationCluster``).
UNKNOWN_SERVICE = "UnknownService"


def kube_service_for_host(snapshot: ConfigSnapshot, host: str) -> Service | None:
    """The Kubernetes Service named by ``<name>.<namespace>.svc.cluster.local``, if it exists."""
    if not host.endswith(_SUFFIX):
        return None
    name, _, ns = host[: -len(_SUFFIX)].partition(".")
    if not name or not ns or "." in ns:
        return None
    return snapshot.get(Service, ns, name)


def service_for_host(snapshot: ConfigSnapshot, host: str) -> ServiceInfo | None:
    """The service (Kubernetes Service, else the oldest ServiceEntry declaring ``host``), if any."""
    svc = kube_service_for_host(snapshot, host)
    if svc is not None:
        return service_model.of_service(svc)
    for se in service_entries_by_host(snapshot).get(host, ()):
        for info in service_model.of_service_entry(se):
            if info.host == host:
                return info
    return None


def source_for_host(snapshot: ConfigSnapshot, host: str) -> object:
    """The config object ``service_for_host`` reads (for memo keys; None if there is none)."""
    svc = kube_service_for_host(snapshot, host)
    if svc is not None:
        return svc
    entries = service_entries_by_host(snapshot).get(host, ())
    return entries[0] if entries else None


def host_namespace(host: str) -> str:
    """The namespace part of a service FQDN ("" for other names)."""
    if not host.endswith(_SUFFIX):
        return ""
    _, _, ns = host[: -len(_SUFFIX)].partition(".")
    return ns


def destination_rule_for_host(drs: Mapping[tuple[str, str], DestinationRule], waypoint_namespace: str, host: str
                              ) -> DestinationRule | None:
    """The DestinationRule of ``host`` (``drs``: the snapshot index's table): its service's
    namespace first, then the waypoint's (as ``waypoint.destination_rule`` for owned services)."""
    return drs.get((host_namespace(host), host)) or drs.get((waypoint_namespace, host))


def referenced_hosts(vs: VirtualService) -> Iterator[str]:
    """Every host a VirtualService sends or mirrors traffic to (qualified to its namespace)."""
    ns = vs.namespace
    for http in vs.spec.http:
        for d in http.route:
            if d.destination.host:  # empty: an unroutable Gateway API backend
                yield qualify(d.destination.host, ns)
        if http.mirror is not None:
            yield qualify(http.mirror.host, ns)
        for m in http.mirrors:
            if m.destination.host:
                yield qualify(m.destination.host, ns)
    for tcp in vs.spec.tcp:
        for rd in tcp.route:
            yield qualify(rd.destination.host, ns)
    for tls in vs.spec.tls:
        for rd in tls.route:
            yield qualify(rd.destination.host, ns)


def _port_kind(svc: ServiceInfo | None, port: int) -> str:
    """``portToSubset``'s protocol part."""
    p = svc.port(port) if svc is not None else None
    if p is None:
        return "http"
    return "http" if "http" in p.chain_kinds else "tcp"


class DestinationResolver:
    """Resolves destinations for one service's routes (``routes.Targets``) and collects the
    outbound services they need."""

    def __init__(self, snapshot: ConfigSnapshot, waypoint_namespace: str, owned: Mapping[str, ServiceInfo],
                 connect_timeout: Duration | None = None) -> None:
        self.snapshot = snapshot
        #: The mesh's ``connectTimeout`` for the outbound clusters (None: istiod's default).
        self.connect_timeout = connect_timeout
        self.waypoint_namespace = waypoint_namespace
        #: host -> the services this waypoint owns (shared by every fragment of one translation).
        self.owned = owned
        #: host -> every non-owned service a route named (sorted when built).
        self.outbound: dict[str, ServiceInfo] = {}
        self._drs = index_of(snapshot).destination_rules

    def service(self, host: str) -> ServiceInfo | None:
        view = self.owned.get(host)
        return view if view is not None else service_for_host(self.snapshot, host)

    def cluster(self, dest: Destination, namespace: str, listen_port: int) -> str:
        if not dest.host:
            return UNKNOWN_SERVICE
        host = qualify(dest.host, namespace)
        svc = self.service(host)
        if dest.port is not None:
            port = dest.port.number
        elif svc is not None and len(svc.ports) == 1:
            port = svc.ports[0].number
        else:
            port = listen_port
        subset = dest.subset or ""
        if svc is not None and host not in self.owned:
            self.outbound[host] = svc
            return names.outbound_cluster(port, host, subset)
        return names.inbound_vip_cluster(port, host, _port_kind(svc, port), subset)

    def exists(self, dest: Destination, namespace: str) -> bool:
        return bool(dest.host) and self.service(qualify(dest.host, namespace)) is not None

    def include(self, hosts: Iterable[str]) -> None:
        """Also build outbound clusters for these hosts (Istio builds them for every non-owned
        service its VirtualServices reference, whether or not a route survives)."""
        for host in hosts:
            if host not in self.owned and host not in self.outbound:
                svc = service_for_host(self.snapshot, host)
                if svc is not None:
                    self.outbound[host] = svc

    def destination_rule(self, host: str) -> DestinationRule | None:
        return destination_rule_for_host(self._drs, self.waypoint_namespace, host)

    def consistent_hash(self, dest: Destination, namespace: str) -> ConsistentHashLB | None:
        dr = self.destination_rule(qualify(dest.host, namespace))
        return destination_hash(dr, dest.port.number if dest.port else None, dest.subset or "")

    def outbound_resources(self) -> EnvoyResources:
        """Clusters and endpoints of every outbound target named so far (sorted by host)."""
        out = EnvoyResources()
        for host in sorted(self.outbound):
            for_service.add_outbound(out, self.snapshot, self.outbound[host], self.destination_rule(host),
                                     self.connect_timeout)
        return out
