"""KubeSource against the fake API server with the real ``kubernetes`` client: list, watch, recovery."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from istiod_lite.model import ResourceKey
from istiod_lite.sources import DirectorySource, KubeSource, KubeSourceOptions, MergedSource, SourceUpdate
from istiod_lite.sources.kube import KINDS
from tests.support.fakekube import FakeKubeApiServer

VS = "networking.istio.io/v1"
N = len(KINDS)  # one list and one open watch per kind


def ns(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}


def svc(name: str, namespace: str = "default", port: int = 9080) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": namespace},
            "spec": {"ports": [{"name": "http", "port": port}], "selector": {"app": name}},
            "status": {"loadBalancer": {}}}


def vs(name: str, host: str = "reviews", weight: int = 100, namespace: str = "default") -> dict[str, Any]:
    return {"apiVersion": VS, "kind": "VirtualService", "metadata": {"name": name, "namespace": namespace},
            "spec": {"hosts": [host], "http": [{"route": [{"destination": {"host": host}, "weight": weight}]}]},
            "status": {"observedGeneration": 1}}


@pytest.fixture
def kube() -> Iterator[FakeKubeApiServer]:
    with FakeKubeApiServer() as server:
        yield server


@pytest.fixture
def make_source(kube: FakeKubeApiServer, tmp_path: Path) -> Iterator[Callable[..., KubeSource]]:
    made: list[KubeSource] = []

    def make(**kw: Any) -> KubeSource:
        opts = dict(kubeconfig=kube.write_kubeconfig(tmp_path / "kubeconfig"), backoff_initial=0.05,
                    backoff_max=0.2, missing_retry=0.2, sync_timeout=10.0, watch_timeout=30.0)
        opts.update(kw)
        src = KubeSource(KubeSourceOptions(**opts))
        made.append(src)
        return src

    yield make
    for src in made:
        src.close()


class Collector:
    """Runs ``source.run`` on the test's loop and keeps every update it publishes."""

    def __init__(self) -> None:
        self.updates: list[SourceUpdate] = []

    async def __call__(self, update: SourceUpdate) -> None:
        self.updates.append(update)

    async def wait_for(self, pred: Callable[[SourceUpdate], bool], timeout: float = 5.0) -> SourceUpdate:
        deadline = time.monotonic() + timeout
        seen = 0
        while time.monotonic() < deadline:
            for u in self.updates[seen:]:
                if pred(u):
                    return u
            seen = len(self.updates)
            await asyncio.sleep(0.01)
        got = [(u.revision, sorted(map(str, u.changed))) for u in self.updates]
        raise AssertionError(f"no matching update; got {got}")


