"""Benchmark: one waypoint serving 10,000 services from a directory of YAML files (issue 13, item 5).

The mesh (``tests/support/scalemesh.py``): ``--services`` Services, two Pods each (half ambient),
a DestinationRule with two subsets and a VirtualService with a 90/10 split per service, spread
over ``--namespaces`` namespaces, all bound to one waypoint; written as ~100 files of at most
``--per-file`` services per kind (10,000 services: every file well under 1 MB).

Each run starts ``istiod-lite serve --config DIR`` as a subprocess with default flags (loopback
ports) and measures:

1. process start -> ``/ready`` 200 on the monitoring port (Python start-up, imports, YAML load,
   translation and serialisation of the waypoint), with the server's own log lines giving the
   split: start -> "config revision 1" (load) -> "serving" (translate + serialise + listen);
2. one fake replica of the waypoint connects over Delta ADS and behaves like Envoy (CDS; then EDS
   for its EDS clusters and LDS; then RDS for the route names its listeners' HTTP connection
   managers reference, if any), decoding every resource and ACKing every response: connect ->
   fully synced, of which the client's own decoding (Envoy's C++ would spend a fraction of it);
3. server RSS once synced (and its peak, VmHWM); bytes received per type.

Targets: ready <= 10 s, first full push <= 3 s, RSS <= 500 MB.

``--in-process`` instead runs the server's steps in this process, each timed with the RSS after
it: ``DirectorySource.load()``, ``WaypointAssembly.shared`` (translate + telemetry), ``diagnose``
(the server's warning passes) and ``VersionedCache.versioned`` (serialise, hash, wrap);
``--tracemalloc`` adds the largest allocation sites (slow: tracing multiplies the times).

    python bench/bench_scale.py                    # 10,000 services, 3 runs
    python bench/bench_scale.py --services 2000 --runs 1
    python bench/bench_scale.py --in-process [--tracemalloc]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import gc
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2, extension_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc
from envoy.service.discovery.v3 import discovery_pb2 as d

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.support.scalemesh import WAYPOINT_IP, WAYPOINT_NAME, WAYPOINT_NAMESPACE, write_scale_mesh

CDS = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
EDS = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
LDS = "type.googleapis.com/envoy.config.listener.v3.Listener"
RDS = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
ECDS = "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig"
HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
SHORT = {CDS: "CDS", EDS: "EDS", LDS: "LDS", RDS: "RDS", ECDS: "ECDS"}
MESSAGE: dict[str, Callable[[bytes], Any]] = {
    CDS: cluster_pb2.Cluster.FromString, EDS: endpoint_pb2.ClusterLoadAssignment.FromString,
    LDS: listener_pb2.Listener.FromString, RDS: route_pb2.RouteConfiguration.FromString,
    ECDS: extension_pb2.TypedExtensionConfig.FromString,
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` so far (less disturbed by a busy machine than wall time)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def status_kb(pid: int | str, field_name: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    return 0


def node() -> base_pb2.Node:
    """A replica of the scale mesh's waypoint, as the agent's bootstrap names it."""
    ns = WAYPOINT_NAMESPACE
    n = base_pb2.Node(id=f"waypoint~{WAYPOINT_IP}~{WAYPOINT_NAME}-0.{ns}~{ns}.svc.cluster.local",
                      user_agent_name="envoy")
    n.metadata.fields["NAMESPACE"].string_value = ns
    n.metadata.fields["LABELS"].struct_value.fields["gateway.networking.k8s.io/gateway-name"].string_value = \
        WAYPOINT_NAME
    return n


@dataclass
class Replica:
    """What one fake Envoy received; ``decode_s`` is the time it spent decoding resources."""

    bytes_by_type: Counter[str] = field(default_factory=Counter)
    resources_by_type: Counter[str] = field(default_factory=Counter)
    decode_s: float = 0.0
    want: dict[str, set[str]] = field(default_factory=dict)  # EDS/RDS/ECDS names subscribed, not yet received
    #: Per type, the names asked for (an RDS name equals its chain's EDS cluster name: kept apart).
    subscribed: dict[str, set[str]] = field(default_factory=dict)
    seen: set[str] = field(default_factory=set)

    @property
    def synced(self) -> bool:
        return {CDS, LDS} <= self.seen and all(not names for names in self.want.values())


def filter_config_names(listener: listener_pb2.Listener) -> set[str]:
    """ECDS names the listener's filters refer to (network filters and HTTP filters with
    ``config_discovery``; Envoy subscribes to these and warms the listener until they arrive)."""
    out: set[str] = set()
    for chain in listener.filter_chains:
        for f in chain.filters:
            if f.HasField("config_discovery"):
                out.add(f.name)
            elif f.typed_config.type_url == HCM:
                hcm = hcm_pb2.HttpConnectionManager.FromString(f.typed_config.value)
                out.update(h.name for h in hcm.http_filters if h.HasField("config_discovery"))
    return out


def route_names(listener: listener_pb2.Listener) -> set[str]:
    """RDS names the listener's HTTP connection managers refer to (Envoy subscribes to these)."""
    chains = list(listener.filter_chains)
    if listener.HasField("default_filter_chain"):
        chains.append(listener.default_filter_chain)
    out: set[str] = set()
    for chain in chains:
        for f in chain.filters:
            if f.typed_config.type_url == HCM:
                hcm = hcm_pb2.HttpConnectionManager.FromString(f.typed_config.value)
                if hcm.HasField("rds"):
                    out.add(hcm.rds.route_config_name)
    return out


