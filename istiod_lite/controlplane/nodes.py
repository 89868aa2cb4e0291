"""Which group a connecting node belongs to, from the metadata Istio's agent sends.

Groups are the unit of translation: every replica of one waypoint shares the group
``waypoint/<namespace>/<gateway name>`` and therefore one translation and one set of bytes.
"""

from __future__ import annotations

from envoy.config.core.v3 import base_pb2

from istiod_lite.agent.bootstrap import GATEWAY_NAME_LABEL

#: Nodes that are not a known kind of proxy get this group: an empty but valid config.
UNKNOWN_GROUP = "unknown"
#: Proxyless gRPC clients (user agent gRPC, or metadata GENERATOR=grpc as Istio's agent sets):
#: they subscribe by exact name, so one shared set serves them all.
PROXYLESS_GROUP = "proxyless"


def _field(node: base_pb2.Node, key: str) -> str:
    v = node.metadata.fields.get(key)
    return v.string_value if v is not None and v.HasField("string_value") else ""


def waypoint_group(namespace: str, name: str) -> str:
    return f"waypoint/{namespace}/{name}"


def group_of(node: base_pb2.Node) -> str:
    """``waypoint/NS/NAME`` for waypoints (node id type ``waypoint`` or a gateway-name label)."""
    labels = node.metadata.fields.get("LABELS")
    gw = ""
    if labels is not None and labels.HasField("struct_value"):
        lv = labels.struct_value.fields.get(GATEWAY_NAME_LABEL)
        gw = lv.string_value if lv is not None else ""
    parts = node.id.split("~")
    namespace = _field(node, "NAMESPACE")
    if not namespace and len(parts) == 4:
        namespace = parts[3].split(".", 1)[0]
    if gw and namespace:
        return waypoint_group(namespace, gw)
    if "grpc" in node.user_agent_name.lower() or _field(node, "GENERATOR") == "grpc":
        return PROXYLESS_GROUP
    return UNKNOWN_GROUP


def parse_group(group: str) -> tuple[str, str] | None:
    """``waypoint/NS/NAME`` -> (NS, NAME); anything else -> None."""
    kind, _, rest = group.partition("/")
    ns, _, name = rest.partition("/")
    if kind != "waypoint" or not ns or not name:
        return None
    return ns, name
