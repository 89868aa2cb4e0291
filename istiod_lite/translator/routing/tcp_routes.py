"""The TCP chain of a service port: ``tcp_proxy`` to the service, or where a ``tls``/``tcp``
VirtualService route sends it.

Facts: docs/istio-waypoint-shape.md §2.2 "TCP chain" and §4 (``getWaypointTCPRoutes``,
``buildWaypointNetworkFilters``):

* ``tls`` routes are tried first (all VirtualServices), then ``tcp`` routes; the first rule whose
  match applies wins (a rule without match always applies);
* a ``tls`` match applies only with exactly one ``sniHosts`` entry equal to the service's FQDN and a
  matching (or no) port; ``tcp``/``tls`` matches with ``sourceLabels`` or ``sourceNamespace`` never
  apply (a waypoint has no such context), ``gateways`` must name ``mesh``;
* one destination -> ``cluster``; several -> ``weighted_clusters`` of those with weight > 0;
* the DestinationRule of the (first) destination's host sets ``idle_timeout`` and
  ``max_downstream_connection_duration`` (top-level ``connectionPool.tcp``, as Istio: subsets
  and port-level settings are ignored here) and the source-IP hash.
"""

from __future__ import annotations

from collections.abc import Sequence

from envoy.config.listener.v3 import listener_components_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2

from istiod_lite.model.networking import L4MatchAttributes, RouteDestination, TLSMatchAttributes, VirtualService
from istiod_lite.translator.clusters.outbound import DestinationResolver
from istiod_lite.translator.clusters.policy_apply import set_duration
from istiod_lite.translator.clusters.policy_select import tcp_source_ip_hash
from istiod_lite.translator.core.index import qualify
from istiod_lite.translator.core.protos import packed
from istiod_lite.translator.shape import hbone


def _l4_applies(m: L4MatchAttributes | TLSMatchAttributes, port: int) -> bool:
    """``matchTCP``/``matchTLS`` with no proxy labels and no proxy namespace."""
    gateways = not m.gateways or "mesh" in m.gateways
    return gateways and not m.source_labels and (m.port is None or m.port == port) and not m.source_namespace


def tcp_route(vss: Sequence[VirtualService], host: str, port: int
              ) -> tuple[VirtualService, tuple[RouteDestination, ...]] | None:
    """The destinations of the first applicable ``tls`` rule, else ``tcp`` rule (with its VirtualService)."""
    for vs in vss:
        for rule in vs.spec.tls:
            if not rule.match:
                return vs, rule.route
            for tm in rule.match:
                if len(tm.sni_hosts) == 1 and tm.sni_hosts[0] == host and _l4_applies(tm, port):
                    return vs, rule.route
    for vs in vss:
        for tcp in vs.spec.tcp:
            if not tcp.match or any(_l4_applies(lm, port) for lm in tcp.match):
                return vs, tcp.route
    return None


def tcp_chain(name: str, vss: Sequence[VirtualService], host: str, port: int, resolver: DestinationResolver
              ) -> listener_components_pb2.FilterChain:
    """The chain ``name`` (= the service's ``inbound-vip|P|tcp|H`` cluster) with its tcp_proxy."""
    proxy = tcp_proxy_pb2.TcpProxy(stat_prefix=name, cluster=name)
    dr_host, subset = host, ""
    found = tcp_route(vss, host, port)
    if found is not None:
        vs, dests = found
        dr_host = qualify(dests[0].destination.host, vs.namespace)
        if len(dests) == 1:
            subset = dests[0].destination.subset or ""
            proxy.cluster = resolver.cluster(dests[0].destination, vs.namespace, port)
        else:
            wc = proxy.weighted_clusters
            for d in dests:
                if d.weight:
                    wc.clusters.add(name=resolver.cluster(d.destination, vs.namespace, port), weight=d.weight)
    dr = resolver.destination_rule(dr_host)
    tp = dr.spec.traffic_policy if dr is not None else None
    tcp = tp.connection_pool.tcp if tp is not None and tp.connection_pool is not None else None
    if tcp is not None:
        if tcp.idle_timeout is not None:
            set_duration(proxy.idle_timeout, tcp.idle_timeout)
        if tcp.max_connection_duration is not None:
            set_duration(proxy.max_downstream_connection_duration, tcp.max_connection_duration)
    if tcp_source_ip_hash(dr, subset):
        proxy.hash_policy.add().source_ip.SetInParent()
    chain = listener_components_pb2.FilterChain(name=name)
    chain.filters.add(name=hbone.TCP_PROXY, typed_config=packed(proxy))
    return chain
