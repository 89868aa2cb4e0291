"""Kubernetes TokenReview authentication: the cluster's API server says whose token it is.

istiod authenticates a workload's bearer token by sending it to the API server in a TokenReview
(``security/pkg/k8s/tokenreview/k8sauthn.go``) instead of verifying it offline: the API server
knows the service-account signing keys, whether the service account, pod or secret the token is
bound to still exists, and revocations.  We use the real ``kubernetes`` client
(``AuthenticationV1Api.create_token_review``) and apply Istio's rules to the answer:

* ``spec.audiences`` is the CA's audience list (Istio's ``TOKEN_AUDIENCES``, default ``istio-ca``);
* ``status.authenticated`` must be true;
* the user must be in the group ``system:serviceaccounts``;
* ``status.user.username`` must be exactly ``system:serviceaccount:<ns>:<sa>`` (4 parts, namespace
  and name non-empty and valid Kubernetes names);
* and, where Istio stops short, ``status.audiences`` must contain one of the requested audiences.
  Kubernetes defines an authenticated answer with *empty* ``status.audiences`` as "valid for the
  API server's own audience" and tells clients that set ``spec.audiences`` to check for a match;
  so an empty list is refused too, never read as "any audience".

Identity: ``Identity(trust_domain, ns, sa)``; with it the answer's pod extras
(``authentication.kubernetes.io/pod-name`` and ``pod-uid``, set by the API server for a token bound
to a pod), kept in a ``ReviewedCaller`` for node-proxy impersonation (``nodeauth.py``).  Every failure,
including an unreachable, slow or erroring API server, is an ``AuthenticationError`` (fail
closed) whose reason is only logged; the token never appears in a reason or a log line (the
TokenReview objects echo it, so they are never formatted either).

The review itself is synchronous (a blocking HTTP round trip) and runs in the threads of
``reviewgate.ReviewGate``, never in the CA's signing thread or worker processes: a review waits on
the network, and a signer stuck behind it would hold up every other caller (issue 14: 100 random
tokens delayed a legitimate CSR by 9 s).  The gate bounds concurrency, queue length and each
peer's share.  Here:

* the client timeout is short (``timeout``, 3 s) and there is no client-side retry (the workload's
  agent retries the CSR with back-off anyway);
* after a *transport* failure (timeout, connection refused) reviews are refused without a call for
  ``failure_backoff`` seconds, so a black-holed API server costs one timeout per back-off period,
  not one per queued request;
* successful reviews are cached (``cache_ttl``, 60 s, never past the token's own ``exp``; at most
  ``cache_size`` entries, least recently used evicted; keyed by SHA-256 of the token, so the cache
  holds no token), protecting the API server from agents that retry or open several streams.
  The cost: a token revoked in the cluster is still accepted for up to ``cache_ttl``; the API
  server's own webhook token cache (``--authentication-token-webhook-cache-ttl``) defaults to 2 min.
* the API server's *verdict* against a token (not authenticated, wrong audience or user) is cached
  too, briefly (``negative_cache_ttl``, 5 s, same size bound): a caller replaying one bad token
  costs one review per 5 s, while a workload whose token was refused by mistake waits at most
  that long.  HTTP errors and transport failures are not the token's fault and are not cached.

``kubernetes`` is imported only when a TokenReview authenticator is built: it costs ~0.35 s of
start-up that a YAML-directory deployment never needs.
"""

from __future__ import annotations

import collections
import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, NoReturn, TypeVar

from istiod_lite.ca.authn import DEFAULT_AUDIENCE, AuthenticationError, bearer_token
from istiod_lite.ca.identity import Identity
from istiod_lite.ca.jwk import b64url_decode
from istiod_lite.ca.jws import MAX_TOKEN_BYTES
from istiod_lite.safetext import safe

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

log = logging.getLogger(__name__)
V = TypeVar("V")

#: TokenReview extras naming the pod a bound token belongs to (Istio's ``KubernetesInfo``).
POD_NAME_EXTRA = "authentication.kubernetes.io/pod-name"
POD_UID_EXTRA = "authentication.kubernetes.io/pod-uid"
#: Istio requires the reviewed user to be in this group (``kube_jwt.go``).
SERVICE_ACCOUNTS_GROUP = "system:serviceaccounts"
#: A healthy API server answers a TokenReview in milliseconds; 3 s leaves room for a loaded one.
DEFAULT_TIMEOUT = 3.0
DEFAULT_CACHE_TTL = 60.0
DEFAULT_CACHE_SIZE = 4096
DEFAULT_FAILURE_BACKOFF = 2.0
DEFAULT_NEGATIVE_CACHE_TTL = 5.0
#: Reviews running at once (threads of the review gate); a TokenReview is I/O, the GIL is free.
DEFAULT_MAX_CONCURRENT = 4
#: Reviews waiting for a thread; beyond this a caller is refused at once (at 50 ms per review
#: the last one waits ~0.8 s).
DEFAULT_MAX_QUEUE = 64
#: Reviews one peer host may have running or waiting: one attacker cannot fill the queue alone.
DEFAULT_PER_PEER = 8


