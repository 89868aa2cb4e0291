"""Issue 14, finding 3: bogus tokens sent for TokenReview must not stall certificate issuance.

The fake API server answers every TokenReview in 50 ms.  An attacker floods the CA with random
JWT-shaped tokens (each one costs a review); a workload with a locally verifiable token must still
get its certificate quickly, and the flood must be shed, not queued without bound.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from istiod_lite._generated.istio.v1.auth import ca_pb2, ca_pb2_grpc
from istiod_lite.ca.authn import AuthenticationError
from istiod_lite.ca.config import CaConfig
from istiod_lite.ca.identity import Identity
from istiod_lite.ca.keystore import ROOT_CERT
from istiod_lite.ca.reviewgate import ReviewGate, peer_host
from istiod_lite.ca.runtime import CaRuntime
from istiod_lite.ca.tokenreview import (
    DEFAULT_NEGATIVE_CACHE_TTL,
    TokenReviewAuthenticator,
    TokenReviewConfig,
    api_client_from_config,
)
from istiod_lite.ca.tokens import create_token
from tests.support.fakekube import FakeKubeApiServer, FakeTokenUser
from tests.unit.test_ca_fixtures import build_csr
from tests.unit.test_ca_tokenreview import TD, FakeClock, bearer, fake_jwt

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
    # The flood came from one host: most of it was shed unsent, and counted.
    shed = _count(runtime, "shed_peer_limit") + _count(runtime, "shed_queue_full")
    assert shed > 0 and shed + _count(runtime, "refused") == FLOOD
    assert len(kube.token_reviews()) == _count(runtime, "refused")


def _count(runtime: CaRuntime, outcome: str) -> float:
    value = runtime.service.metrics.registry.get_sample_value("istiod_lite_ca_token_reviews_total",
                                                              {"outcome": outcome})
    return float(value or 0.0)


# -- the gate on its own ------------------------------------------------------------------------------

@pytest.fixture
def make_gate(kube: FakeKubeApiServer, tmp_path: Path) -> Iterator[Callable[..., tuple[ReviewGate, list[str]]]]:
    gates: list[ReviewGate] = []
    kubeconfig = kube.write_kubeconfig(tmp_path / "kc")

    def make(clock: Callable[[], float] = time.monotonic, **kw: int) -> tuple[ReviewGate, list[str]]:
        outcomes: list[str] = []
        auth = TokenReviewAuthenticator(api_client_from_config(TokenReviewConfig(kubeconfig=kubeconfig)), TD,
                                        clock=clock)
        gate = ReviewGate(auth, record=outcomes.append, **kw)
        gates.append(gate)
        return gate, outcomes

    yield make
    for gate in gates:
        gate.close()


async def _refused(gate: ReviewGate, token: str, peer: str) -> str:
    with pytest.raises(AuthenticationError) as info:
        await gate.authenticate(bearer(token), peer)
    assert token not in info.value.reason
    return info.value.reason


async def test_full_gate_refuses_at_once_without_a_review(kube: FakeKubeApiServer, make_gate: Any) -> None:
    kube.delay = 0.5
    gate, outcomes = make_gate(max_concurrent=1, max_queue=1, per_peer=10)
    held = [asyncio.ensure_future(gate.authenticate(bearer(fake_jwt()), f"ipv4:10.0.0.{i}:1000")) for i in (1, 2)]
    await asyncio.sleep(0.05)
    assert gate.admitted == 2
    started = time.monotonic()
    assert "already running or waiting" in await _refused(gate, fake_jwt(), "ipv4:10.0.0.3:1000")
    assert time.monotonic() - started < 0.1
    assert outcomes == ["shed_queue_full"]
    await asyncio.gather(*held, return_exceptions=True)
    assert gate.admitted == 0 and len(kube.token_reviews()) == 2


async def test_one_peer_host_gets_a_bounded_share(kube: FakeKubeApiServer, make_gate: Any) -> None:
    kube.delay = 0.3
    gate, outcomes = make_gate(max_concurrent=4, max_queue=10, per_peer=2)
    # New connections are new ports: the share is per host.
    held = [asyncio.ensure_future(gate.authenticate(bearer(fake_jwt()), f"ipv4:10.0.0.1:{port}")) for port in (1, 2)]
    await asyncio.sleep(0.05)
    assert "ipv4:10.0.0.1 already has 2" in await _refused(gate, fake_jwt(), "ipv4:10.0.0.1:3")
    token = fake_jwt("system:serviceaccount:apps:reviewer")
    kube.add_token(token, FakeTokenUser.service_account("apps", "reviewer"))
    assert await gate.authenticate(bearer(token), "ipv6:[fd00::2]:4") == Identity(TD, "apps", "reviewer")
    await asyncio.gather(*held, return_exceptions=True)
    assert sorted(outcomes) == ["accepted", "refused", "refused", "shed_peer_limit"]


async def test_refusal_is_cached_briefly(kube: FakeKubeApiServer, make_gate: Any) -> None:
    clock = FakeClock()
    gate, outcomes = make_gate(clock)
    token = fake_jwt()
    await _refused(gate, token, "ipv4:10.0.0.1:1")
    assert "refused by a review" in await _refused(gate, token, "ipv4:10.0.0.9:1")
    assert len(kube.token_reviews()) == 1
    kube.add_token(token, FakeTokenUser.service_account("default", "sleep"))
    clock.now += DEFAULT_NEGATIVE_CACHE_TTL
    assert await gate.authenticate(bearer(token), "ipv4:10.0.0.1:1") == Identity(TD, "default", "sleep")
    assert await gate.authenticate(bearer(token), "ipv4:10.0.0.1:1") == Identity(TD, "default", "sleep")
    assert len(kube.token_reviews()) == 2
    assert outcomes == ["refused", "refused_cached", "accepted", "cached"]


async def test_cancelled_waiter_frees_its_slot(kube: FakeKubeApiServer, make_gate: Any) -> None:
    kube.delay = 0.3
    gate, _ = make_gate(max_concurrent=1, max_queue=1, per_peer=5)
    running = asyncio.ensure_future(gate.authenticate(bearer(fake_jwt()), "ipv4:10.0.0.1:1"))
    waiting = asyncio.ensure_future(gate.authenticate(bearer(fake_jwt()), "ipv4:10.0.0.1:2"))
    await asyncio.sleep(0.05)
    waiting.cancel()
    await asyncio.gather(running, waiting, return_exceptions=True)
    assert gate.admitted == 0
    assert len(kube.token_reviews()) == 1  # the cancelled one was never sent


async def test_no_token_and_non_jwt_take_no_slot(kube: FakeKubeApiServer, make_gate: Any) -> None:
    gate, outcomes = make_gate(max_concurrent=1, max_queue=0, per_peer=1)
    assert await gate.authenticate({}, "ipv4:10.0.0.1:1") is None
    assert "not a JWT" in await _refused(gate, "opaque", "ipv4:10.0.0.1:1")
    assert gate.admitted == 0 and outcomes == [] and kube.requests == []


@pytest.mark.parametrize(("peer", "host"), [("ipv4:10.1.2.3:5555", "ipv4:10.1.2.3"), ("ipv6:[::1]:80", "ipv6:[::1]"),
                                            ("unix:/run/x.sock", "unix:/run/x.sock"), ("ipv4:1.2.3.4", "ipv4:1.2.3.4")])
def test_peer_host(peer: str, host: str) -> None:
    assert peer_host(peer) == host
