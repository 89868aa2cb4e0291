"""Kubernetes TokenReview authentication, with the real ``kubernetes`` client against a fake API server.

The fake (tests/support/fakekube.py) answers TokenReviews over plain HTTP on 127.0.0.1 the way a
kube-apiserver does; everything between (kubeconfig loading, request building, the HTTP client,
answer decoding) is the real client.
"""

from __future__ import annotations

import base64
import json
import logging
import pickle
import secrets
import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509

from istiod_lite._generated.istio.v1.auth import ca_pb2, ca_pb2_grpc
from istiod_lite.ca.authn import AuthenticationError, Authenticators
from istiod_lite.ca.config import CaConfig, build_authenticators, load_material
from istiod_lite.ca.identity import Identity
from istiod_lite.ca.keystore import ROOT_CERT
from istiod_lite.ca.runtime import CaRuntime
from istiod_lite.ca.tokenreview import (
    ReviewCache,
    TokenReviewAuthenticator,
    TokenReviewConfig,
    api_client_from_config,
)
from istiod_lite.ca.tokens import create_token
from tests.support.fakekube import TOKEN_REVIEW_PATH, FakeKubeApiServer, FakeTokenUser
from tests.unit.test_ca_fixtures import build_csr

TD = "cluster.local"
SA_GROUPS = ("system:serviceaccounts", "system:serviceaccounts:default", "system:authenticated")


