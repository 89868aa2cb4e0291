"""Admission of new streams: by what the server is doing now, or (optionally) at a fixed rate.

A reconnect storm (every proxy at once after a restart) must neither starve the event loop nor
be spread out longer than the server needs.  istiod's fixed rate (PILOT_MAX_REQUESTS_PER_SECOND,
25/s here) does the first at the cost of the second: 1000 replicas took 36 s to sync when 4 s of
work was enough.  ``LoadAdmission`` instead follows the load:

* **A bound on streams in their initial sync.**  That is when a stream costs most (every type
  built, written and ACKed); once it is synced it costs only pushes.  A stream holds a ``Ticket``
  from admission until the server sees it synced (``AdsServer``: every type it subscribed to
  answered, and every wildcard type the group has subscribed) or ``sync_timeout`` passes, or it
  closes; the next waiting stream is admitted at once.
* **An event-loop lag guard** (``looplag.py``): while the loop runs later than ``max_lag``, new
  streams wait.  So that a loop slowed by something else (a big config push) cannot lock every
  proxy out, the guard never holds back a stream while no other is syncing: admission always
  makes progress, at worst one stream at a time.

A stream waits (first come, first served) at most ``max_wait`` seconds; then it gets
RESOURCE_EXHAUSTED and retries with backoff, as Envoy and gRPC clients do.  It never hangs.

``TokenBucket`` keeps istiod's fixed rate as an option (``--max-new-streams-per-second``).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import Callable

from istiod_lite.xds.looplag import LoopLagMonitor


class TokenBucket:
    def __init__(self, rate: float, burst: int = 1, clock: Callable[[], float] = time.monotonic) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate
        self.burst = max(1, burst)
        self._clock = clock
        self._tokens = float(self.burst)
        self._last = clock()
        self._lock = asyncio.Lock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now

    async def acquire(self, max_wait: float) -> bool:
        """Take one token, waiting at most ``max_wait`` seconds.  False if none came in time."""
        async with self._lock:  # FIFO-ish: waiters queue on the lock
            self._refill()
            if self._tokens >= 1:
                self._tokens -= 1
                return True
            wait = (1 - self._tokens) / self.rate
            if wait > max_wait:
                return False
            await asyncio.sleep(wait)
            self._refill()
            self._tokens = max(0.0, self._tokens - 1)
            return True


class Ticket:
    """One admitted stream's place among the syncing ones; ``release`` (idempotent) frees it."""

    def __init__(self, owner: LoadAdmission | None) -> None:
        self._owner = owner
        self._timer: asyncio.TimerHandle | None = None

    @property
    def held(self) -> bool:
        return self._owner is not None

    def release(self) -> None:
        owner, self._owner = self._owner, None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if owner is not None:
            owner._released()


#: A ticket that holds nothing (admission off).
FREE = Ticket(None)


class LoadAdmission:
    """Admits a stream when fewer than ``max_syncing`` are syncing and the loop lag is below
    ``max_lag`` (0 turns either check off); ``admit`` waits up to ``max_wait`` for that."""

    def __init__(self, *, max_syncing: int, max_lag: float, lag: LoopLagMonitor | None,
                 sync_timeout: float) -> None:
        self.max_syncing = max(0, max_syncing)
        self.max_lag = max_lag if lag is not None else 0.0
        self.lag = lag
        self.sync_timeout = sync_timeout
        self.syncing = 0
        self.refused = 0
        #: Set by ``close`` (the server is draining): every stream is refused from then on.
        self.closed = False
        #: Waiters, first come first served within each class; authenticated ones go first.
        self._waiters: collections.deque[asyncio.Future[Ticket | None]] = collections.deque()
        self._priority: collections.deque[asyncio.Future[Ticket | None]] = collections.deque()
        if lag is not None and self.max_lag > 0:
            lag.listeners.append(self._dispatch)  # lag back under the threshold: admit waiters

    @property
    def waiting(self) -> int:
        return sum(1 for q in (self._priority, self._waiters) for w in q if not w.done())

    def close(self) -> None:
        """Refuse every waiting and future stream (shutdown): a waiter would otherwise sit out its
        whole ``max_wait`` on a server that is about to go, instead of retrying elsewhere now."""
        self.closed = True
        for queue in (self._priority, self._waiters):
            while queue:
                waiter = queue.popleft()
                if not waiter.done():
                    waiter.set_result(None)

    def _room(self) -> bool:
        if self.closed:
            return False
        if self.max_syncing and self.syncing >= self.max_syncing:
            return False
        # The lag guard never blocks the only candidate: progress even when something else is slow.
        return not (self.max_lag > 0 and self.syncing > 0 and self.lag is not None
                    and self.lag.current > self.max_lag)

    def _grant(self) -> Ticket:
        self.syncing += 1
        ticket = Ticket(self)
        if self.sync_timeout > 0:
            ticket._timer = asyncio.get_running_loop().call_later(self.sync_timeout, ticket.release)
        return ticket

    def _released(self) -> None:
        self.syncing -= 1
        self._dispatch()

    def _dispatch(self) -> None:
        for queue in (self._priority, self._waiters):
            while queue and self._room():
                waiter = queue.popleft()
                if not waiter.done():
                    waiter.set_result(self._grant())

    async def admit(self, max_wait: float, *, priority: bool = False) -> Ticket | None:
        """A ticket once there is room, or ``None`` after ``max_wait`` seconds (refuse the stream).

        ``priority`` (authenticated streams): admitted before every waiting unauthenticated one."""
        if self.closed:
            return None
        ahead = self._priority if priority else (self._priority or self._waiters)
        if not ahead and self._room():
            return self._grant()
        waiter: asyncio.Future[Ticket | None] = asyncio.get_running_loop().create_future()
        (self._priority if priority else self._waiters).append(waiter)
        try:
            await asyncio.wait({waiter}, timeout=max(0.0, max_wait))
        except asyncio.CancelledError:  # the stream went away while waiting
            if waiter.done() and not waiter.cancelled():
                ticket = waiter.result()
                if ticket is not None:
                    ticket.release()
            else:
                waiter.cancel()
                self._forget(waiter)
            raise
        if not waiter.done():
            waiter.cancel()
            self._forget(waiter)
            self.refused += 1
            return None
        return waiter.result()  # None: closed while waiting

    def _forget(self, waiter: asyncio.Future[Ticket | None]) -> None:
        for queue in (self._priority, self._waiters):
            with contextlib.suppress(ValueError):  # already taken by ``_dispatch``
                queue.remove(waiter)
