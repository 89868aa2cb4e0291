"""What every config source promises the control plane: the ``Source`` protocol and its ``SourceUpdate``.

Why a module of its own: the control plane, the merge of several sources and every concrete source
(a YAML directory, a cluster, tomorrow a Git checkout) depend on this contract and on nothing of
each other, so adding a source never means importing another source's implementation.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from istiod_lite.model import ConfigError, ConfigSnapshot, ResourceKey


@dataclass(frozen=True)
class SourceUpdate:
    """One published state of a source: everything it serves, what changed, and every current error.

    ``snapshot`` is complete (not a delta) and immutable.  ``changed`` is exact: only keys whose
    resource was added, removed or differs from the previous revision (unchanged resources keep
    their identity, which the translator memoises on).  ``errors`` are all errors current at this
    revision, not only new ones; an invalid resource keeps its last good version in ``snapshot``.
    """

    snapshot: ConfigSnapshot
    changed: frozenset[ResourceKey]
    errors: tuple[ConfigError, ...]
    revision: int
    #: The source already waited for its input to be quiet (the directory's settle period), so
    #: the control plane need not wait for another quiet period before pushing it.
    settled: bool = False
    #: Documents of kinds waypoints have no use for, reported as ignored (not errors; they never
    #: change the snapshot or the revision).
    notices: tuple[ConfigError, ...] = ()


#: What a running source calls with every new revision.
UpdateHandler = Callable[[SourceUpdate], Awaitable[None]]


class Source(Protocol):
    """What the control plane needs from a source: a blocking initial ``load`` and a ``run`` loop.

    * ``load()`` blocks until the source has read its whole input once (it may run in a worker
      thread) and returns that state; calling it again re-reads.
    * ``run(on_update)`` follows the input until cancelled and awaits ``on_update`` once per new
      revision; if ``load`` was never called it loads first and hands that over too.
    * ``current`` is the last published state (None before the first ``load``).
    """

    @property
    def current(self) -> SourceUpdate | None: ...

    def load(self) -> SourceUpdate: ...

    async def run(self, on_update: UpdateHandler) -> None: ...
