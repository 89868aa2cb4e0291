"""VirtualService behaviour proven with real HTTP through the real ambient path (issue 6).

Every request goes client -> ``hbone forward`` (the client's ztunnel) -> the waypoint's Envoy (agent,
CA certificate, secure xDS from the in-process control plane) -> real HTTP pods on loopback. One mesh
serves the whole module: each test rewrites ``vs.yaml`` and waits until the waypoint serves that very
version (every VirtualService written here starts with a ``/__gen`` direct-response route naming its
generation, and Envoy swaps a route table atomically), then measures the behaviour.

Routes come over RDS (tests/e2e/test_rds_live_routes.py: open connections follow an edit on their
next request); the probes and every test still use fresh connections (a new client session per
generation), so no test inherits another's connection state.

Service ``reviews`` (VIP:9080) has three pods, ``reviews-v1``/``-v2``/``-v3``, one per subset
``v1``/``v2``/``v3`` of its DestinationRule. Statistical checks use +-5 standard deviations of the
binomial count: a correct proxy fails one in ~1.7 million runs, while the wrong ratios the checks are
meant to catch lie further out than that.
"""

from __future__ import annotations

import asyncio
import json
import math
import textwrap
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from multidict import CIMultiDictProxy

from istiod_lite.agent.runner import WaypointAgent
from tests.support.backends import BackendGroup, BackendPod, Step, start_backends
from tests.support.mesh import Mesh, ambient_mesh, exclusive_ip
from tests.support.meshyaml import SHOP_WAYPOINT
from tests.support.ports import alloc_vip
from tests.support.wait import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

BASE = SHOP_WAYPOINT + """apiVersion: v1
kind: Service
metadata: {{name: reviews, namespace: shop}}
spec:
  clusterIP: {vip}
  selector: {{app: reviews}}
  ports: [{{name: http, port: 9080, targetPort: {port}}}]
{pods}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: reviews, namespace: shop}}
spec:
  host: reviews
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
  - {{name: v3, labels: {{version: v3}}}}
"""

POD = """---
apiVersion: v1
kind: Pod
metadata: {{name: reviews-{v}, namespace: shop, labels: {{app: reviews, version: {v}}}}}
status: {{podIP: {ip}}}"""

VS_HEAD = """apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews, namespace: shop}}
spec:
  hosts: [reviews]
  http:
  - name: generation
    match: [{{uri: {{exact: /__gen}}}}]
    directResponse: {{status: 200, body: {{string: gen-{gen}}}}}
"""

V1 = "{destination: {host: reviews, subset: v1}}"
#: Envoy's timers (millisecond granularity, a coarse clock) fire up to ~2 ms early as measured from
#: here: every lower bound on a measured time allows this much.
TIMER_SLACK = 0.01


def sd5(n: int, p: float) -> float:
    """Five standard deviations of a Binomial(n, p) count."""
    return 5 * math.sqrt(n * p * (1 - p))


@dataclass
class Reply:
    status: int
    headers: CIMultiDictProxy[str]
    body: dict[str, Any] | None  # a backend's JSON echo; None for Envoy's own responses
    text: str
    elapsed: float

    @property
    def pod(self) -> str | None:
        return self.headers.get("x-pod")

    def seen(self, header: str) -> Any:
        """What the backend received for ``header`` (str, list for repeated, None if absent)."""
        assert self.body is not None, f"not a backend response: {self.status} {self.text!r}"
        return self.body["headers"].get(header)


def new_session(force_close: bool = False) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=200, force_close=force_close))


