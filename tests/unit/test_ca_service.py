"""CreateCertificate end to end over real TLS on 127.0.0.1 (grpc.aio server and client in-process)."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from prometheus_client import CollectorRegistry

from istiod_lite._generated.istio.v1.auth import ca_pb2, ca_pb2_grpc
from istiod_lite.ca.config import CaConfig, JwksSource
from istiod_lite.ca.errors import CaMaterialError
from istiod_lite.ca.jwk import jwks_document
from istiod_lite.ca.keystore import ROOT_CERT
from istiod_lite.ca.runtime import CaRuntime
from istiod_lite.ca.servercert import ServerCertificate
from istiod_lite.ca.tokens import create_token
from istiod_lite.ca.workers import WorkerPoolBackend
from tests.unit.test_ca_fixtures import (
    OPENSSL,
    OTHER_SPIFFE,
    SPIFFE,
    build_csr,
    key_pem,
    openssl_verify,
    p256,
    verify_chain_python,
)

Stub = ca_pb2_grpc.IstioCertificateServiceStub


@dataclass
class Harness:
    ca: CaRuntime
    ca_dir: Path
    registry: CollectorRegistry
    server: grpc.aio.Server
    tls_port: int
    mtls_port: int
    plain_port: int

    @property
    def root(self) -> bytes:
        return (self.ca_dir / ROOT_CERT).read_bytes()

    def channel(self, *, cert: tuple[bytes, bytes] | None = None, mtls: bool = False,
                target_name: str | None = None) -> grpc.aio.Channel:
        creds = grpc.ssl_channel_credentials(self.root, *(cert or (None, None)))
        options = [("grpc.ssl_target_name_override", target_name)] if target_name else []
        return grpc.aio.secure_channel(f"127.0.0.1:{self.mtls_port if mtls else self.tls_port}", creds, options)

    def counter(self, name: str, **labels: str) -> float:
        value = self.registry.get_sample_value(name, labels or None)
        return value or 0.0


async def _harness(tmp_path: Path, processes: int = 0) -> Harness:
    registry = CollectorRegistry()
    ca_dir = tmp_path / "ca"
    ca = CaRuntime.create(CaConfig(ca_dir=ca_dir), registry=registry, processes=processes)
    await ca.start()
    server = grpc.aio.server()
    ca.add_to_server(server)
    tls = server.add_secure_port("127.0.0.1:0", ca.server_credentials(["127.0.0.1"]))
    mtls = server.add_secure_port("127.0.0.1:0", ca.server_credentials(["127.0.0.1"], require_client_auth=True))
    plain = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return Harness(ca, ca_dir, registry, server, tls, mtls, plain)


@pytest.fixture
async def h(tmp_path: Path) -> AsyncIterator[Harness]:
    harness = await _harness(tmp_path)
    yield harness
    await harness.server.stop(None)
    await harness.ca.close()


def token(h: Harness, ns: str = "default", sa: str = "foo", **kw: object) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {create_token(h.ca_dir, ns, sa, **kw)}")]  # type: ignore[arg-type]


def request(csr: str | None = None, ttl: int = 3600) -> ca_pb2.IstioCertificateRequest:
    return ca_pb2.IstioCertificateRequest(csr=csr if csr is not None else build_csr(), validity_duration=ttl)


async def call(channel: grpc.aio.Channel, req: ca_pb2.IstioCertificateRequest,
               metadata: list[tuple[str, str]] | None = None) -> list[str]:
    resp = await Stub(channel).CreateCertificate(req, metadata=metadata)
    return list(resp.cert_chain)


async def refused(channel: grpc.aio.Channel, req: ca_pb2.IstioCertificateRequest,
                  metadata: list[tuple[str, str]] | None = None) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call(channel, req, metadata)
    return info.value


def san_of(leaf_pem: str) -> list[str]:
    leaf = x509.load_pem_x509_certificate(leaf_pem.encode())
    return leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.UniformResourceIdentifier)


async def test_token_gets_a_verifiable_chain(h: Harness, tmp_path: Path) -> None:
    async with h.channel() as ch:
        chain = await call(ch, request(), token(h))
    assert len(chain) >= 2
    assert chain[-1] == h.root.decode()
    assert san_of(chain[0]) == [SPIFFE]
    verify_chain_python(chain)
    if OPENSSL is not None:
        result = openssl_verify(tmp_path, chain)
        assert result.returncode == 0, result.stdout + result.stderr
    assert h.counter("citadel_server_csr_count_total") == 1
    assert h.counter("citadel_server_success_cert_issuance_count_total") == 1
    assert h.counter("istiod_lite_ca_requests_total", outcome="ok") == 1


async def test_server_certificate_names(h: Harness) -> None:
    # Default names work via the target-name override, the extra IP SAN directly.
    async with h.channel(target_name="istiod.istio-system.svc") as ch:
        assert await call(ch, request(), token(h))
    async with h.channel(target_name="localhost") as ch:
        assert await call(ch, request(), token(h))
    async with h.channel(target_name="evil.example") as ch:
        err = await refused(ch, request(), token(h))
        assert err.code() == grpc.StatusCode.UNAVAILABLE


async def test_no_credentials_is_unauthenticated(h: Harness) -> None:
    async with h.channel() as ch:
        err = await refused(ch, request())
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    assert err.details() == "request authenticate failure"
    assert h.counter("citadel_server_authentication_failure_count_total") == 1
    assert h.counter("istiod_lite_ca_requests_total", outcome="unauthenticated") == 1


@pytest.mark.parametrize("metadata", [
    pytest.param([("authorization", "Bearer not-a-jwt")], id="garbage-token"),
    pytest.param([("authorization", "Basic dXNlcjpwYXNz")], id="basic-auth"),
])
async def test_bad_token_is_unauthenticated_with_fixed_message(h: Harness, metadata: list[tuple[str, str]]) -> None:
    async with h.channel() as ch:
        err = await refused(ch, request(), metadata)
    assert (err.code(), err.details()) == (grpc.StatusCode.UNAUTHENTICATED, "request authenticate failure")


async def test_expired_token(h: Harness) -> None:
    old = [("authorization", f"Bearer {create_token(h.ca_dir, 'default', 'foo', now=time.time() - 7200)}")]
    async with h.channel() as ch:
        err = await refused(ch, request(), old)
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_duplicate_authorization_metadata(h: Harness) -> None:
    async with h.channel() as ch:
        err = await refused(ch, request(), token(h) + token(h, sa="bar"))
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_csr_for_someone_else_is_permission_denied(h: Harness) -> None:
    async with h.channel() as ch:
        err = await refused(ch, request(build_csr(uris=(OTHER_SPIFFE,))), token(h))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "bar" not in (err.details() or "")  # the reason stays in the server log
    assert h.counter("istiod_lite_ca_requests_total", outcome="permission_denied") == 1


@pytest.mark.parametrize(("csr", "ttl"), [
    pytest.param("garbage", 3600, id="garbage-csr"),
    pytest.param(None, 90 * 86400 + 1, id="ttl-above-max"),
])
async def test_invalid_argument(h: Harness, csr: str | None, ttl: int) -> None:
    async with h.channel() as ch:
        err = await refused(ch, request(csr, ttl), token(h))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.details() == "invalid certificate signing request"
    assert h.counter("citadel_server_csr_parsing_err_count_total") == 1


async def test_impersonation_is_refused(h: Harness) -> None:
    """No trusted node accounts configured: Istio's answer without a node authorizer."""
    req = request()
    req.metadata.fields["ImpersonatedIdentity"].string_value = OTHER_SPIFFE
    async with h.channel() as ch:
        err = await refused(ch, req, token(h))
    assert (err.code(), err.details()) == (grpc.StatusCode.UNAUTHENTICATED,
                                           "request impersonation authentication failure")


