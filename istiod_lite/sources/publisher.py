"""The one publish step every source shares: resources + errors in, an exact ``SourceUpdate`` out.

Why shared: the guarantees the control plane relies on (exact ``changed`` sets, unchanged
resources keeping their identity, one revision per real change, last-known-good, errors logged once
when they appear and once when resolved, a handler failure never stopping the source) are the same
whatever the input is.  Written once, a new source only has to say *what* it serves now.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable
from typing import Any

from istiod_lite.model import ConfigError, ConfigSnapshot, Resource, ResourceKey
from istiod_lite.sources.contract import SourceUpdate, UpdateHandler


class Publisher:
    """Holds a source's published state and turns each new state into the next ``SourceUpdate``.

    ``label`` names the source in its log lines (``"<label> revision 3: ..."``); ``None`` logs
    nothing, for a source made of sources that log their own (``MergedSource``).  ``error_order``
    sorts resolved errors in the log.  Not thread-safe: call ``publish`` under the source's lock.
    """

    def __init__(self, log: logging.Logger, label: str | None = "config",
                 error_order: Callable[[ConfigError], Any] = str) -> None:
        self._log = log
        self._label = label
        self._error_order = error_order
        self._current: SourceUpdate | None = None

    @property
    def current(self) -> SourceUpdate | None:
        """The last published state (None before the first ``publish``)."""
        return self._current

    def last_good(self, key: ResourceKey) -> Resource | None:
        """What is served for ``key`` now: the version to keep when its new definition is invalid."""
        return self._current.snapshot.get_key(key) if self._current is not None else None

    def publish_new(
        self, resources: dict[ResourceKey, Resource], errors: tuple[ConfigError, ...],
        candidates: Iterable[ResourceKey] | None = None,
    ) -> SourceUpdate | None:
        """``publish``, but None when that is no new revision (nothing to hand over)."""
        before = self._current
        update = self.publish(resources, errors, candidates)
        return None if before is not None and update.revision == before.revision else update

    def publish(
        self, resources: dict[ResourceKey, Resource], errors: tuple[ConfigError, ...],
        candidates: Iterable[ResourceKey] | None = None, notices: tuple[ConfigError, ...] = (),
    ) -> SourceUpdate:
        """Publish ``resources`` (everything served now) with ``errors`` (every current error, in order).

        ``candidates``: the keys that may have changed (added, modified or removed) since the last
        publish, when the source knows them; None compares everything.  A resource equal to the one
        served before is replaced *in* ``resources`` by the previous object, so identity survives.
        Nothing changed and the same errors: the previous revision again, with ``changed`` empty.
        """
        prev = self._current
        prev_snap = prev.snapshot if prev is not None else ConfigSnapshot()
        if candidates is None:
            candidates = {*prev_snap.keys(), *resources}
        changed: set[ResourceKey] = set()
        for key in candidates:
            old, new = prev_snap.get_key(key), resources.get(key)
            if old is new:
                continue
            if old is not None and new is not None and old == new:
                resources[key] = old  # keep identity: the translator memoises on it
                continue
            changed.add(key)
        self._log_errors(prev, errors)
        self._log_notices(prev, notices)
        if prev is not None and not changed and errors == prev.errors:
            self._current = dataclasses.replace(prev, changed=frozenset(), settled=False, notices=notices)
            return self._current
        revision = prev.revision + 1 if prev is not None else 1
        if prev is None:
            snapshot = ConfigSnapshot.build(resources.values(), revision)
        elif changed:
            snapshot = ConfigSnapshot.build(resources.values(), revision, previous=prev_snap, changed=changed)
        else:
            snapshot = prev_snap
        self._current = SourceUpdate(snapshot, frozenset(changed), errors, revision, notices=notices)
        if self._label is not None:
            self._log.info("%s revision %d: %d resources, %d changed, %d errors", self._label, revision,
                           len(snapshot), len(changed), len(errors))
        return self._current

    def _log_errors(self, prev: SourceUpdate | None, errors: tuple[ConfigError, ...]) -> None:
        """Each error once when it appears (warning) and once when it is gone (info)."""
        if self._label is None:
            return
        old_errors = set(prev.errors) if prev is not None else set()
        for err in errors:
            if err not in old_errors:
                self._log.warning("config error: %s", err)
        for err in sorted(old_errors - set(errors), key=self._error_order):
            self._log.info("config error resolved: %s", err)

    def _log_notices(self, prev: SourceUpdate | None, notices: tuple[ConfigError, ...]) -> None:
        """Each ignored document once, when it first appears (they are not errors: info level)."""
        if self._label is None:
            return
        old = set(prev.notices) if prev is not None else set()
        for notice in notices:
            if notice not in old:
                self._log.info("config ignored: %s", notice)

    async def hand_over(self, on_update: UpdateHandler, update: SourceUpdate, *, settled: bool = False) -> None:
        """Await ``on_update(update)``; ``settled``: the source already waited for its input to be quiet.

        A failing handler is logged, never raised: the source keeps following its input and the
        next revision is handed over as usual.
        """
        try:
            await on_update(dataclasses.replace(update, settled=True) if settled else update)
        except Exception:
            self._log.exception("config update handler failed (revision %d)", update.revision)