@dataclass
class Env:
    mesh: Mesh
    agent: WaypointAgent
    cfg: Path
    addr: str
    pods: BackendGroup
    http: aiohttp.ClientSession
    gen: int = 0
    applied: list[str] = field(default_factory=list)

    def pod(self, version: str) -> BackendPod:
        return self.pods.by_name[f"reviews-{version}"]

    async def apply(self, routes: str) -> None:
        """Serve a VirtualService whose ``http`` list is ``routes`` (YAML list items) after the
        generation route; return once the waypoint answers with the new generation."""
        self.gen += 1
        gen = self.gen
        doc = VS_HEAD.format(gen=gen) + textwrap.indent(textwrap.dedent(routes).strip("\n"), "  ") + "\n"
        self.applied.append(doc)
        (self.cfg / "vs.yaml").write_text(doc)
        await self.http.close()  # each generation starts on fresh connections
        self.http = new_session()

        async def current() -> bool:
            try:
                async with new_session(force_close=True) as probe, \
                        probe.get(f"http://{self.addr}/__gen", timeout=aiohttp.ClientTimeout(total=2)) as r:
                    return r.status == 200 and await r.text() == f"gen-{gen}"
            except (aiohttp.ClientError, OSError, TimeoutError):
                return False

        await wait_until(current, timeout=20, interval=0.02,
                         message=lambda: f"generation {gen} served; control plane errors: {self.mesh.cp.errors}")
        self.pods.restore()  # the probes above reached no pod; start every test from zero

    async def request(self, path: str = "/", method: str = "GET", headers: dict[str, str] | None = None,
                      timeout: float = 10, data: bytes | None = None) -> Reply:
        t0 = time.monotonic()
        async with self.http.request(method, f"http://{self.addr}{path}", headers=headers, data=data,
                                     allow_redirects=False, timeout=aiohttp.ClientTimeout(total=timeout)) as r:
            raw = await r.read()
            elapsed = time.monotonic() - t0
            text = raw.decode(errors="replace")
            body = json.loads(raw) if r.content_type == "application/json" and r.headers.get("x-pod") else None
            return Reply(r.status, r.headers, body, text, elapsed)

    async def many(self, n: int, path: str = "/", concurrency: int = 10, **kw: Any) -> list[Reply]:
        """``n`` requests over ``concurrency`` parallel connections."""
        replies: list[Reply] = []
        todo = iter(range(n))

        async def worker() -> None:
            for _ in todo:
                replies.append(await self.request(path, **kw))

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return replies

    async def stat(self, suffix: str) -> int:
        """Sum of the waypoint Envoy's counters whose name ends with ``suffix``."""
        url = f"http://127.0.0.1:{self.agent.config.envoy.admin_port}/stats?format=json"
        async with self.http.get(url) as r:
            stats = (await r.json(content_type=None))["stats"]
        return sum(int(s.get("value", 0)) for s in stats if str(s.get("name", "")).endswith(suffix))


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def shared(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Env]:
    tmp = tmp_path_factory.mktemp("traffic-vs")
    cfg = tmp / "cfg"
    cfg.mkdir()
    pods = await start_backends(3, names=["reviews-v1", "reviews-v2", "reviews-v3"])
    try:
        wp, vip = exclusive_ip(), alloc_vip()
        cfg.joinpath("mesh.yaml").write_text(BASE.format(
            wp=wp, vip=vip, port=pods.port,
            pods="\n".join(POD.format(v=f"v{i + 1}", ip=p.host) for i, p in enumerate(pods))))
        async with ambient_mesh(tmp, cfg) as mesh, mesh.waypoint("shop", "waypoint", wp) as agent, \
                mesh.client([(vip, 9080)], wp) as local:
            env = Env(mesh, agent, cfg, local[(vip, 9080)], pods, new_session())
            try:
                await env.apply(f"- route: [{V1}]")
                yield env
            finally:
                await env.http.close()
    finally:
        await pods.aclose()


@pytest_asyncio.fixture(loop_scope="module")
async def env(shared: Env, request: pytest.FixtureRequest) -> AsyncIterator[Env]:
    shared.pods.restore()
    yield shared
    if any(getattr(getattr(request.node, f"rep_{w}", None), "failed", False) for w in ("setup", "call")):
        print(f"\n----- last VirtualService -----\n{shared.applied[-1] if shared.applied else '(none)'}")
        for p in shared.pods:
            print(f"{p.name}: {p.count} requests {[(r.method, r.path, r.status) for r in p.requests[-10:]]}")
    shared.pods.restore()


def pods_of(replies: list[Reply]) -> Counter[str]:
    return Counter(r.pod or f"status {r.status}" for r in replies)


# --------------------------------------------------------------------------- routing


