"""Admission in front of Kubernetes TokenReviews: their own threads, a bounded queue, a per-peer share.

A TokenReview is a network round trip that any caller can trigger with a random JWT-shaped token
(nothing about such a token can be checked offline).  Run on the CA's signing thread, 100 of
them at 50 ms each held a legitimate CSR for 9 s (issue 14).  So reviews never run where
signing runs; they go through this gate, on the event loop:

* a recent verdict (``TokenReviewAuthenticator.cached``: accepted, or refused within a few
  seconds) answers at once and takes no slot;
* otherwise the review takes a slot: at most ``max_concurrent`` run (in this gate's own threads)
  and ``max_queue`` wait; with every slot taken the caller is refused at once
  (``AuthenticationError``, so Istio's fixed ``UNAUTHENTICATED`` answer: an attacker cannot tell
  shedding from a bad token, and a workload's agent retries either with back-off);
* one peer *host* (the gRPC peer address without its port, since a new connection is a new port)
  may hold at most ``per_peer`` slots, so one noisy caller cannot fill the queue for the others.

Signing, local JWTs and certificate renewal never wait here.  What the gate cannot do: when many
hosts flood at once, cluster-token callers share the bounded queue with them and may be shed
(they retry); the bound keeps that a refusal, never an unbounded wait.

Everything here runs on the event loop (no locks); only ``TokenReviewAuthenticator.review`` runs
in the gate's threads.  ``record`` receives each outcome (``metrics.REVIEW_OUTCOMES``).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
from collections.abc import Callable, Mapping

from istiod_lite.ca.authn import AuthenticationError
from istiod_lite.ca.identity import Identity
from istiod_lite.ca.tokenreview import (
    DEFAULT_MAX_CONCURRENT,
    DEFAULT_MAX_QUEUE,
    DEFAULT_PER_PEER,
    ReviewedCaller,
    TokenReviewAuthenticator,
    TokenReviewConfig,
)


def peer_host(peer: str) -> str:
    """``ipv4:10.0.0.1:4321`` -> ``ipv4:10.0.0.1``; ``ipv6:[::1]:4321`` -> ``ipv6:[::1]``; else as is."""
    if peer.startswith(("ipv4:", "ipv6:")):
        host, sep, port = peer.rpartition(":")
        if sep and port.isdigit():
            return host
    return peer


class ReviewGate:
    """Bounded, per-peer-limited TokenReviews off the signing path; see the module docstring."""

    def __init__(self, authenticator: TokenReviewAuthenticator, *, max_concurrent: int = DEFAULT_MAX_CONCURRENT,
                 max_queue: int = DEFAULT_MAX_QUEUE, per_peer: int = DEFAULT_PER_PEER,
                 record: Callable[[str], None] = lambda outcome: None) -> None:
        if max_concurrent < 1 or per_peer < 1 or max_queue < 0:
            raise ValueError("max_concurrent and per_peer must be at least 1, max_queue not negative")
        self.authenticator = authenticator
        self._capacity = max_concurrent + max_queue
        self._per_peer_limit = per_peer
        self._record = record
        self._executor = concurrent.futures.ThreadPoolExecutor(max_concurrent, thread_name_prefix="ca-tokenreview")
        self._admitted = 0
        self._per_peer: collections.Counter[str] = collections.Counter()

    @classmethod
    def from_config(cls, config: TokenReviewConfig, trust_domain: str, audiences: tuple[str, ...],
                    record: Callable[[str], None] = lambda outcome: None) -> ReviewGate:
        authenticator = TokenReviewAuthenticator.from_config(config, trust_domain, audiences)
        return cls(authenticator, max_concurrent=config.max_concurrent, max_queue=config.max_queue,
                   per_peer=config.per_peer, record=record)

    @property
    def admitted(self) -> int:
        """Reviews running or waiting now."""
        return self._admitted

    async def authenticate(self, metadata: Mapping[str, str], peer: str) -> Identity | None:
        """The caller's identity per the API server; ``None`` without a bearer token.

        Raises ``AuthenticationError`` for a refused token and when the gate is full.
        """
        caller = await self.review_caller(metadata, peer)
        return caller.identity if caller is not None else None

    async def review_caller(self, metadata: Mapping[str, str], peer: str) -> ReviewedCaller | None:
        """``authenticate`` with the pod the API server named (node-proxy impersonation needs it)."""
        token = self.authenticator.reviewable_token(metadata)
        if token is None:
            return None
        try:
            caller = self.authenticator.cached(token)
        except AuthenticationError:
            self._record("refused_cached")
            raise
        if caller is not None:
            self._record("cached")
            return caller
        host = peer_host(peer)
        if self._admitted >= self._capacity:
            self._record("shed_queue_full")
            raise AuthenticationError(f"token review refused unsent: {self._admitted} reviews already "
                                      "running or waiting")
        if self._per_peer[host] >= self._per_peer_limit:
            self._record("shed_peer_limit")
            raise AuthenticationError(f"token review refused unsent: {host} already has "
                                      f"{self._per_peer[host]} reviews running or waiting")
        self._admitted += 1
        self._per_peer[host] += 1
        try:
            # A cancelled call (client gone) that is still waiting leaves the executor's queue too.
            caller = await asyncio.get_running_loop().run_in_executor(self._executor, self.authenticator.review, token)
        except AuthenticationError:
            self._record("refused")
            raise
        finally:
            self._admitted -= 1
            self._per_peer[host] -= 1
            if not self._per_peer[host]:
                del self._per_peer[host]
        self._record("accepted")
        return caller

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        self.authenticator.close()
