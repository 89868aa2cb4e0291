"""The clusters (and their endpoints) of one service port: ``inbound-vip`` for a service the
waypoint owns, ``outbound`` for a route target it does not own.

Facts: docs/istio-waypoint-shape.md §3 (``buildWaypointInboundVIP``, ``applyDestinationRule``,
``buildSubsetCluster``, ``buildCluster``).  Both directions share the builder
(``cluster_policy.service_cluster``) and the data path: endpoints of ambient workloads go through
``connect_originate`` (HBONE), others are plain addresses, and the cluster's ``internal_upstream``
transport passes the workload address on.

The discovery type follows the service's resolution (``convertResolution``):

* EDS for Services and ``STATIC`` ServiceEntries (endpoints in EDS);
* ``STRICT_DNS`` (``DNS``) or ``LOGICAL_DNS`` (``DNS_ROUND_ROBIN``) with the endpoints inline in
  ``load_assignment``, ``dns_lookup_family: V4_ONLY`` (the waypoint's addresses are IPv4),
  ``dns_refresh_rate`` = the mesh default (60s) and ``respect_dns_ttl``; a DNS cluster without
  endpoints is not generated (Istio's ``buildCluster`` returns nil for it);
* ``ORIGINAL_DST`` + ``CLUSTER_PROVIDED`` for ``NONE`` (passthrough to the address the client
  dialled, restored by ``main_internal``'s original_dst filter; a ``targetPort`` overrides the port).

Differences Istio makes between the two directions, kept here:

* names: ``inbound-vip|P|http[/subset]|H`` (a cluster per chain kind) vs ``outbound|P|subset|H``;
* ``istio.subset`` metadata: ``http``/``tcp``/``http/v1`` on every inbound-vip cluster, the bare
  subset name on outbound subset clusters;
* ``istio.config`` (the DestinationRule's path): inbound-vip clusters only when a traffic policy
  applies to them, outbound clusters whenever a DestinationRule exists (plus ``alpn_override``
  when they originate TLS).

Simplification: Istio's outbound clusters choose the transport per endpoint
(``transport_socket_matches``: HBONE when the endpoint is tunnel-capable, else plaintext); here the
``internal_upstream`` socket is used for both, which behaves the same (on a plain socket it only
wraps the inner transport).
"""

from __future__ import annotations

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from google.protobuf import struct_pb2

from istiod_lite.model import ConfigSnapshot
from istiod_lite.model.networking import DestinationRule
from istiod_lite.translator.binding import protocols
from istiod_lite.translator.binding.service_model import DNS, DNS_ROUND_ROBIN, NONE, PortInfo, ServiceInfo
from istiod_lite.translator.clusters import endpoints, locality_lb
from istiod_lite.translator.clusters.locality_lb import EndpointLb, LbContext
from istiod_lite.translator.clusters.policy_apply import service_cluster
from istiod_lite.translator.clusters.policy_select import cluster_policy
from istiod_lite.translator.core import names
from istiod_lite.translator.core.output import EnvoyResources
from istiod_lite.translator.shape import cluster_templates, hbone

PASSTHROUGH: base_pb2.TransportSocket = hbone.internal_upstream(passthrough=True)
#: Istio's mesh default ``dnsRefreshRate``.
DNS_REFRESH_RATE_S = 60
_C = cluster_pb2.Cluster
_DNS_TYPES = {DNS: _C.STRICT_DNS, DNS_ROUND_ROBIN: _C.LOGICAL_DNS}


def dr_path(dr: DestinationRule) -> str:
    return cluster_templates.DR_PATH.format(dr.namespace, dr.name)


