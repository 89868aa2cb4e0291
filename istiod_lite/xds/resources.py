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

from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import any_pb2
from google.protobuf.message import Message


def content_version(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=8).hexdigest()


@dataclass(frozen=True, slots=True)
class VersionedResource:
    name: str
    version: str
    any: any_pb2.Any
    #: The serialised ``Any`` (a SotW response's resource entry) and the serialised Delta
    #: ``Resource`` (name, version, Any): encoded once, joined into every response (see wire.py).
    any_bytes: bytes = b""
    delta_bytes: bytes = b""

    @property
    def size(self) -> int:
        return len(self.any.value)

    @classmethod
    def from_message(cls, name: str, type_url: str, message: Message) -> VersionedResource:
        data = message.SerializeToString(deterministic=True)
        return cls.from_bytes(name, type_url, data)

    @classmethod
    def from_bytes(cls, name: str, type_url: str, data: bytes) -> VersionedResource:
        version = content_version(data)
        packed = any_pb2.Any(type_url=type_url, value=data)
        delta = discovery_pb2.Resource(name=name, version=version, resource=packed)
        return cls(name=name, version=version, any=packed, any_bytes=packed.SerializeToString(),
                   delta_bytes=delta.SerializeToString())


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
