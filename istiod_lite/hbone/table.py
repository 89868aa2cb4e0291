"""What a ztunnel knows of the mesh, as served over xDS, and the two questions it answers.

Built from the ``istio.workload.Address`` and ``istio.security.Authorization`` resources the node
holds (``MeshTable.build``; pure, no I/O), it answers:

* **Where does a connection to ``IP:port`` go?** (``route``) - a service VIP with a waypoint: to
  the waypoint over HBONE (``CONNECT VIP:port`` to the waypoint's 15008); without one: to one of its
  healthy workloads, over HBONE (``CONNECT podIP:targetPort`` to ``podIP:15008``) when the workload's
  ``tunnel_protocol`` is HBONE (an ambient pod), in plaintext otherwise.  A workload address is
  handled the same way (its own waypoint, else the workload itself).
* **May this connection reach this workload?** (``authorize``) - ztunnel's L4 rules: the
  workload's policies are the GLOBAL ones, those of its namespace (NAMESPACE scope) and those it
  lists by name; a matching DENY refuses, and when any ALLOW applies one must match.  A plaintext
  connection has no peer identity, so PeerAuthentication STRICT (``istio_converted_static_strict``:
  DENY when no principal is present) refuses it.

A new table is built on every xDS push; callers swap the reference, so a connection sees one
consistent view.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal, TypeVar

from google.protobuf.message import Message

from istiod_lite._generated.istio.security import authorization_pb2 as az
from istiod_lite._generated.istio.workload import workload_pb2 as wl
from istiod_lite.hbone.config import HBONE_PORT, Endpoint

_E = TypeVar("_E")
HopKind = Literal["waypoint", "hbone", "plaintext"]


@dataclass(frozen=True, slots=True)
class Hop:
    """One routing decision: ``target`` is the CONNECT authority (HBONE) or where plain TCP goes;
    ``peer`` the HBONE server the tunnel is opened to (None for plaintext)."""

    kind: HopKind
    target: Endpoint
    peer: Endpoint | None
    #: What was chosen, for logs and the ready output: ``waypoint NS/NAME`` or ``workload NS/NAME``.
    via: str


@dataclass(frozen=True, slots=True)
class Peer:
    """Who is connecting, as ztunnel knows it: the source address, and the SPIFFE identity when the
    connection came over HBONE (mTLS)."""

    ip: str
    identity: str | None = None  # spiffe://TD/ns/NS/sa/SA

    @property
    def namespace(self) -> str | None:
        parts = self._parts()
        return parts[1] if parts else None

    @property
    def service_account(self) -> str | None:
        parts = self._parts()
        return parts[2] if parts else None

    @property
    def principal(self) -> str | None:
        """``TD/ns/NS/sa/SA``: Istio's principal form (no scheme)."""
        return self.identity.removeprefix("spiffe://") if self.identity else None

    def _parts(self) -> tuple[str, str, str] | None:
        p = (self.principal or "").split("/")
        return (p[0], p[2], p[4]) if len(p) == 5 and p[1] == "ns" and p[3] == "sa" else None


def _ip(raw: bytes) -> str | None:
    try:
        return str(ipaddress.ip_address(raw))
    except ValueError:
        return None