async def sync_replica(target: str, timeout: float, quiet: float = 0.5) -> tuple[Replica, float]:
    """Connect one Delta ADS stream and behave like Envoy until fully synced; (what it got, seconds).

    Delta has no end-of-push marker and the server splits a large push into several responses,
    so "fully synced" is: CDS and LDS received, every EDS/RDS/ECDS name subscribed received, and no
    further response within ``quiet`` seconds; the time reported is that of the last ACK.
    """
    rep = Replica()
    t0 = time.perf_counter()
    last = t0
    async with grpc.aio.insecure_channel(target, options=[("grpc.max_receive_message_length", 1 << 30)]) as ch:
        call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(ch).DeltaAggregatedResources()
        await call.write(d.DeltaDiscoveryRequest(node=node(), type_url=CDS))
        deadline = t0 + timeout
        while True:
            wait = quiet if rep.synced else max(0.1, deadline - time.perf_counter())
            try:
                resp = await asyncio.wait_for(call.read(), wait)
            except TimeoutError:
                if rep.synced:
                    break
                raise
            if resp is grpc.aio.EOF:
                raise RuntimeError("server closed the stream before the replica was synced")
            await _handle(call, rep, resp)
            last = time.perf_counter()
        call.cancel()
    return rep, last - t0


async def _handle(call: Any, rep: Replica, resp: d.DeltaDiscoveryResponse) -> None:
    """Decode, ACK, and subscribe to what the new resources refer to (EDS of EDS clusters, RDS of
    the listeners' connection managers), as Envoy does on every response of a type."""
    t = resp.type_url
    rep.bytes_by_type[SHORT.get(t, t)] += resp.ByteSize()
    rep.resources_by_type[SHORT.get(t, t)] += len(resp.resources)
    d0 = time.perf_counter()
    messages = [(r.name, MESSAGE[t](r.resource.value)) for r in resp.resources]
    routes = set().union(*(route_names(m) for _, m in messages)) if t == LDS and messages else set()
    filters = set().union(*(filter_config_names(m) for _, m in messages)) if t == LDS and messages else set()
    rep.decode_s += time.perf_counter() - d0
    await call.write(d.DeltaDiscoveryRequest(type_url=t, response_nonce=resp.nonce))  # ACK
    if t in rep.want:
        rep.want[t] -= {name for name, _ in messages}
    if t == CDS:
        eds = {m.name for _, m in messages if m.type == cluster_pb2.Cluster.EDS}
        await _subscribe(call, rep, EDS, eds)
        if LDS not in rep.subscribed:
            rep.subscribed[LDS] = set()
            await call.write(d.DeltaDiscoveryRequest(type_url=LDS))
    await _subscribe(call, rep, ECDS, filters)
    await _subscribe(call, rep, RDS, routes)
    rep.seen.add(t)


