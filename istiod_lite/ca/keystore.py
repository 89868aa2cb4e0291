"""CA key material in a directory: Istio's plug-in CA files, or a self-signed root made once.

The directory uses the file names of Istio's ``cacerts`` Secret, so a real Istio plug-in bundle
(an intermediate CA issued by your own root) can be dropped in unchanged:

=================  =====  ==================================================================
``ca-cert.pem``    0644   the signing certificate
``ca-key.pem``     0600   its private key
``cert-chain.pem`` 0644   signing cert and intermediates up to (optionally incl.) the root
``root-cert.pem``  0644   the root(s) workloads trust
``istio-generated`` 0644  marker: the bundle above is our self-signed root
``issuer-key.pem`` 0600   private key of the local token issuer (ES256)
``issuer-jwks.json`` 0644 its public JWKS
=================  =====  ==================================================================

With none of the four CA files present, a self-signed root is generated and written, so a restart
reuses the same root (workloads keep trusting it).  A *partial* bundle is fatal, as in Istio: a
missing key next to a present certificate means something went wrong and guessing would mint a
second root.  Writes are atomic (temp file + ``os.replace``) and serialised by a lock file, so two
processes starting together agree on one root.

Nothing is read from a directory, or a file, that another user owns or could have written, nor
through a symbolic link (``safefiles``): a planted issuer key would mint tokens for any identity.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import itertools
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from istiod_lite.ca import safefiles
from istiod_lite.ca.errors import CaMaterialError
from istiod_lite.ca.jwk import jwks_document

CA_CERT = "ca-cert.pem"
CA_KEY = "ca-key.pem"
CERT_CHAIN = "cert-chain.pem"
ROOT_CERT = "root-cert.pem"
GENERATED_MARKER = "istio-generated"
ISSUER_KEY = "issuer-key.pem"
ISSUER_JWKS = "issuer-jwks.json"
_LOCK = ".lock"
PLUGIN_FILES = (CA_CERT, CA_KEY, CERT_CHAIN, ROOT_CERT)

#: Istio's self-signed root lives 10 years (``CITADEL_SELF_SIGNED_CA_CERT_TTL``).
ROOT_TTL = dt.timedelta(days=3650)
#: Backdating absorbs clock skew between istiod and the workloads that verify its certificates.
CLOCK_SKEW = dt.timedelta(minutes=2)

KeyType = Literal["ec-p256", "rsa-2048"]
SigningKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


@dataclass(frozen=True)
class CaMaterial:
    """Everything the signer needs, loaded once and immutable afterwards.

    ``intermediates`` are the certificates between a leaf and the root, starting with the signing
    certificate (empty when the signing certificate is the root itself).
    """

    signing_cert: x509.Certificate
    signing_key: SigningKey
    intermediates: tuple[x509.Certificate, ...]
    roots: tuple[x509.Certificate, ...]
    issuer_key: ec.EllipticCurvePrivateKey
    ca_dir: Path
    self_signed: bool
    #: PEM of each intermediate then of the roots (one element), ready for responses.
    chain_tail_pem: tuple[str, ...] = field(default=(), repr=False)

    @property
    def root_pem(self) -> str:
        return "".join(_pem(c) for c in self.roots)

    @property
    def not_after(self) -> dt.datetime:
        return self.signing_cert.not_valid_after_utc


def _pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


def _key_pem(key: SigningKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to ``path`` with ``mode`` so readers see the old file or the new one, never half.

    The mode is set on the temp file before any byte is written, so a key is never readable by
    others, not even for a moment.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _prepare_dir(ca_dir: Path) -> None:
    """Create ``ca_dir`` (0700) if missing; refuse one that is not ours alone (``safefiles``)."""
    ca_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    safefiles.check_directory(ca_dir)


@contextlib.contextmanager
def _locked(ca_dir: Path) -> Iterator[None]:
    fd = safefiles.open_lock(ca_dir / _LOCK)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def generate_key(key_type: KeyType) -> SigningKey:
    if key_type == "ec-p256":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "rsa-2048":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    raise ValueError(f"unknown key type {key_type!r} (ec-p256 or rsa-2048)")


def signature_hash(key: SigningKey) -> hashes.SHA256 | hashes.SHA384:
    """SHA-384 for P-384 keys (matching the curve's strength), SHA-256 otherwise (as Go's x509)."""
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.key_size >= 384:
        return hashes.SHA384()
    return hashes.SHA256()


def self_signed_root(key: SigningKey, trust_domain: str, now: dt.datetime,
                     ttl: dt.timedelta = ROOT_TTL) -> x509.Certificate:
    """A root like Istio's self-signed CA: subject ``O=<trust domain>``, CA, keyCertSign."""
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, trust_domain)])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + ttl)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                     crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .sign(key, signature_hash(key))
    )


def load_or_create(ca_dir: Path, key_type: KeyType = "ec-p256", trust_domain: str = "cluster.local",
                   now: dt.datetime | None = None) -> CaMaterial:
    """Load the CA in ``ca_dir`` (plug-in or previously generated), or generate and persist a root.

    ``key_type`` and ``trust_domain`` only matter when a root is generated; an existing bundle is
    used as it is.  Raises ``CaMaterialError`` for a partial or inconsistent bundle.
    """
    _prepare_dir(ca_dir)
    now = now or dt.datetime.now(dt.UTC)
    with _locked(ca_dir):
        present = [n for n in PLUGIN_FILES if safefiles.exists(ca_dir / n)]
        if not present:
            _write_self_signed(ca_dir, generate_key(key_type), trust_domain, now)
        elif len(present) != len(PLUGIN_FILES):
            missing = sorted(set(PLUGIN_FILES) - set(present))
            raise CaMaterialError(f"partial CA bundle in {ca_dir}: missing {', '.join(missing)}")
        issuer_key = load_or_create_issuer_key(ca_dir, _already_locked=True)
        return _load_bundle(ca_dir, issuer_key)


