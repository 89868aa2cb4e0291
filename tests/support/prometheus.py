"""A real Prometheus server for tests (Debian's ``prometheus`` package; no Prometheus server is on PyPI).

``async with prometheus_server(tmp_path, {"job": ["host:port", ...]}, metrics_paths={...}) as prom:``
starts ``prometheus`` on a free loopback port with a temporary config and TSDB, scraping every
target each ``SCRAPE_INTERVAL``; ``await prom.query(promql)`` evaluates an instant query and
``await prom.scraped_after(job, t)`` waits until every target of ``job`` was scraped after ``t``.
Tests call ``require_prometheus()`` first: without the binary they skip, naming the package.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from tests.support.ports import free_port
from tests.support.wait import wait_until

SCRAPE_INTERVAL = "1s"
PACKAGE_HINT = ("the Prometheus server binary 'prometheus' is not installed (Debian/Ubuntu package "
                "'prometheus': apt-get install prometheus)")


def prometheus_binary() -> str | None:
    return shutil.which("prometheus")


def require_prometheus() -> str:
    binary = prometheus_binary()
    if binary is None:
        pytest.skip(PACKAGE_HINT)
    return binary


Sample = tuple[dict[str, str], float]


class PromQLError(RuntimeError):
    pass


@dataclass
class Prometheus:
    url: str
    jobs: Mapping[str, Sequence[str]]

    async def _get(self, path: str, params: Mapping[str, str]) -> Any:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http, \
                http.get(self.url + path, params=params) as r:
            body = await r.json()
        if body.get("status") != "success":
            raise PromQLError(f"{params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    async def query(self, promql: str, at: float | None = None) -> list[Sample]:
        """An instant query: [(labels without __name__, value)], sorted by labels."""
        params = {"query": promql}
        if at is not None:
            params["time"] = f"{at:.3f}"
        data = await self._get("/api/v1/query", params)
        if data["resultType"] == "scalar":
            return [({}, float(data["result"][1]))]
        if data["resultType"] != "vector":
            raise PromQLError(f"{promql}: unexpected result type {data['resultType']}")
        out = [({k: v for k, v in r["metric"].items() if k != "__name__"}, float(r["value"][1]))
               for r in data["result"]]
        return sorted(out, key=lambda s: sorted(s[0].items()))

    async def by(self, promql: str, *labels: str, at: float | None = None) -> dict[tuple[str, ...], float]:
        """``query`` keyed by the values of ``labels`` (missing labels read as "")."""
        return {tuple(m.get(k, "") for k in labels): v for m, v in await self.query(promql, at)}

    async def scraped_after(self, job: str, t: float, timeout: float = 15) -> float:
        """Wait until every target of ``job`` has a successful scrape that started after ``t``
        (wall clock); returns the latest scrape time seen."""
        want = len(self.jobs[job])

        async def done() -> float | None:
            # timestamp() of a plain selector is the sample's (scrape) time; of an expression such
            # as ``up == 1`` it would be the evaluation time.
            stamps = [v for _, v in await self.query(f'timestamp(up{{job="{job}"}})')]
            if len(stamps) != want or min(stamps) <= t:
                return None
            if [v for _, v in await self.query(f'up{{job="{job}"}}')] != [1.0] * want:
                return None
            return max(stamps)

        return await wait_until(done, timeout=timeout, interval=0.2,
                                message=f"Prometheus scraped job {job} after t={t:.3f}")


def _config(jobs: Mapping[str, Sequence[str]], metrics_paths: Mapping[str, str]) -> dict[str, Any]:
    return {
        "global": {"scrape_interval": SCRAPE_INTERVAL, "scrape_timeout": SCRAPE_INTERVAL,
                   "evaluation_interval": SCRAPE_INTERVAL},
        "scrape_configs": [{"job_name": job, "metrics_path": metrics_paths.get(job, "/metrics"),
                            "static_configs": [{"targets": list(targets)}]} for job, targets in jobs.items()],
    }


@contextlib.asynccontextmanager
async def prometheus_server(tmp_path: Path, jobs: Mapping[str, Sequence[str]],
                            metrics_paths: Mapping[str, str] | None = None) -> AsyncIterator[Prometheus]:
    binary = require_prometheus()
    home = tmp_path / f"prometheus-{time.monotonic_ns()}"
    (home / "data").mkdir(parents=True)
    config = home / "prometheus.yml"
    config.write_text(yaml.safe_dump(_config(jobs, metrics_paths or {})))
    port = free_port()
    log = (home / "prometheus.log").open("wb")
    proc = await asyncio.create_subprocess_exec(
        binary, f"--config.file={config}", f"--storage.tsdb.path={home / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}", "--storage.tsdb.retention.time=1h",
        "--web.enable-lifecycle", stdout=log, stderr=asyncio.subprocess.STDOUT)
    prom = Prometheus(f"http://127.0.0.1:{port}", jobs)

    async def ready() -> bool:
        if proc.returncode is not None:
            raise RuntimeError(f"prometheus exited {proc.returncode}: "
                               + (home / "prometheus.log").read_text()[-2000:])
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1)) as http, \
                    http.get(prom.url + "/-/ready") as r:
                return r.status == 200
        except (aiohttp.ClientError, OSError, TimeoutError):
            return False

    try:
        await wait_until(ready, timeout=20, interval=0.1, message="Prometheus ready")
        yield prom
    except BaseException:
        print("\n----- prometheus -----\n" + (home / "prometheus.log").read_text()[-4000:])
        raise
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        log.close()


__all__ = [
    "PACKAGE_HINT",
    "PromQLError",
    "Prometheus",
    "prometheus_binary",
    "prometheus_server",
    "require_prometheus",
]
