"""What an HBONE proxy process does, as immutable values: the tunnels it originates and terminates.

One process (one Envoy) can hold any number of both, so a test that needs a client-side ztunnel
and several destination "pods" pays for one Envoy start, not one per tunnel.

Every address is an IP literal: the Envoy clusters are STATIC (no DNS), and a CONNECT authority in
ambient mode is always ``IP:port`` (the waypoint's ``main_internal`` listener restores it as the
original destination address, which must be an IP).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from istiod_lite.addresses import split_host_port
from istiod_lite.ca.identity import Identity

DEFAULT_TRUST_DOMAIN = "cluster.local"
#: HBONE's well-known port: ztunnel and waypoints accept tunnels here.
HBONE_PORT = 15008


@dataclass(frozen=True, slots=True, order=True)
class Endpoint:
    """An ``IP:port``; ``str()`` gives the form used in a CONNECT authority (IPv6 in brackets)."""

    host: str
    port: int

    def __post_init__(self) -> None:
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            raise ValueError(f"{self.host!r} is not an IP address (names are not resolved here)") from None
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port {self.port} out of range")

    @classmethod
    def parse(cls, text: str, *, default_port: int | None = None) -> Endpoint:
        """``IP:PORT`` or ``[IPv6]:PORT``; a bare IP takes ``default_port`` when one is given."""
        if default_port is not None and _is_bare_ip(text):
            return cls(text.strip("[]"), default_port)
        host, port = split_host_port(text)
        return cls(host, port)

    @property
    def is_ipv6(self) -> bool:
        return ipaddress.ip_address(self.host).version == 6

    @property
    def is_unspecified(self) -> bool:
        return ipaddress.ip_address(self.host).is_unspecified

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if self.is_ipv6 else f"{self.host}:{self.port}"

    def socket_address(self) -> dict[str, object]:
        """Envoy's ``Address`` message (JSON form)."""
        return {"socket_address": {"address": self.host, "port_value": self.port}}


def workload_spiffe_id(namespace_and_sa: str, trust_domain: str = DEFAULT_TRUST_DOMAIN) -> str:
    """``NS/SA`` -> ``spiffe://<td>/ns/NS/sa/SA``, with Kubernetes' naming rules checked
    (``ValueError`` otherwise), so a typo fails here and not as a CA refusal."""
    namespace, sep, service_account = namespace_and_sa.partition("/")
    if not sep:
        raise ValueError(f"expected NAMESPACE/SERVICE_ACCOUNT, got {namespace_and_sa!r}")
    return Identity(trust_domain, namespace, service_account).spiffe


def _is_bare_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return False
    return True


@dataclass(frozen=True, slots=True)
class OutboundTunnel:
    """Plain TCP accepted on ``listen`` goes to ``waypoint`` as ``CONNECT <destination>`` (client ztunnel)."""

    listen: Endpoint
    destination: Endpoint
    waypoint: Endpoint


@dataclass(frozen=True, slots=True)
class InboundTerminator:
    """HBONE accepted on ``listen`` (normally ``<podIP>:15008``) is unwrapped and sent to the app.

    ``forward`` set: every accepted CONNECT goes there, whatever its authority (a stand-in for a
    waypoint's 15008, which accepts service VIPs).  ``forward`` unset: the stream goes to the
    CONNECT authority itself, which must name ``listen``'s IP, as the destination ztunnel only
    delivers to its own pods; anything else is answered 404 instead of being relayed onwards.
    """

    listen: Endpoint
    forward: Endpoint | None = None

    def __post_init__(self) -> None:
        if self.forward is None and self.listen.is_unspecified:
            raise ValueError(f"inbound on {self.listen} without a forward address would relay to any host: "
                             "listen on the pod IP or give the app address")


@dataclass(frozen=True, slots=True)
class HboneConfig:
    """Everything that shapes the Envoy bootstrap (credentials come separately: they change)."""

    outbound: tuple[OutboundTunnel, ...] = ()
    inbound: tuple[InboundTerminator, ...] = ()
    #: A listener for tunnels chosen per connection (the xDS-driven node): each connection starts
    #: with a PROXY protocol header whose destination is the HBONE peer (``IP:15008``) and whose
    #: source is the CONNECT authority.  Bind it on loopback: whoever reaches it chooses the peer.
    egress: Endpoint | None = None
    trust_domain: str = DEFAULT_TRUST_DOMAIN
    connect_timeout_s: float = 5.0
    #: An ``envoy.service.auth.v3.Authorization`` gRPC service (the node's ``InboundAuthorizer``)
    #: asked before each CONNECT to a pod (terminators without ``forward``) is answered.
    authorizer: Endpoint | None = None
    admin: Endpoint = Endpoint("127.0.0.1", 0)

    def __post_init__(self) -> None:
        if not self.outbound and not self.inbound and self.egress is None:
            raise ValueError("nothing to do: no outbound tunnel, no inbound terminator and no egress")
        listens = [t.listen for t in self.outbound] + [t.listen for t in self.inbound]
        listens += [self.egress] if self.egress is not None else []
        fixed = [e for e in listens if e.port != 0]
        if len(set(fixed)) != len(fixed):
            raise ValueError("two tunnels listen on the same address")
        if not self.trust_domain or "/" in self.trust_domain:
            raise ValueError(f"invalid trust domain {self.trust_domain!r}")

    @property
    def peer_san_prefix(self) -> str:
        """Istio accepts any workload of the mesh's trust domain at the transport layer (authorization
        is the waypoint's job), so both directions match this URI SAN prefix."""
        return f"spiffe://{self.trust_domain}/"
