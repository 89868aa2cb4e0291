"""One connected ADS stream: who it is, what it subscribed to, and a single wake-up flag.

Coalescing is structural: a config change or a request only sets ``wake``; the stream's writer
loop then evaluates every subscribed type once against the *latest* snapshot.  However many
changes arrive while a write is blocked, at most one evaluation is pending — per-stream memory
stays bounded and a slow client never delays another.
Rule numbers (R7, R43) refer to docs/xds-rules.md.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from collections.abc import Hashable
from dataclasses import dataclass, field

from envoy.config.core.v3 import base_pb2

from istiod_lite.xds.admission import FREE, Ticket
from istiod_lite.xds.subscription import Subscription
from istiod_lite.xds.typeurls import push_rank, short

_SERVER_TOKEN = os.urandom(4).hex()
_counter = itertools.count(1)


def new_nonce() -> str:
    """Unique across streams and server restarts (Envoy has leaked old nonces, R7)."""
    return f"{_SERVER_TOKEN}-{next(_counter)}"


@dataclass
class Connection:
    conn_id: str
    variant: str  # "sotw" | "delta"
    peer: str
    node: base_pb2.Node
    #: The cache's group key (opaque to the xDS layer; ``str()`` names it in status output).
    group: Hashable
    connected_at: float = field(default_factory=time.time)
    subs: dict[str, Subscription] = field(default_factory=dict)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    #: Set by the reader when the stream must end: (grpc status code name, message) or None.
    fatal: tuple[str, str] | None = None
    closed: bool = False
    #: SotW: answer the next EDS request even if it looks like an ACK (R43).
    eds_after_cds: bool = False
    #: Trigger time (monotonic) of the newest snapshot this stream has been brought up to date with.
    converged_trigger: float = 0.0
    #: Held from admission until the initial sync is done (``AdsServer._initially_synced``).
    sync_ticket: Ticket = FREE

    @property
    def node_id(self) -> str:
        return str(self.node.id)

    def ordered_subs(self) -> list[Subscription]:
        return sorted(self.subs.values(), key=lambda s: (push_rank(s.type_url), s.type_url))

    def status(self) -> dict[str, object]:
        return {
            "connection_id": self.conn_id,
            "node_id": self.node.id,
            "cluster": self.node.cluster,
            "group": str(self.group),
            "variant": self.variant,
            "peer": self.peer,
            "connected_at": self.connected_at,
            "types": {short(s.type_url): s.status() for s in self.ordered_subs()},
        }
