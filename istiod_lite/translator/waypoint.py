"""Translate everything one waypoint serves into Envoy resources.  Pure and deterministic.

Input: an immutable ``ConfigSnapshot`` and the waypoint's reference.  Output: ``EnvoyResources``
whose content depends only on the input (sorted iteration everywhere), so identical input gives
byte-identical output and content-hash versions only move on real change.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from istiod_lite.model import ConfigSnapshot
from istiod_lite.model.core import Service, ServicePort
from istiod_lite.model.networking import DestinationRule, VirtualService
from istiod_lite.translator import clusters, endpoints, listeners, names, routes
from istiod_lite.translator.output import EnvoyResources
from istiod_lite.translator.waypoints import WaypointRef, bound_services


@dataclass(frozen=True)
class _ServiceView:
    svc: Service
    host: str


def _qualify(host: str, namespace: str) -> str:
    """Short names in Istio configs are relative to the config's namespace."""
    return host if "." in host else names.service_fqdn(host, namespace)


def _host_matches(pattern: str, host: str) -> bool:
    if pattern == "*":
        return True
    if pattern.startswith("*."):
        return host.endswith(pattern[1:])
    return pattern == host


def applicable_virtual_services(snapshot: ConfigSnapshot, ref: WaypointRef, sv: _ServiceView) -> list[VirtualService]:
    """VirtualServices from the waypoint's or the service's namespace, bound to ``mesh``, whose
    hosts match the service; ordered by creation time then name, as Istio merges them."""
    out = []
    for vs in snapshot.of_kind(VirtualService):
        if vs.namespace not in (ref.namespace, sv.svc.namespace):
            continue
        if vs.spec.gateways and "mesh" not in vs.spec.gateways:
            continue
        if any(_host_matches(_qualify(h, vs.namespace), sv.host) for h in vs.spec.hosts):
            out.append(vs)
    out.sort(key=lambda v: (v.metadata.creation_timestamp, v.namespace, v.name))
    return out


def destination_rule(snapshot: ConfigSnapshot, ref: WaypointRef, sv: _ServiceView) -> DestinationRule | None:
    """The DestinationRule for the service: the service's namespace wins over the waypoint's."""
    found: dict[str, DestinationRule] = {}
    for dr in snapshot.of_kind(DestinationRule):
        if dr.spec.workload_selector is not None:
            continue  # Istio ignores selector-scoped DRs for waypoint clusters
        if dr.namespace in (ref.namespace, sv.svc.namespace) and _qualify(dr.spec.host, dr.namespace) == sv.host:
            found.setdefault(dr.namespace, dr)
    return found.get(sv.svc.namespace) or found.get(ref.namespace)


def _http_ports(svc: Service) -> list[ServicePort]:
    return [p for p in svc.spec.ports if p.protocol == "TCP"]


def _bind(
    resolve: Callable[[str, int | None, str, str], str | None], namespace: str, listen_port: int
) -> routes.ClusterResolver:
    """Resolve destinations relative to the VirtualService's namespace and listener port."""
    return lambda host, port, subset: resolve(host, port or listen_port, subset, namespace)


def translate_waypoint(snapshot: ConfigSnapshot, ref: WaypointRef) -> EnvoyResources:
    out = EnvoyResources()
    views = [_ServiceView(s, names.service_fqdn(s.name, s.namespace)) for s in bound_services(snapshot, ref)]
    owned = {v.host: v for v in views}

    def resolve(host: str, port: int | None, subset: str, ctx_ns: str) -> str | None:
        sv = owned.get(_qualify(host, ctx_ns))
        if sv is None:
            return None  # targets outside this waypoint: outbound clusters come with traffic management
        ports = _http_ports(sv.svc)
        if port is None:
            if len(ports) != 1:
                return None
            port = ports[0].port
        if not any(p.port == port for p in ports):
            return None
        return names.inbound_vip_cluster(port, sv.host, "http", subset)

    for sv in views:
        dr = destination_rule(snapshot, ref, sv)
        vss = applicable_virtual_services(snapshot, ref, sv)
        for port in _http_ports(sv.svc):
            cluster = names.inbound_vip_cluster(port.port, sv.host)
            meta = [{"host": sv.host, "name": sv.svc.name, "namespace": sv.svc.namespace}]
            out.clusters[cluster] = clusters.eds_cluster(cluster, meta)
            out.endpoints[cluster] = endpoints.load_assignment(cluster, snapshot, sv.svc, port)
            for subset in dr.spec.subsets if dr else ():
                sub_cluster = names.inbound_vip_cluster(port.port, sv.host, "http", subset.name)
                out.clusters[sub_cluster] = clusters.eds_cluster(sub_cluster, meta)
                out.endpoints[sub_cluster] = endpoints.load_assignment(
                    sub_cluster, snapshot, sv.svc, port, subset.labels
                )
            route_list = []
            for vs in vss:
                route_list.extend(routes.vs_routes(vs, port.port, _bind(resolve, vs.namespace, port.port)))
            if not route_list:
                route_list = [routes.default_route(cluster, sv.host, port.port)]
            rcfg = routes.route_configuration(cluster, f"inbound|http|{port.port}", route_list)
            for vip in sv.svc.vips:
                name = f"{vip}_{port.port}"
                out.listeners[name] = listeners.vip_http_listener(name, vip, port.port, rcfg)
    return out.sorted()
