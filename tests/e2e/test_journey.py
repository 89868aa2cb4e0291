"""The seed guide's user journey ("L7 Networking & Services with Waypoint", shared/seed/), as one test
over a copy of ``examples/bookinfo`` -- the embedded default -- with every hop real: control plane
with its CA, the waypoint agent and Envoy, a client ztunnel (HBONE to the waypoint), and the
bookinfo pods (ambient, each behind its ztunnel's HBONE terminator).

The guide's sections, in its order:

1. *Deploying an Application*: namespace ``bookinfo`` in ambient mode, services ``reviews``
   (v1, v2) and ``ratings``, no waypoint: the config has none, and a waypoint proxy started now
   gets nothing to serve (in this project traffic is only ever observed through a waypoint).
2. *Configuring Waypoint proxy*: the ``waypoint`` Gateway (``istioctl waypoint apply``), then the
   namespace label ``istio.io/use-waypoint`` (``--enroll-namespace``): traffic flows, both
   reviews versions answer.
3. Canary (*traffic management*): ``reviews`` 90/10 between v1 and v2, then 50/50.
4. *L7 Fault Injection*: Istio's bookinfo task -- for ``end-user: jason`` ``ratings`` is delayed,
   then aborted with 500; every other user is untouched.
5. *Monitoring the Waypoint Proxy & L7 Networking* (before the removal): the waypoint's
   ``/stats/prometheus`` counts the requests just sent per service and response code (latency
   histograms too), its JSON access log has a line per request (the aborted ones flagged ``FI``),
   and a test Zipkin collector receives the waypoint's spans, joined to the callers' b3 traces.
6. *Remove Waypoint proxy layer*: the label goes, the services leave the waypoint's config and
   its traffic stops; then the Gateway goes too.

Addresses are the example's, remapped to this run's loopback addresses (the example's fixed ones
may be in use by a parallel test or a running demo).
"""

from __future__ import annotations

import collections
import json
import math
import re
import secrets
import time
from pathlib import Path

import aiohttp
import pytest

from istiod_lite.model.meshconfig import MeshConfig, parse_mesh_config
from istiod_lite.translator import find_waypoints
from tests.e2e.test_observability import samples
from tests.support.backends import BackendsFactory
from tests.support.collectors import ZipkinCollector
from tests.support.mesh import ambient_mesh, exclusive_ip
from tests.support.ports import alloc_vip
from tests.support.wait import wait_until

pytestmark = pytest.mark.e2e

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "bookinfo"
REVIEWS_V1, REVIEWS_V2 = "reviews-v1-5d8f9c7b6-abcde", "reviews-v2-7c9d6b5f4-fghij"
RATINGS_V1 = "ratings-v1-6b7c8d9e0-klmno"

RATINGS_RULES = """apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: ratings, namespace: bookinfo}}
spec:
  host: ratings
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: ratings, namespace: bookinfo}}
spec:
  hosts: [ratings]
  http:
  - match:
    - headers:
        end-user: {{exact: jason}}
    fault:
      {fault}
    route:
    - destination: {{host: ratings, subset: v1}}
  - route:
    - destination: {{host: ratings, subset: v1}}
"""
# Mesh-wide tracing to Zipkin; new traces are not sampled, a caller's sampled b3 trace is joined.
TRACING = """apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: mesh-default, namespace: istio-system}
spec:
  tracing:
  - providers: [{name: zipkin}]
    randomSamplingPercentage: 0
"""
DELAY = "delay: {percentage: {value: 100.0}, fixedDelay: 1s}"
ABORT = "abort: {percentage: {value: 100.0}, httpStatus: 500}"


def remap(text: str, addresses: dict[str, str], port: int) -> str:
    """The example's addresses -> this run's; the pods' targetPort -> the backends' port."""
    text = re.sub(r"\b(127\.\d+\.\d+\.\d+)\b", lambda m: addresses.get(m.group(1), m.group(1)), text)
    return text.replace("targetPort: 9080", f"targetPort: {port}")


def without_waypoint_label(namespace_yaml: str) -> str:
    out = re.sub(r"^\s*istio\.io/use-waypoint: waypoint\n", "", namespace_yaml, flags=re.MULTILINE)
    assert "use-waypoint" not in out.split("\n---")[0].split("kind: Namespace", 1)[1]
    return out


async def admin(admin_port: int, path: str, **params: str) -> str | None:
    """The waypoint Envoy's admin page (None while Envoy is not up)."""
    try:
        async with aiohttp.ClientSession() as http, \
                http.get(f"http://127.0.0.1:{admin_port}{path}", params=params) as r:
            return await r.text() if r.status == 200 else None
    except (aiohttp.ClientError, OSError):
        return None


