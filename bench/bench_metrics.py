"""Benchmark: what Istio's standard metrics cost on a waypoint (gRPC access logs -> agent).

The whole data path is the product's own, as in ``tests/support/mesh.py``: an in-process control
plane with its CA, a waypoint agent running a real Envoy, the client's ztunnel (``HboneProxy``:
plain TCP in, HBONE to the waypoint) and a loopback backend pod (``bench_hbone``'s canned HTTP
server, its own process).  For ``--connections`` closed-loop keep-alive connections (client
processes of ``bench_hbone``) it prints requests/s and p50/p99 latency:

* ``direct``: straight to the backend (the harness' ceiling);
* ``waypoint, metrics off``: mesh config without a metrics provider (no access logger at all);
* ``waypoint, metrics on``: ``defaultProviders.metrics: [prometheus]``: every request is logged to
  the agent over gRPC and aggregated there.

"added p99" is the waypoint run's p99 minus the direct p99.  After the metrics run it also prints
what the agent aggregated and dropped, and Envoy's own ``logs_dropped`` (entries Envoy dropped
because the agent's stream was backed up): collection never blocks the data path, it drops.

    python bench/bench_metrics.py                       # 1 and 16 connections, 5 s each
    python bench/bench_metrics.py --connections 1,16,64 --seconds 10
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import multiprocessing
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import aiohttp
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_hbone import POD_IP, REQUEST, backend_main, free_port

from istiod_lite.hbone import Endpoint
from istiod_lite.model.meshconfig import MeshConfig
from tests.support.mesh import ambient_mesh, exclusive_ip
from tests.support.meshyaml import SHOP_WAYPOINT
from tests.support.ports import alloc_vip

CONFIG = SHOP_WAYPOINT + """apiVersion: v1
kind: Service
metadata: {{name: reviews, namespace: shop}}
spec:
  clusterIP: {vip}
  selector: {{app: reviews}}
  ports: [{{name: http, port: 9080, targetPort: {port}}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: reviews-v1, namespace: shop, labels: {{app: reviews, version: v1}}}}
