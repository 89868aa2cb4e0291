"""The signer: turns a checked CSR and an authenticated identity into an X.509-SVID chain.

The leaf follows Istio's ``genCertTemplateFromCSR`` and the SPIFFE X.509-SVID leaf rules: empty
subject, exactly one URI SAN (the caller) marked critical because the subject is empty, CA:false,
keyUsage digitalSignature+keyEncipherment (critical), EKU serverAuth+clientAuth, a random 128-bit
serial, NotBefore backdated 2 minutes for clock skew, NotAfter = now + TTL clamped to the signing
certificate's NotAfter.  TTL: <= 0 means the default (24h); above the maximum (90 days) is
refused, not lowered (Istio's rule; SPIRE would clamp).
"""

from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import Callable
from dataclasses import dataclass

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from istiod_lite.ca.csr import check_csr
from istiod_lite.ca.errors import CaError
from istiod_lite.ca.identity import Identity
from istiod_lite.ca.jwk import PublicKey
from istiod_lite.ca.keystore import CLOCK_SKEW, CaMaterial, signature_hash

_EMPTY_NAME = x509.Name([])
_LEAF_KEY_USAGE = x509.KeyUsage(
    digital_signature=True, content_commitment=False, key_encipherment=True, data_encipherment=False,
    key_agreement=False, key_cert_sign=False, crl_sign=False, encipher_only=False, decipher_only=False,
)
_LEAF_EKU = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH])
_NOT_CA = x509.BasicConstraints(ca=False, path_length=None)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass(frozen=True)
class SigningOptions:
    """Istio's defaults: ``DEFAULT_WORKLOAD_CERT_TTL`` 24h, ``MAX_WORKLOAD_CERT_TTL`` 90 days."""

    default_ttl: dt.timedelta = dt.timedelta(hours=24)
    max_ttl: dt.timedelta = dt.timedelta(days=90)
    backdate: dt.timedelta = CLOCK_SKEW


def random_serial() -> int:
    """A positive, non-zero 128-bit serial (Go: ``rand.Int(rand.Reader, 2^128)``)."""
    while True:
        serial = secrets.randbits(128)
        if serial:
            return serial


class CertificateAuthority:
    """Signs workload certificates with one ``CaMaterial``.  Thread-safe: it holds no mutable state."""

    def __init__(self, material: CaMaterial, options: SigningOptions | None = None,
                 clock: Callable[[], dt.datetime] = utcnow) -> None:
        self.material = material
        self.options = options or SigningOptions()
        self._clock = clock
        self._hash = signature_hash(material.signing_key)
        self._issuer = material.signing_cert.subject
        try:
            ski = material.signing_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
            self._aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)
        except x509.ExtensionNotFound:
            self._aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(material.signing_key.public_key())

    def sign_csr(self, csr_pem: str, identity: str, ttl_seconds: int) -> list[str]:
        """Check ``csr_pem`` and return ``[leaf, *intermediates, root]`` as PEM strings.

        ``identity`` is the caller's SPIFFE ID, established by authentication; it becomes the only
        SAN.  Raises ``CaError`` (INVALID_ARGUMENT, PERMISSION_DENIED, INTERNAL).
        """
        ttl = self._ttl(ttl_seconds)
        try:
            Identity.from_spiffe(identity)
        except ValueError as exc:
            raise CaError(grpc.StatusCode.INTERNAL, f"caller identity {identity!r} is not a workload ID: {exc}") \
                from exc
        public_key = check_csr(csr_pem, identity)
        return [self.issue(public_key, x509.UniformResourceIdentifier(identity), ttl), *self.material.chain_tail_pem]

    def issue(self, public_key: PublicKey, san: x509.GeneralName | list[x509.GeneralName],
              ttl: dt.timedelta) -> str:
        """Issue a leaf for ``public_key`` with exactly the SANs given; returns its PEM."""
        now = self._clock()
        ca_cert = self.material.signing_cert
        if now >= ca_cert.not_valid_after_utc:
            raise CaError(grpc.StatusCode.INTERNAL,
                          f"signing certificate expired at {ca_cert.not_valid_after_utc.isoformat()}")
        if now < ca_cert.not_valid_before_utc - self.options.backdate:
            raise CaError(grpc.StatusCode.INTERNAL,
                          f"signing certificate not valid before {ca_cert.not_valid_before_utc.isoformat()}")
        names = san if isinstance(san, list) else [san]
        cert = (
            x509.CertificateBuilder()
            .subject_name(_EMPTY_NAME)
            .issuer_name(self._issuer)
            .public_key(public_key)
            .serial_number(random_serial())
            .not_valid_before(now - self.options.backdate)
            .not_valid_after(min(now + ttl, ca_cert.not_valid_after_utc))
            .add_extension(_NOT_CA, critical=True)
            .add_extension(_LEAF_KEY_USAGE, critical=True)
            .add_extension(_LEAF_EKU, critical=False)
            # Critical because the subject is empty (RFC 5280 4.2.1.6, SPIFFE X.509-SVID 4.4).
            .add_extension(x509.SubjectAlternativeName(names), critical=True)
            .add_extension(self._aki, critical=False)
            .sign(self.material.signing_key, self._hash)
        )
        return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")

    def _ttl(self, ttl_seconds: int) -> dt.timedelta:
        if ttl_seconds <= 0:
            return self.options.default_ttl
        # Compare as numbers first: int64 seconds can overflow ``timedelta``.
        if ttl_seconds > self.options.max_ttl.total_seconds():
            raise CaError(grpc.StatusCode.INVALID_ARGUMENT,
                          f"requested TTL {ttl_seconds}s exceeds the maximum {self.options.max_ttl}")
        return dt.timedelta(seconds=ttl_seconds)