async def test_weighted_split_70_30(env: Env) -> None:
    await env.apply("""
        - route:
          - {destination: {host: reviews, subset: v1}, weight: 70}
          - {destination: {host: reviews, subset: v2}, weight: 30}
        """)
    n = 1000
    counts = pods_of(await env.many(n))
    print(f"70/30 split over {n} requests: {dict(counts)}")
    # Envoy draws a weighted cluster per request: v2's count is Binomial(1000, 0.3), sd 14.5;
    # +-5 sd = +-72 (a false failure below one in a million). 80/20 or 60/40 would be 100 away.
    assert set(counts) == {"reviews-v1", "reviews-v2"}, counts
    assert abs(counts["reviews-v2"] - 0.3 * n) <= sd5(n, 0.3), counts
    assert env.pods.counts() == {"reviews-v1": counts["reviews-v1"], "reviews-v2": counts["reviews-v2"],
                                 "reviews-v3": 0}


async def test_header_routing(env: Env) -> None:
    await env.apply(f"""
        - match: [{{headers: {{x-user: {{exact: jason}}}}}}]
          route: [{{destination: {{host: reviews, subset: v2}}}}]
        - match: [{{headers: {{x-group: {{prefix: beta-}}}}}}]
          route: [{{destination: {{host: reviews, subset: v3}}}}]
        - route: [{V1}]
        """)
    cases = [({"x-user": "jason"}, "reviews-v2"), ({"x-user": "Jason"}, "reviews-v1"),
             ({"x-group": "beta-testers"}, "reviews-v3"), ({"x-group": "alpha"}, "reviews-v1"),
             ({}, "reviews-v1"), ({"x-user": "jason", "x-group": "beta-1"}, "reviews-v2")]
    for headers, pod in cases:
        for _ in range(3):
            assert (await env.request("/", headers=headers)).pod == pod, headers


async def test_query_param_routing(env: Env) -> None:
    await env.apply(f"""
        - match: [{{queryParams: {{canary: {{exact: "yes"}}}}}}]
          route: [{{destination: {{host: reviews, subset: v2}}}}]
        - match: [{{queryParams: {{version: {{regex: "v3|three"}}}}}}]
          route: [{{destination: {{host: reviews, subset: v3}}}}]
        - route: [{V1}]
        """)
    cases = [("/?canary=yes", "reviews-v2"), ("/p?a=1&canary=yes", "reviews-v2"), ("/?canary=no", "reviews-v1"),
             ("/?canaryx=yes", "reviews-v1"), ("/canary=yes", "reviews-v1"), ("/?version=three", "reviews-v3"),
             ("/?version=v3", "reviews-v3"), ("/?version=v33", "reviews-v1"), ("/", "reviews-v1")]
    for path, pod in cases:
        r = await env.request(path)
        assert r.pod == pod, path
        assert r.body is not None and r.body["path"] == path  # the query string reaches the pod unchanged


async def test_method_routing(env: Env) -> None:
    await env.apply(f"""
        - match: [{{method: {{exact: POST}}}}]
          route: [{{destination: {{host: reviews, subset: v2}}}}]
        - match: [{{method: {{regex: "PUT|DELETE"}}}}]
          route: [{{destination: {{host: reviews, subset: v3}}}}]
        - route: [{V1}]
        """)
    for method, pod in [("POST", "reviews-v2"), ("PUT", "reviews-v3"), ("DELETE", "reviews-v3"), ("GET", "reviews-v1"),
                        ("PATCH", "reviews-v1"), ("POST", "reviews-v2")]:
        r = await env.request("/m", method=method, data=b"payload" if method != "GET" else None)
        assert r.pod == pod, method
        assert r.body is not None and r.body["method"] == method


# --------------------------------------------------------------------------- fault injection


async def test_fault_delay_all_requests(env: Env) -> None:
    delay = 0.3
    await env.apply(f"""
        - fault: {{delay: {{fixedDelay: {delay}s, percentage: {{value: 100}}}}}}
          route: [{V1}]
        """)
    baseline = await env.request("/__gen")
    replies = await env.many(20, concurrency=20)
    latencies = sorted(r.elapsed for r in replies)
    print(f"delay {delay}s at 100%: latencies {latencies[0]:.3f}..{latencies[-1]:.3f}s, "
          f"undelayed route {baseline.elapsed:.3f}s")
    assert baseline.elapsed < delay  # the other route of the same table is not delayed
    assert all(r.status == 200 for r in replies)
    assert latencies[0] >= delay - TIMER_SLACK, latencies  # every request waited the fixed delay...
    assert latencies[-1] < delay + 1.5, latencies  # ...and then went through
    assert env.pod("v1").count == 20


