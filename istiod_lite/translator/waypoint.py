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
from istiod_lite.translator.index import index_of, qualify, virtual_services_for
from istiod_lite.translator.output import EnvoyResources
from istiod_lite.translator.waypoints import WaypointRef, bound_services


@dataclass(frozen=True)
class _ServiceView:
    svc: Service
    host: str


def applicable_virtual_services(snapshot: ConfigSnapshot, ref: WaypointRef, sv: _ServiceView) -> list[VirtualService]:
    """VirtualServices from the waypoint's or the service's namespace, bound to ``mesh``, whose
    hosts match the service; ordered by creation time then name, as Istio merges them."""
    return virtual_services_for(index_of(snapshot), (ref.namespace, sv.svc.namespace), sv.host)


def destination_rule(snapshot: ConfigSnapshot, ref: WaypointRef, sv: _ServiceView) -> DestinationRule | None:
    """The DestinationRule for the service: the service's namespace wins over the waypoint's."""
    drs = index_of(snapshot).destination_rules
    return drs.get((sv.svc.namespace, sv.host)) or drs.get((ref.namespace, sv.host))


def _http_ports(svc: Service) -> list[ServicePort]:
    return [p for p in svc.spec.ports if p.protocol == "TCP"]


def _bind(
    resolve: Callable[[str, int | None, str, str], str | None], namespace: str, listen_port: int
) -> routes.ClusterResolver:
    """Resolve destinations relative to the VirtualService's namespace and listener port."""
    return lambda host, port, subset: resolve(host, port or listen_port, subset, namespace)


@dataclass(frozen=True)
class _Inputs:
    """Everything one service's fragment is computed from, compared by identity.

    Sources keep the same object for an unchanged resource across snapshots, so "same objects"
    means "same config"; the objects are held here, so their ids cannot be reused meanwhile.
    """

    objects: tuple[object, ...]
    owned: tuple[tuple[str, tuple[int, ...]], ...]

    def same_as(self, other: _Inputs) -> bool:
        return (len(self.objects) == len(other.objects)
                and all(a is b for a, b in zip(self.objects, other.objects, strict=True))
                and self.owned == other.owned)


class WaypointTranslator:
    """Translates one waypoint, re-using the fragment of every service whose inputs did not change.

    Pure in the sense that matters: the output is a function of (snapshot, ref) only; the memo
    just skips recomputing fragments that would come out identical.  One instance per waypoint.
    """

    def __init__(self, ref: WaypointRef) -> None:
        self.ref = ref
        self._fragments: dict[str, tuple[_Inputs, EnvoyResources]] = {}
        self.last_rebuilt = 0

    def translate(self, snapshot: ConfigSnapshot) -> EnvoyResources:
        ref = self.ref
        views = [_ServiceView(s, names.service_fqdn(s.name, s.namespace)) for s in bound_services(snapshot, ref)]
        owned = {v.host: v for v in views}
        owned_sig = tuple((v.host, tuple(p.port for p in _http_ports(v.svc))) for v in views)
        out = EnvoyResources()
        fragments: dict[str, tuple[_Inputs, EnvoyResources]] = {}
        rebuilt = 0
        for sv in views:
            dr = destination_rule(snapshot, ref, sv)
            vss = applicable_virtual_services(snapshot, ref, sv)
            pods = endpoints.service_pods(snapshot, sv.svc)
            # VirtualServices may route to other services of this waypoint: their ports matter too.
            inputs = _Inputs((sv.svc, dr, *vss, *pods), owned_sig if vss else ())
            cached = self._fragments.get(sv.host)
            if cached is not None and cached[0].same_as(inputs):
                frag = cached[1]
            else:
                frag = _service_fragment(snapshot, sv, dr, vss, owned)
                rebuilt += 1
            fragments[sv.host] = (inputs, frag)
            out.merge(frag)
        self._fragments = fragments
        self.last_rebuilt = rebuilt
        return out.sorted()


def _service_fragment(
    snapshot: ConfigSnapshot, sv: _ServiceView, dr: DestinationRule | None, vss: list[VirtualService],
    owned: dict[str, _ServiceView],
) -> EnvoyResources:
    def resolve(host: str, port: int | None, subset: str, ctx_ns: str) -> str | None:
        target = owned.get(qualify(host, ctx_ns))
        if target is None:
            return None  # targets outside this waypoint: outbound clusters come with traffic management
        ports = _http_ports(target.svc)
        if port is None:
            if len(ports) != 1:
                return None
            port = ports[0].port
        if not any(p.port == port for p in ports):
            return None
        return names.inbound_vip_cluster(port, target.host, "http", subset)

    out = EnvoyResources()
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
    return out


def translate_waypoint(snapshot: ConfigSnapshot, ref: WaypointRef) -> EnvoyResources:
    """One-shot translation (offline commands, tests); the server keeps a ``WaypointTranslator``."""
    return WaypointTranslator(ref).translate(snapshot)
