"""Workload credentials for HBONE: certificate chain, private key and mesh roots, checked before use.

Envoy would accept a key that does not match its certificate only to fail at the first handshake,
and would present a certificate of the wrong identity without complaint; both are caught here,
with a message naming the file, so a mistake shows up when the command starts, not as a reset
connection later.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

#: A chain longer than this is not a workload certificate chain (and would make the walk costly).
_MAX_CHAIN = 8


class CredentialError(ValueError):
    """Credentials that cannot be used (unreadable, mismatched, expired, wrong identity)."""


@dataclass(frozen=True)
class Credentials:
    """``chain_pem`` is the leaf then any intermediates (never the root): what a TLS peer is sent."""

    chain_pem: str
    key_pem: str
    roots_pem: str

    @property
    def leaf(self) -> x509.Certificate:
        return x509.load_pem_x509_certificates(self.chain_pem.encode())[0]

    @property
    def not_before(self) -> dt.datetime:
        return self.leaf.not_valid_before_utc

    @property
    def not_after(self) -> dt.datetime:
        return self.leaf.not_valid_after_utc

    @property
    def uri_sans(self) -> list[str]:
        return uri_sans(self.leaf)


def uri_sans(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [str(u) for u in san.get_values_for_type(x509.UniformResourceIdentifier)]


def _read(path: Path, what: str) -> str:
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise CredentialError(f"cannot read {what} {path}: {exc}") from exc


def load_files(cert: Path, key: Path, roots: Path) -> Credentials:
    """Read PEM files; a root appended to ``cert`` (as some tools write chains) is dropped."""
    chain_text, key_text, roots_text = _read(cert, "certificate"), _read(key, "private key"), _read(roots, "root")
    try:
        chain = x509.load_pem_x509_certificates(chain_text.encode())
    except ValueError as exc:
        raise CredentialError(f"{cert}: not PEM certificates ({exc})") from exc
    try:
        root_certs = x509.load_pem_x509_certificates(roots_text.encode())
    except ValueError as exc:
        raise CredentialError(f"{roots}: not PEM certificates ({exc})") from exc
    kept = [c for c in chain if c not in root_certs] or chain[:1]
    return Credentials(chain_pem=_pems(kept), key_pem=key_text, roots_pem=roots_text)


def _pems(certs: list[x509.Certificate]) -> str:
    return "".join(c.public_bytes(serialization.Encoding.PEM).decode("ascii") for c in certs)


def _issued_by(child: x509.Certificate, parent: x509.Certificate) -> bool:
    try:
        child.verify_directly_issued_by(parent)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def chains_to_roots(chain: list[x509.Certificate], roots: list[x509.Certificate]) -> bool:
    """True if ``chain[0]`` leads to one of ``roots`` through ``chain[1:]`` (signatures only: Envoy
    checks validity periods and extensions at the handshake; this catches the wrong CA early)."""
    pool = chain[1:]
    current = chain[0]
    for _ in range(_MAX_CHAIN):
        if any(current == r or _issued_by(current, r) for r in roots):
            return True
        parent = next((c for c in pool if c != current and _issued_by(current, c)), None)
        if parent is None:
            return False
        current = parent
    return False


def check(credentials: Credentials, *, identity: str | None, san_prefix: str,
          now: dt.datetime | None = None) -> None:
    """Raise ``CredentialError`` unless the credentials can serve ``identity`` in this mesh.

    ``identity`` None: any URI SAN under ``san_prefix`` (the trust domain) is accepted.
    """
    try:
        chain = x509.load_pem_x509_certificates(credentials.chain_pem.encode())
        roots = x509.load_pem_x509_certificates(credentials.roots_pem.encode())
        key = serialization.load_pem_private_key(credentials.key_pem.encode(), password=None)
    except (ValueError, TypeError) as exc:
        raise CredentialError(f"credentials do not parse: {exc}") from exc
    leaf = chain[0]
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    if key.public_key().public_bytes(der, spki) != leaf.public_key().public_bytes(der, spki):
        raise CredentialError("the private key does not belong to the certificate")
    now = now or dt.datetime.now(dt.UTC)
    if not leaf.not_valid_before_utc <= now < leaf.not_valid_after_utc:
        raise CredentialError(f"the certificate is valid from {leaf.not_valid_before_utc.isoformat()} "
                              f"to {leaf.not_valid_after_utc.isoformat()}, not now")
    sans = uri_sans(leaf)
    if identity is not None and identity not in sans:
        raise CredentialError(f"the certificate is for {sans or 'no URI SAN'}, not {identity}")
    if not any(s.startswith(san_prefix) for s in sans):
        raise CredentialError(f"the certificate's URI SANs {sans} are outside the trust domain {san_prefix}")
    if not chains_to_roots(chain, roots):
        raise CredentialError("the certificate does not chain to the given root certificate(s)")