def _write_self_signed(ca_dir: Path, key: SigningKey, trust_domain: str, now: dt.datetime) -> None:
    root_pem = _pem(self_signed_root(key, trust_domain, now)).encode()
    # The key first and the marker last: a crash part-way leaves a partial bundle, which the
    # next start refuses loudly instead of silently minting a second root.
    write_atomic(ca_dir / CA_KEY, _key_pem(key), 0o600)
    write_atomic(ca_dir / CA_CERT, root_pem, 0o644)
    write_atomic(ca_dir / CERT_CHAIN, b"", 0o644)
    write_atomic(ca_dir / ROOT_CERT, root_pem, 0o644)
    write_atomic(ca_dir / GENERATED_MARKER, b"", 0o644)


def load_or_create_issuer_key(ca_dir: Path, *, _already_locked: bool = False) -> ec.EllipticCurvePrivateKey:
    """The local token issuer's P-256 key (created on first use) and its published JWKS.

    Independent of the CA bundle, so ``istiod-lite token create`` works before the server ever ran
    and with a plug-in CA alike.
    """
    if not _already_locked:
        _prepare_dir(ca_dir)
        with _locked(ca_dir):
            return load_or_create_issuer_key(ca_dir, _already_locked=True)
    key_path = ca_dir / ISSUER_KEY
    if safefiles.exists(key_path):
        loaded = serialization.load_pem_private_key(safefiles.read(key_path, private=True), password=None)
        if not isinstance(loaded, ec.EllipticCurvePrivateKey) or loaded.curve.name != "secp256r1":
            raise CaMaterialError(f"{key_path} is not an EC P-256 private key")
        key = loaded
    else:
        key = ec.generate_private_key(ec.SECP256R1())
        write_atomic(key_path, _key_pem(key), 0o600)
    jwks = jwks_document([key.public_key()]).encode()
    jwks_path = ca_dir / ISSUER_JWKS
    if not safefiles.exists(jwks_path) or safefiles.read(jwks_path, private=False) != jwks:
        write_atomic(jwks_path, jwks, 0o644)
    return key


def _read_certs(path: Path) -> list[x509.Certificate]:
    data = safefiles.read(path, private=False)
    if not data.strip():
        return []
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise CaMaterialError(f"{path}: not PEM certificates ({exc})") from exc


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def _issued_by(child: x509.Certificate, parent: x509.Certificate) -> bool:
    try:
        child.verify_directly_issued_by(parent)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _load_bundle(ca_dir: Path, issuer_key: ec.EllipticCurvePrivateKey) -> CaMaterial:
    """Load and cross-check the four files.

    An expired signing certificate still loads: the signer refuses each request (as Istio does)
    and logs why, which is easier to diagnose than a crash loop.
    """
    certs = _read_certs(ca_dir / CA_CERT)
    if len(certs) != 1:
        raise CaMaterialError(f"{ca_dir / CA_CERT}: expected exactly one certificate, found {len(certs)}")
    signing_cert = certs[0]
    try:
        key = serialization.load_pem_private_key(safefiles.read(ca_dir / CA_KEY, private=True), password=None)
    except (ValueError, TypeError) as exc:
        raise CaMaterialError(f"{ca_dir / CA_KEY}: cannot load private key ({exc})") from exc
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise CaMaterialError(f"{ca_dir / CA_KEY}: only RSA and EC signing keys are supported")
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(serialization.Encoding.DER, spki) != signing_cert.public_key().public_bytes(
            serialization.Encoding.DER, spki):
        raise CaMaterialError(f"{CA_KEY} does not match the public key of {CA_CERT}")
    if not _is_ca(signing_cert):
        raise CaMaterialError(f"{CA_CERT} is not a CA certificate (basicConstraints CA:true)")
    roots = _read_certs(ca_dir / ROOT_CERT)
    if not roots:
        raise CaMaterialError(f"{ca_dir / ROOT_CERT} holds no certificate")
    chain = _read_certs(ca_dir / CERT_CHAIN)
    if chain and chain[0] == signing_cert:
        chain = chain[1:]
    # The roots travel as the last element of every response; never repeat them as intermediates.
    intermediates = [signing_cert, *chain] if signing_cert not in roots else []
    intermediates = [c for c in intermediates if c not in roots]
    path = intermediates or [signing_cert]
    for child, parent in itertools.pairwise(path):
        if not _issued_by(child, parent):
            raise CaMaterialError(f"{CERT_CHAIN}: {child.subject.rfc4514_string()} is not issued by the next "
                                  f"certificate {parent.subject.rfc4514_string()}")
    if not any(path[-1] == r or _issued_by(path[-1], r) for r in roots):
        raise CaMaterialError(f"the chain from {CA_CERT} does not lead to a certificate in {ROOT_CERT}")
    tail = (*(_pem(c) for c in intermediates), "".join(_pem(r) for r in roots))
    return CaMaterial(
        signing_cert=signing_cert,
        signing_key=key,
        intermediates=tuple(intermediates),
        roots=tuple(roots),
        issuer_key=issuer_key,
        ca_dir=ca_dir,
        self_signed=(ca_dir / GENERATED_MARKER).exists(),
        chain_tail_pem=tail,
    )
