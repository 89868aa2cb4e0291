"""Single-connection HTTP clients for tests that must know a request went over a given connection.

``aiohttp`` pools connections and reconnects silently; these clients own exactly one TCP connection
each and fail loudly if the server closes it, so "the next request on the same connection" is what
the test states.  ``Http1Connection`` speaks HTTP/1.1 keep-alive; ``H2cConnection`` speaks
cleartext HTTP/2 with prior knowledge (what Envoy's ``AUTO`` codec accepts), with just enough of
the protocol for GET requests: request headers are HPACK literals without indexing (never Huffman
coded), response header blocks are skipped (the test backends report everything in their JSON
body), SETTINGS and PING are acknowledged and every DATA frame is credited back, so the connection
can carry any number of requests.  A GOAWAY from the server is recorded (``goaway``).
"""

from __future__ import annotations

import asyncio
import json
import struct
from typing import Any

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = 0, 1, 3, 4, 6, 7, 8, 9
END_STREAM, ACK, END_HEADERS, PADDED = 0x1, 0x1, 0x4, 0x8


class ConnectionClosed(AssertionError):
    """The server closed the connection (or refused the stream) the test meant to keep using."""


class Http1Connection:
    """One HTTP/1.1 keep-alive connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.local_port: int = writer.get_extra_info("sockname")[1]

    @classmethod
    async def open(cls, host: str, port: int) -> Http1Connection:
        return cls(*await asyncio.open_connection(host, port))

    async def get(self, path: str = "/", authority: str = "svc") -> tuple[int, dict[str, str], bytes]:
        """Status, headers (lower-case names) and body of one GET on this connection."""
        self.writer.write(f"GET {path} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode())
        await self.writer.drain()
        try:
            head = await self.reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError) as e:
            raise ConnectionClosed(f"HTTP/1.1 connection from port {self.local_port} closed") from e
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.strip().lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:] if ":" in ln)}
        body = await self.reader.readexactly(int(headers.get("content-length", "0")))
        if headers.get("connection", "").lower() == "close":
            raise ConnectionClosed(f"server closes the HTTP/1.1 connection from port {self.local_port}")
        return status, headers, body

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


def _frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def _literal(name: str, value: str) -> bytes:
    """HPACK "literal header field without indexing, new name" (RFC 7541 6.2.2), short strings."""
    n, v = name.encode(), value.encode()
    assert len(n) < 127 and len(v) < 127
    return b"\x00" + bytes([len(n)]) + n + bytes([len(v)]) + v


class H2cConnection:
    """One cleartext HTTP/2 connection (prior knowledge); one GET at a time."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.local_port: int = writer.get_extra_info("sockname")[1]
        self.next_stream = 1
        self.goaway: bytes | None = None

    @classmethod
    async def open(cls, host: str, port: int) -> H2cConnection:
        conn = cls(*await asyncio.open_connection(host, port))
        conn.writer.write(PREFACE + _frame(SETTINGS, 0, 0))
        await conn.writer.drain()
        return conn

    async def _read_frame(self) -> tuple[int, int, int, bytes]:
        try:
            head = await self.reader.readexactly(9)
            length = int.from_bytes(head[:3], "big")
            payload = await self.reader.readexactly(length)
        except (asyncio.IncompleteReadError, ConnectionError) as e:
            raise ConnectionClosed(f"HTTP/2 connection from port {self.local_port} closed") from e
        return head[3], head[4], int.from_bytes(head[5:9], "big") & 0x7FFFFFFF, payload

    async def get(self, path: str = "/", authority: str = "svc") -> dict[str, Any]:
        """The JSON body of one GET, sent on a new stream of this connection."""
        stream = self.next_stream
        self.next_stream += 2
        block = b"".join(_literal(k, v) for k, v in ((":method", "GET"), (":scheme", "http"), (":path", path),
                                                      (":authority", authority)))
        self.writer.write(_frame(HEADERS, END_HEADERS | END_STREAM, stream, block))
        await self.writer.drain()
        body = b""
        while True:
            kind, flags, sid, payload = await self._read_frame()
            if kind == SETTINGS and not flags & ACK:
                self.writer.write(_frame(SETTINGS, ACK, 0))
            elif kind == PING and not flags & ACK:
                self.writer.write(_frame(PING, ACK, 0, payload))
            elif kind == GOAWAY:
                self.goaway = payload
                raise ConnectionClosed(f"GOAWAY on the HTTP/2 connection from port {self.local_port}")
            elif kind == RST_STREAM and sid == stream:
                raise ConnectionClosed(f"stream {stream} reset: {payload.hex()}")
            elif kind == DATA and sid == stream:
                data = payload[1:len(payload) - payload[0]] if flags & PADDED else payload
                body += data
                if payload:  # credit the connection (and an open stream): any number of requests fit
                    inc = struct.pack(">I", len(payload))
                    self.writer.write(_frame(WINDOW_UPDATE, 0, 0, inc))
                    if not flags & END_STREAM:
                        self.writer.write(_frame(WINDOW_UPDATE, 0, stream, inc))
                if flags & END_STREAM:
                    await self.writer.drain()
                    out: dict[str, Any] = json.loads(body)
                    return out
            elif kind in (HEADERS, CONTINUATION) and sid == stream and flags & END_STREAM:
                raise AssertionError(f"stream {stream} ended without a body")

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()
