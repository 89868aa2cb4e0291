"""The HBONE TLS handshake on ``connect_terminate``: whether the waypoint accepts the client's
certificate, from the listener's ``DownstreamTlsContext``.

Before any byte of the request reaches ``main_internal``, the client ztunnel's mTLS connection is
terminated by ``connect_terminate``. Envoy requires a client certificate there and accepts it only
if one of its URI SANs satisfies one of the validation context's ``match_typed_subject_alt_names``
(istiod: one ``spiffe://<domain>/`` prefix per domain of the trust-domain bundle, i.e. MeshConfig
``trustDomain`` and ``trustDomainAliases``). A peer outside them never gets an HTTP answer: the
handshake fails and the connection closes. The chain-to-root check is not modelled: the peer is
taken to hold a certificate of the mesh's CA (what ``--from`` names is the identity, not a CA).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, tls_pb2

from istiod_lite.explain.envoy_eval.config import unpack
from istiod_lite.explain.envoy_eval.matchers import describe_string_match, string_match

CONNECT_TERMINATE = "connect_terminate"


@dataclass
class HandshakeCheck:
    """The verdict of ``connect_terminate``'s peer certificate check for one client identity.

    ``checked`` is False when there is nothing to evaluate (no ``connect_terminate`` listener, no
    TLS on it, or no peer identity given); ``accepted`` is then True (nothing known refuses)."""

    checked: bool
    accepted: bool
    require_client_certificate: bool = False
    accepted_sans: list[str] = field(default_factory=list)  # "URI prefix 'spiffe://td/'", ...
    matched: str | None = None  # the SAN matcher that accepted the peer
    reason: str = ""

    def to_json(self) -> dict[str, object]:
        return {"listener": CONNECT_TERMINATE, "checked": self.checked, "accepted": self.accepted,
                "requireClientCertificate": self.require_client_certificate,
                "acceptedSubjectAltNames": self.accepted_sans, "matched": self.matched, "reason": self.reason}


def _validation_context(tls: tls_pb2.DownstreamTlsContext) -> common_pb2.CertificateValidationContext | None:
    ctx = tls.common_tls_context
    kind = ctx.WhichOneof("validation_context_type")
    if kind == "combined_validation_context":
        return ctx.combined_validation_context.default_validation_context
    if kind == "validation_context":
        return ctx.validation_context
    return None


_SAN_TYPES = {common_pb2.SubjectAltNameMatcher.URI: "URI", common_pb2.SubjectAltNameMatcher.DNS: "DNS",
              common_pb2.SubjectAltNameMatcher.EMAIL: "EMAIL", common_pb2.SubjectAltNameMatcher.IP_ADDRESS: "IP"}


def check_peer(listener: listener_pb2.Listener | None, peer_principal: str | None) -> HandshakeCheck:
    """Would ``listener`` (``connect_terminate``) accept a client certificate whose only URI SAN is
    ``peer_principal``? (An HBONE client's certificate carries exactly its SPIFFE ID.)"""
    if listener is None:
        return HandshakeCheck(False, True, reason=f"no {CONNECT_TERMINATE} listener in the configuration")
    chain = listener.filter_chains[0] if listener.filter_chains else None
    tls = None
    if chain is not None and chain.HasField("transport_socket"):
        msg = unpack(chain.transport_socket.typed_config)
        tls = msg if isinstance(msg, tls_pb2.DownstreamTlsContext) else None
    if tls is None:
        return HandshakeCheck(False, True, reason=f"{CONNECT_TERMINATE} has no TLS: no peer check")
    require = tls.require_client_certificate.value if tls.HasField("require_client_certificate") else False
    vc = _validation_context(tls)
    matchers = list(vc.match_typed_subject_alt_names) if vc is not None else []
    described = [f"{_SAN_TYPES.get(m.san_type, str(m.san_type))} {describe_string_match(m.matcher)}"
                 for m in matchers]
    out = HandshakeCheck(True, True, require_client_certificate=require, accepted_sans=described)
    if peer_principal is None:
        # An unknown peer, not a peer without a certificate (every HBONE client has one).
        out.checked = False
        out.reason = "the peer's identity is unknown: its certificate's SAN cannot be checked"
        return out
    if not matchers:
        out.reason = "any SAN accepted (no SAN matchers)"
        return out
    for m, text in zip(matchers, described, strict=True):
        if m.san_type == common_pb2.SubjectAltNameMatcher.URI and string_match(m.matcher, peer_principal):
            out.matched = text
            out.reason = f"the peer's SAN {peer_principal} matches {text}"
            return out
    out.accepted = False
    out.reason = (f"the peer's SAN {peer_principal} matches none of the accepted SANs "
                  f"({'; '.join(described)}): its trust domain is not in the mesh's trust-domain bundle")
    return out
