"""``istio.workload.Service`` from Kubernetes Services and ServiceEntries (one per host), as istiod builds them."""

from __future__ import annotations

from istiod_lite._generated.istio.workload import workload_pb2 as wl
from istiod_lite.model.core import Service
from istiod_lite.model.networking import ServiceEntry
from istiod_lite.translator.binding.protocols import port_protocol
from istiod_lite.translator.core import names as core_names
from istiod_lite.translator.ztunnel.names import ZtunnelOptions, network_address

_APP_PROTOCOLS: dict[str, wl.AppProtocol] = {"http": wl.HTTP11, "http2": wl.HTTP2, "grpc": wl.GRPC,
                                             "grpc-web": wl.GRPC, "tls": wl.TLS,
                  "https": wl.TLS, "tcp": wl.TCP}
_IP_FAMILIES: dict[tuple[str, ...], wl.IPFamilies] = {("IPv4",): wl.IPV4_ONLY, ("IPv6",): wl.IPV6_ONLY}


def app_protocol(protocol: str) -> wl.AppProtocol:
    """Istio's protocol name (``http``, ``grpc``, ...) as the workload API's ``AppProtocol``."""
    return _APP_PROTOCOLS.get(protocol.lower(), wl.UNKNOWN)


def kube_service(svc: Service, waypoint: wl.GatewayAddress | None, opts: ZtunnelOptions) -> wl.Service:
    """A Kubernetes Service: always canonical; a named target port is sent as 0 (resolved per workload)."""
    out = wl.Service(name=svc.name, namespace=svc.namespace, hostname=core_names.service_fqdn(svc.name, svc.namespace,
                                                                                              opts.domain),
                     canonical=True)
    for vip in svc.vips:
        addr = network_address(opts.network, vip)
        if addr is not None:
            out.addresses.append(addr)
    for p in svc.spec.ports:
        target = p.target_port if isinstance(p.target_port, int) else (p.port if p.target_port is None else 0)
        out.ports.add(service_port=p.port, target_port=target,
                      app_protocol=app_protocol(port_protocol(p.name, p.app_protocol, p.protocol)))
    if waypoint is not None:
        out.waypoint.CopyFrom(waypoint)
    if svc.spec.internal_traffic_policy == "Local":
        out.load_balancing.routing_preference.append(wl.LoadBalancing.NODE)
        out.load_balancing.mode = wl.LoadBalancing.STRICT
    if svc.spec.publish_not_ready_addresses:
        out.load_balancing.health_policy = wl.LoadBalancing.ALLOW_ALL
    families = tuple(svc.spec.ip_families)
    out.ip_families = wl.DUAL if len(families) == 2 else _IP_FAMILIES.get(families, wl.AUTOMATIC)
    return out


def service_entry_services(se: ServiceEntry, waypoint: wl.GatewayAddress | None,
                           opts: ZtunnelOptions) -> list[wl.Service]:
    """One Service per host of the entry; resolution NONE passes traffic through to the address called."""
    spec = se.spec
    addresses = [a for text in spec.addresses if (a := network_address(opts.network, text)) is not None]
    ports = [wl.Port(service_port=p.number, target_port=p.target_port or p.number,
                     app_protocol=app_protocol(p.protocol_name)) for p in spec.ports]
    out = []
    for host in spec.hosts:
        svc = wl.Service(name=se.name, namespace=se.namespace, hostname=host, addresses=addresses, ports=ports,
                         subject_alt_names=spec.subject_alt_names)
        if waypoint is not None:
            svc.waypoint.CopyFrom(waypoint)
        if spec.resolution == "NONE":
            svc.load_balancing.mode = wl.LoadBalancing.PASSTHROUGH
            svc.load_balancing.health_policy = wl.LoadBalancing.ALLOW_ALL
        out.append(svc)
    return out
