"""The clusters (and their endpoints) of one service port: ``inbound-vip`` for a service the
waypoint owns, ``outbound`` for a route target it does not own.

Facts: shared/reference/istio-waypoint.md §3 (``buildWaypointInboundVIP``, ``applyDestinationRule``,
``buildSubsetCluster``).  Both directions share the builder (``cluster_policy.service_cluster``) and
the data path: endpoints of ambient pods go through ``connect_originate`` (HBONE), other pods are
plain addresses, and the cluster's ``internal_upstream`` transport passes the pod address on.

Differences Istio makes between the two, kept here:

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

from envoy.config.core.v3 import base_pb2
from google.protobuf import struct_pb2

from istiod_lite.model import ConfigSnapshot
from istiod_lite.model.core import Service, ServicePort
from istiod_lite.model.networking import DestinationRule
from istiod_lite.translator import clusters, endpoints, hbone, inbound, names
from istiod_lite.translator.cluster_policy import service_cluster
from istiod_lite.translator.output import EnvoyResources
from istiod_lite.translator.traffic_policy import cluster_policy

PASSTHROUGH: base_pb2.TransportSocket = hbone.internal_upstream(passthrough=True)


def dr_path(dr: DestinationRule) -> str:
    return clusters.DR_PATH.format(dr.namespace, dr.name)


def _add(out: EnvoyResources, snapshot: ConfigSnapshot, svc: Service, port: ServicePort, name: str,
         meta: struct_pb2.Struct, proto: str, dr: DestinationRule | None, subset: str, subset_meta: str,
         outbound: bool) -> None:
    policy = cluster_policy(dr, port.port, subset)
    config = dr_path(dr) if dr is not None and (outbound or policy is not None) else ""
    c = service_cluster(name, meta, policy, h2=inbound.is_h2(proto), auto=proto == "unsupported",
                        plain_transport=PASSTHROUGH, subset=subset_meta, config=config, alpn_override=outbound)
    out.clusters[name] = c
    if c.HasField("eds_cluster_config"):  # an ORIGINAL_DST (PASSTHROUGH) cluster has no endpoints
        labels = dr.spec.subset(subset).labels if dr is not None and subset else None  # type: ignore[union-attr]
        out.endpoints[name] = endpoints.load_assignment(name, snapshot, svc, port, labels, hbone=True)


def add_inbound_vip(out: EnvoyResources, snapshot: ConfigSnapshot, svc: Service, host: str, meta: struct_pb2.Struct,
                    port: ServicePort, proto: str, kind: str, dr: DestinationRule | None) -> None:
    """``inbound-vip|P|<kind>|H`` and one cluster per DestinationRule subset (``<kind>/<subset>``)."""
    _add(out, snapshot, svc, port, names.inbound_vip_cluster(port.port, host, kind), meta, proto, dr, "", kind,
         outbound=False)
    for ss in dr.spec.subsets if dr is not None else ():
        _add(out, snapshot, svc, port, names.inbound_vip_cluster(port.port, host, kind, ss.name), meta, proto, dr,
             ss.name, f"{kind}/{ss.name}", outbound=False)


def add_outbound(out: EnvoyResources, snapshot: ConfigSnapshot, svc: Service, host: str,
                 dr: DestinationRule | None) -> None:
    """``outbound|P||H`` for every non-UDP port of a route target, plus its subsets."""
    meta = clusters.service_metadata([{"host": host, "name": svc.name, "namespace": svc.namespace}])
    for port in svc.spec.ports:
        proto = inbound.port_protocol(port.name, port.app_protocol, port.protocol)
        if proto == "udp":
            continue
        _add(out, snapshot, svc, port, names.outbound_cluster(port.port, host), meta, proto, dr, "", "",
             outbound=True)
        for ss in dr.spec.subsets if dr is not None else ():
            _add(out, snapshot, svc, port, names.outbound_cluster(port.port, host, ss.name), meta, proto, dr,
                 ss.name, ss.name, outbound=True)
