"""Where authentication and signing run: a thread pool, or a pool of processes.

Both are CPU work (an ES256/RS256 verification for the token, a CSR signature check, a
certificate signature) and must stay off the event loop.  ``cryptography`` keeps the GIL for most
of the X.509 work, so threads protect the loop's latency but add no throughput; processes add
throughput on multi-core hosts at the price of a pickle round trip per request (``bench/bench_ca.py``
measures both).  The service sees one interface, ``SigningBackend``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import multiprocessing
import os
from collections.abc import Mapping
from typing import Protocol

from istiod_lite.ca.authn import Authenticators
from istiod_lite.ca.authority import CertificateAuthority
from istiod_lite.ca.config import CaConfig, build_authenticators, build_authority, load_material
from istiod_lite.ca.keystore import CaMaterial


class SigningBackend(Protocol):
    material: CaMaterial

    async def create_certificate(self, csr_pem: str, ttl_seconds: int, metadata: Mapping[str, str],
                                 peer_cert_der: bytes | None) -> list[str]:
        """Authenticate the caller, then sign; raise ``CaError``."""
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

    async def close(self) -> None:
        if self._own_executor:
            self._executor.shutdown(wait=False, cancel_futures=True)


# -- process pool ----------------------------------------------------------------------------------
# Worker-process state, set once by the pool initializer; never used in the serving process.
_worker: tuple[CertificateAuthority, Authenticators] | None = None


def _init_worker(config: CaConfig) -> None:
    global _worker
    material = load_material(config)
    _worker = (build_authority(config, material), build_authenticators(config, material))


def _worker_sign(csr_pem: str, ttl_seconds: int, metadata: dict[str, str], peer_cert_der: bytes | None) -> list[str]:
    assert _worker is not None, "signing worker not initialised"
    return authenticate_and_sign(_worker[0], _worker[1], csr_pem, ttl_seconds, metadata, peer_cert_der)


class ProcessBackend:
    """Runs each request in one of ``workers`` processes, each with its own copy of the CA.

    Workers load the key material from ``config.ca_dir`` themselves; ``material`` here is the
    serving process's copy (for metrics and the server certificate).
    """

    def __init__(self, config: CaConfig, material: CaMaterial, workers: int | None = None) -> None:
        self.material = material
        self._executor = concurrent.futures.ProcessPoolExecutor(
            max_workers=workers or os.cpu_count() or 1, initializer=_init_worker, initargs=(config,),
            # spawn, not fork: forking a process that runs gRPC's threads is unsafe.
            mp_context=multiprocessing.get_context("spawn"))

    async def create_certificate(self, csr_pem: str, ttl_seconds: int, metadata: Mapping[str, str],
                                 peer_cert_der: bytes | None) -> list[str]:
        return await asyncio.get_running_loop().run_in_executor(
            self._executor, _worker_sign, csr_pem, ttl_seconds, dict(metadata), peer_cert_der)

    async def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
