"""``IstioCertificateService/CreateCertificate`` over grpc.aio.

The event loop only moves bytes: authentication (JWT signature check) and signing are CPU work
and run in an executor (a thread pool by default, see ``backend``), so xDS streams sharing the
loop keep their latency under CSR load.  Errors reach the client as a status code with a fixed
message; the reason is logged with the caller's address.

Like istiod, a request that did not arrive over TLS has no caller and is refused
(``security.Authenticate`` returns nothing without TLS); ``require_tls=False`` exists for tests of
the plaintext path only.  ``ImpersonatedIdentity`` (ztunnel acting for a pod) is decided by the
``NodeAuthorizer`` (``nodeauth.py``) for a caller the TokenReview gate authenticated, and refused
without one, as Istio refuses it without ``CA_TRUSTED_NODE_ACCOUNTS``; ``CertSigner`` is ignored, as
with Istio's built-in CA.

Authentication happens in two steps so that a network round trip never holds the signer: the
backend tries the offline authenticators (client certificate, JWT) and signs; only if they all
refuse, and a TokenReview gate is configured, does the token go to ``reviewgate`` (its own
bounded threads, per-peer share) and the backend then signs for the identity the API server named.
"""

from __future__ import annotations

import logging
import ssl
import time

import grpc
from google.protobuf import struct_pb2

from istiod_lite._generated.istio.v1.auth import ca_pb2, ca_pb2_grpc
from istiod_lite.ca.authn import AuthenticationError
from istiod_lite.ca.backend import SigningBackend
from istiod_lite.ca.errors import CaError, ImpersonationRefused
from istiod_lite.ca.metrics import CaMetrics
from istiod_lite.ca.nodeauth import NodeAuthorizer
from istiod_lite.ca.reviewgate import ReviewGate
from istiod_lite.safetext import safe

log = logging.getLogger(__name__)

IMPERSONATED_IDENTITY = "ImpersonatedIdentity"


def caller_credentials(context: grpc.aio.ServicerContext,
                       require_tls: bool = True) -> tuple[dict[str, str], bytes | None]:
    """ASCII metadata (lower-case keys) and the TLS client certificate (DER) of the current call."""
    auth = context.auth_context()
    if require_tls and auth.get("transport_security_type") != [b"ssl"]:
        raise CaError(grpc.StatusCode.UNAUTHENTICATED, "not a TLS connection")
    metadata: dict[str, str] = {}
    for key, value in context.invocation_metadata() or ():
        if isinstance(value, bytes):
            continue
        if key in metadata:
            # Two authorization headers: which one did a proxy on the way look at?  Refuse.
            raise CaError(grpc.StatusCode.UNAUTHENTICATED, f"metadata {key!r} sent more than once")
        metadata[key] = value
    pems = auth.get("x509_pem_cert")
    peer_der = ssl.PEM_cert_to_DER_cert(pems[0].decode("ascii")) if pems else None
    return metadata, peer_der


def _impersonation(metadata: struct_pb2.Struct) -> str:
    """The requested identity; "" when none is asked for (absent or empty, as Istio reads it).

    A value that is not a string is refused rather than read as "none": a node proxy that asked
    for someone else's certificate must never receive its own by accident.
    """
    field = metadata.fields.get(IMPERSONATED_IDENTITY)
    if field is None:
        return ""
    if field.WhichOneof("kind") != "string_value":
        raise ImpersonationRefused(f"{IMPERSONATED_IDENTITY} is a {field.WhichOneof('kind')}, not a string")
    return str(field.string_value)