@contextlib.asynccontextmanager
async def running(src: KubeSource) -> AsyncIterator[Collector]:
    """``src.run`` as a task for the block, collecting its updates; cancelled (and awaited) after."""
    got = Collector()
    task = asyncio.create_task(src.run(got))
    try:
        yield got
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def wait_until(pred: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


def key(kind: str, name: str, namespace: str = "default") -> ResourceKey:
    return ResourceKey(kind, namespace if kind not in ("Namespace", "GatewayClass") else "", name)


def test_initial_sync_lists_every_kind(kube: FakeKubeApiServer, make_source: Callable[..., KubeSource]) -> None:
    kube.apply(ns("default"))
    kube.apply(svc("reviews"))
    kube.apply(vs("reviews"))
    update = make_source().load()
    assert set(update.snapshot.keys()) == {key("Namespace", "default"), key("Service", "reviews"),
                                           key("VirtualService", "reviews")}
    assert update.errors == ()
    assert update.revision == 1
    listed = {name for verb, name in kube.resource_requests() if verb == "list"}
    assert len(listed) == N  # every kind was listed before load() returned


async def test_create_update_delete_propagate_with_exact_changed_keys(
        kube: FakeKubeApiServer, make_source: Callable[..., KubeSource]) -> None:
    kube.apply(svc("reviews"))
    src = make_source()
    async with running(src) as got:
        first = await got.wait_for(lambda u: u.revision == 1)
        reviews = first.snapshot.get_key(key("Service", "reviews"))
        await wait_until(lambda: kube.open_watches() == N)
        kube.apply(vs("reviews"))
        u = await got.wait_for(lambda u: u.revision == 2)
        assert u.changed == {key("VirtualService", "reviews")}
        assert u.snapshot.get_key(key("Service", "reviews")) is reviews  # identity kept
        kube.apply(vs("reviews", weight=100, host="reviews"))  # new resourceVersion, same content
        kube.apply(svc("reviews", port=9090))
        u = await got.wait_for(lambda u: u.revision == 3)
        assert u.changed == {key("Service", "reviews")}
        kube.delete(VS, "VirtualService", "default", "reviews")
        u = await got.wait_for(lambda u: u.revision == 4)
        assert u.changed == {key("VirtualService", "reviews")}
        assert u.snapshot.get_key(key("VirtualService", "reviews")) is None


async def test_invalid_object_rejected_with_field_path_and_last_good_kept(
        kube: FakeKubeApiServer, make_source: Callable[..., KubeSource]) -> None:
    kube.apply(vs("good"))
    kube.apply(vs("bad", weight=-1))
    src = make_source()
    async with running(src) as got:
        first = await got.wait_for(lambda u: u.revision == 1)
        assert first.snapshot.get_key(key("VirtualService", "good")) is not None
        assert first.snapshot.get_key(key("VirtualService", "bad")) is None
        (err,) = first.errors
        assert "VirtualService default/bad: spec.http[0].route[0].weight" in str(err)
        assert str(err).startswith("cluster: ")
        await wait_until(lambda: kube.open_watches() == N)
        kube.apply(vs("good", weight=-5))  # good turns bad: the last good version stays served
        u = await got.wait_for(lambda u: len(u.errors) == 2)
        assert u.changed == frozenset()
        good = key("VirtualService", "good")
        assert u.snapshot.get_key(good) is first.snapshot.get_key(good)
        kube.delete(VS, "VirtualService", "default", "good")  # deleting removes it and its error
        u = await got.wait_for(lambda u: u.revision > 1 and key("VirtualService", "good") in u.changed)
        assert u.snapshot.get_key(key("VirtualService", "good")) is None
        assert len(u.errors) == 1


async def test_dropped_watch_reconnects_without_emptying(
        kube: FakeKubeApiServer, make_source: Callable[..., KubeSource]) -> None:
    kube.apply(svc("reviews"))
    src = make_source()
    async with running(src) as got:
        await got.wait_for(lambda u: u.revision == 1)
        await wait_until(lambda: kube.open_watches() == N)
        lists_before = sum(1 for r in kube.requests if "watch" not in r.query)
        assert kube.drop_watches() == N
        await wait_until(lambda: kube.open_watches() == N)
        kube.apply(svc("ratings"))
        u = await got.wait_for(lambda u: u.revision > 1 and key("Service", "ratings") in u.changed)
        assert u.changed == {key("Service", "ratings")}
        assert u.snapshot.get_key(key("Service", "reviews")) is not None
        assert all(key("Service", "reviews") not in x.changed for x in got.updates[1:])
        assert sum(1 for r in kube.requests if "watch" not in r.query) == lists_before  # resumed, no relist
        kube.end_watches()  # the server-side timeout: resumes too
        await wait_until(lambda: kube.open_watches() == N)


@pytest.mark.parametrize("as_http", [False, True])
async def test_gone_relists_and_removes_objects_deleted_while_away(
        kube: FakeKubeApiServer, make_source: Callable[..., KubeSource], as_http: bool) -> None:
    kube.gone_as_http = as_http
    kube.apply(svc("reviews"))
    kube.apply(svc("ratings"))
    src = make_source()
    async with running(src) as got:
        await got.wait_for(lambda u: u.revision == 1)
        await wait_until(lambda: kube.open_watches() == N)
        kube.drop_watches()
        kube.delete_silently("v1", "Service", "default", "ratings")  # missed, and the history is gone
        u = await got.wait_for(lambda u: u.revision > 1 and key("Service", "ratings") in u.changed)
        assert u.changed == {key("Service", "ratings")}
        assert u.snapshot.get_key(key("Service", "ratings")) is None
        assert u.snapshot.get_key(key("Service", "reviews")) is not None


async def test_gone_error_event_on_open_watch_relists(
        kube: FakeKubeApiServer, make_source: Callable[..., KubeSource]) -> None:
    kube.apply(svc("reviews"))
    src = make_source()
    async with running(src) as got:
        await got.wait_for(lambda u: u.revision == 1)
        await wait_until(lambda: kube.open_watches() == N)
        lists_before = sum(1 for r in kube.requests if "watch" not in r.query)
        kube.compact(expire_open=True)
        await wait_until(lambda: sum(1 for r in kube.requests if "watch" not in r.query) >= lists_before + N)
        await wait_until(lambda: kube.open_watches() == N)
        kube.apply(svc("ratings"))
        u = await got.wait_for(lambda u: u.revision > 1 and key("Service", "ratings") in u.changed)
        assert u.snapshot.get_key(key("Service", "reviews")) is not None


async def test_bookmarks_advance_the_resource_version(
        kube: FakeKubeApiServer, make_source: Callable[..., KubeSource]) -> None:
    src = make_source()
    async with running(src) as got:
        await got.wait_for(lambda u: u.revision == 1)
        await wait_until(lambda: kube.open_watches() == N)
        rv = kube.bookmark()
        await wait_until(lambda: src.resource_versions.get("Pod") == rv)
        kube.drop_watches()
        await wait_until(lambda: kube.open_watches() == N)
        pod_watches = [r for r in kube.requests if r.path == "/api/v1/pods" and "watch=1" in r.query]
        assert f"resourceVersion={rv}" in pod_watches[-1].query
        assert "allowWatchBookmarks=true" in pod_watches[-1].query
        assert len(got.updates) == 1  # a bookmark is not a config change


async def test_missing_crd_is_tolerated_and_picked_up_later(
        kube: FakeKubeApiServer, make_source: Callable[..., KubeSource]) -> None:
    kube.missing = {"virtualservices.networking.istio.io", "httproutes.gateway.networking.k8s.io"}
    kube.apply(svc("reviews"))
    kube.apply(vs("reviews"))
    src = make_source()
    async with running(src) as got:
        first = await got.wait_for(lambda u: u.revision == 1)
        assert set(first.snapshot.keys()) == {key("Service", "reviews")}
        assert first.errors == ()
        kube.missing = set()  # the CRD gets installed: the slow retry lists it
        u = await got.wait_for(lambda u: u.revision > 1 and key("VirtualService", "reviews") in u.changed)
        assert u.snapshot.get_key(key("VirtualService", "reviews")) is not None


def test_load_times_out_when_the_cluster_is_unreachable(tmp_path: Path) -> None:
    with FakeKubeApiServer() as server:
        kubeconfig = server.write_kubeconfig(tmp_path / "kubeconfig", token="wrong")  # every list is 401
        src = KubeSource(KubeSourceOptions(kubeconfig=kubeconfig, sync_timeout=0.5, backoff_initial=0.05))
        try:
            with pytest.raises(TimeoutError, match="initial list not complete"):
                src.load()
        finally:
            src.close()


async def test_merged_yaml_and_cluster(kube: FakeKubeApiServer, make_source: Callable[..., KubeSource],
                                       tmp_path: Path) -> None:
    cfg = tmp_path / "config"
    cfg.mkdir()
    (cfg / "vs.yaml").write_text(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: reviews, namespace: default}\n"
        "spec: {hosts: [reviews], http: [{route: [{destination: {host: reviews-file}}]}]}\n")
    kube.apply(svc("reviews"))
    kube.apply(vs("reviews"))  # conflicts with the file: the file wins
    directory = DirectorySource(cfg, poll_interval=0.05, debounce=0.01)
    merged = MergedSource([directory, make_source()], ["directory", "cluster"])
    got = Collector()
    task = asyncio.create_task(merged.run(got))
    try:
        first = await got.wait_for(lambda u: u.revision == 1)
        assert set(first.snapshot.keys()) == {key("Service", "reviews"), key("VirtualService", "reviews")}
        res = first.snapshot.get_key(key("VirtualService", "reviews"))
        assert res is not None and "reviews-file" in res.model_dump_json()
        (conflict,) = first.errors
        assert str(conflict) == ("cluster: VirtualService default/reviews: also defined by directory, "
                                 "whose definition is kept")
        await wait_until(lambda: kube.open_watches() == N)
        kube.apply(vs("reviews", host="reviews"))  # change to the shadowed definition: invisible
        kube.apply(svc("ratings"))
        u = await got.wait_for(lambda u: u.revision > 1 and key("Service", "ratings") in u.changed)
        assert u.changed == {key("Service", "ratings")}
        (cfg / "vs.yaml").unlink()  # the file's definition goes: the cluster's shows through
        u = await got.wait_for(lambda u: u.revision > 1 and key("VirtualService", "reviews") in u.changed)
        res = u.snapshot.get_key(key("VirtualService", "reviews"))
        assert res is not None and "reviews-file" not in res.model_dump_json()
        assert u.errors == ()
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


