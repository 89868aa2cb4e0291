"""Where a VirtualService destination goes from a waypoint, and the outbound clusters that needs.

Facts: shared/reference/istio-waypoint.md §1.5 and §4 (``getWaypointDestinationCluster``,
``portToSubset``, ``filterWaypointOutboundServices``):

* port: the destination's, else the target service's only port, else the listener's;
* a service this waypoint owns (or an unknown host) -> ``inbound-vip|P|<kind>[/<subset>]|H``, where
  ``kind`` is ``http`` for HTTP and sniffed ports (and unknown ports), ``tcp`` otherwise;
* a known service owned by no one or another waypoint -> ``outbound|P|<subset>|H``; the waypoint
  then gets that service's outbound clusters (every non-UDP port, every DestinationRule subset),
  with endpoints straight to its pods (a waypoint never sends to the target's own waypoint).

One ``DestinationResolver`` per service fragment: it records the outbound targets its routes
name (and, as Istio, every other non-owned service its VirtualServices reference), so the
fragment carries their clusters.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Protocol

from istiod_lite.model import ConfigSnapshot
from istiod_lite.model.core import Service
from istiod_lite.model.networking import ConsistentHashLB, Destination, DestinationRule, VirtualService
from istiod_lite.translator import inbound, names, service_clusters
from istiod_lite.translator.index import index_of, qualify
from istiod_lite.translator.output import EnvoyResources
from istiod_lite.translator.traffic_policy import destination_hash

_SUFFIX = ".svc." + names.DEFAULT_DOMAIN


def service_for_host(snapshot: ConfigSnapshot, host: str) -> Service | None:
    """The Kubernetes Service named by ``<name>.<namespace>.svc.cluster.local``, if it exists."""
    if not host.endswith(_SUFFIX):
        return None
    name, _, ns = host[: -len(_SUFFIX)].partition(".")
    if not name or not ns or "." in ns:
        return None
    return snapshot.get(Service, ns, name)


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
            yield qualify(d.destination.host, ns)
        if http.mirror is not None:
            yield qualify(http.mirror.host, ns)
        for m in http.mirrors:
            yield qualify(m.destination.host, ns)
    for tcp in vs.spec.tcp:
        for rd in tcp.route:
            yield qualify(rd.destination.host, ns)
    for tls in vs.spec.tls:
        for rd in tls.route:
            yield qualify(rd.destination.host, ns)


def _port_kind(svc: Service | None, port: int) -> str:
    """``portToSubset``'s protocol part."""
    for p in svc.spec.ports if svc is not None else ():
        if p.port == port:
            return "http" if "http" in inbound.chain_kinds(inbound.port_protocol(p.name, p.app_protocol, p.protocol)) \
                else "tcp"
    return "http"


class OwnedService(Protocol):
    """A service this waypoint serves (the translator's view of it)."""

    @property
    def svc(self) -> Service: ...


class DestinationResolver:
    """Resolves destinations for one service's routes (``routes.Targets``) and collects the
    outbound services they need."""

    def __init__(self, snapshot: ConfigSnapshot, waypoint_namespace: str, owned: Mapping[str, OwnedService]) -> None:
        self.snapshot = snapshot
        self.waypoint_namespace = waypoint_namespace
        #: FQDN -> the services this waypoint owns (shared by every fragment of one translation).
        self.owned = owned
        #: FQDN -> Service of every non-owned service a route named (sorted when built).
        self.outbound: dict[str, Service] = {}
        self._drs = index_of(snapshot).destination_rules

    def service(self, host: str) -> Service | None:
        view = self.owned.get(host)
        return view.svc if view is not None else service_for_host(self.snapshot, host)

    def cluster(self, dest: Destination, namespace: str, listen_port: int) -> str:
        host = qualify(dest.host, namespace)
        svc = self.service(host)
        if dest.port is not None:
            port = dest.port.number
        elif svc is not None and len(svc.spec.ports) == 1:
            port = svc.spec.ports[0].port
        else:
            port = listen_port
        subset = dest.subset or ""
        if svc is not None and host not in self.owned:
            self.outbound[host] = svc
            return names.outbound_cluster(port, host, subset)
        return names.inbound_vip_cluster(port, host, _port_kind(svc, port), subset)

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
            service_clusters.add_outbound(out, self.snapshot, self.outbound[host], host, self.destination_rule(host))
        return out