async def test_fault_delay_half_of_requests(env: Env) -> None:
    delay, n = 0.5, 200
    await env.apply(f"""
        - fault: {{delay: {{fixedDelay: {delay}s, percentage: {{value: 50}}}}}}
          route: [{V1}]
        """)
    injected = await env.stat("fault.delays_injected")
    replies = await env.many(n, concurrency=50)
    # A delayed request takes the delay (Envoy's millisecond timer may fire a hair early); an
    # undelayed one a few ms (under 0.07 s measured with 50 in flight). Classify at 0.6 x delay.
    delayed = [r.elapsed for r in replies if r.elapsed >= 0.6 * delay]
    fast = [r.elapsed for r in replies if r.elapsed < 0.6 * delay]
    injected = await env.stat("fault.delays_injected") - injected
    print(f"delay {delay}s at 50%: {len(delayed)}/{n} delayed (Envoy counted {injected}); "
          f"delayed {min(delayed, default=0):.3f}..{max(delayed, default=0):.3f}s, "
          f"others {min(fast, default=0):.3f}..{max(fast, default=0):.3f}s")
    # Binomial(200, 0.5): sd 7.1, +-5 sd = +-35 around 100.
    assert abs(len(delayed) - n / 2) <= sd5(n, 0.5), len(delayed)
    assert injected == len(delayed)  # exactly the requests Envoy delayed were the slow ones
    assert all(r.status == 200 for r in replies)
    assert min(delayed) >= delay - TIMER_SLACK and max(delayed) < delay + 1.5


async def test_fault_abort_status_and_percentage(env: Env) -> None:
    await env.apply(f"""
        - match: [{{uri: {{prefix: /all}}}}]
          fault: {{abort: {{httpStatus: 418, percentage: {{value: 100}}}}}}
          route: [{V1}]
        - fault: {{abort: {{httpStatus: 503, percentage: {{value: 50}}}}}}
          route: [{V1}]
        """)
    replies = await env.many(20, "/all")
    assert Counter(r.status for r in replies) == {418: 20}
    assert "fault filter abort" in replies[0].text
    assert env.pod("v1").count == 0  # an abort never reaches the pod

    n = 200
    statuses = Counter(r.status for r in await env.many(n, "/half", concurrency=20))
    print(f"abort 503 at 50%: {statuses}")
    assert set(statuses) == {200, 503}, statuses
    assert abs(statuses[503] - n / 2) <= sd5(n, 0.5), statuses  # Binomial(200, 0.5): +-35
    assert env.pod("v1").count == statuses[200]  # only the requests let through reached the pod


# --------------------------------------------------------------------------- retries and timeouts


async def test_retries_until_success_and_exhaustion(env: Env) -> None:
    await env.apply(f"""
        - retries: {{attempts: 3, retryOn: 5xx}}
          route: [{V1}]
        """)
    v1 = env.pod("v1")
    v1.configure(fail_first=2, fail_status=503)
    r = await env.request("/flaky")
    assert (r.status, r.pod, v1.count) == (200, "reviews-v1", 3)  # 2 failures + the successful 3rd attempt
    assert [q.status for q in v1.requests] == [503, 503, 200]

    v1.configure(fail_first=5)
    v1.reset()
    r = await env.request("/broken")
    assert (r.status, v1.count) == (503, 4)  # the first attempt and 3 retries, then the last 503 is returned


async def test_retry_on_status_code_list(env: Env) -> None:
    await env.apply(f"""
        - retries: {{attempts: 2, retryOn: "502"}}
          route: [{V1}]
        """)
    v1 = env.pod("v1")
    v1.configure(fail_first=1, fail_status=502)
    assert (await env.request()).status == 200
    assert v1.count == 2  # 502 is in retriable_status_codes: retried
    v1.configure(fail_first=1, fail_status=500)
    v1.reset()
    assert (await env.request()).status == 500
    assert v1.count == 1  # 500 is not: returned as is


