"""Who is calling: pluggable authenticators, tried in order, the first success wins.

Mirrors istiod's chain (``security/pkg/server/ca/server.go``): client certificate first (a
workload renewing with the certificate we issued it), then bearer JWTs.  Each authenticator
returns ``None`` when the request carries no credential of its kind, returns an ``Identity`` on
success, and raises ``AuthenticationError`` when the credential is present but bad.  If none
succeeds the caller gets ``UNAUTHENTICATED`` with Istio's fixed message, and every authenticator's
reason goes to the log only.

Kubernetes TokenReview authentication is not here; it arrives with the Kubernetes source and plugs
in as one more ``Authenticator``.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import grpc
from cryptography import x509
from cryptography.exceptions import InvalidSignature

from istiod_lite.ca import jws
from istiod_lite.ca.errors import CaError
from istiod_lite.ca.identity import Identity
from istiod_lite.ca.jwk import VerificationKey

#: Istio's ``TOKEN_AUDIENCES`` default.
DEFAULT_AUDIENCE = "istio-ca"
#: Clock-skew allowance on ``exp``/``nbf``/``iat``.  Tokens live an hour or more; 30 s covers NTP
#: drift between hosts without meaningfully extending a stolen token's life.
DEFAULT_LEEWAY = dt.timedelta(seconds=30)
BEARER_PREFIX = "Bearer "


class AuthenticationError(Exception):
    """A credential was presented and refused; ``reason`` is logged, never returned."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Authenticator(Protocol):
    """One way to establish the caller's identity.

    ``metadata`` holds the request's ASCII gRPC metadata (lower-case keys); ``peer_cert_der`` is
    the TLS client certificate when the client sent one (already verified against our roots by
    the TLS stack).  Implementations must be thread-safe: the service calls them off the loop.
    """

    name: str

    def authenticate(self, metadata: Mapping[str, str], peer_cert_der: bytes | None) -> Identity | None: ...


class Authenticators:
    """An ordered chain of authenticators; the first success wins."""

    def __init__(self, authenticators: Sequence[Authenticator]) -> None:
        self.authenticators = tuple(authenticators)

    def authenticate(self, metadata: Mapping[str, str], peer_cert_der: bytes | None) -> Identity:
        reasons: list[str] = []
        for authenticator in self.authenticators:
            try:
                identity = authenticator.authenticate(metadata, peer_cert_der)
            except AuthenticationError as exc:
                reasons.append(f"{authenticator.name}: {exc.reason}")
                continue
            if identity is not None:
                return identity
            reasons.append(f"{authenticator.name}: no credential")
        raise CaError(grpc.StatusCode.UNAUTHENTICATED, "; ".join(reasons) or "no authenticator configured")


@dataclass(frozen=True)
class TrustedIssuer:
    """Tokens whose ``iss`` equals ``issuer`` must be signed by one of ``keys``."""

    issuer: str
    keys: tuple[VerificationKey, ...]


def bearer_token(metadata: Mapping[str, str]) -> str | None:
    """The token of ``authorization: Bearer <token>``, ``None`` without the header (Istio's rule)."""
    value = metadata.get("authorization")
    if value is None:
        return None
    if not value.startswith(BEARER_PREFIX):
        raise AuthenticationError("authorization header is not a Bearer token")
    token = value[len(BEARER_PREFIX):].strip()
    if not token:
        raise AuthenticationError("empty bearer token")
    return token


