"""Key, CSR and CA client: what the agent sends and what it accepts back (real CA, real TLS)."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from istiod_lite.agent.certs import (
    CaClient,
    CaClientConfig,
    CertificateError,
    CertificateRequest,
    build_csr,
    check_response,
    fetch_certificate,
    generate_key,
    new_key_and_csr,
    spiffe_id,
    tls_server_name,
    utcnow,
)
from istiod_lite.ca.csr import check_csr
from istiod_lite.ca.keystore import load_or_create
from tests.unit.test_agent_fixtures import WAYPOINT_SPIFFE, Istiod, running_istiod


@pytest.fixture
async def istiod(tmp_path: Path) -> AsyncIterator[Istiod]:
    async with running_istiod(tmp_path) as harness:
        yield harness


def test_spiffe_id() -> None:
    assert spiffe_id("cluster.local", "ns1", "waypoint") == WAYPOINT_SPIFFE


@pytest.mark.parametrize("algorithm", ["ec-p256", "rsa-2048"])
def test_csr_is_what_the_ca_accepts(algorithm: str) -> None:
    key, csr = new_key_and_csr(algorithm, WAYPOINT_SPIFFE)  # type: ignore[arg-type]
    assert isinstance(key, ec.EllipticCurvePrivateKey if algorithm == "ec-p256" else rsa.RSAPrivateKey)
    parsed = x509.load_pem_x509_csr(csr.encode())
    san = parsed.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.critical
    assert san.value.get_values_for_type(x509.UniformResourceIdentifier) == [WAYPOINT_SPIFFE]
    assert parsed.subject == x509.Name([])
    check_csr(csr, WAYPOINT_SPIFFE)  # the CA's own checks: would raise CaError


def test_unknown_key_algorithm() -> None:
    with pytest.raises(ValueError):
        generate_key("ed25519")  # type: ignore[arg-type]


def test_tls_server_name() -> None:
    assert tls_server_name("127.0.0.1:15012") == "istiod.istio-system.svc"
    assert tls_server_name("[::1]:15012") == "istiod.istio-system.svc"
    assert tls_server_name("localhost:15012") == "localhost"
    assert tls_server_name("127.0.0.1:15012", "istiod.example") == "istiod.example"


# -- check_response ------------------------------------------------------------------------------
def _issue(istiod: Istiod, key: ec.EllipticCurvePrivateKey, spiffe: str = WAYPOINT_SPIFFE,
           ttl: dt.timedelta = dt.timedelta(hours=1)) -> list[str]:
    leaf = istiod.ca.authority.issue(key.public_key(), x509.UniformResourceIdentifier(spiffe), ttl)
    return [leaf, *istiod.ca.material.chain_tail_pem]


async def test_check_response_accepts_a_good_chain(istiod: Istiod) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    chain = _issue(istiod, key)
    now = utcnow()
    cert = check_response(chain, key, WAYPOINT_SPIFFE, now)
    assert cert.received_at == now
    assert cert.chain_pem == tuple(chain)
    assert cert.root_pem == istiod.root_path.read_bytes()
    assert cert.certificate_chain_pem.startswith(chain[0].encode())
    assert dt.timedelta(minutes=59) < cert.lifetime <= dt.timedelta(hours=1)
    assert not cert.expired(now)
    assert cert.key_pem.startswith(b"-----BEGIN PRIVATE KEY-----")


async def test_check_response_refusals(istiod: Istiod) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    chain = _issue(istiod, key)
    with pytest.raises(CertificateError, match="chain of 1"):
        check_response(chain[:1], key, WAYPOINT_SPIFFE, utcnow())
    with pytest.raises(CertificateError, match="unparsable"):
        check_response([chain[0], "not a cert"], key, WAYPOINT_SPIFFE, utcnow())
    with pytest.raises(CertificateError, match="different public key"):
        check_response(chain, ec.generate_private_key(ec.SECP256R1()), WAYPOINT_SPIFFE, utcnow())
    other = _issue(istiod, key, "spiffe://cluster.local/ns/ns1/sa/other")
    with pytest.raises(CertificateError, match="another service account"):
        check_response(other, key, WAYPOINT_SPIFFE, utcnow())
    with pytest.raises(CertificateError, match="expired"):
        check_response(chain, key, WAYPOINT_SPIFFE, utcnow() + dt.timedelta(hours=2))


# -- the client against the real CA ---------------------------------------------------------------
def _client(istiod: Istiod, token_file: Path, **kw: object) -> CaClient:
    return CaClient(CaClientConfig(address=istiod.tls_address, root_cert=istiod.root_path.read_bytes(),
                                   token_file=token_file, **kw))  # type: ignore[arg-type]


async def test_fetch_certificate_over_tls(istiod: Istiod, tmp_path: Path) -> None:
    client = _client(istiod, istiod.token_file(tmp_path / "token"))
    try:
        cert = await fetch_certificate(client, CertificateRequest(WAYPOINT_SPIFFE, ttl_seconds=600))
    finally:
        await client.close()
    assert cert.leaf.issuer == istiod.ca.material.signing_cert.subject
    assert dt.timedelta(seconds=590) < cert.lifetime <= dt.timedelta(seconds=600)


async def test_token_is_read_fresh_for_every_request(istiod: Istiod, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("not-a-jwt")
    client = _client(istiod, token_file)
    request = CertificateRequest(WAYPOINT_SPIFFE, ttl_seconds=600)
    try:
        with pytest.raises(CertificateError) as info:
            await fetch_certificate(client, request)
        assert info.value.code == grpc.StatusCode.UNAUTHENTICATED
        istiod.token_file(token_file)  # "kubelet" rotates the projected token
        assert (await fetch_certificate(client, request)).serial
        token_file.unlink()
        with pytest.raises(CertificateError, match="cannot read token file") as info:
            await fetch_certificate(client, request)
        assert info.value.code is None
        token_file.write_text("\n")
        with pytest.raises(CertificateError, match="empty"):
            await fetch_certificate(client, request)
    finally:
        await client.close()


async def test_token_for_another_service_account_is_refused(istiod: Istiod, tmp_path: Path) -> None:
    client = _client(istiod, istiod.token_file(tmp_path / "token", sa="someone-else"))
    try:
        with pytest.raises(CertificateError) as info:
            await fetch_certificate(client, CertificateRequest(WAYPOINT_SPIFFE, ttl_seconds=600))
    finally:
        await client.close()
    # The CSR names the waypoint, the token someone else: the CA refuses the mismatch.
    assert info.value.code == grpc.StatusCode.PERMISSION_DENIED


async def test_wrong_root_or_name_fails_the_handshake(istiod: Istiod, tmp_path: Path) -> None:
    token_file = istiod.token_file(tmp_path / "token")
    other_ca = load_or_create(tmp_path / "other-ca", "ec-p256", "cluster.local")
    request = CertificateRequest(WAYPOINT_SPIFFE, ttl_seconds=600)
    for client in (
        _client(istiod, token_file, server_name="evil.example"),
        CaClient(CaClientConfig(address=istiod.tls_address, root_cert=other_ca.root_pem.encode(),
                                token_file=token_file, timeout=5)),
    ):
        try:
            with pytest.raises(CertificateError) as info:
                await fetch_certificate(client, request)
            assert info.value.code == grpc.StatusCode.UNAVAILABLE
        finally:
            await client.close()


def test_build_csr_accepts_rsa() -> None:
    key = generate_key("rsa-2048")
    assert "BEGIN CERTIFICATE REQUEST" in build_csr(key, WAYPOINT_SPIFFE)
