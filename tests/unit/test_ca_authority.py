"""Signing: the leaf template (Istio + SPIFFE X.509-SVID rules), every CSR rejection, TTL edges."""

from __future__ import annotations

import datetime as dt
import ipaddress
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID

from istiod_lite.ca.authority import CertificateAuthority, SigningOptions
from istiod_lite.ca.errors import CaError
from istiod_lite.ca.keystore import CaMaterial, load_or_create
from tests.unit.test_ca_fixtures import (
    OPENSSL,
    OTHER_SPIFFE,
    SPIFFE,
    build_csr,
    make_intermediate_bundle,
    needs_openssl,
    openssl_verify,
    tamper_csr_signature,
    verify_chain_python,
)

INVALID = grpc.StatusCode.INVALID_ARGUMENT
DENIED = grpc.StatusCode.PERMISSION_DENIED
DAY = 86400


@pytest.fixture(scope="module")
def material(tmp_path_factory: pytest.TempPathFactory) -> CaMaterial:
    return load_or_create(tmp_path_factory.mktemp("ca"))


@pytest.fixture
def ca(material: CaMaterial) -> CertificateAuthority:
    return CertificateAuthority(material)


def leaf_of(chain: list[str]) -> x509.Certificate:
    return x509.load_pem_x509_certificate(chain[0].encode())


# -- the leaf ------------------------------------------------------------------------------------------
def test_leaf_follows_istio_template(ca: CertificateAuthority) -> None:
    before = dt.datetime.now(dt.UTC).replace(microsecond=0)
    chain = ca.sign_csr(build_csr(), SPIFFE, 3600)
    assert len(chain) == 2 and all(p.endswith("\n") for p in chain)
    leaf = leaf_of(chain)
    assert leaf.subject == x509.Name([])
    ext = leaf.extensions
    san = ext.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME)
    assert san.critical  # subject is empty
    assert list(san.value) == [x509.UniformResourceIdentifier(SPIFFE)]
    bc = ext.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca is False
    ku = ext.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.digital_signature and ku.value.key_encipherment
    assert not ku.value.key_cert_sign and not ku.value.crl_sign
    eku = ext.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    assert 0 < leaf.serial_number < 2**128
    assert leaf.not_valid_before_utc <= before - dt.timedelta(minutes=2) + dt.timedelta(seconds=1)
    assert leaf.not_valid_before_utc >= before - dt.timedelta(minutes=2, seconds=5)
    lifetime = leaf.not_valid_after_utc - leaf.not_valid_before_utc
    assert abs(lifetime - dt.timedelta(hours=1, minutes=2)) < dt.timedelta(seconds=2)
    assert leaf.issuer == ca.material.signing_cert.subject


def test_serials_are_random(ca: CertificateAuthority) -> None:
    csr = build_csr()
    serials = {leaf_of(ca.sign_csr(csr, SPIFFE, 60)).serial_number for _ in range(20)}
    assert len(serials) == 20


def test_san_comes_from_caller_even_without_csr_san(ca: CertificateAuthority) -> None:
    leaf = leaf_of(ca.sign_csr(build_csr(uris=()), SPIFFE, 60))
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [SPIFFE]


def test_chain_verifies_in_python(ca: CertificateAuthority) -> None:
    verify_chain_python(ca.sign_csr(build_csr(), SPIFFE, 3600))


@needs_openssl
@pytest.mark.parametrize("purpose", ["sslclient", "sslserver"])
def test_chain_verifies_with_openssl(ca: CertificateAuthority, tmp_path: Path, purpose: str) -> None:
    result = openssl_verify(tmp_path, ca.sign_csr(build_csr(), SPIFFE, 3600), "-purpose", purpose)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("include_root", [True, False])
def test_intermediate_plugin_chain_is_leaf_intermediate_root(tmp_path: Path, include_root: bool) -> None:
    root, inter = make_intermediate_bundle(tmp_path / "ca", include_root_in_chain=include_root)
    chain = CertificateAuthority(load_or_create(tmp_path / "ca")).sign_csr(build_csr(), SPIFFE, 3600)
    assert len(chain) == 3
    assert x509.load_pem_x509_certificate(chain[1].encode()) == inter
    assert x509.load_pem_x509_certificate(chain[2].encode()) == root
    verify_chain_python(chain)
    if not include_root:
        return
    result = _maybe_openssl(tmp_path, chain)
    assert result in (None, 0)


def _maybe_openssl(tmp: Path, chain: list[str]) -> int | None:
    if OPENSSL is None:
        return None
    r = openssl_verify(tmp, chain)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.returncode


