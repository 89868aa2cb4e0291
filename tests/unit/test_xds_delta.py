"""Delta state machine rules (docs/xds-rules.md), without I/O."""

from __future__ import annotations

import pytest
from envoy.service.discovery.v3 import discovery_pb2 as d

from istiod_lite.xds import delta
from istiod_lite.xds.typeurls import CLUSTER, ENDPOINT
from tests.unit.xds_helpers import conn, snap


def req(type_url: str, sub: list[str] | None = None, unsub: list[str] | None = None, nonce: str = "",
        initial: dict[str, str] | None = None, error: str | None = None) -> d.DeltaDiscoveryRequest:
    r = d.DeltaDiscoveryRequest(type_url=type_url, resource_names_subscribe=sub or [],
                                resource_names_unsubscribe=unsub or [], response_nonce=nonce,
                                initial_resource_versions=initial or {})
    if error is not None:
        r.error_detail.message = error
    return r


def names(resps: list[d.DeltaDiscoveryResponse]) -> tuple[list[str], list[str]]:
    return ([r.name for x in resps for r in x.resources], [n for x in resps for n in x.removed_resources])


def test_first_wildcard_request_answered_even_when_empty() -> None:
    c = conn("delta")
    delta.on_request(c, req(CLUSTER))
    resps = delta.build_responses(c, c.subs[CLUSTER], snap())
    assert len(resps) == 1 and not resps[0].resources  # R34


def test_only_changes_are_sent_and_removals_signalled() -> None:
    c = conn("delta")
    delta.on_request(c, req(CLUSTER))
    r1 = delta.build_responses(c, c.subs[CLUSTER], snap({"a": 1, "b": 1}))
    assert sorted(names(r1)[0]) == ["a", "b"]
    delta.on_request(c, req(CLUSTER, nonce=r1[-1].nonce))
    assert c.subs[CLUSTER].state.value == "SYNCED"
    r2 = delta.build_responses(c, c.subs[CLUSTER], snap({"a": 2}))
    assert names(r2) == (["a"], ["b"])
    assert delta.build_responses(c, c.subs[CLUSTER], snap({"a": 2})) == []


def test_reconnect_with_initial_versions_sends_only_differences() -> None:
    s = snap({"a": 1, "b": 1})
    held = {n: r.version for n, r in s.of_type(CLUSTER).items()}
    held["gone"] = "v0"
    held["b"] = "old"
    c = conn("delta")
    delta.on_request(c, req(CLUSTER, initial=held))
    assert names(delta.build_responses(c, c.subs[CLUSTER], s)) == (["b"], ["gone"])  # R33


def test_reconnect_named_subscription_sends_only_differences() -> None:
    """A new stream's first request subscribing by name with held versions (as Envoy reconnects EDS,
    RDS and ECDS) gets only what differs, and removals of held names that are gone (R33 over R32);
    later re-subscribes of the same names are answered in full again (R32)."""
    s = snap(endpoints={"a": 1, "b": 1, "c": 1})
    held = {n: r.version for n, r in s.of_type(ENDPOINT).items()}
    held["b"] = "old"
    held["gone"] = "v0"
    c = conn("delta")
    delta.on_request(c, req(ENDPOINT, ["a", "b", "c", "gone"], initial=held))
    resps = delta.build_responses(c, c.subs[ENDPOINT], s)
    assert names(resps) == (["b"], ["gone"])
    delta.on_request(c, req(ENDPOINT, nonce=resps[-1].nonce))
    unchanged = conn("delta")  # everything held is current: still answered, with nothing in it
    delta.on_request(unchanged, req(ENDPOINT, ["a", "c"], initial={n: held[n] for n in ("a", "c")}))
    resps = delta.build_responses(unchanged, unchanged.subs[ENDPOINT], s)
    assert len(resps) == 1 and names(resps) == ([], [])
    delta.on_request(c, req(ENDPOINT, ["a"]))  # a re-subscribe later on the stream: sent again (R32)
    assert names(delta.build_responses(c, c.subs[ENDPOINT], s)) == (["a"], [])


