"""Debounce config changes: wait for a quiet period, but never longer than a maximum delay.

A standalone, clock-injectable piece (Istio's ``debounce`` in pilot/pkg/xds/discovery.go): bursts
of file writes or watch events become one rebuild, and a steady stream of changes still gets
pushed at least every ``max_delay``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class DebounceOptions:
    quiet: float = 0.1
    max_delay: float = 10.0


class Debouncer(Generic[T]):
    """Collects events with ``add`` and calls ``flush(merged, first_added_at)`` after quiet/max-delay.

    ``merge(old, new)`` combines pending events so at most one merged batch is ever pending.
    """

    def __init__(
        self,
        flush: Callable[[T, float], Awaitable[None]],
        merge: Callable[[T, T], T],
        options: DebounceOptions | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._flush = flush
        self._merge = merge
        self.options = options or DebounceOptions()
        self._clock = clock
        self._pending: T | None = None
        self._first_at = 0.0
        self._last_at = 0.0
        self._settled = False
        self._event = asyncio.Event()

    def add(self, item: T, *, settled: bool = False) -> None:
        """``settled``: the producer already waited for a quiet period (the YAML directory
        does, so that it never reads a file half-written); the batch is due at once unless
        something unsettled is pending with it."""
        now = self._clock()
        if self._pending is None:
            self._pending = item
            self._first_at = now
            self._settled = settled
        else:
            self._pending = self._merge(self._pending, item)
            self._settled = self._settled and settled
        self._last_at = now
        self._event.set()

    def due_in(self, now: float) -> float | None:
        """Seconds until the pending batch must flush (0 = now), or None if nothing pending."""
        if self._pending is None:
            return None
        if self._settled:
            return 0.0
        quiet_left = self._last_at + self.options.quiet - now
        max_left = self._first_at + self.options.max_delay - now
        return max(0.0, min(quiet_left, max_left))

    async def run(self) -> None:
        """Flush loop; runs until cancelled.  A failing flush is the caller's to log."""
        while True:
            await self._event.wait()
            self._event.clear()
            while (wait := self.due_in(self._clock())) is not None and wait > 0:
                try:
                    await asyncio.wait_for(self._event.wait(), timeout=wait)
                    self._event.clear()
                except TimeoutError:
                    pass
            if self._pending is None:
                continue
            batch, self._pending = self._pending, None
            await self._flush(batch, self._first_at)
