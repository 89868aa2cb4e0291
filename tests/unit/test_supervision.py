"""A background task of the control plane that dies is reported at once and fails ``/ready``."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import aiohttp
import pytest

from istiod_lite.controlplane.app import ControlPlane, ControlPlaneOptions
from istiod_lite.controlplane.supervision import TaskSupervisor
from istiod_lite.model import ConfigSnapshot
from istiod_lite.sources import SourceUpdate
from tests.support.wait import wait_until


class CrashingSource:
    """Loads an empty config; its watch loop raises once ``crash`` is set."""

    def __init__(self) -> None:
        self.crash = asyncio.Event()
        self._update = SourceUpdate(snapshot=ConfigSnapshot(), changed=frozenset(), errors=(), revision=1)

    @property
    def current(self) -> SourceUpdate | None:
        return self._update

    def load(self) -> SourceUpdate:
        return self._update

    async def run(self, on_update: Callable[[SourceUpdate], Awaitable[None]]) -> None:
        await self.crash.wait()
        raise RuntimeError("watch connection lost for good")


async def _ready_status(port: int) -> int:
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/ready") as resp:
        return resp.status


async def test_a_dead_source_task_fails_ready_and_is_logged_at_once(caplog: pytest.LogCaptureFixture) -> None:
    source = CrashingSource()
    cp = ControlPlane(ControlPlaneOptions(config_dir=None, grpc_addr="127.0.0.1:0", monitoring_addr="127.0.0.1:0"),
                      source=source)
    await cp.start()
    try:
        assert await _ready_status(cp.monitoring_port) == 200
        with caplog.at_level(logging.ERROR, logger="istiod_lite.controlplane.supervision"):
            source.crash.set()
            await wait_until(lambda: not cp.ready, timeout=5, message="the dead task makes the control plane unready")
            assert await _ready_status(cp.monitoring_port) == 503
        died = [r for r in caplog.records if "source" in r.getMessage()]
        assert died and died[0].exc_info is not None and "watch connection lost" in str(died[0].exc_info[1])
    finally:
        await cp.stop(grace=0)  # the failure was reported already: stopping does not raise it again


async def test_supervisor_reports_exceptions_and_early_returns_not_cancellation() -> None:
    sup = TaskSupervisor()

    async def forever() -> None:
        await asyncio.Event().wait()

    async def returns() -> None:
        return None

    sup.spawn(forever(), "forever")
    sup.spawn(returns(), "one-shot", long_running=False)
    await asyncio.sleep(0.01)
    assert sup.healthy
    sup.spawn(returns(), "loop")
    await asyncio.sleep(0.01)
    assert sup.failures == ["loop"]
    await sup.stop()
    assert sup.failures == ["loop"]  # cancelling at stop is not a failure
