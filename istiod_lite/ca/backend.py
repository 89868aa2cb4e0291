"""Where authentication and signing run: one background thread, or worker processes (``workers``).

Both are CPU work (an ES256/RS256 verification for the token, a CSR signature check, a
certificate signature) and must stay off the event loop.  ``cryptography`` keeps the GIL for most
of the X.509 work, so a thread protects the loop's latency but adds no throughput (two threads
were slower than one: GIL hand-offs); worker processes add throughput on multi-core hosts
(``bench/bench_ca.py`` measures both).  The service sees one interface, ``SigningBackend``.

Only *offline* authenticators run here (client certificate, JWT): microseconds of CPU.  A
Kubernetes TokenReview waits on the network, so it never runs here; the service asks
``reviewgate`` and then calls ``sign`` with the identity it got.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Mapping
from typing import Protocol

from istiod_lite.ca.authn import Authenticators
from istiod_lite.ca.authority import CertificateAuthority
from istiod_lite.ca.keystore import CaMaterial


class SigningBackend(Protocol):
    material: CaMaterial

    async def create_certificate(self, csr_pem: str, ttl_seconds: int, metadata: Mapping[str, str],
                                 peer_cert_der: bytes | None) -> list[str]:
        """Authenticate the caller (offline authenticators only), then sign; raise ``CaError``."""
        ...

    async def sign(self, csr_pem: str, ttl_seconds: int, spiffe: str) -> list[str]:
        """Sign for an identity the service established itself (TokenReview); raise ``CaError``."""
        ...

    async def start(self) -> None:
        """Acquire resources (worker processes) before the first request; errors surface here."""
        ...

    async def close(self) -> None: ...


def authenticate_and_sign(authority: CertificateAuthority, authenticators: Authenticators, csr_pem: str,
                          ttl_seconds: int, metadata: Mapping[str, str], peer_cert_der: bytes | None) -> list[str]:
    identity = authenticators.authenticate(metadata, peer_cert_der)
    return authority.sign_csr(csr_pem, identity.spiffe, ttl_seconds)


class ThreadBackend:
    """Runs each request in a thread pool (default: one thread; more only add GIL contention)."""

    def __init__(self, authority: CertificateAuthority, authenticators: Authenticators,
                 executor: concurrent.futures.ThreadPoolExecutor | None = None) -> None:
        self.material = authority.material
        self._authority = authority
        self._authenticators = authenticators
        self._own_executor = executor is None
        self._executor = executor or concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="ca-sign")

    async def create_certificate(self, csr_pem: str, ttl_seconds: int, metadata: Mapping[str, str],
                                 peer_cert_der: bytes | None) -> list[str]:
        return await asyncio.get_running_loop().run_in_executor(
            self._executor, authenticate_and_sign, self._authority, self._authenticators, csr_pem, ttl_seconds,
            metadata, peer_cert_der)

    async def sign(self, csr_pem: str, ttl_seconds: int, spiffe: str) -> list[str]:
        return await asyncio.get_running_loop().run_in_executor(
            self._executor, self._authority.sign_csr, csr_pem, spiffe, ttl_seconds)

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        if self._own_executor:
            self._executor.shutdown(wait=False, cancel_futures=True)
