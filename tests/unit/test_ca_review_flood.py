"""Issue 14, finding 3: bogus tokens sent for TokenReview must not stall certificate issuance.

The fake API server answers every TokenReview in 50 ms.  An attacker floods the CA with random
JWT-shaped tokens (each one costs a review); a workload with a locally verifiable token must still
get its certificate quickly, and the flood must be shed, not queued without bound.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest

from istiod_lite._generated.istio.v1.auth import ca_pb2, ca_pb2_grpc
from istiod_lite.ca.config import CaConfig
from istiod_lite.ca.keystore import ROOT_CERT
from istiod_lite.ca.runtime import CaRuntime
from istiod_lite.ca.tokenreview import TokenReviewConfig
from istiod_lite.ca.tokens import create_token
from tests.support.fakekube import FakeKubeApiServer
from tests.unit.test_ca_fixtures import build_csr
from tests.unit.test_ca_tokenreview import fake_jwt

REVIEW_LATENCY = 0.05
FLOOD = 100
#: 100 queued reviews at 50 ms each held a legitimate CSR for ~5 s before the fix.
LEGIT_BOUND = 1.0


@pytest.fixture
def kube() -> Iterator[FakeKubeApiServer]:
    with FakeKubeApiServer() as server:
        server.delay = REVIEW_LATENCY
        yield server


@pytest.fixture(params=[0, 1], ids=["thread", "worker-process"])
async def ca(request: pytest.FixtureRequest, tmp_path: Path,
             kube: FakeKubeApiServer) -> AsyncIterator[tuple[CaRuntime, int]]:
    config = CaConfig(ca_dir=tmp_path / "ca",
                      token_review=TokenReviewConfig(kubeconfig=kube.write_kubeconfig(tmp_path / "kubeconfig")))
    runtime = CaRuntime.create(config, processes=request.param)
    await runtime.start()
    server = grpc.aio.server()
    runtime.add_to_server(server)
    port = server.add_secure_port("127.0.0.1:0", runtime.server_credentials(["127.0.0.1"]))
    await server.start()
    yield runtime, port
    await server.stop(None)
    await runtime.close()


def _channel(runtime: CaRuntime, port: int) -> grpc.aio.Channel:
    creds = grpc.ssl_channel_credentials((runtime.config.ca_dir / ROOT_CERT).read_bytes())
    return grpc.aio.secure_channel(f"127.0.0.1:{port}", creds)


async def _create(stub: ca_pb2_grpc.IstioCertificateServiceStub, token: str, uri: str) -> list[str]:
    req = ca_pb2.IstioCertificateRequest(csr=build_csr(uris=(uri,)), validity_duration=3600)
    resp = await stub.CreateCertificate(req, metadata=[("authorization", f"Bearer {token}")])
    return list(resp.cert_chain)


async def test_bogus_token_flood_does_not_delay_a_legitimate_csr(kube: FakeKubeApiServer,
                                                                 ca: tuple[CaRuntime, int]) -> None:
    runtime, port = ca
    legit_token = create_token(runtime.config.ca_dir, "default", "sleep")
    spiffe = "spiffe://cluster.local/ns/default/sa/sleep"
    async with _channel(runtime, port) as attacker, _channel(runtime, port) as workload:
        stub = ca_pb2_grpc.IstioCertificateServiceStub(workload)
        await _create(stub, legit_token, spiffe)  # warm: TLS handshake, worker start-up
        attack = ca_pb2_grpc.IstioCertificateServiceStub(attacker)
        flood = [asyncio.ensure_future(_create(attack, fake_jwt(), spiffe)) for _ in range(FLOOD)]
        await asyncio.sleep(0.3)  # the bogus requests have reached the server and are being reviewed
        assert kube.token_reviews(), "the flood never reached the API server"
        started = time.monotonic()
        chain = await _create(stub, legit_token, spiffe)
        elapsed = time.monotonic() - started
        results = await asyncio.gather(*flood, return_exceptions=True)
    assert chain
    assert elapsed < LEGIT_BOUND, f"legitimate CSR took {elapsed:.2f} s behind {FLOOD} bogus tokens"
    for result in results:
        # Reviewed or shed, the attacker sees only Istio's fixed answer.
        assert isinstance(result, grpc.aio.AioRpcError)
        assert (result.code(), result.details()) == (grpc.StatusCode.UNAUTHENTICATED, "request authenticate failure")