@dataclass
class MeshTable:
    services: dict[str, wl.Service] = field(default_factory=dict)          # "ns/hostname" -> Service
    workloads: dict[str, wl.Workload] = field(default_factory=dict)        # uid -> Workload
    policies: dict[str, az.Authorization] = field(default_factory=dict)    # "ns/name" -> policy
    by_vip: dict[tuple[str, int], str] = field(default_factory=dict)       # (VIP, port) -> service key
    vips: dict[str, str] = field(default_factory=dict)                     # VIP -> service key
    by_ip: dict[str, str] = field(default_factory=dict)                    # workload IP -> uid
    members: dict[str, list[str]] = field(default_factory=dict)            # service key -> workload uids

    @classmethod
    def build(cls, addresses: Mapping[str, Message], authorizations: Mapping[str, Message]) -> MeshTable:
        t = cls()
        for name in sorted(addresses):
            a = addresses[name]
            assert isinstance(a, wl.Address)
            if a.HasField("service"):
                s = a.service
                key = f"{s.namespace}/{s.hostname}"
                t.services[key] = s
                for na in s.addresses:
                    ip = _ip(na.address)
                    if ip is None:
                        continue
                    t.vips.setdefault(ip, key)
                    for p in s.ports:
                        t.by_vip.setdefault((ip, p.service_port), key)
            elif a.HasField("workload"):
                w = a.workload
                t.workloads[w.uid] = w
                for raw in w.addresses:
                    ip = _ip(raw)
                    if ip is not None:
                        t.by_ip.setdefault(ip, w.uid)
                for skey in w.services:
                    t.members.setdefault(skey, []).append(w.uid)
        for name in sorted(authorizations):
            p = authorizations[name]
            assert isinstance(p, az.Authorization)
            t.policies[name] = p
        return t

    # ------------------------------------------------------------------ routing

    def service_endpoints(self) -> list[Endpoint]:
        """Every ``VIP:port`` of every service (what a node captures), sorted."""
        return sorted(Endpoint(ip, port) for ip, port in self.by_vip)

    def waypoint_peer(self, gw: wl.GatewayAddress) -> Endpoint | None:
        """A waypoint's HBONE address: its IP, or the first VIP of the service it names."""
        port = gw.hbone_mtls_port or HBONE_PORT
        if gw.HasField("address"):
            ip = _ip(gw.address.address)
            return Endpoint(ip, port) if ip else None
        if gw.HasField("hostname"):
            svc = self.services.get(f"{gw.hostname.namespace}/{gw.hostname.hostname}")
            for na in svc.addresses if svc is not None else ():
                ip = _ip(na.address)
                if ip:
                    return Endpoint(ip, port)
        return None

    def _waypoint_name(self, gw: wl.GatewayAddress) -> str:
        if gw.HasField("hostname"):
            svc = self.services.get(f"{gw.hostname.namespace}/{gw.hostname.hostname}")
            return f"{svc.namespace}/{svc.name}" if svc is not None else gw.hostname.hostname
        return str(_ip(gw.address.address))

    def candidates(self, dest: Endpoint) -> list[Hop]:
        """Every hop a connection to ``dest`` may take (one per healthy workload, or the waypoint);
        empty when the address is unknown or no workload is ready."""
        key = self.by_vip.get((dest.host, dest.port))
        if key is not None:
            svc = self.services[key]
            if svc.HasField("waypoint"):
                peer = self.waypoint_peer(svc.waypoint)
                if peer is not None:
                    return [Hop("waypoint", dest, peer, f"waypoint {self._waypoint_name(svc.waypoint)}")]
            default_target = next((p.target_port for p in svc.ports if p.service_port == dest.port), 0)
            hops = []
            for uid in self.members.get(key, ()):
                w = self.workloads[uid]
                if w.status != wl.HEALTHY or not w.addresses:
                    continue
                port = next((p.target_port for p in w.services[key].ports if p.service_port == dest.port), 0)
                hop = self._direct(w, port or default_target or dest.port)
                if hop is not None:
                    hops.append(hop)
            return hops
        wuid = self.by_ip.get(dest.host)
        if wuid is None:
            return []
        w = self.workloads[wuid]
        if w.HasField("waypoint"):
            peer = self.waypoint_peer(w.waypoint)
            if peer is not None:
                return [Hop("waypoint", dest, peer, f"waypoint {self._waypoint_name(w.waypoint)}")]
        hop = self._direct(w, dest.port, ip=dest.host)
        return [hop] if hop is not None else []

    @staticmethod
    def _direct(w: wl.Workload, port: int, ip: str | None = None) -> Hop | None:
        addr = ip or _ip(w.addresses[0])
        if addr is None:
            return None
        via = f"workload {w.namespace}/{w.name}"
        if w.tunnel_protocol == wl.HBONE:
            return Hop("hbone", Endpoint(addr, port), Endpoint(addr, HBONE_PORT), via)
        return Hop("plaintext", Endpoint(addr, port), None, via)

    def route(self, dest: Endpoint, pick: int = 0) -> Hop | None:
        """The hop for a connection to ``dest``; ``pick`` chooses among workloads (round robin)."""
        hops = self.candidates(dest)
        return hops[pick % len(hops)] if hops else None

    # ------------------------------------------------------------------ authorization

    def workload_at(self, ip: str) -> wl.Workload | None:
        uid = self.by_ip.get(ip)
        return self.workloads.get(uid) if uid is not None else None

    def applicable(self, w: wl.Workload) -> list[az.Authorization]:
        listed = set(w.authorization_policies)
        out = []
        for name, p in self.policies.items():
            if p.dry_run:
                continue
            if p.scope == az.GLOBAL or (p.scope == az.NAMESPACE and p.namespace == w.namespace) or name in listed:
                out.append(p)
        return out

    def authorize(self, dest: Endpoint, peer: Peer) -> tuple[bool, str]:
        """(allowed, why) for a connection from ``peer`` to ``dest`` (a workload address)."""
        w = self.workload_at(dest.host)
        if w is None:
            return True, "not a known workload: no policy applies"
        policies = self.applicable(w)
        for p in policies:
            if p.action == az.DENY and _policy_matches(p, dest, peer):
                return False, f"denied by {p.namespace}/{p.name}"
        allows = [p for p in policies if p.action == az.ALLOW]
        if not allows:
            return True, "no ALLOW policy applies"
        for p in allows:
            if _policy_matches(p, dest, peer):
                return True, f"allowed by {p.namespace}/{p.name}"
        return False, "no ALLOW policy matched"