async def _subscribe(call: Any, rep: Replica, type_url: str, names: set[str]) -> None:
    """Subscribe ``type_url`` to the names not asked for yet, as Envoy does."""
    new = names - rep.subscribed.setdefault(type_url, set())
    if new:
        rep.subscribed[type_url] |= new
        rep.want.setdefault(type_url, set()).update(new)
        await call.write(d.DeltaDiscoveryRequest(type_url=type_url, resource_names_subscribe=sorted(new)))


def wait_ready(port: int, proc: subprocess.Popen[bytes], timeout: float) -> float:
    """Poll ``/ready`` every 20 ms; the ``time.time()`` at which it first answered 200."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        with contextlib.suppress(OSError, urllib.error.URLError), \
                urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=1) as r:
            if r.status == 200:
                return time.time()
        time.sleep(0.02)
    raise TimeoutError(f"not ready after {timeout} s")


def log_marks(log_text: str, start: float) -> dict[str, float]:
    """Seconds after ``start`` of the server's "config revision 1" and "serving" log lines."""
    marks: dict[str, float] = {}
    for line in log_text.splitlines():
        for label, needle in (("loaded", "config revision 1:"), ("serving", " serving plaintext xDS")):
            if needle in line and label not in marks:
                stamp = datetime.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
                marks[label] = stamp.timestamp() - start
    return marks


@dataclass
class RunResult:
    ready: float
    ready_cpu: float
    push: float
    decode: float
    ready_rss_mb: float
    rss_mb: float
    peak_mb: float
    marks: dict[str, float]
    replica: Replica


def run_once(config: Path, workdir: Path, run: int) -> RunResult:
    grpc_port, mon_port = free_port(), free_port()
    log_path = workdir / f"server-{run}.log"
    with open(log_path, "wb") as log:
        start = time.time()
        proc = subprocess.Popen(
            [sys.executable, "-m", "istiod_lite.cli.main", "serve", "--config", str(config),
             "--grpc-addr", f"127.0.0.1:{grpc_port}", "--monitoring-addr", f"127.0.0.1:{mon_port}"],
            stdout=log, stderr=subprocess.STDOUT)
    try:
        ready_at = wait_ready(mon_port, proc, 120)
        ready_cpu, ready_rss = cpu_seconds(proc.pid), status_kb(proc.pid, "VmRSS") / 1024
        rep, push = asyncio.run(sync_replica(f"127.0.0.1:{grpc_port}", 120))
        rss, peak = status_kb(proc.pid, "VmRSS") / 1024, status_kb(proc.pid, "VmHWM") / 1024
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    text = log_path.read_text(errors="replace")
    for line in text.splitlines():
        if (" ERROR " in line or " WARNING " in line or "Traceback" in line) and "no --ca-dir" not in line:
            print(f"  server log: {line}")
    return RunResult(ready_at - start, ready_cpu, push, rep.decode_s, ready_rss, rss, peak, log_marks(text, start), rep)


def serve_mode(args: argparse.Namespace, config: Path, workdir: Path) -> None:
    results = []
    for run in range(args.runs):
        r = run_once(config, workdir, run)
        results.append(r)
        rep = r.replica
        got = ", ".join(f"{t} {rep.resources_by_type[t]} ({rep.bytes_by_type[t] / 1e6:.1f} MB)"
                        for t in ("CDS", "EDS", "LDS", "RDS", "ECDS") if t in rep.resources_by_type)
        marks = ", ".join(f"{k} at {v:.2f} s" for k, v in r.marks.items())
        print(f"run {run + 1}: ready {r.ready:.2f} s ({marks}; server CPU {r.ready_cpu:.2f} s); "
              f"first full push {r.push:.2f} s "
              f"(client decoding {r.decode:.2f} s); server RSS {r.rss_mb:.0f} MB (at ready {r.ready_rss_mb:.0f}, "
              f"peak {r.peak_mb:.0f}); "
              f"received {got}")
    med = statistics.median
    print(f"median of {len(results)}: ready {med(r.ready for r in results):.2f} s (target <= 10; server CPU "
          f"{med(r.ready_cpu for r in results):.2f} s), "
          f"first full push {med(r.push for r in results):.2f} s (target <= 3; client decoding "
          f"{med(r.decode for r in results):.2f} s of it), server RSS {med(r.rss_mb for r in results):.0f} MB "
          f"(target <= 500; peak {med(r.peak_mb for r in results):.0f} MB)")


