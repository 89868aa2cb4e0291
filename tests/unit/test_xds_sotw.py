"""SotW state machine rules (docs/xds-rules.md), without I/O."""

from __future__ import annotations

from envoy.service.discovery.v3 import discovery_pb2 as d

from istiod_lite.xds import sotw
from istiod_lite.xds.pushmemo import PushMemo
from istiod_lite.xds.typeurls import CLUSTER, ENDPOINT
from tests.unit.xds_helpers import conn, snap


def req(type_url: str, names: list[str] | None = None, nonce: str = "", version: str = "", error: str | None = None
        ) -> d.DiscoveryRequest:
    r = d.DiscoveryRequest(type_url=type_url, resource_names=names or [], response_nonce=nonce, version_info=version)
    if error is not None:
        r.error_detail.message = error
        r.error_detail.code = 3
    return r


def test_initial_wildcard_cds_gets_full_set_then_ack_gets_nothing() -> None:
    c, s = conn(), snap({"a": 1, "b": 2})
    sotw.on_request(c, req(CLUSTER))
    resp = sotw.build_response(c, c.subs[CLUSTER], s)
    assert resp is not None and {r.value for r in resp.resources} and len(resp.resources) == 2
    assert resp.nonce and resp.version_info
    assert sotw.on_request(c, req(CLUSTER, nonce=resp.nonce, version=resp.version_info)).kind == "ack"
    assert sotw.build_response(c, c.subs[CLUSTER], s) is None
    assert c.subs[CLUSTER].state.value == "SYNCED"


def test_version_changes_exactly_when_visible_set_changes() -> None:
    c = conn()
    sotw.on_request(c, req(ENDPOINT, ["a"]))
    r1 = sotw.build_response(c, c.subs[ENDPOINT], snap(endpoints={"a": 1, "b": 1}))
    assert r1 is not None
    sotw.on_request(c, req(ENDPOINT, ["a"], nonce=r1.nonce, version=r1.version_info))
    # b is not subscribed: changing it must not produce a response
    assert sotw.build_response(c, c.subs[ENDPOINT], snap(endpoints={"a": 1, "b": 2})) is None
    r2 = sotw.build_response(c, c.subs[ENDPOINT], snap(endpoints={"a": 2, "b": 2}))
    assert r2 is not None and r2.version_info != r1.version_info


def test_nack_is_not_resent_until_content_changes() -> None:
    c, s = conn(), snap({"a": 1})
    sotw.on_request(c, req(CLUSTER))
    r1 = sotw.build_response(c, c.subs[CLUSTER], s)
    assert r1 is not None
    assert sotw.on_request(c, req(CLUSTER, nonce=r1.nonce, error="bad cluster")).kind == "nack"
    assert c.subs[CLUSTER].state.value == "ERROR"
    assert sotw.build_response(c, c.subs[CLUSTER], s) is None  # no NACK loop (R14)
    r2 = sotw.build_response(c, c.subs[CLUSTER], snap({"a": 2}))
    assert r2 is not None
    assert c.subs[CLUSTER].state.value == "STALE"


def test_stale_nonce_still_applies_added_names() -> None:
    c = conn()
    sotw.on_request(c, req(ENDPOINT, ["a"]))
    r1 = sotw.build_response(c, c.subs[ENDPOINT], snap(endpoints={"a": 1, "b": 1}))
    assert r1 is not None
    result = sotw.on_request(c, req(ENDPOINT, ["a", "b"], nonce="old-nonce"))
    assert result.kind == "stale" and result.names_added
    r2 = sotw.build_response(c, c.subs[ENDPOINT], snap(endpoints={"a": 1, "b": 1}))
    assert r2 is not None and len(r2.resources) == 2


def test_nack_with_new_names_still_subscribes() -> None:
    c = conn()
    sotw.on_request(c, req(ENDPOINT, ["a"]))
    r1 = sotw.build_response(c, c.subs[ENDPOINT], snap(endpoints={"a": 1, "b": 1}))
    assert r1 is not None
    sotw.on_request(c, req(ENDPOINT, ["a", "b"], nonce=r1.nonce, error="x"))
    r2 = sotw.build_response(c, c.subs[ENDPOINT], snap(endpoints={"a": 1, "b": 1}))
    assert r2 is not None and len(r2.resources) == 2


def test_resubscribe_resends_same_version() -> None:
    c, s = conn(), snap(endpoints={"a": 1})
    sotw.on_request(c, req(ENDPOINT, ["a"]))
    r1 = sotw.build_response(c, c.subs[ENDPOINT], s)
    assert r1 is not None
    sotw.on_request(c, req(ENDPOINT, [], nonce=r1.nonce))  # unsubscribe all (not wildcard for EDS)
    r2 = sotw.build_response(c, c.subs[ENDPOINT], s)
    assert r2 is not None and len(r2.resources) == 0
    sotw.on_request(c, req(ENDPOINT, ["a"], nonce=r2.nonce))
    r3 = sotw.build_response(c, c.subs[ENDPOINT], s)
    assert r3 is not None and len(r3.resources) == 1 and r3.version_info == r1.version_info