async def test_empty_cert_signer_is_ignored(h: Harness) -> None:
    req = request()
    req.metadata.fields["CertSigner"].string_value = ""
    async with h.channel() as ch:
        assert await call(ch, req, token(h))


async def test_plaintext_has_no_caller(h: Harness) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{h.plain_port}") as ch:
        err = await refused(ch, request(), token(h))
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_renewal_with_client_certificate_and_no_token(h: Harness) -> None:
    key = p256()
    async with h.channel() as ch:
        first = await call(ch, request(build_csr(key)), token(h))
    cert = (key_pem(key), first[0].encode())
    async with h.channel(cert=cert, mtls=True) as ch:
        renewed = await call(ch, request(build_csr()))
        # The certificate decides the identity, even next to a token for someone else (Istio's order).
        other = await call(ch, request(build_csr(uris=())), token(h, sa="bar"))
    assert san_of(renewed[0]) == [SPIFFE] == san_of(other[0])
    verify_chain_python(renewed)


async def test_mtls_port_refuses_clients_without_certificate(h: Harness) -> None:
    async with h.channel(mtls=True) as ch:
        err = await refused(ch, request(), token(h))
    assert err.code() == grpc.StatusCode.UNAVAILABLE  # the TLS handshake fails


async def test_concurrent_requests(h: Harness) -> None:
    async with h.channel() as ch:
        chains = await asyncio.gather(*(call(ch, request(build_csr(uris=())), token(h, sa=f"sa-{i}"))
                                        for i in range(40)))
    assert sorted(san_of(c[0])[0] for c in chains) == sorted(
        f"spiffe://cluster.local/ns/default/sa/sa-{i}" for i in range(40))


