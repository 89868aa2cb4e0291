"""Credential checks, the CSR we send the CA, secret files and the renewal schedule."""

from __future__ import annotations

import datetime as dt
import json
import re
import stat
from pathlib import Path

import pytest
from cryptography import x509

from istiod_lite.ca.csr import check_csr
from istiod_lite.hbone.caclient import CaClient, CaRequestError, new_key_and_csr
from istiod_lite.hbone.credentials import CredentialError, Credentials, check, load_files
from istiod_lite.hbone.proxy import renewal_delay
from istiod_lite.hbone.secrets import write_secrets
from tests.e2e.test_hbone_fixtures import CLIENT_ID, Mesh

PREFIX = "spiffe://cluster.local/"


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Mesh:
    return Mesh(tmp_path_factory.mktemp("mesh"))


def test_good_credentials_pass(mesh: Mesh) -> None:
    check(mesh.credentials(CLIENT_ID), identity=CLIENT_ID, san_prefix=PREFIX)
    check(mesh.credentials(CLIENT_ID), identity=None, san_prefix=PREFIX)


def test_key_of_another_certificate(mesh: Mesh) -> None:
    a, b = mesh.credentials(CLIENT_ID), mesh.credentials(CLIENT_ID)
    with pytest.raises(CredentialError, match="does not belong"):
        check(Credentials(a.chain_pem, b.key_pem, a.roots_pem), identity=None, san_prefix=PREFIX)


def test_wrong_identity_or_trust_domain(mesh: Mesh) -> None:
    creds = mesh.credentials("spiffe://cluster.local/ns/default/sa/other")
    with pytest.raises(CredentialError, match=re.escape(f"not {CLIENT_ID}")):
        check(creds, identity=CLIENT_ID, san_prefix=PREFIX)
    foreign = mesh.credentials("spiffe://evil.local/ns/default/sa/sleep")
    with pytest.raises(CredentialError, match="outside the trust domain"):
        check(foreign, identity=None, san_prefix=PREFIX)


def test_certificate_from_another_root(mesh: Mesh, tmp_path: Path) -> None:
    other = Mesh(tmp_path).credentials(CLIENT_ID)
    with pytest.raises(CredentialError, match="does not chain"):
        check(Credentials(other.chain_pem, other.key_pem, mesh.root_pem), identity=None, san_prefix=PREFIX)


def test_expired_certificate(mesh: Mesh) -> None:
    creds = mesh.credentials(CLIENT_ID, ttl=dt.timedelta(seconds=1))
    later = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=1)
    with pytest.raises(CredentialError, match="not now"):
        check(creds, identity=None, san_prefix=PREFIX, now=later)


def test_load_files_drops_a_root_appended_to_the_chain(mesh: Mesh, tmp_path: Path) -> None:
    files = mesh.issue(CLIENT_ID)
    files.cert.write_text(files.cert.read_text() + mesh.root_pem)
    creds = load_files(files.cert, files.key, files.root)
    assert len(x509.load_pem_x509_certificates(creds.chain_pem.encode())) == 1
    with pytest.raises(CredentialError, match="cannot read"):
        load_files(tmp_path / "missing.pem", files.key, files.root)


def test_csr_is_what_the_ca_accepts() -> None:
    key_pem, csr_pem = new_key_and_csr(CLIENT_ID)
    check_csr(csr_pem, CLIENT_ID)  # the CA's own checks: one URI SAN, nothing else
    assert "PRIVATE KEY" in key_pem


async def test_ca_client_errors_are_ca_request_errors(tmp_path: Path, mesh: Mesh) -> None:
    client = CaClient("127.0.0.1:1", tmp_path / "no-token", mesh.root_pem, timeout_s=2)
    with pytest.raises(CaRequestError, match="cannot read token"):
        await client.request(CLIENT_ID)
    (tmp_path / "token").write_text("x.y.z")
    client = CaClient("127.0.0.1:1", tmp_path / "token", mesh.root_pem, timeout_s=2)
    with pytest.raises(CaRequestError, match=r"UNAVAILABLE|DEADLINE"):
        await client.request(CLIENT_ID)


def test_secret_files_are_private_and_replaced_whole(mesh: Mesh, tmp_path: Path) -> None:
    first = write_secrets(tmp_path / "s", mesh.credentials(CLIENT_ID))
    assert stat.S_IMODE(first.certificate.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "s").stat().st_mode) == 0o700
    roots_inode = first.roots.stat().st_ino
    second = mesh.credentials(CLIENT_ID)
    write_secrets(tmp_path / "s", second)
    doc = json.loads(first.certificate.read_text())["resources"][0]
    assert doc["name"] == "default"
    assert doc["tls_certificate"]["certificate_chain"]["inline_string"] == second.chain_pem
    assert first.roots.stat().st_ino == roots_inode  # unchanged roots are not rewritten
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == ["ROOTCA.json", "default.json"]


def test_renewal_at_half_the_life_left_when_fetched(mesh: Mesh) -> None:
    """NotBefore is backdated by the CA; counting from it would renew a short-lived cert at once."""
    creds = mesh.credentials(CLIENT_ID, ttl=dt.timedelta(seconds=60))
    now = dt.datetime.now(dt.UTC)
    remaining = (creds.not_after - now).total_seconds()
    assert renewal_delay(creds, now, now) == pytest.approx(remaining / 2, abs=0.01)
    assert renewal_delay(creds, now, now + dt.timedelta(hours=1)) == 1.0  # floor: never a renewal storm
