"""Pure translation: immutable config snapshot in, Envoy protos out, no I/O."""

from istiod_lite.translator.output import EnvoyResources
from istiod_lite.translator.waypoint_assembly import WaypointAssembly, translate_waypoint
from istiod_lite.translator.waypoints import Waypoint, WaypointRef, find_waypoints

__all__ = ["EnvoyResources", "Waypoint", "WaypointAssembly", "WaypointRef", "find_waypoints", "translate_waypoint"]
