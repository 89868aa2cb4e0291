"""Runs Envoy as the agent's child: start, restart after a crash, stop on request.

* Envoy runs with ``--disable-hot-restart`` (no shared memory to clean up, any number of agents per
  host) and writes its bound admin address to ``--admin-address-path``, so ``--admin-port 0``
  works and the real port is logged.
* Envoy gets its own session (``start_new_session``): a Ctrl-C in a terminal reaches only the
  agent, which decides how Envoy stops; otherwise Envoy could exit first and look like a crash.
  On Linux the child also gets ``PR_SET_PDEATHSIG=SIGKILL``, so an agent killed with SIGKILL does
  not leave an orphaned Envoy holding its ports.
* Any exit the agent did not ask for is a crash: Envoy is started again after an exponential
  backoff (1 s doubling to 30 s, jittered); a run of ``stable_after`` seconds resets the backoff.
  ``max_restarts`` (0 = unlimited) bounds a crash loop; when exhausted the agent exits 1.
* Draining (pilot-agent's choice, Istio's ProxyConfig defaults): Envoy runs with
  ``--drain-time-s`` = ``drain_time`` (drainDuration, 45 s) and ``--drain-strategy immediate``.
  When an LDS update replaces a listener or filter chain, every connection on the old one is told
  at once to close (HTTP/1.1: ``Connection: close`` on its next response; HTTP/2: GOAWAY), so
  clients reconnect to the new config instead of keeping the old one for up to the drain time;
  whatever is left on the old chain is closed when the drain time ends.  ``gradual`` (Envoy's
  default) would tell a growing share of them over the drain time.
* Stopping, as pilot-agent: ``POST /drain_listeners?graceful`` on the admin port (listeners drain
  with the strategy above and keep accepting, since clients may still pick this proxy while its
  removal propagates), then ``termination_drain`` seconds (terminationDrainDuration, 5 s) or
  until Envoy exits, then SIGTERM, then SIGKILL if it has not exited after ``drain_timeout``.

Exit codes of ``run``: 0 when stopped on request, 1 when Envoy cannot be started or keeps crashing.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from istiod_lite.agent.rotation import Backoff
from istiod_lite.agent.workdir import write_file

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILED = 1
_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class SupervisorOptions:
    binary: str
    bootstrap_path: Path
    #: Where Envoy writes ``host:port`` of its admin listener (read back by ``admin_address``).
    admin_address_path: Path
    #: The current Envoy PID is written here while Envoy runs (for operators and tests).
    pid_path: Path | None = None
    #: Envoy's stdout/stderr go here (appended); ``None`` inherits the agent's.
    output_path: Path | None = None
    log_level: str = "warning"
    #: Envoy's ``--concurrency``; 0 leaves Envoy's default (one worker per hardware thread).
    concurrency: int = 2
    extra_args: tuple[str, ...] = ()
    #: After SIGTERM, how long Envoy may take to exit before SIGKILL.
    drain_timeout: float = 5.0
    #: Envoy's ``--drain-time-s`` (whole seconds; Istio's ProxyConfig ``drainDuration``, 45 s); 0 = Envoy's default.
    drain_time: int = 0
    #: Envoy's ``--drain-strategy``: ``immediate`` (pilot-agent's) or ``gradual``; "" = Envoy's default.
    drain_strategy: str = ""
    #: On stop, drain the listeners for this long before SIGTERM (Istio's ``terminationDrainDuration``); 0 = no drain.
    termination_drain: float = 0.0
    restart_initial_backoff: float = 1.0
    restart_max_backoff: float = 30.0
    stable_after: float = 60.0
    max_restarts: int = 0


def _death_signal_setter() -> Callable[[], None] | None:
    """A ``preexec_fn`` arming PR_SET_PDEATHSIG, resolved before fork so the child only makes the
    call.  Only from the main thread: the signal fires when the *forking thread* exits."""
    if sys.platform != "linux" or threading.current_thread() is not threading.main_thread():
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None

    def arm() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)

    return arm


def describe_exit(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit code {returncode}"


class EnvoySupervisor:
    """Keeps one Envoy running until ``run``'s stop event is set."""

    def __init__(self, options: SupervisorOptions, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.options = options
        self._clock = clock
        self._backoff = Backoff(options.restart_initial_backoff, options.restart_max_backoff)
        self.process: asyncio.subprocess.Process | None = None
        self.starts = 0
        self.restarts = 0

    def command(self) -> list[str]:
        o = self.options
        return [
            o.binary, "-c", str(o.bootstrap_path),
            "--disable-hot-restart",
            "--admin-address-path", str(o.admin_address_path),
            "-l", o.log_level,
            *(("--concurrency", str(o.concurrency)) if o.concurrency > 0 else ()),
            *(("--drain-time-s", str(o.drain_time)) if o.drain_time > 0 else ()),
            *(("--drain-strategy", o.drain_strategy) if o.drain_strategy else ()),
            *o.extra_args,
        ]

    @property
    def pid(self) -> int | None:
        proc = self.process
        return proc.pid if proc is not None and proc.returncode is None else None

    def admin_address(self) -> str | None:
        """``host:port`` of the running Envoy's admin listener, once it has bound."""
        try:
            text = self.options.admin_address_path.read_text().strip()
        except OSError:
            return None
        return text or None

    async def _spawn(self) -> asyncio.subprocess.Process:
        o = self.options
        o.admin_address_path.unlink(missing_ok=True)
        kwargs: dict[str, Any] = {"stdin": asyncio.subprocess.DEVNULL, "start_new_session": True}
        preexec = _death_signal_setter()
        if preexec is not None:
            kwargs["preexec_fn"] = preexec
        out = open(o.output_path, "ab") if o.output_path is not None else None  # noqa: SIM115 (closed below)
        try:
            if out is not None:
                kwargs.update(stdout=out, stderr=asyncio.subprocess.STDOUT)
            proc = await asyncio.create_subprocess_exec(*self.command(), **kwargs)
        finally:
            if out is not None:
                out.close()  # the child holds its own descriptor
        self.process = proc
        self.starts += 1
        if o.pid_path is not None:
            write_file(o.pid_path, f"{proc.pid}\n".encode(), mode=0o644)
        log.info("Envoy started (pid %d): %s", proc.pid, " ".join(self.command()))
        return proc

    async def run(self, stop: asyncio.Event) -> int:
        """Run Envoy until ``stop`` is set (then stop it and return 0) or it cannot be kept up (1)."""
        stop_wait = asyncio.create_task(stop.wait(), name="supervisor-stop")
        try:
            while not stop.is_set():
                try:
                    proc = await self._spawn()
                except OSError as exc:
                    log.error("cannot start Envoy (%s): %s", self.options.binary, exc)
                    return EXIT_FAILED
                started = self._clock()
                exited = asyncio.create_task(proc.wait(), name="envoy-wait")
                await asyncio.wait({exited, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
                if stop.is_set():
                    exited.cancel()
                    await self._terminate(proc)
                    return EXIT_OK
                returncode = exited.result()
                ran = self._clock() - started
                self._clear_pid()
                if ran >= self.options.stable_after:
                    self._backoff.reset()
                self.restarts += 1
                limit = self.options.max_restarts
                if limit and self.restarts > limit:
                    log.error("Envoy exited (%s) after %.1fs; %d restarts used up, giving up",
                              describe_exit(returncode), ran, limit)
                    return EXIT_FAILED
                delay = self._backoff.next_delay()
                log.warning("Envoy exited unexpectedly (%s) after %.1fs; restarting in %.1fs",
                            describe_exit(returncode), ran, delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(stop_wait), timeout=delay)
            return EXIT_OK
        finally:
            stop_wait.cancel()
            proc_now = self.process
            if proc_now is not None and proc_now.returncode is None:
                # Cancelled (or an error) while Envoy runs: never leave it behind.
                await asyncio.shield(self._terminate(proc_now))

    async def drain_listeners(self) -> bool:
        """``POST /drain_listeners?graceful`` on Envoy's admin port; False if Envoy did not take it."""
        address = self.admin_address()
        if address is None:
            return False
        host, _, port = address.rpartition(":")
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host.strip("[]"), int(port)), 2.0)
        except (OSError, ValueError, TimeoutError) as exc:
            log.warning("cannot drain Envoy's listeners (admin %s): %s", address, exc)
            return False
        try:
            writer.write(f"POST /drain_listeners?graceful HTTP/1.1\r\nHost: {address}\r\n"
                         "Content-Length: 0\r\nConnection: close\r\n\r\n".encode())
            status = await asyncio.wait_for(reader.readline(), 2.0)
        except (OSError, TimeoutError) as exc:
            log.warning("cannot drain Envoy's listeners (admin %s): %s", address, exc)
            return False
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        ok = status.split(b" ")[1:2] == [b"200"]
        if not ok:
            log.warning("Envoy refused to drain its listeners: %r", status.strip())
        return ok

    async def _drain(self, proc: asyncio.subprocess.Process) -> None:
        """Drain the listeners, then give clients ``termination_drain`` seconds (or until Envoy exits)."""
        wait = self.options.termination_drain
        if wait <= 0 or proc.returncode is not None:
            return
        drained = await self.drain_listeners()
        log.info("draining Envoy's listeners (%s) for %.1fs before SIGTERM", "started" if drained else "failed", wait)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(proc.wait()), timeout=wait)

    async def _terminate(self, proc: asyncio.subprocess.Process) -> None:
        await self._drain(proc)
        if proc.returncode is None:
            log.info("stopping Envoy (pid %d): SIGTERM, SIGKILL after %.0fs", proc.pid, self.options.drain_timeout)
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), timeout=self.options.drain_timeout)
            except TimeoutError:
                log.warning("Envoy (pid %d) still running after %.0fs; SIGKILL", proc.pid,
                            self.options.drain_timeout)
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
            log.info("Envoy (pid %d) stopped: %s", proc.pid, describe_exit(proc.returncode or 0))
        self._clear_pid()

    def _clear_pid(self) -> None:
        if self.options.pid_path is not None:
            self.options.pid_path.unlink(missing_ok=True)

