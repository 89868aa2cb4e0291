"""Endpoints of a service port: ready pods selected by the Service (and a subset's labels)."""

from __future__ import annotations

from collections.abc import Mapping

from envoy.config.core.v3 import address_pb2, health_check_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2

from istiod_lite.model import ConfigSnapshot
from istiod_lite.model.core import Pod, Service, ServicePort
from istiod_lite.translator.index import index_of
from istiod_lite.translator.names import CONNECT_ORIGINATE, ORIGINAL_DST_KEY
from istiod_lite.translator.waypoints import is_ambient


def target_port(pod: Pod, port: ServicePort) -> int | None:
    tp = port.target_port
    if tp is None:
        return port.port
    if isinstance(tp, int):
        return tp
    if tp.isdigit():
        return int(tp)
    return pod.named_port(tp)


def service_pods(snapshot: ConfigSnapshot, svc: Service, subset_labels: Mapping[str, str] | None = None) -> list[Pod]:
    """Pods with an IP selected by the Service's selector (and the subset's labels, if any)."""
    selector = dict(svc.spec.selector or {})
    if not selector:
        return []
    for k, v in (subset_labels or {}).items():
        if selector.setdefault(k, v) != v:
            return []  # the subset contradicts the Service's own selector: nothing matches both
    return index_of(snapshot).selected_pods(svc.namespace, selector)


def load_assignment(
    cluster_name: str, snapshot: ConfigSnapshot, svc: Service, port: ServicePort,
    subset_labels: Mapping[str, str] | None = None, hbone: bool = False,
) -> endpoint_pb2.ClusterLoadAssignment:
    """Plain socket-address endpoints, sorted by address; unready pods are kept as UNHEALTHY
    (Istio sends unhealthy endpoints with their status and lets Envoy's panic threshold decide)."""
    lb_endpoints = []
    for pod in service_pods(snapshot, svc, subset_labels):
        tp = target_port(pod, port)
        if tp is None:
            continue
        health = health_check_pb2.HEALTHY if pod.ready else health_check_pb2.UNHEALTHY
        if hbone and is_ambient(snapshot, pod):
            ep = _tunnel_endpoint(pod.ips[0], tp, health)
        else:
            ep = endpoint_components_pb2.LbEndpoint(
                endpoint=endpoint_components_pb2.Endpoint(
                    address=address_pb2.Address(
                        socket_address=address_pb2.SocketAddress(address=pod.ips[0], port_value=tp)
                    )
                ),
                health_status=health,
            )
        _workload_metadata(ep, pod)
        ep.load_balancing_weight.value = 1
        lb_endpoints.append(ep)
    lb_endpoints.sort(key=_sort_key)
    cla = endpoint_pb2.ClusterLoadAssignment(cluster_name=cluster_name)
    if lb_endpoints:
        cla.endpoints.add().lb_endpoints.extend(lb_endpoints)
    return cla


def _sort_key(e: endpoint_components_pb2.LbEndpoint) -> tuple[str, str, int]:
    a = e.endpoint.address
    return (a.envoy_internal_address.endpoint_id, a.socket_address.address, a.socket_address.port_value)


def _tunnel_endpoint(ip: str, port: int, health: int) -> endpoint_components_pb2.LbEndpoint:
    """An ambient pod: reached through ``connect_originate`` (HBONE to ``ip:15008``), with the
    pod's ``ip:port`` as the tunnel target (original_dst metadata, passed through by the cluster's
    internal_upstream transport)."""
    target = f"{ip}:{port}"
    ep = endpoint_components_pb2.LbEndpoint(health_status=health)
    internal = ep.endpoint.address.envoy_internal_address
    internal.server_listener_name = CONNECT_ORIGINATE
    internal.endpoint_id = target
    ep.metadata.filter_metadata[ORIGINAL_DST_KEY].fields["local"].string_value = target
    return ep


def _workload_metadata(ep: endpoint_components_pb2.LbEndpoint, pod: Pod) -> None:
    """Istio's ``istio.workload`` endpoint metadata: ``name;namespace;canonical name;revision;cluster``."""
    labels = pod.metadata.labels
    canonical = labels.get("service.istio.io/canonical-name") or labels.get("app.kubernetes.io/name") \
        or labels.get("app") or pod.name
    revision = labels.get("service.istio.io/canonical-revision") or labels.get("app.kubernetes.io/version") \
        or labels.get("version") or ""
    revision = "" if revision == "latest" else revision
    ep.metadata.filter_metadata["istio"].fields["workload"].string_value = \
        f"{pod.name};{pod.namespace};{canonical};{revision};Kubernetes"
