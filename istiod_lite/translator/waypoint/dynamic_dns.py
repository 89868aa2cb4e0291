"""The chains, clusters and routes of one port of a ``DYNAMIC_DNS`` (wildcard) ServiceEntry host.

Istio's egress-through-a-waypoint pattern: a ServiceEntry ``*.example.com`` with ``resolution:
DYNAMIC_DNS`` and ``istio.io/use-waypoint``; ztunnel sends traffic for any name under the wildcard
(resolved by its DNS proxy to the address allocated to the entry) to the waypoint, whose
``main_internal`` matches that address and port like any other service.  Then (facts:
``buildWaypointInboundVIP``, ``buildWaypointInternal``, ``buildWaypointNetworkFilters``,
``buildRouteVHostDomains``):

* HTTP port: the usual HTTP chain plus the HTTP dynamic forward proxy filter; its routes accept
  only hosts under the wildcard (virtual host domains ``[host]``, so ``Host: other.test`` gets a
  404 instead of being forwarded anywhere) and go to ``inbound-vip|P|http|H``, a DFP cluster;
* TLS port (only with ``DynamicDnsOptions.wildcard_tls``, Istio's
  ``ENABLE_WILDCARD_HOST_SERVICE_ENTRIES_FOR_TLS``, off by default): TLS passthrough: the SNI
  dynamic forward proxy filter, then tcp_proxy to ``inbound-vip|P|tcp|H``, a DFP cluster; the
  upstream port is the service port;
* other ports (HTTP2, GRPC): none (``ServiceInfo.served_ports``); reported by ``config_warnings``.

Not applied to DFP clusters (Istio's waypoint applies some; reported by ``config_warnings``):
DestinationRule traffic policies and subsets.  A host without an address gets nothing: nothing
can reach it (Istio would still build its clusters).
"""

from __future__ import annotations

from istiod_lite.model.meshconfig import PathNormalizationType
from istiod_lite.model.networking import VirtualService
from istiod_lite.translator.authz.discovery import DiscoveredAuthz
from istiod_lite.translator.binding.service_model import PortInfo, ServiceInfo
from istiod_lite.translator.clusters import dynamic_dns, for_service
from istiod_lite.translator.clusters.dynamic_dns import DynamicDnsOptions
from istiod_lite.translator.clusters.outbound import DestinationResolver
from istiod_lite.translator.core import names
from istiod_lite.translator.core.output import EnvoyResources
from istiod_lite.translator.listeners import inbound
from istiod_lite.translator.routing import routes, tcp_routes
from istiod_lite.translator.shape import cluster_templates


def port_chains(
    out: EnvoyResources, sv: ServiceInfo, port: PortInfo, vss: list[VirtualService], resolver: DestinationResolver,
    waypoint_namespace: str, slots: DiscoveredAuthz, path_normalization: PathNormalizationType,
    options: DynamicDnsOptions,
) -> inbound.PortChains | None:
    """Add the port's DFP cluster (and routes) to ``out``; its chains, or None if not served."""
    tls = port.protocol == "tls"
    if tls and not options.wildcard_tls:
        return None
    kind = "tcp" if tls else "http"
    cluster = names.inbound_vip_cluster(port.number, sv.host, kind)
    meta = cluster_templates.service_metadata(sv.metadata())
    out.clusters[cluster] = dynamic_dns.dfp_cluster(cluster, sv.host, meta, kind, for_service.PASSTHROUGH, options)
    if tls:
        chain = tcp_routes.tcp_chain(cluster, vss, sv.host, port.number, resolver)
        # Istio's order: authorization, then the SNI forward proxy, then tcp_proxy.
        chain = inbound.with_network_filters(chain, [*slots.tcp, dynamic_dns.sni_filter(sv.host, port.number,
                                                                                         options)])
        out.extension_configs.update(slots.tcp_configs)
        return inbound.PortChains(port.number, None, chain, tls=True, sni=True)
    scope = routes.RouteScope(port.number, waypoint_namespace, resolver)
    route_list = routes.http_routes(vss, scope) or [routes.default_route(cluster, sv.host, port.number)]
    out.routes[cluster] = routes.route_configuration(cluster, f"inbound|http|{port.number}", route_list,
                                                     domains=(sv.host,))
    http = inbound.http_chain(cluster, port.number, False, authz=slots.http, path_normalization=path_normalization,
                              before_router=[dynamic_dns.http_filter(sv.host, options)])
    out.extension_configs.update(slots.http_configs)
    return inbound.PortChains(port.number, http, None)


__all__ = ["port_chains"]
