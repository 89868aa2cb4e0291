"""A Delta xDS client that speaks to istiod(-lite) as Istio's ztunnel does.

What ztunnel does, and this client does: node id ``ztunnel~IP~POD.NS~NS.svc.cluster.local`` with
metadata NAME, NAMESPACE, INSTANCE_IPS, NODE_NAME, CLUSTER_ID (no SERVICE_ACCOUNT); one Delta
request per type (Address, Authorization), naming nothing for wildcard, or names for on-demand
lookups; on reconnect, ``initial_resource_versions`` of everything it holds (plus ``*`` if it also
names resources); every resource decoded with the compiled workload API protos; ACK or NACK each
response (a resource that does not decode is NACKed, as ztunnel does).

Two users: the tests (``updates`` records every response, ``next``/``quiet`` read it) and the
xDS-driven HBONE node (``follow`` keeps a stream open, reconnects, and calls back on each change;
it sets ``record_updates=False`` so a long-lived process does not queue every push forever).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc
from envoy.service.discovery.v3 import discovery_pb2 as d
from google.protobuf.message import DecodeError, Message

from istiod_lite._generated.istio.security import authorization_pb2
from istiod_lite._generated.istio.workload import workload_pb2

log = logging.getLogger(__name__)

ADDRESS = "type.googleapis.com/istio.workload.Address"
AUTHORIZATION = "type.googleapis.com/istio.security.Authorization"
MESSAGE_OF: dict[str, type[Message]] = {ADDRESS: workload_pb2.Address, AUTHORIZATION: authorization_pb2.Authorization}
#: Reconnect back-off after a broken stream: first, maximum (seconds).
RECONNECT_S = (0.2, 5.0)


def ztunnel_node(pod: str = "ztunnel-abcde", namespace: str = "istio-system", ip: str = "10.0.0.9",
                 node_name: str = "node-a", cluster_id: str = "Kubernetes") -> base_pb2.Node:
    """The node a ztunnel pod announces (its own pod, namespace, IP and the Kubernetes node)."""
    n = base_pb2.Node(id=f"ztunnel~{ip}~{pod}.{namespace}~{namespace}.svc.cluster.local")
    for k, v in (("NAME", pod), ("NAMESPACE", namespace), ("INSTANCE_IPS", ip), ("NODE_NAME", node_name),
                 ("CLUSTER_ID", cluster_id)):
        n.metadata.fields[k].string_value = v
    return n


@dataclass
class Update:
    """One response as the client saw it: decoded resources by name, and removed names."""

    type_url: str
    resources: dict[str, Message]
    removed: list[str]
    wire_bytes: int


@dataclass
class ZtunnelClient:
    channel: grpc.aio.Channel
    node: base_pb2.Node = field(default_factory=ztunnel_node)
    #: gRPC call metadata (e.g. ``authorization: Bearer <token>`` on the secure port).
    metadata: tuple[tuple[str, str], ...] = ()
    #: type URL -> name -> (version, decoded message): kept across streams, as ztunnel keeps its state.
    held: dict[str, dict[str, tuple[str, Message]]] = field(default_factory=dict)
    updates: asyncio.Queue[Update] = field(default_factory=asyncio.Queue)
    record_updates: bool = True
    #: Called after each applied (ACKed) response.
    on_update: Callable[[Update], Awaitable[None] | None] | None = None
    _call: grpc.aio.StreamStreamCall | None = None
    _reader: asyncio.Task[None] | None = None

    async def connect(self, names: dict[str, Sequence[str]] | None = None) -> None:
        """Open a stream: for each type, wildcard (no names) or on-demand (``names[type]``); held
        resources are reported with their versions."""
        await self.close()
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(self.channel)
        self._call = stub.DeltaAggregatedResources(metadata=self.metadata or None)
        first = True
        for type_url in (ADDRESS, AUTHORIZATION):
            wanted = list((names or {}).get(type_url, ()))
            held = {n: v for n, (v, _) in self.held.get(type_url, {}).items()}
            if names is not None and type_url in names and not wanted and not held:
                continue  # ztunnel sends nothing for an on-demand type it has nothing of yet
            if names is None and held:
                wanted = [*sorted(held), "*"]
            req = d.DeltaDiscoveryRequest(type_url=type_url, resource_names_subscribe=wanted,
                                          initial_resource_versions=held)
            if first:
                req.node.CopyFrom(self.node)
                first = False
            await self._call.write(req)
        self._reader = asyncio.create_task(self._read(self._call))

    async def subscribe(self, type_url: str, names: Sequence[str]) -> None:
        """An on-demand lookup on the open stream."""
        assert self._call is not None
        await self._call.write(d.DeltaDiscoveryRequest(type_url=type_url, resource_names_subscribe=list(names)))

    async def _read(self, call: grpc.aio.StreamStreamCall) -> None:
        async for resp in call:
            decoded: dict[str, Message] = {}
            error = ""
            cls = MESSAGE_OF.get(resp.type_url)
            for r in resp.resources:
                if cls is None or not r.resource.Is(cls.DESCRIPTOR):
                    error = f"unexpected type {r.resource.type_url}"
                    continue
                msg = cls()
                try:
                    r.resource.Unpack(msg)
                except DecodeError as exc:
                    error = f"{r.name}: {exc}"
                    continue
                decoded[r.name] = msg
            ack = d.DeltaDiscoveryRequest(type_url=resp.type_url, response_nonce=resp.nonce)
            if error:
                ack.error_detail.message = error
                log.warning("NACK %s: %s", resp.type_url, error)
            else:
                held = self.held.setdefault(resp.type_url, {})
                for r in resp.resources:
                    held[r.name] = (r.version, decoded[r.name])
                for n in resp.removed_resources:
                    held.pop(n, None)
            await call.write(ack)
            update = Update(resp.type_url, decoded, list(resp.removed_resources), resp.ByteSize())
            if self.record_updates:
                await self.updates.put(update)
            if self.on_update is not None and not error:
                result = self.on_update(update)
                if result is not None:
                    await result

    async def follow(self, stop: asyncio.Event) -> None:
        """Keep a wildcard stream open until ``stop``: reconnect after a break (with the held
        versions, so the server sends only what changed), backing off up to ``RECONNECT_S[1]``."""
        delay = RECONNECT_S[0]
        while not stop.is_set():
            try:
                await self.connect()
                assert self._reader is not None
                stopping = asyncio.ensure_future(stop.wait())
                await asyncio.wait({self._reader, stopping}, return_when=asyncio.FIRST_COMPLETED)
                stopping.cancel()
                if stop.is_set():
                    break
                reader, self._reader = self._reader, None
                exc = reader.exception() if not reader.cancelled() else None
                log.warning("xDS stream ended (%s); reconnecting", exc or "closed by server")
                delay = RECONNECT_S[0] if self.held else delay
            except grpc.aio.AioRpcError as exc:
                log.warning("xDS stream failed: %s %s; retry in %.1fs", exc.code().name, exc.details(), delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
            delay = min(delay * 2, RECONNECT_S[1])
        await self.close()

    def messages(self, type_url: str) -> dict[str, Message]:
        """What the client holds of ``type_url``, by resource name."""
        return {name: msg for name, (_, msg) in self.held.get(type_url, {}).items()}

    async def next(self, type_url: str, timeout: float = 5.0) -> Update:
        while True:
            u = await asyncio.wait_for(self.updates.get(), timeout)
            if u.type_url == type_url:
                return u

    async def quiet(self, seconds: float = 0.3) -> list[Update]:
        """Updates that arrive within ``seconds`` (expected: none)."""
        out = []
        try:
            while True:
                out.append(await asyncio.wait_for(self.updates.get(), seconds))
        except TimeoutError:
            return out

    async def close(self) -> None:
        if self._call is not None:
            self._call.cancel()
            self._call = None
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
                await self._reader
            self._reader = None
        while not self.updates.empty():
            self.updates.get_nowait()
