"""Which group a connecting node belongs to, from the metadata Istio's agent sends.

Every replica of one waypoint shares one translation; the group adds the proxy's own address
(``waypoint/<namespace>/<gateway name>/<ip>``), because ``connect_terminate`` binds it, so several
waypoints can share one host.  Replicas with the same address share one set of bytes; replicas with
different addresses differ in that one listener only (the rest is serialised once per waypoint).
"""

from __future__ import annotations

from envoy.config.core.v3 import base_pb2

from istiod_lite.addresses import is_ip

#: The label Istio's waypoint pods carry (node metadata LABELS): names the waypoint's Gateway.
GATEWAY_NAME_LABEL = "gateway.networking.k8s.io/gateway-name"

#: Nodes that are not a known kind of proxy get this group: an empty but valid config.
UNKNOWN_GROUP = "unknown"
#: Proxyless gRPC clients (user agent gRPC, or metadata GENERATOR=grpc as Istio's agent sets):
#: they subscribe by exact name, so one shared set serves them all.
PROXYLESS_GROUP = "proxyless"


def _field(node: base_pb2.Node, key: str) -> str:
    v = node.metadata.fields.get(key)
    return v.string_value if v is not None and v.HasField("string_value") else ""


def waypoint_group(namespace: str, name: str, bind_ip: str = "0.0.0.0") -> str:
    return f"waypoint/{namespace}/{name}/{bind_ip}"


def bind_ip_of(node: base_pb2.Node) -> str:
    """The proxy's own address: first IP of metadata INSTANCE_IPS, else the node id's IP field."""
    for candidate in _field(node, "INSTANCE_IPS").split(","):
        if is_ip(candidate.strip()):
            return candidate.strip()
    parts: list[str] = str(node.id).split("~")
    if len(parts) == 4 and is_ip(parts[1]):
        return parts[1]
    return "0.0.0.0"


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
        return waypoint_group(namespace, gw, bind_ip_of(node))
    if "grpc" in node.user_agent_name.lower() or _field(node, "GENERATOR") == "grpc":
        return PROXYLESS_GROUP
    return UNKNOWN_GROUP


def parse_group(group: str) -> tuple[str, str, str] | None:
    """``waypoint/NS/NAME/IP`` -> (NS, NAME, IP); anything else -> None."""
    parts = group.split("/")
    if len(parts) != 4 or parts[0] != "waypoint" or not all(parts[1:]):
        return None
    return parts[1], parts[2], parts[3]