@pytest.mark.parametrize("key", [
    pytest.param(lambda: rsa.generate_private_key(65537, 2048), id="rsa-2048"),
    pytest.param(lambda: rsa.generate_private_key(65537, 3072), id="rsa-3072"),
    pytest.param(lambda: ec.generate_private_key(ec.SECP256R1()), id="p-256"),
    pytest.param(lambda: ec.generate_private_key(ec.SECP384R1()), id="p-384"),
])
def test_accepted_keys(ca: CertificateAuthority, key: object) -> None:
    k = key()  # type: ignore[operator]
    leaf = leaf_of(ca.sign_csr(build_csr(k), SPIFFE, 60))
    assert leaf.public_key() == k.public_key()


def test_csr_cn_equal_to_identity_is_accepted_but_not_copied(ca: CertificateAuthority) -> None:
    leaf = leaf_of(ca.sign_csr(build_csr(cn=SPIFFE), SPIFFE, 60))
    assert leaf.subject == x509.Name([])


# -- rejections ----------------------------------------------------------------------------------------
_BC_CA = (x509.BasicConstraints(ca=True, path_length=None), True)
_BC_LEAF = (x509.BasicConstraints(ca=False, path_length=None), True)
_KU = (x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=True, data_encipherment=False,
                     key_agreement=False, key_cert_sign=False, crl_sign=False, encipher_only=False,
                     decipher_only=False), True)
_EKU = (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False)

