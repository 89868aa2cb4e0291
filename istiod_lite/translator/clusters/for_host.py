"""A cluster straight to ``host:port`` for a service the registry does not know: what the
authorization filters (ext_authz providers, remote JWKS) and tracing providers (collectors) call
when their host is not a Kubernetes Service or ServiceEntry port.

``STATIC`` for an IP literal, else ``STRICT_DNS`` (IPv4, Envoy's default refresh: the
``dns_refresh_rate``/``respect_dns_ttl`` fields are deprecated in Envoy 1.40); HTTP/2 when the
caller speaks gRPC; for TLS, what a DestinationRule ``SIMPLE`` would originate: SNI (not for an IP
literal), the system roots over SDS (``file-root:system``, from the agent) and the host required
in the certificate's SAN.
"""

from __future__ import annotations

import ipaddress

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import address_pb2, base_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2

from istiod_lite.model.networking import ClientTLSSettings
from istiod_lite.translator.clusters.upstream_tls import TLS_SOCKET, upstream_tls_context
from istiod_lite.translator.core.protos import packed
from istiod_lite.translator.shape import cluster_templates

_C = cluster_pb2.Cluster


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _tls(host: str, ip: bool) -> base_pb2.TransportSocket:
    settings = ClientTLSSettings(mode="SIMPLE", sni="" if ip else host, subject_alt_names=(host,))
    return base_pb2.TransportSocket(name=TLS_SOCKET, typed_config=packed(upstream_tls_context(settings, h2=False)))


def host_cluster(name: str, host: str, port: int, *, h2: bool = False, tls: bool = False) -> cluster_pb2.Cluster:
    """The cluster ``name`` to ``host:port`` with Istio's connect timeout and circuit breakers."""
    ip = _is_ip(host)
    c = cluster_pb2.Cluster(name=name, type=_C.STATIC if ip else _C.STRICT_DNS, lb_policy=_C.ROUND_ROBIN,
                            circuit_breakers=cluster_templates.default_circuit_breakers())
    c.connect_timeout.seconds = cluster_templates.DEFAULT_CONNECT_TIMEOUT_S
    if not ip:
        c.dns_lookup_family = _C.V4_ONLY
    endpoint = endpoint_components_pb2.LbEndpoint()
    endpoint.endpoint.address.socket_address.CopyFrom(address_pb2.SocketAddress(address=host, port_value=port))
    c.load_assignment.CopyFrom(endpoint_pb2.ClusterLoadAssignment(
        cluster_name=name, endpoints=[endpoint_components_pb2.LocalityLbEndpoints(lb_endpoints=[endpoint])]))
    if h2:
        c.typed_extension_protocol_options[cluster_templates.HTTP_PROTOCOL_OPTIONS].CopyFrom(
            packed(cluster_templates.h2_protocol_options()))
    if tls:
        c.transport_socket.CopyFrom(_tls(host, ip))
    return c


__all__ = ["host_cluster"]
