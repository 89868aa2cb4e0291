"""Pause Python's cyclic garbage collector around bulk building of long-lived, acyclic objects.

Why: loading and translating a large config allocates millions of objects that all survive
(models, indexes, protobuf wrappers) and contain no reference cycles.  With the collector on,
every few thousand allocations it traverses the young ones, and each full collection walks
everything built so far: on the 10,000-service scale mesh that cost ~4 s of a ~14 s start
(bench/bench_scale.py).  Reference counting still frees everything that becomes garbage while
paused; only cyclic garbage waits for the collector to resume.

Process-wide (the collector is global): nested pauses keep it off until the outermost one ends,
and a pause never turns on a collector that was off when it started.  Pauses overlapping in two
threads (a directory rebuild in a worker thread while the loop installs a config) may end the
pause early for one of them, which costs time, never correctness: the collector always ends up on.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

__all__ = ["gc_paused"]


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