def _number(claims: Mapping[str, object], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise AuthenticationError(f"claim {name} is not a number")
    return float(value)


class JwtAuthenticator:
    """Offline verification of Kubernetes-style service-account JWTs.

    Checks, in order: signature by a key of the token's issuer (unknown issuer = refused), ``aud``
    contains one of ``audiences``, ``exp`` present and not passed, ``nbf``/``iat`` not in the
    future (each with ``leeway``), ``sub`` exactly ``system:serviceaccount:<ns>:<sa>``, and a
    ``kubernetes.io`` claim, when present, naming the same namespace and service account.
    """

    name = "jwt"

    def __init__(self, issuers: Sequence[TrustedIssuer], trust_domain: str,
                 audiences: Sequence[str] = (DEFAULT_AUDIENCE,), leeway: dt.timedelta = DEFAULT_LEEWAY,
                 clock: Callable[[], float] = time.time) -> None:
        if not audiences:
            raise ValueError("at least one audience is required")
        self._issuers = {i.issuer: i.keys for i in issuers}
        self._trust_domain = trust_domain
        self._audiences = frozenset(audiences)
        self._leeway = leeway.total_seconds()
        self._clock = clock

    def authenticate(self, metadata: Mapping[str, str], peer_cert_der: bytes | None) -> Identity | None:
        token = bearer_token(metadata)
        if token is None:
            return None
        try:
            parsed = jws.parse(token)
        except jws.JwsError as exc:
            raise AuthenticationError(str(exc)) from exc
        claims = parsed.claims
        issuer = claims.get("iss")
        keys = self._issuers.get(issuer) if isinstance(issuer, str) else None
        if keys is None:
            raise AuthenticationError(f"untrusted issuer {issuer!r}")
        try:
            jws.verify_signature(parsed, keys)
        except jws.JwsError as exc:
            raise AuthenticationError(str(exc)) from exc
        self._check_audience(claims.get("aud"))
        self._check_times(claims)
        subject = claims.get("sub")
        if not isinstance(subject, str):
            raise AuthenticationError("missing sub")
        try:
            identity = Identity.from_subject(subject, self._trust_domain)
        except ValueError as exc:
            raise AuthenticationError(f"sub {subject!r}: {exc}") from exc
        self._check_kubernetes_claim(claims.get("kubernetes.io"), identity)
        return identity

    def _check_audience(self, aud: object) -> None:
        values = [aud] if isinstance(aud, str) else aud
        if not isinstance(values, list) or not all(isinstance(a, str) for a in values):
            raise AuthenticationError("missing or malformed aud")
        if self._audiences.isdisjoint(values):
            raise AuthenticationError(f"aud {values} does not include {sorted(self._audiences)}")

    def _check_times(self, claims: Mapping[str, object]) -> None:
        now = self._clock()
        exp = _number(claims, "exp")
        if exp is None:
            raise AuthenticationError("missing exp")
        if now >= exp + self._leeway:
            raise AuthenticationError(f"token expired at {exp:.0f} (now {now:.0f})")
        for name in ("nbf", "iat"):
            value = _number(claims, name)
            if value is not None and value > now + self._leeway:
                raise AuthenticationError(f"{name} {value:.0f} is in the future (now {now:.0f})")

    @staticmethod
    def _check_kubernetes_claim(claim: object, identity: Identity) -> None:
        if claim is None:
            return
        if not isinstance(claim, dict):
            raise AuthenticationError("kubernetes.io claim is not an object")
        sa = claim.get("serviceaccount")
        sa_name = sa.get("name") if isinstance(sa, dict) else None
        if claim.get("namespace") != identity.namespace or sa_name != identity.service_account:
            raise AuthenticationError("kubernetes.io claim disagrees with sub")


class ClientCertAuthenticator:
    """A client certificate we issued authenticates its own SPIFFE ID (certificate renewal).

    The TLS stack has verified the chain against our roots; we still check that this exact
    signing certificate issued it, that it is a leaf, valid now, with exactly one URI SAN in our
    trust domain, so a certificate from another CA sharing a root cannot renew into our identities.
    """

    name = "client-cert"

    def __init__(self, signing_cert: x509.Certificate, trust_domain: str,
                 clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC)) -> None:
        self._signing_cert = signing_cert
        self._trust_domain = trust_domain
        self._clock = clock

    def authenticate(self, metadata: Mapping[str, str], peer_cert_der: bytes | None) -> Identity | None:
        if not peer_cert_der:
            return None
        try:
            cert = x509.load_der_x509_certificate(peer_cert_der)
            cert.verify_directly_issued_by(self._signing_cert)
        except (ValueError, TypeError, InvalidSignature) as exc:
            raise AuthenticationError(f"client certificate not issued by this CA: {exc}") from exc
        now = self._clock()
        if not cert.not_valid_before_utc <= now < cert.not_valid_after_utc:
            raise AuthenticationError("client certificate is not valid now")
        try:
            if cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca:
                raise AuthenticationError("client certificate is a CA certificate")
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound as exc:
            raise AuthenticationError(f"client certificate lacks {exc.oid.dotted_string}") from exc
        uris = san.get_values_for_type(x509.UniformResourceIdentifier)
        if len(uris) != 1:
            raise AuthenticationError(f"client certificate has {len(uris)} URI SANs (need exactly one)")
        try:
            identity = Identity.from_spiffe(uris[0])
        except ValueError as exc:
            raise AuthenticationError(f"client certificate SAN {uris[0]!r}: {exc}") from exc
        if identity.trust_domain != self._trust_domain:
            raise AuthenticationError(f"client certificate trust domain {identity.trust_domain!r} is not ours")
        return identity