def in_process_mode(args: argparse.Namespace, config: Path) -> None:
    """The server's start-up steps, timed one by one in this process (after this process's imports)."""
    import tracemalloc

    from istiod_lite.controlplane.snapshots import VersionedCache
    from istiod_lite.gcpause import gc_paused
    from istiod_lite.sources import DirectorySource
    from istiod_lite.translator import WaypointAssembly
    from istiod_lite.translator.binding.waypoints import WaypointRef
    from istiod_lite.translator.diagnostics import diagnose

    if args.tracemalloc:
        tracemalloc.start(8)
    rss0 = status_kb("self", "VmRSS") / 1024
    print(f"in process: RSS before loading {rss0:.0f} MB (interpreter + imports)")
    keep: list[Any] = []

    def step(label: str, fn: Callable[[], Any]) -> Any:
        t0, c0 = time.perf_counter(), time.process_time()
        with gc_paused():  # as the server does from load to the end of the first translation
            out = fn()
        dt, cpu = time.perf_counter() - t0, time.process_time() - c0
        keep.append(out)
        print(f"  {label:<40} {dt:6.2f} s (CPU {cpu:5.2f} s)   RSS {status_kb('self', 'VmRSS') / 1024:5.0f} MB")
        return out

    update = step("load (DirectorySource.load)", DirectorySource(config).load)
    print(f"    {len(update.snapshot)} resources, {len(update.errors)} errors")
    gc.freeze()
    assembly = WaypointAssembly(WaypointRef(WAYPOINT_NAMESPACE, WAYPOINT_NAME), encoded=True)  # as the server
    shared = step("translate (WaypointAssembly.shared)", lambda: assembly.shared(update.snapshot))
    step("diagnose (warning passes)", lambda: diagnose(update.snapshot, None))
    versioned = step("serialise (VersionedCache.versioned)", lambda: VersionedCache().versioned(shared))
    counts = {SHORT.get(t, t.rsplit(".", 1)[-1]): len(v) for t, v in versioned.items()}
    size = sum(vr.size for items in versioned.values() for vr in items)
    print(f"    resources {counts}, {size / 1e6:.1f} MB serialised")
    gc.freeze()
    t0 = time.perf_counter()
    again = assembly.shared(update.snapshot)
    print(f"  translate again, nothing changed {time.perf_counter() - t0:6.3f} s (same object: {again is shared})")
    if args.tracemalloc:
        snap = tracemalloc.take_snapshot()
        print("  largest allocation sites (tracemalloc, live now):")
        for stat in snap.statistics("lineno")[:15]:
            print(f"    {stat.size / 1e6:7.1f} MB {stat.count:9d} blocks  {stat.traceback[0]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--services", type=int, default=10_000)
    ap.add_argument("--namespaces", type=int, default=10)
    ap.add_argument("--per-file", type=int, default=500, help="services per file (per kind and namespace)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--in-process", action="store_true", help="time the server's start-up steps in this process")
    ap.add_argument("--tracemalloc", action="store_true", help="with --in-process: largest allocation sites")
    args = ap.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    try:
        config = workdir / "config"
        config.mkdir()
        mesh = write_scale_mesh(config, args.services, namespaces=args.namespaces, per_file=args.per_file)
        print(f"scale mesh: {mesh.services} services, {2 * mesh.services} pods, {mesh.services} VirtualServices, "
              f"{mesh.services} DestinationRules, {mesh.namespaces} namespaces, one waypoint; {mesh.files} files, "
              f"{mesh.bytes / 1e6:.1f} MB (largest {mesh.largest_file / 1e6:.2f} MB)")
        if args.in_process:
            in_process_mode(args, config)
        else:
            serve_mode(args, config, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
