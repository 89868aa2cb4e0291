"""A Delta xDS client that behaves as Istio's ztunnel towards istiod (no ztunnel binary here).

What ztunnel does, and this client does: node id ``ztunnel~IP~POD.NS~NS.svc.cluster.local`` with
metadata NAME, NAMESPACE, INSTANCE_IPS, NODE_NAME, CLUSTER_ID (no SERVICE_ACCOUNT); one Delta
request per type (Address, Authorization), naming nothing for wildcard, or names for on-demand
lookups; on reconnect, ``initial_resource_versions`` of everything it holds (plus ``*`` if it also
names resources); every resource decoded with the compiled workload API protos; ACK or NACK each
response (a resource that does not decode is NACKed, as ztunnel does).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc
from envoy.service.discovery.v3 import discovery_pb2 as d
from google.protobuf.message import DecodeError, Message

from istiod_lite._generated.istio.security import authorization_pb2
from istiod_lite._generated.istio.workload import workload_pb2

ADDRESS = "type.googleapis.com/istio.workload.Address"
AUTHORIZATION = "type.googleapis.com/istio.security.Authorization"
MESSAGE_OF = {ADDRESS: workload_pb2.Address, AUTHORIZATION: authorization_pb2.Authorization}


def ztunnel_node(pod: str = "ztunnel-abcde", namespace: str = "istio-system", ip: str = "10.0.0.9",
                 node_name: str = "node-a") -> base_pb2.Node:
    n = base_pb2.Node(id=f"ztunnel~{ip}~{pod}.{namespace}~{namespace}.svc.cluster.local")
    for k, v in (("NAME", pod), ("NAMESPACE", namespace), ("INSTANCE_IPS", ip), ("NODE_NAME", node_name),
                 ("CLUSTER_ID", "Kubernetes")):
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
    #: type URL -> name -> (version, decoded message): kept across streams, as ztunnel keeps its state.
    held: dict[str, dict[str, tuple[str, Message]]] = field(default_factory=dict)
    updates: asyncio.Queue[Update] = field(default_factory=asyncio.Queue)
    _call: grpc.aio.StreamStreamCall | None = None  # type: ignore[type-arg]
    _reader: asyncio.Task[None] | None = None

    async def connect(self, names: dict[str, Sequence[str]] | None = None) -> None:
        """Open a stream: for each type, wildcard (no names) or on-demand (``names[type]``); held
        resources are reported with their versions."""
        await self.close()
        self._call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(self.channel).DeltaAggregatedResources()
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

    async def _read(self, call: grpc.aio.StreamStreamCall) -> None:  # type: ignore[type-arg]
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
            else:
                held = self.held.setdefault(resp.type_url, {})
                for r in resp.resources:
                    held[r.name] = (r.version, decoded[r.name])
                for n in resp.removed_resources:
                    held.pop(n, None)
            await call.write(ack)
            await self.updates.put(Update(resp.type_url, decoded, list(resp.removed_resources), resp.ByteSize()))

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
