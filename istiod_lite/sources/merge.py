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
from collections.abc import Sequence

from istiod_lite.model import ConfigError, Resource, ResourceKey
from istiod_lite.sources.contract import Source, SourceUpdate, UpdateHandler
from istiod_lite.sources.publisher import Publisher

log = logging.getLogger(__name__)


class MergedSource:
    """The union of ``sources``; earlier sources win conflicts.  Names appear in conflict errors."""

    def __init__(self, sources: Sequence[Source], names: Sequence[str]) -> None:
        if len(sources) != len(names) or not sources:
            raise ValueError("MergedSource needs one name per source, and at least one source")
        self.sources = tuple(sources)
        self.names = tuple(names)
        self._latest: list[SourceUpdate | None] = [None] * len(sources)
        # the merged sources log their own revisions and errors; conflicts are logged below
        self._publisher = Publisher(log, None)
        self._lock = threading.Lock()

    @property
    def current(self) -> SourceUpdate | None:
        return self._publisher.current

    def load(self) -> SourceUpdate:
        """Load every source (the slowest, e.g. a cluster's initial list, decides when we are ready)."""
        updates = [s.load() for s in self.sources]
        with self._lock:
            self._latest = list(updates)
            return self._publisher.publish(*self._merge({k for u in updates for k in u.snapshot.keys()}))  # noqa: SIM118 (not a dict)

    async def run(self, on_update: UpdateHandler) -> None:
        if self.current is None:
            await self._publisher.hand_over(on_update, await asyncio.to_thread(self.load))

        def handler(index: int) -> UpdateHandler:
            async def child_update(update: SourceUpdate) -> None:
                with self._lock:
                    self._latest[index] = update
                    merged = self._publisher.publish_new(*self._merge(set(update.changed)))
                if merged is not None:
                    await self._publisher.hand_over(on_update, merged)
            return child_update

        async with asyncio.TaskGroup() as group:
            for i, source in enumerate(self.sources):
                group.create_task(source.run(handler(i)), name=f"source-{self.names[i]}")

    def _merge(
        self, candidates: set[ResourceKey]
    ) -> tuple[dict[ResourceKey, Resource], tuple[ConfigError, ...], set[ResourceKey]]:
        """The union of the latest updates, every error, and the keys that may have changed:
        ``candidates`` plus every key no source defines any more."""
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
        prev = self._publisher.current
        if prev is not None:
            candidates |= set(prev.snapshot.keys()) - resources.keys()
        for err in errors:
            if err.message.startswith("also defined by") and (prev is None or err not in prev.errors):
                log.warning("config conflict: %s", err)
        return resources, tuple(errors), candidates
