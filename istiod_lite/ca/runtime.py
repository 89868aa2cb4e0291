"""The CA as one object with a start/stop lifecycle, for the control plane to wire in.

::

    ca = CaRuntime.create(CaConfig(ca_dir=Path("/var/lib/istiod-lite/ca"), jwks=(JwksSource(path),)),
                          processes=os.cpu_count() or 1)
    await ca.start()
    server = grpc.aio.server()
    ca.add_to_server(server)                      # next to the xDS servicer on the same server
    server.add_secure_port(":15012", ca.server_credentials(["istiod.example"]))
    ...
    await ca.close()
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import grpc
from prometheus_client import CollectorRegistry

from istiod_lite.ca.authority import CertificateAuthority
from istiod_lite.ca.backend import SigningBackend, ThreadBackend
from istiod_lite.ca.config import (
    CaConfig,
    build_authenticators,
    build_authority,
    build_review_gate,
    load_material,
)
from istiod_lite.ca.keystore import CaMaterial
from istiod_lite.ca.metrics import CaMetrics
from istiod_lite.ca.nodeauth import NodeAuthorizer
from istiod_lite.ca.reviewgate import ReviewGate
from istiod_lite.ca.servercert import server_credentials
from istiod_lite.ca.service import CaService
from istiod_lite.ca.workers import WorkerPoolBackend
from istiod_lite.model import ConfigSnapshot

log = logging.getLogger(__name__)


@dataclass
class CaRuntime:
    config: CaConfig
    material: CaMaterial
    authority: CertificateAuthority
    backend: SigningBackend
    service: CaService
    #: TokenReviews, bounded and off the signing path; ``None`` without ``config.token_review``.
    #: The secure xDS port shares it (one API-server budget per process).
    review_gate: ReviewGate | None = None

    @classmethod
    def create(cls, config: CaConfig, *, registry: CollectorRegistry | None = None,
               processes: int = 0, snapshot: Callable[[], ConfigSnapshot] | None = None) -> CaRuntime:
        """Load or create the key material and build the service (call ``start`` next).

        ``processes`` > 0 signs in that many worker processes (more throughput on multi-core
        hosts: about 1.6x on 2 cores, see docs/ca.md); 0 signs in one background thread.  Raises
        ``CaMaterialError`` for an unusable CA directory and ``ValueError``/``OSError`` for an
        unreadable ``--jwks`` file.  ``snapshot`` returns the control plane's current config: the
        pods node-proxy impersonation is checked against (required with
        ``config.trusted_node_accounts``, else ``ValueError``).
        """
        node_authorizer = build_node_authorizer(config, snapshot)
        material = load_material(config)
        authority = build_authority(config, material)
        # Offline authenticators only (also validates --jwks files early); TokenReviews go through
        # the gate, never the signer (reviewgate.py).
        authenticators = build_authenticators(config, material, token_review=False)
        metrics = CaMetrics(registry)
        review_gate = build_review_gate(config, metrics.token_review)
        backend: SigningBackend
        if processes > 0:
            backend = WorkerPoolBackend(config, material, workers=processes)
        else:
            backend = ThreadBackend(authority, authenticators)
        service = CaService(backend, metrics, review_gate=review_gate,
                            node_authorizer=node_authorizer)
        return cls(config, material, authority, backend, service, review_gate)

    async def start(self) -> None:
        """Start the signing workers (if any), so a broken worker set-up fails at start-up."""
        await self.backend.start()

    def add_to_server(self, server: grpc.aio.Server) -> None:
        self.service.add_to_server(server)

    def server_credentials(self, sans: Sequence[str] = (), *, require_client_auth: bool = False
                           ) -> grpc.ServerCredentials:
        """TLS credentials for the secure port; see ``servercert.server_credentials``."""
        return server_credentials(self.authority, sans, require_client_auth=require_client_auth)

    async def close(self) -> None:
        await self.backend.close()
        if self.review_gate is not None:
            self.review_gate.close()


def build_node_authorizer(config: CaConfig, snapshot: Callable[[], ConfigSnapshot] | None) -> NodeAuthorizer | None:
    """The impersonation rules when node accounts are trusted; ``None`` (every request refused) else."""
    if not config.trusted_node_accounts:
        return None
    if snapshot is None:
        raise ValueError("trusted node accounts need the control plane's pods to check impersonation against")
    if config.token_review is None:
        log.warning("%s is set but Kubernetes TokenReview is not: node proxies' impersonation requests "
                    "will all be refused (the caller's pod comes from the TokenReview)", "CA_TRUSTED_NODE_ACCOUNTS")
    return NodeAuthorizer(config.trusted_node_accounts, config.trust_domain, snapshot)
