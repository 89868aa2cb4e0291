"""``HboneProxy``: one Envoy child running an ``HboneConfig``, with its credentials kept fresh.

::

    async with HboneProxy(config, FileCredentials(cert, key, root)) as proxy:
        print(proxy.outbound_addresses)          # where each tunnel listens (port 0 resolved)
        await proxy.wait()                       # until Envoy exits

Lifecycle: ``start`` gets and checks the credentials, writes them as SDS files and the bootstrap
into a private working directory, starts Envoy, and returns once admin ``/ready`` says every
listener is serving (so a caller's first connection never races the TLS secrets).  Credentials
from the CA are renewed at half their lifetime by a supervised task (an atomic rename of the
secret file, which Envoy reloads in place).  ``stop`` sends SIGTERM, then SIGKILL after a grace
period.  On Linux Envoy also gets ``PR_SET_PDEATHSIG`` so it never outlives a killed parent.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import datetime as dt
import json
import logging
import shutil
import signal
import sys
import tempfile
import threading
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

import aiohttp

from istiod_lite.envoy_binary import envoy_binary
from istiod_lite.hbone.bootstrap import (
    EGRESS_LISTENER,
    hbone_bootstrap,
    inbound_listener_name,
    outbound_listener_name,
)
from istiod_lite.hbone.caclient import CaClient
from istiod_lite.hbone.config import Endpoint, HboneConfig
from istiod_lite.hbone.credentials import Credentials, check, load_files
from istiod_lite.hbone.secrets import write_secrets

log = logging.getLogger(__name__)

#: Retry a failed renewal after this long (doubling up to the maximum), while the old certificate lasts.
RENEW_RETRY_S = (2.0, 60.0)
#: Never renew more often than this, whatever lifetime the CA grants.
MIN_RENEW_INTERVAL_S = 1.0


class HboneError(RuntimeError):
    """Envoy did not start or died; the message carries its log tail."""


class CredentialSource(Protocol):
    """Where certificates come from; ``renewable`` sources are asked again at half-life."""

    renewable: bool

    async def fetch(self) -> Credentials: ...


class FileCredentials:
    """PEM files given by the operator, read once (whoever writes them owns their rotation)."""

    renewable = False

    def __init__(self, cert: Path, key: Path, roots: Path) -> None:
        self.cert, self.key, self.roots = cert, key, roots

    async def fetch(self) -> Credentials:
        return load_files(self.cert, self.key, self.roots)


class CaCredentials:
    """A new key and certificate for ``spiffe_id`` from the CA, on every ``fetch``."""

    renewable = True

    def __init__(self, client: CaClient, spiffe_id: str) -> None:
        self.client, self.spiffe_id = client, spiffe_id

    async def fetch(self) -> Credentials:
        return await self.client.request(self.spiffe_id)


def renewal_delay(credentials: Credentials, fetched_at: dt.datetime, now: dt.datetime) -> float:
    """Seconds until half of the certificate's life *left when we got it* has passed.

    Counted from the fetch, not from NotBefore: CAs backdate NotBefore (Istio by 2 minutes), which
    would put "half-life" in the past for a short-lived certificate and renew it in a loop.
    """
    renew_at = fetched_at + (credentials.not_after - fetched_at) / 2
    return max((renew_at - now).total_seconds(), MIN_RENEW_INTERVAL_S)


def _pdeathsig() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class HboneProxy:
    """One Envoy serving ``config``; see the module docstring for the lifecycle."""

    def __init__(self, config: HboneConfig, credentials: CredentialSource, *, identity: str | None = None,
                 workdir: Path | None = None, concurrency: int = 2, log_level: str = "warning") -> None:
        self.config = config
        self.credentials_source = credentials
        self.identity = identity
        self.concurrency = concurrency
        self.log_level = log_level
        self._own_workdir = workdir is None
        self.workdir = workdir if workdir is not None else Path(tempfile.mkdtemp(prefix="hbone-"))
        self.credentials: Credentials | None = None
        self._fetched_at = dt.datetime.now(dt.UTC)
        self.admin: Endpoint | None = None
        self.listeners: dict[str, Endpoint] = {}
        self._proc: asyncio.subprocess.Process | None = None
        self._renewer: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ credentials

    async def _fetch_checked(self) -> Credentials:
        creds = await self.credentials_source.fetch()
        check(creds, identity=self.identity, san_prefix=self.config.peer_san_prefix)
        return creds

    async def renew(self) -> Credentials:
        """Fetch, check and install new credentials now (Envoy reloads the secret file in place)."""
        creds = await self._fetch_checked()
        write_secrets(self.workdir / "secrets", creds)
        self.credentials, self._fetched_at = creds, dt.datetime.now(dt.UTC)
        return creds

    def renewal_delay(self, now: dt.datetime | None = None) -> float:
        """Seconds until the current certificate should be renewed (see ``renewal_delay``)."""
        assert self.credentials is not None
        return renewal_delay(self.credentials, self._fetched_at, now or dt.datetime.now(dt.UTC))

    async def _renew_forever(self) -> None:
        retry = RENEW_RETRY_S[0]
        delay = self.renewal_delay()
        while True:
            await asyncio.sleep(delay)
            try:
                creds = await self.renew()
            except Exception as exc:  # keep serving with the old certificate; try again
                assert self.credentials is not None
                log.warning("certificate renewal failed (retry in %.0fs; current one expires %s): %s",
                            retry, self.credentials.not_after.isoformat(), exc)
                delay, retry = retry, min(retry * 2, RENEW_RETRY_S[1])
                continue
            log.info("certificate renewed for %s, valid until %s", creds.uri_sans, creds.not_after.isoformat())
            delay, retry = self.renewal_delay(), RENEW_RETRY_S[0]

    # ------------------------------------------------------------------ lifecycle

    @property
    def log_path(self) -> Path:
        return self.workdir / "envoy.log"

    def command(self, bootstrap_path: Path) -> list[str]:
        return [
            envoy_binary(), "-c", str(bootstrap_path), "-l", self.log_level,
            "--log-path", str(self.log_path), "--admin-address-path", str(self.workdir / "admin_address"),
            "--concurrency", str(self.concurrency),
            # Several of these run side by side (tests, one per pod): no shared-memory base id.
            "--disable-hot-restart",
        ]

    async def start(self, timeout: float = 20.0) -> None:
        """Start Envoy and wait until it serves; raises ``HboneError``, ``CredentialError`` or
        ``CaRequestError`` (nothing is left running on failure)."""
        self.workdir.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            self.credentials, self._fetched_at = await self._fetch_checked(), dt.datetime.now(dt.UTC)
            secrets = write_secrets(self.workdir / "secrets", self.credentials)
            bootstrap_path = self.workdir / "bootstrap.json"
            bootstrap_path.write_text(json.dumps(hbone_bootstrap(self.config, secrets), indent=1))
            preexec = _pdeathsig if sys.platform == "linux" and threading.current_thread() is threading.main_thread() \
                else None
            with open(self.workdir / "envoy.stdout", "wb") as out:
                self._proc = await asyncio.create_subprocess_exec(
                    *self.command(bootstrap_path), stdin=asyncio.subprocess.DEVNULL, stdout=out,
                    stderr=asyncio.subprocess.STDOUT, cwd=self.workdir, preexec_fn=preexec,
                    # Own process group: a terminal's Ctrl-C reaches us only, and we stop Envoy
                    # ourselves (otherwise its exit would race our shutdown and look like a crash).
                    start_new_session=True)
            await asyncio.wait_for(self._wait_ready(), timeout)
        except TimeoutError:
            tail = self.log_tail()  # before stop() removes a temporary working directory
            await self.stop()
            raise HboneError(f"Envoy not ready after {timeout}s\n{tail}") from None
        except BaseException:
            await self.stop()
            raise
        if self.credentials_source.renewable:
            self._renewer = asyncio.create_task(self._renew_forever(), name="hbone-renew")

    async def _wait_ready(self) -> None:
        admin_file = self.workdir / "admin_address"
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
            while True:
                if self._proc is None or self._proc.returncode is not None:
                    code = self._proc.returncode if self._proc else None
                    raise HboneError(f"Envoy exited with code {code} while starting\n{self.log_tail()}")
                if self.admin is None and admin_file.exists():
                    with contextlib.suppress(ValueError):
                        self.admin = Endpoint.parse(admin_file.read_text().strip())
                if self.admin is not None:
                    with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                        async with http.get(f"http://{self.admin}/ready") as resp:
                            if resp.status == 200:
                                async with http.get(f"http://{self.admin}/listeners?format=json") as lresp:
                                    self.listeners = _bound_listeners(await lresp.json())
                                return
                await asyncio.sleep(0.03)

    async def wait(self) -> int:
        """Until Envoy exits (returns its exit code) or renewal dies (a bug: raises ``HboneError``).

        Renewal is watched here so that it is never a fire-and-forget task: a proxy whose
        certificate silently stops being renewed would fail an hour or a day later, far from the cause.
        """
        proc, renewer = self._proc, self._renewer  # stop() clears _renewer while we wait
        assert proc is not None, "not started"
        exited = asyncio.ensure_future(proc.wait())
        try:
            watched: set[asyncio.Future[Any]] = {exited} | ({renewer} if renewer else set())
            await asyncio.wait(watched, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not exited.done():
                exited.cancel()
        if exited.done() and not exited.cancelled():
            return exited.result()
        assert renewer is not None
        if renewer.cancelled():  # stop() is under way: it ends Envoy next
            return await proc.wait()
        raise HboneError(f"certificate renewal stopped: {renewer.exception()!r}")

    async def stop(self, grace: float = 5.0) -> int | None:
        """SIGTERM Envoy, SIGKILL after ``grace`` seconds; remove a temporary working directory."""
        if self._renewer is not None:
            self._renewer.cancel()
            # A renewer that died has been reported by wait(); stopping must not fail because of it.
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._renewer
            self._renewer = None
        code: int | None = None
        proc = self._proc
        if proc is not None:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.terminate()
                try:
                    await asyncio.wait_for(proc.wait(), grace)
                except TimeoutError:
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
                    await proc.wait()
            code = proc.returncode
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
        return code

    async def __aenter__(self) -> HboneProxy:
        await self.start()
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.stop()

    # ------------------------------------------------------------------ introspection

    @property
    def outbound_addresses(self) -> list[Endpoint]:
        """Where each outbound tunnel listens, in config order (``:0`` resolved to the bound port)."""
        return [self.listeners[outbound_listener_name(i)] for i in range(len(self.config.outbound))]

    @property
    def egress_address(self) -> Endpoint | None:
        """Where the per-connection egress listener is bound (None: not configured)."""
        return self.listeners[EGRESS_LISTENER] if self.config.egress is not None else None

    @property
    def inbound_addresses(self) -> list[Endpoint]:
        return [self.listeners[inbound_listener_name(i)] for i in range(len(self.config.inbound))]

    def log_tail(self, lines: int = 40) -> str:
        text = ""
        for name in ("envoy.stdout", "envoy.log"):
            with contextlib.suppress(OSError):
                text += (self.workdir / name).read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:]) or "(Envoy logged nothing)"


def _bound_listeners(data: object) -> dict[str, Endpoint]:
    """Listener name -> bound address, from admin ``/listeners?format=json``."""
    out: dict[str, Endpoint] = {}
    statuses = data.get("listener_statuses", []) if isinstance(data, dict) else []
    for status in statuses:
        address = status.get("local_address", {}).get("socket_address")
        if address:
            out[status["name"]] = Endpoint(address["address"], int(address.get("port_value", 0)))
    return out