# --- ztunnel's match semantics (groups OR, rules AND, matches OR, fields AND, entries OR) ----------

def _string(m: az.StringMatch, value: str) -> bool:
    kind = m.WhichOneof("match_type")
    if kind == "exact":
        return bool(value == m.exact)
    if kind == "prefix":
        return bool(value.startswith(m.prefix))
    if kind == "suffix":
        return bool(value.endswith(m.suffix))
    return bool(kind == "presence" and value)


def _strings(entries: Iterable[az.StringMatch]) -> list[az.StringMatch]:
    """ztunnel drops a StringMatch without a match type when it reads the policy (so a field holding
    only such entries is empty and matches anything)."""
    return [e for e in entries if e.WhichOneof("match_type") is not None]


def _blocks(entries: Iterable[az.Address]) -> list[az.Address]:
    """ztunnel drops an address it cannot parse when it reads the policy, as it does unset strings."""
    return [b for b in entries if _ip(b.address) is not None]


def _in_block(ip: str, blocks: Iterable[az.Address]) -> bool:
    addr = ipaddress.ip_address(ip)
    for b in blocks:
        raw = _ip(b.address)
        if raw is None:
            continue
        net = ipaddress.ip_network(f"{raw}/{b.length or (32 if ':' not in raw else 128)}", strict=False)
        if addr.version == net.version and addr in net:
            return True
    return False


def _sa(m: az.ServiceAccountMatch, peer: Peer) -> bool:
    return peer.namespace == m.namespace and peer.service_account == m.serviceAccount


def _field(entries: Iterable[_E], test: Callable[[_E], bool]) -> bool:
    """An empty field matches anything; otherwise any entry must pass ``test``."""
    items = list(entries)
    return not items or any(test(e) for e in items)


def _not_field(entries: Iterable[_E], test: Callable[[_E], bool]) -> bool:
    return not any(test(e) for e in entries)


def _match(m: az.Match, dest: Endpoint, peer: Peer) -> bool:
    # ztunnel compares a missing identity as "": no namespace, and no principal (it must start with spiffe://).
    ns = peer.namespace or ""
    principal = peer.principal if peer.identity and peer.identity.startswith("spiffe://") else None
    return (_field(_strings(m.namespaces), lambda s: _string(s, ns))
            and _not_field(_strings(m.not_namespaces), lambda s: _string(s, ns))
            and _field(m.service_accounts, lambda s: _sa(s, peer))
            and _not_field(m.not_service_accounts, lambda s: _sa(s, peer))
            and _field(_strings(m.principals), lambda s: principal is not None and _string(s, principal))
            and _not_field(_strings(m.not_principals), lambda s: principal is not None and _string(s, principal))
            and _field(_blocks(m.source_ips), lambda b: _in_block(peer.ip, [b]))
            and _not_field(_blocks(m.not_source_ips), lambda b: _in_block(peer.ip, [b]))
            and _field(_blocks(m.destination_ips), lambda b: _in_block(dest.host, [b]))
            and _not_field(_blocks(m.not_destination_ips), lambda b: _in_block(dest.host, [b]))
            and (not m.destination_ports or dest.port in m.destination_ports)
            and dest.port not in m.not_destination_ports)


def _is_empty(m: az.Match) -> bool:
    """A match with no field set: ztunnel skips it (it matches nothing), unlike an empty field."""
    return not (_strings(m.namespaces) or _strings(m.not_namespaces) or m.service_accounts
                or m.not_service_accounts or _strings(m.principals) or _strings(m.not_principals)
                or _blocks(m.source_ips) or _blocks(m.not_source_ips) or _blocks(m.destination_ips)
                or _blocks(m.not_destination_ips) or m.destination_ports or m.not_destination_ports)


def _clause(r: az.Rules, dest: Endpoint, peer: Peer) -> bool:
    """A clause with no match list matches; otherwise one non-empty match must."""
    return not r.matches or any(not _is_empty(m) and _match(m, dest, peer) for m in r.matches)


def _policy_matches(p: az.Authorization, dest: Endpoint, peer: Peer) -> bool:
    """Groups OR (a policy without groups matches nothing), clauses AND (ztunnel's ``Authorization::matches``)."""
    return any(all(_clause(r, dest, peer) for r in g.rules) for g in p.groups)
