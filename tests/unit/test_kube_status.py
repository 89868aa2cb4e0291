"""Rejected Istio objects get a status condition saying why (sources/kube_status.py), written with the
real ``kubernetes`` client to the fake API server through a real KubeSource."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from istiod_lite.model import ConfigError, ResourceKey
from istiod_lite.sources import KubeSource, KubeSourceOptions, SourceUpdate
from istiod_lite.sources.kube_status import (
    FIELD_MANAGER,
    Observation,
    StatusReporter,
    StatusReporterOptions,
    condition_message,
)
from tests.support.fakekube import FakeKubeApiServer, RecordedRequest

VS = "networking.istio.io/v1"
N_KINDS = 16


def vs(name: str, weight: int = 100, *, labels: dict[str, str] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": "default"}
    if labels:
        meta["labels"] = labels
    return {"apiVersion": VS, "kind": "VirtualService", "metadata": meta,
            "spec": {"hosts": ["reviews"], "http": [{"route": [{"destination": {"host": "reviews"},
                                                                 "weight": weight}]}]}}


def vs_key(name: str) -> ResourceKey:
    return ResourceKey("VirtualService", "default", name)


def status_patches(kube: FakeKubeApiServer, name: str) -> list[RecordedRequest]:
    return [r for r in kube.requests if r.method == "PATCH" and r.path.endswith(f"/virtualservices/{name}/status")]


def stored(kube: FakeKubeApiServer, name: str) -> dict[str, Any]:
    obj = kube.get(VS, "VirtualService", "default", name)
    assert obj is not None
    return obj


def accepted(kube: FakeKubeApiServer, name: str) -> dict[str, Any] | None:
    conds = [c for c in (stored(kube, name).get("status") or {}).get("conditions") or [] if c["type"] == "Accepted"]
    assert len(conds) <= 1
    return conds[0] if conds else None


@pytest.fixture
def kube() -> Iterator[FakeKubeApiServer]:
    with FakeKubeApiServer() as server:
        yield server


class Running:
    """A KubeSource following the fake cluster on the test's loop."""

    def __init__(self, src: KubeSource, kube: FakeKubeApiServer) -> None:
        self.src = src
        self.kube = kube
        self.updates: list[SourceUpdate] = []

    async def on_update(self, update: SourceUpdate) -> None:
        self.updates.append(update)

    async def until(self, pred: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not pred():
            if time.monotonic() > deadline:
                raise AssertionError(f"never happened: {what}")
            await asyncio.sleep(0.01)

    async def settled(self, *names: str) -> None:
        """The source has applied the newest version of each object and the reporter has nothing left
        to do: every write it was going to send for them has been sent (no sleep-and-hope)."""
        reporter = self.src.status_reporter
        assert reporter is not None

        def done() -> bool:
            return all(self.src._raw_rv.get(vs_key(n)) == stored(self.kube, n)["metadata"]["resourceVersion"]
                       for n in names) and reporter.idle()
        await self.until(done, f"{names} settled")

    def served(self, name: str) -> Any:
        cur = self.src.current
        return cur.snapshot.get_key(vs_key(name)) if cur is not None else None


@contextlib.asynccontextmanager
async def running(kube: FakeKubeApiServer, tmp_path: Path, **kw: Any) -> AsyncIterator[Running]:
    opts: dict[str, Any] = dict(kubeconfig=kube.write_kubeconfig(tmp_path / "kubeconfig"), backoff_initial=0.05,
                                backoff_max=0.2, sync_timeout=10.0, watch_timeout=30.0,
                                status_reporter=StatusReporterOptions(retry_initial=0.01))
    opts.update(kw)
    src = KubeSource(KubeSourceOptions(**opts))
    r = Running(src, kube)
    start = len(kube.requests)
    task = asyncio.create_task(src.run(r.on_update))
    try:
        # (open_watches() would count a previous source's watches the fake has not noticed are gone)
        await r.until(lambda: bool(r.updates) and sum("watch=1" in x.query for x in kube.requests[start:]) >= N_KINDS,
                      "synced and watching")
        yield r
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_invalid_virtual_service_gets_the_reason_once_and_it_is_cleared_when_fixed(
        kube: FakeKubeApiServer, tmp_path: Path) -> None:
    kube.apply({**vs("bad", weight=-1), "status": {"observedGeneration": 1}})  # another writer's status field
    kube.apply(vs("good"))
    async with running(kube, tmp_path) as r:
        await r.settled("bad", "good")
        cond = accepted(kube, "bad")
        assert cond is not None, stored(kube, "bad")
        assert (cond["status"], cond["reason"], cond["observedGeneration"]) == ("False", "Invalid", 1)
        assert cond["message"].startswith("spec.http[0].route[0].weight: ")
        assert cond["message"].endswith("(not served)")
        status = stored(kube, "bad")["status"]
        assert [m["type"]["code"] for m in status["validationMessages"]] == ["IST0106"]
        assert status["observedGeneration"] == 1  # the other writer's field is left alone
        (patch,) = status_patches(kube, "bad")
        assert f"fieldManager={FIELD_MANAGER}" in patch.query and "force=true" in patch.query
        assert patch.headers["content-type"] == "application/apply-patch+yaml"
        assert patch.body["metadata"]["resourceVersion"]  # optimistic concurrency
        assert status_patches(kube, "good") == []  # valid objects are never written to
        assert r.served("good") is not None and r.served("bad") is None

        # No write storm: neither our own write's echo, a metadata-only edit, a relist nor a bookmark
        # changes (generation, errors), so nothing more is sent.
        kube.apply(vs("bad", weight=-1, labels={"team": "a"}))
        kube.bookmark()
        lists = sum("watch" not in x.query for x in kube.requests)
        kube.compact(expire_open=True)
        await r.until(lambda: sum("watch" not in x.query for x in kube.requests) >= lists + N_KINDS, "relisted")
        await r.settled("bad", "good")
        assert len(status_patches(kube, "bad")) == 1

        # A new generation with another error: the condition is updated.
        bad = vs("bad", weight=-2, labels={"team": "a"})
        bad["spec"]["bogus"] = True
        kube.apply(bad)
        await r.settled("bad")
        assert len(status_patches(kube, "bad")) == 2
        cond = accepted(kube, "bad")
        assert cond is not None and cond["observedGeneration"] == 2
        assert cond["message"].startswith("spec.bogus: unknown field; spec.http[0].route[0].weight: ")

        # Fixed: served, and the condition and validation message are removed (our fields only).
        kube.apply(vs("bad", weight=100, labels={"team": "a"}))
        await r.until(lambda: r.served("bad") is not None, "the fixed VirtualService is served")
        await r.settled("bad")
        assert accepted(kube, "bad") is None
        assert stored(kube, "bad")["status"] == {"observedGeneration": 1}
        assert len(status_patches(kube, "bad")) == 3
        assert r.src.status_reporter is not None and r.src.status_reporter.stats.cleared == 1

        # A served object turning bad: the last valid version stays served, and the message says so.
        kube.apply(vs("good", weight=-3))
        await r.settled("good")
        cond = accepted(kube, "good")
        assert cond is not None and cond["message"].endswith("(the last valid version is still served)")
        assert r.served("good") is not None


async def test_a_restart_does_not_rewrite_what_is_already_there(kube: FakeKubeApiServer, tmp_path: Path) -> None:
    kube.apply(vs("bad", weight=-1))
    async with running(kube, tmp_path) as r:
        await r.settled("bad")
    assert len(status_patches(kube, "bad")) == 1
    async with running(kube, tmp_path) as r:  # a new replica / a restart: reads the status, agrees
        await r.settled("bad")
        assert r.src.status_reporter is not None and r.src.status_reporter.stats.skipped >= 1
    assert len(status_patches(kube, "bad")) == 1


@pytest.mark.parametrize("refusal", [403, 404])
async def test_a_refused_write_is_not_retried_and_never_stops_serving(
        kube: FakeKubeApiServer, tmp_path: Path, refusal: int) -> None:
    kube.add_route("PATCH", r".*/status", lambda req: (refusal, {"kind": "Status", "code": refusal}))
    kube.apply(vs("bad", weight=-1))
    kube.apply(vs("good"))
    async with running(kube, tmp_path) as r:
        await r.settled("bad", "good")
        kube.apply(vs("bad", weight=-1, labels={"x": "1"}))  # same generation, same error
        await r.settled("bad")
        assert len(status_patches(kube, "bad")) == 1  # refused once, not asked again
        assert r.src.status_reporter is not None and r.src.status_reporter.stats.by_status == {refusal: 1}
        kube.apply(vs("later"))  # config keeps flowing
        await r.until(lambda: r.served("later") is not None, "a new VirtualService is served")
        assert r.served("good") is not None
        kube.apply(vs("bad", weight=-2))  # a new generation is a new verdict: one more attempt
        await r.settled("bad")
        assert len(status_patches(kube, "bad")) == 2


async def test_server_errors_are_retried_a_bounded_number_of_times(kube: FakeKubeApiServer, tmp_path: Path) -> None:
    kube.add_route("PATCH", r".*/status", lambda req: (503, {"kind": "Status", "code": 503}))
    kube.apply(vs("bad", weight=-1))
    async with running(kube, tmp_path, status_reporter=StatusReporterOptions(attempts=3, retry_initial=0.01)) as r:
        await r.settled("bad")
        assert len(status_patches(kube, "bad")) == 3
        assert r.served("bad") is None and r.src.current is not None


async def test_a_conflict_defers_to_the_newer_version(kube: FakeKubeApiServer, tmp_path: Path) -> None:
    """The object changes while the write is on its way: the stale write is refused (409) and the
    newer version's verdict is what ends up in the status."""
    calls: list[int] = []

    def racing(req: RecordedRequest) -> tuple[int, Any]:
        calls.append(1)
        if len(calls) == 1:
            kube.apply(vs("bad", weight=-7))  # generation 2 lands first
        answer = kube._server_side_apply(req)
        assert answer is not None
        return answer

    kube.add_route("PATCH", r".*/virtualservices/bad/status", racing)
    kube.apply(vs("bad", weight=-1))
    async with running(kube, tmp_path) as r:
        await r.settled("bad")
        assert r.src.status_reporter is not None and r.src.status_reporter.stats.conflicts == 1
        cond = accepted(kube, "bad")
        assert cond is not None and cond["observedGeneration"] == 2
        assert len(calls) == 2


async def test_deleted_object_is_forgotten_and_other_kinds_are_not_written(
        kube: FakeKubeApiServer, tmp_path: Path) -> None:
    route = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
             "metadata": {"name": "r", "namespace": "default"}, "spec": {"bogus": 1}}
    kube.apply(route)
    kube.apply(vs("bad", weight=-1))
    async with running(kube, tmp_path) as r:
        await r.settled("bad")
        assert any("HTTPRoute default/r" in str(e) for e in r.updates[-1].errors)  # rejected (logged) ...
        assert [x for x in kube.requests if "httproutes" in x.path and x.method == "PATCH"] == []  # ... not written
        kube.delete(VS, "VirtualService", "default", "bad")
        await r.until(lambda: vs_key("bad") not in r.src._raw_rv, "the delete is applied")
        reporter = r.src.status_reporter
        assert reporter is not None
        await r.until(reporter.idle, "idle")
        assert vs_key("bad") not in reporter._done
        assert len(status_patches(kube, "bad")) == 1