def fake_jwt(sub: str = "system:serviceaccount:default:sleep", *, exp: float | None = None) -> str:
    """A JWT-shaped token: the fake API server does not verify it, the authenticator must not care."""
    def seg(obj: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()
    claims: dict[str, Any] = {"sub": sub, "aud": ["istio-ca"], "jti": secrets.token_hex(8),
                              "exp": exp if exp is not None else time.time() + 3600}
    return f"{seg({'alg': 'RS256'})}.{seg(claims)}.{secrets.token_urlsafe(32)}"


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def kube() -> Iterator[FakeKubeApiServer]:
    with FakeKubeApiServer() as server:
        yield server


@pytest.fixture
def kubeconfig(kube: FakeKubeApiServer, tmp_path: Path) -> Path:
    return kube.write_kubeconfig(tmp_path / "kubeconfig")


@pytest.fixture
def make_auth(kubeconfig: Path) -> Iterator[Any]:
    made: list[TokenReviewAuthenticator] = []

    def make(config: TokenReviewConfig | None = None, **kw: Any) -> TokenReviewAuthenticator:
        auth = TokenReviewAuthenticator(api_client_from_config(config or TokenReviewConfig(kubeconfig=kubeconfig)),
                                        TD, **kw)
        made.append(auth)
        return auth

    yield make
    for auth in made:
        auth.close()


@pytest.fixture
def auth(make_auth: Any) -> TokenReviewAuthenticator:
    return make_auth()  # type: ignore[no-any-return]


def refusal(auth: TokenReviewAuthenticator, token: str) -> str:
    with pytest.raises(AuthenticationError) as info:
        auth.authenticate(bearer(token), None)
    assert token not in info.value.reason
    return info.value.reason


# -- the rules ------------------------------------------------------------------------------------

def test_service_account_token_is_accepted(kube: FakeKubeApiServer, auth: TokenReviewAuthenticator) -> None:
    token = fake_jwt()
    kube.add_token(token, FakeTokenUser.service_account("default", "sleep", pod="sleep-1"))
    assert auth.authenticate(bearer(token), None) == Identity(TD, "default", "sleep")
    [req] = kube.requests
    assert (req.method, req.path) == ("POST", TOKEN_REVIEW_PATH)
    assert req.headers["authorization"] == f"Bearer {kube.client_token}"  # the kubeconfig's credential
    assert req.body == {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                        "spec": {"token": token, "audiences": ["istio-ca"]}}


def test_configured_audiences_are_sent_and_matched(kube: FakeKubeApiServer, make_auth: Any) -> None:
    auth = make_auth(audiences=("first", "second"))
    token = fake_jwt()
    kube.add_token(token, FakeTokenUser.service_account("default", "sleep", audiences=("second",)))
    assert auth.authenticate(bearer(token), None) == Identity(TD, "default", "sleep")
    assert kube.token_reviews()[0]["spec"]["audiences"] == ["first", "second"]


def test_no_authorization_header_is_not_a_credential(kube: FakeKubeApiServer, auth: TokenReviewAuthenticator) -> None:
    assert auth.authenticate({}, None) is None
    assert kube.requests == []


@pytest.mark.parametrize("token", ["opaque-static-token", "a.b", "a..c", "a.b.c.d", "a.b!.c", "a." * 5000 + "b.c"])
def test_non_jwt_is_refused_without_a_review(kube: FakeKubeApiServer, auth: TokenReviewAuthenticator,
                                             token: str) -> None:
    kube.add_token(token, FakeTokenUser.service_account("default", "sleep"))
    assert "not a JWT" in refusal(auth, token)
    assert kube.requests == []


def test_basic_auth_is_refused(auth: TokenReviewAuthenticator) -> None:
    with pytest.raises(AuthenticationError):
        auth.authenticate({"authorization": "Basic dXNlcjpwYXNz"}, None)


def test_unknown_token_is_not_authenticated(auth: TokenReviewAuthenticator) -> None:
    assert "invalid bearer token" in refusal(auth, fake_jwt())


def test_not_authenticated_is_refused(kube: FakeKubeApiServer, auth: TokenReviewAuthenticator) -> None:
    token = fake_jwt()
    kube.add_token(token, FakeTokenUser("system:serviceaccount:default:sleep", SA_GROUPS, authenticated=False))
    refusal(auth, token)


def test_token_for_another_audience_is_refused_by_the_api_server(kube: FakeKubeApiServer,
                                                                auth: TokenReviewAuthenticator) -> None:
    token = fake_jwt()
    kube.add_token(token, FakeTokenUser.service_account("default", "sleep", audiences=("https://kubernetes.default.svc",)))
    assert "audiences" in refusal(auth, token)


@pytest.mark.parametrize("status_audiences", [
    pytest.param(("vault",), id="other-audience"),
    pytest.param((), id="empty-means-api-server-audience"),
])
def test_authenticated_without_our_audience_is_refused(kube: FakeKubeApiServer, auth: TokenReviewAuthenticator,
                                                       status_audiences: tuple[str, ...]) -> None:
    # Istio does not check status.audiences; Kubernetes tells clients that set spec.audiences to.
    token = fake_jwt()
    kube.add_token(token, FakeTokenUser("system:serviceaccount:default:sleep", SA_GROUPS,
                                        status_audiences=status_audiences))
    assert "include none of ['istio-ca']" in refusal(auth, token)


@pytest.mark.parametrize("groups", [
    pytest.param(("system:authenticated",), id="no-sa-group"),
    pytest.param(("system:serviceaccounts:default", "system:authenticated"), id="namespace-group-only"),
    pytest.param((), id="no-groups"),
])
def test_user_outside_the_service_accounts_group_is_refused(kube: FakeKubeApiServer, auth: TokenReviewAuthenticator,
                                                            groups: tuple[str, ...]) -> None:
    token = fake_jwt()
    kube.add_token(token, FakeTokenUser("system:serviceaccount:default:sleep", groups))
    assert "system:serviceaccounts" in refusal(auth, token)


@pytest.mark.parametrize("username", [
    pytest.param("system:serviceaccount:default", id="3-parts"),
    pytest.param("system:serviceaccount:default:sleep:extra", id="5-parts"),
    pytest.param("system:serviceaccount:default:", id="empty-sa"),
    pytest.param("system:serviceaccount::sleep", id="empty-namespace"),
    pytest.param("alice", id="not-a-service-account"),
    pytest.param("system:node:worker-1", id="node-user"),
    pytest.param("system:serviceaccounts:default:sleep", id="group-prefix-as-user"),
    pytest.param("system:serviceaccount:Default:sleep", id="invalid-namespace-name"),
    pytest.param("", id="empty"),
])
def test_malformed_username_is_refused(kube: FakeKubeApiServer, auth: TokenReviewAuthenticator,
                                       username: str) -> None:
    token = fake_jwt()
    kube.add_token(token, FakeTokenUser(username, SA_GROUPS))
    refusal(auth, token)


# -- the API server failing -----------------------------------------------------------------------

def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_unreachable_api_server_fails_closed(kube: FakeKubeApiServer, tmp_path: Path, make_auth: Any) -> None:
    config = json.loads(kube.write_kubeconfig(tmp_path / "kc").read_text())
    config["clusters"][0]["cluster"]["server"] = f"http://127.0.0.1:{_closed_port()}"
    (tmp_path / "kc").write_text(json.dumps(config))
    auth = make_auth(TokenReviewConfig(kubeconfig=tmp_path / "kc"))
    started = time.monotonic()
    assert "token review failed" in refusal(auth, fake_jwt())
    assert time.monotonic() - started < 2


@pytest.mark.parametrize("status", [500, 503, 403, 429])
def test_api_error_fails_closed(kube: FakeKubeApiServer, auth: TokenReviewAuthenticator, status: int) -> None:
    token = fake_jwt()
    kube.add_token(token, FakeTokenUser.service_account("default", "sleep"))
    kube.fail_status = status
    assert f"HTTP {status}" in refusal(auth, token)
    # An HTTP answer is not a transport failure: the next request is reviewed again, and passes.
    kube.fail_status = None
    assert auth.authenticate(bearer(token), None) == Identity(TD, "default", "sleep")


@pytest.mark.parametrize("answer", [
    pytest.param("not an object", id="string"),
    pytest.param({"status": {"authenticated": "yes", "audiences": ["istio-ca"],
                             "user": {"username": "system:serviceaccount:default:sleep",
                                      "groups": ["system:serviceaccounts"]}}}, id="authenticated-not-a-bool"),
    pytest.param({"kind": "TokenReview"}, id="no-status"),
])
def test_garbage_answer_fails_closed(kube: FakeKubeApiServer, auth: TokenReviewAuthenticator, answer: Any) -> None:
    kube.add_route("POST", TOKEN_REVIEW_PATH, lambda request: (201, answer))
    refusal(auth, fake_jwt())


def test_wrong_client_credential_fails_closed(kube: FakeKubeApiServer, tmp_path: Path, make_auth: Any) -> None:
    auth = make_auth(TokenReviewConfig(kubeconfig=kube.write_kubeconfig(tmp_path / "kc", token="stale")))
    token = fake_jwt()
    kube.add_token(token, FakeTokenUser.service_account("default", "sleep"))
    assert "HTTP 401" in refusal(auth, token)


def test_slow_api_server_times_out_then_backs_off(kube: FakeKubeApiServer, make_auth: Any, kubeconfig: Path) -> None:
    clock = FakeClock()
    auth = make_auth(timeout=0.3, failure_backoff=5.0, clock=clock)
    token = fake_jwt()
    kube.add_token(token, FakeTokenUser.service_account("default", "sleep"))
    kube.delay = 1.5
    started = time.monotonic()
    assert "Timeout" in refusal(auth, token)
    assert time.monotonic() - started < 1.2
    # Within the back-off no request is sent: queued requests fail fast instead of each waiting.
    kube.delay = 0
    assert "skipped" in refusal(auth, token)
    assert len(kube.token_reviews()) == 1
    clock.now += 5.0
    assert auth.authenticate(bearer(token), None) == Identity(TD, "default", "sleep")
    assert len(kube.token_reviews()) == 2


def test_reasons_and_logs_never_contain_the_token(kube: FakeKubeApiServer, make_auth: Any,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    auth = make_auth(timeout=0.2, failure_backoff=0, negative_cache_ttl=0)
    caplog.set_level(logging.DEBUG)
    token = fake_jwt()
    kube.add_token(token, FakeTokenUser("system:serviceaccount:default:sleep", SA_GROUPS, status_audiences=("x",)))
    refusal(auth, token)
    kube.fail_status = 500
    refusal(auth, token)
    kube.fail_status, kube.delay = None, 0.6
    refusal(auth, token)
    assert token not in caplog.text
    assert token.split(".")[2] not in caplog.text


# -- caching --------------------------------------------------------------------------------------

def test_success_is_cached(kube: FakeKubeApiServer, make_auth: Any) -> None:
    clock = FakeClock()
    auth = make_auth(cache_ttl=60, clock=clock)
    token, other = fake_jwt(), fake_jwt("system:serviceaccount:default:other")
    kube.add_token(token, FakeTokenUser.service_account("default", "sleep"))
    kube.add_token(other, FakeTokenUser.service_account("default", "other"))
    for _ in range(3):
        assert auth.authenticate(bearer(token), None) == Identity(TD, "default", "sleep")
    assert len(kube.token_reviews()) == 1
    assert auth.authenticate(bearer(other), None) == Identity(TD, "default", "other")
    assert len(kube.token_reviews()) == 2
    clock.now += 59
    auth.authenticate(bearer(token), None)
    assert len(kube.token_reviews()) == 2
    clock.now += 1  # the entry has expired: a token revoked in the cluster is refused from now on
    del kube.tokens[token]
    refusal(auth, token)
    assert len(kube.token_reviews()) == 3


def test_refusals_are_cached_briefly(kube: FakeKubeApiServer, make_auth: Any) -> None:
    # A replayed bad token costs one review per negative_cache_ttl; a workload refused by mistake
    # (token not yet known to the API server) waits at most that long.
    clock = FakeClock()
    auth = make_auth(negative_cache_ttl=5, clock=clock)
    token = fake_jwt()
    refusal(auth, token)
    kube.add_token(token, FakeTokenUser.service_account("default", "sleep"))
    clock.now += 4.9
    assert "refused by a review" in refusal(auth, token)
    assert len(kube.token_reviews()) == 1
    clock.now += 0.1
    assert auth.authenticate(bearer(token), None) == Identity(TD, "default", "sleep")
    assert len(kube.token_reviews()) == 2


def test_http_errors_are_not_cached_as_refusals(kube: FakeKubeApiServer, auth: TokenReviewAuthenticator) -> None:
    token = fake_jwt()
    kube.add_token(token, FakeTokenUser.service_account("default", "sleep"))
    kube.fail_status = 503
    refusal(auth, token)
    kube.fail_status = None
    assert auth.authenticate(bearer(token), None) == Identity(TD, "default", "sleep")


def test_cache_entry_never_outlives_the_token(kube: FakeKubeApiServer, make_auth: Any) -> None:
    clock = FakeClock()
    auth = make_auth(cache_ttl=60, clock=clock)
    token = fake_jwt(exp=time.time() + 10)
    kube.add_token(token, FakeTokenUser.service_account("default", "sleep"))
    auth.authenticate(bearer(token), None)
    clock.now += 5
    auth.authenticate(bearer(token), None)
    assert len(kube.token_reviews()) == 1
    clock.now += 10  # past the token's exp (well before the 60 s TTL): reviewed again
    auth.authenticate(bearer(token), None)
    assert len(kube.token_reviews()) == 2


def test_cache_disabled(kube: FakeKubeApiServer, make_auth: Any) -> None:
    auth = make_auth(cache_ttl=0)
    token = fake_jwt()
    kube.add_token(token, FakeTokenUser.service_account("default", "sleep"))
    auth.authenticate(bearer(token), None)
    auth.authenticate(bearer(token), None)
    assert len(kube.token_reviews()) == 2


def test_review_cache_is_bounded_lru() -> None:
    clock = FakeClock()
    cache = ReviewCache(2, clock)
    a, b, c = (Identity(TD, "default", n) for n in "abc")
    cache.put(b"a", a, 60)
    cache.put(b"b", b, 60)
    assert cache.get(b"a") == a  # a is now the most recently used
    cache.put(b"c", c, 60)
    assert (cache.get(b"a"), cache.get(b"b"), cache.get(b"c")) == (a, None, c)
    assert len(cache) == 2
    clock.now += 60
    assert cache.get(b"a") is None
    assert len(ReviewCache(0, clock)) == 0


# -- configuration and wiring ---------------------------------------------------------------------

def test_config_is_picklable_and_validated(tmp_path: Path) -> None:
    config = CaConfig(ca_dir=tmp_path, token_review=TokenReviewConfig(kubeconfig=tmp_path / "kc", context="c"))
    assert pickle.loads(pickle.dumps(config)) == config
    assert CaConfig(ca_dir=tmp_path).token_review is None  # off unless configured
    for bad in ({"timeout": 0}, {"cache_ttl": -1}, {"cache_size": -1}, {"failure_backoff": -1},
                {"negative_cache_ttl": -1}, {"max_queue": -1}, {"max_concurrent": 0}, {"per_peer": 0}):
        with pytest.raises(ValueError):
            TokenReviewConfig(**bad)


def test_unusable_kubeconfig_is_a_start_up_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="kubeconfig"):
        CaRuntime.create(CaConfig(ca_dir=tmp_path / "ca", token_review=TokenReviewConfig(kubeconfig=tmp_path / "nope")))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(ValueError, match="in-cluster"):
        api_client_from_config(TokenReviewConfig())


def test_unknown_context_is_a_start_up_error(kubeconfig: Path) -> None:
    with pytest.raises(ValueError):
        api_client_from_config(TokenReviewConfig(kubeconfig=kubeconfig, context="elsewhere"))


def test_chain_order_puts_token_review_after_jwt(tmp_path: Path, kubeconfig: Path) -> None:
    plain = CaConfig(ca_dir=tmp_path / "ca")
    material = load_material(plain)
    assert [a.name for a in build_authenticators(plain, material).authenticators] == ["client-cert", "jwt"]
    with_review = CaConfig(ca_dir=tmp_path / "ca", token_review=TokenReviewConfig(kubeconfig=kubeconfig))
    chain = build_authenticators(with_review, material)
    assert [a.name for a in chain.authenticators] == ["client-cert", "jwt", "tokenreview"]
    _close(chain)


def _close(chain: Authenticators) -> None:
    for a in chain.authenticators:
        if isinstance(a, TokenReviewAuthenticator):
            a.close()


# -- end to end: CreateCertificate over TLS -------------------------------------------------------

@pytest.fixture(params=[0, 1], ids=["thread", "worker-process"])
async def ca(request: pytest.FixtureRequest, tmp_path: Path, kubeconfig: Path) -> AsyncIterator[tuple[CaRuntime, int]]:
    config = CaConfig(ca_dir=tmp_path / "ca", token_review=TokenReviewConfig(kubeconfig=kubeconfig))
    runtime = CaRuntime.create(config, processes=request.param)
    await runtime.start()
    server = grpc.aio.server()
    runtime.add_to_server(server)
    port = server.add_secure_port("127.0.0.1:0", runtime.server_credentials(["127.0.0.1"]))
    await server.start()
    yield runtime, port
    await server.stop(None)
    await runtime.close()


async def _create(runtime: CaRuntime, port: int, token: str, uri: str) -> list[str]:
    creds = grpc.ssl_channel_credentials((runtime.config.ca_dir / ROOT_CERT).read_bytes())
    async with grpc.aio.secure_channel(f"127.0.0.1:{port}", creds) as channel:
        req = ca_pb2.IstioCertificateRequest(csr=build_csr(uris=(uri,)), validity_duration=3600)
        resp = await ca_pb2_grpc.IstioCertificateServiceStub(channel).CreateCertificate(req, metadata=[
            ("authorization", f"Bearer {token}")])
    return list(resp.cert_chain)


async def test_create_certificate_with_a_cluster_token(kube: FakeKubeApiServer, ca: tuple[CaRuntime, int]) -> None:
    runtime, port = ca
    token = fake_jwt("system:serviceaccount:apps:reviewer")
    kube.add_token(token, FakeTokenUser.service_account("apps", "reviewer"))
    spiffe = "spiffe://cluster.local/ns/apps/sa/reviewer"
    chain = await _create(runtime, port, token, spiffe)
    leaf = x509.load_pem_x509_certificate(chain[0].encode())
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [spiffe]
    assert kube.token_reviews()[0]["spec"]["audiences"] == ["istio-ca"]

    # A token the local issuer signed is verified offline: no round trip to the API server.
    local = create_token(runtime.config.ca_dir, "default", "foo")
    await _create(runtime, port, local, "spiffe://cluster.local/ns/default/sa/foo")
    assert len(kube.token_reviews()) == 1

    # A token the cluster does not know: Istio's fixed answer, nothing more.
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await _create(runtime, port, fake_jwt("system:serviceaccount:apps:reviewer"), spiffe)
    assert (info.value.code(), info.value.details()) == (grpc.StatusCode.UNAUTHENTICATED,
                                                         "request authenticate failure")
