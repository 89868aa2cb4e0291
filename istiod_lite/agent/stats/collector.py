"""The agent's access-log service: Envoy's gRPC access loggers stream here, on a Unix socket.

Never slows the data path: Envoy's loggers buffer and send without waiting for the agent, and drop
(counting ``access_logs.grpc_access_log.logs_dropped`` in Envoy's stats) when the stream is
backed up.  On this side each received batch goes into a bounded queue (``max_pending`` batches);
when the aggregating task falls behind, new batches are dropped and their entries counted in
``istiod_lite_agent_stats_dropped_entries_total`` instead of queueing without bound.  A stream whose
``log_name`` is not the translator's ``LogConfig`` is counted as malformed and its entries ignored.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Final

import grpc
from envoy.service.accesslog.v3 import als_pb2, als_pb2_grpc

from istiod_lite.agent.stats.store import IstioMetricsStore
from istiod_lite.agent.uds import check_socket_path, start_on_socket
from istiod_lite.translator.telemetry.metrics import LogConfig

log = logging.getLogger(__name__)

DEFAULT_MAX_PENDING: Final = 1024
#: Entries aggregated (whole batches) before yielding to the event loop (SDS and the xDS proxy share it).
_ENTRIES_PER_TURN: Final = 512


class StatsCollector(als_pb2_grpc.AccessLogServiceServicer):  # type: ignore[misc]
    """``StreamAccessLogs`` into a bounded queue; one task aggregates into ``store``."""

    def __init__(self, socket_path: Path, store: IstioMetricsStore | None = None,
                 max_pending: int = DEFAULT_MAX_PENDING) -> None:
        check_socket_path(socket_path, "stats socket")
        self.socket_path = socket_path
        self.store = store or IstioMetricsStore()
        self._queue: asyncio.Queue[tuple[LogConfig, als_pb2.StreamAccessLogsMessage]] = asyncio.Queue(max_pending)
        self._configs: dict[str, LogConfig | None] = {}
        self._server: grpc.aio.Server | None = None
        self._task: asyncio.Task[None] | None = None
        self.received_entries = 0
        self.dropped_entries = 0
        self.malformed_entries = 0
        self.streams = 0

    # -- gRPC --------------------------------------------------------------------------------------
    def _config(self, log_name: str) -> LogConfig | None:
        if log_name not in self._configs:
            try:
                self._configs[log_name] = LogConfig.decode(log_name)
            except ValueError as exc:
                log.warning("access-log stream with an unknown log_name ignored: %s", exc)
                self._configs[log_name] = None
            if len(self._configs) > 10000:  # names come from our own translator; bound them anyway
                self._configs.pop(next(iter(self._configs)))
        return self._configs[log_name]

    async def StreamAccessLogs(
        self, request_iterator: AsyncIterator[als_pb2.StreamAccessLogsMessage], context: grpc.aio.ServicerContext,
    ) -> als_pb2.StreamAccessLogsResponse:
        self.streams += 1
        config: LogConfig | None = None
        async for message in request_iterator:
            if message.HasField("identifier"):
                config = self._config(message.identifier.log_name)
            n = len(message.http_logs.log_entry) + len(message.tcp_logs.log_entry)
            self.received_entries += n
            if config is None:
                self.malformed_entries += n
                continue
            try:
                self._queue.put_nowait((config, message))
            except asyncio.QueueFull:
                self.dropped_entries += n
        return als_pb2.StreamAccessLogsResponse()

    # -- aggregation -------------------------------------------------------------------------------
    def _aggregate(self, config: LogConfig, message: als_pb2.StreamAccessLogsMessage) -> None:
        if message.HasField("http_logs"):
            self.store.add_http_batch(config, message.http_logs.log_entry)
        if message.HasField("tcp_logs"):
            self.store.add_tcp_batch(config, message.tcp_logs.log_entry)

    async def _run(self) -> None:
        while True:
            config, message = await self._queue.get()
            budget = _ENTRIES_PER_TURN
            while True:
                try:
                    self._aggregate(config, message)
                except Exception:  # one bad entry must not stop the metrics
                    log.exception("aggregating an access-log batch failed")
                    self.malformed_entries += len(message.http_logs.log_entry) + len(message.tcp_logs.log_entry)
                budget -= len(message.http_logs.log_entry) + len(message.tcp_logs.log_entry)
                if budget <= 0:
                    break
                try:
                    config, message = self._queue.get_nowait()
                except asyncio.QueueEmpty:
                    break
            await asyncio.sleep(0)

    async def drain(self) -> None:
        """Aggregate everything queued now (for a scrape that must see what arrived before it)."""
        while True:
            try:
                config, message = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            self._aggregate(config, message)

    def own_metrics(self) -> Iterator[str]:
        """The collector's counters, Prometheus text lines."""
        for name, help_text, value in (
            ("istiod_lite_agent_stats_entries_total", "Access-log entries received from Envoy.",
             self.received_entries),
            ("istiod_lite_agent_stats_dropped_entries_total", "Access-log entries dropped because the "
             "aggregation queue was full.", self.dropped_entries),
            ("istiod_lite_agent_stats_malformed_entries_total", "Access-log entries ignored (unknown "
             "log_name or not aggregatable).", self.malformed_entries),
            ("istiod_lite_agent_stats_series_dropped_total", "Observations dropped because a metric "
             "reached its series limit.", self.store.series_dropped),
        ):
            yield f"# HELP {name} {help_text}"
            yield f"# TYPE {name} counter"
            yield f"{name} {value}"

    # -- lifecycle ---------------------------------------------------------------------------------
    async def start(self) -> None:
        server = grpc.aio.server()
        als_pb2_grpc.add_AccessLogServiceServicer_to_server(self, server)
        await start_on_socket(server, self.socket_path)
        self._server = server
        self._task = asyncio.create_task(self._run(), name="istio-stats-aggregator")
        log.info("access-log service for Istio metrics on unix:%s", self.socket_path)

    async def stop(self, grace: float = 0.5) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        server, self._server = self._server, None
        if server is not None:
            await server.stop(grace)
        self.socket_path.unlink(missing_ok=True)


__all__ = ["StatsCollector"]
