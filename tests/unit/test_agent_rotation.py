"""Rotation schedule and retry backoff, on a fake clock (no real sleeping, no CA)."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from istiod_lite.agent.certs import CertificateError, IssuedCertificate
from istiod_lite.agent.rotation import Backoff, CertRotator, RotationPolicy, renewal_time, retry_delay

T0 = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)


@dataclass
class FakeLeaf:
    """Just what ``IssuedCertificate`` reads from a leaf."""

    not_valid_after_utc: dt.datetime
    serial_number: int = 1


def cert(received_at: dt.datetime, ttl: float, serial: int = 1) -> IssuedCertificate:
    leaf = FakeLeaf(received_at + dt.timedelta(seconds=ttl), serial)
    return IssuedCertificate(key_pem=b"", chain_pem=("leaf", "root"), leaf=leaf,  # type: ignore[arg-type]
                             received_at=received_at)


@dataclass
class FakeTime:
    now: dt.datetime = T0
    sleeps: list[float] = field(default_factory=list)
    #: Stop the rotator (raise CancelledError) once this many sleeps happened.
    limit: int = 50

    def clock(self) -> dt.datetime:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        if len(self.sleeps) >= self.limit:
            raise asyncio.CancelledError
        self.now += dt.timedelta(seconds=seconds)

    def at(self) -> float:
        return (self.now - T0).total_seconds()


# -- pure parts ------------------------------------------------------------------------------------
def test_renewal_at_half_life_with_jitter() -> None:
    c = cert(T0, 100)
    policy = RotationPolicy()
    assert renewal_time(c, policy, 0.5) == T0 + dt.timedelta(seconds=50)
    assert renewal_time(c, policy, 0.0) == T0 + dt.timedelta(seconds=45)
    assert renewal_time(c, policy, 1.0) == T0 + dt.timedelta(seconds=55)
    assert renewal_time(c, RotationPolicy(jitter=0), 0.9) == T0 + dt.timedelta(seconds=50)
    # Lifetime counts from receipt: a certificate received late is renewed relative to then.
    late = cert(T0 + dt.timedelta(seconds=10), 100)
    assert renewal_time(late, policy, 0.5) == T0 + dt.timedelta(seconds=60)


def test_backoff_doubles_caps_and_resets() -> None:
    top = Backoff(1, 30, rand=lambda: 1.0)
    assert [top.next_delay() for _ in range(7)] == [1, 2, 4, 8, 16, 30, 30]
    top.reset()
    assert top.next_delay() == 1
    low = Backoff(1, 30, rand=lambda: 0.0)
    assert [low.next_delay() for _ in range(3)] == [0.5, 1, 2]  # equal jitter: never below half
    with pytest.raises(ValueError):
        Backoff(0, 30)
    with pytest.raises(ValueError):
        RotationPolicy(max_backoff=0.5)
    with pytest.raises(ValueError):
        RotationPolicy(grace_ratio=1)


def test_retry_delay_fits_before_expiry() -> None:
    policy = RotationPolicy()
    backoff = Backoff(1, 30, rand=lambda: 1.0)
    for _ in range(6):
        backoff.next_delay()  # at the 30 s cap now
    now = T0 + dt.timedelta(seconds=90)
    assert retry_delay(backoff, cert(T0, 100), now, policy) == 5  # half of the 10 s left
    assert retry_delay(backoff, cert(T0, 100), T0 + dt.timedelta(seconds=99.5), policy) == 1  # floor
    assert retry_delay(backoff, cert(T0, 100), T0 + dt.timedelta(seconds=200), policy) == 30  # expired
    assert retry_delay(backoff, None, now, policy) == 30
    assert retry_delay(backoff, cert(T0, 10_000), now, policy) == 30


# -- the loop on a fake clock ----------------------------------------------------------------------
def fetcher(ft: FakeTime, script: list[str | float]) -> tuple[Callable[[], object], list[float]]:
    """``fetch`` following ``script``: a number = issue a cert with that TTL, "fail" = CertificateError,
    "bug" = an unexpected exception.  Also returns the fake times of each call."""
    calls: list[float] = []

    async def fetch() -> IssuedCertificate:
        calls.append(ft.at())
        step = script.pop(0) if script else 100.0
        if step == "fail":
            raise CertificateError("CA unavailable")
        if step == "bug":
            raise RuntimeError("boom")
        assert isinstance(step, float | int)
        return cert(ft.now, float(step), serial=len(calls))

    return fetch, calls


async def run_rotator(ft: FakeTime, script: list[str | float], policy: RotationPolicy | None = None,
                      rand: float = 0.5) -> tuple[CertRotator, list[float], list[IssuedCertificate]]:
    fetch, calls = fetcher(ft, script)
    published: list[IssuedCertificate] = []
    rotator = CertRotator(fetch, published.append, policy or RotationPolicy(max_sleep=1000),  # type: ignore[arg-type]
                          clock=ft.clock, sleep=ft.sleep, rand=lambda: rand)
    with pytest.raises(asyncio.CancelledError):
        await rotator.run()
    return rotator, calls, published


async def test_renews_at_half_lifetime() -> None:
    ft = FakeTime(limit=4)
    rotator, calls, published = await run_rotator(ft, [100, 100, 100, 100])
    assert calls == [0, 50, 100, 150]
    assert [c.serial for c in published] == [1, 2, 3, 4]
    assert rotator.first_certificate.is_set()
    assert rotator.current is published[-1]


async def test_jitter_moves_the_renewal() -> None:
    ft = FakeTime(limit=3)
    _, calls, _ = await run_rotator(ft, [100, 100, 100], rand=1.0)
    assert calls == [0, 55, 110]


async def test_failures_back_off_then_recover() -> None:
    ft = FakeTime(limit=6)
    rotator, calls, published = await run_rotator(
        ft, ["fail", "fail", "fail", 100, 100], RotationPolicy(jitter=0, max_sleep=1000), rand=1.0)
    # 1, 2, 4 s of backoff before the first certificate; then half-life renewals.
    assert calls[:5] == [0, 1, 3, 7, 57]
    assert rotator.failures == 3
    assert [c.serial for c in published][:2] == [4, 5]
    assert rotator.first_certificate.is_set()


async def test_backoff_resets_after_success() -> None:
    ft = FakeTime(limit=6)
    _, calls, _ = await run_rotator(ft, ["fail", "fail", 100, "fail", 100],
                                    RotationPolicy(jitter=0, max_sleep=1000), rand=1.0)
    assert calls[:5] == [0, 1, 3, 53, 54]


async def test_retries_fit_before_expiry_and_replace_an_expired_cert() -> None:
    ft = FakeTime(limit=15)
    policy = RotationPolicy(jitter=0, max_sleep=1000)
    script: list[str | float] = [20.0, *["fail"] * 12, 20.0]
    _, calls, published = await run_rotator(ft, script, policy, rand=1.0)
    # Renewal due at 10 s; the backoff (1, 2, 4 ...) is capped at half the remaining life, so
    # several attempts happen before the expiry at 20 s ...
    assert calls[:8] == [0, 10, 11, 13, 16.5, 18.25, 19.25, 20.25]
    # ... after it, retries go on at the 30 s cap, and the first success replaces the expired cert.
    assert calls[8:14] == [50.25, 80.25, 110.25, 140.25, 170.25, 200.25]
    assert [c.serial for c in published][:2] == [1, 14]
    assert not published[1].expired(T0 + dt.timedelta(seconds=calls[13]))


async def test_unexpected_errors_are_retried() -> None:
    ft = FakeTime(limit=3)
    rotator, calls, published = await run_rotator(ft, ["bug", 100], RotationPolicy(jitter=0, max_sleep=1000),
                                                  rand=1.0)
    assert calls[:2] == [0, 1]
    assert published and rotator.failures == 1


async def test_long_waits_are_chunked_against_the_wall_clock() -> None:
    ft = FakeTime(limit=10)
    _, calls, _ = await run_rotator(ft, [1000, 1000], RotationPolicy(jitter=0, max_sleep=60), rand=0.5)
    assert ft.sleeps[:9] == [60.0] * 8 + [20.0]
    assert calls == [0, 500]


async def test_wall_clock_jump_renews_at_once() -> None:
    """A host suspend: the monotonic sleep returns, but the wall clock says the renewal is overdue."""
    ft = FakeTime(limit=5)

    async def suspended_sleep(seconds: float) -> None:
        ft.sleeps.append(seconds)
        if len(ft.sleeps) >= ft.limit:
            raise asyncio.CancelledError
        ft.now += dt.timedelta(seconds=seconds + (3600 if len(ft.sleeps) == 1 else 0))

    fetch, calls = fetcher(ft, [1000, 1000])
    rotator = CertRotator(fetch, lambda c: None, RotationPolicy(jitter=0, max_sleep=60),  # type: ignore[arg-type]
                          clock=ft.clock, sleep=suspended_sleep)
    with pytest.raises(asyncio.CancelledError):
        await rotator.run()
    assert calls[:2] == [0, 3660]  # no second sleep of the stale schedule


async def test_start_and_stop() -> None:
    gate = asyncio.Event()

    async def fetch() -> IssuedCertificate:
        await gate.wait()
        return cert(dt.datetime.now(dt.UTC), 3600)

    published: list[IssuedCertificate] = []
    rotator = CertRotator(fetch, published.append)
    rotator.start()
    await asyncio.sleep(0)
    assert not rotator.first_certificate.is_set()
    gate.set()
    await asyncio.wait_for(rotator.first_certificate.wait(), 2)
    assert len(published) == 1
    await rotator.stop()
    assert rotator.task is None
