"""Opaque, versioned resources: what the xDS layer serves.

The server never looks inside a resource.  Each one is serialised once, wrapped in an ``Any``
once, and given a content-hash version, so pushing the same resource to a thousand streams costs
no re-serialisation, and versions are stable across restarts and replicas (a Delta client that
reconnects to another replica with ``initial_resource_versions`` compares correctly).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from google.protobuf import any_pb2
from google.protobuf.message import Message

from istiod_lite.xds import wire


def content_version(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=8).hexdigest()


# Field numbers: google.protobuf.Any and envoy.service.discovery.v3.Resource.
_ANY_TYPE_URL, _ANY_VALUE = 1, 2
_RESOURCE_VERSION, _RESOURCE_RESOURCE, _RESOURCE_NAME = 1, 2, 3
# A response's entries (``DiscoveryResponse.resources``: ``Any``; ``DeltaDiscoveryResponse.resources``:
# ``Resource``) are field 2, and so is ``Resource.resource``: one framed ``Any`` serves both.
assert _RESOURCE_RESOURCE == wire.RESOURCES_FIELD


@dataclass(frozen=True, slots=True)
class VersionedResource:
    """One resource, serialised once, held as the pieces of its fields in a response.

    A SotW response's entry is the framed ``Any`` (field 2: key, length, type URL, value); a Delta
    response's entry is the framed ``Resource`` (field 2: version, the very same framed ``Any``
    - ``Resource.resource`` is field 2 too - and name).  So one resource is four pieces:
    ``delta_head`` (the Delta frame and version), ``any_head`` (the ``Any``'s frame, type URL and
    value header), ``data`` (the resource itself) and ``tail`` (the name); a response is their
    concatenation.  ``data`` is the caller's bytes object, never copied: when the translator
    already keeps a resource serialised, the server holds its bytes once (10,000 services: ~40 MB).
    """

    name: str
    version: str
    #: The Delta entry's frame (field 2 key and length) and the ``Resource.version`` field.
    delta_head: bytes
    #: The ``Any``'s frame (field 2 key and length), its ``type_url`` field and ``value`` header.
    any_head: bytes
    #: Bytes of the resource itself (``Any.value``).
    data: bytes
    #: The ``Resource.name`` field (empty for an empty name).
    tail: bytes
    #: Length of the serialised ``Resource`` (without its frame): Delta responses are batched by it.
    delta_len: int

    @property
    def size(self) -> int:
        """Bytes of the resource itself."""
        return len(self.data)

    @property
    def delta_parts(self) -> tuple[bytes, bytes, bytes, bytes]:
        """The framed ``Resource``: a Delta response's entry (see wire.py)."""
        return self.delta_head, self.any_head, self.data, self.tail

    @property
    def sotw_parts(self) -> tuple[bytes, bytes]:
        """The framed ``Any``: a SotW response's entry (see wire.py)."""
        return self.any_head, self.data

    @property
    def delta_bytes(self) -> bytes:
        """The serialised Delta ``Resource`` (a copy: tests and debugging)."""
        return _unframed(b"".join(self.delta_parts))

    @property
    def any_bytes(self) -> bytes:
        """The serialised ``Any`` (a copy: tests and debugging)."""
        return _unframed(b"".join(self.sotw_parts))

    @property
    def any(self) -> any_pb2.Any:
        """The ``Any`` message, decoded on demand (tests and debugging; the server sends bytes)."""
        return any_pb2.Any.FromString(self.any_bytes)

    @classmethod
    def from_message(cls, name: str, type_url: str, message: Message) -> VersionedResource:
        data = message.SerializeToString(deterministic=True)
        return cls.from_bytes(name, type_url, data)

    @classmethod
    def from_bytes(cls, name: str, type_url: str, data: bytes) -> VersionedResource:
        """Encode by hand, exactly as ``SerializeToString`` would (proto3 omits empty fields;
        tested against the real messages); ``data`` is kept, not copied."""
        version = content_version(data)
        any_fields = (wire.field(_ANY_TYPE_URL, type_url.encode()) if type_url else b"") + (
            wire.header(_ANY_VALUE, len(data)) if data else b"")
        any_len = len(any_fields) + len(data)
        any_head = wire.header(_RESOURCE_RESOURCE, any_len) + any_fields
        version_field = wire.field(_RESOURCE_VERSION, version.encode())
        tail = wire.field(_RESOURCE_NAME, name.encode()) if name else b""
        delta_len = len(version_field) + len(any_head) + len(data) + len(tail)
        return cls(name=name, version=version, delta_head=wire.header(wire.RESOURCES_FIELD, delta_len) + version_field,
                   any_head=any_head, data=data, tail=tail, delta_len=delta_len)


def _unframed(field: bytes) -> bytes:
    """A length-delimited field's payload: past its one-byte key and its varint length."""
    i = 1
    while field[i] & 0x80:
        i += 1
    return field[i + 1:]


def set_version(items: Iterable[VersionedResource]) -> str:
    """Version of a set of resources as one client sees it (SotW ``version_info``)."""
    h = hashlib.blake2b(digest_size=8)
    for r in sorted(items, key=lambda r: r.name):
        h.update(r.name.encode())
        h.update(b"\0")
        h.update(r.version.encode())
        h.update(b"\n")
    return h.hexdigest()


@dataclass(frozen=True)
class ResourceSnapshot:
    """Immutable map type_url -> name -> VersionedResource for one group of proxies."""

    types: Mapping[str, Mapping[str, VersionedResource]] = field(default_factory=dict)
    _versions: dict[str, str] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def build(cls, by_type: Mapping[str, Iterable[VersionedResource]]) -> ResourceSnapshot:
        frozen = {
            t: MappingProxyType({r.name: r for r in sorted(items, key=lambda r: r.name)})
            for t, items in by_type.items()
        }
        return cls(types=MappingProxyType(frozen))

    @classmethod
    def from_messages(cls, by_type: Mapping[str, Mapping[str, Message]]) -> ResourceSnapshot:
        """Serialise and version every message (name -> message, per type URL)."""
        return cls.build(
            {
                type_url: [VersionedResource.from_message(name, type_url, msg) for name, msg in named.items()]
                for type_url, named in by_type.items()
            }
        )

    def of_type(self, type_url: str) -> Mapping[str, VersionedResource]:
        return self.types.get(type_url, {})

    def type_version(self, type_url: str) -> str:
        """``set_version`` of every resource of ``type_url`` (cached: snapshots are immutable)."""
        cached = self._versions.get(type_url)
        if cached is None:
            cached = self._versions[type_url] = set_version(self.of_type(type_url).values())
        return cached

    def __iter__(self) -> Iterator[str]:
        return iter(self.types)


EMPTY = ResourceSnapshot()

TypeMap = Mapping[str, VersionedResource]


def diff_maps(old: TypeMap, new: TypeMap) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Names added or changed, and names removed, from ``old`` to ``new`` (one type's resources).

    Streams moving between the same two maps share one result through ``PushMemo.diff``.
    """
    changed = tuple(n for n, r in new.items() if (o := old.get(n)) is None or o.version != r.version)
    removed = tuple(n for n in old if n not in new)
    return changed, removed