def test_serve_needs_a_directory_or_a_cluster() -> None:
    from istiod_lite.cli.main import main

    with pytest.raises(SystemExit, match="needs --config DIR, a cluster"):
        main(["serve", "--no-plaintext"])


def test_build_source_picks_directory_cluster_or_both(kube: FakeKubeApiServer, tmp_path: Path) -> None:
    from istiod_lite.controlplane.app import ControlPlaneOptions, build_source

    kubeconfig = kube.write_kubeconfig(tmp_path / "kubeconfig")
    opts = KubeSourceOptions(kubeconfig=kubeconfig)
    assert isinstance(build_source(ControlPlaneOptions(config_dir=tmp_path)), DirectorySource)
    assert isinstance(build_source(ControlPlaneOptions(config_dir=None, kube=opts)), KubeSource)
    merged = build_source(ControlPlaneOptions(config_dir=tmp_path, kube=opts))
    assert isinstance(merged, MergedSource)
    assert [type(s) for s in merged.sources] == [DirectorySource, KubeSource]  # the directory wins conflicts
    with pytest.raises(ValueError, match="no config source"):
        build_source(ControlPlaneOptions(config_dir=None))


def test_kubeconfig_flag_watches_the_cluster_unless_told_not_to(tmp_path: Path) -> None:
    from istiod_lite.cli.main import build_parser

    args = build_parser().parse_args(["serve", "--kubeconfig", "kc"])
    assert args.config is None and args.kubeconfig == "kc" and not args.no_cluster_config
    args = build_parser().parse_args(["serve", "--in-cluster", "--config", "d", "--no-cluster-config"])
    assert args.in_cluster and args.no_cluster_config


