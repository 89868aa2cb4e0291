"""Leader election (controlplane/leader.py): several replicas, exactly one writes to the cluster.

Everything runs against the fake API server with the real ``kubernetes`` client, with short leases
(1 s lease, 0.6 s renew deadline, 0.1 s retry) so a takeover is quick.  Replicas are told apart by
their bearer tokens: each write the fake server recorded is attributed to the replica that sent it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp

from istiod_lite.controlplane.app import ControlPlane, ControlPlaneOptions
from istiod_lite.controlplane.debounce import DebounceOptions
from istiod_lite.controlplane.leader import LeaderElectionOptions, LeaderElector
from istiod_lite.controlplane.waypoint_controller import WaypointControllerOptions
from istiod_lite.sources import KubeSourceOptions
from istiod_lite.sources.kube import api_client_for
from tests.e2e.test_kube_source import bookinfo_docs, rejection
from tests.support.fakekube import FakeKubeApiServer, RecordedRequest

NS, LEASE = "istio-system", "istiod-lite-leader"
LEASE_PATH = f"/apis/coordination.k8s.io/v1/namespaces/{NS}/leases"
DURATION, RENEW, RETRY = 1.0, 0.6, 0.1


def election(identity: str) -> LeaderElectionOptions:
    return LeaderElectionOptions(namespace=NS, identity=identity, lease_duration=DURATION, renew_deadline=RENEW,
                                 retry_period=RETRY)


def kube_options(kube: FakeKubeApiServer, tmp_path: Path, token: str) -> KubeSourceOptions:
    kube.client_tokens.add(token)
    return KubeSourceOptions(kubeconfig=kube.write_kubeconfig(tmp_path / f"kubeconfig-{token}", token=token),
                             sync_timeout=10.0, backoff_initial=0.05, backoff_max=0.2)


async def wait_for(cond: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll until ``cond()``; returns the time it became true (monotonic)."""
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.01)
    return time.monotonic()


def leaders(electors: list[LeaderElector]) -> list[str]:
    return [e.identity for e in electors if e.is_leader]


@contextlib.asynccontextmanager
async def running(electors: list[LeaderElector]) -> AsyncIterator[list[LeaderElector]]:
    tasks = [asyncio.create_task(e.run()) for e in electors]
    try:
        yield electors
    finally:
        for e in electors:
            await e.stop(release=False)
        await asyncio.wait_for(asyncio.gather(*tasks), 5)


async def test_one_leader_then_a_takeover_within_the_lease_duration_after_a_crash(tmp_path: Path) -> None:
    with FakeKubeApiServer() as kube:
        api = api_client_for(kube_options(kube, tmp_path, "t"))
        a, b = LeaderElector(api, election("a")), LeaderElector(api, election("b"))
        async with running([a, b]):
            await wait_for(lambda: bool(leaders([a, b])), 3, "nobody became the leader")
            for _ in range(30):  # over several renewals: never two, never none
                assert len(leaders([a, b])) == 1
                await asyncio.sleep(0.03)
            leader, follower = (a, b) if a.is_leader else (b, a)
            lease = kube.lease(NS, LEASE)
            assert lease is not None and lease["spec"]["holderIdentity"] == leader.identity
            assert lease["spec"]["leaseDurationSeconds"] == 1
            transitions = lease["spec"]["leaseTransitions"]
            await leader.stop(release=False)  # a crash: the lease is left to expire
            killed = time.monotonic()
            assert not leader.is_leader  # its writes stop at once
            took = await wait_for(lambda: follower.is_leader, 5, "the follower never took over") - killed
            assert took < DURATION + 2 * RETRY + 0.3, f"takeover took {took:.2f} s"
            lease = kube.lease(NS, LEASE)
            assert lease is not None and lease["spec"]["holderIdentity"] == follower.identity
            assert lease["spec"]["leaseTransitions"] == transitions + 1
            assert not leader.is_leader and follower.transitions == 1


async def test_a_clean_stop_releases_the_lease_for_an_immediate_takeover(tmp_path: Path) -> None:
    with FakeKubeApiServer() as kube:
        api = api_client_for(kube_options(kube, tmp_path, "t"))
        a = LeaderElector(api, election("a"))
        async with running([a]):
            await wait_for(lambda: a.is_leader, 3, "a never became the leader")
            b = LeaderElector(api, election("b"))
            async with running([b]):
                await asyncio.sleep(0.3)
                assert leaders([a, b]) == ["a"]
                await a.stop()  # release
                # released (or already taken by b, which may have been retrying at that very moment)
                assert (kube.lease(NS, LEASE) or {})["spec"]["holderIdentity"] in ("", "b")
                stopped = time.monotonic()
                took = await wait_for(lambda: b.is_leader, 3, "b never took the released lease") - stopped
                assert took < 2 * RETRY + 0.2, f"takeover after a release took {took:.2f} s"


