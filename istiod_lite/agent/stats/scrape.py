"""``GET /stats/prometheus`` for the waypoint's Prometheus port: Envoy's own stats and the Istio metrics.

Envoy still owns port 15090 (its ``envoy-prometheus`` listener, bootstrap.py); with the agent's
metrics on, that listener forwards the path to this server on a private Unix socket instead of to
Envoy's admin port.  The handler fetches Envoy's ``/stats/prometheus`` from the admin port (the query
string passed on) and appends the ``istio_*`` families and the collector's own counters: one scrape,
Istio's names beside Envoy's, as on an Istio waypoint.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Final

import aiohttp
from aiohttp import web

from istiod_lite.agent.stats.collector import StatsCollector
from istiod_lite.agent.uds import check_socket_path

log = logging.getLogger(__name__)

PATH: Final = "/stats/prometheus"
CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
_ADMIN_TIMEOUT: Final = aiohttp.ClientTimeout(total=4)


class PrometheusEndpoint:
    def __init__(self, socket_path: Path, collector: StatsCollector, admin_address: str, admin_port: int) -> None:
        check_socket_path(socket_path, "Prometheus socket")
        self.socket_path = socket_path
        self.collector = collector
        self.admin_url = f"http://{admin_address}:{admin_port}{PATH}"
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    async def _envoy_stats(self, query: str) -> str:
        assert self._session is not None
        url = self.admin_url + (f"?{query}" if query else "")
        async with self._session.get(url) as resp:
            if resp.status != 200:
                raise aiohttp.ClientResponseError(resp.request_info, (), status=resp.status)
            return await resp.text()

    async def _handle(self, request: web.Request) -> web.Response:
        try:
            envoy = await self._envoy_stats(request.query_string)
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("cannot read Envoy's stats for a scrape: %r", exc)
            return web.Response(status=502, text="Envoy's admin stats are unavailable\n")
        await self.collector.drain()
        if envoy and not envoy.endswith("\n"):
            envoy += "\n"
        body = envoy + self.collector.store.render(self.collector.own_metrics())
        return web.Response(body=body.encode(), headers={"Content-Type": CONTENT_TYPE})

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get(PATH, self._handle)
        self._session = aiohttp.ClientSession(timeout=_ADMIN_TIMEOUT)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        if self.socket_path.parent.is_symlink():
            raise OSError(f"{self.socket_path.parent} is a symbolic link")
        self.socket_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.socket_path.unlink(missing_ok=True)
        await web.UnixSite(runner, str(self.socket_path)).start()
        self.socket_path.chmod(0o600)
        self._runner = runner

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
        session, self._session = self._session, None
        if session is not None:
            await session.close()
        self.socket_path.unlink(missing_ok=True)


__all__ = ["PrometheusEndpoint"]