@dataclass(frozen=True)
class TokenReviewConfig:
    """How to reach the API server for TokenReviews (picklable: worker processes rebuild from it).

    ``kubeconfig`` ``None`` means in-cluster configuration (the pod's service-account token and
    ``KUBERNETES_SERVICE_HOST``); ``context`` picks a kubeconfig context (default: current).
    The audiences are the CA's (``CaConfig.audiences``), shared with the JWT authenticator.
    """

    kubeconfig: Path | None = None
    context: str | None = None
    timeout: float = DEFAULT_TIMEOUT
    cache_ttl: float = DEFAULT_CACHE_TTL
    cache_size: int = DEFAULT_CACHE_SIZE
    failure_backoff: float = DEFAULT_FAILURE_BACKOFF
    negative_cache_ttl: float = DEFAULT_NEGATIVE_CACHE_TTL
    max_concurrent: int = DEFAULT_MAX_CONCURRENT
    max_queue: int = DEFAULT_MAX_QUEUE
    per_peer: int = DEFAULT_PER_PEER

    def __post_init__(self) -> None:
        if not self.timeout > 0:
            raise ValueError("token review timeout must be positive")
        if min(self.cache_ttl, self.cache_size, self.failure_backoff, self.negative_cache_ttl, self.max_queue) < 0:
            raise ValueError("token review cache_ttl, cache_size, failure_backoff, negative_cache_ttl and "
                             "max_queue must not be negative")
        if self.max_concurrent < 1 or self.per_peer < 1:
            raise ValueError("token review max_concurrent and per_peer must be at least 1")


@dataclass(frozen=True, slots=True)
class ReviewedCaller:
    """Who the API server says a token is: the identity, and the pod a bound token names.

    ``pod_name``/``pod_uid`` are empty unless the answer carried exactly one value of each extra
    (a token not bound to a pod, a legacy secret token); only impersonation reads them.
    """

    identity: Identity
    pod_name: str = ""
    pod_uid: str = ""


def _single_extra(extra: object, key: str) -> str:
    """The one value of ``extra[key]``; "" when absent, empty, several or not strings."""
    values = extra.get(key) if isinstance(extra, Mapping) else None
    if isinstance(values, list) and len(values) == 1 and isinstance(values[0], str):
        return values[0]
    return ""


class ReviewCache(Generic[V]):
    """Review outcomes by token hash: a thread-safe LRU whose entries expire (monotonic clock)."""

    def __init__(self, size: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._size = size
        self._clock = clock
        self._entries: collections.OrderedDict[bytes, tuple[V, float]] = collections.OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: bytes) -> V | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            if self._clock() >= entry[1]:
                del self._entries[key]
                return None
            self._entries.move_to_end(key)
            return entry[0]

    def put(self, key: bytes, value: V, ttl: float) -> None:
        if self._size == 0 or ttl <= 0:
            return
        with self._lock:
            self._entries[key] = (value, self._clock() + ttl)
            self._entries.move_to_end(key)
            while len(self._entries) > self._size:
                self._entries.popitem(last=False)

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)


def _token_expiry(token: str) -> float | None:
    """The token's ``exp`` (wall clock), read *after* the API server accepted it, else ``None``.

    The claims are trustworthy at that point only because the API server verified the signature;
    this is used only to keep a cache entry from outliving the token.
    """
    try:
        claims = json.loads(b64url_decode(token.split(".")[1]))
    except (ValueError, IndexError, RecursionError):
        return None
    exp = claims.get("exp") if isinstance(claims, dict) else None
    return float(exp) if isinstance(exp, int | float) and not isinstance(exp, bool) else None


def _key(token: str) -> bytes:
    """Caches are keyed by the token's hash, so they hold no token."""
    return hashlib.sha256(token.encode()).digest()


