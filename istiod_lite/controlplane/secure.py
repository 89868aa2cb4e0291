"""The secure port (Istio's 15012): the CA and ADS on one TLS gRPC server.

Every ADS stream on it must authenticate (bearer token, or a mesh client certificate where the
TLS stack asked for one) before a single resource is sent, and the node's ``NAMESPACE`` metadata
(and ``SERVICE_ACCOUNT``, when the node states one; ztunnel does not) must name the authenticated
identity: a waypoint cannot read another namespace's config by claiming it in its bootstrap.
Verification runs off the event loop: the
offline authenticators in a thread, Kubernetes TokenReviews (if configured) through the CA's
``ReviewGate``, which bounds them for both services together.
"""

from __future__ import annotations

import asyncio
import logging

import grpc

from istiod_lite.ca.authn import AuthenticationError, Authenticators
from istiod_lite.ca.errors import CaError
from istiod_lite.ca.identity import Identity
from istiod_lite.ca.reviewgate import ReviewGate
from istiod_lite.ca.service import caller_credentials
from istiod_lite.safetext import safe
from istiod_lite.xds.connection import Connection
from istiod_lite.xds.server import StreamRefused

log = logging.getLogger(__name__)


def _meta(conn: Connection, key: str) -> str:
    v = conn.node.metadata.fields.get(key)
    return str(v.string_value) if v is not None and v.HasField("string_value") else ""


def node_matches_identity(namespace: str, service_account: str, identity: Identity) -> bool:
    """As istiod: the node's namespace must be the caller's; its service account is compared only
    when the node states one (ztunnel's node metadata carries none)."""
    return namespace == identity.namespace and (not service_account or service_account == identity.service_account)


class XdsAuthenticator:
    """``AdsServer`` stream check for the secure port."""

    def __init__(self, authenticators: Authenticators, review_gate: ReviewGate | None = None) -> None:
        self._authenticators = authenticators
        self._review_gate = review_gate
        self.refused = 0

    async def _authenticate(self, context: grpc.aio.ServicerContext) -> Identity:
        metadata, peer_der = caller_credentials(context, require_tls=True)
        try:
            return await asyncio.to_thread(self._authenticators.authenticate, metadata, peer_der)
        except CaError as exc:
            if self._review_gate is None:
                raise
            offline = exc.reason
        try:
            identity = await self._review_gate.authenticate(metadata, context.peer())
        except AuthenticationError as exc:
            raise CaError(grpc.StatusCode.UNAUTHENTICATED, f"{offline}; tokenreview: {exc.reason}") from None
        if identity is None:
            raise CaError(grpc.StatusCode.UNAUTHENTICATED, f"{offline}; tokenreview: no credential")
        return identity

    async def __call__(self, conn: Connection, context: grpc.aio.ServicerContext) -> None:
        try:
            identity = await self._authenticate(context)
        except CaError as exc:
            self.refused += 1
            log.warning("xDS stream from %s (%s) refused: %s", safe(conn.peer), safe(conn.node_id), safe(exc.reason))
            raise StreamRefused(grpc.StatusCode.UNAUTHENTICATED, "authentication failure") from None
        namespace, sa = _meta(conn, "NAMESPACE"), _meta(conn, "SERVICE_ACCOUNT")
        if not node_matches_identity(namespace, sa, identity):
            self.refused += 1
            log.warning("xDS stream from %s refused: node %s claims %s/%s but authenticated as %s",
                        safe(conn.peer), safe(conn.node_id), safe(namespace or "-"), safe(sa or "-"),
                        safe(identity.spiffe))
            raise StreamRefused(grpc.StatusCode.PERMISSION_DENIED,
                                "node metadata NAMESPACE/SERVICE_ACCOUNT do not match the caller's identity")
        log.info("xDS stream %s authenticated as %s", safe(conn.conn_id), safe(identity.spiffe))
