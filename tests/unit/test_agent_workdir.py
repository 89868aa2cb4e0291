"""A user-supplied ``--work-dir`` is never written through a symlink, and a work dir that is a
symlink or that another user can write into is refused (issue 14, finding 6c)."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

import pytest

from istiod_lite.agent.bootstrap import WaypointIdentity
from istiod_lite.agent.runner import AgentConfig, EnvoySettings, WaypointAgent


def _config(work_dir: Path) -> AgentConfig:
    return AgentConfig(identity=WaypointIdentity(name="wp", namespace="ns1"), token_file=work_dir / "t",
                       xds_address="127.0.0.1:1", ca_address="127.0.0.1:1", root_cert=Path("/nonexistent/root.pem"),
                       envoy=EnvoySettings(binary="/bin/true"), work_dir=work_dir)


async def _refused(work_dir: Path, caplog: pytest.LogCaptureFixture) -> str:
    caplog.set_level(logging.ERROR)
    agent = WaypointAgent(_config(work_dir))
    assert await asyncio.wait_for(agent.run(asyncio.Event()), 5) == 1
    return "\n".join(r.getMessage() for r in caplog.records)


async def test_a_work_dir_that_is_a_symlink_is_refused(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    target = tmp_path / "elsewhere"
    target.mkdir(mode=0o700)
    (tmp_path / "wd").symlink_to(target)
    assert "symbolic link" in await _refused(tmp_path / "wd", caplog)
    assert list(target.iterdir()) == []


async def test_a_work_dir_others_can_write_is_refused(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    wd = tmp_path / "wd"
    wd.mkdir()
    os.chmod(wd, 0o777)
    assert "writable by other users" in await _refused(wd, caplog)
    assert list(wd.iterdir()) == []


def test_bootstrap_is_not_written_through_a_planted_symlink(tmp_path: Path) -> None:
    wd = tmp_path / "wd"
    wd.mkdir(mode=0o700)
    victim = tmp_path / "victim"
    victim.write_text("precious")
    agent = WaypointAgent(_config(wd))
    for planted in ("bootstrap.json.tmp", "bootstrap.json"):
        (wd / planted).symlink_to(victim)
    agent._write_bootstrap()
    assert victim.read_text() == "precious"
    assert not (wd / "bootstrap.json").is_symlink() and b'"node"' in (wd / "bootstrap.json").read_bytes()


def test_pid_file_is_not_written_through_a_planted_symlink(tmp_path: Path) -> None:
    from istiod_lite.agent.workdir import write_file

    victim = tmp_path / "victim"
    victim.write_text("precious")
    (tmp_path / "envoy.pid").symlink_to(victim)
    (tmp_path / "envoy.pid.tmp").symlink_to(victim)
    write_file(tmp_path / "envoy.pid", b"123\n", mode=0o644)
    assert victim.read_text() == "precious"
    assert (tmp_path / "envoy.pid").read_text() == "123\n" and not (tmp_path / "envoy.pid").is_symlink()