REJECTIONS = [
    ("foreign URI SAN", lambda: build_csr(uris=(OTHER_SPIFFE,)), DENIED),
    ("foreign trust domain", lambda: build_csr(uris=("spiffe://evil.example/ns/default/sa/foo",)), DENIED),
    ("foreign CN", lambda: build_csr(uris=(), cn="spiffe://cluster.local/ns/x/sa/y"), DENIED),
    ("CN naming a host", lambda: build_csr(cn="istiod.istio-system.svc"), DENIED),
    ("two URI SANs", lambda: build_csr(uris=(SPIFFE, SPIFFE)), INVALID),
    ("DNS SAN", lambda: build_csr(dns=("foo.default.svc",)), INVALID),
    ("IP SAN", lambda: build_csr(names=[x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), INVALID),
    ("email SAN", lambda: build_csr(names=[x509.RFC822Name("a@example.com")]), INVALID),
    ("CA:true", lambda: build_csr(extra=[_BC_CA]), INVALID),
    ("CA:false extension", lambda: build_csr(extra=[_BC_LEAF]), INVALID),
    ("key usage extension", lambda: build_csr(extra=[_KU]), INVALID),
    ("EKU extension", lambda: build_csr(extra=[_EKU]), INVALID),
    ("weak RSA 1024", lambda: build_csr(rsa.generate_private_key(65537, 1024)), INVALID),
    ("P-521", lambda: build_csr(ec.generate_private_key(ec.SECP521R1())), INVALID),
    ("secp256k1", lambda: build_csr(ec.generate_private_key(ec.SECP256K1())), INVALID),
    ("Ed25519", lambda: build_csr(Ed25519PrivateKey.generate()), INVALID),
    ("bad CSR signature", lambda: tamper_csr_signature(build_csr()), INVALID),
    ("garbage PEM", lambda: "-----BEGIN CERTIFICATE REQUEST-----\nnot base64!\n-----END CERTIFICATE REQUEST-----\n",
     INVALID),
    ("empty", lambda: "", INVALID),
    ("oversized", lambda: "A" * 40_000, INVALID),
]


@pytest.mark.parametrize(("make", "code"), [pytest.param(m, c, id=n) for n, m, c in REJECTIONS])
def test_rejected_csr(ca: CertificateAuthority, make: object, code: grpc.StatusCode) -> None:
    csr = make()  # type: ignore[operator]
    with pytest.raises(CaError) as info:
        ca.sign_csr(csr, SPIFFE, 3600)
    assert info.value.code == code, info.value.reason
    assert info.value.reason not in info.value.public_message


def test_certificate_instead_of_csr(ca: CertificateAuthority) -> None:
    with pytest.raises(CaError) as info:
        ca.sign_csr(ca.material.root_pem, SPIFFE, 60)
    assert info.value.code == INVALID


@pytest.mark.parametrize(("bits", "ok"), [(2047, False), (2048, True), (8192, True), (8193, False)])
def test_rsa_size_bounds(bits: int, ok: bool) -> None:
    from istiod_lite.ca.csr import check_public_key

    # A public key of the exact size from raw numbers: generating an 8192-bit key takes seconds.
    key = rsa.RSAPublicNumbers(65537, (1 << (bits - 1)) | 1).public_key()
    assert key.key_size == bits
    if ok:
        assert check_public_key(key) is key
    else:
        with pytest.raises(CaError) as info:
            check_public_key(key)
        assert info.value.code == INVALID


def test_identity_must_be_a_workload_spiffe_id(ca: CertificateAuthority) -> None:
    with pytest.raises(CaError) as info:
        ca.sign_csr(build_csr(uris=()), "spiffe://cluster.local/whatever", 60)
    assert info.value.code == grpc.StatusCode.INTERNAL


# -- TTL -----------------------------------------------------------------------------------------------
def _lifetime(chain: list[str]) -> dt.timedelta:
    leaf = leaf_of(chain)
    return leaf.not_valid_after_utc - leaf.not_valid_before_utc - dt.timedelta(minutes=2)


@pytest.mark.parametrize(("ttl", "expected"), [
    pytest.param(0, dt.timedelta(hours=24), id="zero-means-default"),
    pytest.param(-5, dt.timedelta(hours=24), id="negative-means-default"),
    pytest.param(1, dt.timedelta(seconds=1), id="one-second"),
    pytest.param(90 * DAY, dt.timedelta(days=90), id="max"),
])
def test_ttl_accepted(ca: CertificateAuthority, ttl: int, expected: dt.timedelta) -> None:
    assert abs(_lifetime(ca.sign_csr(build_csr(), SPIFFE, ttl)) - expected) <= dt.timedelta(seconds=1)


@pytest.mark.parametrize("ttl", [90 * DAY + 1, 2**63 - 1], ids=["max+1", "int64-max"])
def test_ttl_above_max_is_rejected_not_clamped(ca: CertificateAuthority, ttl: int) -> None:
    with pytest.raises(CaError) as info:
        ca.sign_csr(build_csr(), SPIFFE, ttl)
    assert info.value.code == INVALID


def test_custom_limits(material: CaMaterial) -> None:
    ca = CertificateAuthority(material, SigningOptions(default_ttl=dt.timedelta(hours=1),
                                                       max_ttl=dt.timedelta(hours=2)))
    assert abs(_lifetime(ca.sign_csr(build_csr(), SPIFFE, 0)) - dt.timedelta(hours=1)) <= dt.timedelta(seconds=1)
    with pytest.raises(CaError):
        ca.sign_csr(build_csr(), SPIFFE, 2 * 3600 + 1)


def test_not_after_is_clamped_to_ca_expiry(tmp_path: Path) -> None:
    _, inter = make_intermediate_bundle(tmp_path / "ca", inter_ttl=dt.timedelta(hours=5))
    ca = CertificateAuthority(load_or_create(tmp_path / "ca"))
    leaf = leaf_of(ca.sign_csr(build_csr(), SPIFFE, 10 * DAY))
    assert leaf.not_valid_after_utc == inter.not_valid_after_utc
    verify_chain_python(ca.sign_csr(build_csr(), SPIFFE, 10 * DAY))


def test_expired_ca_refuses_to_sign(material: CaMaterial) -> None:
    later = material.not_after + dt.timedelta(seconds=1)
    ca = CertificateAuthority(material, clock=lambda: later)
    with pytest.raises(CaError) as info:
        ca.sign_csr(build_csr(), SPIFFE, 60)
    assert info.value.code == grpc.StatusCode.INTERNAL
    assert "expired" in info.value.reason


def test_mutated_csrs_only_ever_raise_ca_errors() -> None:
    """A small seeded fuzz of the CSR parser path: every outcome is a signature or a CaError.

    (A full run found InvalidVersion and UnsupportedAlgorithm escaping; they are now mapped to
    INVALID_ARGUMENT.)"""
    import base64
    import random

    from cryptography.hazmat.primitives import serialization

    from istiod_lite.ca.csr import check_csr

    der = x509.load_pem_x509_csr(build_csr().encode()).public_bytes(serialization.Encoding.DER)
    rng = random.Random(7)
    for _ in range(3000):
        mutated = bytearray(der)
        for _ in range(rng.randint(1, 6)):
            mutated[rng.randrange(len(mutated))] = rng.randrange(256)
        pem_text = ("-----BEGIN CERTIFICATE REQUEST-----\n" + base64.encodebytes(bytes(mutated)).decode()
                    + "-----END CERTIFICATE REQUEST-----\n")
        try:
            check_csr(pem_text, SPIFFE)
        except CaError as exc:
            assert exc.code in (INVALID, DENIED)
