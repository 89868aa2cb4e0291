"""Shared builders for the CA tests (CSRs, JWTs of any shape, plug-in bundles, ``openssl verify``).

Kept in a ``test_ca_*`` module so the CA's test files stay self-contained; the few tests at the
bottom check the builders themselves.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import shutil
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from istiod_lite.ca.keystore import CA_CERT, CA_KEY, CERT_CHAIN, ROOT_CERT, self_signed_root

TD = "cluster.local"
SPIFFE = "spiffe://cluster.local/ns/default/sa/foo"
OTHER_SPIFFE = "spiffe://cluster.local/ns/default/sa/bar"
NOW = dt.datetime.now(dt.UTC)

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


def pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def p256() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def write_private(path: Path, data: bytes) -> None:
    """Write a private key as an operator must (0600): the CA refuses one others could read."""
    path.write_bytes(data)
    path.chmod(0o600)


def build_csr(key: Any = None, *, uris: Iterable[str] = (SPIFFE,), dns: Iterable[str] = (), cn: str | None = None,
              extra: Iterable[tuple[x509.ExtensionType, bool]] = (), names: Iterable[x509.GeneralName] = ()) -> str:
    """A PEM CSR; by default P-256 with the single URI SAN ``SPIFFE`` (what Istio's agent sends)."""
    key = key if key is not None else p256()
    general: list[x509.GeneralName] = [x509.UniformResourceIdentifier(u) for u in uris]
    general += [x509.DNSName(d) for d in dns]
    general += list(names)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)] if cn else [])
    builder = x509.CertificateSigningRequestBuilder().subject_name(subject)
    if general:
        builder = builder.add_extension(x509.SubjectAlternativeName(general), critical=False)
    for ext, critical in extra:
        builder = builder.add_extension(ext, critical=critical)
    algorithm = None if isinstance(key, Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(key, algorithm).public_bytes(serialization.Encoding.PEM).decode()


def tamper_csr_signature(csr_pem: str) -> str:
    """Flip one bit in the CSR's signature (the DER's last byte) so the proof of possession fails."""
    der = bytearray(x509.load_pem_x509_csr(csr_pem.encode()).public_bytes(serialization.Encoding.DER))
    der[-1] ^= 0x01
    body = base64.encodebytes(bytes(der)).decode().replace("\n", "")
    lines = [body[i:i + 64] for i in range(0, len(body), 64)]
    return "-----BEGIN CERTIFICATE REQUEST-----\n" + "\n".join(lines) + "\n-----END CERTIFICATE REQUEST-----\n"


# -- JWTs of any shape (independent of istiod_lite.ca.jws, so the verifier is tested against a
#    second implementation) -------------------------------------------------------------------------
def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


_HASH = {"256": hashes.SHA256, "384": hashes.SHA384, "512": hashes.SHA512}


def sign_jwt(claims: Mapping[str, Any], key: Any, alg: str, kid: str | None = None,
             header: Mapping[str, Any] | None = None) -> str:
    """Encode ``claims`` signed with ``alg`` (any of RS*, PS*, ES*, HS*, none)."""
    h: dict[str, Any] = {"alg": alg, "typ": "JWT"}
    if kid:
        h["kid"] = kid
    h.update(header or {})
    signing_input = f"{_b64(json.dumps(h).encode())}.{_b64(json.dumps(dict(claims)).encode())}".encode()
    if alg == "none":
        sig = b""
    elif alg.startswith("HS"):
        sig = hmac.new(key, signing_input, getattr(hashlib, f"sha{alg[2:]}")).digest()
    elif alg.startswith("RS"):
        sig = key.sign(signing_input, padding.PKCS1v15(), _HASH[alg[2:]]())
    elif alg.startswith("PS"):
        h_alg = _HASH[alg[2:]]()
        sig = key.sign(signing_input, padding.PSS(mgf=padding.MGF1(h_alg), salt_length=padding.PSS.DIGEST_LENGTH),
                       h_alg)
    else:
        size = (key.curve.key_size + 7) // 8
        r, s = decode_dss_signature(key.sign(signing_input, ec.ECDSA(_HASH[alg[2:]]())))
        sig = r.to_bytes(size, "big") + s.to_bytes(size, "big")
    return f"{signing_input.decode()}.{_b64(sig)}"


def sa_claims(now: float, *, ns: str = "default", sa: str = "foo", iss: str = "istiod-lite",
              aud: Any = ("istio-ca",), ttl: int = 3600, **overrides: Any) -> dict[str, Any]:
    claims: dict[str, Any] = {
        "iss": iss, "sub": f"system:serviceaccount:{ns}:{sa}", "aud": list(aud) if isinstance(aud, tuple) else aud,
        "iat": int(now), "nbf": int(now), "exp": int(now) + ttl,
        "kubernetes.io": {"namespace": ns, "serviceaccount": {"name": sa, "uid": "u-1"}},
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


# -- plug-in bundles ---------------------------------------------------------------------------------
def make_intermediate_bundle(ca_dir: Path, *, inter_ttl: dt.timedelta = dt.timedelta(days=365),
                             include_root_in_chain: bool = True) -> tuple[x509.Certificate, x509.Certificate]:
    """Write an Istio plug-in bundle: an offline root and an intermediate that signs. Returns (root, inter)."""
    ca_dir.mkdir(parents=True, exist_ok=True)
    root_key = ec.generate_private_key(ec.SECP384R1())
    root = self_signed_root(root_key, "example-root", NOW)
    inter_key = p256()
    ski = x509.SubjectKeyIdentifier.from_public_key(inter_key.public_key())
    inter = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "cluster.local"),
                                 x509.NameAttribute(NameOID.COMMON_NAME, "Intermediate CA")]))
        .issuer_name(root.subject)
        .public_key(inter_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(minutes=5))
        .not_valid_after(NOW + inter_ttl)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(root_key.public_key()), critical=False)
        .sign(root_key, hashes.SHA384())
    )
    (ca_dir / CA_CERT).write_text(pem(inter))
    write_private(ca_dir / CA_KEY, key_pem(inter_key))
    (ca_dir / CERT_CHAIN).write_text(pem(inter) + (pem(root) if include_root_in_chain else ""))
    (ca_dir / ROOT_CERT).write_text(pem(root))
    return root, inter