async def test_attempts_zero_disables_retries(env: Env) -> None:
    # Istio's default policy (no ``retries``) retries "unavailable": a response carrying
    # grpc-status 14. ``attempts: 0`` must drop the policy altogether. (``attempts: 0`` together with
    # ``retryOn`` is rejected by validation, as in Istio.)
    await env.apply(f"""
        - match: [{{uri: {{prefix: /default}}}}]
          route: [{V1}]
        - retries: {{attempts: 0}}
          route: [{V1}]
        """)
    v1 = env.pod("v1")
    v1.configure(response_headers={"grpc-status": "14"})
    r = await env.request("/default")
    assert (r.headers.get("grpc-status"), v1.count) == ("14", 3)  # default: 2 retries
    v1.reset()
    r = await env.request("/disabled")
    assert (r.headers.get("grpc-status"), v1.count) == ("14", 1)  # attempts: 0: no retry at all


async def test_route_timeout(env: Env) -> None:
    await env.apply(f"""
        - timeout: 0.5s
          route: [{V1}]
        """)
    v1 = env.pod("v1")
    fast = await env.request()
    assert fast.status == 200
    v1.configure(delay=3)
    r = await env.request()
    print(f"timeout 0.5s, pod answering after 3s: {r.status} after {r.elapsed:.3f}s")
    assert r.status == 504 and "upstream request timeout" in r.text
    assert 0.5 - TIMER_SLACK <= r.elapsed < 1.5
    assert v1.count == 2  # a route timeout is not retried


async def test_per_try_timeout_retries(env: Env) -> None:
    await env.apply(f"""
        - match: [{{uri: {{prefix: /capped}}}}]
          timeout: 0.5s
          retries: {{attempts: 5, perTryTimeout: 0.3s, retryOn: 5xx}}
          route: [{V1}]
        - timeout: 5s
          retries: {{attempts: 2, perTryTimeout: 0.3s, retryOn: 5xx}}
          route: [{V1}]
        """)
    v1 = env.pod("v1")
    v1.script(Step(delay=3))  # only the first attempt is slow
    r = await env.request("/once")
    print(f"perTryTimeout 0.3s, first attempt slow: {r.status} after {r.elapsed:.3f}s, {v1.count} attempts")
    assert (r.status, v1.count) == (200, 2)
    assert 0.3 - TIMER_SLACK <= r.elapsed < 1.3

    v1.reset()
    v1.configure(delay=3)  # every attempt slow: 1 + 2 retries, each cut at 0.3s
    r = await env.request("/always")
    print(f"perTryTimeout 0.3s x 3 attempts: {r.status} after {r.elapsed:.3f}s, {v1.count} attempts")
    assert (r.status, v1.count) == (504, 3)
    assert 0.9 - TIMER_SLACK <= r.elapsed < 2.0

    v1.reset()
    r = await env.request("/capped")  # the 0.5s route timeout ends the retries of 0.3s tries
    print(f"timeout 0.5s over perTryTimeout 0.3s: {r.status} after {r.elapsed:.3f}s, {v1.count} attempts")
    assert (r.status, v1.count) == (504, 2)
    assert 0.5 - TIMER_SLACK <= r.elapsed < 1.2


# --------------------------------------------------------------------------- mirroring


async def until_quiet(counts: Callable[[], int], quiet: float = 0.3) -> int:
    """Mirrored copies are sent asynchronously: wait until a count stops moving."""
    last, since = counts(), time.monotonic()
    while time.monotonic() - since < quiet:
        await asyncio.sleep(0.02)
        if counts() != last:
            last, since = counts(), time.monotonic()
    return last


async def test_mirror(env: Env) -> None:
    await env.apply(f"""
        - match: [{{uri: {{prefix: /half}}}}]
          route: [{V1}]
          mirror: {{host: reviews, subset: v3}}
          mirrorPercentage: {{value: 50}}
        - route: [{V1}]
          mirror: {{host: reviews, subset: v3}}
          mirrorPercentage: {{value: 100}}
        """)
    v1, v3 = env.pod("v1"), env.pod("v3")
    replies = await env.many(20, "/all?x=1", headers={"host": "reviews.shop.svc.cluster.local:9080"})
    assert pods_of(replies) == {"reviews-v1": 20}  # the client only ever sees the primary's answer
    await v3.wait_for_count(20)
    assert await until_quiet(lambda: v3.count) == 20
    assert {r.path for r in v3.requests} == {"/all?x=1"}
    primary_hosts = {r.header("host") for r in v1.requests}
    shadow_hosts = {r.header("host") for r in v3.requests}
    print(f"mirror host: primary {primary_hosts}, shadow {shadow_hosts}")
    assert primary_hosts == {"reviews.shop.svc.cluster.local:9080"}
    assert shadow_hosts == {"reviews.shop.svc.cluster.local-shadow:9080"}

    env.pods.reset()
    n = 200
    assert pods_of(await env.many(n, "/half", concurrency=20)) == {"reviews-v1": n}
    mirrored = await until_quiet(lambda: v3.count)
    print(f"mirror 50%: {mirrored}/{n} copies")
    assert abs(mirrored - n / 2) <= sd5(n, 0.5), mirrored  # Binomial(200, 0.5): +-35


