"""Envoy's dynamic forward proxy (DFP) for ``DYNAMIC_DNS`` ServiceEntries: wildcard egress.

A ``DYNAMIC_DNS`` entry names a wildcard (``*.example.com``); the waypoint learns the real name
per request and resolves it itself.  Istio builds (facts: ``buildDFPCluster``,
``BuildWaypointInboundDFPFilter``, ``buildSNIDFPFilter``, ``BuildDNSCacheName``):

* the host's ``inbound-vip`` clusters as ``envoy.clusters.dynamic_forward_proxy`` clusters
  (``lb_policy: CLUSTER_PROVIDED``, no endpoints): the upstream is the address the DNS cache holds
  for the request's host;
* for an HTTP port, ``envoy.filters.http.dynamic_forward_proxy`` in the chain's connection manager
  (it resolves ``:authority`` before the router picks the cluster; no per-route config);
* for a TLS port, ``envoy.filters.network.sni_dynamic_forward_proxy`` before the tcp_proxy (it
  resolves the ClientHello's SNI, read by the TLS inspector, on the port of the service);
* one DNS cache per host, named ``<host>_dfp_dns_cache``, shared by the filter and the clusters
  (Envoy keys caches by name and requires the same settings wherever a name is used), looking up
  IPv4 only (``SelectDNSLookupFamily`` for a waypoint with IPv4 addresses).

The DNS resolver is not set by istiod: Envoy's default (c-ares with the proxy's own
``/etc/resolv.conf``).  ``DynamicDnsOptions.resolvers`` is an istiod-lite option (``serve
--dynamic-dns-resolver``) that points every DFP cache at given name servers instead.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import address_pb2, base_pb2, extension_pb2
from envoy.config.listener.v3 import listener_components_pb2
from envoy.extensions.clusters.dynamic_forward_proxy.v3 import cluster_pb2 as dfp_cluster_pb2
from envoy.extensions.common.dynamic_forward_proxy.v3 import dns_cache_pb2
from envoy.extensions.filters.http.dynamic_forward_proxy.v3 import dynamic_forward_proxy_pb2 as dfp_http_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.filters.network.sni_dynamic_forward_proxy.v3 import sni_dynamic_forward_proxy_pb2 as sni_pb2
from envoy.extensions.network.dns_resolver.cares.v3 import cares_dns_resolver_pb2
from google.protobuf import struct_pb2

from istiod_lite.translator.core.protos import packed
from istiod_lite.translator.shape import cluster_templates

DFP_CLUSTER_TYPE = "envoy.clusters.dynamic_forward_proxy"
DFP_HTTP_FILTER = "envoy.filters.http.dynamic_forward_proxy"
SNI_DFP_FILTER = "envoy.filters.network.sni_dynamic_forward_proxy"
CARES_RESOLVER = "envoy.network.dns_resolver.cares"
_CACHE_SUFFIX = "_dfp_dns_cache"
_C = cluster_pb2.Cluster


@dataclass(frozen=True)
class DynamicDnsOptions:
    """How the server serves ``DYNAMIC_DNS`` entries (fixed for a server run).

    ``wildcard_tls``: serve their TLS ports (SNI forward proxy) - Istio's
    ``ENABLE_WILDCARD_HOST_SERVICE_ENTRIES_FOR_TLS``, off by default because a client can put any
    name under the wildcard in its SNI and reach whatever that name resolves to.
    ``resolvers``: ``(ip, port)`` name servers for the DFP DNS caches; empty (the default, as
    istiod) leaves Envoy's default resolver, the proxy's system configuration."""

    wildcard_tls: bool = False
    resolvers: tuple[tuple[str, int], ...] = ()

    def __post_init__(self) -> None:
        for ip, port in self.resolvers:
            ipaddress.ip_address(ip)  # a name server is an address: ValueError otherwise
            if not 0 < port < 65536:
                raise ValueError(f"DNS resolver port {port} out of range")


DEFAULT_OPTIONS = DynamicDnsOptions()


def parse_resolver(value: str) -> tuple[str, int]:
    """``IP[:PORT]`` (``[v6]:PORT`` for IPv6; port 53 by default) as an ``(ip, port)`` pair."""
    host, port = value, 53
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        if rest:
            port = int(rest.removeprefix(":"))
    elif value.count(":") == 1:
        host, _, p = value.partition(":")
        port = int(p)
    ipaddress.ip_address(host)
    if not 0 < port < 65536:
        raise ValueError(f"port {port} out of range")
    return host, port


def cache_name(host: str) -> str:
    """``BuildDNSCacheName``: the host's DNS cache, shared by its filters and clusters."""
    return host + _CACHE_SUFFIX


