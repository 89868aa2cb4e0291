"""DestinationRule traffic policies measured on real traffic: client ztunnel (hbone forward) -> waypoint
Envoy (agent, CA certificate, secure xDS) -> real HTTP pods.

* consistent hash (header, then cookie): one key always reaches one pod, different keys spread;
* outlier detection: a pod answering 500 is ejected after ``consecutive5xxErrors`` and the healthy
  one takes all the traffic;
* connection pool: with one connection and one pending request allowed, concurrent requests to a
  slow pod overflow with Envoy's ``x-envoy-overloaded`` 503s, counted in the waypoint's stats.
"""

from __future__ import annotations

import asyncio
import collections
import json
import re
from pathlib import Path

import aiohttp
import pytest

from tests.support.backends import BackendGroup, BackendsFactory
from tests.support.mesh import ambient_mesh, exclusive_ip
from tests.support.meshyaml import SHOP_WAYPOINT
from tests.support.ports import alloc_vip
from tests.support.wait import wait_until

pytestmark = pytest.mark.e2e

BASE = SHOP_WAYPOINT + """apiVersion: v1
kind: Service
metadata: {{name: reviews, namespace: shop}}
spec:
  clusterIP: {vip}
  selector: {{app: reviews}}
  ports: [{{name: http, port: 9080, targetPort: {port}}}]
"""

POD = """---
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: shop, labels: {{app: reviews}}}}
status: {{podIP: {ip}}}
"""

DR = """apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: reviews, namespace: shop}}
spec:
  host: reviews
  trafficPolicy:
{policy}
"""

HEADER_HASH = """    loadBalancer:
      consistentHash: {httpHeaderName: x-user}"""
COOKIE_HASH = """    loadBalancer:
      consistentHash: {httpCookie: {name: session, path: /, ttl: 3600s}}"""
OUTLIER = """    loadBalancer: {{simple: ROUND_ROBIN}}
    outlierDetection: {{consecutive5xxErrors: 2, interval: 1s, baseEjectionTime: 30s{extra}}}"""
POOL = """    connectionPool:
      tcp: {maxConnections: 1}
      http: {http1MaxPendingRequests: 1, maxRequestsPerConnection: 1}"""

CLUSTER = "inbound-vip|9080|http|reviews.shop.svc.cluster.local"


def write_config(cfg: Path, wp: str, vip: str, pods: BackendGroup, policy: str) -> None:
    (cfg / "mesh.yaml").write_text(BASE.format(wp=wp, vip=vip, port=pods.port)
                                   + "".join(POD.format(name=p.name, ip=p.host) for p in pods))
    (cfg / "dr.yaml").write_text(DR.format(policy=policy))


async def get(http: aiohttp.ClientSession, addr: str, headers: dict[str, str] | None = None
              ) -> tuple[int, str, aiohttp.ClientResponse]:
    async with http.get(f"http://{addr}/", headers=headers) as r:
        await r.read()
        return r.status, r.headers.get("x-pod", ""), r


async def serving(http: aiohttp.ClientSession, addr: str) -> bool:
    try:
        return (await get(http, addr))[0] == 200
    except (aiohttp.ClientError, OSError, TimeoutError):
        return False


async def stats(admin_port: int, pattern: str) -> dict[str, int]:
    """The waypoint Envoy's counters whose names match ``pattern`` (regex)."""
    async with aiohttp.ClientSession() as http, \
            http.get(f"http://127.0.0.1:{admin_port}/stats", params={"filter": pattern}) as r:
        text = await r.text()
    out: dict[str, int] = {}
    for line in text.splitlines():
        name, _, value = line.partition(": ")
        if value.strip().isdigit():
            out[name] = int(value)
    return out


async def wait_for_policy(admin_port: int, needle: str, *, in_routes: bool = False) -> None:
    """Until the waypoint's *active* clusters (or route configurations, served over RDS) contain
    ``needle`` and nothing is warming any more."""
    async def applied() -> bool:
        async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{admin_port}/config_dump") as r:
            dump = await r.json(content_type=None)
        by_type = {c["@type"].rsplit(".", 1)[-1]: c for c in dump["configs"]}
        clusters, listeners = by_type["ClustersConfigDump"], by_type.get("ListenersConfigDump", {})
        if clusters.get("dynamic_warming_clusters") or any(
                "warming_state" in lis for lis in listeners.get("dynamic_listeners", [])):
            return False
        routes = by_type.get("RoutesConfigDump", {}).get("dynamic_route_configs", [])
        active = ([rc.get("route_config", {}) for rc in routes] if in_routes
                  else clusters.get("dynamic_active_clusters", []))
        return needle in json.dumps(active)

    await wait_until(applied, timeout=15, message=f"{needle} in the waypoint's active config")


