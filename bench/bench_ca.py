"""Benchmark: CA throughput (CSR/s) and event-loop lag under CSR load (CA issue).

The server runs in its own process (this script with ``--serve``): the real ``CaService`` on a TLS
port with a server certificate from the CA, plus a loop-lag probe (a task that sleeps 10 ms and
records how late it wakes).  Clients run in ``--client-procs`` other processes, each with its
share of ``--clients`` concurrent callers; every caller has its own TLS channel, its own token and
a CSR made before timing starts, so client-side key and CSR work is not measured (the clients'
gRPC work is, on the same cores: it is printed so the server's share can be read off).

For each CA key type and each signing backend:

1. closed loop: all callers call CreateCertificate back to back for ``--seconds``: CSR/s;
2. paced: ``--paced-rate`` CSR/s (open loop) for ``--seconds``: the server's loop lag p50/p99/max
   and the clients' latency.

Backends: ``thread`` (CaRuntime default), ``workers`` (``processes=N``); for reference only,
``noop`` (gRPC + TLS with a canned answer: the ceiling of this harness) and ``inline`` (signing on
the event loop, which the service never does).

    python bench/bench_ca.py                          # P-256 and RSA-2048 CA, thread and workers
    python bench/bench_ca.py --key-types ec-p256 --backends noop,inline,thread,workers --seconds 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from istiod_lite._generated.istio.v1.auth import ca_pb2, ca_pb2_grpc
from istiod_lite.ca.authn import Authenticators
from istiod_lite.ca.authority import CertificateAuthority
from istiod_lite.ca.backend import SigningBackend, ThreadBackend, authenticate_and_sign
from istiod_lite.ca.config import CaConfig, build_authenticators, build_authority, load_material
from istiod_lite.ca.keystore import ROOT_CERT
from istiod_lite.ca.servercert import server_credentials
from istiod_lite.ca.service import CaService
from istiod_lite.ca.tokens import create_token
from istiod_lite.ca.workers import WorkerPoolBackend

LAG_INTERVAL = 0.010
TARGETS = {"ec-p256": 3000.0, "rsa-2048": 1500.0}
LAG_TARGET_MS = 50.0


def cpu_seconds(pids: list[int] | None = None) -> float:
    """CPU time of this process, plus that of ``pids`` (signing workers) when given."""
    t = os.times()
    total = t.user + t.system
    for pid in pids or []:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def busy_cpu_seconds() -> float:
    """CPU seconds all processes on the machine have used (``/proc/stat``), to spot other load."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except OSError:
        return 0.0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def percentile(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * q))] if sorted_values else 0.0


# -- server process ----------------------------------------------------------------------------------
class LagProbe:
    """Sleeps ``LAG_INTERVAL`` in a loop and records how much later than asked it wakes up."""

    def __init__(self) -> None:
        self.samples: list[float] = []

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            start = loop.time()
            await asyncio.sleep(LAG_INTERVAL)
            self.samples.append(loop.time() - start - LAG_INTERVAL)

    def report(self) -> dict[str, float]:
        s = sorted(self.samples)
        return {"p50_ms": 1000 * percentile(s, 0.5), "p99_ms": 1000 * percentile(s, 0.99),
                "max_ms": 1000 * (s[-1] if s else 0.0)}


class InlineBackend:
    """Reference only: signs on the event loop (what the service must not do)."""

    def __init__(self, authority: CertificateAuthority, authenticators: Authenticators) -> None:
        self.material = authority.material
        self._args = (authority, authenticators)

    async def create_certificate(self, csr_pem: str, ttl_seconds: int, metadata: Mapping[str, str],
                                 peer_cert_der: bytes | None) -> list[str]:
        return authenticate_and_sign(*self._args, csr_pem, ttl_seconds, metadata, peer_cert_der)

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass


