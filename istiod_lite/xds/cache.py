"""The one interface between "what each proxy gets" and "how it is sent".

Proxies are grouped: every proxy whose node maps to the same *group key* gets the same resources
(all replicas of one waypoint share one translation).  Whoever computes config (the control-plane
wiring) calls ``set_snapshot(group, snapshot)``; streams watch their group and are woken when it
changes.  The cache knows nothing of Istio: a group key is any hashable value the owner chooses
(compared, never parsed; ``str()`` of it names the group in logs and debug output) and resources
are opaque bytes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

from envoy.config.core.v3 import base_pb2

from istiod_lite.safetext import safe
from istiod_lite.xds.resources import ResourceSnapshot

log = logging.getLogger(__name__)

#: Maps a connecting node to its group key.  Must be cheap and must not raise.
NodeGrouper = Callable[[base_pb2.Node], Hashable]


@dataclass
class _Group:
    snapshot: ResourceSnapshot | None = None
    #: ``time.monotonic()`` of the config change that produced ``snapshot`` (for convergence time).
    trigger_time: float | None = None
    watchers: set[asyncio.Event] = field(default_factory=set)


class SnapshotCache:
    """Latest ``ResourceSnapshot`` per group, plus who to wake when one changes.

    ``on_demand(group)`` is called (once per group) when a stream joins a group that has no
    snapshot yet, so the owner can compute one lazily; until it does, the stream waits and
    sends nothing (never an empty full-state response by accident).

    ``on_release(group)``: with it, a group is forgotten as soon as its last stream leaves (and the
    owner told, to drop what it keeps for the group); it is computed again on demand when a stream
    joins it.  Without it (owners that set a snapshot once, like the agent's SDS), groups stay.
    Clients choose their group through their node metadata, so forgetting is what keeps the state
    of a server bounded by its live streams (a client inventing addresses or waypoint names at
    every connect must not leave a group behind each time).
    """

    def __init__(
        self,
        grouper: NodeGrouper,
        on_demand: Callable[[Hashable], None] | None = None,
        on_release: Callable[[Hashable], None] | None = None,
    ) -> None:
        self._grouper = grouper
        self._on_demand = on_demand
        self._on_release = on_release
        self._groups: dict[Hashable, _Group] = {}
        self._ready = asyncio.Event()

    # -- readiness ---------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        """True once the owner has declared the first complete set of snapshots."""
        return self._ready.is_set()

    def mark_ready(self) -> None:
        self._ready.set()

    # -- owner side --------------------------------------------------------------------------
    def set_snapshot(self, group: Hashable, snapshot: ResourceSnapshot, trigger_time: float | None = None) -> bool:
        """Store ``snapshot`` for ``group``; wake its streams.  Returns False if unchanged.

        ``trigger_time``: when the change that led here happened (``time.monotonic()``), so
        streams can report how long the proxy took to converge.
        """
        g = self._groups.setdefault(group, _Group())
        if g.snapshot is not None and g.snapshot.types == snapshot.types:
            return False
        g.snapshot = snapshot
        g.trigger_time = trigger_time
        for ev in g.watchers:
            ev.set()
        return True

    def clear_snapshot(self, group: Hashable) -> None:
        g = self._groups.get(group)
        if g is None:
            return
        if not g.watchers:
            del self._groups[group]
        else:
            g.snapshot = None

    def groups(self) -> list[Hashable]:
        """Every group with a snapshot or a watcher, in the order they first appeared."""
        return list(self._groups)

    def watched_groups(self) -> list[Hashable]:
        return [k for k, g in self._groups.items() if g.watchers]

    # -- stream side -------------------------------------------------------------------------
    def group_of(self, node: base_pb2.Node) -> Hashable:
        return self._grouper(node)

    def get(self, group: Hashable) -> ResourceSnapshot | None:
        g = self._groups.get(group)
        return g.snapshot if g else None

    def trigger_time(self, group: Hashable) -> float | None:
        g = self._groups.get(group)
        return g.trigger_time if g else None

    def watch(self, group: Hashable, event: asyncio.Event) -> None:
        g = self._groups.setdefault(group, _Group())
        g.watchers.add(event)
        if g.snapshot is None and self._on_demand is not None:
            try:
                self._on_demand(group)
            except Exception:  # the owner's bug must not kill the stream
                log.exception("on-demand computation for group %s failed", safe(group))

    def unwatch(self, group: Hashable, event: asyncio.Event) -> None:
        g = self._groups.get(group)
        if g is None:
            return
        g.watchers.discard(event)
        if not g.watchers and self._on_release is not None:
            del self._groups[group]
            try:
                self._on_release(group)
            except Exception:  # the owner's bug must not break the stream's teardown
                log.exception("releasing group %s failed", group)