def test_explicit_subscribe_always_answered_and_absent_names_removed() -> None:
    s = snap(endpoints={"a": 1})
    c = conn("delta")
    delta.on_request(c, req(ENDPOINT, ["a", "missing"]))
    assert names(delta.build_responses(c, c.subs[ENDPOINT], s)) == (["a"], ["missing"])
    delta.on_request(c, req(ENDPOINT, ["a"]))  # re-subscribe: the client may have forgotten (R32)
    assert names(delta.build_responses(c, c.subs[ENDPOINT], s)) == (["a"], [])


def test_unsubscribe_under_wildcard_resends() -> None:
    s = snap({"a": 1})
    c = conn("delta")
    delta.on_request(c, req(CLUSTER, ["*", "a"]))
    delta.build_responses(c, c.subs[CLUSTER], s)
    delta.on_request(c, req(CLUSTER, unsub=["a"]))
    assert names(delta.build_responses(c, c.subs[CLUSTER], s)) == (["a"], [])  # R30
    delta.on_request(c, req(CLUSTER, unsub=["never-subscribed"]))  # phantom (R31)
    assert delta.build_responses(c, c.subs[CLUSTER], s) == []


def test_nack_not_resent_and_subscription_changes_applied() -> None:
    s = snap(endpoints={"a": 1, "b": 1})
    c = conn("delta")
    delta.on_request(c, req(ENDPOINT, ["a"]))
    r1 = delta.build_responses(c, c.subs[ENDPOINT], s)
    delta.on_request(c, req(ENDPOINT, ["b"], nonce=r1[-1].nonce, error="bad"))
    assert c.subs[ENDPOINT].state.value == "ERROR"
    assert names(delta.build_responses(c, c.subs[ENDPOINT], s)) == (["b"], [])  # a not resent


def test_cluster_change_resends_endpoints() -> None:
    c = conn("delta")
    delta.on_request(c, req(CLUSTER))
    delta.on_request(c, req(ENDPOINT, ["a"]))
    s1 = snap({"a": 1}, {"a": 1})
    delta.build_responses(c, c.subs[CLUSTER], s1)
    delta.build_responses(c, c.subs[ENDPOINT], s1)
    s2 = snap({"a": 2}, {"a": 1})
    assert names(delta.build_responses(c, c.subs[CLUSTER], s2)) == (["a"], [])
    assert names(delta.build_responses(c, c.subs[ENDPOINT], s2)) == (["a"], [])  # R42/R43


def test_large_changes_are_split_under_size_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(delta, "MAX_RESPONSE_BYTES", 40)
    c = conn("delta")
    delta.on_request(c, req(CLUSTER))
    resps = delta.build_responses(c, c.subs[CLUSTER], snap({f"cluster-{i}": i for i in range(10)}))
    assert len(resps) > 1
    assert sorted(names(resps)[0]) == sorted(f"cluster-{i}" for i in range(10))
    assert len({r.nonce for r in resps}) == len(resps)


@pytest.mark.parametrize("seed", range(20))
def test_client_view_converges_under_random_changes(seed: int) -> None:
    """Differential check of the incremental (diff-once) path: after every step the resources a
    simulated client holds, built only from our responses, equal exactly what it subscribes to."""
    import random

    rng = random.Random(seed)
    universe = [f"r{i}" for i in range(12)]
    c = conn("delta")
    wildcard = rng.random() < 0.5
    delta.on_request(c, req(ENDPOINT, sub=["*"] if wildcard else rng.sample(universe, 4)))
    held: dict[str, str] = {}
    for _step in range(30):
        action = rng.random()
        if action < 0.2 and not wildcard:
            delta.on_request(c, req(ENDPOINT, sub=rng.sample(universe, 2), unsub=rng.sample(universe, 2)))
        current = snap(endpoints={n: rng.randint(1, 3) for n in universe if rng.random() < 0.7})
        for _ in range(rng.randint(1, 2)):  # sometimes the same snapshot is evaluated twice
            for resp in delta.build_responses(c, c.subs[ENDPOINT], current):
                for r in resp.resources:
                    held[r.name] = r.version
                for n in resp.removed_resources:
                    held.pop(n, None)
                delta.on_request(c, req(ENDPOINT, nonce=resp.nonce))
        sub = c.subs[ENDPOINT]
        want = {n: r.version for n, r in current.of_type(ENDPOINT).items() if sub.wants(n)}
        # A client also drops what it unsubscribed from itself.
        held = {n: v for n, v in held.items() if sub.wants(n)}
        assert held == want, f"step {_step}"
