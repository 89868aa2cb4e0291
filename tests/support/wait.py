"""Bounded polling: ``await wait_until(lambda: cond, timeout=5)`` instead of sleeps."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, overload

T = TypeVar("T")


class WaitTimeout(TimeoutError):
    """A polled condition did not hold in time; ``last`` is the last value the predicate returned."""

    def __init__(self, message: str, last: object = None) -> None:
        super().__init__(message)
        self.last = last


@overload
async def wait_until(
    predicate: Callable[[], Awaitable[T]], *, timeout: float = ..., interval: float = ...,
    message: str | Callable[[], str] = ...,
) -> T: ...


@overload
async def wait_until(
    predicate: Callable[[], T], *, timeout: float = ..., interval: float = ...,
    message: str | Callable[[], str] = ...,
) -> T: ...


async def wait_until(
    predicate: Callable[[], Any],
    *,
    timeout: float = 10.0,
    interval: float = 0.05,
    message: str | Callable[[], str] = "condition",
) -> Any:
    """Poll ``predicate`` (sync or async) until it returns something truthy; return that value.

    Exceptions raised by the predicate propagate immediately (so a dead process can fail fast).
    Raises :class:`WaitTimeout` after ``timeout`` seconds, mentioning the last value seen.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last: object = None
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        last = value
        if loop.time() >= deadline:
            what = message() if callable(message) else message
            raise WaitTimeout(f"timed out after {timeout}s waiting for {what} (last value: {last!r})", last)
        await asyncio.sleep(min(interval, max(0.0, deadline - loop.time())))