status: {{podIP: {pod}}}
"""
METRICS_ON = "defaultProviders: {metrics: [prometheus]}\nextensionProviders: [{name: prometheus, prometheus: {}}]\n"
METRICS_OFF = "extensionProviders: [{name: prometheus, prometheus: {}}]\n"
PROM_PORT = 15090


class _Client(asyncio.Protocol):
    """One closed-loop keep-alive connection: a GET, wait for the whole response (Content-Length;
    Envoy adds headers, so responses are parsed, not matched), the next GET."""

    def __init__(self, latencies: list[float], stop_at: float, done: asyncio.Future[None]) -> None:
        self.latencies, self.stop_at, self.done = latencies, stop_at, done
        self.buffer, self.sent = b"", 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self._send()

    def _send(self) -> None:
        self.sent = time.perf_counter()
        self.transport.write(REQUEST)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = self.buffer[:end].decode("latin-1")
        m = re.search(r"(?im)^content-length:\s*(\d+)", head)
        length = int(m[1]) if m else 0
        if len(self.buffer) < end + 4 + length:
            return
        now = time.perf_counter()
        if not head.startswith("HTTP/1.1 200"):
            self.done.set_exception(RuntimeError(f"unexpected response {head[:80]!r}"))
            return
        self.buffer = self.buffer[end + 4 + length:]
        self.latencies.append(now - self.sent)
        if now < self.stop_at:
            self._send()
        else:
            self.transport.close()
            if not self.done.done():
                self.done.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_exception(exc or ConnectionError("closed by peer"))


def load_main(host: str, port: int, connections: int, seconds: float, warmup: float) -> list[float]:
    """One client process: ``connections`` closed-loop connections; the latencies after warm-up."""
    async def run() -> list[float]:
        loop = asyncio.get_running_loop()
        latencies: list[float] = []
        measured_from = time.perf_counter() + warmup
        dones = []
        for _ in range(connections):
            done: asyncio.Future[None] = loop.create_future()
            await loop.create_connection(functools.partial(_Client, latencies, measured_from + seconds, done),
                                         host, port)
            dones.append(done)
        await asyncio.gather(*dones)
        return latencies[int(len(latencies) * warmup / (warmup + seconds)):]

    return asyncio.run(run())


def http_load(endpoint: Endpoint, connections: int, seconds: float, procs: int) -> tuple[float, float, float]:
    """(requests/s, p50 ms, p99 ms) over ``procs`` client processes."""
    procs = max(1, min(procs, connections))
    shares = [connections // procs + (1 if i < connections % procs else 0) for i in range(procs)]
    with multiprocessing.get_context("spawn").Pool(procs) as pool:
        results = pool.starmap(load_main, [(endpoint.host, endpoint.port, n, seconds, 0.5) for n in shares])
    latencies = sorted(x for lat in results for x in lat)
    return len(latencies) / seconds, statistics.median(latencies) * 1000, latencies[int(len(latencies) * 0.99)] * 1000


@contextmanager
def backend(port: int) -> Iterator[None]:
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    proc = ctx.Process(target=backend_main, args=(port, free_port(POD_IP), ready), daemon=True)
    proc.start()
    if not ready.wait(10):
        raise RuntimeError("backend did not start")
    try:
        yield
    finally:
        proc.terminate()
        proc.join(5)


def sample(text: str, name: str) -> float:
    return sum(float(m[1]) for m in re.finditer(rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$", text, re.M))


async def through_waypoint(tmp: Path, mesh_yaml: str, port: int, conns: list[int], seconds: float, procs: int
                           ) -> tuple[dict[int, tuple[float, float, float]], str]:
    wp, vip = exclusive_ip(), alloc_vip()
    cfg = tmp / f"cfg-{time.monotonic_ns()}"
    cfg.mkdir(parents=True)
    (cfg / "mesh.yaml").write_text(CONFIG.format(wp=wp, vip=vip, port=port, pod=POD_IP))
    mesh_config = MeshConfig.model_validate(yaml.safe_load(mesh_yaml))
    out: dict[int, tuple[float, float, float]] = {}
    async with ambient_mesh(tmp / f"mesh-{time.monotonic_ns()}", cfg, mesh=mesh_config) as mesh, \
            mesh.waypoint("shop", "waypoint", wp, prometheus_port=PROM_PORT), \
            mesh.client([(vip, 9080)], wp) as local:
        host, lport = local[(vip, 9080)].rsplit(":", 1)
        endpoint = Endpoint(host, int(lport))
        deadline = time.monotonic() + 30
        while True:  # until the waypoint routes
            try:
                async with aiohttp.ClientSession() as http, http.get(f"http://{host}:{lport}/") as r:
                    if r.status == 200:
                        break
            except (aiohttp.ClientError, OSError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("no traffic through the waypoint")
            await asyncio.sleep(0.2)
        for n in conns:
            out[n] = await asyncio.to_thread(http_load, endpoint, n, seconds, procs)
        await asyncio.sleep(1.0)  # the last batches (0.5 s flush)
        async with aiohttp.ClientSession() as http, http.get(f"http://{wp}:{PROM_PORT}/stats/prometheus") as r:
            stats = await r.text()
    return out, stats


async def main_async(args: argparse.Namespace) -> None:
    conns = [int(x) for x in args.connections.split(",")]
    port = free_port(POD_IP)
    with tempfile.TemporaryDirectory(prefix="bench-metrics-") as d, backend(port):
        tmp = Path(d)
        direct = {n: await asyncio.to_thread(http_load, Endpoint(POD_IP, port), n, args.seconds, args.procs)
                  for n in conns}
        off, _ = await through_waypoint(tmp, METRICS_OFF, port, conns, args.seconds, args.procs)
        on, stats = await through_waypoint(tmp, METRICS_ON, port, conns, args.seconds, args.procs)
    print(f"{'connections':>11} {'run':<24} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'added p99':>10}")
    for n in conns:
        for label, res in (("direct", direct), ("waypoint, metrics off", off), ("waypoint, metrics on", on)):
            rps, p50, p99 = res[n]
            added = "" if label == "direct" else f"{p99 - direct[n][2]:10.2f}"
            print(f"{n:>11} {label:<24} {rps:9.0f} {p50:8.2f} {p99:8.2f} {added:>10}")
    print(f"metrics run: istio_requests_total={sample(stats, 'istio_requests_total'):.0f} "
          f"agent entries={sample(stats, 'istiod_lite_agent_stats_entries_total'):.0f} "
          f"agent dropped={sample(stats, 'istiod_lite_agent_stats_dropped_entries_total'):.0f} "
          f"envoy logs_dropped={sample(stats, 'envoy_access_logs_grpc_access_log_logs_dropped'):.0f} "
          f"envoy logs_written={sample(stats, 'envoy_access_logs_grpc_access_log_logs_written'):.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", default="1,16", help="comma-separated connection counts")
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per run")
    parser.add_argument("--procs", type=int, default=2, help="load client processes")
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
