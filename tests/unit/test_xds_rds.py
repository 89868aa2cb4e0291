"""RDS names follow the listeners (docs/xds-rules.md R20, R24-R28, R40), SotW and Delta, without I/O.

A small model of Envoy drives the pure state machines: it holds what it was sent, ACKs every
response, and subscribes RDS by the names its listeners' connection managers take (as Envoy's HCM
does: SotW by repeating the whole name list, Delta by subscribe/unsubscribe).  The server's
snapshots go through a listener whose route names are added, renamed and removed; after each
push the client must hold, with the snapshot's content, every route configuration its listeners
name (else a listener would stay warming), and no longer be subscribed to the others.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.service.discovery.v3 import discovery_pb2 as d
from google.protobuf import any_pb2

from istiod_lite.xds import delta, sotw
from istiod_lite.xds.connection import Connection
from istiod_lite.xds.pushmemo import PushMemo
from istiod_lite.xds.resources import ResourceSnapshot
from istiod_lite.xds.typeurls import CLUSTER, LISTENER, PUSH_ORDER, ROUTE
from tests.unit.xds_helpers import conn


def _listener(route_names: list[str]) -> listener_pb2.Listener:
    lst = listener_pb2.Listener(name="main_internal")
    for n in route_names:
        hcm = hcm_pb2.HttpConnectionManager(stat_prefix=n)
        hcm.rds.route_config_name = n
        hcm.rds.config_source.ads.SetInParent()
        fc = lst.filter_chains.add(name=n)
        fc.filters.add(name="envoy.filters.network.http_connection_manager").typed_config.Pack(hcm)
    return lst


def world(routes: dict[str, int]) -> ResourceSnapshot:
    """One listener naming every route in ``routes`` (name -> a content marker), those routes, a cluster."""
    rcs = {n: route_pb2.RouteConfiguration(name=n, virtual_hosts=[{"name": f"v{v}", "domains": ["*"]}])
           for n, v in routes.items()}
    return ResourceSnapshot.from_messages({
        LISTENER: {"main_internal": _listener(sorted(routes))}, ROUTE: rcs,
        CLUSTER: {"c": cluster_pb2.Cluster(name="c")}})


def rds_names_of(listeners: dict[str, listener_pb2.Listener]) -> set[str]:
    out = set()
    for lst in listeners.values():
        for fc in lst.filter_chains:
            hcm = hcm_pb2.HttpConnectionManager()
            fc.filters[-1].typed_config.Unpack(hcm)
            out.add(hcm.rds.route_config_name)
    return out


@dataclass
class FakeEnvoy:
    """What Envoy holds and how it asks, for one ADS stream."""

    variant: str
    #: Keep unsubscribing names later than the listener update (an old listener still draining).
    lagging: bool = False
    conn: Connection = field(init=False)
    listeners: dict[str, listener_pb2.Listener] = field(default_factory=dict)
    routes: dict[str, bytes] = field(default_factory=dict)
    rds_subscribed: set[str] = field(default_factory=set)
    #: (type, names sent, names removed) of every response, in order.
    log: list[tuple[str, list[str], list[str]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.conn = conn(self.variant)
        for t in (CLUSTER, LISTENER):  # wildcard CDS and LDS, as Envoy starts
            self._request(t)

    def _request(self, type_url: str, nonce: str = "", version: str = "", names: list[str] | None = None,
                 sub: list[str] | None = None, unsub: list[str] | None = None) -> None:
        if self.variant == "sotw":
            sotw.on_request(self.conn, d.DiscoveryRequest(type_url=type_url, response_nonce=nonce, version_info=version,
                                                          resource_names=names or []))
        else:
            delta.on_request(self.conn, d.DeltaDiscoveryRequest(
                type_url=type_url, response_nonce=nonce, resource_names_subscribe=sub or [],
                resource_names_unsubscribe=unsub or []))

    def _follow_listeners(self, ack_nonce: str = "", ack_version: str = "") -> None:
        """Subscribe RDS to what the listeners name now (Envoy: the HCMs' RDS providers)."""
        wanted = rds_names_of(self.listeners)
        if self.lagging:
            wanted |= self.rds_subscribed  # the old listener still holds its names
        if wanted == self.rds_subscribed:
            return
        added, removed = sorted(wanted - self.rds_subscribed), sorted(self.rds_subscribed - wanted)
        self.rds_subscribed = wanted
        if self.variant == "sotw":
            self._request(ROUTE, ack_nonce, ack_version, names=sorted(wanted))
        else:
            self._request(ROUTE, sub=added, unsub=removed)

    def drain_old_listeners(self) -> None:
        """The old listener is gone: its names are released."""
        self.lagging = False
        rds = self.conn.subs.get(ROUTE)
        self._follow_listeners(rds.nonce_sent if rds else "", rds.version_sent if rds else "")

    def receive(self, type_url: str, resp: object) -> None:
        msg = resp.decode()  # type: ignore[attr-defined]
        if self.variant == "sotw":
            items = [(any_pb2.Any(type_url=a.type_url, value=a.value), None) for a in msg.resources]
            removed: list[str] = []
        else:
            items = [(r.resource, r.name) for r in msg.resources]
            removed = list(msg.removed_resources)
        sent = []
        if type_url == LISTENER:
            full = {}
            for a, _ in items:
                lst = listener_pb2.Listener()
                a.Unpack(lst)
                full[lst.name] = lst
                sent.append(lst.name)
            if self.variant == "sotw":
                self.listeners = full  # complete state (R27)
            else:
                self.listeners.update(full)
                for n in removed:
                    self.listeners.pop(n, None)
        elif type_url == ROUTE:
            for a, _ in items:
                rc = route_pb2.RouteConfiguration()
                a.Unpack(rc)
                assert rc.name in self.rds_subscribed, f"route {rc.name} pushed unsubscribed (R39)"
                self.routes[rc.name] = a.value
                sent.append(rc.name)
            # Removals are not deletions Envoy acts on for RDS; the listener no longer naming a
            # route is what retires it.
        self.log.append((type_url, sent, removed))
        nonce, version = msg.nonce, getattr(msg, "version_info", "")
        if type_url == LISTENER:
            self._request(LISTENER, nonce, version)  # ACK
            self._follow_listeners()
        elif type_url == ROUTE and self.variant == "sotw":
            self._request(ROUTE, nonce, version, names=sorted(self.rds_subscribed))
        else:
            self._request(type_url, nonce, version, names=[])

    def pump(self, snap: ResourceSnapshot, memo: PushMemo) -> None:
        """What the server's write loop does until the stream is quiet: each type in push order."""
        for _ in range(10):
            sent = False
            for sub in self.conn.ordered_subs():
                if self.variant == "sotw":
                    r = sotw.build_response(self.conn, sub, snap, memo)
                    responses = [r] if r is not None else []
                else:
                    responses = delta.build_responses(self.conn, sub, snap, memo)
                for resp in responses:
                    self.receive(sub.type_url, resp)
                    sent = True
            if not sent:
                return
        raise AssertionError("server never went quiet")

    def check_served(self, snap: ResourceSnapshot) -> None:
        """Every route configuration a held listener names is held, with the snapshot's content."""
        names = rds_names_of(self.listeners)
        assert names <= set(snap.of_type(ROUTE)), "the snapshot lacks a route its own listener names"
        for n in names:
            assert self.routes.get(n) == snap.of_type(ROUTE)[n].any.value, f"{n} not served (listener would warm)"


def _types(log: list[tuple[str, list[str], list[str]]]) -> list[str]:
    return [t for t, _, _ in log]


@pytest.mark.parametrize("variant", ["sotw", "delta"])
def test_rds_names_follow_added_renamed_and_removed_routes(variant: str) -> None:
    memo = PushMemo()
    envoy = FakeEnvoy(variant)
    s1 = world({"r1": 1, "r2": 1})
    envoy.pump(s1, memo)
    envoy.check_served(s1)
    assert _types(envoy.log) == [CLUSTER, LISTENER, ROUTE]  # push order (R40): listener, then its routes
    assert envoy.conn.subs[ROUTE].names == {"r1", "r2"}

    for routes in ({"r1": 1, "r2": 1, "r3": 1},  # added
                   {"r1": 1, "r2b": 1, "r3": 1},  # renamed
                   {"r1": 1}):  # removed
        envoy.log.clear()
        snap = world(routes)
        envoy.pump(snap, memo)
        envoy.check_served(snap)
        assert envoy.conn.subs[ROUTE].names == set(routes)  # dropped names left the subscription
        assert _types(envoy.log)[0] == LISTENER
        assert not [n for t, sent, _ in envoy.log if t == ROUTE for n in sent if n not in routes]
        if variant == "delta":
            # Only the new names are sent; a dropped name is just unsubscribed by the client.
            assert [n for t, sent, _ in envoy.log if t == ROUTE for n in sent] == sorted(
                set(routes) - set(s1.of_type(ROUTE)))
        s1 = snap


@pytest.mark.parametrize("variant", ["sotw", "delta"])
def test_route_edit_is_an_rds_push_only(variant: str) -> None:
    memo = PushMemo()
    envoy = FakeEnvoy(variant)
    envoy.pump(world({"r1": 1, "r2": 1}), memo)
    envoy.log.clear()
    s2 = world({"r1": 1, "r2": 2})  # same listener bytes, one route changed
    envoy.pump(s2, memo)
    assert envoy.log == [(ROUTE, ["r2"], [])]
    envoy.check_served(s2)


def test_delta_subscribed_name_that_no_longer_exists_is_removed() -> None:
    """A client still subscribed to a name the listeners dropped (its old listener draining) is told
    the resource is gone (R26, R29); SotW has no such signal and sends nothing for it (R28)."""
    memo = PushMemo()
    envoy = FakeEnvoy("delta", lagging=True)
    envoy.pump(world({"r1": 1, "r2": 1}), memo)
    envoy.log.clear()
    s2 = world({"r1": 1})
    envoy.pump(s2, memo)
    assert (ROUTE, [], ["r2"]) in envoy.log
    envoy.check_served(s2)
    envoy.log.clear()
    envoy.drain_old_listeners()
    envoy.pump(s2, memo)
    assert envoy.log == [] and envoy.conn.subs[ROUTE].names == {"r1"}


def test_sotw_subscribed_name_that_no_longer_exists_is_not_sent() -> None:
    memo = PushMemo()
    envoy = FakeEnvoy("sotw", lagging=True)
    envoy.pump(world({"r1": 1, "r2": 1}), memo)
    envoy.log.clear()
    s2 = world({"r1": 1})
    envoy.pump(s2, memo)
    assert [sent for t, sent, _ in envoy.log if t == ROUTE] in ([], [[]])
    envoy.check_served(s2)
    envoy.drain_old_listeners()
    envoy.pump(s2, memo)
    assert envoy.conn.subs[ROUTE].names == {"r1"}


def test_sotw_named_listener_responses_stay_complete() -> None:
    """A client naming its listeners (proxyless gRPC) gets every named listener in each response:
    one missing from an LDS response is deleted (R27), even when only another one changed."""
    c = conn()
    memo = PushMemo()
    snap1 = ResourceSnapshot.from_messages({LISTENER: {"a": _listener(["x"]), "b": _listener(["y"])}})
    sotw.on_request(c, d.DiscoveryRequest(type_url=LISTENER, resource_names=["a", "b"]))
    r1 = sotw.build_response(c, c.subs[LISTENER], snap1, memo)
    assert r1 is not None
    sotw.on_request(c, d.DiscoveryRequest(type_url=LISTENER, resource_names=["a", "b"], response_nonce=r1.nonce,
                                          version_info=r1.version_info))
    snap2 = ResourceSnapshot.from_messages({LISTENER: {"a": _listener(["x"]), "b": _listener(["z"])}})
    r2 = sotw.build_response(c, c.subs[LISTENER], snap2, memo)
    assert r2 is not None and len(r2.decode().resources) == 2


def test_push_order_puts_routes_after_listeners() -> None:
    assert PUSH_ORDER.index(LISTENER) < PUSH_ORDER.index(ROUTE)
    assert PUSH_ORDER.index(CLUSTER) < PUSH_ORDER.index(LISTENER)
