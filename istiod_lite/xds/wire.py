"""Responses assembled from pre-encoded resource bytes instead of protobuf message building.

Why: a Delta or SotW response to one stream repeats resources every other stream also gets.
Building it as a protobuf message copies each resource's bytes into a new message per stream
(plus per-resource Python calls); for 1,000 streams x 3,000 resources that dominated push time
and left megabytes per stream in the allocator.  Protobuf's wire format lets a message be the
concatenation of its fields, so each resource is encoded once (``VersionedResource``) and a
response is one ``b"".join``.  The bytes are exactly what ``SerializeToString`` would produce
for the same fields in field-number order (tested against the real messages).
Rule numbers (R7) refer to docs/xds-rules.md.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from itertools import chain
from typing import Any

from envoy.service.discovery.v3 import discovery_pb2

# Field numbers (envoy/service/discovery/v3/discovery.proto).
_SOTW_VERSION_INFO, _SOTW_TYPE_URL, _SOTW_NONCE = 1, 4, 5
_DELTA_SYSTEM_VERSION, _DELTA_TYPE_URL, _DELTA_NONCE, _DELTA_REMOVED = 1, 4, 5, 6
#: ``resources`` of both responses: entries come framed as this field (``VersionedResource``).
RESOURCES_FIELD = 2


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


def header(number: int, length: int) -> bytes:
    """The key and length that precede a length-delimited field's ``length`` bytes of payload."""
    return _KEYS[number] + _varint(length)


def field(number: int, payload: bytes | memoryview) -> bytes:
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


class SharedResponses:
    """Large responses, by content key, built once for every stream that gets them.

    When one change reaches many streams, every stream that gets byte-identical content is sent
    the same response object, nonce included (the nonce of the first stream it was built for).
    Encoding megabytes per stream cost more in fresh memory (page faults) than in copying.  A
    shared nonce is still unique to that content and this server run, so it identifies the
    response a client ACKs; the nonce Envoy has leaked into a new stream's first request (R7)
    arrives before that stream was sent anything, so it is stale whatever its value.

    Owned by one ADS server (through its ``PushMemo``): two servers never hand each other's
    responses out, and the responses go when the server does.  Bounded, newest kept.
    """

    __slots__ = ("_by_key", "max_entries", "min_bytes")

    def __init__(self, max_entries: int = 16, min_bytes: int = 64 * 1024) -> None:
        self._by_key: dict[Hashable, EncodedResponse] = {}
        self.max_entries = max_entries
        #: Smaller responses are cheap to build per stream and never held.
        self.min_bytes = min_bytes

    def __len__(self) -> int:
        return len(self._by_key)

    def get_or_build(self, key: Hashable, build: Callable[[], EncodedResponse]) -> EncodedResponse:
        hit = self._by_key.get(key)
        if hit is not None:
            return hit
        resp = build()
        if len(resp.data) >= self.min_bytes:
            if len(self._by_key) >= self.max_entries:
                del self._by_key[next(iter(self._by_key))]
            self._by_key[key] = resp
        return resp

    def clear(self) -> None:
        self._by_key.clear()


def _shared(shared: SharedResponses | None, key: Hashable | None,
            build: Callable[[], EncodedResponse]) -> EncodedResponse:
    return build() if shared is None or key is None else shared.get_or_build(key, build)


def sotw_response(type_url: str, version: str, nonce: str, entries: Iterable[Iterable[bytes]],
                  key: Hashable | None = None, shared: SharedResponses | None = None) -> EncodedResponse:
    """``entries``: each resource's ``Any`` already framed as field ``RESOURCES_FIELD``, in pieces
    (``VersionedResource.sotw_parts``: joined as they are, the resource bytes copied once, here).
    ``key``: identifies the resources (e.g. their names and versions) so that a large response
    is built once in ``shared`` for every stream that gets it (use the returned ``nonce``); without
    both, always build."""

    def build() -> EncodedResponse:
        parts = [_str_field(_SOTW_VERSION_INFO, version)]
        parts.extend(chain.from_iterable(entries))
        parts.append(_str_field(_SOTW_TYPE_URL, type_url))
        parts.append(_str_field(_SOTW_NONCE, nonce))
        return EncodedResponse(discovery_pb2.DiscoveryResponse, b"".join(parts), type_url, nonce, version)

    return _shared(shared, None if key is None else ("sotw", type_url, version, key), build)


def delta_response(type_url: str, system_version: str, nonce: str, entries: Iterable[Iterable[bytes]],
                   removed: Iterable[str], key: Hashable | None = None,
                   shared: SharedResponses | None = None) -> EncodedResponse:
    """As ``sotw_response``, with framed ``Resource``s (``VersionedResource.delta_parts``); a
    response that removes names is per stream and never shared."""
    gone = list(removed)

    def build() -> EncodedResponse:
        parts = [_str_field(_DELTA_SYSTEM_VERSION, system_version)]
        parts.extend(chain.from_iterable(entries))
        parts.append(_str_field(_DELTA_TYPE_URL, type_url))
        parts.append(_str_field(_DELTA_NONCE, nonce))
        parts.extend(field(_DELTA_REMOVED, n.encode()) for n in gone)
        return EncodedResponse(discovery_pb2.DeltaDiscoveryResponse, b"".join(parts), type_url, nonce,
                               system_version)

    return _shared(shared, None if key is None or gone else ("delta", type_url, system_version, key), build)


def serialize(message: Any) -> bytes:
    """gRPC response serializer accepting both real messages and ``EncodedResponse``."""
    return message.SerializeToString()  # type: ignore[no-any-return]
