"""Run a golden case's configuration for real: its input YAML in a control plane, its waypoint(s)
as real Envoy agents, every loopback endpoint of its clusters as a real HTTP server that names
itself (``x-golden-backend: ip:port``), pod addresses behind real HBONE terminators, and clients with a
chosen SPIFFE identity sending through the HBONE path.

Golden inputs use fixed addresses (waypoints at 127.0.1.x, pods at 127.0.2.x); other tests in
other processes hand out the same range, so each ``127.0.x.y`` address of a case is replaced by
an address this process holds exclusively (``exclusive_ip``) before it is loaded. Service VIPs
(127.10.x.y) are only config and stay as they are.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import re
import shutil
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path

from tests.support.mesh import exclusive_ip

_ADDR = re.compile(r"(?<![\d.])127\.0\.(\d+)\.(\d+)(?![\d./])")


def remap_case(case_dir: Path, out_dir: Path) -> dict[str, str]:
    """Copy ``case_dir/input`` to ``out_dir`` with each 127.0.x.y (but 127.0.0.1) replaced by an
    exclusive address; return the mapping."""
    mapping: dict[str, str] = {}

    def sub(m: re.Match[str]) -> str:
        ip = m.group(0)
        if ip == "127.0.0.1":
            return ip
        if ip not in mapping:
            mapping[ip] = exclusive_ip()
        return mapping[ip]

    out_dir.mkdir(parents=True, exist_ok=True)
    for src in sorted((case_dir / "input").rglob("*")):
        if src.is_file():
            dst = out_dir / src.relative_to(case_dir / "input")
            dst.parent.mkdir(parents=True, exist_ok=True)
            if src.suffix in (".yaml", ".yml"):
                dst.write_text(_ADDR.sub(sub, src.read_text()))
            else:
                shutil.copy(src, dst)
    return mapping


PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def _prepend(reader: asyncio.StreamReader, data: bytes) -> asyncio.StreamReader:
    """A reader that yields ``data`` and then the rest of ``reader``."""
    out = asyncio.StreamReader()
    out.feed_data(data)

    async def pump() -> None:
        try:
            while chunk := await reader.read(65536):
                out.feed_data(chunk)
        except ConnectionError:
            pass
        out.feed_eof()

    task = asyncio.ensure_future(pump())
    _pumps.add(task)
    task.add_done_callback(_pumps.discard)
    return out


_pumps: set[asyncio.Future[None]] = set()


def _frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream.to_bytes(4, "big") + payload


def _literal(name: str, value: str) -> bytes:
    """HPACK literal header field without indexing, new name, no Huffman coding (lengths < 127)."""
    return b"\x00" + bytes([len(name)]) + name.encode() + bytes([len(value)]) + value.encode()


async def _serve_h2c(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, addr: str) -> None:
    """Just enough cleartext HTTP/2 to answer every request stream with 200 and ``x-golden-backend``
    (request headers are not decoded: the answer does not depend on them)."""
    writer.write(_frame(4, 0, 0))  # our SETTINGS
    while True:
        head = await reader.readexactly(9)
        length, kind, flags = int.from_bytes(head[:3], "big"), head[3], head[4]
        stream = int.from_bytes(head[5:9], "big") & 0x7FFFFFFF
        payload = await reader.readexactly(length)
        if kind == 4 and not flags & 1:  # SETTINGS -> ACK
            writer.write(_frame(4, 1, 0))
        elif kind == 6 and not flags & 1:  # PING -> ACK
            writer.write(_frame(6, 1, 0, payload))
        elif kind == 7:  # GOAWAY
            return
        elif kind in (1, 9) and flags & 4:  # HEADERS/CONTINUATION with END_HEADERS: answer the stream
            body = addr.encode()
            block = (_literal(":status", "200") + _literal("x-golden-backend", addr)
                     + _literal("content-type", "text/plain"))
            writer.write(_frame(1, 4, stream, block) + _frame(0, 1, stream, body))
        elif kind == 0 and length:  # DATA: credit it back
            inc = length.to_bytes(4, "big")
            writer.write(_frame(8, 0, 0, inc) + _frame(8, 0, stream, inc))
        await writer.drain()


def is_loopback(ip: str) -> bool:
    try:
        return ipaddress.ip_address(ip).is_loopback
    except ValueError:
        return False


async def _read_message(reader: asyncio.StreamReader) -> bytes | None:
    """One HTTP/1.1 request (head and body); None at EOF."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
        return None
    lower = head.lower()
    m = re.search(rb"\r\ncontent-length:\s*(\d+)", lower)
    if m:
        await reader.readexactly(int(m.group(1)))
    elif b"\r\ntransfer-encoding: chunked" in lower:
        while True:
            size = int((await reader.readline()).split(b";")[0].strip() or b"0", 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    return head


class EchoServers:
    """A keep-alive HTTP/1.1 server on each ``ip:port``, answering 200 with ``x-golden-backend: ip:port``."""

    def __init__(self) -> None:
        self.servers: list[asyncio.Server] = []
        self.failed: dict[str, str] = {}

    async def start(self, addresses: Iterable[str]) -> None:
        for addr in sorted(set(addresses)):
            ip, _, port = addr.rpartition(":")

            async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _addr: str = addr) -> None:
                try:
                    try:
                        first = await reader.readexactly(len(PREFACE))
                    except asyncio.IncompleteReadError as exc:
                        first = exc.partial
                    if first == PREFACE:
                        await _serve_h2c(reader, writer, _addr)
                        return
                    reader = _prepend(reader, first)
                    while await _read_message(reader) is not None:
                        body = _addr.encode()
                        writer.write(b"HTTP/1.1 200 OK\r\nx-golden-backend: " + body + b"\r\ncontent-length: "
                                     + str(len(body)).encode() + b"\r\ncontent-type: text/plain\r\n\r\n" + body)
                        await writer.drain()
                except (ConnectionError, asyncio.IncompleteReadError):
                    pass
                finally:
                    writer.close()


            try:
                self.servers.append(await asyncio.start_server(handle, ip, int(port), reuse_address=True))
            except OSError as exc:
                self.failed[addr] = str(exc)

    async def aclose(self) -> None:
        for s in self.servers:
            s.close()
        for s in self.servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(s.wait_closed(), 2)


