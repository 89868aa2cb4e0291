"""Signing worker processes, fed over socket pairs by the event loop itself.

``concurrent.futures.ProcessPoolExecutor`` costs the serving process about 300 us of CPU per task
(bench/bench_ca.py): a queue-feeder thread, a manager thread and their GIL hand-offs, as much as
the signing it moves away.  Here each worker owns one end of a ``socketpair``; the loop writes
length-prefixed pickles to it and reads the answers with asyncio streams, so the serving process
does no more than one small write and one read per request, on the loop, with no extra threads.

A worker handles its requests in order, so answers match pending futures first-in first-out.
Requests go to the worker with the fewest in flight.  A worker that dies fails its pending
requests with INTERNAL and is replaced on the next request.  Pickle is safe here: both ends are
our own processes on a private socket pair.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import multiprocessing
import multiprocessing.process
import pickle
import signal
import socket
import struct
from collections.abc import Mapping

import grpc

from istiod_lite.ca.authn import Authenticators
from istiod_lite.ca.authority import CertificateAuthority
from istiod_lite.ca.config import CaConfig, build_authenticators, build_authority, load_material
from istiod_lite.ca.errors import CaError, CaMaterialError
from istiod_lite.ca.keystore import CaMaterial

log = logging.getLogger(__name__)
_HEADER = struct.Struct("!I")
_MAX_MESSAGE = 1 << 20
#: At most this many answers wait for one write (bounds the latency batching adds: ~16 x 0.3 ms).
_MAX_BATCH = 16
#: A worker imports cryptography and loads the keys; seconds on a loaded host, never a minute.
_START_TIMEOUT = 60.0


def worker_main(config: CaConfig, sock: socket.socket) -> None:
    """Worker process: build the CA from ``config``, then answer requests until the socket closes."""
    # Ctrl-C reaches the whole process group; the serving process decides when workers stop
    # (it closes the socket).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        material = load_material(config)
        authority = build_authority(config, material)
        authenticators = build_authenticators(config, material, token_review=False)
    except Exception as exc:
        _send(sock, ("fatal", f"{type(exc).__name__}: {exc}"))
        return
    _send(sock, ("ready",))
    buffer = bytearray()
    while True:
        # Answer every request that has fully arrived (at most _MAX_BATCH per write), then wait
        # for more: under load one write carries several answers, which halves the wake-ups and
        # system calls per request on both sides.
        replies: list[bytes] = []
        while len(buffer) >= _HEADER.size:
            size = _HEADER.unpack_from(buffer)[0]
            if len(buffer) < _HEADER.size + size:
                break
            body = bytes(buffer[_HEADER.size:_HEADER.size + size])
            del buffer[:_HEADER.size + size]
            replies.append(_encode(_handle(authority, authenticators, body)))
            if len(replies) == _MAX_BATCH:
                sock.sendall(b"".join(replies))
                replies = []
        if replies:
            sock.sendall(b"".join(replies))
        chunk = sock.recv(1 << 16)
        if not chunk:
            return
        buffer += chunk


def _handle(authority: CertificateAuthority, authenticators: Authenticators, body: bytes) -> tuple[object, ...]:
    from istiod_lite.ca.backend import authenticate_and_sign

    request = pickle.loads(body)
    try:
        if request[0] == "sign":  # identity established by the serving process (TokenReview)
            _, csr, ttl, spiffe = request
            return ("ok", authority.sign_csr(csr, spiffe, ttl))
        _, csr, ttl, metadata, peer_der = request
        return ("ok", authenticate_and_sign(authority, authenticators, csr, ttl, metadata, peer_der))
    except CaError as exc:
        return ("err", exc.code.name, exc.reason)
    except Exception as exc:  # a bug must not kill the worker; the caller gets INTERNAL
        return ("err", "INTERNAL", f"{type(exc).__name__}: {exc}")


def _encode(message: tuple[object, ...]) -> bytes:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(data)) + data


def _send(sock: socket.socket, message: tuple[object, ...]) -> None:
    sock.sendall(_encode(message))


async def _read_message(reader: asyncio.StreamReader) -> tuple[object, ...]:
    size = _HEADER.unpack(await reader.readexactly(_HEADER.size))[0]
    if size > _MAX_MESSAGE:
        raise ConnectionError(f"message of {size} bytes")
    message: tuple[object, ...] = pickle.loads(await reader.readexactly(size))
    return message


class _Worker:
    def __init__(self, process: multiprocessing.process.BaseProcess, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
        self.process = process
        self.reader = reader
        self.writer = writer
        self.pending: collections.deque[asyncio.Future[list[str]]] = collections.deque()
        self.alive = True
        self.task: asyncio.Task[None] | None = None
        self._outgoing: list[bytes] = []

    def send(self, data: bytes) -> None:
        """Queue a request; everything queued in one loop iteration goes out in one write."""
        if not self._outgoing:
            asyncio.get_running_loop().call_soon(self._flush)
        self._outgoing.append(data)

    def _flush(self) -> None:
        data, self._outgoing = b"".join(self._outgoing), []
        if self.alive and not self.writer.is_closing():
            self.writer.write(data)

    async def read_replies(self) -> None:
        try:
            while True:
                reply = await _read_message(self.reader)
                future = self.pending.popleft()
                if future.done():
                    continue
                if reply[0] == "ok":
                    future.set_result(reply[1])  # type: ignore[arg-type]
                else:
                    future.set_exception(CaError(grpc.StatusCode[reply[1]], str(reply[2])))
        except (asyncio.IncompleteReadError, ConnectionError, IndexError) as exc:
            self.fail(f"signing worker {self.process.pid} exited: {exc!r}")

    def fail(self, reason: str) -> None:
        self.alive = False
        while self.pending:
            future = self.pending.popleft()
            if not future.done():
                future.set_exception(CaError(grpc.StatusCode.INTERNAL, reason))


class WorkerPoolBackend:
    """``SigningBackend`` over ``workers`` processes; call ``start`` before the first request."""

    def __init__(self, config: CaConfig, material: CaMaterial, workers: int) -> None:
        if workers < 1:
            raise ValueError("at least one worker")
        self.material = material
        self._config = config
        self._size = workers
        self._workers: list[_Worker] = []
        self._ctx = multiprocessing.get_context("spawn")  # never fork a process running gRPC threads
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        async with self._lock:
            self._workers = [w for w in self._workers if w.alive]
            while len(self._workers) < self._size:
                self._workers.append(await self._spawn())

    async def _spawn(self) -> _Worker:
        parent, child = socket.socketpair()
        process = self._ctx.Process(target=worker_main, args=(self._config, child), daemon=True,
                                    name="istiod-lite-ca-signer")
        process.start()
        child.close()
        reader, writer = await asyncio.open_unix_connection(sock=parent)
        try:
            hello = await asyncio.wait_for(_read_message(reader), _START_TIMEOUT)
        except (asyncio.IncompleteReadError, ConnectionError, TimeoutError) as exc:
            hello = ("fatal", f"no answer from the worker ({exc!r})")
        if hello[0] != "ready":
            writer.close()
            process.join(5)
            raise CaMaterialError(f"CA signing worker failed to start: {hello[1]}")
        worker = _Worker(process, reader, writer)
        worker.task = asyncio.get_running_loop().create_task(worker.read_replies())
        return worker

    async def create_certificate(self, csr_pem: str, ttl_seconds: int, metadata: Mapping[str, str],
                                 peer_cert_der: bytes | None) -> list[str]:
        return await self._submit(("authenticate", csr_pem, ttl_seconds, dict(metadata), peer_cert_der))

    async def sign(self, csr_pem: str, ttl_seconds: int, spiffe: str) -> list[str]:
        return await self._submit(("sign", csr_pem, ttl_seconds, spiffe))

    async def _submit(self, request: tuple[object, ...]) -> list[str]:
        if len(self._workers) < self._size or not all(w.alive for w in self._workers):
            await self.start()
        worker = min(self._workers, key=lambda w: len(w.pending))
        future: asyncio.Future[list[str]] = asyncio.get_running_loop().create_future()
        worker.pending.append(future)
        worker.send(_encode(request))
        return await future

    async def close(self) -> None:
        workers, self._workers = self._workers, []
        for w in workers:
            w.writer.close()
        for w in workers:
            with contextlib.suppress(Exception):
                await w.writer.wait_closed()
            if w.task is not None:
                w.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await w.task
            w.fail("CA shutting down")
            await asyncio.get_running_loop().run_in_executor(None, w.process.join, 5)
            if w.process.is_alive():
                w.process.kill()

    def worker_pids(self) -> list[int]:
        return [w.process.pid for w in self._workers if w.process.pid is not None]