async def test_worker_processes(tmp_path: Path) -> None:
    harness = await _harness(tmp_path, processes=2)
    backend = harness.ca.backend
    assert isinstance(backend, WorkerPoolBackend)
    try:
        async with harness.channel() as ch:
            chains = await asyncio.gather(*(call(ch, request(), token(harness)) for _ in range(10)))
            for chain in chains:
                verify_chain_python(chain)
            err = await refused(ch, request(build_csr(uris=(OTHER_SPIFFE,))), token(harness))
            assert err.code() == grpc.StatusCode.PERMISSION_DENIED
            err = await refused(ch, request())
            assert (err.code(), err.details()) == (grpc.StatusCode.UNAUTHENTICATED, "request authenticate failure")
            # A worker that dies is replaced; requests keep succeeding.
            victim = backend.worker_pids()[0]
            os.kill(victim, signal.SIGKILL)
            for _ in range(50):
                if not all(w.alive for w in backend._workers):
                    break
                await asyncio.sleep(0.05)
            assert await call(ch, request(), token(harness))
            assert victim not in backend.worker_pids() and len(backend.worker_pids()) == 2
    finally:
        await harness.server.stop(None)
        await harness.ca.close()
    assert backend.worker_pids() == []


async def test_worker_start_failure_is_reported(tmp_path: Path) -> None:
    config = CaConfig(ca_dir=tmp_path / "ca", jwks=(JwksSource(tmp_path / "k8s.jwks"),))
    (tmp_path / "k8s.jwks").write_text(jwks_document([p256().public_key()]))
    ca = CaRuntime.create(config, processes=1)
    (tmp_path / "k8s.jwks").write_text("broken")  # the worker reads it after the serving process did
    with pytest.raises(CaMaterialError, match="failed to start"):
        await ca.start()
    await ca.close()


def test_server_certificate_rotates_at_half_life(tmp_path: Path) -> None:
    ca = CaRuntime.create(CaConfig(ca_dir=tmp_path / "ca"))
    now = [dt.datetime.now(dt.UTC)]
    cert = ServerCertificate(ca.authority, ["10.0.0.1", "istiod.example"], ttl=dt.timedelta(hours=2),
                             clock=lambda: now[0])
    leaf = x509.load_pem_x509_certificate(cert.chain_pem)
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["istiod.istio-system.svc", "localhost", "istiod.example"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["10.0.0.1"]
    assert cert.refresh() is None
    now[0] += dt.timedelta(minutes=61)
    assert cert.refresh() is not None
    assert x509.load_pem_x509_certificate(cert.chain_pem) != leaf
    assert cert.refresh() is None