class NoopBackend(InlineBackend):
    """Reference only: a canned chain, so gRPC and TLS alone are measured."""

    async def create_certificate(self, csr_pem: str, ttl_seconds: int, metadata: Mapping[str, str],
                                 peer_cert_der: bytes | None) -> list[str]:
        return ["x" * 700, *self.material.chain_tail_pem]


async def serve(ca_dir: Path, key_type: str, backend_name: str, workers: int) -> None:
    config = CaConfig(ca_dir=ca_dir, key_type=key_type)  # type: ignore[arg-type]
    material = load_material(config)
    authority = build_authority(config, material)
    backend: SigningBackend
    if backend_name == "workers":
        backend = WorkerPoolBackend(config, material, workers)
    elif backend_name == "thread":
        backend = ThreadBackend(authority, build_authenticators(config, material))
    elif backend_name == "inline":
        backend = InlineBackend(authority, build_authenticators(config, material))
    elif backend_name == "noop":
        backend = NoopBackend(authority, build_authenticators(config, material))
    else:
        raise SystemExit(f"unknown backend {backend_name}")
    await backend.start()
    service = CaService(backend)
    server = grpc.aio.server()
    service.add_to_server(server)
    port = server.add_secure_port("127.0.0.1:0", server_credentials(authority, ["127.0.0.1"]))
    await server.start()
    probe = LagProbe()
    probe_task = asyncio.get_running_loop().create_task(probe.run())

    def server_cpu() -> tuple[float, float]:
        """(serving process, signing workers) CPU seconds."""
        main = cpu_seconds()
        return main, cpu_seconds(backend.worker_pids() if isinstance(backend, WorkerPoolBackend) else []) - main

    print(json.dumps({"port": port}), flush=True)
    reader = asyncio.StreamReader()
    await asyncio.get_running_loop().connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    cpu0 = server_cpu()
    while line := (await reader.readline()).decode().strip():
        if line == "reset":
            probe.samples.clear()
            cpu0 = server_cpu()
            print(json.dumps({}), flush=True)
        elif line == "report":
            cpu1 = server_cpu()
            print(json.dumps({**probe.report(), "cpu_main_s": cpu1[0] - cpu0[0], "cpu_workers_s": cpu1[1] - cpu0[1]}),
                  flush=True)
    probe_task.cancel()
    await server.stop(None)
    await backend.close()


# -- client processes --------------------------------------------------------------------------------
def make_csr(identity: str) -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
           .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(identity)]), critical=False)
           .sign(key, hashes.SHA256()))
    return csr.public_bytes(serialization.Encoding.PEM).decode()


@dataclass(frozen=True)
class ClientSpec:
    ca_dir: str
    port: int
    first: int
    count: int
    seconds: float
    rate: float  # <= 0: closed loop
    start_at: float  # wall clock, so every client process starts together


@dataclass
class ClientResult:
    done: int = 0
    errors: int = 0
    elapsed: float = 0.0
    cpu: float = 0.0
    cpu_total: float = 0.0  # including start-up (imports, CSRs, handshakes)
    latencies: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class Caller:
    channel: grpc.aio.Channel
    stub: ca_pb2_grpc.IstioCertificateServiceStub
    request: ca_pb2.IstioCertificateRequest
    metadata: list[tuple[str, str]]


