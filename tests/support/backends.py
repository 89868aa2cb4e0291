"""Real HTTP/1.1 backend "pods": aiohttp servers, each on its own loopback address.

    group = await start_backends(2)                    # pod-1 on 127.0.2.x:P, pod-2 on 127.0.2.y:P
    ...send traffic through Envoy to group.endpoints...
    assert group.counts() == {"pod-1": 10, "pod-2": 10}
    await group.aclose()

Every request, whatever the method or path, is answered with JSON::

    {"pod": "pod-1", "method": "GET", "path": "/a?b=c",        # raw request target, query included
     "headers": {"host": "...", "x-multi": ["1", "2"]},         # lowercase names; repeated -> list
     "body_len": 0, "http_version": "1.1", "remote": "127.0.0.1", "status": 200}

and the response header ``x-pod: <name>``. Behaviour knobs (per pod, changeable with ``configure``):
``status`` (default 200), ``delay`` (seconds, before answering), ``fail_first`` + ``fail_status``
(the first K requests get ``fail_status``: a flaky backend for retry tests), ``fail_every`` (every
Nth request, counted since the last ``reset``, gets ``fail_status``), ``response_headers`` and
``respond`` (an async hook that may return its own response). ``script(Step(...), ...)`` queues
one-off behaviours consumed one per request before the knobs apply (e.g. "first request slow, then
fast"). Per request, the client may also send ``x-echo-status: <code>`` and/or
``x-echo-delay-ms: <ms>`` to override status/delay.

Precedence for one request: ``x-echo-*`` headers > the next scripted ``Step`` > ``fail_first`` >
``fail_every`` > ``status``/``delay``.

Every received request is appended to ``pod.requests`` (before any delay, so timed-out requests are
logged too); ``await pod.wait_for_count(n)`` waits for asynchronous arrivals (e.g. mirrored copies).
``restore()`` returns a pod to its construction-time behaviour and forgets its requests (for
fixtures that share pods between tests). The backend never adds CORS headers of its own: any
``access-control-*`` header a client sees came from the proxy.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.support.ports import alloc_pod_ip, check_loopback

Headers = dict[str, str | list[str]]
RespondHook = Callable[["RequestRecord"], Awaitable[web.StreamResponse | None]]


@dataclass(frozen=True)
class Step:
    """One scripted response: ``None`` fields fall back to the pod's knobs."""

    status: int | None = None
    delay: float | None = None
    headers: dict[str, str] | None = None


@dataclass
class RequestRecord:
    """One request as the backend saw it."""

    pod: str
    method: str
    path: str
    headers: Headers
    body_len: int
    http_version: str
    remote: str | None
    time: float = field(default_factory=time.monotonic)
    status: int | None = None  # the status sent back (None while still being answered / if aborted)
    body: bytes = b""

    def header(self, name: str) -> str | None:
        """First value of a header (case-insensitive), or None."""
        v = self.headers.get(name.lower())
        if isinstance(v, list):
            return v[0] if v else None
        return v

    def header_all(self, name: str) -> list[str]:
        v = self.headers.get(name.lower())
        if v is None:
            return []
        return list(v) if isinstance(v, list) else [v]

    def to_json(self) -> dict[str, Any]:
        return {
            "pod": self.pod, "method": self.method, "path": self.path, "headers": self.headers,
            "body_len": self.body_len, "http_version": self.http_version, "remote": self.remote,
            "status": self.status,
        }


def _headers(req: web.BaseRequest) -> Headers:
    out: Headers = {}
    for k, v in req.headers.items():
        name = k.lower()
        prev = out.get(name)
        if prev is None:
            out[name] = v
        elif isinstance(prev, list):
            prev.append(v)
        else:
            out[name] = [prev, v]
    return out


@dataclass(frozen=True)
class _Knobs:
    """A pod's construction-time behaviour (what ``restore`` returns to)."""

    status: int
    delay: float
    fail_first: int
    fail_status: int
    fail_every: int
    response_headers: dict[str, str]
    respond: RespondHook | None
    keep_body: bool


