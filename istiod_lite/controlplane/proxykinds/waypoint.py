"""Waypoint proxies (Envoy): grouped by (waypoint, own address), served ``WaypointAssembly``'s resources.

Every replica of one waypoint shares its translation, serialised once per config change
(``VersionedCache``); replicas differ only in ``connect_terminate``, which binds the proxy's own
address (so several waypoints can share one host), versioned once per group.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from envoy.config.core.v3 import base_pb2

from istiod_lite.controlplane.nodes import bind_ip_of, waypoint_of
from istiod_lite.controlplane.proxykinds.base import Generator, KindContext, ProxyKind
from istiod_lite.controlplane.snapshots import VersionedCache
from istiod_lite.model import ConfigSnapshot
from istiod_lite.safetext import safe
from istiod_lite.translator import WaypointAssembly, find_waypoints
from istiod_lite.translator.binding.waypoints import WaypointRef
from istiod_lite.translator.core.output import LISTENER
from istiod_lite.translator.shape.hbone import CONNECT_TERMINATE
from istiod_lite.xds.resources import EMPTY, ResourceSnapshot, VersionedResource

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WaypointProxies:
    """The group of a waypoint's replicas at one address."""

    waypoint: WaypointRef
    address: str

    def __str__(self) -> str:
        return f"waypoint/{self.waypoint.namespace}/{self.waypoint.name}/{self.address}"


@dataclass
class _Waypoint:
    """One waypoint in the config: its assembly (translation memos) and serialised shared resources."""

    assembly: WaypointAssembly
    versions: VersionedCache = field(default_factory=VersionedCache)
    shared: dict[str, list[VersionedResource]] = field(default_factory=dict)


class WaypointGenerator(Generator[WaypointProxies]):
    """Translates every waypoint in the config at each change (connected or not, so a proxy that
    connects is served at once), and joins its shared part with a group's ``connect_terminate``."""

    def __init__(self, context: KindContext) -> None:
        self._context = context
        self._waypoints: dict[WaypointRef, _Waypoint] = {}
        #: Per group: its ``connect_terminate``, versioned once (dropped with the group or its waypoint).
        self._terminate: dict[WaypointProxies, VersionedResource] = {}
        #: Groups served empty because their waypoint is not in the config (warned about once each).
        self._absent: set[WaypointProxies] = set()

    @property
    def shared(self) -> dict[WaypointRef, dict[str, list[VersionedResource]]]:
        """Per waypoint in the config: what every proxy of it is served, except ``connect_terminate``."""
        return {ref: wp.shared for ref, wp in self._waypoints.items()}

    @property
    def held_groups(self) -> frozenset[WaypointProxies]:
        """Groups this generator keeps state for (their ``connect_terminate``, or a warning given)."""
        return frozenset(self._terminate) | self._absent

    def update(self, config: ConfigSnapshot) -> None:
        refs = {w.ref for w in find_waypoints(config)}
        for ref in sorted(refs):
            wp = self._waypoints.get(ref)
            if wp is None:
                mesh = self._context.mesh
                wp = self._waypoints[ref] = _Waypoint(WaypointAssembly(
                    ref, mesh.trust_domain_or(self._context.trust_domain) if mesh is not None
                    else self._context.trust_domain, mesh, encoded=True))
            wp.shared = wp.versions.versioned(wp.assembly.shared(config))
        for ref in set(self._waypoints) - refs:
            del self._waypoints[ref]
        self._terminate = {g: t for g, t in self._terminate.items() if g.waypoint in refs}
        self._absent = {g for g in self._absent if g.waypoint not in refs}

    def snapshot(self, group: WaypointProxies) -> ResourceSnapshot:
        wp = self._waypoints.get(group.waypoint)
        if wp is None:
            # A connected waypoint whose Gateway is not (or no longer) in the config: an empty but
            # valid config, never a crash.
            if group not in self._absent:
                self._absent.add(group)
                log.warning("proxy of waypoint %s (%s) is connected but the waypoint is not in the config; "
                            "serving it nothing", safe(group.waypoint), safe(group.address))
            return EMPTY
        terminate = self._terminate.get(group)
        if terminate is None:
            terminate = self._terminate[group] = VersionedResource.from_message(
                CONNECT_TERMINATE, LISTENER, wp.assembly.connect_terminate(group.address))
        return ResourceSnapshot.build(
            {t: ([*items, terminate] if t == LISTENER else items) for t, items in wp.shared.items()})

    def release(self, group: WaypointProxies) -> None:
        self._terminate.pop(group, None)
        self._absent.discard(group)


class WaypointKind(ProxyKind[WaypointProxies]):
    """Nodes naming a waypoint Gateway (gateway-name label and a namespace)."""

    name = "waypoint"
    group_type = WaypointProxies

    def recognise(self, node: base_pb2.Node) -> WaypointProxies | None:
        ref = waypoint_of(node)
        return WaypointProxies(ref, bind_ip_of(node)) if ref is not None else None

    def generator(self, context: KindContext) -> WaypointGenerator:
        return WaypointGenerator(context)