async def admin_clusters(admin_port: int) -> str:
    return await admin(admin_port, "/clusters") or ""


async def test_seed_guide_journey(tmp_path: Path, backends_factory: BackendsFactory) -> None:
    started = time.monotonic()
    pod_ips = [exclusive_ip() for _ in range(3)]  # ambient pods: their ztunnels listen on <podIP>:15008
    pods = await backends_factory(3, names=[REVIEWS_V1, REVIEWS_V2, RATINGS_V1], hosts=pod_ips)
    wp, vip_reviews, vip_ratings = exclusive_ip(), alloc_vip(), alloc_vip()
    addresses = {"127.0.1.1": wp, "127.10.0.1": vip_reviews, "127.10.0.2": vip_ratings,
                 "127.0.2.1": pod_ips[0], "127.0.2.2": pod_ips[1], "127.0.2.3": pod_ips[2]}
    example = {p.name: remap(p.read_text(), addresses, pods.port) for p in sorted(EXAMPLE.glob("*.yaml"))}
    assert set(example) == {"00-namespace.yaml", "10-waypoint.yaml", "20-reviews.yaml", "21-ratings.yaml",
                            "30-reviews-canary.yaml"}, "examples/bookinfo changed: update this journey"
    cfg = tmp_path / "bookinfo"
    cfg.mkdir()

    def apply(name: str, text: str | None = None) -> None:
        (cfg / name).write_text(example[name] if text is None else text)

    # 1. Deploying an Application: ambient namespace, services and pods; no waypoint yet.
    apply("00-namespace.yaml", without_waypoint_label(example["00-namespace.yaml"]))
    apply("20-reviews.yaml")
    apply("21-ratings.yaml")
    apply("05-telemetry.yaml", TRACING)
    access_log = tmp_path / "waypoint-access.log"

    def mesh_config(zipkin_port: int) -> MeshConfig:  # the Zipkin collector is out of the registry: STRICT_DNS
        return parse_mesh_config({
            "accessLogFile": str(access_log), "accessLogEncoding": "JSON",
            "extensionProviders": [{"name": "zipkin", "zipkin": {"service": "127.0.0.1", "port": zipkin_port}}]})

    async with ZipkinCollector() as zipkin, ambient_mesh(tmp_path, cfg, mesh=mesh_config(zipkin.port)) as mesh, \
            mesh.pod_ztunnels(pod_ips[:2], "bookinfo", "bookinfo-reviews"), \
            mesh.pod_ztunnels(pod_ips[2:], "bookinfo", "bookinfo-ratings"), \
            mesh.waypoint("bookinfo", "waypoint", wp) as agent, \
            mesh.client([(vip_reviews, 9080), (vip_ratings, 9080)], wp) as local, \
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10),
                                  connector=aiohttp.TCPConnector(force_close=True)) as http:
        # A connection per request: each call then shows the routes the waypoint holds at that moment
        # (kept-alive connections follow route changes too, see test_rds_live_routes.py).
        reviews, ratings = local[(vip_reviews, 9080)], local[(vip_ratings, 9080)]
        admin_port = agent.config.envoy.admin_port

        async def call(addr: str, user: str | None = None) -> tuple[int, str]:
            try:
                async with http.get(f"http://{addr}/", headers={"end-user": user} if user else None) as r:
                    await r.read()
                    return r.status, r.headers.get("x-pod", "")
            except (aiohttp.ClientError, OSError, TimeoutError):
                return 0, ""

        async def split(addr: str, n: int) -> collections.Counter[str]:
            counts: collections.Counter[str] = collections.Counter()
            for _ in range(n):
                status, pod = await call(addr)
                counts[pod if status == 200 else f"status {status}"] += 1
            return counts

        assert find_waypoints(mesh.cp.config) == []
        assert mesh.cp.errors == ()
        # The waypoint proxy runs (certificate, xDS) but its Gateway is not in the config: it gets an
        # empty config -- no listener on 15008, no cluster -- and nothing passes.
        await wait_until(lambda: admin(admin_port, "/ready"), timeout=20, message="the waypoint Envoy live")
        assert "reviews.bookinfo" not in await admin_clusters(admin_port)
        assert "15008" not in (await admin(admin_port, "/listeners") or "")
        assert (await call(reviews))[0] != 200
        t1 = time.monotonic()

        # 2. Configuring Waypoint proxy: the Gateway, then the namespace label.
        apply("10-waypoint.yaml")
        await wait_until(lambda: [str(w.ref) for w in find_waypoints(mesh.cp.config)] == ["bookinfo/waypoint"],
                         timeout=10, message="the waypoint Gateway in the config")
        assert (await call(reviews))[0] != 200  # not enrolled yet: the waypoint has no route to reviews
        apply("00-namespace.yaml")

        async def enrolled() -> bool:
            return (await call(reviews))[0] == 200 and (await call(ratings))[0] == 200

        await wait_until(enrolled, timeout=20, message="traffic through the waypoint after enrolling")
        before = await split(reviews, 60)
        assert set(before) == {REVIEWS_V1, REVIEWS_V2}, before  # no VirtualService: both versions
        assert await split(ratings, 10) == {RATINGS_V1: 10}
        t2 = time.monotonic()

        # 3. Canary: 90/10, then 50/50 (the example's canary file with the guide's next weights).
        canary = example["30-reviews-canary.yaml"]
        assert "weight: 80" in canary and "weight: 20" in canary
        for w1, w2, n in ((90, 10, 500), (50, 50, 400)):
            apply("30-reviews-canary.yaml", canary.replace("weight: 80", f"weight: {w1}")
                  .replace("weight: 20", f"weight: {w2}"))

            async def applied(w1: int = w1) -> bool:
                # The routes come over RDS: wait for the route configuration with the new weights.
                dump = json.loads(await admin(admin_port, "/config_dump", resource="dynamic_route_configs") or "{}")
                return any(f'"weight": {w1}' in json.dumps(rc.get("route_config", {}), indent=1)
                           for rc in dump.get("configs", []))

            await wait_until(applied, timeout=15, message=f"the {w1}/{w2} canary in the waypoint")
            counts = await split(reviews, n)
            # v2 ~ Binomial(n, w2/100); +-5 sd: a false failure below one in a million.
            p = w2 / 100
            sd = math.sqrt(n * p * (1 - p))
            print(f"\ncanary {w1}/{w2}: {n} requests -> {dict(counts)} (v2 expected {n * p:.0f} +-{5 * sd:.0f})")
            assert set(counts) == {REVIEWS_V1, REVIEWS_V2}, counts
            assert abs(counts[REVIEWS_V2] - n * p) <= 5 * sd, counts
        t3 = time.monotonic()

        # 4. L7 Fault Injection on ratings for end-user jason: a delay, then an abort.
        apply("40-ratings-fault.yaml", RATINGS_RULES.format(fault=DELAY))

        async def delayed() -> float:
            t = time.monotonic()
            status, _ = await call(ratings, "jason")
            took = time.monotonic() - t
            return took if status == 200 and took >= 1.0 else 0.0

        took = await wait_until(delayed, timeout=15, message="ratings delayed for jason")
        t = time.monotonic()
        assert await call(ratings, "alice") == (200, RATINGS_V1)
        fast = time.monotonic() - t
        print(f"fault delay 1s: jason {took:.2f}s, alice {fast * 1000:.0f}ms")
        assert fast < 0.5

        apply("40-ratings-fault.yaml", RATINGS_RULES.format(fault=ABORT))

        async def aborted() -> bool:
            return (await call(ratings, "jason"))[0] == 500

        await wait_until(aborted, timeout=15, message="ratings aborted for jason")
        pods.reset()
        jason = collections.Counter([(await call(ratings, "jason"))[0] for _ in range(20)])
        others = collections.Counter([(await call(ratings, "alice"))[0] for _ in range(20)])
        print(f"fault abort 500: jason {dict(jason)}, alice {dict(others)}, ratings pod got {pods[2].count}")
        assert jason == {500: 20} and others == {200: 20}, (jason, others)
        assert pods[2].count == 20  # the aborted requests never reached the pod
        assert (await split(reviews, 20)).keys() <= {REVIEWS_V1, REVIEWS_V2}  # reviews untouched
        t4 = time.monotonic()

        # 5. Monitoring the Waypoint Proxy & L7 Networking: metrics, access logs and traces of the
        # requests sent now (10 to reviews, 5 from jason to ratings -- aborted -- and 5 from alice).
        reviews_host, ratings_host = "reviews.bookinfo.svc.cluster.local", "ratings.bookinfo.svc.cluster.local"

        def total(text: str, metric: str, **labels: str) -> float:
            return sum(v for lab, v in samples(text, metric) if all(lab.get(k) == x for k, x in labels.items()))

        rq, rq_total = "envoy_cluster_inbound_vip_http_upstream_rq", "envoy_cluster_inbound_vip_http_upstream_rq_total"

        def counters(text: str) -> dict[str, float]:
            return {
                "reviews": total(text, rq_total, destination_service=reviews_host),
                "ratings 200": total(text, rq, response_code="200", destination_service=ratings_host),
                "ratings": total(text, rq_total, destination_service=ratings_host),
                "9080 5xx": total(text, "envoy_http_inbound_0_0_0_0__downstream_rq", response_code_class="5xx",
                                  destination_port="9080"),
                "9080 2xx": total(text, "envoy_http_inbound_0_0_0_0__downstream_rq", response_code_class="2xx",
                                  destination_port="9080"),
            }

        def latency_count(text: str) -> float:
            return total(text, rq + "_time_count", destination_service=reviews_host)

        before_text = await admin(admin_port, "/stats/prometheus") or ""
        before, latency_before = counters(before_text), latency_count(before_text)
        traced: dict[str, str] = {}  # trace id -> the caller's span id
        statuses: collections.Counter[tuple[str, int]] = collections.Counter()
        for i in range(20):
            addr, user, name = ((reviews, None, "reviews") if i < 10 else
                                (ratings, "jason" if i < 15 else "alice", "ratings"))
            trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
            traced[trace_id] = span_id
            headers = {"x-b3-traceid": trace_id, "x-b3-spanid": span_id, "x-b3-sampled": "1"}
            if user:
                headers["end-user"] = user
            async with http.get(f"http://{addr}/monitoring/{i}", headers=headers) as r:
                await r.read()
                statuses[(name, r.status)] += 1
        assert statuses == {("reviews", 200): 10, ("ratings", 500): 5, ("ratings", 200): 5}, statuses
        after_text = await admin(admin_port, "/stats/prometheus") or ""
        after = counters(after_text)
        assert {k: after[k] - before[k] for k in after} == {
            "reviews": 10, "ratings 200": 5, "ratings": 5, "9080 5xx": 5, "9080 2xx": 15}, (before, after)

        async def latencies() -> bool:  # histograms reach /stats/prometheus at Envoy's stats flush
            return latency_count(await admin(admin_port, "/stats/prometheus") or "") - latency_before >= 10

        await wait_until(latencies, timeout=15, message="reviews latency histogram counts")

        def logged() -> list[dict[str, object]]:
            lines = access_log.read_text().splitlines() if access_log.exists() else []
            entries = [json.loads(x) for x in lines if x.strip()]
            return [e for e in entries if str(e.get("path", "")).startswith("/monitoring/")]

        entries = await wait_until(lambda: len(logged()) >= 20 and logged(), timeout=30,
                                   message="20 access-log lines (Envoy flushes its log files every 10 s)")
        by_path = {str(e["path"]): e for e in entries}
        assert len(entries) == 20 and set(by_path) == {f"/monitoring/{i}" for i in range(20)}
        assert all(by_path[f"/monitoring/{i}"]["response_code"] == 500 and
                   by_path[f"/monitoring/{i}"]["response_flags"] == "FI" for i in range(10, 15))
        assert str(by_path["/monitoring/0"]["upstream_cluster"]).startswith("inbound-vip|9080|http")
        assert str(by_path["/monitoring/0"]["upstream_cluster"]).endswith(f"|{reviews_host}")

        spans = await zipkin.wait_for(lambda s: s.trace_id in traced, count=20)
        assert {s.trace_id for s in zipkin.spans} == set(traced)  # only the callers' sampled traces
        assert all(s.parent_id == traced[s.trace_id] and s.service == "waypoint.bookinfo" for s in spans)
        # Istio's operation names: the canary's weighted route is named by its VirtualService.
        assert {s.name for s in spans} == {"reviews:9080/*", f"{ratings_host}:9080/*"}
        assert sorted(s.tags["http.status_code"] for s in spans) == ["200"] * 15 + ["500"] * 5
        print(f"monitoring: {dict(statuses)}; {len(entries)} access-log lines, {len(spans)} spans")
        t5 = time.monotonic()

        # 6. Remove Waypoint proxy layer: unlabel the namespace, then delete the Gateway.
        apply("00-namespace.yaml", without_waypoint_label(example["00-namespace.yaml"]))

        async def unbound() -> bool:
            clusters = await admin_clusters(admin_port)
            return "reviews.bookinfo" not in clusters and "ratings.bookinfo" not in clusters

        await wait_until(unbound, timeout=15, message="the services leaving the waypoint's config")
        assert (await call(reviews))[0] != 200 and (await call(ratings))[0] != 200
        (cfg / "10-waypoint.yaml").unlink()
        await wait_until(lambda: find_waypoints(mesh.cp.config) == [], timeout=10, message="the Gateway deleted")
        assert mesh.cp.errors == ()
        print(f"journey: deploy {t1 - started:.1f}s, waypoint {t2 - t1:.1f}s, canary {t3 - t2:.1f}s, "
              f"faults {t4 - t3:.1f}s, monitoring {t5 - t4:.1f}s, removal {time.monotonic() - t5:.1f}s")