def _add(out: EnvoyResources, snapshot: ConfigSnapshot, svc: ServiceInfo, port: PortInfo, name: str,
         meta: struct_pb2.Struct, dr: DestinationRule | None, subset: str, subset_meta: str, outbound: bool,
         ctx: LbContext | None) -> None:
    connect_timeout = ctx.mesh.connect_timeout if ctx is not None and ctx.mesh is not None else None
    policy = cluster_policy(dr, port.number, subset)
    config = dr_path(dr) if dr is not None and (outbound or policy is not None) else ""
    c = service_cluster(name, meta, policy, h2=protocols.is_h2(port.protocol),
                        auto=port.protocol == "unsupported", plain_transport=PASSTHROUGH, subset=subset_meta,
                        config=config, alpn_override=outbound, connect_timeout=connect_timeout)
    labels = dr.spec.subset(subset).labels if dr is not None and subset else None  # type: ignore[union-attr]
    lb: EndpointLb | None = None
    if svc.resolution != NONE and c.type == _C.EDS:
        ctx = ctx or LbContext()
        loc_lb = locality_lb.cluster_lb(snapshot, ctx.mesh, svc.source, policy.load_balancer if policy else None)
        locality_lb.apply_to_cluster(c, loc_lb)
        if loc_lb is not None:
            lb = EndpointLb(loc_lb, ctx.proxy, c.HasField("outlier_detection"))
    if svc.resolution == NONE and c.type == _C.EDS:
        _passthrough(c, port)
    elif svc.resolution in _DNS_TYPES and c.type == _C.EDS:
        cla = endpoints.service_load_assignment(name, snapshot, svc, port, labels, hbone=False, lb=lb)
        if not cla.endpoints:
            return  # Istio does not build a DNS cluster without endpoints
        _dns(c, _DNS_TYPES[svc.resolution], cla)
    out.clusters[name] = c
    if c.HasField("eds_cluster_config"):  # ORIGINAL_DST and DNS clusters have no EDS endpoints
        out.endpoints[name] = endpoints.service_load_assignment(name, snapshot, svc, port, labels, hbone=True, lb=lb)


def _passthrough(c: cluster_pb2.Cluster, port: PortInfo) -> None:
    """``NONE`` resolution: connect to the original destination (``ORIGINAL_DST`` + ``CLUSTER_PROVIDED``),
    on the port's ``targetPort`` if it has one (Istio's ``ENABLE_RESOLUTION_NONE_TARGET_PORT``, on by default)."""
    c.type = _C.ORIGINAL_DST
    c.lb_policy = _C.CLUSTER_PROVIDED
    c.ClearField("eds_cluster_config")
    if isinstance(port.target, int) and port.target > 0:
        c.original_dst_lb_config.upstream_port_override.value = port.target


def _dns(c: cluster_pb2.Cluster, kind: int, cla: endpoint_pb2.ClusterLoadAssignment) -> None:
    """``DNS``/``DNS_ROUND_ROBIN``: Envoy resolves the (inline) endpoint names itself."""
    c.type = kind
    c.ClearField("eds_cluster_config")
    c.dns_lookup_family = _C.V4_ONLY
    c.dns_refresh_rate.seconds = DNS_REFRESH_RATE_S
    c.respect_dns_ttl = True
    c.load_assignment.CopyFrom(cla)


def add_inbound_vip(out: EnvoyResources, snapshot: ConfigSnapshot, svc: ServiceInfo, meta: struct_pb2.Struct,
                    port: PortInfo, kind: str, dr: DestinationRule | None, ctx: LbContext | None = None) -> None:
    """``inbound-vip|P|<kind>|H`` and one cluster per DestinationRule subset (``<kind>/<subset>``);
    ``ctx``: the mesh config and proxy locality that locality load balancing reads."""
    _add(out, snapshot, svc, port, names.inbound_vip_cluster(port.number, svc.host, kind), meta, dr, "", kind,
         outbound=False, ctx=ctx)
    for ss in dr.spec.subsets if dr is not None else ():
        _add(out, snapshot, svc, port, names.inbound_vip_cluster(port.number, svc.host, kind, ss.name), meta, dr,
             ss.name, f"{kind}/{ss.name}", outbound=False, ctx=ctx)


def add_outbound(out: EnvoyResources, snapshot: ConfigSnapshot, svc: ServiceInfo, dr: DestinationRule | None,
                 ctx: LbContext | None = None) -> None:
    """``outbound|P||H`` for every non-UDP port of a route target, plus its subsets."""
    meta = cluster_templates.service_metadata(svc.metadata())
    for port in svc.ports:
        if port.protocol == "udp":
            continue
        _add(out, snapshot, svc, port, names.outbound_cluster(port.number, svc.host), meta, dr, "", "",
             outbound=True, ctx=ctx)
        for ss in dr.spec.subsets if dr is not None else ():
            _add(out, snapshot, svc, port, names.outbound_cluster(port.number, svc.host, ss.name), meta, dr,
                 ss.name, ss.name, outbound=True, ctx=ctx)