# -- openssl -------------------------------------------------------------------------------------------
OPENSSL = shutil.which("openssl")
needs_openssl = pytest.mark.skipif(OPENSSL is None, reason="openssl CLI not installed; Python-side checks still run")


def openssl_verify(tmp: Path, chain: list[str], *extra: str) -> subprocess.CompletedProcess[str]:
    """``openssl verify -x509_strict -CAfile <root> -untrusted <intermediates> <leaf>`` on a response chain."""
    assert OPENSSL is not None
    (tmp / "root.pem").write_text(chain[-1])
    (tmp / "untrusted.pem").write_text("".join(chain[1:-1]) or chain[-1])
    (tmp / "leaf.pem").write_text(chain[0])
    return subprocess.run([OPENSSL, "verify", "-x509_strict", "-CAfile", str(tmp / "root.pem"), "-untrusted",
                           str(tmp / "untrusted.pem"), *extra, str(tmp / "leaf.pem")],
                          capture_output=True, text=True, check=False)


def verify_chain_python(chain: list[str], now: dt.datetime | None = None) -> x509.Certificate:
    """Verify leaf -> intermediates -> root with cryptography's path validation; return the leaf."""
    from cryptography.x509.verification import PolicyBuilder, Store

    certs = [x509.load_pem_x509_certificate(p.encode()) for p in chain[:-1]]
    roots = x509.load_pem_x509_certificates(chain[-1].encode())
    verifier = (PolicyBuilder().store(Store(roots)).time(now or dt.datetime.now(dt.UTC))
                .build_client_verifier())
    verifier.verify(certs[0], certs[1:])
    return certs[0]


# -- self-tests of the builders ------------------------------------------------------------------------
def test_build_csr_defaults_to_one_uri_san() -> None:
    csr = x509.load_pem_x509_csr(build_csr().encode())
    assert csr.is_signature_valid
    san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [SPIFFE]


def test_tampered_csr_still_parses_but_fails_signature() -> None:
    csr = x509.load_pem_x509_csr(tamper_csr_signature(build_csr()).encode())
    assert not csr.is_signature_valid
