"""Benchmark: CA throughput (CSR/s) and event-loop lag under CSR load (CA issue).

The server runs in its own process (this script with ``--serve``): the real ``CaService`` on a
TLS port with a server certificate from the CA, plus a loop-lag probe (a task that sleeps 10 ms
and records how late it wakes).  Clients run in ``--client-procs`` other processes, each with its
share of ``--clients`` concurrent workers; every worker has its own TLS channel, its own token and
a CSR generated before timing starts, so client-side key and CSR work is not measured.

For each CA key type (P-256, RSA-2048) and each signing backend (thread, process):

1. closed loop: all workers call CreateCertificate back to back for ``--seconds``; prints CSR/s;
2. paced: ``--paced-rate`` CSR/s (open loop) for ``--seconds``; prints the server's loop-lag
   p50/p99/max and the clients' latency p50/p99.

    python bench/bench_ca.py                       # everything, 200 clients
    python bench/bench_ca.py --key-types ec-p256 --backends thread --seconds 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from istiod_lite._generated.istio.v1.auth import ca_pb2, ca_pb2_grpc
from istiod_lite.ca.authn import Authenticators
from istiod_lite.ca.authority import CertificateAuthority
from istiod_lite.ca.backend import ProcessBackend, SigningBackend, ThreadBackend, authenticate_and_sign
from istiod_lite.ca.config import CaConfig, build_authenticators, build_authority, load_material
from istiod_lite.ca.keystore import ROOT_CERT
from istiod_lite.ca.service import CaService
from istiod_lite.ca.servercert import server_credentials
from istiod_lite.ca.tokens import create_token

LAG_INTERVAL = 0.010


# -- server process --------------------------------------------------------------------------------
class LagProbe:
    """Sleeps ``LAG_INTERVAL`` in a loop and records how much later than asked it wakes up."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            start = loop.time()
            await asyncio.sleep(LAG_INTERVAL)
            self.samples.append(loop.time() - start - LAG_INTERVAL)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    def report(self) -> dict[str, float]:
        s = sorted(self.samples) or [0.0]
        return {"n": len(s), "p50_ms": 1000 * s[len(s) // 2], "p99_ms": 1000 * s[int(len(s) * 0.99)],
                "max_ms": 1000 * s[-1]}


class InlineBackend:
    """For comparison only: signs on the event loop (what the service must not do)."""

    def __init__(self, authority: CertificateAuthority, authenticators: Authenticators) -> None:
        self.material = authority.material
        self._args = (authority, authenticators)

    async def create_certificate(self, csr_pem: str, ttl_seconds: int, metadata: Mapping[str, str],
                                 peer_cert_der: bytes | None) -> list[str]:
        return authenticate_and_sign(*self._args, csr_pem, ttl_seconds, metadata, peer_cert_der)

    async def close(self) -> None:
        pass


class NoopBackend:
    """For comparison only: returns a fixed chain, measuring gRPC and TLS alone."""

    def __init__(self, authority: CertificateAuthority) -> None:
        self.material = authority.material
        self._chain = ["x" * 700, *authority.material.chain_tail_pem]

    async def create_certificate(self, csr_pem: str, ttl_seconds: int, metadata: Mapping[str, str],
                                 peer_cert_der: bytes | None) -> list[str]:
        return self._chain

    async def close(self) -> None:
        pass


def cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


async def serve(ca_dir: Path, key_type: str, backend_name: str, workers: int) -> None:
    config = CaConfig(ca_dir=ca_dir, key_type=key_type)  # type: ignore[arg-type]
    material = load_material(config)
    authority = build_authority(config, material)
    backend: SigningBackend
    if backend_name == "process":
        backend = ProcessBackend(config, material, workers=workers)
    elif backend_name == "noop":
        backend = NoopBackend(authority)
    elif backend_name == "inline":
        backend = InlineBackend(authority, build_authenticators(config, material))
    else:
        backend = ThreadBackend(authority, build_authenticators(config, material))
    service = CaService(backend)
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    service.add_to_server(server)
    port = server.add_secure_port("127.0.0.1:0", server_credentials(authority, ["127.0.0.1"]))
    await server.start()
    if backend_name == "process":  # warm the workers up so their start-up is not measured
        await asyncio.gather(*(_warm(backend) for _ in range(workers * 2)))
    probe = LagProbe()
    probe.start()
    print(json.dumps({"port": port}), flush=True)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    cpu0 = cpu_seconds()
    while line := (await reader.readline()).decode().strip():
        if line == "reset":
            probe.samples.clear()
            cpu0 = cpu_seconds()
            print(json.dumps({"ok": True}), flush=True)
        elif line == "report":
            print(json.dumps({**probe.report(), "cpu_s": cpu_seconds() - cpu0,
                              "issued": service.metrics.issued._value.get()}), flush=True)
    await server.stop(None)
    await backend.close()


async def _warm(backend: SigningBackend) -> None:
    try:
        await backend.create_certificate("", 0, {}, None)
    except Exception:  # noqa: BLE001 - an UNAUTHENTICATED error is the expected answer
        pass


# -- client processes ------------------------------------------------------------------------------
def make_csr(identity: str) -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
           .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(identity)]), critical=False)
           .sign(key, hashes.SHA256()))
    return csr.public_bytes(serialization.Encoding.PEM).decode()


