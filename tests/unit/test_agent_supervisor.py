"""The Envoy supervisor with a stand-in "envoy" (a shell script): restarts, stop, SIGKILL, exit codes."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from pathlib import Path

import pytest

from istiod_lite.agent.supervisor import EXIT_FAILED, EXIT_OK, EnvoySupervisor, SupervisorOptions, describe_exit

# Sets the behaviour's SIGTERM trap first (a test may send SIGTERM as soon as the admin address
# exists), writes the admin address like Envoy, logs each start, then behaves as BEHAVIOUR says.
_PRELUDE = """#!/bin/sh
{trap}
while [ $# -gt 0 ]; do
  if [ "$1" = "--admin-address-path" ]; then echo "127.0.0.1:15000" > "$2"; fi
  shift
done
echo $$ >> "{starts}"
"""
BEHAVIOUR = {
    "run": "while true; do sleep 0.02; done\n",
    "crash": "exit 3\n",
    "stubborn": "while true; do sleep 0.02; done\n",
    # Crash on the first start only.
    "crash-once": "if [ $(wc -l < \"{starts}\") -le 1 ]; then exit 3; fi\n"
                  "while true; do sleep 0.02; done\n",
}
TRAP = {"run": "trap 'exit 0' TERM", "stubborn": "trap '' TERM", "crash-once": "trap 'exit 0' TERM"}


def fake_envoy(tmp_path: Path, behaviour: str) -> tuple[Path, Path]:
    starts = tmp_path / "starts"
    script = tmp_path / f"envoy-{behaviour}"
    text = _PRELUDE.replace("{trap}", TRAP.get(behaviour, "")) + BEHAVIOUR[behaviour]
    script.write_text(text.replace("{starts}", str(starts)))
    script.chmod(0o755)
    return script, starts


def options(tmp_path: Path, binary: Path, **kw: object) -> SupervisorOptions:
    defaults: dict[str, object] = {
        "bootstrap_path": tmp_path / "bootstrap.json",
        "admin_address_path": tmp_path / "admin_address",
        "pid_path": tmp_path / "envoy.pid",
        "restart_initial_backoff": 0.01,
        "restart_max_backoff": 0.05,
        "drain_timeout": 2.0,
    }
    defaults.update(kw)
    return SupervisorOptions(binary=str(binary), **defaults)  # type: ignore[arg-type]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def wait_for(predicate: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


async def test_runs_until_stopped(tmp_path: Path) -> None:
    binary, starts = fake_envoy(tmp_path, "run")
    sup = EnvoySupervisor(options(tmp_path, binary))
    stop = asyncio.Event()
    task = asyncio.create_task(sup.run(stop))
    await wait_for(lambda: sup.pid is not None and (tmp_path / "envoy.pid").exists())
    pid = sup.pid
    assert pid is not None and int((tmp_path / "envoy.pid").read_text()) == pid
    await wait_for(lambda: sup.admin_address() == "127.0.0.1:15000")
    assert "--disable-hot-restart" in sup.command()
    stop.set()
    assert await asyncio.wait_for(task, 5) == EXIT_OK
    assert not alive(pid)
    assert sup.process is not None and sup.process.returncode == 0  # SIGTERM was enough
    assert not (tmp_path / "envoy.pid").exists()
    assert len(starts.read_text().split()) == 1


async def test_restarts_after_a_crash(tmp_path: Path) -> None:
    binary, _ = fake_envoy(tmp_path, "crash-once")
    sup = EnvoySupervisor(options(tmp_path, binary))
    stop = asyncio.Event()
    task = asyncio.create_task(sup.run(stop))
    await wait_for(lambda: sup.starts == 2 and sup.pid is not None)
    await asyncio.sleep(0.1)
    assert sup.starts == 2 and sup.restarts == 1
    stop.set()
    assert await asyncio.wait_for(task, 5) == EXIT_OK


async def test_crash_loop_gives_up_after_max_restarts(tmp_path: Path) -> None:
    binary, starts = fake_envoy(tmp_path, "crash")
    sup = EnvoySupervisor(options(tmp_path, binary, max_restarts=3))
    assert await asyncio.wait_for(sup.run(asyncio.Event()), 10) == EXIT_FAILED
    assert sup.starts == 4
    assert sup._backoff.failures == 3  # 3 delays, each longer than the last (up to the cap)
    assert len(starts.read_text().split()) == 4


async def test_stable_run_resets_backoff(tmp_path: Path) -> None:
    binary, _ = fake_envoy(tmp_path, "crash")
    sup = EnvoySupervisor(options(tmp_path, binary, max_restarts=3, stable_after=0.0))
    assert await asyncio.wait_for(sup.run(asyncio.Event()), 10) == EXIT_FAILED
    assert sup._backoff.failures <= 1  # reset before every delay: each run counted as stable


async def test_sigkill_after_drain_timeout(tmp_path: Path) -> None:
    binary, _ = fake_envoy(tmp_path, "stubborn")
    sup = EnvoySupervisor(options(tmp_path, binary, drain_timeout=0.3))
    stop = asyncio.Event()
    task = asyncio.create_task(sup.run(stop))
    await wait_for(lambda: sup.pid is not None and sup.admin_address() is not None)
    await asyncio.sleep(0.1)  # let the script install its trap
    pid = sup.pid
    started = time.monotonic()
    stop.set()
    assert await asyncio.wait_for(task, 5) == EXIT_OK
    assert time.monotonic() - started >= 0.3
    assert sup.process is not None and sup.process.returncode == -9
    assert pid is not None and not alive(pid)


async def test_cancelled_supervisor_leaves_no_envoy(tmp_path: Path) -> None:
    binary, _ = fake_envoy(tmp_path, "run")
    sup = EnvoySupervisor(options(tmp_path, binary))
    task = asyncio.create_task(sup.run(asyncio.Event()))
    await wait_for(lambda: sup.pid is not None)
    pid = sup.pid
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert pid is not None and not alive(pid)


async def test_missing_binary_fails(tmp_path: Path) -> None:
    sup = EnvoySupervisor(options(tmp_path, tmp_path / "no-such-envoy"))
    assert await sup.run(asyncio.Event()) == EXIT_FAILED


def test_command_carries_the_drain_settings(tmp_path: Path) -> None:
    cmd = EnvoySupervisor(options(tmp_path, tmp_path / "envoy", drain_time=45, drain_strategy="immediate")).command()
    assert cmd[cmd.index("--drain-time-s") + 1] == "45"
    assert cmd[cmd.index("--drain-strategy") + 1] == "immediate"
    # Unset: Envoy's own defaults (600 s, gradual), nothing on the command line.
    plain = EnvoySupervisor(options(tmp_path, tmp_path / "envoy")).command()
    assert "--drain-time-s" not in plain and "--drain-strategy" not in plain


class FakeAdmin:
    """Envoy's admin port, as far as the drain goes: records each request line, answers 200."""

    def __init__(self) -> None:
        self.requests: list[bytes] = []
        self.port = 0
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> FakeAdmin:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.requests.append((await reader.readline()).strip())
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nOK\n")
        await writer.drain()
        writer.close()


async def test_stop_drains_listeners_then_terminates(tmp_path: Path) -> None:
    binary, _ = fake_envoy(tmp_path, "run")
    async with FakeAdmin() as admin:
        sup = EnvoySupervisor(options(tmp_path, binary, termination_drain=0.4))
        stop = asyncio.Event()
        task = asyncio.create_task(sup.run(stop))
        await wait_for(lambda: sup.pid is not None and sup.admin_address() is not None)
        (tmp_path / "admin_address").write_text(f"127.0.0.1:{admin.port}\n")  # the fake wrote 15000
        pid = sup.pid
        started = time.monotonic()
        stop.set()
        await wait_for(lambda: admin.requests)
        assert admin.requests == [b"POST /drain_listeners?graceful HTTP/1.1"]
        assert pid is not None and alive(pid)  # Envoy keeps serving while its listeners drain
        assert await asyncio.wait_for(task, 5) == EXIT_OK
        assert time.monotonic() - started >= 0.4  # the whole termination drain
        assert sup.process is not None and sup.process.returncode == 0  # then SIGTERM
        assert not alive(pid)


async def test_unreachable_admin_still_waits_then_terminates(tmp_path: Path) -> None:
    binary, _ = fake_envoy(tmp_path, "run")
    sup = EnvoySupervisor(options(tmp_path, binary, termination_drain=0.2))
    stop = asyncio.Event()
    task = asyncio.create_task(sup.run(stop))
    await wait_for(lambda: sup.pid is not None and sup.admin_address() is not None)
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        (tmp_path / "admin_address").write_text(f"127.0.0.1:{s.getsockname()[1]}\n")
    stop.set()
    assert await asyncio.wait_for(task, 5) == EXIT_OK
    assert sup.process is not None and sup.process.returncode == 0


def test_describe_exit() -> None:
    assert describe_exit(0) == "exit code 0"
    assert describe_exit(-9) == "killed by SIGKILL"
    assert describe_exit(-200) == "killed by signal 200"