class CaService(ca_pb2_grpc.IstioCertificateServiceServicer):  # type: ignore[misc]
    """The servicer; register with ``add_to_server``."""

    def __init__(self, backend: SigningBackend, metrics: CaMetrics | None = None, *,
                 require_tls: bool = True, review_gate: ReviewGate | None = None,
                 node_authorizer: NodeAuthorizer | None = None) -> None:
        self.backend = backend
        self.review_gate = review_gate
        self.node_authorizer = node_authorizer
        self.metrics = metrics or CaMetrics()
        self._require_tls = require_tls
        roots_expiry = min(r.not_valid_after_utc for r in backend.material.roots)
        self.metrics.root_expiry.set(roots_expiry.timestamp())
        self.metrics.chain_expiry.set(backend.material.not_after.timestamp())

    def add_to_server(self, server: grpc.aio.Server) -> None:
        ca_pb2_grpc.add_IstioCertificateServiceServicer_to_server(self, server)

    async def CreateCertificate(self, request: ca_pb2.IstioCertificateRequest,
                                context: grpc.aio.ServicerContext) -> ca_pb2.IstioCertificateResponse:
        start = time.perf_counter()
        self.metrics.csr_count.inc()
        try:
            metadata, peer_der = caller_credentials(context, self._require_tls)
            impersonated = _impersonation(request.metadata)
            if impersonated:
                chain = await self._impersonate(request, metadata, impersonated, context.peer())
            else:
                chain = await self._issue(request, metadata, peer_der, context.peer())
        except CaError as exc:
            self.metrics.failed(exc.code)
            # The reason may quote what the caller sent (a CSR's SANs, a token's claims): escaped.
            log.warning("CreateCertificate from %s refused (%s): %s", safe(context.peer() or ""), exc.code.name,
                        safe(exc.reason))
            await context.abort(exc.code, exc.public_message)
        except Exception:
            self.metrics.failed(grpc.StatusCode.INTERNAL)
            log.exception("CreateCertificate from %s failed", safe(context.peer() or ""))
            await context.abort(grpc.StatusCode.INTERNAL, CaError(grpc.StatusCode.INTERNAL, "").public_message)
        self.metrics.succeeded()
        self.metrics.duration.observe(time.perf_counter() - start)
        return ca_pb2.IstioCertificateResponse(cert_chain=chain)

    async def _issue(self, request: ca_pb2.IstioCertificateRequest, metadata: dict[str, str],
                     peer_der: bytes | None, peer: str) -> list[str]:
        """Offline authentication and signing in the backend; TokenReview (gated) only if that refused."""
        try:
            return await self.backend.create_certificate(request.csr, request.validity_duration, metadata, peer_der)
        except CaError as exc:
            if exc.code != grpc.StatusCode.UNAUTHENTICATED or self.review_gate is None:
                raise
            offline = exc.reason
        try:
            identity = await self.review_gate.authenticate(metadata, peer)
        except AuthenticationError as exc:
            raise CaError(grpc.StatusCode.UNAUTHENTICATED, f"{offline}; tokenreview: {exc.reason}") from None
        if identity is None:
            raise CaError(grpc.StatusCode.UNAUTHENTICATED, f"{offline}; tokenreview: no credential")
        return await self.backend.sign(request.csr, request.validity_duration, identity.spiffe)

    async def _impersonate(self, request: ca_pb2.IstioCertificateRequest, metadata: dict[str, str],
                           impersonated: str, peer: str) -> list[str]:
        """A node proxy asking for a pod's certificate: TokenReview (for the caller's pod), the node
        authorizer's rules, then signing for the requested identity."""
        if self.node_authorizer is None:
            raise ImpersonationRefused("impersonation not allowed: no trusted node accounts configured "
                                       "(CA_TRUSTED_NODE_ACCOUNTS)")
        if self.review_gate is None:
            raise ImpersonationRefused("impersonation needs Kubernetes TokenReview (the caller's pod), "
                                       "which is not configured")
        try:
            caller = await self.review_gate.review_caller(metadata, peer)
        except AuthenticationError as exc:
            raise CaError(grpc.StatusCode.UNAUTHENTICATED, f"tokenreview: {exc.reason}") from None
        if caller is None:
            raise ImpersonationRefused("impersonation needs a bearer token the API server reviews "
                                       "(a client certificate names no pod)")
        target = self.node_authorizer.authorize(caller, impersonated)
        log.debug("CreateCertificate from %s: %s (pod %s/%s) impersonates %s", safe(peer), caller.identity,
                 caller.identity.namespace, safe(caller.pod_name), target)
        return await self.backend.sign(request.csr, request.validity_duration, target.spiffe)
