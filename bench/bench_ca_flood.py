"""Benchmark: a legitimate CSR's latency while an attacker floods the CA with bogus tokens (issue 14).

One process: the real ``CaRuntime`` (TokenReview on, thread or worker backend) on a TLS port, the
fake API server of the tests (``tests/support/fakekube.py``) answering every TokenReview after
``--review-ms`` (50 ms), a workload calling CreateCertificate back to back with a token of the
local issuer (verified offline), and, in the flood phase, an attacker keeping ``--flood`` requests
in flight, each with a fresh random JWT-shaped token (each one worth a TokenReview).

Prints the workload's latency p50/p99/max without and with the flood, and what the TokenReview
gate did with the bogus tokens.  Figures only, no pass/fail.  Every caller connects from
127.0.0.1, so the attacker is one peer host: ``--per-peer`` raises its share to exercise the
global queue bound instead.

    PYTHONPATH=. python bench/bench_ca_flood.py
    PYTHONPATH=. python bench/bench_ca_flood.py --backend workers --per-peer 1000 --seconds 5
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import tempfile
import time
from pathlib import Path

import grpc

from istiod_lite._generated.istio.v1.auth import ca_pb2, ca_pb2_grpc
from istiod_lite.ca.config import CaConfig
from istiod_lite.ca.keystore import ROOT_CERT
from istiod_lite.ca.metrics import REVIEW_OUTCOMES
from istiod_lite.ca.runtime import CaRuntime
from istiod_lite.ca.tokenreview import DEFAULT_PER_PEER, TokenReviewConfig
from istiod_lite.ca.tokens import create_token
from tests.support.fakekube import FakeKubeApiServer
from tests.unit.test_ca_fixtures import build_csr
from tests.unit.test_ca_tokenreview import fake_jwt

SPIFFE = "spiffe://cluster.local/ns/default/sa/sleep"


def percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(len(s) * q))] if s else 0.0


async def workload(stub: ca_pb2_grpc.IstioCertificateServiceStub, token: str, csrs: list[str],
                   seconds: float) -> list[float]:
    """Back-to-back CSRs for ``seconds``; each one's latency."""
    latencies: list[float] = []
    deadline = time.monotonic() + seconds
    i = 0
    while time.monotonic() < deadline:
        req = ca_pb2.IstioCertificateRequest(csr=csrs[i % len(csrs)], validity_duration=3600)
        started = time.monotonic()
        await stub.CreateCertificate(req, metadata=[("authorization", f"Bearer {token}")])
        latencies.append(time.monotonic() - started)
        i += 1
    return latencies


async def attacker(stub: ca_pb2_grpc.IstioCertificateServiceStub, csr: str, stop: asyncio.Event,
                   sent: list[int]) -> None:
    """One of ``--flood`` concurrent callers, each sending a fresh bogus token until stopped."""
    req = ca_pb2.IstioCertificateRequest(csr=csr, validity_duration=3600)
    while not stop.is_set():
        with contextlib.suppress(grpc.aio.AioRpcError):
            await stub.CreateCertificate(req, metadata=[("authorization", f"Bearer {fake_jwt()}")])
        sent[0] += 1


def report(name: str, latencies: list[float]) -> None:
    print(f"{name:<22} n={len(latencies):<5} p50={1000 * percentile(latencies, 0.5):7.1f} ms  "
          f"p99={1000 * percentile(latencies, 0.99):7.1f} ms  max={1000 * max(latencies, default=0):7.1f} ms")


async def run(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp, FakeKubeApiServer() as kube:
        kube.delay = args.review_ms / 1000
        review = TokenReviewConfig(kubeconfig=kube.write_kubeconfig(Path(tmp) / "kubeconfig"), per_peer=args.per_peer)
        runtime = CaRuntime.create(CaConfig(ca_dir=Path(tmp) / "ca", token_review=review),
                                   processes=args.workers if args.backend == "workers" else 0)
        await runtime.start()
        server = grpc.aio.server()
        runtime.add_to_server(server)
        port = server.add_secure_port("127.0.0.1:0", runtime.server_credentials(["127.0.0.1"]))
        await server.start()
        creds = grpc.ssl_channel_credentials((runtime.config.ca_dir / ROOT_CERT).read_bytes())
        token = create_token(runtime.config.ca_dir, "default", "sleep")
        csrs = [build_csr(uris=(SPIFFE,)) for _ in range(20)]
        print(f"backend={args.backend} review={args.review_ms:g} ms flood={args.flood} in flight "
              f"per_peer={args.per_peer} seconds={args.seconds:g}")
        try:
            async with grpc.aio.secure_channel(f"127.0.0.1:{port}", creds) as wl, \
                    grpc.aio.secure_channel(f"127.0.0.1:{port}", creds) as att:
                wl_stub = ca_pb2_grpc.IstioCertificateServiceStub(wl)
                await workload(wl_stub, token, csrs, 0.5)  # warm-up: handshake, workers
                report("no flood", await workload(wl_stub, token, csrs, args.seconds))
                stop, sent = asyncio.Event(), [0]
                att_stub = ca_pb2_grpc.IstioCertificateServiceStub(att)
                tasks = [asyncio.ensure_future(attacker(att_stub, csrs[0], stop, sent)) for _ in range(args.flood)]
                await asyncio.sleep(0.5)
                reviews_before = len(kube.token_reviews())
                started = time.monotonic()
                latencies = await workload(wl_stub, token, csrs, args.seconds)
                elapsed = time.monotonic() - started
                reviews = len(kube.token_reviews()) - reviews_before
                stop.set()
                await asyncio.gather(*tasks)
            report("flood", latencies)
            registry = runtime.service.metrics.registry
            counts = {o: int(registry.get_sample_value("istiod_lite_ca_token_reviews_total", {"outcome": o}) or 0)
                      for o in REVIEW_OUTCOMES}
            print(f"bogus requests answered: {sent[0]}; TokenReviews sent during the measured flood: {reviews} "
                  f"({reviews / elapsed:.0f}/s)")
            print("gate outcomes: " + ", ".join(f"{o}={n}" for o, n in counts.items()))
        finally:
            await server.stop(None)
            await runtime.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=("thread", "workers"), default="thread")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--flood", type=int, default=100, help="bogus requests kept in flight")
    parser.add_argument("--review-ms", type=float, default=50.0, help="fake API server TokenReview latency")
    parser.add_argument("--per-peer", type=int, default=DEFAULT_PER_PEER)
    parser.add_argument("--seconds", type=float, default=3.0)
    logging.basicConfig(level=logging.ERROR)  # one warning per refused request would drown the figures
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
