"""Background tasks the control plane cannot serve correctly without, watched while they run.

An unobserved asyncio task that dies keeps its exception until someone awaits it: the control
plane would go on serving stale config, report itself ready, and the traceback would surface only
at ``stop()``.  A supervised task that raises is logged at once (with its traceback) and makes
``healthy`` false, which fails ``/ready``; a long-running task that returns early counts as failed too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from typing import Any

log = logging.getLogger(__name__)


class TaskSupervisor:
    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()
        self._long_running: set[asyncio.Task[None]] = set()
        #: Names of the tasks that failed, in order.
        self.failures: list[str] = []

    @property
    def healthy(self) -> bool:
        return not self.failures

    def spawn(self, coro: Coroutine[Any, Any, None], name: str, *, long_running: bool = True) -> asyncio.Task[None]:
        """Run ``coro`` as a supervised task.  ``long_running``: it is meant to run until ``stop``,
        so returning early is a failure as well (else only an exception is)."""
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        if long_running:
            self._long_running.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        long_running = task in self._long_running
        self._long_running.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            log.error("background task %s died; the control plane is not ready", task.get_name(), exc_info=exc)
        elif long_running:
            log.error("background task %s returned early; the control plane is not ready", task.get_name())
        else:
            return
        self.failures.append(task.get_name())

    async def stop(self) -> None:
        """Cancel every running task and wait for it (failures were reported when they happened)."""
        tasks = list(self._tasks)
        self._long_running.clear()  # ending now is what was asked for
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
