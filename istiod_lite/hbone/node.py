"""``HboneNode``: a ztunnel stand-in driven by the control plane's ztunnel xDS.

Where ``HboneProxy`` alone runs fixed tunnels, a node follows the mesh as ztunnel does:

* it holds a Delta ADS stream (``xdsclient.ZtunnelClient``: node id ``ztunnel~IP~POD.NS~...``,
  types Address and Authorization) and rebuilds its ``MeshTable`` on every push, so a label or
  policy change takes effect on the next connection, without a restart;
* **outbound**: it accepts plain TCP on each service ``VIP:port`` (``capture``: bound on the host,
  which on loopback stands in for ztunnel's traffic redirection; the set follows the services) and
  on fixed ``LISTEN=DEST`` routes; each connection goes where the table says (``MeshTable.route``):
  over HBONE to the service's waypoint, over HBONE to an ambient pod's 15008, or in plaintext to a
  pod outside the mesh.  HBONE is Envoy's: one static Envoy whose egress listener takes a PROXY
  protocol header naming the peer and the CONNECT authority (``bootstrap.egress_listener``);
* **inbound** for its pods: HBONE terminators on ``<podIP>:15008`` (Envoy, delivering to the
  CONNECT authority once ``authorizer.InboundAuthorizer`` has checked the served L4 policies against
  the peer's certificate identity: a refused CONNECT gets ztunnel's 401), and plaintext capture
  listeners (``LISTEN=APP``, standing in for ztunnel's plaintext inbound port) where the same
  policies are enforced without an identity (``MeshTable.authorize``): under PeerAuthentication
  STRICT a plaintext connection is refused, as ztunnel refuses it.

Counters in ``stats`` (by hop kind, refusals, unroutable) let tests and the demo see which way
traffic went.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import socket
import struct
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import grpc
from envoy.config.core.v3 import base_pb2

from istiod_lite.hbone.authorizer import InboundAuthorizer
from istiod_lite.hbone.config import Endpoint, HboneConfig, InboundTerminator
from istiod_lite.hbone.proxy import CredentialSource, HboneProxy
from istiod_lite.hbone.table import Hop, MeshTable, Peer
from istiod_lite.hbone.xdsclient import ADDRESS, AUTHORIZATION, Update, ZtunnelClient

log = logging.getLogger(__name__)

_COPY_CHUNK = 64 * 1024
_Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@dataclass(frozen=True)
class NodeConfig:
    """What a node serves; its mesh view comes from xDS."""

    node: base_pb2.Node
    #: Bind every service ``VIP:port`` in the table (those that cannot be bound are skipped, logged once).
    capture: bool = False
    #: Fixed outbound listeners: ``(listen, destination)``; the destination is looked up per connection.
    routes: tuple[tuple[Endpoint, Endpoint], ...] = ()
    #: Pod IPs whose HBONE this node terminates on ``IP:15008``.
    inbound_pods: tuple[str, ...] = ()
    #: Plaintext capture for this node's pods: ``(listen, app)``; the workload is the one at ``listen``'s IP.
    plaintext: tuple[tuple[Endpoint, Endpoint], ...] = ()
    trust_domain: str = "cluster.local"
    connect_timeout_s: float = 5.0
    #: How long ``start`` waits for the first Address push.
    sync_timeout_s: float = 15.0

    def __post_init__(self) -> None:
        if not (self.capture or self.routes or self.inbound_pods or self.plaintext):
            raise ValueError("nothing to do: no --capture, --route, --inbound-pod or --plaintext")


def proxy_header(source: Endpoint, destination: Endpoint) -> bytes:
    """A PROXY protocol v1 line (``source`` = CONNECT authority, ``destination`` = HBONE peer)."""
    family = "TCP6" if destination.is_ipv6 else "TCP4"
    if source.is_ipv6 != destination.is_ipv6:
        raise ValueError(f"cannot tunnel {source} through {destination}: mixed IP families")
    return f"PROXY {family} {source.host} {destination.host} {source.port} {destination.port}\r\n".encode()


async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(_COPY_CHUNK):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        writer.transport.abort()


async def _splice(a: tuple[asyncio.StreamReader, asyncio.StreamWriter],
                  b: tuple[asyncio.StreamReader, asyncio.StreamWriter]) -> None:
    """Copy both ways until both sides are done, then close both."""
    try:
        await asyncio.gather(_copy(a[0], b[1]), _copy(b[0], a[1]))
    finally:
        for w in (a[1], b[1]):
            w.close()
            with contextlib.suppress(Exception):
                await w.wait_closed()


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP RST (ztunnel refuses a denied connection this way), not a FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


@dataclass
class HboneNode:
    config: NodeConfig
    credentials: CredentialSource
    channel: grpc.aio.Channel
    metadata: tuple[tuple[str, str], ...] = ()
    identity: str | None = None
    concurrency: int = 1
    log_level: str = "warning"
    table: MeshTable = field(default_factory=MeshTable)
    stats: Counter[str] = field(default_factory=Counter)
    #: Called after each table rebuild (tests wait on it).
    on_table: Callable[[MeshTable], None] | None = None

    def __post_init__(self) -> None:
        terminators = tuple(InboundTerminator(Endpoint(ip, 15008)) for ip in self.config.inbound_pods)
        self.proxy = HboneProxy(HboneConfig(inbound=terminators, egress=Endpoint("127.0.0.1", 0),
                                            trust_domain=self.config.trust_domain,
                                            connect_timeout_s=self.config.connect_timeout_s),
                                self.credentials, identity=self.identity, concurrency=self.concurrency,
                                log_level=self.log_level)
        self.client = ZtunnelClient(self.channel, node=self.config.node, metadata=self.metadata,
                                    record_updates=False, on_update=self._on_update)
        #: Checks each inbound CONNECT against the current table (started only for ``inbound_pods``).
        self.authorizer = InboundAuthorizer(lambda: self.table, self.stats)
        self.generation = 0
        self._synced = asyncio.Event()
        self._stop = asyncio.Event()
        self._follower: asyncio.Task[None] | None = None
        self._captured: dict[Endpoint, asyncio.Server] = {}
        self._unbindable: set[Endpoint] = set()
        self._servers: list[asyncio.Server] = []
        self._rr = itertools.count()
        self._servers_started = False

    # ------------------------------------------------------------------ mesh view

    async def _on_update(self, update: Update) -> None:
        self.table = MeshTable.build(self.client.messages(ADDRESS), self.client.messages(AUTHORIZATION))
        self.generation += 1
        log.info("mesh table %d: %d services, %d workloads, %d policies (%s: %d changed, %d removed)",
                 self.generation, len(self.table.services), len(self.table.workloads), len(self.table.policies),
                 update.type_url.rsplit(".", 1)[-1], len(update.resources), len(update.removed))
        if update.type_url == ADDRESS:
            self._synced.set()
        if self.config.capture and self._synced.is_set() and self._servers_started:
            await self._sync_captures()
        if self.on_table is not None:
            self.on_table(self.table)

    async def _sync_captures(self) -> None:
        wanted = set(self.table.service_endpoints())
        for ep in sorted(set(self._captured) - wanted):
            server = self._captured.pop(ep)
            server.close()
            log.info("capture %s closed (service gone)", ep)
        for ep in sorted(wanted - set(self._captured) - self._unbindable):
            try:
                self._captured[ep] = await asyncio.start_server(self._outbound_to(ep), ep.host, ep.port,
                                                                reuse_address=True)
            except OSError as exc:
                self._unbindable.add(ep)
                log.warning("cannot capture %s (%s): connections to it are not intercepted", ep, exc)

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Start Envoy, sync with the control plane, then open the listeners."""
        try:
            if self.config.inbound_pods:
                # Bound before Envoy starts: its bootstrap names the check service's port.
                address = await self.authorizer.start()
                self.proxy.config = dataclasses.replace(self.proxy.config, authorizer=address)
            await self.proxy.start()
            self._follower = asyncio.create_task(self.client.follow(self._stop), name="hbone-node-xds")
            try:
                await asyncio.wait_for(self._synced.wait(), self.config.sync_timeout_s)
            except TimeoutError:
                raise RuntimeError(f"no Address push from the control plane in {self.config.sync_timeout_s}s") \
                    from None
            for listen, dest in self.config.routes:
                self._servers.append(await asyncio.start_server(self._outbound_to(dest), listen.host, listen.port,
                                                                reuse_address=True))
            for listen, app in self.config.plaintext:
                self._servers.append(await asyncio.start_server(self._plaintext_to(listen, app), listen.host,
                                                                listen.port, reuse_address=True))
            self._servers_started = True
            if self.config.capture:
                await self._sync_captures()
        except BaseException:
            await self.stop()
            raise

    @property
    def route_addresses(self) -> list[Endpoint]:
        """Where each ``routes`` listener is bound (port 0 resolved), in config order."""
        out = []
        for server in self._servers[:len(self.config.routes)]:
            host, port = server.sockets[0].getsockname()[:2]
            out.append(Endpoint(host, port))
        return out

    @property
    def plaintext_addresses(self) -> list[Endpoint]:
        out = []
        for server in self._servers[len(self.config.routes):]:
            host, port = server.sockets[0].getsockname()[:2]
            out.append(Endpoint(host, port))
        return out

    @property
    def captured(self) -> list[Endpoint]:
        return sorted(self._captured)

    async def stop(self) -> None:
        self._stop.set()
        for server in [*self._servers, *self._captured.values()]:
            server.close()
        self._servers, self._captured = [], {}
        if self._follower is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(self._follower, 5)
        await self.client.close()
        await self.proxy.stop()
        await self.authorizer.stop()

    async def __aenter__(self) -> HboneNode:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def wait_generation(self, after: int, timeout: float = 10.0) -> None:
        """Until a push newer than ``after`` has been applied."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.generation <= after:
            if loop.time() > deadline:
                raise TimeoutError(f"no xDS push after generation {after} in {timeout}s")
            await asyncio.sleep(0.02)

    # ------------------------------------------------------------------ connections

    def _outbound_to(self, dest: Endpoint) -> _Handler:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await self._outbound(reader, writer, dest)
        return handle

    def _plaintext_to(self, listen: Endpoint, app: Endpoint) -> _Handler:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await self._plaintext_inbound(reader, writer, listen, app)
        return handle

    async def _outbound(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, dest: Endpoint) -> None:
        hop = self.table.route(dest, next(self._rr))
        if hop is None:
            self.stats["no_route"] += 1
            log.warning("no route to %s: not a known service or workload, or nothing ready behind it", dest)
            _reset(writer)
            return
        try:
            upstream = await asyncio.wait_for(self._open(hop), self.config.connect_timeout_s)
        except (OSError, TimeoutError) as exc:
            self.stats["connect_failed"] += 1
            log.warning("%s -> %s (%s %s): %s", dest, hop.target, hop.kind, hop.via, exc)
            _reset(writer)
            return
        self.stats[hop.kind] += 1
        log.debug("%s -> %s %s via %s", dest, hop.kind, hop.target, hop.via)
        await _splice((reader, writer), upstream)

    async def _open(self, hop: Hop) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if hop.peer is None:
            return await asyncio.open_connection(hop.target.host, hop.target.port)
        egress = self.proxy.egress_address
        assert egress is not None
        r, w = await asyncio.open_connection(egress.host, egress.port)
        w.write(proxy_header(hop.target, hop.peer))
        return r, w

    async def _plaintext_inbound(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                                 listen: Endpoint, app: Endpoint) -> None:
        src = writer.get_extra_info("peername")
        peer = Peer(ip=src[0] if src else "0.0.0.0")
        # The connection's original destination: the workload at the captured IP, on the app's port.
        allowed, why = self.table.authorize(Endpoint(listen.host, app.port), peer)
        if not allowed:
            self.stats["refused"] += 1
            log.info("refused plaintext %s -> %s:%d: %s", peer.ip, listen.host, app.port, why)
            _reset(writer)
            return
        try:
            upstream = await asyncio.open_connection(app.host, app.port)
        except OSError as exc:
            self.stats["connect_failed"] += 1
            log.warning("plaintext inbound to %s: %s", app, exc)
            _reset(writer)
            return
        self.stats["plaintext_in"] += 1
        await _splice((reader, writer), upstream)


def describe(table: MeshTable, destinations: Sequence[Endpoint]) -> list[str]:
    """One line per destination: where a connection would go now (for the CLI and the demo)."""
    out = []
    for d in destinations:
        hops = table.candidates(d)
        out.append(f"{d} -> " + (", ".join(f"{h.kind} {h.target} ({h.via})" for h in hops) if hops else "no route"))
    return out