def test_api_server_errors_are_retried_with_backoff_until_synced(
        kube: FakeKubeApiServer, make_source: Callable[..., KubeSource]) -> None:
    import threading

    kube.apply(svc("reviews"))
    kube.fail_status = 503  # every request fails for a while
    threading.Timer(0.4, lambda: setattr(kube, "fail_status", None)).start()
    started = time.monotonic()
    update = make_source().load()
    assert time.monotonic() - started >= 0.4
    assert set(update.snapshot.keys()) == {key("Service", "reviews")}
    failed = [r for r in kube.requests if r.path == "/api/v1/services"]
    assert 2 <= len(failed) <= 12  # retried, but backing off (0.05 s doubling to 0.2 s), not hammering


def test_not_ready_until_every_kind_is_listed(kube: FakeKubeApiServer, make_source: Callable[..., KubeSource]) -> None:
    """One kind whose list keeps failing holds ``load()`` (and so /ready) back, however many others synced."""
    import threading

    kube.apply(svc("reviews"))
    release = threading.Event()

    def pods(req: Any) -> tuple[int, Any]:
        if release.is_set():
            served = kube._serve_resource(req)
            assert served is not None
            return served
        return 500, {"kind": "Status", "code": 500}

    kube.add_route("GET", r"/api/v1/pods", pods)
    src = make_source()
    result: list[SourceUpdate] = []
    loader = threading.Thread(target=lambda: result.append(src.load()))
    loader.start()
    deadline = time.monotonic() + 10
    while sum(1 for r in kube.requests if r.path == "/api/v1/pods" and "watch" not in r.query) < 3:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    # every other kind has been listed by now; load() still has not returned
    assert {n for v, n in kube.resource_requests() if v == "list"} == {k.plural if not k.group else
                                                                      f"{k.plural}.{k.group}" for k in KINDS}
    assert result == []
    release.set()
    loader.join(10)
    assert len(result) == 1 and set(result[0].snapshot.keys()) == {key("Service", "reviews")}


async def test_unreachable_api_server_after_sync_keeps_the_model(
        kube: FakeKubeApiServer, make_source: Callable[..., KubeSource]) -> None:
    kube.apply(svc("reviews"))
    kube.apply(vs("reviews"))
    src = make_source()
    async with running(src) as got:
        first = await got.wait_for(lambda u: u.revision == 1)
        await wait_until(lambda: kube.open_watches() == N)
        kube.fail_status = 503  # every reconnect fails ...
        before = len(kube.requests)
        kube.drop_watches()  # ... after every watch dropped
        await wait_until(lambda: len(kube.requests) >= before + 2 * N)  # each kind retried at least twice
        assert src.current is not None and src.current.snapshot is first.snapshot  # nothing removed
        assert len(got.updates) == 1
        kube.fail_status = None
        kube.apply(svc("ratings"))
        u = await got.wait_for(lambda u: key("Service", "ratings") in u.changed)
        assert u.snapshot.get_key(key("VirtualService", "reviews")) is not None
