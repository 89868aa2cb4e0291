"""Authentication: JWT rules (one row per rejection), client certificates, the chain's first-wins rule."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from istiod_lite.ca.authn import (
    AuthenticationError,
    Authenticators,
    ClientCertAuthenticator,
    JwtAuthenticator,
    TrustedIssuer,
)
from istiod_lite.ca.authority import CertificateAuthority
from istiod_lite.ca.config import CaConfig, JwksSource, build_authenticators, trusted_issuers
from istiod_lite.ca.errors import UNAUTHENTICATED_MESSAGE, CaError
from istiod_lite.ca.identity import Identity
from istiod_lite.ca.jwk import VerificationKey, jwks_document, parse_verification_keys, public_jwk
from istiod_lite.ca.keystore import load_or_create
from istiod_lite.ca.tokens import create_token
from tests.unit.test_ca_fixtures import TD, build_csr, make_intermediate_bundle, p256, sa_claims, sign_jwt

NOW = 1_800_000_000.0
ES_KEY = p256()
RS_KEY = rsa.generate_private_key(65537, 2048)
ES384_KEY = ec.generate_private_key(ec.SECP384R1())
OTHER_KEY = p256()
KEYS = (
    VerificationKey(ES_KEY.public_key(), kid="es"),
    VerificationKey(RS_KEY.public_key(), kid="rs"),
    VerificationKey(ES384_KEY.public_key(), kid="es384"),
)
ISS = "istiod-lite"


def authenticator(**kw: Any) -> JwtAuthenticator:
    return JwtAuthenticator([TrustedIssuer(ISS, KEYS)], TD, clock=lambda: NOW, **kw)


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def es(claims: dict[str, Any], **kw: Any) -> str:
    return sign_jwt(claims, ES_KEY, "ES256", kid=kw.pop("kid", "es"), **kw)


# -- accepted --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("alg", "key", "kid"), [
    ("ES256", ES_KEY, "es"), ("ES384", ES384_KEY, "es384"), ("RS256", RS_KEY, "rs"), ("RS384", RS_KEY, "rs"),
    ("RS512", RS_KEY, "rs"), ("PS256", RS_KEY, "rs"), ("PS384", RS_KEY, "rs"), ("PS512", RS_KEY, "rs"),
    ("ES256", ES_KEY, None),
])
def test_valid_token(alg: str, key: Any, kid: str | None) -> None:
    token = sign_jwt(sa_claims(NOW), key, alg, kid=kid)
    assert authenticator().authenticate(bearer(token), None) == Identity(TD, "default", "foo")


def test_identity_spiffe() -> None:
    ident = authenticator().authenticate(bearer(es(sa_claims(NOW, ns="bookinfo", sa="reviews"))), None)
    assert ident is not None and ident.spiffe == "spiffe://cluster.local/ns/bookinfo/sa/reviews"


def test_no_authorization_header_is_not_an_error() -> None:
    assert authenticator().authenticate({}, None) is None


@pytest.mark.parametrize("aud", [["other", "istio-ca"], "istio-ca"], ids=["list", "string"])
def test_audience_forms(aud: Any) -> None:
    assert authenticator().authenticate(bearer(es(sa_claims(NOW, aud=aud))), None) is not None


def test_custom_audience() -> None:
    token = es(sa_claims(NOW, aud=["my-ca"]))
    assert authenticator(audiences=["my-ca"]).authenticate(bearer(token), None) is not None
    with pytest.raises(AuthenticationError):
        authenticator().authenticate(bearer(token), None)


@pytest.mark.parametrize(("field", "offset", "ok"), [
    ("exp", 29, True), ("exp", 30, False),            # exp is 30 s in the past: leeway used up
    ("nbf", 30, True), ("nbf", 31, False),            # nbf in the future
    ("iat", 30, True), ("iat", 31, False),
])
def test_time_leeway_edges(field: str, offset: int, ok: bool) -> None:
    claims = sa_claims(NOW)
    claims[field] = int(NOW) - offset if field == "exp" else int(NOW) + offset
    auth = authenticator()
    if ok:
        assert auth.authenticate(bearer(es(claims)), None) is not None
    else:
        with pytest.raises(AuthenticationError):
            auth.authenticate(bearer(es(claims)), None)


# -- refused: one row per rule ----------------------------------------------------------------------------
def _none_token() -> str:
    return sign_jwt(sa_claims(NOW), None, "none")


def _hs256_with_public_key_as_secret() -> str:
    # The classic confusion attack: HMAC keyed with the verifier's *public* key bytes.
    secret = ES_KEY.public_key().public_bytes(serialization.Encoding.PEM,
                                              serialization.PublicFormat.SubjectPublicKeyInfo)
    return sign_jwt(sa_claims(NOW), secret, "HS256", kid="es")


def _nested(depth: int) -> str:
    import base64

    return base64.urlsafe_b64encode(b"[" * depth + b"]" * depth).rstrip(b"=").decode()


def _sub(value: str) -> dict[str, str]:
    return bearer(es(sa_claims(NOW, sub=value)))


def _tampered() -> str:
    header, _, sig = es(sa_claims(NOW)).split(".")
    other = es(sa_claims(NOW, sa="admin")).split(".")[1]
    return f"{header}.{other}.{sig}"


REFUSED: list[tuple[str, Callable[[], dict[str, str]], str]] = [
    ("expired", lambda: bearer(es(sa_claims(NOW - 7200))), "expired"),
    ("missing exp", lambda: bearer(es(sa_claims(NOW, exp=None))), "missing exp"),
    ("exp not a number", lambda: bearer(es(sa_claims(NOW, exp="tomorrow"))), "not a number"),
    ("exp is a boolean", lambda: bearer(es(sa_claims(NOW, exp=True))), "not a number"),
    ("wrong audience", lambda: bearer(es(sa_claims(NOW, aud=["kubernetes"]))), "does not include"),
    ("missing audience", lambda: bearer(es(sa_claims(NOW, aud=None))), "malformed aud"),
    ("empty audience list", lambda: bearer(es(sa_claims(NOW, aud=[]))), "does not include"),
    ("wrong issuer", lambda: bearer(es(sa_claims(NOW, iss="https://kubernetes.default.svc.cluster.local"))),
     "untrusted issuer"),
    ("missing issuer", lambda: bearer(es(sa_claims(NOW, iss=None))), "untrusted issuer"),
    ("alg none", lambda: bearer(_none_token()), "'none' not allowed"),
    ("HS256", lambda: bearer(_hs256_with_public_key_as_secret()), "'HS256' not allowed"),
    ("unknown signing key", lambda: bearer(sign_jwt(sa_claims(NOW), OTHER_KEY, "ES256", kid="es")), "does not verify"),
    ("unknown kid", lambda: bearer(sign_jwt(sa_claims(NOW), ES_KEY, "ES256", kid="nope")), "no trusted key"),
    ("ES256 header on RSA key", lambda: bearer(sign_jwt(sa_claims(NOW), RS_KEY, "RS256", kid="rs",
                                                        header={"alg": "ES256"})), "no trusted key"),
    ("ES384 signature claiming ES256", lambda: bearer(sign_jwt(sa_claims(NOW), ES384_KEY, "ES384", kid="es384",
                                                               header={"alg": "ES256"})), "no trusted key"),
    ("tampered payload", lambda: bearer(_tampered()), "does not verify"),
    ("crit header", lambda: bearer(es(sa_claims(NOW), header={"crit": ["exp"]})), "critical"),
    ("not Bearer", lambda: {"authorization": f"Basic {es(sa_claims(NOW))}"}, "not a Bearer"),
    ("lower-case bearer", lambda: {"authorization": f"bearer {es(sa_claims(NOW))}"}, "not a Bearer"),
    ("empty token", lambda: {"authorization": "Bearer "}, "empty bearer"),
    ("two segments", lambda: bearer("abc.def"), "compact JWS"),
    ("garbage", lambda: bearer("not-a-jwt"), "compact JWS"),
    ("non-JSON header", lambda: bearer("bm90anNvbg.e30.c2ln"), "header is not"),
    ("array payload", lambda: bearer("eyJhbGciOiJFUzI1NiJ9.W10.AA"), "payload is not"),
    ("huge token", lambda: bearer("a" * 9000), "exceeds"),
    ("deeply nested payload", lambda: bearer("eyJhbGciOiJFUzI1NiJ9." + _nested(2500) + ".AA"), "payload is not"),
    ("sub not a service account", lambda: _sub("system:node:foo"), "subject is not"),
    ("sub with 5 parts", lambda: _sub("system:serviceaccount:default:foo:x"), "subject is not"),
    ("sub with empty sa", lambda: _sub("system:serviceaccount:default:"), "subject is not"),
    ("sub with empty ns", lambda: _sub("system:serviceaccount::foo"), "subject is not"),
    ("sub with bad name", lambda: _sub("system:serviceaccount:default:Foo/../x"), "invalid service account"),
    ("missing sub", lambda: bearer(es(sa_claims(NOW, sub=None))), "missing sub"),
    ("kubernetes.io disagrees", lambda: bearer(es(sa_claims(NOW, **{"kubernetes.io": {
        "namespace": "kube-system", "serviceaccount": {"name": "foo"}}}))), "disagrees"),
]


@pytest.mark.parametrize(("make", "reason"), [pytest.param(m, r, id=n) for n, m, r in REFUSED])
def test_refused_token(make: Callable[[], dict[str, str]], reason: str) -> None:
    with pytest.raises(AuthenticationError) as info:
        authenticator().authenticate(make(), None)
    assert reason in info.value.reason


def test_refused_token_through_chain_is_opaque() -> None:
    chain = Authenticators([authenticator()])
    with pytest.raises(CaError) as info:
        chain.authenticate(bearer(es(sa_claims(NOW - 7200))), None)
    assert info.value.code == grpc.StatusCode.UNAUTHENTICATED
    assert info.value.public_message == UNAUTHENTICATED_MESSAGE == "request authenticate failure"
    assert "expired" in info.value.reason


def test_no_credentials_at_all() -> None:
    with pytest.raises(CaError) as info:
        Authenticators([authenticator()]).authenticate({}, None)
    assert info.value.code == grpc.StatusCode.UNAUTHENTICATED


def test_audiences_required() -> None:
    with pytest.raises(ValueError):
        JwtAuthenticator([TrustedIssuer(ISS, KEYS)], TD, audiences=[])


# -- key sources --------------------------------------------------------------------------------------------
def test_jwks_and_pem_sources(tmp_path: Path) -> None:
    rs_pem = RS_KEY.public_key().public_bytes(serialization.Encoding.PEM,
                                              serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    (tmp_path / "k8s.jwks").write_text(jwks_document([ES384_KEY.public_key()]))
    (tmp_path / "other.pem").write_text(rs_pem)
    config = CaConfig(ca_dir=tmp_path / "ca", jwks=(
        JwksSource(tmp_path / "k8s.jwks"), JwksSource(tmp_path / "other.pem", issuer="https://issuer.example")))
    issuers = {t.issuer: t for t in trusted_issuers(config)}
    assert set(issuers) == {"istiod-lite", "https://kubernetes.default.svc.cluster.local", "https://issuer.example"}
    auth = JwtAuthenticator(list(issuers.values()), TD, clock=lambda: NOW)
    k8s = sign_jwt(sa_claims(NOW, iss="https://kubernetes.default.svc.cluster.local"), ES384_KEY, "ES384",
                   kid=public_jwk(ES384_KEY.public_key())["kid"])
    assert auth.authenticate(bearer(k8s), None) is not None
    pem_signed = sign_jwt(sa_claims(NOW, iss="https://issuer.example"), RS_KEY, "PS256")
    assert auth.authenticate(bearer(pem_signed), None) is not None
    # Keys are per issuer: the Kubernetes key does not vouch for the other issuer.
    crossed = sign_jwt(sa_claims(NOW, iss="https://issuer.example"), ES384_KEY, "ES384")
    with pytest.raises(AuthenticationError):
        auth.authenticate(bearer(crossed), None)


@pytest.mark.parametrize("text", [
    json.dumps({"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}),
    json.dumps({"keys": []}),
    json.dumps({"keys": [{"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"}]}),  # not on the curve
    json.dumps({"keys": [public_jwk(rsa.generate_private_key(65537, 1024).public_key())]}),
    "no keys here",
], ids=["symmetric", "empty", "off-curve", "rsa-1024", "garbage"])
def test_unusable_key_files_are_errors(text: str) -> None:
    with pytest.raises((ValueError, KeyError)):
        parse_verification_keys(text)


def test_local_token_end_to_end(tmp_path: Path) -> None:
    config = CaConfig(ca_dir=tmp_path / "ca")
    material = load_or_create(config.ca_dir)
    token = create_token(config.ca_dir, "bookinfo", "reviews", dt.timedelta(minutes=10))
    ident = build_authenticators(config, material).authenticate(bearer(token), None)
    assert ident.spiffe == "spiffe://cluster.local/ns/bookinfo/sa/reviews"


def test_local_issuer_can_be_disabled(tmp_path: Path) -> None:
    config = CaConfig(ca_dir=tmp_path / "ca", local_issuer=None)
    material = load_or_create(config.ca_dir)
    token = create_token(config.ca_dir, "bookinfo", "reviews")
    with pytest.raises(CaError):
        build_authenticators(config, material).authenticate(bearer(token), None)


# -- client certificates ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cert_ca(tmp_path_factory: pytest.TempPathFactory) -> CertificateAuthority:
    return CertificateAuthority(load_or_create(tmp_path_factory.mktemp("ca")))


def _der(pem_text: str) -> bytes:
    from cryptography import x509

    return x509.load_pem_x509_certificate(pem_text.encode()).public_bytes(serialization.Encoding.DER)


def test_client_cert_authenticates_its_san(cert_ca: CertificateAuthority) -> None:
    leaf = cert_ca.sign_csr(build_csr(), "spiffe://cluster.local/ns/default/sa/foo", 3600)[0]
    auth = ClientCertAuthenticator(cert_ca.material.signing_cert, TD)
    assert auth.authenticate({}, _der(leaf)) == Identity(TD, "default", "foo")
    assert auth.authenticate({}, None) is None


def test_client_cert_from_other_ca(cert_ca: CertificateAuthority, tmp_path: Path) -> None:
    make_intermediate_bundle(tmp_path / "other")
    other = CertificateAuthority(load_or_create(tmp_path / "other"))
    leaf = other.sign_csr(build_csr(), "spiffe://cluster.local/ns/default/sa/foo", 3600)[0]
    with pytest.raises(AuthenticationError, match="not issued by this CA"):
        ClientCertAuthenticator(cert_ca.material.signing_cert, TD).authenticate({}, _der(leaf))


def test_client_cert_expired(cert_ca: CertificateAuthority) -> None:
    leaf = cert_ca.sign_csr(build_csr(), "spiffe://cluster.local/ns/default/sa/foo", 60)[0]
    later = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5)
    with pytest.raises(AuthenticationError, match="not valid now"):
        ClientCertAuthenticator(cert_ca.material.signing_cert, TD, clock=lambda: later).authenticate({}, _der(leaf))


def test_client_cert_other_trust_domain(cert_ca: CertificateAuthority) -> None:
    leaf = cert_ca.sign_csr(build_csr(uris=()), "spiffe://other.td/ns/default/sa/foo", 3600)[0]
    with pytest.raises(AuthenticationError, match="trust domain"):
        ClientCertAuthenticator(cert_ca.material.signing_cert, TD).authenticate({}, _der(leaf))


def test_client_cert_without_uri_san(cert_ca: CertificateAuthority) -> None:
    from cryptography import x509

    dns_only = cert_ca.issue(p256().public_key(), x509.DNSName("istiod.istio-system.svc"), dt.timedelta(hours=1))
    with pytest.raises(AuthenticationError, match="URI SANs"):
        ClientCertAuthenticator(cert_ca.material.signing_cert, TD).authenticate({}, _der(dns_only))


def test_garbage_client_cert(cert_ca: CertificateAuthority) -> None:
    with pytest.raises(AuthenticationError):
        ClientCertAuthenticator(cert_ca.material.signing_cert, TD).authenticate({}, b"\x30\x03\x02\x01\x00")


def test_chain_first_success_wins(cert_ca: CertificateAuthority) -> None:
    leaf = cert_ca.sign_csr(build_csr(), "spiffe://cluster.local/ns/default/sa/foo", 3600)[0]
    chain = Authenticators([ClientCertAuthenticator(cert_ca.material.signing_cert, TD), authenticator()])
    # The certificate wins even next to a token for someone else.
    other_token = es(sa_claims(NOW, sa="bar"))
    assert chain.authenticate(bearer(other_token), _der(leaf)).service_account == "foo"
    # Without a certificate the token decides.
    assert chain.authenticate(bearer(other_token), None).service_account == "bar"
    # A bad certificate does not block a good token (Istio tries the next authenticator).
    assert chain.authenticate(bearer(other_token), b"junk").service_account == "bar"