async def test_consistent_hash_header_then_cookie(tmp_path: Path, backends_factory: BackendsFactory) -> None:
    pods = await backends_factory(3, names=["reviews-a", "reviews-b", "reviews-c"])
    wp, vip = exclusive_ip(), alloc_vip()
    cfg = tmp_path / "cfg"
    cfg.mkdir()
    write_config(cfg, wp, vip, pods, HEADER_HASH)
    async with ambient_mesh(tmp_path, cfg) as mesh, mesh.waypoint("shop", "waypoint", wp) as agent, \
            mesh.client([(vip, 9080)], wp) as local, \
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10),
                                  connector=aiohttp.TCPConnector(force_close=True)) as http:
        # A connection per request: the consistent hash picks an endpoint per connection's request,
        # and a fresh connection per request shows the hash policy alone decides.
        addr, admin = local[(vip, 9080)], agent.config.envoy.admin_port
        await wait_until(lambda: serving(http, addr), timeout=30, message="traffic through the waypoint")
        await wait_for_policy(admin, "RING_HASH")
        await wait_for_policy(admin, "x-user", in_routes=True)

        # 40 users x 5 requests each, interleaved: every user sticks to one pod.
        users = [f"user-{i}" for i in range(40)]
        seen: dict[str, set[str]] = collections.defaultdict(set)
        for _ in range(5):
            for user in users:
                status, pod, _ = await get(http, addr, {"x-user": user})
                assert status == 200
                seen[user].add(pod)
        assert all(len(p) == 1 for p in seen.values()), {u: p for u, p in seen.items() if len(p) > 1}
        spread = collections.Counter(next(iter(p)) for p in seen.values())
        # A ring of >= 1024 entries over 3 hosts: every pod gets some of the 40 keys (all on two pods
        # or fewer: probability 3 * (2/3)^40 ~ 3e-7 for an even ring).
        assert set(spread) == {"reviews-a", "reviews-b", "reviews-c"}, spread
        print(f"\nheader hash: 40 users over pods {dict(spread)}, 200 requests, 0 moved")

        # The same policy on a cookie: Envoy sets the cookie on the first answer; sent back, it pins.
        (cfg / "dr.yaml").write_text(DR.format(policy=COOKIE_HASH))

        await wait_for_policy(admin, '"session"', in_routes=True)
        # Without the cookie Envoy makes one up (from the client's address) and sets it; sent back, it pins.
        status, first, r = await get(http, addr)
        match = re.search(r"session=([^;]+)", r.headers.get("set-cookie", ""))
        assert status == 200 and match, r.headers
        assert {(await get(http, addr, {"cookie": f"session={match.group(1)}"}))[1] for _ in range(10)} == {first}
        # Sessions the client already has (40 cookie values): each sticks to one pod, together they spread.
        by_session: dict[str, set[str]] = collections.defaultdict(set)
        for _ in range(3):
            for i in range(40):
                status, pod, r = await get(http, addr, {"cookie": f"session=s{i}"})
                assert status == 200 and "set-cookie" not in r.headers
                by_session[f"s{i}"].add(pod)
        assert all(len(p) == 1 for p in by_session.values()), by_session
        cookie_spread = collections.Counter(next(iter(p)) for p in by_session.values())
        assert set(cookie_spread) == {"reviews-a", "reviews-b", "reviews-c"}, cookie_spread
        print(f"cookie hash: generated cookie pinned 10/10 to {first}; 40 sessions over pods {dict(cookie_spread)}, "
              "120 requests, 0 moved")


