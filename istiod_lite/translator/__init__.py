"""Pure translation: immutable config snapshot in, Envoy protos out, no I/O."""

from istiod_lite.translator.binding.waypoints import Waypoint, WaypointRef, find_waypoints
from istiod_lite.translator.core.output import EnvoyResources
from istiod_lite.translator.waypoint.assembly import WaypointAssembly, proxy_locality_of, translate_waypoint

__all__ = ["EnvoyResources", "Waypoint", "WaypointAssembly", "WaypointRef", "find_waypoints", "proxy_locality_of",
           "translate_waypoint"]