class BackendPod:
    """One HTTP/1.1 server on ``host:port``. ``port=0`` picks a free one (see ``.port`` after start)."""

    def __init__(
        self,
        name: str,
        host: str | None = None,
        port: int = 0,
        *,
        status: int = 200,
        delay: float = 0.0,
        fail_first: int = 0,
        fail_status: int = 503,
        fail_every: int = 0,
        response_headers: dict[str, str] | None = None,
        respond: RespondHook | None = None,
        keep_body: bool = False,
    ) -> None:
        self.name = name
        self.host = check_loopback(host) if host else alloc_pod_ip()
        self.port = port
        self.status = status
        self.delay = delay
        self.fail_first = fail_first
        self.fail_status = fail_status
        self.response_headers = dict(response_headers or {})
        self.respond = respond
        self.keep_body = keep_body
        self.fail_every = fail_every
        self.requests: list[RequestRecord] = []
        self._failures_left = fail_first
        self._served = 0  # requests handled since the last reset (for ``fail_every``)
        self._script: collections.deque[Step] = collections.deque()
        self._initial = _Knobs(status, delay, fail_first, fail_status, fail_every, dict(response_headers or {}),
                               respond, keep_body)
        self._runner: web.ServerRunner | None = None

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> BackendPod:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self.port))
            sock.setblocking(False)
            self.port = int(sock.getsockname()[1])
            runner = web.ServerRunner(
                web.Server(self._handle, access_log=None), handle_signals=False, shutdown_timeout=0.2
            )
            await runner.setup()
            try:
                await web.SockSite(runner, sock, backlog=512).start()
            except BaseException:
                await runner.cleanup()
                raise
        except BaseException:
            sock.close()
            raise
        self._runner = runner
        return self

    async def aclose(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # ------------------------------------------------------------------ behaviour

    def configure(
        self,
        *,
        status: int | None = None,
        delay: float | None = None,
        fail_first: int | None = None,
        fail_status: int | None = None,
        response_headers: dict[str, str] | None = None,
        respond: RespondHook | None = None,
        fail_every: int | None = None,
        keep_body: bool | None = None,
    ) -> None:
        """Change behaviour at runtime (``fail_first`` restarts the failure countdown)."""
        if status is not None:
            self.status = status
        if delay is not None:
            self.delay = delay
        if fail_first is not None:
            self.fail_first = self._failures_left = fail_first
        if fail_status is not None:
            self.fail_status = fail_status
        if response_headers is not None:
            self.response_headers = dict(response_headers)
        if respond is not None:
            self.respond = respond
        if fail_every is not None:
            self.fail_every = fail_every
        if keep_body is not None:
            self.keep_body = keep_body

    def script(self, *steps: Step) -> None:
        """Queue one-off behaviours, consumed one per request in order (before the other knobs)."""
        self._script.extend(steps)

    @property
    def count(self) -> int:
        return len(self.requests)

    def reset(self) -> None:
        """Forget received requests and restart the ``fail_first``/``fail_every`` counts."""
        self.requests.clear()
        self._failures_left = self.fail_first
        self._served = 0

    def restore(self) -> None:
        """Back to the construction-time behaviour, with no scripted steps and no requests."""
        init = self._initial
        self.status, self.delay = init.status, init.delay
        self.fail_first, self.fail_status, self.fail_every = init.fail_first, init.fail_status, init.fail_every
        self.response_headers = dict(init.response_headers)
        self.respond, self.keep_body = init.respond, init.keep_body
        self._script.clear()
        self.reset()

    async def wait_for_count(self, n: int, timeout: float = 5.0) -> int:
        """Wait until at least ``n`` requests arrived; return the count (raises TimeoutError)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.count < n:
            if loop.time() >= deadline:
                raise TimeoutError(f"{self.name}: {self.count} requests after {timeout}s, wanted {n}")
            await asyncio.sleep(0.01)
        return self.count

    async def _handle(self, req: web.BaseRequest) -> web.StreamResponse:
        body = await req.read()
        peer = req.transport.get_extra_info("peername") if req.transport else None
        rec = RequestRecord(
            pod=self.name, method=req.method, path=req.raw_path, headers=_headers(req),
            body_len=len(body), http_version=f"{req.version.major}.{req.version.minor}",
            remote=peer[0] if peer else None, body=body if self.keep_body else b"",
        )
        self.requests.append(rec)

        self._served += 1
        status, delay = self.status, self.delay
        extra: dict[str, str] = {}
        step = self._script.popleft() if self._script else None
        if step is not None:
            status = step.status if step.status is not None else status
            delay = step.delay if step.delay is not None else delay
            extra = dict(step.headers or {})
        elif self._failures_left > 0:
            self._failures_left -= 1
            status = self.fail_status
        elif self.fail_every > 0 and self._served % self.fail_every == 0:
            status = self.fail_status
        with contextlib.suppress(ValueError, TypeError):
            status = int(rec.header("x-echo-status") or status)
        with contextlib.suppress(ValueError, TypeError):
            delay = float(rec.header("x-echo-delay-ms") or delay * 1000) / 1000
        if delay > 0:
            await asyncio.sleep(delay)

        if self.respond is not None:
            custom = await self.respond(rec)
            if custom is not None:
                rec.status = custom.status
                return custom
        rec.status = status
        return web.Response(
            status=status,
            body=json.dumps(rec.to_json()).encode(),
            content_type="application/json",
            headers={"x-pod": self.name, **self.response_headers, **extra},
        )


class BackendGroup:
    """Several pods; ``.pods`` in order, ``.by_name[name]``, ``.endpoints`` as (host, port) pairs."""

    def __init__(self, pods: list[BackendPod]) -> None:
        self.pods = pods
        self.by_name = {p.name: p for p in pods}

    def __iter__(self) -> Any:
        return iter(self.pods)

    def __len__(self) -> int:
        return len(self.pods)

    def __getitem__(self, i: int) -> BackendPod:
        return self.pods[i]

    @property
    def endpoints(self) -> list[tuple[str, int]]:
        return [p.address for p in self.pods]

    @property
    def port(self) -> int:
        """The common port (raises if pods listen on different ports)."""
        ports = {p.port for p in self.pods}
        if len(ports) != 1:
            raise ValueError(f"pods listen on different ports: {sorted(ports)}")
        return ports.pop()

    def counts(self) -> dict[str, int]:
        return {p.name: p.count for p in self.pods}

    def requests(self) -> list[RequestRecord]:
        """All pods' request logs merged in arrival order."""
        return sorted((r for p in self.pods for r in p.requests), key=lambda r: r.time)

    def total(self) -> int:
        return sum(p.count for p in self.pods)

    def reset(self) -> None:
        for p in self.pods:
            p.reset()

    def restore(self) -> None:
        """Every pod back to its construction-time behaviour, with no requests."""
        for p in self.pods:
            p.restore()

    def configure(self, **kwargs: Any) -> None:
        for p in self.pods:
            p.configure(**kwargs)

    async def aclose(self) -> None:
        await asyncio.gather(*(p.aclose() for p in self.pods), return_exceptions=True)

    async def __aenter__(self) -> BackendGroup:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


async def start_backends(
    n: int,
    *,
    port: int | None = None,
    same_port: bool = True,
    names: list[str] | None = None,
    prefix: str = "pod",
    hosts: list[str] | None = None,
    attempts: int = 20,
    **behaviour: Any,
) -> BackendGroup:
    """Start ``n`` pods on distinct fresh loopback addresses (or ``hosts``).

    Ports: ``port`` if given, else (``same_port=True``, like a Kubernetes ``targetPort``) one port
    free on every pod address, else an independent free port per pod. ``behaviour`` kwargs go to
    :class:`BackendPod` (``status``, ``delay``, ``fail_first``, ``fail_status``, ``fail_every``, ...).
    """
    names = names or [f"{prefix}-{i + 1}" for i in range(n)]
    if len(names) != n:
        raise ValueError("len(names) != n")
    hosts = hosts or [alloc_pod_ip() for _ in range(n)]
    if len(hosts) != n:
        raise ValueError("len(hosts) != n")
    last_err: OSError | None = None
    for _ in range(attempts if port is None and same_port else 1):
        pods: list[BackendPod] = []
        try:
            common = port or 0
            for name, host in zip(names, hosts, strict=True):
                pod = BackendPod(name, host, common, **behaviour)
                await pod.start()
                pods.append(pod)
                if same_port:
                    common = pod.port
            return BackendGroup(pods)
        except OSError as e:  # common port taken on a later address: retry with a new one
            last_err = e
            await asyncio.gather(*(p.aclose() for p in pods), return_exceptions=True)
        except BaseException:
            await asyncio.gather(*(p.aclose() for p in pods), return_exceptions=True)
            raise
    raise RuntimeError(f"could not start {n} backends: {last_err}")


class BackendsFactory:
    """For fixtures: ``await factory(n, **kw)`` starts a group; ``aclose()`` stops every group."""

    def __init__(self) -> None:
        self.groups: list[BackendGroup] = []

    async def __call__(self, n: int = 2, **kwargs: Any) -> BackendGroup:
        group = await start_backends(n, **kwargs)
        self.groups.append(group)
        return group

    def report(self) -> str:
        return "\n".join(
            f"backend {p.name} {p.host}:{p.port}: {p.count} requests "
            f"{[(r.method, r.path, r.status) for r in p.requests[-10:]]}"
            for g in self.groups for p in g.pods
        )

    async def aclose(self) -> None:
        await asyncio.gather(*(g.aclose() for g in self.groups), return_exceptions=True)
