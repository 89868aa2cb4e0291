"""Waypoint proxies (Envoy): grouped by (waypoint, own address), served ``WaypointAssembly``'s resources.

Every replica of one waypoint in one place shares its translation, serialised once per config
change (``VersionedCache``); replicas differ only in ``connect_terminate``, which binds the
proxy's own address (so several waypoints can share one host), versioned once per group.

"In one place": locality load balancing gives endpoints priorities relative to the proxy, so
the translation is per (waypoint, ``ProxyLocality``) - the proxy's locality and the labels some
``failoverPriority`` compares, found as istiod finds them (the pod at the proxy's address and its
node, else the node metadata's labels and locality).  Replicas in one zone share one translation;
a group's locality is found again at every config change (a Node's labels may change).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from envoy.config.core.v3 import base_pb2

from istiod_lite.controlplane.nodes import GATEWAY_NAME_LABEL, bind_ip_of, labels_of, locality_of, waypoint_of
from istiod_lite.controlplane.proxykinds.base import Generator, KindContext, ProxyKind
from istiod_lite.controlplane.snapshots import VersionedCache
from istiod_lite.model import ConfigSnapshot
from istiod_lite.safetext import safe
from istiod_lite.translator import WaypointAssembly, find_waypoints, proxy_locality_of
from istiod_lite.translator.binding.waypoints import WaypointRef
from istiod_lite.translator.clusters.locality import ProxyLocality
from istiod_lite.translator.core.output import LISTENER
from istiod_lite.translator.shape.hbone import CONNECT_TERMINATE
from istiod_lite.xds.resources import EMPTY, ResourceSnapshot, VersionedResource

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WaypointProxies:
    """The group of a waypoint's replicas at one address."""

    waypoint: WaypointRef
    address: str
    #: What the node says of where it is (Envoy ``node.locality`` as ``region/zone/subzone``) and
    #: its metadata LABELS: used when no pod in the config has the proxy's address.
    node_locality: str = ""
    node_labels: tuple[tuple[str, str], ...] = ()

    def __str__(self) -> str:
        return f"waypoint/{self.waypoint.namespace}/{self.waypoint.name}/{self.address}"


@dataclass
class _Waypoint:
    """One waypoint in the config, translated for proxies in one place: its assembly (translation
    memos) and serialised shared resources."""

    assembly: WaypointAssembly
    versions: VersionedCache = field(default_factory=VersionedCache)
    shared: dict[str, list[VersionedResource]] = field(default_factory=dict)


#: A waypoint translated for proxies in one place.
_Key = tuple[WaypointRef, ProxyLocality]


