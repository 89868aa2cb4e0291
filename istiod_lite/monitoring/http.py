"""The monitoring port (Istio's :15014): readiness now, metrics and debug endpoints beside it.

Kept apart from the gRPC port so a probe never competes with xDS streams.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry

from istiod_lite.addresses import split_host_port
from istiod_lite.monitoring.exposition import CONTENT_TYPE, render

#: The only callers served /debug/*: this host's own loopback addresses.  Not all of 127.0.0.0/8:
#: Istio's sidecars re-originate passthrough traffic from 127.0.0.6 (and other tools bind other
#: 127.x addresses for remote clients), so an address there may carry a remote caller.
_DEBUG_CALLERS = frozenset({ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")})


def _loopback(remote: str | None) -> bool:
    if remote is None:
        return False
    try:
        addr = ipaddress.ip_address(remote.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped  # a dual-stack socket reports 127.0.0.1 as ::ffff:127.0.0.1
    return addr in _DEBUG_CALLERS


class MonitoringServer:
    """/ready from ``ready()``, /debug/syncz from ``syncz()``, /metrics from ``registry``,
    /debug/loopz from ``loopz(since)`` (event-loop lag samples since a wall time, and admission),
    /debug/config_dump?proxyID=... from ``config_dump(proxy_id)`` (None: no such proxy, 404)."""

    def __init__(
        self,
        ready: Callable[[], bool],
        syncz: Callable[[], list[dict[str, object]]],
        registry: CollectorRegistry | None = None,
        *,
        loopz: Callable[[float], dict[str, object]] | None = None,
        config_dump: Callable[[str], Awaitable[dict[str, Any] | None]] | None = None,
    ) -> None:
        self._ready_fn = ready
        self._syncz_fn = syncz
        self._loopz_fn = loopz
        self._config_dump_fn = config_dump
        self._registry = registry
        self._runner: web.AppRunner | None = None
        self.port = 0

    def _app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/ready", self._ready)
        app.router.add_get("/debug/syncz", self._syncz)
        app.router.add_get("/debug/loopz", self._loopz)
        app.router.add_get("/debug/config_dump", self._config_dump)
        app.router.add_get("/metrics", self._metrics)
        return app

    async def _metrics(self, _req: web.Request) -> web.Response:
        body = render(self._registry) if self._registry is not None else b""
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})

    async def _ready(self, _req: web.Request) -> web.Response:
        ok = self._ready_fn()
        return web.Response(status=200 if ok else 503, text="ready\n" if ok else "not ready\n")

    async def _syncz(self, req: web.Request) -> web.Response:
        # Debug endpoints name every connected proxy and its config versions: loopback callers only
        # (``kubectl port-forward`` and ``istiod-lite proxy-status`` on the same host).
        if not _loopback(req.remote):
            return web.Response(status=403, text="debug endpoints are served to loopback clients only\n")
        status = self._syncz_fn()
        return web.Response(text=json.dumps(status, indent=2, sort_keys=True), content_type="application/json")

    async def _loopz(self, req: web.Request) -> web.Response:
        """``?since=<unix time>``: only the lag samples taken from then on (a benchmark's window)."""
        if not _loopback(req.remote):
            return web.Response(status=403, text="debug endpoints are served to loopback clients only\n")
        if self._loopz_fn is None:
            return web.Response(status=404, text="no loop-lag monitor\n")
        try:
            since = float(req.query.get("since", "0"))
        except ValueError:
            return web.Response(status=400, text="since must be a number (unix time)\n")
        return web.Response(text=json.dumps(self._loopz_fn(since)), content_type="application/json")

    async def _config_dump(self, req: web.Request) -> web.Response:
        """What the server last sent a proxy (``proxyID``: node id, waypoint NS/NAME or pod NS/NAME).

        Loopback only, like every debug endpoint: it shows whole configurations."""
        if not _loopback(req.remote):
            return web.Response(status=403, text="debug endpoints are served to loopback clients only\n")
        if self._config_dump_fn is None:
            return web.Response(status=404, text="no config dump here\n")
        proxy_id = req.query.get("proxyID", "")
        if not proxy_id:
            return web.Response(status=400, text="proxyID is required (node id, waypoint NS/NAME or pod NS/NAME)\n")
        dump = await self._config_dump_fn(proxy_id)
        if dump is None:
            return web.Response(status=404, text="no connected proxy matches proxyID\n")
        return web.Response(text=json.dumps(dump, indent=2, sort_keys=True), content_type="application/json")

    async def start(self, addr: str) -> None:
        host, port = split_host_port(addr)
        self._runner = web.AppRunner(self._app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
