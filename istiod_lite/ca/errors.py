"""The CA's one exception type: a gRPC status code for the client and a private reason for the log.

Istio's CA answers callers with a fixed, opaque message per failure class and logs the real cause
(``security/pkg/server/ca/server.go``).  An attacker probing the CA therefore learns only *which
class* of check failed (authentication, argument, permission), never which key, claim or
extension tripped it.  Every check in this package raises ``CaError`` with the code the client
will see and a ``reason`` that is only ever logged.
"""

from __future__ import annotations

import grpc

#: Exactly the message Istio returns when every authenticator failed.
UNAUTHENTICATED_MESSAGE = "request authenticate failure"

#: What Istio answers every refused ``ImpersonatedIdentity`` request (node proxies, ``nodeauth.py``).
IMPERSONATION_MESSAGE = "request impersonation authentication failure"

#: The fixed message a client sees for each code; the reason stays in the server log.
PUBLIC_MESSAGES: dict[grpc.StatusCode, str] = {
    grpc.StatusCode.UNAUTHENTICATED: UNAUTHENTICATED_MESSAGE,
    grpc.StatusCode.INVALID_ARGUMENT: "invalid certificate signing request",
    grpc.StatusCode.PERMISSION_DENIED: "certificate request not permitted for the authenticated identity",
    grpc.StatusCode.INTERNAL: "certificate authority failed to sign",
}


class CaError(Exception):
    """A refused or failed certificate request.

    ``code`` is returned to the client with ``public_message``; ``reason`` is private (log only).
    """

    def __init__(self, code: grpc.StatusCode, reason: str) -> None:
        super().__init__(f"{code.name}: {reason}")
        self.code = code
        self.reason = reason

    def __reduce__(self) -> tuple[type[CaError], tuple[grpc.StatusCode, str]]:
        # Crosses process boundaries (process-pool signing): rebuild from (code, reason).
        return (CaError, (self.code, self.reason))

    @property
    def public_message(self) -> str:
        return str(PUBLIC_MESSAGES.get(self.code, "certificate request failed"))

    @property
    def outcome(self) -> str:
        """Metric label for this failure (``invalid_argument``, ``unauthenticated``, ...)."""
        return str(self.code.name).lower()


class ImpersonationRefused(CaError):
    """A node proxy's request for another identity was refused: ``UNAUTHENTICATED`` with Istio's
    fixed impersonation message, whatever the check that failed (the reason is logged only)."""

    def __init__(self, reason: str) -> None:
        super().__init__(grpc.StatusCode.UNAUTHENTICATED, reason)

    @property
    def public_message(self) -> str:
        return IMPERSONATION_MESSAGE


class CaMaterialError(Exception):
    """The CA directory holds unusable key material (partial bundle, mismatched key, bad chain).

    Fatal at start-up, as in Istio: serving with a half-loaded CA would issue certificates nobody
    can verify.
    """
