"""Which Gateways are waypoints, and which services each one serves (destination-only).

Facts: shared/reference/istio-waypoint.md §1.2-1.3.  A Service is bound by the label
``istio.io/use-waypoint`` on itself, else on its Namespace; ``istio.io/use-waypoint-namespace``
names the waypoint's namespace (default: the object's own); the value ``none`` opts out.
"""

from __future__ import annotations

from dataclasses import dataclass

from istiod_lite.model import ConfigSnapshot
from istiod_lite.model.core import Namespace, Service
from istiod_lite.model.gateway import Gateway

WAYPOINT_CLASS = "istio-waypoint"
USE_WAYPOINT = "istio.io/use-waypoint"
USE_WAYPOINT_NAMESPACE = "istio.io/use-waypoint-namespace"
WAYPOINT_FOR = "istio.io/waypoint-for"


@dataclass(frozen=True, order=True)
class WaypointRef:
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"

    @classmethod
    def parse(cls, text: str) -> WaypointRef:
        ns, sep, name = text.partition("/")
        if not sep or not ns or not name:
            raise ValueError(f"waypoint must be NAMESPACE/NAME, got {text!r}")
        return cls(ns, name)


@dataclass(frozen=True)
class Waypoint:
    ref: WaypointRef
    addresses: tuple[str, ...]
    traffic_type: str


def find_waypoints(snapshot: ConfigSnapshot) -> list[Waypoint]:
    """Every Gateway of class ``istio-waypoint``, sorted by namespace/name."""
    out = []
    for gw in snapshot.of_kind(Gateway):
        if gw.spec.gateway_class_name != WAYPOINT_CLASS:
            continue
        status_addrs = tuple(a.value for a in (gw.status.addresses if gw.status else ()) if a.value)
        spec_addrs = tuple(a.value for a in gw.spec.addresses if a.value)
        out.append(
            Waypoint(
                ref=WaypointRef(gw.namespace, gw.name),
                addresses=status_addrs or spec_addrs,
                traffic_type=gw.metadata.labels.get(WAYPOINT_FOR, "service"),
            )
        )
    return out


def waypoint_of_service(snapshot: ConfigSnapshot, svc: Service) -> WaypointRef | None:
    """The waypoint a Service is bound to, from its own labels or its Namespace's."""
    labels = svc.metadata.labels
    if USE_WAYPOINT not in labels:
        ns = snapshot.get(Namespace, "", svc.namespace)
        labels = ns.metadata.labels if ns is not None else {}
    name = labels.get(USE_WAYPOINT, "")
    if not name or name == "none":
        return None
    return WaypointRef(labels.get(USE_WAYPOINT_NAMESPACE, svc.namespace), name)


def bound_services(snapshot: ConfigSnapshot, ref: WaypointRef) -> list[Service]:
    """Services this waypoint serves, in a stable order (namespace, name)."""
    return [s for s in snapshot.of_kind(Service) if waypoint_of_service(snapshot, s) == ref]