async def test_reporting_can_be_turned_off(kube: FakeKubeApiServer, tmp_path: Path) -> None:
    kube.apply(vs("bad", weight=-1))
    async with running(kube, tmp_path, report_status=False) as r:
        assert r.src.status_reporter is None
        assert r.updates[0].errors
    assert status_patches(kube, "bad") == []


def test_pending_observations_are_bounded() -> None:
    reporter = StatusReporter(api_client=None, options=StatusReporterOptions(max_pending=2))  # never started

    def obs(name: str, rv: str) -> Observation:
        return Observation(key=vs_key(name), api_version=VS, path=f"/x/{name}", uid="u", resource_version=rv,
                           generation=1, status=None, errors=(ConfigError("bad"),), served=False)

    reporter.observe(obs("a", "1"))
    reporter.observe(obs("b", "1"))
    reporter.observe(obs("a", "2"))  # replaces a's pending observation: no growth
    reporter.observe(obs("c", "1"))  # full: dropped and counted
    assert reporter.stats.dropped == 1
    assert sorted(k.name for k in reporter._pending) == ["a", "b"]
    assert reporter._pending[vs_key("a")].resource_version == "2"


def test_condition_message_lists_every_field_and_is_bounded() -> None:
    errs = (ConfigError("must be between 0 and 100", field_path="spec.http[0].route[0].weight"),
            ConfigError("unknown field", field_path="spec.bogus"))
    assert condition_message(errs, served=False) == (
        "spec.bogus: unknown field; spec.http[0].route[0].weight: must be between 0 and 100 (not served)")
    long = condition_message((ConfigError("x" * 10_000),), served=True)
    assert len(long) < 4200 and long.endswith("... (the last valid version is still served)")
