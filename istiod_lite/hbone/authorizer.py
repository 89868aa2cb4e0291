"""The inbound HBONE authorization check: Envoy's terminator asks us before it answers a CONNECT.

ztunnel evaluates the served L4 policies on every inbound CONNECT, with the peer's SPIFFE identity
from its client certificate, the connection's source IP and the CONNECT target (``podIP:port``),
and answers a refused CONNECT with ``401 Unauthorized`` (its ``AuthorizationPolicyRejection``).
Our terminator is Envoy, so the check is Envoy's ``ext_authz`` HTTP filter on the ``<podIP>:15008``
listener calling this gRPC service (``envoy.service.auth.v3.Authorization``) on loopback.  Envoy fills
in what ztunnel uses: ``source.principal`` (the peer certificate's URI SAN), ``source.address``, and
the CONNECT authority (``request.http.host``).  The decision is ``MeshTable.authorize`` on the table
current when the CONNECT arrives (the one the plaintext path uses too), so a policy change applies
to the next tunnel without restarting Envoy.

A CONNECT to an address that is not a workload the node knows is refused with ``400``, as ztunnel
refuses a destination it cannot validate.  The Envoy filter fails closed: if this service does not
answer, the CONNECT is refused.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import grpc
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from envoy.type.v3 import http_status_pb2

from istiod_lite.hbone.config import Endpoint
from istiod_lite.hbone.table import MeshTable, Peer

log = logging.getLogger(__name__)

#: ztunnel's answers: a policy refusal, and a CONNECT it cannot make sense of.
DENIED_STATUS = http_status_pb2.Unauthorized
BAD_REQUEST_STATUS = http_status_pb2.BadRequest
#: google.rpc.Code values of CheckResponse.status (set by number: google.rpc ships no type stubs).
_RPC_OK, _RPC_PERMISSION_DENIED = 0, 7


@dataclass(frozen=True, slots=True)
class Decision:
    """One inbound check: who asked for what, and the answer (for logs, stats and tests)."""

    peer: Peer
    target: Endpoint | None
    allowed: bool
    why: str
    status: int = 200


def decide(table: MeshTable, principal: str, source_ip: str, authority: str) -> Decision:
    """The answer to one CONNECT, from its attributes as Envoy reports them (pure)."""
    # Envoy's source.principal is the first URI SAN, else a DNS SAN or the subject: only a SPIFFE
    # URI is an identity to the policies (ztunnel matches principals after stripping ``spiffe://``).
    peer = Peer(ip=source_ip, identity=principal if principal.startswith("spiffe://") else None)
    try:
        target = Endpoint.parse(authority)
    except ValueError as exc:
        return Decision(peer, None, False, f"bad CONNECT authority {authority!r}: {exc}", BAD_REQUEST_STATUS)
    if table.workload_at(target.host) is None:
        return Decision(peer, target, False, f"{target.host} is not a workload of this mesh", BAD_REQUEST_STATUS)
    allowed, why = table.authorize(target, peer)
    return Decision(peer, target, allowed, why, 200 if allowed else DENIED_STATUS)


class _Servicer(external_auth_pb2_grpc.AuthorizationServicer):  # type: ignore[misc]
    def __init__(self, authorizer: InboundAuthorizer) -> None:
        self.authorizer = authorizer

    async def Check(self, request: external_auth_pb2.CheckRequest,
                    context: grpc.aio.ServicerContext) -> external_auth_pb2.CheckResponse:
        attrs = request.attributes
        decision = decide(self.authorizer.table(), attrs.source.principal,
                          attrs.source.address.socket_address.address, attrs.request.http.host)
        self.authorizer.record(decision)
        resp = external_auth_pb2.CheckResponse()
        if decision.allowed:
            resp.status.code = _RPC_OK
        else:
            resp.status.code, resp.status.message = _RPC_PERMISSION_DENIED, decision.why
            resp.denied_response.status.code = decision.status
        return resp


class InboundAuthorizer:
    """The gRPC check service on loopback; ``table`` returns the node's current ``MeshTable``."""

    def __init__(self, table: Callable[[], MeshTable], stats: Counter[str] | None = None,
                 host: str = "127.0.0.1") -> None:
        self.table = table
        self.stats = stats if stats is not None else Counter()
        self.host = host
        self.port = 0
        self.decisions: list[Decision] = []
        self._server: grpc.aio.Server | None = None

    @property
    def address(self) -> Endpoint:
        assert self.port, "not started"
        return Endpoint(self.host, self.port)

    def record(self, decision: Decision) -> None:
        # Bounded: a long-running node keeps the last few for inspection, not every connection.
        self.decisions = [*self.decisions[-99:], decision]
        if decision.allowed:
            self.stats["hbone_in"] += 1
            log.debug("inbound HBONE %s -> %s: %s", decision.peer.identity, decision.target, decision.why)
        else:
            self.stats["refused"] += 1
            self.stats["refused_hbone"] += 1
            log.info("refused HBONE from %s (%s) to %s: %s", decision.peer.identity, decision.peer.ip,
                     decision.target, decision.why)

    async def start(self) -> Endpoint:
        server = grpc.aio.server()
        external_auth_pb2_grpc.add_AuthorizationServicer_to_server(_Servicer(self), server)
        self.port = server.add_insecure_port(f"{self.host}:0")
        await server.start()
        self._server = server
        return self.address

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            await server.stop(grace=0)