async def client_main(spec: ClientSpec) -> ClientResult:
    ca_dir = Path(spec.ca_dir)
    creds = grpc.ssl_channel_credentials((ca_dir / ROOT_CERT).read_bytes())
    callers = []
    for i in range(spec.first, spec.first + spec.count):
        ns, sa = f"ns-{i % 20}", f"sa-{i}"
        channel = grpc.aio.secure_channel(f"127.0.0.1:{spec.port}", creds)
        callers.append(Caller(channel, ca_pb2_grpc.IstioCertificateServiceStub(channel),
                              ca_pb2.IstioCertificateRequest(csr=make_csr(f"spiffe://cluster.local/ns/{ns}/sa/{sa}"),
                                                             validity_duration=3600),
                              [("authorization", f"Bearer {create_token(ca_dir, ns, sa)}")]))
    for c in callers:  # connect (TLS handshake) before timing
        await c.stub.CreateCertificate(c.request, metadata=c.metadata)
    result = ClientResult()
    await asyncio.sleep(max(0.0, spec.start_at - time.time()))
    t0, cpu0 = time.perf_counter(), cpu_seconds()
    deadline = t0 + spec.seconds

    async def one(c: Caller) -> None:
        start = time.perf_counter()
        try:
            resp = await c.stub.CreateCertificate(c.request, metadata=c.metadata)
            result.errors += len(resp.cert_chain) < 2
        except grpc.aio.AioRpcError:
            result.errors += 1
        result.latencies.append(time.perf_counter() - start)

    if spec.rate <= 0:
        async def closed_loop(c: Caller) -> None:
            while time.perf_counter() < deadline:
                await one(c)
        await asyncio.gather(*(closed_loop(c) for c in callers))
    else:  # open loop: request n is due at t0 + n / rate, round-robin over the callers
        tasks, n = [], 0
        while (now := time.perf_counter()) < deadline:
            due = t0 + n / spec.rate
            if due > now:
                await asyncio.sleep(due - now)
            tasks.append(asyncio.ensure_future(one(callers[n % len(callers)])))
            n += 1
        await asyncio.gather(*tasks)
    result.elapsed, result.cpu = time.perf_counter() - t0, cpu_seconds() - cpu0
    result.done = len(result.latencies)
    for c in callers:
        await c.channel.close()
    result.cpu_total = cpu_seconds()
    return result


def client_process(spec: ClientSpec, out: Any) -> None:
    out.put(asyncio.run(client_main(spec)))