async def client_main(spec: dict[str, object]) -> dict[str, object]:
    ca_dir = Path(str(spec["ca_dir"]))
    root = (ca_dir / ROOT_CERT).read_bytes()
    first, count = int(spec["first"]), int(spec["count"])  # type: ignore[call-overload]
    creds = grpc.ssl_channel_credentials(root)
    workers = []
    for i in range(first, first + count):
        ns, sa = f"ns-{i % 20}", f"sa-{i}"
        token = create_token(ca_dir, ns, sa)
        csr = make_csr(f"spiffe://cluster.local/ns/{ns}/sa/{sa}")
        channel = grpc.aio.secure_channel(f"127.0.0.1:{spec['port']}", creds)
        stub = ca_pb2_grpc.IstioCertificateServiceStub(channel)
        req = ca_pb2.IstioCertificateRequest(csr=csr, validity_duration=3600)
        workers.append((channel, stub, req, [("authorization", f"Bearer {token}")]))
    for _, stub, req, md in workers:  # connect and handshake before timing
        await stub.CreateCertificate(req, metadata=md)
    seconds = float(spec["seconds"])  # type: ignore[arg-type]
    rate = float(spec["rate"])  # type: ignore[arg-type]
    latencies: list[float] = []
    errors = 0
    start_at = float(spec["start_at"])  # type: ignore[arg-type]
    await asyncio.sleep(max(0.0, start_at - time.time()))
    t0 = time.perf_counter()
    cpu0 = cpu_seconds()
    deadline = t0 + seconds

    async def one(stub: ca_pb2_grpc.IstioCertificateServiceStub, req: ca_pb2.IstioCertificateRequest,
                  md: list[tuple[str, str]]) -> None:
        nonlocal errors
        s = time.perf_counter()
        try:
            resp = await stub.CreateCertificate(req, metadata=md)
            if len(resp.cert_chain) < 2:
                errors += 1
        except grpc.aio.AioRpcError:
            errors += 1
        latencies.append(time.perf_counter() - s)

    if rate <= 0:  # closed loop
        async def loop_worker(w: tuple[grpc.aio.Channel, ca_pb2_grpc.IstioCertificateServiceStub,
                                       ca_pb2.IstioCertificateRequest, list[tuple[str, str]]]) -> None:
            while time.perf_counter() < deadline:
                await one(w[1], w[2], w[3])
        await asyncio.gather(*(loop_worker(w) for w in workers))
    else:  # open loop at ``rate``, round-robin over the channels
        tasks = []
        n = 0
        while (now := time.perf_counter()) < deadline:
            due = t0 + n / rate
            if due > now:
                await asyncio.sleep(due - now)
            w = workers[n % len(workers)]
            tasks.append(asyncio.ensure_future(one(w[1], w[2], w[3])))
            n += 1
        await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - t0
    cpu = cpu_seconds() - cpu0
    for channel, *_ in workers:
        await channel.close()
    return {"done": len(latencies), "errors": errors, "elapsed": elapsed, "latencies": latencies, "cpu": cpu}


