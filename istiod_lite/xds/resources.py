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


@dataclass(frozen=True, slots=True)
class VersionedResource:
    """One resource, serialised once: its Delta ``Resource`` encoding, with the ``Any`` inside it.

    Why only ``delta_bytes`` is stored: the serialised ``Any`` (a SotW response's entry) is a
    contiguous part of the serialised ``Resource`` (fields in number order: version, resource,
    name), so ``any_bytes`` is a zero-copy view of it.  Keeping the ``Any`` message and both
    encodings held each resource's bytes three times (10,000 services: ~150 MB of 500).
    """

    name: str
    version: str
    #: The serialised Delta ``Resource`` (version, Any, name): joined into every Delta response.
    delta_bytes: bytes
    #: Where the serialised ``Any`` lies in ``delta_bytes``.
    any_start: int
    any_end: int
    #: Bytes of the resource itself (``Any.value``).
    size: int

    @property
    def any_bytes(self) -> memoryview:
        """The serialised ``Any``: a SotW response's resource entry (see wire.py)."""
        return memoryview(self.delta_bytes)[self.any_start:self.any_end]

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
        tested against the real messages): one join, one copy of ``data``."""
        version = content_version(data)
        any_parts = [wire.field(_ANY_TYPE_URL, type_url.encode())] if type_url else []
        if data:
            any_parts += [wire.header(_ANY_VALUE, len(data)), data]
        any_len = sum(map(len, any_parts))
        head = wire.field(_RESOURCE_VERSION, version.encode()) + wire.header(_RESOURCE_RESOURCE, any_len)
        tail = wire.field(_RESOURCE_NAME, name.encode()) if name else b""
        delta = b"".join([head, *any_parts, tail])
        return cls(name=name, version=version, delta_bytes=delta, any_start=len(head),
                   any_end=len(head) + any_len, size=len(data))


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