@dataclass(frozen=True)
class Observed:
    status: int | None  # None: the connection closed without a response
    backend: str | None  # x-golden-backend of the answering server
    body: bytes


async def send(local: str, method: str, path: str, authority: str, headers: Iterable[tuple[str, str]],
               timeout: float = 10.0) -> Observed:
    """One HTTP/1.1 request on a fresh connection to ``local`` (the client ztunnel's port)."""
    host, _, port = local.rpartition(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        lines = [f"{method} {path} HTTP/1.1", f"host: {authority}", *(f"{k}: {v}" for k, v in headers),
                 "connection: close"]
        if method in ("POST", "PUT", "PATCH"):
            lines.append("content-length: 0")
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        await writer.drain()
        head, body = await asyncio.wait_for(_read_response(reader, method == "HEAD"), timeout)
    except (ConnectionError, asyncio.IncompleteReadError):
        head, body = b"", b""
    finally:
        writer.close()
    if not head:
        return Observed(None, None, b"")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    status = int(status_line.split()[1])
    backend = None
    for line in header_lines:
        k, _, v = line.partition(":")
        if k.strip().lower() == "x-golden-backend":
            backend = v.strip()
    return Observed(status, backend, body)


async def _read_response(reader: asyncio.StreamReader, head_only: bool = False) -> tuple[bytes, bytes]:
    """(head, body) of one response, read by its framing (no waiting for the close)."""
    try:
        head = (await reader.readuntil(b"\r\n\r\n"))[:-4]
    except asyncio.IncompleteReadError as exc:
        return exc.partial.partition(b"\r\n\r\n")[0], b""
    lower = head.lower()
    if head_only:
        return head, b""
    m = re.search(rb"\r\ncontent-length:\s*(\d+)", lower)
    if m:
        return head, await reader.readexactly(int(m.group(1)))
    if b"\r\ntransfer-encoding: chunked" in lower:
        body = b""
        while True:
            size = int((await reader.readline()).split(b";")[0].strip() or b"0", 16)
            body += (await reader.readexactly(size + 2))[:-2]
            if size == 0:
                return head, body
    return head, await reader.read(-1)


@contextlib.asynccontextmanager
async def echo_servers(addresses: Iterable[str]) -> AsyncIterator[EchoServers]:
    servers = EchoServers()
    await servers.start(addresses)
    try:
        yield servers
    finally:
        await servers.aclose()