def _looks_like_jwt(token: str) -> bool:
    """Service-account tokens are JWTs; anything else need not cost the API server a review."""
    parts = token.split(".")
    return len(token) <= MAX_TOKEN_BYTES and len(parts) == 3 and all(
        p and all(c.isascii() and (c.isalnum() or c in "-_") for c in p) for p in parts)


def caller_from_status(status: Any, audiences: Sequence[str], trust_domain: str) -> ReviewedCaller:
    """``identity_from_status`` plus the pod extras of the answer (see ``ReviewedCaller``)."""
    identity = identity_from_status(status, audiences, trust_domain)
    extra = getattr(status.user, "extra", None)
    return ReviewedCaller(identity, _single_extra(extra, POD_NAME_EXTRA), _single_extra(extra, POD_UID_EXTRA))


def identity_from_status(status: Any, audiences: Sequence[str], trust_domain: str) -> Identity:
    """Apply Istio's TokenReview rules (plus the audience check) to a ``V1TokenReviewStatus``.

    Raises ``AuthenticationError``; the reasons carry the API server's words, never the token.
    """
    if status is None:
        raise AuthenticationError("token review returned no status")
    if status.error:
        raise AuthenticationError(f"token review error: {status.error}")
    if status.authenticated is not True:
        raise AuthenticationError("token review: not authenticated")
    returned = list(status.audiences or [])
    if not set(returned) & set(audiences):
        # Empty means "valid for the API server's audience" (Kubernetes API docs), not ours.
        raise AuthenticationError(f"token review audiences {returned} include none of {sorted(audiences)}")
    user = status.user
    if user is None:
        raise AuthenticationError("token review returned no user")
    if SERVICE_ACCOUNTS_GROUP not in (user.groups or []):
        raise AuthenticationError(f"user {user.username!r} is not in group {SERVICE_ACCOUNTS_GROUP}")
    username = user.username
    if not isinstance(username, str):
        raise AuthenticationError("token review returned no username")
    try:
        return Identity.from_subject(username, trust_domain)
    except ValueError as exc:
        raise AuthenticationError(f"username {username!r}: {exc}") from exc


def api_client_from_config(config: TokenReviewConfig) -> ApiClient:
    """A ``kubernetes`` API client for ``config``: kubeconfig file or in-cluster, no retries.

    Reads files only (the kubeconfig, or the pod's token and CA); nothing is sent until the first
    review, so start-up does not depend on the cluster being up.  Raises ``ValueError`` for an
    unusable configuration (missing or invalid kubeconfig, unknown context, not in a cluster).
    """
    from kubernetes import client
    from kubernetes import config as kube_config_module

    kube_config: Any = kube_config_module  # its loaders are untyped
    configuration = client.Configuration()
    try:
        if config.kubeconfig is None:
            kube_config.load_incluster_config(client_configuration=configuration)
        else:
            # persist_config=False: never write refreshed credentials back into the operator's file.
            kube_config.load_kube_config(config_file=str(config.kubeconfig), context=config.context,
                                         client_configuration=configuration, persist_config=False)
    except kube_config.ConfigException as exc:
        where = config.kubeconfig or "in-cluster configuration"
        raise ValueError(f"Kubernetes TokenReview: {where}: {exc}") from exc
    configuration.retries = 0
    return client.ApiClient(configuration)


