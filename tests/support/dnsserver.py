"""A minimal authoritative DNS server over UDP on loopback: A records only, for tests.

Why: Envoy's dynamic forward proxy resolves names itself (c-ares); tests point its DNS cache at
this server (``serve --dynamic-dns-resolver``) so made-up names like ``api.ext.test`` resolve to
loopback servers without touching ``/etc/hosts`` or the machine's resolver.

Answers (RFC 1035): a name in ``records`` gets its A record (TTL ``ttl``) for an A query and an
empty NOERROR answer for any other type; any other name gets NXDOMAIN; a malformed packet is
dropped.  Every question is recorded in ``queries`` as ``(name, qtype)``, so a test can show the
proxy really asked here.
"""

from __future__ import annotations

import asyncio
import ipaddress
import struct
from collections.abc import Mapping

TYPE_A = 1
_CLASS_IN = 1
_FLAG_RESPONSE, _FLAG_AA, _FLAG_RD = 0x8000, 0x0400, 0x0100
_NOERROR, _FORMERR, _NXDOMAIN = 0, 1, 3


def _read_name(packet: bytes, offset: int) -> tuple[str, int]:
    """The (uncompressed) question name at ``offset`` and the offset after it."""
    labels: list[str] = []
    while True:
        if offset >= len(packet):
            raise ValueError("truncated name")
        n = packet[offset]
        offset += 1
        if n == 0:
            return ".".join(labels).lower(), offset
        if n & 0xC0 or offset + n > len(packet):
            raise ValueError("bad label")
        labels.append(packet[offset:offset + n].decode("ascii"))
        offset += n


def answer(packet: bytes, records: Mapping[str, str], ttl: int = 30) -> tuple[bytes, tuple[str, int]] | None:
    """The response to one query packet and its question, or None for a packet to drop."""
    if len(packet) < 12:
        return None
    ident, flags, qdcount = struct.unpack("!HHH", packet[:6])
    if flags & _FLAG_RESPONSE or qdcount != 1:
        return None
    try:
        name, end = _read_name(packet, 12)
    except (ValueError, UnicodeDecodeError):
        return None
    if end + 4 > len(packet):
        return None
    qtype, qclass = struct.unpack("!HH", packet[end:end + 4])
    question = packet[12:end + 4]
    ip = records.get(name.rstrip("."))
    rcode = _NXDOMAIN if ip is None else _NOERROR
    answers = b""
    if ip is not None and qtype == TYPE_A and qclass == _CLASS_IN:
        # Name as a pointer to the question (offset 12), type A, class IN, TTL, 4 bytes of address.
        answers = struct.pack("!HHHIH", 0xC00C, TYPE_A, _CLASS_IN, ttl, 4) + ipaddress.IPv4Address(ip).packed
    header = struct.pack("!HHHHHH", ident, _FLAG_RESPONSE | _FLAG_AA | (flags & _FLAG_RD) | rcode, 1,
                         1 if answers else 0, 0, 0)
    return header + question + answers, (name, qtype)


class DnsServer(asyncio.DatagramProtocol):
    """``async with DnsServer(host, {"api.ext.test": "127.0.0.5"}) as dns:`` then ``dns.port``."""

    def __init__(self, host: str, records: Mapping[str, str], ttl: int = 30) -> None:
        self.host = host
        self.records = {k.lower().rstrip("."): v for k, v in records.items()}
        self.ttl = ttl
        self.port = 0
        self.queries: list[tuple[str, int]] = []
        self._transport: asyncio.DatagramTransport | None = None

    def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
        out = answer(data, self.records, self.ttl)
        if out is not None and self._transport is not None:
            self.queries.append(out[1])
            self._transport.sendto(out[0], addr)

    async def __aenter__(self) -> DnsServer:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(lambda: self, local_addr=(self.host, 0))
        self._transport = transport
        self.port = int(transport.get_extra_info("sockname")[1])
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None


__all__ = ["TYPE_A", "DnsServer", "answer"]
