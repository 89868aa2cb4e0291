"""Benchmark: the HBONE data path, forwarder -> terminator -> backend, against the backend directly.

Two Envoys run exactly what ``istiod-lite hbone forward`` and ``istiod-lite hbone inbound`` run
(``HboneProxy``): the forwarder takes plain TCP and opens ``CONNECT <pod>:<port>`` over mTLS
(TLS 1.3, HTTP/2) to the terminator on ``<pod>:15008``, which hands each stream to the backend
named by the CONNECT authority.  Certificates come from an in-process CA.

* HTTP: ``--connections`` keep-alive connections (each its own tunnel), each sending GETs back to
  back for ``--seconds`` (closed loop): requests/s and latency p50/p99.  The same load straight to
  the backend ("direct") is the ceiling of this harness: client and backend are Python (asyncio
  protocols, in their own processes), so on a small machine they compete with Envoy for cores.
* Bulk: one connection moves ``--bulk-mib`` MiB up (client -> backend), then down: MB/s.

    python bench/bench_hbone.py
    python bench/bench_hbone.py --connections 1,8,32,64 --seconds 5 --envoy-concurrency 2
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import functools
import multiprocessing
import os
import socket
import statistics
import struct
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from istiod_lite.ca.authority import CertificateAuthority
from istiod_lite.ca.keystore import load_or_create
from istiod_lite.hbone import (
    Endpoint,
    FileCredentials,
    HboneConfig,
    HboneProxy,
    InboundTerminator,
    OutboundTunnel,
)

POD_IP = "127.0.2.200"
BODY = b'{"pod":"bench-1"}' + b" " * 47  # 64 bytes
RESPONSE = (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nx-pod: bench-1\r\ncontent-length: "
            + str(len(BODY)).encode() + b"\r\n\r\n" + BODY)
REQUEST = b"GET /bench HTTP/1.1\r\nhost: reviews:9080\r\nuser-agent: bench\r\n\r\n"
CHUNK = 1024 * 1024


# ----------------------------------------------------------------------------- backend process


class _HttpServer(asyncio.Protocol):
    """Answers every request (GET, no body) with the canned response; pipelining-safe."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport, self.buffer = transport, b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        n = self.buffer.count(b"\r\n\r\n")
        if n:
            self.buffer = self.buffer[self.buffer.rindex(b"\r\n\r\n") + 4:]
            self.transport.write(RESPONSE * n)


async def _bulk(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """``U``+len: read len bytes then answer ``OK``; ``D``+len: send len bytes.

    The client always closes first and this side only after its EOF: Envoy 1.40 turns an app's
    close *before* the client's into a stream reset on the terminator, which can cut off data still
    queued behind HTTP/2 flow control (docs/hbone.md, "Limits").
    """
    mode, length = struct.unpack("!cQ", await reader.readexactly(9))
    if mode == b"U":
        left = length
        while left:
            data = await reader.read(min(left, CHUNK))
            if not data:
                break
            left -= len(data)
        writer.write(b"OK")
    else:
        block, left = b"\0" * CHUNK, length
        while left:
            writer.write(block[:min(left, CHUNK)])
            left -= min(left, CHUNK)
            await writer.drain()
    await writer.drain()
    await reader.read()  # the client's EOF
    writer.close()


def backend_main(http_port: int, bulk_port: int, ready: multiprocessing.synchronize.Event) -> None:
    async def serve() -> None:
        loop = asyncio.get_running_loop()
        await loop.create_server(_HttpServer, POD_IP, http_port, backlog=1024)
        await asyncio.start_server(_bulk, POD_IP, bulk_port, limit=CHUNK)
        ready.set()
        await asyncio.Event().wait()

    asyncio.run(serve())


# ----------------------------------------------------------------------------- HTTP load (client processes)


class _HttpClient(asyncio.Protocol):
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
        if len(self.buffer) < len(RESPONSE):
            return
        now = time.perf_counter()
        if not self.buffer.startswith(b"HTTP/1.1 200"):
            self.done.set_exception(RuntimeError(f"unexpected response {self.buffer[:80]!r}"))
            return
        self.buffer = self.buffer[len(RESPONSE):]
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


def load_main(host: str, port: int, connections: int, seconds: float, warmup: float) -> tuple[list[float], float]:
    """One client process: ``connections`` closed-loop connections; (latencies, measured seconds)."""
    async def run() -> tuple[list[float], float]:
        loop = asyncio.get_running_loop()
        latencies: list[float] = []
        start = time.perf_counter() + warmup
        stop_at = start + seconds
        dones = []
        for _ in range(connections):
            done: asyncio.Future[None] = loop.create_future()
            await loop.create_connection(functools.partial(_HttpClient, latencies, stop_at, done), host, port)
            dones.append(done)
        await asyncio.gather(*dones)
        # Drop the warm-up: connection set-up (TLS, first CONNECT) is not steady state.
        return latencies[int(len(latencies) * warmup / (warmup + seconds)):], seconds

    return asyncio.run(run())


def http_load(endpoint: Endpoint, connections: int, seconds: float, procs: int) -> tuple[float, float, float]:
    """(requests/s, p50 ms, p99 ms) over ``procs`` client processes."""
    procs = max(1, min(procs, connections))
    shares = [connections // procs + (1 if i < connections % procs else 0) for i in range(procs)]
    warmup = 0.5
    with multiprocessing.get_context("spawn").Pool(procs) as pool:
        results = pool.starmap(load_main, [(endpoint.host, endpoint.port, n, seconds, warmup) for n in shares])
    latencies = sorted(x for lat, _ in results for x in lat)
    rps = len(latencies) / seconds
    return rps, statistics.median(latencies) * 1000, latencies[int(len(latencies) * 0.99)] * 1000


# ----------------------------------------------------------------------------- bulk


def bulk(endpoint: Endpoint, mib: int) -> tuple[float, float]:
    """(upload MB/s, download MB/s) on one connection each."""
    total = mib * CHUNK
    block = b"\xab" * CHUNK
    with socket.create_connection((endpoint.host, endpoint.port), timeout=20) as s:
        start = time.perf_counter()
        s.sendall(struct.pack("!cQ", b"U", total))
        for _ in range(mib):
            s.sendall(block)
        if s.recv(2) != b"OK":
            raise RuntimeError("upload not acknowledged")
        up = total / (time.perf_counter() - start) / 1e6
    with socket.create_connection((endpoint.host, endpoint.port), timeout=20) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * CHUNK)
        start = time.perf_counter()
        s.sendall(struct.pack("!cQ", b"D", total))
        got, buf = 0, bytearray(CHUNK)
        while got < total:
            n = s.recv_into(buf)
            if not n:
                raise RuntimeError(f"download ended after {got} bytes")
            got += n
        down = total / (time.perf_counter() - start) / 1e6
    return up, down


# ----------------------------------------------------------------------------- set-up


def write_credentials(ca: CertificateAuthority, directory: Path, spiffe_id: str) -> FileCredentials:
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = ca.issue(key.public_key(), x509.UniformResourceIdentifier(spiffe_id), dt.timedelta(hours=1))
    directory.mkdir(parents=True)
    (directory / "cert.pem").write_text(leaf + "".join(ca.material.chain_tail_pem[:-1]))
    (directory / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                          serialization.PrivateFormat.PKCS8,
                                                          serialization.NoEncryption()))
    (directory / "root.pem").write_text(ca.material.root_pem)
    return FileCredentials(directory / "cert.pem", directory / "key.pem", directory / "root.pem")


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass
class Rig:
    direct_http: Endpoint
    direct_bulk: Endpoint
    hbone_http: Endpoint
    hbone_bulk: Endpoint


