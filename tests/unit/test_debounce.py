"""Debounce: quiet period, maximum delay, merging (pure ``due_in`` with a fake clock, plus a run)."""

from __future__ import annotations

import asyncio

import pytest

from istiod_lite.controlplane.debounce import DebounceOptions, Debouncer


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def _noop(_batch: set[str], _t: float) -> None:
    return None


def test_quiet_period_restarts_on_each_event_but_max_delay_caps_it() -> None:
    clock = FakeClock()
    d: Debouncer[set[str]] = Debouncer(_noop, lambda a, b: a | b, DebounceOptions(quiet=0.1, max_delay=1.0), clock)
    assert d.due_in(clock.now) is None
    d.add({"a"})
    assert d.due_in(clock.now) == pytest.approx(0.1)
    for _ in range(30):  # an event every 50 ms keeps the quiet period from ever elapsing
        clock.now += 0.05
        d.add({"b"})
    assert d.due_in(clock.now) == 0.0  # ... but 1.5 s > max_delay: flush now


async def test_burst_becomes_one_merged_flush() -> None:
    flushed: list[set[str]] = []

    async def flush(batch: set[str], _t: float) -> None:
        flushed.append(batch)

    d: Debouncer[set[str]] = Debouncer(flush, lambda a, b: a | b, DebounceOptions(quiet=0.05, max_delay=2.0))
    task = asyncio.create_task(d.run())
    try:
        for name in "abcde":
            d.add({name})
            await asyncio.sleep(0.01)
        for _ in range(100):
            if flushed:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)
        assert flushed == [set("abcde")]
    finally:
        task.cancel()


def test_a_settled_batch_is_due_at_once_unless_an_unsettled_one_is_pending_with_it() -> None:
    """The YAML directory already waited for quiet files: no second quiet period for its update;
    merged with a pending unsettled event (e.g. a watch event), the quiet period applies."""
    clock = FakeClock()
    d: Debouncer[set[str]] = Debouncer(_noop, lambda a, b: a | b, DebounceOptions(quiet=0.1, max_delay=1.0), clock)
    d.add({"dir"}, settled=True)
    assert d.due_in(clock.now) == 0.0
    d2: Debouncer[set[str]] = Debouncer(_noop, lambda a, b: a | b, DebounceOptions(quiet=0.1, max_delay=1.0), clock)
    d2.add({"watch"})
    clock.now += 0.05
    d2.add({"dir"}, settled=True)
    assert d2.due_in(clock.now) == pytest.approx(0.1)
