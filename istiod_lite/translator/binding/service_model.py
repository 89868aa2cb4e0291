"""The translator's view of one service: a Kubernetes Service, or one host of a ServiceEntry.

Why a common view: Istio turns both into the same internal ``model.Service`` (one per ServiceEntry
host) and everything downstream - clusters, chains, routes - is built from that.  Keeping one shape
here lets the waypoint translator, the cluster builder and the route resolver treat a ServiceEntry
host exactly like a Service, which is what Istio does (docs/istio-waypoint-shape.md §1.3, §3).

Facts (``pilot/pkg/serviceregistry/serviceentry/conversion.go`` ``convertServices``/``convertPort``):

* a ServiceEntry becomes one service per ``hosts`` entry, all sharing its ports and addresses;
* a ServiceEntry port's protocol is ``protocol.Parse(port.protocol)`` only (the port *name* is not
  consulted, unlike a Kubernetes Service); an empty protocol is "unsupported", i.e. sniffed;
* addresses are the VIPs (a ``/32`` or ``/128`` CIDR becomes a plain IP); without addresses, the
  addresses the IP allocator wrote to ``status.addresses`` for that host are used;
* resolution: ``NONE`` -> passthrough (ORIGINAL_DST), ``STATIC`` -> client-side load balancing
  (EDS), ``DNS`` -> STRICT_DNS, ``DNS_ROUND_ROBIN`` -> LOGICAL_DNS, ``DYNAMIC_DNS`` -> dynamic
  dynamic forward proxy (``clusters/dynamic_dns.py``): wildcard hosts whose HTTP and TLS ports only
  are served by a waypoint (``buildWaypointInboundVIP``).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from istiod_lite.model.core import Service
from istiod_lite.model.networking import ServiceEntry
from istiod_lite.translator.binding import protocols
from istiod_lite.translator.core import names

#: ServiceEntry resolutions and what Istio builds for them.
STATIC, DNS, DNS_ROUND_ROBIN, NONE, DYNAMIC_DNS = "STATIC", "DNS", "DNS_ROUND_ROBIN", "NONE", "DYNAMIC_DNS"
#: The port protocols a waypoint serves for a ``DYNAMIC_DNS`` entry (exactly HTTP and TLS).
DYNAMIC_DNS_PROTOCOLS = frozenset({"http", "tls"})


@dataclass(frozen=True)
class PortInfo:
    """One service port: number, name, Istio protocol class (``protocols.port_protocol`` vocabulary)
    and the target port (a Kubernetes int or name, a ServiceEntry ``targetPort``, or None)."""

    number: int
    name: str
    protocol: str
    target: int | str | None = None

    @property
    def chain_kinds(self) -> tuple[str, ...]:
        return protocols.chain_kinds(self.protocol)


@dataclass(frozen=True, eq=False)
class ServiceInfo:
    """Istio's ``model.Service`` for one host (compared by identity: it is a view, not a value)."""

    host: str
    #: ``filter_metadata.istio.services[].name``: the Service's name; for a ServiceEntry, the host.
    name: str
    namespace: str
    vips: tuple[str, ...]
    ports: tuple[PortInfo, ...]
    resolution: str
    source: Service | ServiceEntry
    created: str

    @property
    def is_service_entry(self) -> bool:
        return isinstance(self.source, ServiceEntry)

    def port(self, number: int) -> PortInfo | None:
        return next((p for p in self.ports if p.number == number), None)

    def served_ports(self) -> tuple[PortInfo, ...]:
        """Ports a waypoint handles: every one but UDP; for ``DYNAMIC_DNS``, HTTP and TLS ones only
        (Istio builds no cluster for its HTTP2/GRPC ports on a waypoint)."""
        if self.resolution == DYNAMIC_DNS:
            return tuple(p for p in self.ports if p.protocol in DYNAMIC_DNS_PROTOCOLS)
        return tuple(p for p in self.ports if p.chain_kinds)

    def metadata(self) -> list[dict[str, str]]:
        return [{"host": self.host, "name": self.name, "namespace": self.namespace}]


def of_service(svc: Service) -> ServiceInfo:
    """A Kubernetes Service: its FQDN, ClusterIPs and ports (protocol from appProtocol or name)."""
    ports = tuple(PortInfo(p.port, p.name, protocols.port_protocol(p.name, p.app_protocol, p.protocol), p.target_port)
                  for p in svc.spec.ports)
    return ServiceInfo(host=names.service_fqdn(svc.name, svc.namespace), name=svc.name, namespace=svc.namespace,
                       vips=svc.vips, ports=ports, resolution=STATIC, source=svc,
                       created=svc.metadata.creation_timestamp)


def se_protocol(protocol: str) -> str:
    """``protocol.Parse`` of a ServiceEntry port (case-insensitive; empty or unknown: sniffed)."""
    transport = "UDP" if protocol.upper() == "UDP" else "TCP"
    return protocols.port_protocol("", protocol, transport)


def _vip(address: str) -> str:
    """A ServiceEntry address: an IP, or a CIDR (kept, except a full-length one becomes its IP)."""
    if "/" in address:
        net = ipaddress.ip_network(address, strict=False)
        return str(net.network_address) if net.prefixlen == net.max_prefixlen else str(net)
    return address


def _allocated(status: Mapping[str, Any] | None, host: str) -> tuple[str, ...]:
    """Addresses the IP allocator wrote for ``host`` (``status.addresses: [{value, host}]``)."""
    out = []
    for entry in (status or {}).get("addresses") or ():
        if isinstance(entry, Mapping) and entry.get("host", host) == host and entry.get("value"):
            out.append(str(entry["value"]))
    return tuple(out)


def of_service_entry(se: ServiceEntry) -> tuple[ServiceInfo, ...]:
    """One view per host, in the order of ``hosts``."""
    spec = se.spec
    ports = tuple(PortInfo(p.number, p.name, se_protocol(p.protocol), p.target_port) for p in spec.ports)
    addresses = tuple(_vip(a) for a in spec.addresses)
    return tuple(
        ServiceInfo(host=h, name=h, namespace=se.namespace, vips=addresses or _allocated(se.status, h), ports=ports,
                    resolution=spec.resolution, source=se, created=se.metadata.creation_timestamp)
        for h in spec.hosts)


def sort_key(info: ServiceInfo) -> tuple[str, str, str, str]:
    """Istio's service order: creation time, then name and namespace (stable, unique)."""
    return info.created, info.namespace, info.name, info.host