async def main_async(args: argparse.Namespace) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="bench-hbone-"))
    ca = CertificateAuthority(load_or_create(tmp / "ca"))
    http_port, bulk_port = free_port(POD_IP), free_port(POD_IP)
    ready = multiprocessing.get_context("spawn").Event()
    backend = multiprocessing.get_context("spawn").Process(target=backend_main, args=(http_port, bulk_port, ready),
                                                           daemon=True)
    backend.start()
    if not ready.wait(10):
        raise SystemExit("backend did not start")
    pod_http, pod_bulk = Endpoint(POD_IP, http_port), Endpoint(POD_IP, bulk_port)
    ztunnel = Endpoint(POD_IP, 15008)
    any_port = Endpoint("127.0.0.1", 0)
    terminator = HboneProxy(HboneConfig(inbound=(InboundTerminator(ztunnel),)),
                            write_credentials(ca, tmp / "server", "spiffe://cluster.local/ns/bench/sa/server"),
                            concurrency=args.envoy_concurrency)
    forwarder = HboneProxy(HboneConfig(outbound=(OutboundTunnel(any_port, pod_http, ztunnel),
                                                 OutboundTunnel(any_port, pod_bulk, ztunnel))),
                           write_credentials(ca, tmp / "client", "spiffe://cluster.local/ns/bench/sa/client"),
                           concurrency=args.envoy_concurrency)
    async with terminator, forwarder:
        rig = Rig(pod_http, pod_bulk, *forwarder.outbound_addresses)
        print(f"# {os.cpu_count()} CPUs; Envoy --concurrency {args.envoy_concurrency} (forwarder and terminator); "
              f"{args.client_procs} client process(es); Python {sys.version.split()[0]}")
        print(f"# HTTP: GET, {len(RESPONSE)}-byte response, keep-alive, closed loop, {args.seconds:g} s per row")
        print(f"{'path':<8}{'conns':>6}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}")
        loop = asyncio.get_running_loop()
        for connections in args.connections:
            for name, endpoint in (("direct", rig.direct_http), ("hbone", rig.hbone_http)):
                rps, p50, p99 = await loop.run_in_executor(
                    None, http_load, endpoint, connections, args.seconds, args.client_procs)
                print(f"{name:<8}{connections:>6}{rps:>10.0f}{p50:>9.2f}{p99:>9.2f}", flush=True)
        print(f"# bulk TCP: {args.bulk_mib} MiB on one connection")
        for name, endpoint in (("direct", rig.direct_bulk), ("hbone", rig.hbone_bulk)):
            up, down = await loop.run_in_executor(None, bulk, endpoint, args.bulk_mib)
            print(f"{name:<8} upload {up:8.0f} MB/s   download {down:8.0f} MB/s", flush=True)
    backend.terminate()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", default="1,16,64",
                        type=lambda s: [int(x) for x in s.split(",") if x], help="comma-separated (default 1,16,64)")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--client-procs", type=int, default=1)
    parser.add_argument("--envoy-concurrency", type=int, default=1)
    parser.add_argument("--bulk-mib", type=int, default=512)
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
