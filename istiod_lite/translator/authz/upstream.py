"""Clusters for the services the authorization filters call: ext_authz providers and remote JWKS.

The filters name ``outbound|<port>||<host>`` (Istio's ``BuildSubsetKey``); a waypoint has no
outbound clusters of its own, so the translator adds them (``waypoint._authz_resources``):

* a host that is a known service (Kubernetes Service FQDN or ServiceEntry host) gets that
  service's ordinary outbound clusters (EDS or DNS, its DestinationRule applied; endpoints
  through HBONE when ambient), as Istio's JWKS/ext_authz clusters are the service's outbound ones;
* any other host - a JWKS URI outside the mesh, or a port the service does not declare - gets a
  cluster of its own (``request_cluster``): ``STATIC`` for an IP literal, else ``STRICT_DNS``
  (IPv4, Envoy's default refresh), HTTP/2 for a gRPC ext_authz service, and for
  an ``https`` JWKS URI TLS as a DestinationRule ``SIMPLE`` would originate it: SNI, the system
  roots (over SDS, ``file-root:system``) and the host required in the certificate's SAN.
  Istio instead lets istiod fetch such keys (``PILOT_JWT_ENABLE_REMOTE_JWKS=hybrid``); this
  translator does no I/O.
"""

from __future__ import annotations

import ipaddress

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import address_pb2, base_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2

from istiod_lite.model.networking import ClientTLSSettings
from istiod_lite.translator import clusters
from istiod_lite.translator.authz.extauthz import ClusterRequest
from istiod_lite.translator.protos import packed
from istiod_lite.translator.upstream_tls import TLS_SOCKET, upstream_tls_context

_C = cluster_pb2.Cluster


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _tls(host: str, ip: bool) -> base_pb2.TransportSocket:
    """Istio's SIMPLE TLS origination (``upstream_tls``): SNI (not for an IP literal), the system
    roots over SDS (``file-root:system``, from the agent) and the host required in the SAN."""
    settings = ClientTLSSettings(mode="SIMPLE", sni="" if ip else host, subject_alt_names=(host,))
    return base_pb2.TransportSocket(name=TLS_SOCKET, typed_config=packed(upstream_tls_context(settings, h2=False)))


def request_cluster(req: ClusterRequest) -> cluster_pb2.Cluster:
    """A cluster straight to ``req.host:req.port`` (no service in the registry backs it)."""
    ip = _is_ip(req.host)
    c = cluster_pb2.Cluster(name=req.name, type=_C.STATIC if ip else _C.STRICT_DNS, lb_policy=_C.ROUND_ROBIN,
                            circuit_breakers=clusters.default_circuit_breakers())
    c.connect_timeout.seconds = clusters.DEFAULT_CONNECT_TIMEOUT_S
    if not ip:
        # Envoy's default refresh (5 s); ``dns_refresh_rate``/``respect_dns_ttl`` are deprecated in 1.40.
        c.dns_lookup_family = _C.V4_ONLY
    endpoint = endpoint_components_pb2.LbEndpoint()
    endpoint.endpoint.address.socket_address.CopyFrom(
        address_pb2.SocketAddress(address=req.host, port_value=req.port))
    c.load_assignment.CopyFrom(endpoint_pb2.ClusterLoadAssignment(
        cluster_name=req.name, endpoints=[endpoint_components_pb2.LocalityLbEndpoints(lb_endpoints=[endpoint])]))
    if req.h2:
        c.typed_extension_protocol_options[clusters.HTTP_PROTOCOL_OPTIONS].CopyFrom(
            packed(clusters.h2_protocol_options()))
    if req.tls:
        c.transport_socket.CopyFrom(_tls(req.host, ip))
    return c