# --------------------------------------------------------------------------- redirect and rewrite


async def test_redirects(env: Env) -> None:
    await env.apply(f"""
        - match: [{{uri: {{exact: /old}}}}]
          redirect: {{uri: /new, authority: new.example.com}}
        - match: [{{uri: {{exact: /found}}}}]
          redirect: {{uri: /elsewhere, redirectCode: 302}}
        - match: [{{uri: {{prefix: /port}}}}]
          redirect: {{authority: other.example.com, port: 8443, redirectCode: 307}}
        - route: [{V1}]
        """)
    host = {"host": "reviews.shop:9080"}
    r = await env.request("/old", headers=host)
    assert (r.status, r.headers.get("location")) == (301, "http://new.example.com/new")
    r = await env.request("/found?q=1", headers=host)
    assert (r.status, r.headers.get("location")) == (302, "http://reviews.shop:9080/elsewhere?q=1")
    r = await env.request("/port/x", headers=host)
    assert (r.status, r.headers.get("location")) == (307, "http://other.example.com:8443/port/x")
    assert env.pods.total() == 0  # Envoy answers redirects itself
    assert (await env.request("/older")).pod == "reviews-v1"  # exact match only


async def test_rewrites(env: Env) -> None:
    await env.apply(f"""
        - match: [{{uri: {{prefix: /v1/}}}}]
          rewrite: {{uri: /api/, authority: reviews-internal}}
          route: [{V1}]
        - match: [{{uri: {{prefix: /r/}}}}]
          rewrite: {{uriRegexRewrite: {{match: '^/r/([a-z]+)/end$', rewrite: '/regex/\\1'}}}}
          route: [{V1}]
        - route: [{V1}]
        """)
    r = await env.request("/v1/items?x=1", headers={"host": "reviews:9080"})
    assert r.body is not None
    assert (r.body["path"], r.seen("host")) == ("/api/items?x=1", "reviews-internal")
    r = await env.request("/r/abc/end")
    assert r.body is not None and r.body["path"] == "/regex/abc"
    r = await env.request("/other", headers={"host": "reviews:9080"})
    assert r.body is not None
    assert (r.body["path"], r.seen("host")) == ("/other", "reviews:9080")  # no rewrite on other routes


# --------------------------------------------------------------------------- header operations


async def test_route_header_operations(env: Env) -> None:
    await env.apply(f"""
        - headers:
            request: {{set: {{x-set: route}}, add: {{x-add: route}}, remove: [x-remove]}}
            response: {{set: {{x-resp-set: route}}, add: {{x-resp-add: route}}, remove: [x-resp-remove]}}
          route: [{V1}]
        """)
    env.pod("v1").configure(response_headers={"x-resp-set": "pod", "x-resp-add": "pod", "x-resp-remove": "pod",
                                              "x-resp-keep": "pod"})
    r = await env.request("/", headers={"x-set": "client", "x-add": "client", "x-remove": "client",
                                        "x-keep": "client"})
    # What the pod received:
    assert r.seen("x-set") == "route"  # set overwrites
    assert r.seen("x-add") == ["client", "route"]  # add appends
    assert r.seen("x-remove") is None
    assert r.seen("x-keep") == "client"
    # What the client received:
    assert r.headers.getall("x-resp-set") == ["route"]
    assert r.headers.getall("x-resp-add") == ["pod", "route"]
    assert "x-resp-remove" not in r.headers
    assert r.headers.get("x-resp-keep") == "pod"