def dns_cache_config(host: str, options: DynamicDnsOptions = DEFAULT_OPTIONS) -> dns_cache_pb2.DnsCacheConfig:
    """The one cache config of ``host`` (identical wherever it appears, as Envoy requires)."""
    cfg = dns_cache_pb2.DnsCacheConfig(name=cache_name(host), dns_lookup_family=_C.V4_ONLY)
    if options.resolvers:
        cares = cares_dns_resolver_pb2.CaresDnsResolverConfig()
        for ip, port in options.resolvers:
            cares.resolvers.append(address_pb2.Address(
                socket_address=address_pb2.SocketAddress(address=ip, port_value=port)))
        cfg.typed_dns_resolver_config.CopyFrom(
            extension_pb2.TypedExtensionConfig(name=CARES_RESOLVER, typed_config=packed(cares)))
    return cfg


def dfp_cluster(name: str, host: str, services: struct_pb2.Struct, subset: str,
                transport_socket: base_pb2.TransportSocket,
                options: DynamicDnsOptions = DEFAULT_OPTIONS) -> cluster_pb2.Cluster:
    """An ``inbound-vip`` cluster of a ``DYNAMIC_DNS`` host: Istio's connect timeout and circuit
    breakers, ``istio`` metadata (services, subset), no load balancing settings (the cluster
    provides the host) and the usual ``internal_upstream`` transport (plain for an IP upstream)."""
    c = cluster_pb2.Cluster(name=name, lb_policy=_C.CLUSTER_PROVIDED,
                            circuit_breakers=cluster_templates.default_circuit_breakers(),
                            transport_socket=transport_socket)
    c.connect_timeout.seconds = cluster_templates.DEFAULT_CONNECT_TIMEOUT_S
    c.cluster_type.name = DFP_CLUSTER_TYPE
    c.cluster_type.typed_config.CopyFrom(packed(dfp_cluster_pb2.ClusterConfig(
        dns_cache_config=dns_cache_config(host, options))))
    istio = c.metadata.filter_metadata["istio"]
    istio.CopyFrom(services)
    if subset:
        istio.fields["subset"].string_value = subset
    return c


def http_filter(host: str, options: DynamicDnsOptions = DEFAULT_OPTIONS) -> hcm_pb2.HttpFilter:
    """The HTTP DFP filter of ``host``'s chains: resolves ``:authority`` in the host's cache."""
    cfg = dfp_http_pb2.FilterConfig(dns_cache_config=dns_cache_config(host, options))
    return hcm_pb2.HttpFilter(name=DFP_HTTP_FILTER, typed_config=packed(cfg))


def sni_filter(host: str, port: int, options: DynamicDnsOptions = DEFAULT_OPTIONS) -> listener_components_pb2.Filter:
    """The SNI DFP network filter of ``host``'s TLS chain: resolves the SNI, connects on ``port``."""
    cfg = sni_pb2.FilterConfig(dns_cache_config=dns_cache_config(host, options), port_value=port)
    return listener_components_pb2.Filter(name=SNI_DFP_FILTER, typed_config=packed(cfg))


__all__ = ["DEFAULT_OPTIONS", "DynamicDnsOptions", "cache_name", "dfp_cluster", "dns_cache_config", "http_filter",
           "parse_resolver", "sni_filter"]
