"""Several config sources served as one: a YAML directory plus a cluster, say.

Why a merge instead of "pick one": an operator can keep mesh policy in Git (a YAML directory) while
workloads (Services, Pods, EndpointSlices) come from the cluster, or overlay a local fix on a cluster.

Rules (see docs/kubernetes.md):

* the result is the union of every source's resources;
* a key defined by more than one source is taken from the **first** source in the list (the
  control plane passes the YAML directory first, so the file an operator edits wins) and the
  overridden definition is reported as a ``ConfigError`` naming both sources;
* every source's own errors are passed through;
* ``changed`` is exact: only keys whose merged resource differs (an update to a shadowed
  definition changes nothing); unchanged resources keep their identity.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from istiod_lite.model import ConfigError, ConfigSnapshot, Resource, ResourceKey
from istiod_lite.sources.yamldir import SourceUpdate

log = logging.getLogger(__name__)


class Source(Protocol):
    """What the control plane needs from a source: a blocking initial ``load`` and a ``run`` loop."""

    @property
    def current(self) -> SourceUpdate | None: ...

    def load(self) -> SourceUpdate: ...

    async def run(self, on_update: Callable[[SourceUpdate], Awaitable[None]]) -> None: ...


class MergedSource:
    """The union of ``sources``; earlier sources win conflicts.  Names appear in conflict errors."""

    def __init__(self, sources: Sequence[Source], names: Sequence[str]) -> None:
        if len(sources) != len(names) or not sources:
            raise ValueError("MergedSource needs one name per source, and at least one source")
        self.sources = tuple(sources)
        self.names = tuple(names)
        self._latest: list[SourceUpdate | None] = [None] * len(sources)
        self._current: SourceUpdate | None = None
        self._lock = threading.Lock()

    @property
    def current(self) -> SourceUpdate | None:
        return self._current

    def load(self) -> SourceUpdate:
        """Load every source (the slowest, e.g. a cluster's initial list, decides when we are ready)."""
        updates = [s.load() for s in self.sources]
        with self._lock:
            self._latest = list(updates)
            return self._merge({k for u in updates for k in u.snapshot.keys()})  # noqa: SIM118 (not a dict)

    async def run(self, on_update: Callable[[SourceUpdate], Awaitable[None]]) -> None:
        if self._current is None:
            await on_update(await asyncio.to_thread(self.load))

        def handler(index: int) -> Callable[[SourceUpdate], Awaitable[None]]:
            async def child_update(update: SourceUpdate) -> None:
                with self._lock:
                    before = self._current
                    self._latest[index] = update
                    merged = self._merge(set(update.changed))
                if before is None or merged.revision != before.revision:
                    await on_update(merged)
            return child_update

        async with asyncio.TaskGroup() as group:
            for i, source in enumerate(self.sources):
                group.create_task(source.run(handler(i)), name=f"source-{self.names[i]}")

    def _merge(self, candidates: set[ResourceKey]) -> SourceUpdate:
        prev = self._current
        prev_snap = prev.snapshot if prev is not None else ConfigSnapshot()
        resources: dict[ResourceKey, Resource] = {}
        owner: dict[ResourceKey, int] = {}
        errors: list[ConfigError] = []
        for i, update in enumerate(self._latest):
            if update is None:
                continue
            errors.extend(update.errors)
            for key in update.snapshot.keys():  # noqa: SIM118 (not a dict)
                if key in owner:
                    errors.append(ConfigError(
                        f"also defined by {self.names[owner[key]]}, whose definition is kept",
                        source=self.names[i], kind=key.kind, namespace=key.namespace, name=key.name))
                    continue
                res = update.snapshot.get_key(key)
                assert res is not None
                owner[key], resources[key] = i, res
        changed: set[ResourceKey] = set()
        for key in candidates | (set(prev_snap.keys()) - resources.keys()):
            old, new = prev_snap.get_key(key), resources.get(key)
            if old is new:
                continue
            if old is not None and new is not None and old == new:
                resources[key] = old
                continue
            changed.add(key)
        error_tuple = tuple(errors)
        if prev is not None and not changed and error_tuple == prev.errors:
            return prev
        revision = prev.revision + 1 if prev is not None else 1
        if prev is None:
            snapshot = ConfigSnapshot.build(resources.values(), revision)
        elif changed:
            snapshot = ConfigSnapshot.build(resources.values(), revision, previous=prev_snap, changed=changed)
        else:
            snapshot = prev_snap
        new_conflicts = [e for e in error_tuple if e.message.startswith("also defined by")
                         and (prev is None or e not in prev.errors)]
        for err in new_conflicts:
            log.warning("config conflict: %s", err)
        self._current = SourceUpdate(snapshot, frozenset(changed), error_tuple, revision)
        return self._current
