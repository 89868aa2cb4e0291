"""A fake waypoint replica on Delta ADS that checks it is never left without config.

It behaves as Envoy does across control-plane restarts: it keeps what it holds when a stream ends,
reconnects (here: to the next address, standing in for a Service that sends it to another
replica) and tells the new server what it holds (``initial_resource_versions``, R33).  It records
every response, and as a *violation* anything that would empty or shrink its config: a listener
or cluster set left empty, or any removal (the tests using it never change the config).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc
from envoy.service.discovery.v3 import discovery_pb2 as d

from istiod_lite.xds.typeurls import CLUSTER, LISTENER

#: What a waypoint cannot serve without, and subscribes to by wildcard first.
CONFIG_TYPES = (CLUSTER, LISTENER)


def waypoint_node(i: int, namespace: str = "app", ip: str = "127.0.1.1") -> base_pb2.Node:
    """Replica ``i`` of waypoint ``namespace/waypoint`` at ``ip`` (the metadata istiod groups by)."""
    n = base_pb2.Node(id=f"waypoint~{ip}~waypoint-{i}.{namespace}~{namespace}.svc.cluster.local",
                      user_agent_name="envoy")
    n.metadata.fields["NAMESPACE"].string_value = namespace
    n.metadata.fields["LABELS"].struct_value.fields["gateway.networking.k8s.io/gateway-name"].string_value = "waypoint"
    return n


@dataclass
class Closed:
    """A stream that ended: when (monotonic), how, on which address, and what the client held then."""

    at: float
    code: grpc.StatusCode | None
    address: int
    held: dict[str, int]


@dataclass
class FakeWaypoint:
    idx: int
    #: type URL -> name -> version: kept across streams, as Envoy keeps its config.
    held: dict[str, dict[str, str]] = field(default_factory=dict)
    #: Set while the current stream has answered CDS and LDS and holds both (cleared when it ends).
    synced: asyncio.Event = field(default_factory=asyncio.Event)
    #: Index of the address the current (or last) stream went to.
    address: int = 0
    responses: int = 0
    closed: list[Closed] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    #: Streams that failed in a row without syncing; past ``max_attempts`` the client gives up.
    failures: int = 0
    gave_up: bool = False

    def counts(self) -> dict[str, int]:
        return {t: len(self.held.get(t, {})) for t in CONFIG_TYPES}

    def _apply(self, resp: d.DeltaDiscoveryResponse) -> None:
        t = resp.type_url
        held = self.held.setdefault(t, {})
        if resp.removed_resources:
            self.violations.append(f"{t}: removed {list(resp.removed_resources)} (address {self.address})")
        for name in resp.removed_resources:
            held.pop(name, None)
        for r in resp.resources:
            held[r.name] = r.version
        if t in CONFIG_TYPES and not held:
            self.violations.append(f"{t}: left with no resources (address {self.address})")
        self.responses += 1

    async def stream(self, stub: ads_pb2_grpc.AggregatedDiscoveryServiceStub, stop: asyncio.Event) -> None:
        """One Delta stream until ``stop`` (returns) or the server ends it (raises ``AioRpcError``)."""
        self.synced.clear()
        call = stub.DeltaAggregatedResources()
        answered: set[str] = set()
        stopper = asyncio.ensure_future(stop.wait())
        try:
            first = True
            for t in CONFIG_TYPES:
                await call.write(d.DeltaDiscoveryRequest(
                    node=waypoint_node(self.idx) if first else None, type_url=t,
                    initial_resource_versions=self.held.get(t, {})))
                first = False
            while True:
                reader = asyncio.ensure_future(call.read())
                done, _ = await asyncio.wait({reader, stopper}, return_when=asyncio.FIRST_COMPLETED)
                if stopper in done:
                    reader.cancel()
                    return
                resp = reader.result()
                if resp is grpc.aio.EOF:
                    raise RuntimeError("stream ended without a status")
                self._apply(resp)
                await call.write(d.DeltaDiscoveryRequest(type_url=resp.type_url, response_nonce=resp.nonce))
                answered.add(resp.type_url)
                if answered.issuperset(CONFIG_TYPES) and all(self.counts().values()):
                    self.failures = 0
                    self.synced.set()
        except asyncio.InvalidStateError:  # refused before a write landed: raise its status as a read would
            self.synced.clear()
            code = await call.code()
            self.closed.append(Closed(time.monotonic(), code, self.address, self.counts()))
            raise grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), await call.details()) from None
        except grpc.aio.AioRpcError as exc:
            self.synced.clear()  # no longer connected (it still holds its config)
            self.closed.append(Closed(time.monotonic(), exc.code(), self.address, self.counts()))
            raise
        finally:
            stopper.cancel()
            call.cancel()

    async def run(self, stubs: Sequence[ads_pb2_grpc.AggregatedDiscoveryServiceStub], stop: asyncio.Event, *,
                  max_attempts: int = 40, backoff: float = 0.2) -> None:
        """Stay connected until ``stop``: when a stream ends with a retriable status (UNAVAILABLE,
        RESOURCE_EXHAUSTED) or cannot be opened, move to the next address after a jittered backoff
        (Envoy's starts at 0.5 s; shorter here to keep tests short).  Any other status is a failure;
        ``max_attempts`` failed streams in a row mean the client gave up."""
        while not stop.is_set():
            try:
                await self.stream(stubs[self.address], stop)
                return
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED):
                    self.violations.append(f"stream ended with {exc.code()}: {exc.details()}")
                    self.gave_up = True
                    return
            self.failures += 1
            if self.failures > max_attempts:
                self.gave_up = True
                return
            self.address = (self.address + 1) % len(stubs)
            await asyncio.sleep(random.uniform(0, backoff * min(self.failures, 5)))
