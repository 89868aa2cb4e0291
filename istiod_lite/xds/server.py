"""The gRPC ADS service: stream lifecycle around the SotW and Delta state machines.

Each stream has two tasks: a reader that applies requests to the stream state and sets the wake
flag, and the handler itself, which waits for the flag, evaluates every subscribed type in push
order (CDS, EDS, LDS, RDS, ...) against the group's latest snapshot and writes what is needed.
Rule numbers (R2, R48) refer to docs/xds-rules.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from istiod_lite.safetext import safe
from istiod_lite.xds import delta, sotw, wire
from istiod_lite.xds.admission import FREE, LoadAdmission, Ticket, TokenBucket
from istiod_lite.xds.cache import SnapshotCache
from istiod_lite.xds.connection import Connection
from istiod_lite.xds.dump import TypeDump, dump_connection
from istiod_lite.xds.looplag import LoopLagMonitor
from istiod_lite.xds.metrics import XdsMetrics
from istiod_lite.xds.pushmemo import PushMemo
from istiod_lite.xds.typeurls import WILDCARD_TYPES, short

log = logging.getLogger(__name__)

#: Called once per stream after the first request, before anything is sent.  Raise
#: ``StreamRefused`` to refuse the stream (authentication, admission).
#: Checks a new stream before it is admitted: raises ``StreamRefused`` to refuse it; returns True
#: when the stream is authenticated (its waiters are admitted before unauthenticated ones).
StreamCheck = Callable[[Connection, grpc.aio.ServicerContext], Awaitable[bool | None]]


class StreamRefused(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class XdsServerOptions:
    #: A stream whose write does not complete in this time is closed (slow or stuck client).
    write_timeout: float = 30.0
    # Admission of new streams (R49, admission.py).  Default: by load -- at most
    # ``max_syncing_streams`` in their initial sync, none while the loop lags more than
    # ``max_loop_lag``; a stream waits up to ``admission_wait``, then RESOURCE_EXHAUSTED.
    #: Streams in their initial sync at once; 0 = no bound.
    max_syncing_streams: int = 50
    #: New streams wait while the event loop runs later than this (seconds); 0 = no lag guard.
    max_loop_lag: float = 0.025
    #: A stream stops counting as syncing after this long, synced or not (a client that never ACKs).
    initial_sync_timeout: float = 10.0
    #: istiod's fixed rate (min(15 + 5 * cores, 100) new streams per second), applied before the
    #: load checks; 0 (default) = off.
    max_new_streams_per_second: float = 0.0
    #: Burst of new streams admitted at once before the fixed rate applies.
    new_stream_burst: int = 100
    #: How long a new stream may wait for admission before RESOURCE_EXHAUSTED.  Waiting costs a
    #: stream almost nothing, while a refusal sends the client into backoff (Envoy: up to 0.5 s,
    #: doubling), so it is long; the waypoint bootstrap's ``initial_fetch_timeout: 0s`` makes Envoy
    #: wait for its first config however long that takes.
    admission_wait: float = 10.0
    #: Streams that may build or write a push at the same time (istiod's PILOT_PUSH_THROTTLE):
    #: bounds the memory of responses in flight during a wave.  A stuck stream holds its slot
    #: for at most ``write_timeout``.
    max_concurrent_pushes: int = 100
    #: Per stream: at most this many resource types, and this many names subscribed per type; a
    #: stream asking for more is closed (RESOURCE_EXHAUSTED).  A stream's state lives as long as the
    #: stream, but a client choosing its type URLs and names could otherwise grow it without bound.
    #: 100,000 names is three times what a 10,000-service waypoint subscribes for its endpoints.
    max_types_per_stream: int = 32
    max_names_per_type: int = 100_000


ADS_SERVICE = "envoy.service.discovery.v3.AggregatedDiscoveryService"
#: The status message of a stream closed or refused because this server is shutting down.
DRAINING = "control plane shutting down; reconnect to another replica"


class AdsServer(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):  # type: ignore[misc]
    """Serves a ``SnapshotCache`` over ADS, SotW and Delta.

    Owns what its streams compute once and share (``memo``: diffs, views, large responses): it
    is emptied when the last stream closes (a stopped server holds no responses or snapshots).
    """

    def __init__(
        self,
        cache: SnapshotCache,
        options: XdsServerOptions | None = None,
        stream_check: StreamCheck | None = None,
        metrics: XdsMetrics | None = None,
        lag: LoopLagMonitor | None = None,
    ) -> None:
        self.cache = cache
        self.options = options or XdsServerOptions()
        self.metrics = metrics or XdsMetrics()
        self._stream_check = stream_check
        self._ids = itertools.count(1)
        self.connections: dict[str, Connection] = {}
        o = self.options
        rate = o.max_new_streams_per_second
        self._rate = TokenBucket(rate, o.new_stream_burst) if rate > 0 else None
        #: Event-loop lag, measured from the first stream on (or once ``start_monitoring`` ran).
        self.lag = lag or LoopLagMonitor()
        self.lag.listeners.append(lambda: self.metrics.loop_lag.observe(self.lag.last))
        self.admission = (LoadAdmission(max_syncing=o.max_syncing_streams, max_lag=o.max_loop_lag, lag=self.lag,
                                        sync_timeout=o.initial_sync_timeout)
                          if o.max_syncing_streams > 0 or o.max_loop_lag > 0 else None)
        self.metrics.track_admission(lambda: self.admission.syncing if self.admission else 0,
                                     lambda: self.admission.waiting if self.admission else 0)
        self._push_slots = asyncio.Semaphore(max(1, self.options.max_concurrent_pushes))
        self.memo = PushMemo()
        #: Set by ``drain``: no stream is admitted any more, and the open ones are being closed.
        self.draining = False
        #: Set while no stream is open (``drain`` waits for it).
        self._no_streams = asyncio.Event()
        self._no_streams.set()

    def register(self, server: grpc.aio.Server) -> None:
        """Add ADS to ``server`` with a serializer that accepts pre-encoded responses (wire.py)."""
        handlers = {
            "StreamAggregatedResources": grpc.stream_stream_rpc_method_handler(
                self.StreamAggregatedResources,
                request_deserializer=discovery_pb2.DiscoveryRequest.FromString,
                response_serializer=wire.serialize,
            ),
            "DeltaAggregatedResources": grpc.stream_stream_rpc_method_handler(
                self.DeltaAggregatedResources,
                request_deserializer=discovery_pb2.DeltaDiscoveryRequest.FromString,
                response_serializer=wire.serialize,
            ),
        }
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(ADS_SERVICE, handlers),))

    def start_monitoring(self) -> None:
        """Measure loop lag from now on (else from the first stream); needs the running loop."""
        self.lag.start()

    def stop_monitoring(self) -> None:
        self.lag.stop()

    def load_status(self, since: float = 0.0) -> dict[str, object]:
        """``/debug/loopz``: loop lag (samples since ``since``, wall time) and admission state."""
        out = self.lag.summary(since)
        a = self.admission
        out["admission"] = {"syncing": a.syncing if a else 0, "waiting": a.waiting if a else 0,
                            "refused": a.refused if a else 0,
                            "max_syncing_streams": self.options.max_syncing_streams,
                            "max_loop_lag_ms": self.options.max_loop_lag * 1000,
                            "max_new_streams_per_second": self.options.max_new_streams_per_second}
        return out

    async def drain(self, period: float, *, tail: float = 2.0) -> None:
        """Shutdown: refuse new streams and close the open ones, spread evenly over ``period``.

        Each open stream is ended with UNAVAILABLE (retriable: Envoy and gRPC clients reconnect with
        backoff, through a Service to another replica) after whatever it is writing, never with a
        response: a proxy keeps the config it holds and, on Delta, tells the next server what it holds
        (R33), so it is sent only what differs.  Closing them one by one instead of all at once keeps
        the reconnects from arriving on the other replicas as one storm.  Returns once every stream
        has ended, or ``tail`` seconds after the last was told to (a write blocked on a stuck peer:
        the caller's server stop cancels it).
        """
        self.draining = True
        if self.admission is not None:
            self.admission.close()
        streams = sorted(self.connections.values(), key=lambda c: (c.connected_at, c.conn_id))
        loop = asyncio.get_running_loop()
        start = loop.time()
        if streams:
            log.info("draining %d xDS streams over %.1fs", len(streams), period)
        for i, conn in enumerate(streams):
            # Stream i closes at start + i * period / n: the first at once, the last one step before the end.
            delay = start + period * i / len(streams) - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if conn.fatal is None and not conn.closed:
                conn.fatal = ("UNAVAILABLE", DRAINING)
                conn.wake.set()  # the writer ends the stream once its current push is written
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._no_streams.wait(), tail)
        if self.connections:
            log.warning("%d xDS streams still open after the drain", len(self.connections))

    # -- gRPC methods --------------------------------------------------------------------------
    async def StreamAggregatedResources(
        self, request_iterator: AsyncIterator[discovery_pb2.DiscoveryRequest], context: grpc.aio.ServicerContext
    ) -> None:
        await self._serve("sotw", request_iterator, context)

    async def DeltaAggregatedResources(
        self,
        request_iterator: AsyncIterator[discovery_pb2.DeltaDiscoveryRequest],
        context: grpc.aio.ServicerContext,
    ) -> None:
        await self._serve("delta", request_iterator, context)

    # -- stream lifecycle ----------------------------------------------------------------------
    async def _serve(self, variant: str, requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> None:
        if not self.cache.ready:
            # Never answer before the first complete config exists: an empty LDS/CDS would
            # delete everything a reconnecting Envoy holds (R48).
            await context.abort(grpc.StatusCode.UNAVAILABLE, "control plane is not ready")
        if self.draining:
            await context.abort(grpc.StatusCode.UNAVAILABLE, DRAINING)
        if self.admission is not None:
            self.lag.start()
        try:
            first = await anext(requests)
        except StopAsyncIteration:
            return
        if not first.HasField("node") or not first.node.id:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "first request must carry node.id")
        conn = Connection(
            conn_id=f"{first.node.id}-{next(self._ids)}",
            variant=variant,
            peer=context.peer() or "",
            node=first.node,
            group=self.cache.group_of(first.node),
        )
        # Checked (authenticated, on the TLS port) before admission: a stream that will be refused
        # never takes or waits for a place, and authenticated streams are admitted first, so a
        # flood of streams nobody vouches for cannot starve the reconnects of real proxies.
        authenticated = False
        if self._stream_check is not None:
            try:
                authenticated = bool(await self._stream_check(conn, context))
            except StreamRefused as exc:
                await context.abort(exc.code, exc.message)
        ticket = await self._admit(context, priority=authenticated)
        if self.draining:  # admitted just as the drain began: it would not be closed by it
            ticket.release()
            await context.abort(grpc.StatusCode.UNAVAILABLE, DRAINING)
        conn.sync_ticket = ticket
        try:
            await self._serve_admitted(variant, conn, first, requests, context)
        finally:
            ticket.release()

    async def _admit(self, context: grpc.aio.ServicerContext, *, priority: bool = False) -> Ticket:
        """A place among the syncing streams, or RESOURCE_EXHAUSTED (R49): never an unbounded wait."""
        wait = self.options.admission_wait
        if self._rate is not None and not await self._rate.acquire(wait):
            self.metrics.admission_refused.labels(reason="rate").inc()
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "too many new streams; retry with backoff")
        if self.admission is None:
            return FREE
        ticket = await self.admission.admit(wait, priority=priority)
        if ticket is None and self.draining:  # refused because the server is going away
            await context.abort(grpc.StatusCode.UNAVAILABLE, DRAINING)
        if ticket is None:
            self.metrics.admission_refused.labels(reason="load").inc()
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "server busy; retry with backoff")
        assert ticket is not None
        return ticket

    async def _serve_admitted(self, variant: str, conn: Connection, first: Any, requests: AsyncIterator[Any],
                              context: grpc.aio.ServicerContext) -> None:
        self.connections[conn.conn_id] = conn
        self._no_streams.clear()
        self.metrics.connected.labels(version="").inc()
        self.cache.watch(conn.group, conn.wake)
        log.info("%s stream %s connected (group %s, peer %s)", variant, safe(conn.conn_id), safe(conn.group),
                 safe(conn.peer))
        reader = asyncio.create_task(self._read(variant, conn, first, requests))
        try:
            await self._write_loop(variant, conn, context)
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
            self.cache.unwatch(conn.group, conn.wake)
            self.connections.pop(conn.conn_id, None)
            if not self.connections:
                self.memo.clear()  # nothing left to share it with
                self._no_streams.set()
            self.metrics.connected.labels(version="").dec()
            log.info("%s stream %s closed", variant, safe(conn.conn_id))
        if conn.fatal is not None:
            code = getattr(grpc.StatusCode, conn.fatal[0])
            try:
                await context.abort(code, conn.fatal[1])
            except grpc.aio.AbortError:
                raise
            except Exception:  # a stuck peer cannot even take the status; the stream is gone anyway
                log.debug("stream %s: could not send status %s", safe(conn.conn_id), code)

    async def _read(self, variant: str, conn: Connection, first: Any, requests: AsyncIterator[Any]) -> None:
        try:
            self._apply(variant, conn, first)
            if conn.fatal is None:
                async for req in requests:
                    self._apply(variant, conn, req)
                    if conn.fatal is not None:
                        break
        except (asyncio.CancelledError, grpc.aio.AioRpcError):
            pass
        except Exception as exc:  # malformed input must end this stream only
            log.warning("stream %s: bad request: %s", safe(conn.conn_id), safe(exc))
            conn.fatal = ("INVALID_ARGUMENT", "malformed request")
        finally:
            conn.closed = True
            conn.wake.set()

    def _apply(self, variant: str, conn: Connection, req: Any) -> None:
        if not req.type_url:
            conn.fatal = ("INVALID_ARGUMENT", "type_url is required on ADS (R2)")
            return
        if req.type_url not in conn.subs and len(conn.subs) >= self.options.max_types_per_stream:
            conn.fatal = ("RESOURCE_EXHAUSTED", "too many resource types on one stream")
            return
        kind = sotw.on_request(conn, req).kind if variant == "sotw" else delta.on_request(conn, req)
        if len(conn.subs[req.type_url].names) > self.options.max_names_per_type:
            conn.fatal = ("RESOURCE_EXHAUSTED", "too many resource names subscribed on one stream")
            return
        if kind == "nack":
            sub = conn.subs[req.type_url]
            self.metrics.rejected(req.type_url, conn.node_id, req.error_detail.code)
            log.warning("%s NACK from %s: %s", safe(short(req.type_url)), safe(conn.node_id),
                        safe(sub.last_error, 1024))
        elif kind == "stale":
            self.metrics.stale_nonce(req.type_url)
        if conn.sync_ticket.held and kind in ("ack", "nack") and self._initially_synced(conn):
            conn.sync_ticket.release()
        conn.wake.set()

    def _initially_synced(self, conn: Connection) -> bool:
        """The stream has answered a response of every type it subscribed to, and subscribed to
        every wildcard type (CDS, LDS) its group has: it no longer counts against admission.  (A
        type subscribed later, e.g. RDS after LDS, is not waited for; ``initial_sync_timeout``
        bounds the rest.)"""
        snap = self.cache.get(conn.group)
        if snap is None or not conn.subs:
            return False
        if any(t in snap.types and t not in conn.subs for t in WILDCARD_TYPES):
            return False
        return all(s.nonce_acked or s.nonce_nacked for s in conn.subs.values())

    async def _write_loop(self, variant: str, conn: Connection, context: grpc.aio.ServicerContext) -> None:
        while True:
            await conn.wake.wait()
            conn.wake.clear()
            if conn.closed or conn.fatal is not None:
                return
            snap = self.cache.get(conn.group)
            if snap is None:
                continue  # owner computes it on demand; we are woken when it is set
            trigger = self.cache.trigger_time(conn.group)  # of ``snap``: no await in between
            for sub in conn.ordered_subs():
                if not await self._send_pending(variant, conn, sub, snap, context, trigger):
                    return
            if trigger is not None and trigger > conn.converged_trigger:
                conn.converged_trigger = trigger
                self.metrics.convergence.observe(max(0.0, time.monotonic() - trigger))

    async def _send_pending(
        self, variant: str, conn: Connection, sub: Any, snap: Any, context: grpc.aio.ServicerContext,
        trigger: float | None = None,
    ) -> bool:
        """Send what ``sub`` needs now; False if the stream is done.

        A separate coroutine so that the responses (each up to megabytes) are released as soon
        as they are written, instead of living in the write loop's frame until the next wake.
        """
        async with self._push_slots:
            return await self._build_and_write(variant, conn, sub, snap, context, trigger)

    async def _build_and_write(
        self, variant: str, conn: Connection, sub: Any, snap: Any, context: grpc.aio.ServicerContext,
        trigger: float | None = None,
    ) -> bool:
        started = time.perf_counter()
        if variant == "sotw":
            resp = sotw.build_response(conn, sub, snap, self.memo)
            responses: list[Any] = [resp] if resp is not None else []
        else:
            responses = delta.build_responses(conn, sub, snap, self.memo)
        if responses:
            # Before the write: the client's ACK can be read before ``write`` returns.
            sub.sent_trigger = trigger or 0.0
        while responses:
            resp = responses.pop(0)
            write_started = time.perf_counter()
            try:
                await asyncio.wait_for(context.write(resp), timeout=self.options.write_timeout)
            except TimeoutError:
                self.metrics.write_timeouts.inc()
                log.warning("stream %s: write blocked for %.0fs; closing", safe(conn.conn_id),
                            self.options.write_timeout)
                conn.fatal = ("UNAVAILABLE", "stream too slow")
                return False
            except Exception:
                return False  # client went away
            done = time.perf_counter()
            self.metrics.sent(sub.type_url, resp.ByteSize(), done - started, done - write_started)
        return True

    def status(self) -> list[dict[str, object]]:
        return [c.status() for c in sorted(self.connections.values(), key=lambda c: c.conn_id)]

    def dump(self, conn: Connection) -> list[TypeDump]:
        """What ``conn`` was last sent, per type, with the bytes still held (``xds/dump.py``)."""
        return dump_connection(conn, self.cache.get(conn.group))