class WaypointGenerator(Generator[WaypointProxies]):
    """Translates every waypoint in the config at each change (connected or not, so a proxy that
    connects is served at once) - once per distinct proxy locality among its connected groups -
    and joins its shared part with a group's ``connect_terminate``."""

    def __init__(self, context: KindContext) -> None:
        self._context = context
        self._waypoints: dict[_Key, _Waypoint] = {}
        self._config: ConfigSnapshot | None = None
        #: Per group: where its proxies are under the current config.
        self._places: dict[WaypointProxies, ProxyLocality] = {}
        #: Per group: its ``connect_terminate``, versioned once (dropped with the group or its waypoint).
        self._terminate: dict[WaypointProxies, VersionedResource] = {}
        #: Groups served empty because their waypoint is not in the config (warned about once each).
        self._absent: set[WaypointProxies] = set()

    @property
    def shared(self) -> dict[WaypointRef, dict[str, list[VersionedResource]]]:
        """Per waypoint in the config: what every proxy of it is served, except ``connect_terminate``
        (for a waypoint translated for proxies in several places: the first place's)."""
        out: dict[WaypointRef, dict[str, list[VersionedResource]]] = {}
        for (ref, _), wp in self._waypoints.items():
            out.setdefault(ref, wp.shared)
        return out

    @property
    def held_groups(self) -> frozenset[WaypointProxies]:
        """Groups this generator keeps state for (their ``connect_terminate``, or a warning given)."""
        return frozenset(self._terminate) | self._absent

    def _place(self, config: ConfigSnapshot, group: WaypointProxies) -> ProxyLocality:
        return proxy_locality_of(config, group.waypoint, group.address, self._context.mesh,
                                 dict(group.node_labels), group.node_locality)

    def update(self, config: ConfigSnapshot) -> None:
        self._config = config
        refs = {w.ref for w in find_waypoints(config)}
        self._terminate = {g: t for g, t in self._terminate.items() if g.waypoint in refs}
        self._absent = {g for g in self._absent if g.waypoint not in refs}
        self._places = {g: self._place(config, g) for g in self._terminate}
        wanted: dict[WaypointRef, set[ProxyLocality]] = {ref: set() for ref in refs}
        for g, place in self._places.items():
            wanted[g.waypoint].add(place)
        keys = {(ref, place) for ref, places in wanted.items() for place in (places or {ProxyLocality()})}
        for key in sorted(keys, key=lambda k: (k[0], repr(k[1]))):
            self._translated(config, key)
        for key in set(self._waypoints) - keys:
            del self._waypoints[key]

    def _translated(self, config: ConfigSnapshot, key: _Key) -> _Waypoint:
        wp = self._waypoints.get(key)
        if wp is None:
            mesh = self._context.mesh
            trust_domain = (mesh.trust_domain_or(self._context.trust_domain) if mesh is not None
                            else self._context.trust_domain)
            wp = self._waypoints[key] = _Waypoint(WaypointAssembly(key[0], trust_domain, mesh, encoded=True,
                                                                    proxy=key[1],
                                                                    dynamic_dns=self._context.dynamic_dns))
        wp.shared = wp.versions.versioned(wp.assembly.shared(config))
        return wp

    def snapshot(self, group: WaypointProxies) -> ResourceSnapshot:
        config = self._config
        if config is None or group.waypoint not in {ref for ref, _ in self._waypoints}:
            # A connected waypoint whose Gateway is not (or no longer) in the config: an empty but
            # valid config, never a crash.
            if group not in self._absent:
                self._absent.add(group)
                log.warning("proxy of waypoint %s (%s) is connected but the waypoint is not in the config; "
                            "serving it nothing", safe(group.waypoint), safe(group.address))
            return EMPTY
        place = self._places.get(group)
        if place is None:
            place = self._places[group] = self._place(config, group)
        key = (group.waypoint, place)
        wp = self._waypoints.get(key)
        if wp is None:  # the first proxy in this place: translated now, then at every change
            wp = self._translated(config, key)
        terminate = self._terminate.get(group)
        if terminate is None:
            terminate = self._terminate[group] = VersionedResource.from_message(
                CONNECT_TERMINATE, LISTENER, wp.assembly.connect_terminate(group.address))
        return ResourceSnapshot.build(
            {t: ([*items, terminate] if t == LISTENER else items) for t, items in wp.shared.items()})

    def release(self, group: WaypointProxies) -> None:
        self._terminate.pop(group, None)
        self._places.pop(group, None)
        self._absent.discard(group)


class WaypointKind(ProxyKind[WaypointProxies]):
    """Nodes naming a waypoint Gateway (gateway-name label and a namespace)."""

    name = "waypoint"
    group_type = WaypointProxies

    def recognise(self, node: base_pb2.Node) -> WaypointProxies | None:
        ref = waypoint_of(node)
        if ref is None:
            return None
        # the gateway-name label is the waypoint itself: left out, the others say where the proxy is
        labels = tuple(sorted((k, v) for k, v in labels_of(node).items() if k != GATEWAY_NAME_LABEL))
        return WaypointProxies(ref, bind_ip_of(node), locality_of(node), labels)

    def generator(self, context: KindContext) -> WaypointGenerator:
        return WaypointGenerator(context)