class TokenReviewAuthenticator:
    """Bearer tokens reviewed by the Kubernetes API server; see the module docstring for the rules.

    Returns ``None`` without an ``authorization`` header (like ``JwtAuthenticator``), so it sits
    after the JWT authenticator in the chain: a token the local issuer signed never costs a round
    trip.  Thread-safe.
    """

    name = "tokenreview"

    def __init__(self, api_client: ApiClient, trust_domain: str, audiences: Sequence[str] = (DEFAULT_AUDIENCE,), *,
                 timeout: float = DEFAULT_TIMEOUT, cache_ttl: float = DEFAULT_CACHE_TTL,
                 cache_size: int = DEFAULT_CACHE_SIZE, failure_backoff: float = DEFAULT_FAILURE_BACKOFF,
                 negative_cache_ttl: float = DEFAULT_NEGATIVE_CACHE_TTL, clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time) -> None:
        from kubernetes.client import AuthenticationV1Api

        if not audiences:
            raise ValueError("at least one audience is required")
        self._api_client = api_client
        self._api = AuthenticationV1Api(api_client)
        self._trust_domain = trust_domain
        self._audiences = list(dict.fromkeys(audiences))
        self._timeout = timeout
        self._cache_ttl = cache_ttl
        self._cache: ReviewCache[ReviewedCaller] = ReviewCache(cache_size, clock)
        self._negative_ttl = negative_cache_ttl
        self._refused: ReviewCache[str] = ReviewCache(cache_size, clock)
        self._failure_backoff = failure_backoff
        self._clock = clock
        self._wall_clock = wall_clock
        self._lock = threading.Lock()
        self._unavailable_until = 0.0

    @classmethod
    def from_config(cls, config: TokenReviewConfig, trust_domain: str,
                    audiences: Sequence[str] = (DEFAULT_AUDIENCE,)) -> TokenReviewAuthenticator:
        return cls(api_client_from_config(config), trust_domain, audiences, timeout=config.timeout,
                   cache_ttl=config.cache_ttl, cache_size=config.cache_size,
                   failure_backoff=config.failure_backoff, negative_cache_ttl=config.negative_cache_ttl)

    def authenticate(self, metadata: Mapping[str, str], peer_cert_der: bytes | None) -> Identity | None:
        """The whole check, blocking (for a caller already off the event loop)."""
        token = self.reviewable_token(metadata)
        if token is None:
            return None
        return (self.cached(token) or self.review(token)).identity

    @staticmethod
    def reviewable_token(metadata: Mapping[str, str]) -> str | None:
        """The bearer token if it may be sent for review; ``None`` without one.  Cheap (no I/O).

        Raises ``AuthenticationError`` for a malformed header or a token that is not JWT-shaped.
        """
        token = bearer_token(metadata)
        if token is not None and not _looks_like_jwt(token):
            raise AuthenticationError("bearer token is not a JWT (not sent for review)")
        return token

    def cached(self, token: str) -> ReviewedCaller | None:
        """A recent verdict on ``token``, without I/O: its caller, ``None`` (unknown), or
        ``AuthenticationError`` when the API server refused it within ``negative_cache_ttl``."""
        key = _key(token)
        caller = self._cache.get(key)
        if caller is not None:
            return caller
        refused = self._refused.get(key)
        if refused is not None:
            raise AuthenticationError(f"token refused by a review less than {self._negative_ttl:g} s ago "
                                      f"({refused})")
        return None

    def review(self, token: str) -> ReviewedCaller:
        """Ask the API server (blocking); remember the verdict."""
        status = self._review(token)
        key = _key(token)
        try:
            caller = caller_from_status(status, self._audiences, self._trust_domain)
        except AuthenticationError as exc:
            self._refused.put(key, exc.reason, self._negative_ttl)
            raise
        ttl = self._cache_ttl
        expiry = _token_expiry(token)
        if expiry is not None:
            ttl = min(ttl, expiry - self._wall_clock())
        self._cache.put(key, caller, ttl)
        return caller

    def _review(self, token: str) -> Any:
        """POST the TokenReview; the answer's status, or ``AuthenticationError`` (fail closed)."""
        import urllib3
        from kubernetes.client import ApiException, V1TokenReview, V1TokenReviewSpec

        with self._lock:
            if self._clock() < self._unavailable_until:
                raise AuthenticationError("token review skipped: API server failed recently")
        body = V1TokenReview(api_version="authentication.k8s.io/v1", kind="TokenReview",
                             spec=V1TokenReviewSpec(token=token, audiences=list(self._audiences)))
        try:
            review = self._api.create_token_review(body, _request_timeout=self._timeout)
        except ApiException as exc:
            # Only status and reason: the body of an answer may echo the request, token included.
            if exc.status:
                raise AuthenticationError(f"token review failed: HTTP {exc.status} {exc.reason}") from None
            self._transport_failed(f"ApiException: {exc.reason}")
        except (OSError, urllib3.exceptions.HTTPError) as exc:  # timeouts, refused or reset connections
            self._transport_failed(f"{type(exc).__name__}: {str(exc)[:300]}")
        except Exception as exc:  # e.g. an undecodable answer; its text may quote the answer, so not shown
            self._transport_failed(type(exc).__name__)
        return getattr(review, "status", None)

    def _transport_failed(self, what: str) -> NoReturn:
        with self._lock:
            self._unavailable_until = self._clock() + self._failure_backoff
        log.warning("Kubernetes TokenReview failed (%s); refusing reviews for %.1f s", safe(what),
                    self._failure_backoff)
        raise AuthenticationError(f"token review failed: {what}") from None

    def close(self) -> None:
        """Close the client's connection pool (tests; the process exits otherwise)."""
        closer: Any = self._api_client.close  # untyped in the client
        closer()
