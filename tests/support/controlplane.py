"""Start istiod-lite for a test: in-process (fast, inspectable) or as a subprocess (the real CLI)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp

from istiod_lite.ca.config import CaConfig
from istiod_lite.controlplane.app import ControlPlane, ControlPlaneOptions
from istiod_lite.controlplane.debounce import DebounceOptions
from istiod_lite.controlplane.proxykinds import PROXY_KINDS, ProxyKind, WaypointGenerator
from istiod_lite.model.meshconfig import MeshConfig
from istiod_lite.translator.binding.waypoints import WaypointRef
from istiod_lite.translator.clusters.dynamic_dns import DEFAULT_OPTIONS, DynamicDnsOptions
from istiod_lite.xds.resources import VersionedResource
from tests.support.ports import free_port


@contextlib.asynccontextmanager
async def control_plane(
    config_dir: Path, *, quiet: float = 0.05, ca_dir: Path | None = None, plaintext: bool = True,
    mesh: MeshConfig | None = None, proxy_kinds: Sequence[ProxyKind[Any]] = PROXY_KINDS,
    dynamic_dns: DynamicDnsOptions = DEFAULT_OPTIONS,
) -> AsyncIterator[ControlPlane]:
    """An in-process control plane on ephemeral loopback ports, polling the directory quickly.

    With ``ca_dir``: the CA and the secure (TLS, authenticated) xDS port too (``cp.secure_port``).
    ``proxy_kinds``: the kinds of proxy it serves (a test may register its own); ``dynamic_dns``:
    the server's DYNAMIC_DNS options (``serve --enable-wildcard-host-service-entries-for-tls``,
    ``--dynamic-dns-resolver``).
    """
    cp = ControlPlane(
        ControlPlaneOptions(
            config_dir=config_dir,
            grpc_addr="127.0.0.1:0" if plaintext else "",
            monitoring_addr="127.0.0.1:0",
            poll_interval=0.05,
            debounce=DebounceOptions(quiet=quiet, max_delay=2.0),
            ca=CaConfig(ca_dir=ca_dir) if ca_dir is not None else None,
            secure_grpc_addr="127.0.0.1:0" if ca_dir is not None else "",
            mesh=mesh,
            dynamic_dns=dynamic_dns,
        ),
        proxy_kinds=proxy_kinds,
    )
    await cp.start()
    try:
        yield cp
    finally:
        await cp.stop(grace=0)


def waypoint_resources(cp: ControlPlane) -> dict[WaypointRef, dict[str, list[VersionedResource]]]:
    """Per waypoint in the config: what the control plane serves every proxy of it (all but
    ``connect_terminate``), by type URL."""
    gen = cp.proxies.generator("waypoint")
    assert isinstance(gen, WaypointGenerator)
    return gen.shared


class ServerProcess:
    """``istiod-lite serve`` as a child process; ``grpc_port``/``monitoring_port`` are free ports."""

    def __init__(self, config_dir: Path, log_path: Path, extra_args: Sequence[str] = ()) -> None:
        self.config_dir = config_dir
        self.log_path = log_path
        self.extra_args = tuple(extra_args)
        self.grpc_port = free_port()
        self.monitoring_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    async def start(self, timeout: float = 20.0) -> None:
        cmd = [
            sys.executable, "-m", "istiod_lite.cli.main", "serve", "--config", str(self.config_dir),
            "--grpc-addr", f"127.0.0.1:{self.grpc_port}", "--monitoring-addr", f"127.0.0.1:{self.monitoring_port}",
            "--debounce-quiet", "0.05", *self.extra_args,
        ]
        log = open(self.log_path, "ab")  # noqa: SIM115 (closed by the child's lifetime)
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ})
        deadline = asyncio.get_running_loop().time() + timeout
        async with aiohttp.ClientSession() as http:
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"istiod-lite exited with {self.proc.returncode}:\n{self.log_tail()}")
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(f"http://127.0.0.1:{self.monitoring_port}/ready") as r:
                        if r.status == 200:
                            return
                if asyncio.get_running_loop().time() > deadline:
                    raise TimeoutError(f"istiod-lite not ready after {timeout}s:\n{self.log_tail()}")
                await asyncio.sleep(0.1)

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    async def terminate(self, timeout: float = 30.0) -> int | None:
        """SIGTERM (the server drains, then exits) and wait up to ``timeout`` for the exit code;
        None if it had to be killed."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        deadline = asyncio.get_running_loop().time() + timeout
        while self.proc.poll() is None:
            if asyncio.get_running_loop().time() > deadline:
                self.proc.kill()
                self.proc.wait()
                return None
            await asyncio.sleep(0.05)
        return self.proc.returncode

    async def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            await self.terminate(15.0)