def client_process(spec: dict[str, object], out: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    out.put(asyncio.run(client_main(spec)))


# -- driver ----------------------------------------------------------------------------------------
class ServerProc:
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
            raise RuntimeError("server exited")
        result: dict[str, float] = json.loads(line)
        return result

    def command(self, cmd: str) -> dict[str, float]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()
        return self._read()

    def stop(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def run_clients(args: argparse.Namespace, ca_dir: Path, port: int, rate: float) -> dict[str, object]:
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    procs = []
    per = [args.clients // args.client_procs + (1 if i < args.clients % args.client_procs else 0)
           for i in range(args.client_procs)]
    start_at = time.time() + 3.0 + 0.02 * args.clients / args.client_procs
    first = 0
    for count in per:
        spec = {"ca_dir": str(ca_dir), "port": port, "first": first, "count": count, "seconds": args.seconds,
                "rate": rate / args.client_procs, "start_at": start_at}
        first += count
        p = ctx.Process(target=client_process, args=(spec, out))
        p.start()
        procs.append(p)
    results = [out.get(timeout=args.seconds + 120) for _ in procs]
    for p in procs:
        p.join()
    lat = sorted(x for r in results for x in r["latencies"])  # type: ignore[attr-defined]
    done = sum(int(r["done"]) for r in results)  # type: ignore[call-overload]
    elapsed = max(float(r["elapsed"]) for r in results)  # type: ignore[arg-type]
    return {"done": done, "errors": sum(int(r["errors"]) for r in results),  # type: ignore[call-overload]
            "rate": done / elapsed, "client_cpu_us": 1e6 * sum(float(r["cpu"]) for r in results) / max(1, done),  # type: ignore[arg-type]
            "p50_ms": 1000 * lat[len(lat) // 2], "p99_ms": 1000 * lat[int(len(lat) * 0.99)]}


def bench(args: argparse.Namespace, key_type: str, backend: str) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-ca-") as tmp:
        ca_dir = Path(tmp) / "ca"
        server = ServerProc(ca_dir, key_type, backend, args.workers)
        try:
            server.command("reset")
            closed = run_clients(args, ca_dir, server.port, 0)
            closed_srv = server.command("report")
            print(f"{key_type:9} {backend:7} closed-loop {args.clients} clients: {closed['rate']:7.0f} CSR/s "
                  f"(errors {closed['errors']}, latency p50 {closed['p50_ms']:.1f} ms p99 {closed['p99_ms']:.1f} ms, "
                  f"CPU/CSR server {1e6 * closed_srv['cpu_s'] / max(1, closed['done']):.0f} us "
                  f"clients {closed['client_cpu_us']:.0f} us, "
                  f"loop lag p99 {closed_srv['p99_ms']:.1f} ms)", flush=True)
            if args.paced_rate > 0:
                server.command("reset")
                paced = run_clients(args, ca_dir, server.port, args.paced_rate)
                lag = server.command("report")
                print(f"{key_type:9} {backend:7} paced {args.paced_rate:.0f}/s: achieved {paced['rate']:.0f} CSR/s "
                      f"(errors {paced['errors']}), loop lag p50 {lag['p50_ms']:.2f} ms p99 {lag['p99_ms']:.2f} ms "
                      f"max {lag['max_ms']:.2f} ms, server CPU {1e6 * lag['cpu_s'] / max(1, paced['done']):.0f} us/CSR, latency p50 {paced['p50_ms']:.1f} ms p99 {paced['p99_ms']:.1f} ms",
                      flush=True)
        finally:
            server.stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", type=int, default=200)
    p.add_argument("--client-procs", type=int, default=2)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--paced-rate", type=float, default=500.0)
    p.add_argument("--key-types", default="ec-p256,rsa-2048")
    p.add_argument("--backends", default="thread,process")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 2, help="process backend size")
    # internal: server mode
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--ca-dir", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--key-type", default="ec-p256", help=argparse.SUPPRESS)
    p.add_argument("--backend", default="thread", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve:
        if os.environ.get("BENCH_CA_PROFILE"):
            import cProfile
            cProfile.runctx("asyncio.run(serve(args.ca_dir, args.key_type, args.backend, args.workers))",
                            globals(), locals(), os.environ["BENCH_CA_PROFILE"])
        else:
            asyncio.run(serve(args.ca_dir, args.key_type, args.backend, args.workers))
        return
    print(f"cores {os.cpu_count()}, clients {args.clients} in {args.client_procs} process(es), "
          f"{args.seconds:.0f} s per phase", flush=True)
    for key_type in args.key_types.split(","):
        for backend in args.backends.split(","):
            bench(args, key_type, backend)
    statistics.mean([0.0])  # keep the import honest for future summary maths


if __name__ == "__main__":
    main()
