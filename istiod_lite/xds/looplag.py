"""Event-loop lag: how late a periodic timer fires, measured continuously and cheaply.

Everything the server does runs on one asyncio loop, so a loop busy with other callbacks delays
every stream's reads, writes and keepalives at once.  Lag is the one number that says how close
the server is to that: a timer due every ``interval`` seconds records how late it ran.  Admission
(``admission.py``) reads it to hold back new streams while the loop is behind; ``/metrics``
(``istiod_lite_event_loop_lag_seconds``) and ``/debug/loopz`` expose it.

A loop blocked for a long time yields one large sample, not one per missed tick (as Node's
``monitorEventLoopDelay``), so percentiles are of ticks, not of wall time.  While the loop is
running late *now*, ``current`` also counts how overdue the pending tick already is.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable

#: How often the timer is due.  50 ticks a second cost well under 0.1 % of a core.
DEFAULT_INTERVAL = 0.02
#: Samples kept for ``/debug/loopz`` (about 80 s at the default interval).
DEFAULT_HISTORY = 4096


class LoopLagMonitor:
    """``start()`` on the running loop; ``current`` is the latest lag in seconds.

    ``listeners`` are called after each sample (the server's histogram observes ``last`` there,
    admission re-checks its waiters).
    """

    def __init__(self, interval: float = DEFAULT_INTERVAL, *, history: int = DEFAULT_HISTORY,
                 wall_clock: Callable[[], float] = time.time) -> None:
        if interval <= 0:
            raise ValueError("interval must be positive")
        self.interval = interval
        self._wall = wall_clock
        self._samples: collections.deque[tuple[float, float]] = collections.deque(maxlen=max(1, history))
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._due = 0.0
        self.last = 0.0
        self.listeners: list[Callable[[], None]] = []

    @property
    def running(self) -> bool:
        return self._handle is not None

    def start(self) -> None:
        """Start ticking on the running loop (idempotent)."""
        if self._handle is not None:
            return
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._due = loop.time() + self.interval
        self._handle = loop.call_at(self._due, self._tick)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _tick(self) -> None:
        assert self._loop is not None
        now = self._loop.time()
        self.record(max(0.0, now - self._due))
        self._due = now + self.interval
        self._handle = self._loop.call_at(self._due, self._tick)

    def record(self, lag: float) -> None:
        """One sample (the timer's; tests feed their own)."""
        self.last = lag
        self._samples.append((self._wall(), lag))
        for listener in list(self.listeners):
            listener()

    @property
    def current(self) -> float:
        """The latest sample, or how overdue the pending tick is if that is more: a loop that is
        behind right now must not look healthy until its next tick finally runs."""
        if self._loop is None or self._handle is None:
            return self.last
        return max(self.last, self._loop.time() - self._due)

    def samples(self, since: float = 0.0) -> list[tuple[float, float]]:
        """(wall time, lag seconds) of the kept samples taken at or after ``since`` (wall time)."""
        return [s for s in self._samples if s[0] >= since]

    def summary(self, since: float = 0.0) -> dict[str, object]:
        """For ``/debug/loopz``: the interval, the current lag and the samples since ``since``."""
        kept = self.samples(since)
        lags = sorted(lag for _, lag in kept)

        def pct(p: float) -> float | None:
            return round(lags[min(len(lags) - 1, round(p / 100 * (len(lags) - 1)))] * 1000, 2) if lags else None

        return {
            "interval_ms": self.interval * 1000,
            "current_ms": round(self.current * 1000, 2),
            "count": len(lags),
            "p50_ms": pct(50),
            "p99_ms": pct(99),
            "max_ms": round(lags[-1] * 1000, 2) if lags else None,
            "samples": [[round(t, 3), round(lag * 1000, 2)] for t, lag in kept],
        }
