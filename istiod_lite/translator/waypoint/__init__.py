"""The waypoint proxy kind's translation: the per-waypoint translator (``translator.py``) and the one
assembly path the server, ``istiod-lite translate`` and the golden tests share (``assembly.py``)."""

from istiod_lite.translator.waypoint.assembly import WaypointAssembly, translate_waypoint
from istiod_lite.translator.waypoint.translator import (
    DEFAULT_TRUST_DOMAIN,
    WaypointTranslator,
    applicable_virtual_services,
    bound_views,
    destination_rule,
    service_routes,
)

__all__ = [
    "DEFAULT_TRUST_DOMAIN",
    "WaypointAssembly",
    "WaypointTranslator",
    "applicable_virtual_services",
    "bound_views",
    "destination_rule",
    "service_routes",
    "translate_waypoint",
]