async def test_destination_header_operations(env: Env) -> None:
    await env.apply("""
        - match: [{uri: {prefix: /single}}]
          headers: {request: {set: {x-route: r}}}
          route:
          - destination: {host: reviews, subset: v1}
            headers:
              request: {set: {x-dest: v1}, remove: [x-client]}
              response: {add: {x-from: v1}, remove: [x-resp-remove]}
        - route:
          - destination: {host: reviews, subset: v1}
            weight: 50
            headers: {request: {set: {x-dest: v1}}, response: {set: {x-version: v1}, remove: [x-resp-remove]}}
          - destination: {host: reviews, subset: v2}
            weight: 50
            headers: {request: {set: {x-dest: v2, ':authority': v2.reviews}}, response: {set: {x-version: v2}}}
        """)
    env.pods.configure(response_headers={"x-resp-remove": "pod"})
    r = await env.request("/single", headers={"x-client": "c"})
    assert (r.pod, r.seen("x-route"), r.seen("x-dest"), r.seen("x-client")) == ("reviews-v1", "r", "v1", None)
    assert r.headers.get("x-from") == "v1" and "x-resp-remove" not in r.headers

    replies = await env.many(40, "/w", headers={"host": "reviews:9080", "x-client": "c"})
    # Binomial(40, 0.5): a pod missing entirely has probability 2 * 0.5^40.
    assert set(pods_of(replies)) == {"reviews-v1", "reviews-v2"}
    for r in replies:
        v = "v1" if r.pod == "reviews-v1" else "v2"
        assert (r.seen("x-dest"), r.headers.get("x-version"), r.seen("x-client")) == (v, v, "c")
        assert r.seen("x-route") is None  # the other route's operations do not apply here
        assert r.seen("host") == ("reviews:9080" if v == "v1" else "v2.reviews")
        assert ("x-resp-remove" in r.headers) == (v == "v2")  # removed only by v1's operations


# --------------------------------------------------------------------------- CORS


PREFLIGHT = {"access-control-request-method": "POST", "access-control-request-headers": "content-type"}


async def test_cors_preflight_and_simple_requests(env: Env) -> None:
    await env.apply(f"""
        - match: [{{uri: {{prefix: /ignore}}}}]
          corsPolicy:
            allowOrigins: [{{exact: 'https://app.example.com'}}]
            allowMethods: [GET]
            unmatchedPreflights: IGNORE
          route: [{V1}]
        - corsPolicy:
            allowOrigins: [{{exact: 'https://app.example.com'}}, {{prefix: 'https://dev.'}}]
            allowMethods: [GET, POST]
            allowHeaders: [authorization, content-type]
            exposeHeaders: [x-request-id]
            maxAge: 24h
            allowCredentials: true
          route: [{V1}]
        """)
    v1 = env.pod("v1")
    for origin in ("https://app.example.com", "https://dev.shop.example"):
        r = await env.request("/api", "OPTIONS", headers={"origin": origin, **PREFLIGHT})
        assert r.status == 200 and r.pod is None  # answered by Envoy
        assert r.headers.get("access-control-allow-origin") == origin
        assert r.headers.get("access-control-allow-methods") == "GET,POST"
        assert r.headers.get("access-control-allow-headers") == "authorization,content-type"
        assert r.headers.get("access-control-max-age") == "86400"
        assert r.headers.get("access-control-allow-credentials") == "true"
    assert v1.count == 0

    # A disallowed origin gets no allow headers; its preflight is forwarded to the pod (the default).
    r = await env.request("/api", "OPTIONS", headers={"origin": "https://evil.example.com", **PREFLIGHT})
    assert not [h for h in r.headers if h.lower().startswith("access-control-")], dict(r.headers)
    assert r.pod == "reviews-v1" and v1.requests[-1].method == "OPTIONS"

    # Simple (non-preflight) requests: the allowed origin is echoed with the exposed headers.
    r = await env.request("/api", headers={"origin": "https://app.example.com"})
    assert r.pod == "reviews-v1"
    assert r.headers.get("access-control-allow-origin") == "https://app.example.com"
    assert r.headers.get("access-control-expose-headers") == "x-request-id"
    r = await env.request("/api", headers={"origin": "https://evil.example.com"})
    assert r.pod == "reviews-v1" and "access-control-allow-origin" not in r.headers

    # unmatchedPreflights: IGNORE: a disallowed preflight is answered by Envoy, without allow headers.
    v1.reset()
    r = await env.request("/ignore", "OPTIONS", headers={"origin": "https://evil.example.com", **PREFLIGHT})
    assert r.pod is None and "access-control-allow-origin" not in r.headers
    assert v1.count == 0
