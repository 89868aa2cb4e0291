"""``/debug/config_dump?proxyID=...``: what the server last sent a proxy, decoded, with its ACK state.

The server's view of ``istioctl proxy-config``: Envoy's own config dump says what the proxy runs;
this says what the control plane handed it and whether the proxy accepted it (ACK) or rejected it
(NACK, with Envoy's error).  The xDS layer gives opaque bytes per type (``xds/dump.py``); this
module, which may know the Envoy schemas, picks the proxies and turns the bytes into protobuf JSON
(the same JSON as ``istiod-lite translate``).

Which proxies ``proxyID`` names, in this order (the first rule that matches any stream wins):

1. a node id, exactly (``waypoint~10.0.0.5~waypoint-7d9f.shop~shop.svc.cluster.local``);
2. ``NS/NAME`` of a waypoint Gateway: every connected replica of that waypoint (its group);
3. ``NS/NAME`` of a proxy's pod (node metadata ``NAMESPACE`` and ``NAME``, as pilot-agent sends).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from google.protobuf import any_pb2, json_format

from istiod_lite.controlplane.proxykinds import WaypointProxies
from istiod_lite.xds.connection import Connection
from istiod_lite.xds.dump import TypeDump


@dataclass(frozen=True)
class ProxyDump:
    """One stream's dump, before decoding (taken on the event loop, decoded off it)."""

    status: dict[str, object]
    waypoint: str
    pod: str
    types: list[TypeDump]


def _metadata(conn: Connection, key: str) -> str:
    fields = conn.node.metadata.fields
    value = fields.get(key)
    return value.string_value if value is not None else ""


def _waypoint_of(conn: Connection) -> str:
    group = conn.group
    return str(group.waypoint) if isinstance(group, WaypointProxies) else ""


def _pod_of(conn: Connection) -> str:
    ns, name = _metadata(conn, "NAMESPACE"), _metadata(conn, "NAME")
    return f"{ns}/{name}" if ns and name else ""


def select(connections: Iterable[Connection], proxy_id: str) -> list[Connection]:
    """The streams ``proxy_id`` names (module docstring), sorted by connection id."""
    conns = sorted(connections, key=lambda c: c.conn_id)
    for rule in (lambda c: c.node_id == proxy_id, lambda c: _waypoint_of(c) == proxy_id,
                 lambda c: _pod_of(c) == proxy_id):
        chosen = [c for c in conns if rule(c)]
        if chosen:
            return chosen
    return []


def take(conn: Connection, types: list[TypeDump]) -> ProxyDump:
    return ProxyDump(status=conn.status(), waypoint=_waypoint_of(conn), pod=_pod_of(conn), types=types)


def decode_resource(type_url: str, data: bytes) -> dict[str, Any]:
    """Protobuf JSON of one resource with ``@type``; a resource that cannot be decoded (a type this
    process does not know) says so instead of failing the whole dump."""
    packed = any_pb2.Any(type_url=type_url, value=data)
    try:
        out: dict[str, Any] = json_format.MessageToDict(packed, preserving_proto_field_name=True)
    except Exception as exc:  # unknown (nested) type or bytes that do not parse
        return {"@type": type_url, "error": f"cannot decode: {exc}", "bytes": len(data)}
    return out


def render(dumps: list[ProxyDump]) -> dict[str, Any]:
    """The endpoint's JSON: per proxy, its sync status and per type the decoded resources."""
    proxies = []
    for d in dumps:
        types = []
        for t in d.types:
            entry = t.as_dict()
            entry["resources"] = [
                {"name": r.name, "version": r.version, "superseded": r.superseded,
                 "resource": decode_resource(t.type_url, r.data) if r.data is not None else None}
                for r in t.resources]
            types.append(entry)
        proxies.append({**d.status, "waypoint": d.waypoint, "pod": d.pod, "dump": types})
    return {"proxies": proxies}