async def test_outlier_detection_ejects_the_failing_pod(tmp_path: Path, backends_factory: BackendsFactory) -> None:
    pods = await backends_factory(2, names=["reviews-good", "reviews-bad"])
    pods.by_name["reviews-bad"].configure(status=500)
    wp, vip = exclusive_ip(), alloc_vip()
    cfg = tmp_path / "cfg"
    cfg.mkdir()
    write_config(cfg, wp, vip, pods, OUTLIER.format(extra=""))
    ejected = f"cluster.{CLUSTER}.outlier_detection.ejections_enforced_consecutive_5xx"
    overflow = f"cluster.{CLUSTER}.outlier_detection.ejections_overflow"
    async with ambient_mesh(tmp_path, cfg) as mesh, mesh.waypoint("shop", "waypoint", wp) as agent, \
            mesh.client([(vip, 9080)], wp) as local, \
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
        addr, admin = local[(vip, 9080)], agent.config.envoy.admin_port

        async def answered() -> bool:
            try:
                return (await get(http, addr))[0] in (200, 500)
            except (aiohttp.ClientError, OSError, TimeoutError):
                return False

        async def measure(n: int) -> collections.Counter[int]:
            pods.reset()
            statuses: collections.Counter[int] = collections.Counter()
            for _ in range(n):
                statuses[(await get(http, addr))[0]] += 1
            return statuses

        await wait_until(answered, timeout=30, message="traffic through the waypoint")
        await wait_for_policy(admin, "consecutive_5xx")
        # Istio's (and Envoy's) default maxEjectionPercent is 10%: of 2 hosts that is none, so the
        # bad pod is detected again and again but never ejected.
        statuses = await measure(20)
        counters = await stats(admin, rf"^cluster\.{re.escape(CLUSTER)}\.outlier_detection\.ejections_")
        print(f"\noutlier, default maxEjectionPercent: statuses {dict(statuses)}, pods {pods.counts()}, "
              f"ejections_overflow {counters[overflow]}, enforced {counters[ejected]}")
        assert statuses == {200: 10, 500: 10} and counters[ejected] == 0 and counters[overflow] >= 4, counters

        # maxEjectionPercent: 100 lets it go: ejected after 2 consecutive 500s, out for 30 s.
        (cfg / "dr.yaml").write_text(DR.format(policy=OUTLIER.format(extra=", maxEjectionPercent: 100")))
        await wait_for_policy(admin, '"max_ejection_percent": 100')
        statuses = await measure(100)
        bad, good = pods.by_name["reviews-bad"].count, pods.by_name["reviews-good"].count
        counters = await stats(admin, rf"^cluster\.{re.escape(CLUSTER)}\.outlier_detection\.ejections_")
        print(f"outlier, maxEjectionPercent 100: 100 requests -> statuses {dict(statuses)}; bad pod got {bad}, "
              f"good pod {good}; ejections enforced {counters[ejected]}")
        # Round robin: the bad pod's 2nd 500 in a row ejects it (Envoy's worker reports it to the
        # main thread, which ejects; a busy machine may let a few more through in between).
        assert 2 <= bad <= 10, (bad, good)
        assert statuses[500] == bad and statuses[200] == good == 100 - bad, statuses
        assert counters[ejected] == 1, counters
        last = [r.pod for r in pods.requests()[-80:]]
        assert set(last) == {"reviews-good"}, last


async def test_connection_pool_overflow(tmp_path: Path, backends_factory: BackendsFactory) -> None:
    pods = await backends_factory(1, names=["reviews-slow"], delay=1.0)
    wp, vip = exclusive_ip(), alloc_vip()
    cfg = tmp_path / "cfg"
    cfg.mkdir()
    write_config(cfg, wp, vip, pods, POOL)
    async with ambient_mesh(tmp_path, cfg) as mesh, mesh.waypoint("shop", "waypoint", wp) as agent, \
            mesh.client([(vip, 9080)], wp) as local:
        addr, admin = local[(vip, 9080)], agent.config.envoy.admin_port
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
            await wait_until(lambda: serving(http, addr), timeout=30, message="traffic through the waypoint")
        await wait_for_policy(admin, "max_pending_requests")
        pods.reset()

        async def one() -> tuple[int, bool]:
            # Each request on its own client connection (its own HBONE stream to the waypoint).
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as http, \
                    http.get(f"http://{addr}/") as r:
                await r.read()
                return r.status, r.headers.get("x-envoy-overloaded") == "true"

        n = 10
        results = await asyncio.gather(*(one() for _ in range(n)))
        ok = sum(1 for s, _ in results if s == 200)
        overloaded = sum(1 for s, flag in results if s == 503 and flag)
        counters = await stats(admin, rf"^cluster\.{re.escape(CLUSTER)}\.upstream_rq_pending_overflow$")
        overflow = counters[f"cluster.{CLUSTER}.upstream_rq_pending_overflow"]
        print(f"\npool: {n} concurrent -> {ok} x 200, {overloaded} x 503 x-envoy-overloaded; "
              f"pod got {pods[0].count}; upstream_rq_pending_overflow {overflow}")
        assert ok + overloaded == n, results
        # One connection (one request at a time, 1 s each) plus one pending: most overflow at once.
        assert ok >= 1 and overloaded >= n // 2, results
        assert overflow == overloaded
        assert pods[0].count == ok
