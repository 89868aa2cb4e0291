"""What a connecting node says about itself, read from the metadata Istio's agent sends.

Only reading: which proxy kind a node is, and so which group it joins, is each kind's
``recognise`` (``controlplane/proxykinds``); these helpers are what they read.
"""

from __future__ import annotations

from envoy.config.core.v3 import base_pb2

from istiod_lite.addresses import is_ip
from istiod_lite.translator.binding.waypoints import WaypointRef

#: The label Istio's waypoint pods carry (node metadata LABELS): names the waypoint's Gateway.
GATEWAY_NAME_LABEL = "gateway.networking.k8s.io/gateway-name"


def metadata_string(node: base_pb2.Node, key: str) -> str:
    """A string field of the node's metadata; "" if absent or not a string."""
    v = node.metadata.fields.get(key)
    return v.string_value if v is not None and v.HasField("string_value") else ""


def bind_ip_of(node: base_pb2.Node) -> str:
    """The proxy's own address: first IP of metadata INSTANCE_IPS, else the node id's IP field."""
    for candidate in metadata_string(node, "INSTANCE_IPS").split(","):
        if is_ip(candidate.strip()):
            return candidate.strip()
    parts: list[str] = str(node.id).split("~")
    if len(parts) == 4 and is_ip(parts[1]):
        return parts[1]
    return "0.0.0.0"


def labels_of(node: base_pb2.Node) -> dict[str, str]:
    """The string values of the node metadata's LABELS (the proxy's pod labels, as Istio's agent sends them)."""
    labels = node.metadata.fields.get("LABELS")
    if labels is None or not labels.HasField("struct_value"):
        return {}
    return {k: v.string_value for k, v in labels.struct_value.fields.items() if v.HasField("string_value")}


def locality_of(node: base_pb2.Node) -> str:
    """The node's own ``locality`` as ``region/zone/subzone`` ("" when it sent none)."""
    loc = node.locality
    if not (loc.region or loc.zone or loc.sub_zone):
        return ""
    return f"{loc.region}/{loc.zone}/{loc.sub_zone}"


def waypoint_of(node: base_pb2.Node) -> WaypointRef | None:
    """The waypoint Gateway a node is a replica of: the gateway-name label in metadata LABELS, in
    metadata NAMESPACE (else the node id's ``NAME.NAMESPACE`` field); None if either is missing."""
    labels = node.metadata.fields.get("LABELS")
    gw = ""
    if labels is not None and labels.HasField("struct_value"):
        lv = labels.struct_value.fields.get(GATEWAY_NAME_LABEL)
        gw = lv.string_value if lv is not None else ""
    namespace = metadata_string(node, "NAMESPACE")
    parts = node.id.split("~")
    if not namespace and len(parts) == 4:
        namespace = parts[3].split(".", 1)[0]
    return WaypointRef(namespace, gw) if gw and namespace else None


def is_proxyless_grpc(node: base_pb2.Node) -> bool:
    """A gRPC client using xDS directly: user agent gRPC, or metadata GENERATOR=grpc (Istio's agent sets it)."""
    return "grpc" in node.user_agent_name.lower() or metadata_string(node, "GENERATOR") == "grpc"