def test_legacy_wildcard_ends_once_names_are_sent() -> None:
    c, s = conn(), snap({"a": 1, "b": 1})
    sotw.on_request(c, req(CLUSTER))
    assert c.subs[CLUSTER].wildcard
    r1 = sotw.build_response(c, c.subs[CLUSTER], s)
    assert r1 is not None
    sotw.on_request(c, req(CLUSTER, ["a"], nonce=r1.nonce))
    assert not c.subs[CLUSTER].wildcard
    sotw.on_request(c, req(CLUSTER, [], nonce=r1.nonce))
    assert not c.subs[CLUSTER].wildcard  # an empty list is no longer wildcard (R21)
    sotw.on_request(c, req(CLUSTER, ["*", "zzz"], nonce=r1.nonce))
    assert c.subs[CLUSTER].wildcard


def test_cds_push_forces_eds_even_if_it_looks_like_ack() -> None:
    c = conn()
    s = snap({"a": 1}, {"a": 1})
    sotw.on_request(c, req(ENDPOINT, ["a"]))
    e1 = sotw.build_response(c, c.subs[ENDPOINT], s)
    assert e1 is not None
    sotw.on_request(c, req(ENDPOINT, ["a"], nonce=e1.nonce))
    sotw.on_request(c, req(CLUSTER))
    assert sotw.build_response(c, c.subs[CLUSTER], s) is not None
    e2 = sotw.build_response(c, c.subs[ENDPOINT], s)
    assert e2 is not None  # resent after CDS although unchanged (R42)
    sotw.on_request(c, req(ENDPOINT, ["a"], nonce=e2.nonce))  # looks like an ACK
    assert sotw.build_response(c, c.subs[ENDPOINT], s) is not None  # answered anyway (R43)


def test_nonces_are_unique() -> None:
    c = conn()
    nonces = set()
    for i in range(50):
        sotw.on_request(c, req(CLUSTER))
        r = sotw.build_response(c, c.subs[CLUSTER], snap({"a": i}))
        assert r is not None
        nonces.add(r.nonce)
    assert len(nonces) == 50


def _eds_names(resp: object) -> list[str]:
    from envoy.config.endpoint.v3 import endpoint_pb2

    return sorted(endpoint_pb2.ClusterLoadAssignment.FromString(a.value).cluster_name
                  for a in resp.resources)  # type: ignore[attr-defined]


def test_named_type_update_carries_only_changed_resources() -> None:
    """R28: an EDS/RDS response may carry only what changed; a newly named resource is sent in
    full with the rest (added names always answered), and CDS/LDS always carry the full set."""
    c = conn()
    sotw.on_request(c, req(ENDPOINT, ["a", "b", "c"]))
    r1 = sotw.build_response(c, c.subs[ENDPOINT], snap(endpoints={"a": 1, "b": 1, "c": 1}))
    assert r1 is not None and _eds_names(r1) == ["a", "b", "c"]
    sotw.on_request(c, req(ENDPOINT, ["a", "b", "c"], nonce=r1.nonce, version=r1.version_info))
    r2 = sotw.build_response(c, c.subs[ENDPOINT], snap(endpoints={"a": 1, "b": 2, "c": 1}))
    assert r2 is not None and _eds_names(r2) == ["b"]
    sotw.on_request(c, req(ENDPOINT, ["a", "b", "c", "d"], nonce=r2.nonce, version=r2.version_info))
    r3 = sotw.build_response(c, c.subs[ENDPOINT], snap(endpoints={"a": 1, "b": 2, "c": 1, "d": 1}))
    assert r3 is not None and _eds_names(r3) == ["a", "b", "c", "d"]

    sotw.on_request(c, req(CLUSTER))
    r4 = sotw.build_response(c, c.subs[CLUSTER], snap({"x": 1, "y": 1}))
    assert r4 is not None
    sotw.on_request(c, req(CLUSTER, nonce=r4.nonce, version=r4.version_info))
    r5 = sotw.build_response(c, c.subs[CLUSTER], snap({"x": 1, "y": 2}))
    assert r5 is not None and len(r5.resources) == 2


def test_streams_sent_the_same_view_share_its_version_map() -> None:
    """Memory per stream: the name -> version map of a view is one object for every stream sent it
    (SotW never changes it in place), and a later snapshot gives a new one."""
    s = snap({"a": 1, "b": 2})
    one, two = conn(), conn()
    memo = PushMemo()  # the server's, shared by its streams
    for c in (one, two):
        sotw.on_request(c, req(CLUSTER))
        assert sotw.build_response(c, c.subs[CLUSTER], s, memo) is not None
    assert one.subs[CLUSTER].sent is two.subs[CLUSTER].sent
    assert set(one.subs[CLUSTER].sent) == {"a", "b"}
    s2 = snap({"a": 1, "b": 3})
    assert sotw.build_response(one, one.subs[CLUSTER], s2, memo) is not None
    assert one.subs[CLUSTER].sent is not two.subs[CLUSTER].sent
    assert two.subs[CLUSTER].sent["b"] != one.subs[CLUSTER].sent["b"]


def test_streams_of_different_servers_share_nothing() -> None:
    """Each server's streams share that server's memo only."""
    s = snap({"a": 1, "b": 2})
    one, two = conn(), conn()
    for c, memo in ((one, PushMemo()), (two, PushMemo())):
        sotw.on_request(c, req(CLUSTER))
        assert sotw.build_response(c, c.subs[CLUSTER], s, memo) is not None
    assert one.subs[CLUSTER].sent == two.subs[CLUSTER].sent
    assert one.subs[CLUSTER].sent is not two.subs[CLUSTER].sent
