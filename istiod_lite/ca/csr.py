"""CSR checks: what a workload may put in a certificate signing request.

The issued certificate never copies anything from the CSR except its public key: the SAN comes
from the authenticated caller (Istio CA mode, SPIRE).  On top of that we *reject* a CSR that asks
for something else (Istio's RA-mode ``ValidateCSR``, cert-manager istio-csr), so misuse is visible
instead of silently corrected:

* the PEM must parse and its signature verify (proof of possession) -> INVALID_ARGUMENT;
* keys: RSA 2048..8192 bits, EC P-256 or P-384.  Ed25519 is refused although Go's x509 (and so
  Istio) accepts it: upstream Envoy 1.40 with default TLS settings does not offer Ed25519 among its
  signature algorithms, so an Envoy peer cannot complete a handshake with such a certificate
  (checked here: "no shared cipher"; docs/ca.md);
* the only extension allowed is subjectAltName; basicConstraints CA:true gets its own reason;
* SANs: at most one URI and nothing else (no DNS, IP, e-mail, other names);
* a URI SAN or subject CN naming anyone but the caller -> PERMISSION_DENIED.
"""

from __future__ import annotations

import grpc
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtensionOID, NameOID

from istiod_lite.ca.errors import CaError
from istiod_lite.ca.jwk import PublicKey

#: A PEM CSR for an RSA-8192 key is about 3 KiB; anything far larger is not a CSR worth parsing.
MAX_CSR_BYTES = 32 * 1024
MIN_RSA_BITS = 2048
MAX_RSA_BITS = 8192
ALLOWED_CURVES = frozenset({"secp256r1", "secp384r1"})

_INVALID = grpc.StatusCode.INVALID_ARGUMENT
_DENIED = grpc.StatusCode.PERMISSION_DENIED


def check_public_key(key: object) -> PublicKey:
    """Accept RSA 2048..8192 and EC P-256/P-384 public keys; refuse everything else."""
    if isinstance(key, rsa.RSAPublicKey):
        if not MIN_RSA_BITS <= key.key_size <= MAX_RSA_BITS:
            raise CaError(_INVALID, f"RSA key of {key.key_size} bits (allowed {MIN_RSA_BITS}..{MAX_RSA_BITS})")
        return key
    if isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name not in ALLOWED_CURVES:
            raise CaError(_INVALID, f"EC curve {key.curve.name} not allowed (P-256, P-384)")
        return key
    raise CaError(_INVALID, f"unsupported key type {type(key).__name__} (RSA or EC P-256/P-384 only)")


def check_csr(csr_pem: str, identity: str) -> PublicKey:
    """Validate ``csr_pem`` for a caller authenticated as ``identity``; return the key to certify."""
    if len(csr_pem) > MAX_CSR_BYTES:
        raise CaError(_INVALID, f"CSR of {len(csr_pem)} bytes exceeds {MAX_CSR_BYTES}")
    # The CSR is untrusted input and the parser raises many types (ValueError, InvalidVersion,
    # UnsupportedAlgorithm, ...; found by mutating CSRs): any failure to read it is the caller's.
    try:
        csr = x509.load_pem_x509_csr(csr_pem.encode("utf-8", "replace"))
    except Exception as exc:
        raise CaError(_INVALID, f"CSR does not parse: {type(exc).__name__}: {exc}") from exc
    try:
        signature_ok = csr.is_signature_valid
        public = csr.public_key()
    except Exception as exc:
        raise CaError(_INVALID, f"CSR public key or signature unusable: {type(exc).__name__}: {exc}") from exc
    if not signature_ok:
        raise CaError(_INVALID, "CSR signature does not verify (no proof of possession)")
    key = check_public_key(public)
    _check_extensions(csr, identity)
    _check_subject(csr, identity)
    return key


def _check_extensions(csr: x509.CertificateSigningRequest, identity: str) -> None:
    try:
        extensions = list(csr.extensions)
    except Exception as exc:  # untrusted input, see check_csr
        raise CaError(_INVALID, f"CSR extensions do not parse: {type(exc).__name__}: {exc}") from exc
    for ext in extensions:
        if ext.oid == ExtensionOID.SUBJECT_ALTERNATIVE_NAME:
            assert isinstance(ext.value, x509.SubjectAlternativeName)
            _check_sans(ext.value, identity)
        elif isinstance(ext.value, x509.BasicConstraints) and ext.value.ca:
            raise CaError(_INVALID, "CSR requests a CA certificate (basicConstraints CA:true)")
        else:
            raise CaError(_INVALID, f"CSR extension {ext.oid.dotted_string} not allowed (SAN only)")


def _check_sans(san: x509.SubjectAlternativeName, identity: str) -> None:
    uris: list[str] = []
    for name in san:
        if not isinstance(name, x509.UniformResourceIdentifier):
            raise CaError(_INVALID, f"CSR SAN of type {type(name).__name__} not allowed (URI only)")
        uris.append(name.value)
    if len(uris) > 1:
        raise CaError(_INVALID, f"CSR has {len(uris)} URI SANs (at most one)")
    if uris and uris[0] != identity:
        raise CaError(_DENIED, f"CSR URI SAN {uris[0]!r} is not the caller's identity {identity!r}")


def _check_subject(csr: x509.CertificateSigningRequest, identity: str) -> None:
    try:
        cns = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    except Exception as exc:  # untrusted input, see check_csr
        raise CaError(_INVALID, f"CSR subject does not parse: {type(exc).__name__}: {exc}") from exc
    if len(cns) > 1:
        raise CaError(_INVALID, "CSR subject has more than one CN")
    if cns and cns[0].value != identity:
        raise CaError(_DENIED, f"CSR subject CN {cns[0].value!r} is not the caller's identity {identity!r}")
