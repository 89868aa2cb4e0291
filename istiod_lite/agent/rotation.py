"""When to renew the workload certificate, and what to do when renewal fails.

Policy (docs/agent.md "Rotation"):

* **Renew at half the lifetime, with jitter.**  The lifetime is measured from when the certificate
  was *received* to its NotAfter (Istio's ``SECRET_GRACE_PERIOD_RATIO`` = 0.5 works the same way;
  the CA's 2-minute NotBefore backdating does not count).  The due time is moved by a uniform
  +-``jitter`` (default 10 %) of that half, so replicas started together do not all hit the CA
  in the same second.
* **On failure, retry with exponential backoff** (1 s, 2 s, 4 s ... capped at 30 s, each delay
  scaled by a random factor in [0.5, 1] so retries spread out).  While the current certificate is
  still valid the delay is also capped at half of its remaining life, so several attempts fit
  before it expires; once it has expired the agent keeps retrying at the cap, and the first
  success replaces it at once.  A failure never removes the certificate Envoy holds: an expired
  certificate is replaced, never withdrawn (withdrawing would not make traffic work either).
* **Sleeps are taken in chunks of at most ``max_sleep``** and the due time is re-checked against
  the wall clock, because ``asyncio.sleep`` runs on the monotonic clock, which stops during a
  host suspend while certificates keep expiring in wall-clock time.

Everything time-related is injected (``clock``, ``sleep``, ``rand``) so tests run the schedule on a
fake clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from istiod_lite.agent.certs import CertificateError, IssuedCertificate, utcnow

log = logging.getLogger(__name__)

Clock = Callable[[], dt.datetime]
Sleep = Callable[[float], Awaitable[None]]
Fetch = Callable[[], Awaitable[IssuedCertificate]]
OnCertificate = Callable[[IssuedCertificate], None]


@dataclass(frozen=True)
class RotationPolicy:
    #: Renew when this fraction of the lifetime (from receipt) has passed.
    grace_ratio: float = 0.5
    #: Uniform jitter, as a fraction of the renewal delay (0.1 = +-10 %).
    jitter: float = 0.1
    initial_backoff: float = 1.0
    max_backoff: float = 30.0
    backoff_multiplier: float = 2.0
    #: Longest single sleep before the wall clock is looked at again.
    max_sleep: float = 60.0

    def __post_init__(self) -> None:
        if not 0 < self.grace_ratio < 1:
            raise ValueError("grace_ratio must be in (0, 1)")
        if not 0 <= self.jitter < 1:
            raise ValueError("jitter must be in [0, 1)")
        self.backoff()  # validates the backoff settings

    def backoff(self, rand: Callable[[], float] = random.random) -> Backoff:
        return Backoff(self.initial_backoff, self.max_backoff, self.backoff_multiplier, rand)


def renewal_time(cert: IssuedCertificate, policy: RotationPolicy, rand: float) -> dt.datetime:
    """When to renew ``cert``; ``rand`` in [0, 1) picks the point inside the jitter window."""
    delay = cert.lifetime.total_seconds() * policy.grace_ratio
    delay *= 1 + policy.jitter * (2 * rand - 1)
    return cert.received_at + dt.timedelta(seconds=max(0.0, delay))


class Backoff:
    """Exponential backoff with "equal jitter": each delay is in [d/2, d] for d = initial * m**n,
    d capped at ``maximum`` (also used by the Envoy supervisor between restarts)."""

    def __init__(self, initial: float, maximum: float, multiplier: float = 2.0,
                 rand: Callable[[], float] = random.random) -> None:
        if initial <= 0 or maximum < initial or multiplier < 1:
            raise ValueError("backoff must satisfy 0 < initial <= maximum and multiplier >= 1")
        self.initial = initial
        self.maximum = maximum
        self.multiplier = multiplier
        self._rand = rand
        self.failures = 0

    def next_delay(self) -> float:
        ceiling = min(self.maximum, self.initial * self.multiplier ** min(self.failures, 64))
        self.failures += 1
        return ceiling * (0.5 + 0.5 * self._rand())

    def reset(self) -> None:
        self.failures = 0


def retry_delay(backoff: Backoff, current: IssuedCertificate | None, now: dt.datetime,
                policy: RotationPolicy) -> float:
    """Delay before the next attempt after a failure: the backoff, but never so long that a
    still-valid certificate expires before we try again (at most half its remaining life, and no
    less than ``initial_backoff`` so a dying CA is not hammered)."""
    delay = backoff.next_delay()
    if current is not None and not current.expired(now):
        remaining = (current.not_after - now).total_seconds()
        delay = min(delay, max(policy.initial_backoff, remaining / 2))
    return delay


class CertRotator:
    """Keeps a valid certificate: fetch, hand to ``on_certificate``, sleep until due, repeat.

    ``first_certificate`` is set after the first success (the supervisor starts Envoy only then).
    ``run`` never returns on its own; cancel it (``stop``) to end.
    """

    def __init__(self, fetch: Fetch, on_certificate: OnCertificate, policy: RotationPolicy | None = None, *,
                 clock: Clock = utcnow, sleep: Sleep = asyncio.sleep,
                 rand: Callable[[], float] = random.random) -> None:
        self.policy = policy or RotationPolicy()
        self._fetch = fetch
        self._on_certificate = on_certificate
        self._clock = clock
        self._sleep = sleep
        self._rand = rand
        self._backoff = self.policy.backoff(rand)
        self.current: IssuedCertificate | None = None
        self.first_certificate = asyncio.Event()
        self.issued = 0
        self.failures = 0
        self._task: asyncio.Task[None] | None = None

    async def run(self) -> None:
        while True:
            try:
                cert = await self._fetch()
            except CertificateError as exc:
                await self._after_failure(str(exc))
                continue
            except Exception as exc:  # a bug or an unexpected library error: retry, never die
                log.exception("certificate fetch failed unexpectedly")
                await self._after_failure(repr(exc))
                continue
            self._backoff.reset()
            self.current = cert
            self.issued += 1
            self._on_certificate(cert)
            self.first_certificate.set()
            due = renewal_time(cert, self.policy, self._rand())
            log.info("next certificate rotation at %s (certificate expires %s)", due.isoformat(),
                     cert.not_after.isoformat())
            await self._sleep_until(due)

    async def _after_failure(self, reason: str) -> None:
        self.failures += 1
        now = self._clock()
        delay = retry_delay(self._backoff, self.current, now, self.policy)
        expired = self.current is not None and self.current.expired(now)
        log.warning("certificate request failed (%s%s); retrying in %.1fs", reason,
                    "; the current certificate has EXPIRED" if expired else "", delay)
        await self._sleep_until(now + dt.timedelta(seconds=delay))

    async def _sleep_until(self, due: dt.datetime) -> None:
        while (remaining := (due - self._clock()).total_seconds()) > 0:
            await self._sleep(min(remaining, self.policy.max_sleep))

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self.run(), name="cert-rotator")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                try:
                    await task
                except Exception:  # it died earlier; whoever watched the task has reported it
                    log.debug("rotator had failed", exc_info=True)

    @property
    def task(self) -> asyncio.Task[None] | None:
        return self._task