# -- driver ------------------------------------------------------------------------------------------
class ServerProc:
    """The ``--serve`` subprocess, driven over stdin/stdout (one JSON line per command)."""

    def __init__(self, ca_dir: Path, key_type: str, backend: str, workers: int) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--serve", "--ca-dir", str(ca_dir), "--key-type", key_type,
             "--backend", backend, "--workers", str(workers)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.port = int(self._read()["port"])

    def _read(self) -> dict[str, float]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("bench server exited")
        reply: dict[str, float] = json.loads(line)
        return reply

    def command(self, cmd: str) -> dict[str, float]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()
        return self._read()

    def stop(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@dataclass(frozen=True)
class Phase:
    seconds: float
    machine_cpu_s: float  # every process on the machine, for the "other load" figure
    client_total_cpu_s: float
    rate: float
    done: int
    errors: int
    client_cpu_us: float
    p50_ms: float
    p99_ms: float


def run_clients(args: argparse.Namespace, ca_dir: Path, port: int, rate: float) -> Phase:
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    n = args.client_procs
    counts = [args.clients // n + (1 if i < args.clients % n else 0) for i in range(n)]
    start_at = time.time() + 3.0 + 0.03 * args.clients / n  # time for every process to connect
    busy0, t0 = busy_cpu_seconds(), time.monotonic()
    procs, first = [], 0
    for count in counts:
        spec = ClientSpec(str(ca_dir), port, first, count, args.seconds, rate / n, start_at)
        first += count
        proc = ctx.Process(target=client_process, args=(spec, out))
        proc.start()
        procs.append(proc)
    results: list[ClientResult] = [out.get(timeout=args.seconds + 180) for _ in procs]
    for proc in procs:
        proc.join()
    busy, seconds = busy_cpu_seconds() - busy0, time.monotonic() - t0
    latencies = sorted(x for r in results for x in r.latencies)
    done = sum(r.done for r in results)
    return Phase(seconds=seconds, machine_cpu_s=busy, client_total_cpu_s=sum(r.cpu_total for r in results),
                 rate=done / max(r.elapsed for r in results), done=done, errors=sum(r.errors for r in results),
                 client_cpu_us=1e6 * sum(r.cpu for r in results) / max(1, done),
                 p50_ms=1000 * percentile(latencies, 0.5), p99_ms=1000 * percentile(latencies, 0.99))


def other_load(phase: Phase, server_cpu_s: float) -> float:
    """Cores used by processes other than this benchmark's, averaged over the phase.

    The phase window includes client start-up, so this is approximate; anything well above 0.1
    means another workload shared the cores and the figures above are low."""
    ours = server_cpu_s + phase.client_total_cpu_s
    return max(0.0, phase.machine_cpu_s - ours) / phase.seconds


def bench(args: argparse.Namespace, key_type: str, backend: str) -> None:
    label = f"{key_type:8} {backend:7}"
    with tempfile.TemporaryDirectory(prefix="bench-ca-") as tmp:
        ca_dir = Path(tmp) / "ca"
        server = ServerProc(ca_dir, key_type, backend, args.workers)
        try:
            server.command("reset")
            closed = run_clients(args, ca_dir, server.port, 0)
            srv = server.command("report")

            def per_csr(seconds: float) -> float:
                return 1e6 * seconds / max(1, closed.done)
            target = TARGETS.get(key_type, 0.0)
            verdict = "" if backend in ("noop", "inline") else (
                f" [target {target:.0f}: {'met' if closed.rate >= target else 'MISSED'}]")
            print(f"{label} closed loop, {args.clients} callers: {closed.rate:6.0f} CSR/s{verdict}; errors "
                  f"{closed.errors}; latency p50 {closed.p50_ms:.0f} ms p99 {closed.p99_ms:.0f} ms; CPU per CSR: "
                  f"server {per_csr(srv['cpu_main_s']):.0f} us + workers {per_csr(srv['cpu_workers_s']):.0f} us, "
                  f"clients {closed.client_cpu_us:.0f} us; other load ~"
                  f"{other_load(closed, srv['cpu_main_s'] + srv['cpu_workers_s']):.2f} cores", flush=True)
            if args.paced_rate > 0:
                server.command("reset")
                paced = run_clients(args, ca_dir, server.port, args.paced_rate)
                lag = server.command("report")
                verdict = f"[target <{LAG_TARGET_MS:.0f} ms: {'met' if lag['p99_ms'] < LAG_TARGET_MS else 'MISSED'}]"
                print(f"{label} paced {args.paced_rate:.0f}/s: {paced.rate:.0f} CSR/s, errors {paced.errors}; "
                      f"loop lag p50 {lag['p50_ms']:.2f} ms p99 {lag['p99_ms']:.2f} ms {verdict} "
                      f"max {lag['max_ms']:.1f} ms; latency p50 {paced.p50_ms:.1f} ms p99 {paced.p99_ms:.1f} ms; "
                      f"other load ~{other_load(paced, lag['cpu_main_s'] + lag['cpu_workers_s']):.2f} cores",
                      flush=True)
        finally:
            server.stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", type=int, default=200)
    p.add_argument("--client-procs", type=int, default=2)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--paced-rate", type=float, default=500.0, help="0 skips the paced phase")
    p.add_argument("--key-types", default="ec-p256,rsa-2048")
    p.add_argument("--backends", default="thread,workers")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 2, help="signing processes (workers backend)")
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--ca-dir", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--key-type", default="ec-p256", help=argparse.SUPPRESS)
    p.add_argument("--backend", default="thread", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve:
        asyncio.run(serve(args.ca_dir, args.key_type, args.backend, args.workers))
        return
    load = Path("/proc/loadavg").read_text().split()[0] if Path("/proc/loadavg").exists() else "?"
    print(f"cores {os.cpu_count()}, load average {load} before start; {args.clients} callers in "
          f"{args.client_procs} client processes on the same cores; {args.seconds:.0f} s per phase; "
          f"workers backend: {args.workers} processes", flush=True)
    for key_type in args.key_types.split(","):
        for backend in args.backends.split(","):
            bench(args, key_type, backend)


if __name__ == "__main__":
    main()
