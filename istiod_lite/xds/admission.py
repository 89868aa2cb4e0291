"""Admission of new streams: a token bucket, as istiod's PILOT_MAX_REQUESTS_PER_SECOND.

A reconnect storm (every proxy at once after a restart) is spread over time instead of making
every stream compete for the event loop; a stream that cannot get a token within ``max_wait``
gets RESOURCE_EXHAUSTED and retries with backoff, as Envoy and gRPC clients do.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


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
