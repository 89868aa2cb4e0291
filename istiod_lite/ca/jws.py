"""Compact JWS (JWT) signing and verification, written against RFC 7515/7518 with ``cryptography``.

Small on purpose, so every rule is visible here instead of behind a library's defaults:

* ``alg`` must be on an allow-list of asymmetric algorithms (RS/PS 256/384/512, ES256/384).
  ``none`` and every HMAC algorithm are refused before any key is looked at, which rules out the
  ``alg: none`` and RSA-public-key-as-HMAC-secret forgeries.
* the key must match the algorithm family (RSA for RS/PS; the right curve for ES), and a key whose
  JWK names an ``alg`` verifies only that one;
* a header with ``crit`` is refused (we understand no extensions);
* ES signatures are the raw ``r || s`` of RFC 7518 3.4, exactly twice the coordinate length.

Claim checks (issuer, audience, times, subject) live in ``authn``; this module only says "these
bytes were signed by that key".
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

from istiod_lite.ca.jwk import VerificationKey, b64url, b64url_decode

_HASHES: dict[str, type[hashes.HashAlgorithm]] = {"256": hashes.SHA256, "384": hashes.SHA384, "512": hashes.SHA512}
_CURVE_FOR_ALG = {"ES256": "secp256r1", "ES384": "secp384r1"}
ALLOWED_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384")
_SEGMENT = re.compile(r"[A-Za-z0-9_-]*")
#: Kubernetes tokens are 1-2 KiB; gRPC's default metadata limit is 8 KiB anyway.
MAX_TOKEN_BYTES = 8 * 1024


class JwsError(Exception):
    """The token is malformed or its signature does not verify (the message is for logs only)."""


@dataclass(frozen=True)
class ParsedToken:
    header: Mapping[str, Any]
    claims: Mapping[str, Any]
    signing_input: bytes
    signature: bytes

    @property
    def alg(self) -> str:
        return str(self.header.get("alg"))

    @property
    def kid(self) -> str | None:
        kid = self.header.get("kid")
        return kid if isinstance(kid, str) else None


def _json_segment(segment: str, what: str) -> Mapping[str, Any]:
    try:
        value = json.loads(b64url_decode(segment))
    except (ValueError, RecursionError) as exc:  # RecursionError: "[[[[..." nested past the limit
        raise JwsError(f"{what} is not base64url JSON") from exc
    if not isinstance(value, dict):
        raise JwsError(f"{what} is not a JSON object")
    return value


def parse(token: str) -> ParsedToken:
    """Split and decode a compact JWS; check its shape and ``alg`` but not its signature."""
    if len(token) > MAX_TOKEN_BYTES:
        raise JwsError(f"token of {len(token)} bytes exceeds {MAX_TOKEN_BYTES}")
    parts = token.split(".")
    if len(parts) != 3 or not all(_SEGMENT.fullmatch(p) for p in parts):
        raise JwsError("not a compact JWS (three base64url segments)")
    header = _json_segment(parts[0], "header")
    claims = _json_segment(parts[1], "payload")
    alg = header.get("alg")
    if alg not in ALLOWED_ALGORITHMS:
        raise JwsError(f"algorithm {alg!r} not allowed")
    if "crit" in header:
        raise JwsError("critical header extensions are not supported")
    try:
        signature = b64url_decode(parts[2])
    except ValueError as exc:
        raise JwsError("signature is not base64url") from exc
    return ParsedToken(header, claims, f"{parts[0]}.{parts[1]}".encode("ascii"), signature)


def key_fits(key: VerificationKey, alg: str) -> bool:
    if key.alg is not None and key.alg != alg:
        return False
    if alg[:2] in ("RS", "PS"):
        return isinstance(key.key, rsa.RSAPublicKey)
    return isinstance(key.key, ec.EllipticCurvePublicKey) and key.key.curve.name == _CURVE_FOR_ALG.get(alg)


def verify_signature(token: ParsedToken, keys: Sequence[VerificationKey]) -> VerificationKey:
    """Return the key that verifies ``token``; raise ``JwsError`` if none does.

    With a ``kid`` in the header, only keys carrying that ``kid`` (or none at all, e.g. from PEM)
    are tried, so key rotation with several published keys costs one verification, not n.
    """
    alg = token.alg
    candidates = [k for k in keys if key_fits(k, alg)]
    if token.kid is not None:
        candidates = [k for k in candidates if k.kid in (None, token.kid)]
    if not candidates:
        raise JwsError(f"no trusted key for alg {alg} kid {token.kid!r}")
    hash_alg = _HASHES[alg[2:]]()
    for key in candidates:
        if _verify_one(key, alg, hash_alg, token):
            return key
    raise JwsError("signature does not verify with any trusted key")


def _verify_one(key: VerificationKey, alg: str, hash_alg: hashes.HashAlgorithm, token: ParsedToken) -> bool:
    try:
        if isinstance(key.key, rsa.RSAPublicKey):
            pad: padding.AsymmetricPadding = padding.PKCS1v15() if alg.startswith("RS") else padding.PSS(
                mgf=padding.MGF1(hash_alg), salt_length=padding.PSS.DIGEST_LENGTH)
            key.key.verify(token.signature, token.signing_input, pad, hash_alg)
        else:
            size = (key.key.curve.key_size + 7) // 8
            if len(token.signature) != 2 * size:
                return False
            r = int.from_bytes(token.signature[:size], "big")
            s = int.from_bytes(token.signature[size:], "big")
            key.key.verify(encode_dss_signature(r, s), token.signing_input, ec.ECDSA(hash_alg))
    except InvalidSignature:
        return False
    return True


def sign_es256(claims: Mapping[str, Any], key: ec.EllipticCurvePrivateKey, kid: str) -> str:
    """Encode and sign ``claims`` as an ES256 JWT (how the local issuer mints tokens)."""
    if key.curve.name != "secp256r1":
        raise ValueError("ES256 needs a P-256 key")
    header = {"alg": "ES256", "kid": kid, "typ": "JWT"}
    signing_input = (b64url(json.dumps(header, separators=(",", ":")).encode()) + "." +
                     b64url(json.dumps(dict(claims), separators=(",", ":"), sort_keys=True).encode()))
    r, s = decode_dss_signature(key.sign(signing_input.encode("ascii"), ec.ECDSA(hashes.SHA256())))
    return signing_input + "." + b64url(r.to_bytes(32, "big") + s.to_bytes(32, "big"))