async def test_a_leader_cut_off_from_the_api_server_stops_before_another_can_start(tmp_path: Path) -> None:
    """Renewals of the leader fail (a partition): it must count itself out within the renew deadline,
    which ends before the lease can expire for the other replica; never two leaders at once."""
    with FakeKubeApiServer() as kube:
        api = api_client_for(kube_options(kube, tmp_path, "t"))
        a, b = LeaderElector(api, election("a")), LeaderElector(api, election("b"))
        async with running([a]):
            await wait_for(lambda: a.is_leader, 3, "a never became the leader")

            def refuse_a(request: RecordedRequest) -> tuple[int, Any]:
                if ((request.body or {}).get("spec") or {}).get("holderIdentity") == "a":
                    return 503, {"kind": "Status", "code": 503}
                answer = kube._serve_lease(request)
                assert answer is not None
                return answer

            kube.add_route("PUT", f"{LEASE_PATH}/{LEASE}", refuse_a)
            cut = time.monotonic()
            async with running([b]):
                a_out: float | None = None
                while not b.is_leader:
                    assert time.monotonic() - cut < 5, "b never took over"
                    if a_out is None and not a.is_leader:
                        a_out = time.monotonic()
                    await asyncio.sleep(0.005)
                assert not a.is_leader, "two leaders at once"
                assert a_out is not None and a_out - cut <= RENEW + 0.1, "a kept its lead past the renew deadline"
                assert time.monotonic() - a_out > DURATION - RENEW - 0.1  # b waited for the lease to expire


# -- the gated writers, in two whole control planes ---------------------------------------------------------

def bad_vs(name: str) -> dict[str, Any]:
    return {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": name, "namespace": "bookinfo"},
            "spec": {"hosts": [name], "http": [{"route": [{"destination": {"host": name}, "weight": -1}]}]}}


def writes(kube: FakeKubeApiServer, token: str, since: int = 0) -> list[str]:
    """What replica ``token`` wrote (besides the Lease), from the ``since``-th request on."""
    return [f"{r.method} {r.path}" for r in kube.requests[since:]
            if r.headers.get("authorization") == f"Bearer {token}" and r.method in ("PATCH", "POST", "PUT")
            and not r.path.startswith(LEASE_PATH)]


async def metric(cp: ControlPlane) -> str:
    async with aiohttp.ClientSession() as http, \
            http.get(f"http://127.0.0.1:{cp.monitoring_port}/metrics") as resp:
        text = await resp.text()
    (line,) = [ln for ln in text.splitlines() if ln.startswith("istiod_lite_leader ")]
    return line.split()[1]


async def test_only_the_leader_writes_status_and_deploys_waypoints_and_the_other_takes_over(tmp_path: Path) -> None:
    with FakeKubeApiServer() as kube:
        for doc in bookinfo_docs():
            kube.apply(doc)
        kube.apply(bad_vs("ratings"))
        planes: dict[str, ControlPlane] = {}
        for name in ("a", "b"):
            planes[name] = ControlPlane(ControlPlaneOptions(
                config_dir=None, kube=kube_options(kube, tmp_path, name), grpc_addr="127.0.0.1:0",
                monitoring_addr="127.0.0.1:0", debounce=DebounceOptions(quiet=0.02, max_delay=1.0),
                waypoint_controller=WaypointControllerOptions(image="istiod-lite:test",
                                                              istiod_address="istiod-lite.istio-system.svc"),
                leader_election=election(name)))
        try:
            for cp in planes.values():
                await cp.start()

            def leader_names() -> list[str]:
                return [n for n, cp in planes.items() if cp.elector is not None and cp.elector.is_leader]

            await wait_for(lambda: len(leader_names()) == 1, 3, "no leader")
            (lead,) = leader_names()
            other = "b" if lead == "a" else "a"
            await wait_for(lambda: rejection(kube, "ratings") is not None
                           and kube.get("v1", "Service", "bookinfo", "waypoint") is not None, 5,
                           "the leader wrote neither the status nor the waypoint")
            await asyncio.sleep(0.3)  # let the follower do anything it (wrongly) would
            assert writes(kube, lead) and writes(kube, other) == []
            assert {p.split("/")[-1] for p in writes(kube, lead)} >= {"status", "waypoint"}
            assert (await metric(planes[lead]), await metric(planes[other])) == ("1.0", "0.0")
            assert all(cp.ready for cp in planes.values())  # both serve

            elector = planes[lead].elector
            assert elector is not None
            await elector.stop(release=False)  # the leader's election dies; its replica keeps serving
            killed, mark = time.monotonic(), len(kube.requests)
            kube.apply(bad_vs("reviews"))  # needs a status write, by whoever leads now
            took = await wait_for(lambda: leader_names() == [other], 5, "no takeover") - killed
            assert took < DURATION + 2 * RETRY + 0.3, f"takeover took {took:.2f} s"
            await wait_for(lambda: rejection(kube, "reviews") is not None, 5, "the new leader wrote no status")
            # on taking over, the new leader re-applied the waypoint (its cache was invalidated)
            await wait_for(lambda: any(w.endswith("/deployments/waypoint") for w in writes(kube, other, mark)), 5,
                           "the new leader did not reconcile the waypoint")
            await asyncio.sleep(0.3)
            assert writes(kube, lead, mark) == [], "the old leader wrote after losing the lease"
            assert (await metric(planes[lead]), await metric(planes[other])) == ("0.0", "1.0")
        finally:
            for cp in planes.values():
                await cp.stop(grace=0)
