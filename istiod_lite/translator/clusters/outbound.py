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
  cluster that never exists (the route answers 500 under gateway semantics);
* only services exported to the waypoint's namespace are known (``exportTo``, ``core/visibility``):
  a route to one that is not is resolved as to an unknown host (``inbound-vip|P|http|H``, no
  outbound cluster), as Istio's waypoint scope does not list it; its DestinationRule is the one
  the waypoint's namespace resolves (``policy_select.waypoint_destination_rule``).

One ``DestinationResolver`` per service fragment: it records the outbound targets its routes
name (and, as Istio, every other non-owned service its VirtualServices reference), so the
fragment carries their clusters.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

from istiod_lite.model import ConfigSnapshot
from istiod_lite.model.core import Service
from istiod_lite.model.meshconfig import MeshConfig
from istiod_lite.model.networking import ConsistentHashLB, Destination, DestinationRule, VirtualService
from istiod_lite.translator.binding import service_model
from istiod_lite.translator.binding.service_model import ServiceInfo
from istiod_lite.translator.clusters import for_service
from istiod_lite.translator.clusters.locality_lb import LbContext
from istiod_lite.translator.clusters.policy_select import ResolvedRule, destination_hash, waypoint_destination_rule
from istiod_lite.translator.core import names, visibility
from istiod_lite.translator.core.index import qualify, service_entries_by_host
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
    """The service (Kubernetes Service, else the oldest ServiceEntry declaring ``host``), if any.
    A ``DYNAMIC_DNS`` entry is none: its dynamic forward proxy clusters exist only on the waypoint
    it is bound to (translator/waypoint/dynamic_dns.py), not as another waypoint's route target."""
    svc = kube_service_for_host(snapshot, host)
    if svc is not None:
        return service_model.of_service(svc)
    for se in service_entries_by_host(snapshot).get(host, ()):
        if se.spec.resolution == service_model.DYNAMIC_DNS:
            continue
        for info in service_model.of_service_entry(se):
            if info.host == host:
                return info
    return None


def visible_service_for_host(snapshot: ConfigSnapshot, host: str, namespace: str, mesh: MeshConfig | None = None
                             ) -> ServiceInfo | None:
    """The service of ``host`` as proxies of ``namespace`` see it: the Kubernetes Service, else the
    oldest ServiceEntry declaring the host, among those exported to ``namespace``."""
    svc = kube_service_for_host(snapshot, host)
    if svc is not None and visibility.service_visible(svc, namespace, mesh):
        return service_model.of_service(svc)
    for se in service_entries_by_host(snapshot).get(host, ()):
        if not visibility.service_visible(se, namespace, mesh):
            continue
        for info in service_model.of_service_entry(se):
            if info.host == host:
                return info
    return None


def host_visible(snapshot: ConfigSnapshot, host: str, namespace: str, mesh: MeshConfig | None = None) -> bool | None:
    """Whether proxies of ``namespace`` see a service of ``host`` (None: no service has it); the
    cheap test behind ``visible_service_for_host`` (no view is built)."""
    svc = kube_service_for_host(snapshot, host)
    entries = service_entries_by_host(snapshot).get(host, ())
    if svc is None and not entries:
        return None
    if svc is not None and visibility.service_visible(svc, namespace, mesh):
        return True
    return any(visibility.service_visible(se, namespace, mesh) for se in entries)


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
            if rd.destination.host:  # empty: an unroutable Gateway API backend
                yield qualify(rd.destination.host, ns)
    for tls in vs.spec.tls:
        for rd in tls.route:
            if rd.destination.host:
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
                 mesh: MeshConfig | None = None, lb_context: LbContext | None = None) -> None:
        self.snapshot = snapshot
        #: The mesh config and proxy locality the outbound clusters' endpoints are built for.
        self.lb_context = lb_context
        self.waypoint_namespace = waypoint_namespace
        #: host -> the services this waypoint owns (shared by every fragment of one translation).
        self.owned = owned
        self.mesh = mesh if mesh is not None else (lb_context.mesh if lb_context is not None else None)
        #: host -> every non-owned service a route named (sorted when built).
        self.outbound: dict[str, ServiceInfo] = {}

    def service(self, host: str) -> ServiceInfo | None:
        """The service of ``host`` as the waypoint sees it (None: unknown or not exported to it)."""
        view = self.owned.get(host)
        if view is not None:
            return view if visibility.service_visible(view.source, self.waypoint_namespace, self.mesh) else None
        return visible_service_for_host(self.snapshot, host, self.waypoint_namespace, self.mesh)

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
                svc = visible_service_for_host(self.snapshot, host, self.waypoint_namespace, self.mesh)
                if svc is not None:
                    self.outbound[host] = svc

    def resolved_rule(self, host: str) -> ResolvedRule:
        """How the waypoint's namespace resolves ``host``'s DestinationRule (``policy_select``)."""
        return waypoint_destination_rule(self.snapshot, self.waypoint_namespace, self.service(host), self.mesh)

    def destination_rule(self, host: str) -> DestinationRule | None:
        return self.resolved_rule(host).rule

    def consistent_hash(self, dest: Destination, namespace: str) -> ConsistentHashLB | None:
        dr = self.destination_rule(qualify(dest.host, namespace))
        return destination_hash(dr, dest.port.number if dest.port else None, dest.subset or "")

    def outbound_resources(self) -> EnvoyResources:
        """Clusters and endpoints of every outbound target named so far (sorted by host)."""
        out = EnvoyResources()
        for host in sorted(self.outbound):
            for_service.add_outbound(out, self.snapshot, self.outbound[host], self.destination_rule(host),
                                     self.lb_context)
        return out
