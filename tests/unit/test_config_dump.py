"""``/debug/config_dump`` pieces: what a stream was sent (xds/dump.py), which proxies a name selects,
and how the command renders it (controlplane/config_dump.py, cli/proxy_config.py)."""

from __future__ import annotations

from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import struct_pb2

from istiod_lite.cli import proxy_config
from istiod_lite.controlplane import config_dump
from istiod_lite.controlplane.proxykinds import WaypointProxies
from istiod_lite.translator import WaypointRef
from istiod_lite.xds import delta, typeurls
from istiod_lite.xds.connection import Connection
from istiod_lite.xds.dump import dump_connection
from tests.unit.xds_helpers import conn, snap


def _delta_request(c: Connection, nonce: str = "", error: str = "") -> None:
    req = discovery_pb2.DeltaDiscoveryRequest(type_url=typeurls.CLUSTER, response_nonce=nonce)
    if error:
        req.error_detail.message = error
    delta.on_request(c, req)


def test_dump_has_the_sent_bytes_and_marks_superseded_versions() -> None:
    c = conn("delta")
    _delta_request(c)
    first = snap(clusters={"a": 1, "b": 2})
    (resp,) = delta.build_responses(c, c.subs[typeurls.CLUSTER], first)
    _delta_request(c, resp.nonce)  # ACK
    (cds,) = dump_connection(c, first)
    assert cds.state == "SYNCED" and [r.name for r in cds.resources] == ["a", "b"]
    assert cds.resources[0].data == first.of_type(typeurls.CLUSTER)["a"].data
    # The group moved on (b changed) but nothing was pushed yet: b's sent version has no bytes any more.
    later = snap(clusters={"a": 1, "b": 3})
    (cds,) = dump_connection(c, later)
    assert not cds.resources[0].superseded and cds.resources[1].superseded and cds.resources[1].data is None
    # The push is rejected: ERROR with the client's message, the rejected resources shown as sent.
    (resp,) = delta.build_responses(c, c.subs[typeurls.CLUSTER], later)
    _delta_request(c, resp.nonce, error="cluster b: bad timeout")
    (cds,) = dump_connection(c, later)
    assert cds.state == "ERROR" and cds.last_error == "cluster b: bad timeout"
    assert cds.resources[1].data == later.of_type(typeurls.CLUSTER)["b"].data
    text = proxy_config.delivery(cds.as_dict())
    assert text.startswith("NACKED (ERROR)") and "cluster b: bad timeout" in text


def _conn(conn_id: str, node_id: str, group: object, ns: str = "", name: str = "") -> Connection:
    meta = struct_pb2.Struct()
    if ns:
        meta.update({"NAMESPACE": ns, "NAME": name})
    return Connection(conn_id=conn_id, variant="delta", peer="p", node=base_pb2.Node(id=node_id, metadata=meta),
                      group=group)


def test_select_by_node_id_then_waypoint_then_pod() -> None:
    wp = WaypointProxies(WaypointRef("shop", "waypoint"), "10.0.0.1")
    a = _conn("c1", "waypoint~10.0.0.1~waypoint-a.shop~x", wp, "shop", "waypoint-a")
    b = _conn("c2", "waypoint~10.0.0.1~waypoint-b.shop~x", wp, "shop", "waypoint-b")
    other = _conn("c3", "shop/waypoint", "g", "other", "pod")  # a node id that looks like NS/NAME
    assert config_dump.select([b, a, other], "shop/waypoint") == [other]  # node id first
    assert config_dump.select([b, a], "shop/waypoint") == [a, b]  # every replica of the waypoint
    assert config_dump.select([b, a], "shop/waypoint-b") == [b]  # the pod
    assert config_dump.select([b, a], "shop/nope") == []


def test_undecodable_resource_is_reported_not_fatal() -> None:
    out = config_dump.decode_resource("type.googleapis.com/unknown.Type", b"\x08\x01")
    assert out["@type"] == "type.googleapis.com/unknown.Type" and "cannot decode" in out["error"]
