"""Run a golden case's configuration for real: its input YAML in a control plane, its waypoint(s)
as real Envoy agents, every loopback endpoint of its clusters as a real HTTP server that names
itself (``x-backend: ip:port``), pod addresses behind real HBONE terminators, and clients with a
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
    """A keep-alive HTTP/1.1 server on each ``ip:port``, answering 200 with ``x-backend: ip:port``."""

    def __init__(self) -> None:
        self.servers: list[asyncio.Server] = []
        self.failed: dict[str, str] = {}

    async def start(self, addresses: Iterable[str]) -> None:
        for addr in sorted(set(addresses)):
            ip, _, port = addr.rpartition(":")

            async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _addr: str = addr) -> None:
                try:
                    while await _read_message(reader) is not None:
                        body = _addr.encode()
                        writer.write(b"HTTP/1.1 200 OK\r\nx-backend: " + body + b"\r\ncontent-length: "
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
    backend: str | None  # x-backend of the answering server
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
        data = await asyncio.wait_for(reader.read(-1), timeout)
    except (ConnectionError, asyncio.IncompleteReadError):
        data = b""
    finally:
        writer.close()
    if not data:
        return Observed(None, None, b"")
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    status = int(status_line.split()[1])
    backend = None
    for line in header_lines:
        k, _, v = line.partition(":")
        if k.strip().lower() == "x-backend":
            backend = v.strip()
    return Observed(status, backend, body)


@contextlib.asynccontextmanager
async def echo_servers(addresses: Iterable[str]) -> AsyncIterator[EchoServers]:
    servers = EchoServers()
    await servers.start(addresses)
    try:
        yield servers
    finally:
        await servers.aclose()
