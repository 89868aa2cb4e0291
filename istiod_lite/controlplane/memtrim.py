"""Give memory freed after a push wave back to the operating system.

Why: a push to a thousand streams allocates and frees gigabytes of response buffers in Python
and in gRPC's threads.  glibc keeps freed heap pages in its arenas, so resident memory stayed
at the wave's high-water mark: measured 0.35 MB per stream after the initial sync of 1,000
streams, of which 0.21 MB was free memory held by the allocator (bench/bench_xds_push.py).
``malloc_trim(0)`` returns it.  It runs only after at least ``min_bytes`` were sent and writes
have been quiet for a moment, in a worker thread (ctypes drops the GIL during the call).
On a libc without ``malloc_trim`` (musl, macOS) this does nothing.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
from collections.abc import Callable

log = logging.getLogger(__name__)


def _load_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        fn = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_size_t]
    fn.restype = ctypes.c_int
    return fn


class MemoryTrimmer:
    def __init__(self, bytes_sent: Callable[[], int], min_bytes: int = 64 << 20, interval: float = 2.0) -> None:
        self._bytes_sent = bytes_sent
        self._min_bytes = min_bytes
        self._interval = interval
        self._trim = _load_trim()
        self.trims = 0

    async def run(self) -> None:
        if self._trim is None:
            return
        trim = self._trim
        at_last_trim = self._bytes_sent()
        previous = at_last_trim
        while True:
            await asyncio.sleep(self._interval)
            now = self._bytes_sent()
            quiet = now == previous
            previous = now
            if quiet and now - at_last_trim >= self._min_bytes:
                await asyncio.to_thread(trim, 0)
                log.debug("malloc_trim after %d MB sent", (now - at_last_trim) >> 20)
                at_last_trim = now
                self.trims += 1
