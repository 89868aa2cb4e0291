"""JSON Web Keys: publish the local token-issuer key, and load trusted verification keys.

Only asymmetric keys are accepted (RSA >= 2048 bits, EC P-256/P-384).  Symmetric (``oct``) keys
are refused on purpose: a JWT verifier that accepts HMAC keys next to public keys invites the
classic algorithm-confusion forgery.  ``kid`` values are RFC 7638 thumbprints when we mint them.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey

_CURVES: dict[str, ec.EllipticCurve] = {"P-256": ec.SECP256R1(), "P-384": ec.SECP384R1()}
_CURVE_NAMES = {"secp256r1": "P-256", "secp384r1": "P-384"}
_COORD_LEN = {"P-256": 32, "P-384": 48}
MIN_RSA_BITS = 2048


@dataclass(frozen=True)
class VerificationKey:
    """A public key trusted to verify tokens; ``kid`` and ``alg`` narrow which tokens it may verify."""

    key: PublicKey
    kid: str | None = None
    alg: str | None = None


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _int_bytes(n: int, length: int | None = None) -> bytes:
    return n.to_bytes(length or max(1, (n.bit_length() + 7) // 8), "big")


def public_jwk(key: PublicKey) -> dict[str, str]:
    """The JWK of ``key`` with its RFC 7638 thumbprint as ``kid``."""
    jwk: dict[str, str]
    if isinstance(key, ec.EllipticCurvePublicKey):
        crv = _CURVE_NAMES.get(key.curve.name)
        if crv is None:
            raise ValueError(f"unsupported curve {key.curve.name}")
        nums = key.public_numbers()
        size = _COORD_LEN[crv]
        jwk = {"crv": crv, "kty": "EC", "x": b64url(_int_bytes(nums.x, size)), "y": b64url(_int_bytes(nums.y, size))}
        required: tuple[str, ...] = ("crv", "kty", "x", "y")
        alg = "ES256" if crv == "P-256" else "ES384"
    else:
        rnums = key.public_numbers()
        jwk = {"e": b64url(_int_bytes(rnums.e)), "kty": "RSA", "n": b64url(_int_bytes(rnums.n))}
        required = ("e", "kty", "n")
        alg = "RS256"
    canonical = json.dumps({k: jwk[k] for k in required}, separators=(",", ":"), sort_keys=True)
    jwk["kid"] = b64url(hashlib.sha256(canonical.encode()).digest())
    jwk["alg"] = alg
    jwk["use"] = "sig"
    return jwk


def jwks_document(keys: list[PublicKey]) -> str:
    return json.dumps({"keys": [public_jwk(k) for k in keys]}, indent=2, sort_keys=True) + "\n"


def _key_from_jwk(jwk: Mapping[str, Any]) -> VerificationKey:
    kty = jwk.get("kty")
    key: PublicKey
    if kty == "EC":
        curve = _CURVES.get(str(jwk.get("crv")))
        if curve is None:
            raise ValueError(f"unsupported EC curve {jwk.get('crv')!r}")
        x = int.from_bytes(b64url_decode(str(jwk["x"])), "big")
        y = int.from_bytes(b64url_decode(str(jwk["y"])), "big")
        key = ec.EllipticCurvePublicNumbers(x, y, curve).public_key()  # checks the point is on the curve
    elif kty == "RSA":
        n = int.from_bytes(b64url_decode(str(jwk["n"])), "big")
        e = int.from_bytes(b64url_decode(str(jwk["e"])), "big")
        key = rsa.RSAPublicNumbers(e, n).public_key()
        if key.key_size < MIN_RSA_BITS:
            raise ValueError(f"RSA key of {key.key_size} bits is too small")
    else:
        raise ValueError(f"unsupported key type {kty!r} (only RSA and EC public keys)")
    if jwk.get("use", "sig") != "sig":
        raise ValueError("key is not for signatures")
    kid = jwk.get("kid")
    alg = jwk.get("alg")
    return VerificationKey(key=key, kid=str(kid) if kid else None, alg=str(alg) if alg else None)


def _check_public(key: object) -> PublicKey:
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise ValueError(f"RSA key of {key.key_size} bits is too small")
        return key
    if isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name in _CURVE_NAMES:
        return key
    raise ValueError(f"unsupported public key {type(key).__name__}")


def parse_verification_keys(text: str) -> list[VerificationKey]:
    """Keys from a JWKS (``{"keys": [...]}``), a single JWK, or PEM public keys / certificates.

    Any unusable key makes the whole file an error: silently skipping a key the operator listed
    would turn a typo into "that issuer's tokens are refused" without a word.
    """
    stripped = text.lstrip()
    if stripped.startswith("{"):
        doc = json.loads(stripped)
        entries = doc["keys"] if isinstance(doc, dict) and "keys" in doc else [doc]
        if not isinstance(entries, list) or not entries:
            raise ValueError("JWKS has no keys")
        return [_key_from_jwk(e) for e in entries]
    keys: list[VerificationKey] = []
    for block in _pem_blocks(stripped):
        if "CERTIFICATE" in block.splitlines()[0]:
            public: object = x509.load_pem_x509_certificate(block.encode()).public_key()
        else:
            public = serialization.load_pem_public_key(block.encode())
        keys.append(VerificationKey(key=_check_public(public)))
    if not keys:
        raise ValueError("no JWKS or PEM public keys found")
    return keys


def load_verification_keys(path: Path) -> list[VerificationKey]:
    """Read ``--jwks FILE``: see ``parse_verification_keys``."""
    return parse_verification_keys(path.read_text())


def _pem_blocks(text: str) -> list[str]:
    blocks: list[str] = []
    current: list[str] | None = None
    for line in text.splitlines():
        if line.startswith("-----BEGIN "):
            current = [line]
        elif current is not None:
            current.append(line)
            if line.startswith("-----END "):
                blocks.append("\n".join(current) + "\n")
                current = None
    return blocks
