"""The per-waypoint translator: everything one waypoint serves, as Envoy resources."""

from istiod_lite.translator.waypoint.translator import (
    DEFAULT_TRUST_DOMAIN,
    WaypointTranslator,
    applicable_virtual_services,
    bound_views,
    connect_terminate_for,
    destination_rule,
    service_routes,
    translate_waypoint,
)

__all__ = [
    "DEFAULT_TRUST_DOMAIN",
    "WaypointTranslator",
    "applicable_virtual_services",
    "bound_views",
    "connect_terminate_for",
    "destination_rule",
    "service_routes",
    "translate_waypoint",
]
