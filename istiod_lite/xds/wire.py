"""Responses assembled from pre-encoded resource bytes instead of protobuf message building.

Why: a Delta or SotW response to one stream repeats resources every other stream also gets.
Building it as a protobuf message copies each resource's bytes into a new message per stream
(plus per-resource Python calls); for 1,000 streams x 3,000 resources that dominated push time
and left megabytes per stream in the allocator.  Protobuf's wire format lets a message be the
concatenation of its fields, so each resource is encoded once (``VersionedResource``) and a
response is one ``b"".join``.  The bytes are exactly what ``SerializeToString`` would produce
for the same fields in field-number order (tested against the real messages).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from typing import Any

from envoy.service.discovery.v3 import discovery_pb2

# Field numbers (envoy/service/discovery/v3/discovery.proto).
_SOTW_VERSION_INFO, _SOTW_RESOURCES, _SOTW_TYPE_URL, _SOTW_NONCE = 1, 2, 4, 5
_DELTA_SYSTEM_VERSION, _DELTA_RESOURCES, _DELTA_TYPE_URL, _DELTA_NONCE, _DELTA_REMOVED = 1, 2, 4, 5, 6


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


_KEYS = {n: _varint((n << 3) | 2) for n in range(1, 16)}  # length-delimited field keys


def field(number: int, payload: bytes) -> bytes:
    """One length-delimited field (strings, bytes, embedded messages)."""
    return _KEYS[number] + _varint(len(payload)) + payload


def _str_field(number: int, text: str) -> bytes:
    return field(number, text.encode()) if text else b""


class EncodedResponse:
    """A serialised DiscoveryResponse / DeltaDiscoveryResponse plus the fields the server reads.

    ``SerializeToString`` returns the bytes (the gRPC serializer calls it); other attributes are
    read from the decoded message on demand, for tests and debugging.
    """

    __slots__ = ("_decoded", "_kind", "data", "nonce", "type_url", "version")

    def __init__(self, kind: type[Any], data: bytes, type_url: str, nonce: str, version: str) -> None:
        self._kind = kind
        self._decoded: Any = None
        self.data = data
        self.type_url = type_url
        self.nonce = nonce
        self.version = version

    def SerializeToString(self) -> bytes:
        return self.data

    def ByteSize(self) -> int:
        return len(self.data)

    def decode(self) -> Any:
        if self._decoded is None:
            self._decoded = self._kind.FromString(self.data)
        return self._decoded

    def __getattr__(self, name: str) -> Any:
        return getattr(self.decode(), name)


#: Response bodies (every field but the nonce and Delta's removed names) of large responses, by
#: content key: when a change reaches many streams, each stream's response is this shared body
#: plus its own nonce, one copy instead of re-encoding megabytes per stream.  Bounded, newest kept.
_BODIES: dict[Hashable, bytes] = {}
_BODIES_MAX = 16
_CACHE_MIN_BYTES = 64 * 1024


def _body(key: Hashable | None, first: bytes, resource_field: int, payloads: Iterable[bytes], type_url: str) -> bytes:
    if key is not None:
        hit = _BODIES.get(key)
        if hit is not None:
            return hit
    parts = [first]
    parts.extend(field(resource_field, b) for b in payloads)
    parts.append(_str_field(_DELTA_TYPE_URL, type_url))  # field 4 in both messages
    body = b"".join(parts)
    if key is not None and len(body) >= _CACHE_MIN_BYTES:
        if len(_BODIES) >= _BODIES_MAX:
            del _BODIES[next(iter(_BODIES))]
        _BODIES[key] = body
    return body


def sotw_response(type_url: str, version: str, nonce: str, any_bytes: Iterable[bytes],
                  key: Hashable | None = None) -> EncodedResponse:
    """``key``: identifies the resources (e.g. their names and versions) so that a large body is
    encoded once for every stream that gets it; None: always encode."""
    body = _body(None if key is None else ("sotw", type_url, version, key), _str_field(_SOTW_VERSION_INFO, version),
                 _SOTW_RESOURCES, any_bytes, type_url)
    data = b"".join((body, _str_field(_SOTW_NONCE, nonce)))
    return EncodedResponse(discovery_pb2.DiscoveryResponse, data, type_url, nonce, version)


def delta_response(type_url: str, system_version: str, nonce: str, resource_bytes: Iterable[bytes],
                   removed: Iterable[str], key: Hashable | None = None) -> EncodedResponse:
    """As ``sotw_response``; ``removed`` names are per stream and never part of the shared body."""
    body = _body(None if key is None else ("delta", type_url, system_version, key),
                 _str_field(_DELTA_SYSTEM_VERSION, system_version), _DELTA_RESOURCES, resource_bytes, type_url)
    parts = [body, _str_field(_DELTA_NONCE, nonce)]
    parts.extend(field(_DELTA_REMOVED, n.encode()) for n in removed)
    return EncodedResponse(discovery_pb2.DeltaDiscoveryResponse, b"".join(parts), type_url, nonce, system_version)


def serialize(message: Any) -> bytes:
    """gRPC response serializer accepting both real messages and ``EncodedResponse``."""
    return message.SerializeToString()  # type: ignore[no-any-return]
