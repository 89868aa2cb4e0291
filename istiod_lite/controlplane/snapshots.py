"""Turn the translator's ``EnvoyResources`` into the xDS layer's ``ResourceSnapshot``.

Serialising, hashing and wrapping a resource costs more than looking it up, and the translator
re-uses the message objects of services whose inputs did not change; ``VersionedCache`` keeps
the ``VersionedResource`` of each message object from the previous conversion, so only messages
that were rebuilt are serialised again.  A resource the translator already keeps serialised
(``Encoded``) is not serialised here at all, only hashed and wrapped, once per object.
"""

from __future__ import annotations

from istiod_lite.translator.core.output import Encoded, EnvoyResources, Resource
from istiod_lite.xds.resources import ResourceSnapshot, VersionedResource


def to_resource_snapshot(res: EnvoyResources) -> ResourceSnapshot:
    return ResourceSnapshot.build({t: [_versioned(n, t, r) for n, r in named.items()]
                                   for t, named in res.by_type.items()})


def _versioned(name: str, type_url: str, resource: Resource) -> VersionedResource:
    if isinstance(resource, Encoded):
        return VersionedResource.from_bytes(name, type_url, resource.data)
    return VersionedResource.from_message(name, type_url, resource)


class VersionedCache:
    """(type, name, resource object) -> VersionedResource, kept for the objects of the last call."""

    def __init__(self) -> None:
        self._entries: dict[tuple[str, str, int], tuple[Resource, VersionedResource]] = {}
        self.last_serialised = 0

    def versioned(self, res: EnvoyResources) -> dict[str, list[VersionedResource]]:
        entries: dict[tuple[str, str, int], tuple[Resource, VersionedResource]] = {}
        out: dict[str, list[VersionedResource]] = {}
        serialised = 0
        for type_url, named in res.by_type.items():
            items = out[type_url] = []
            for name, msg in named.items():
                key = (type_url, name, id(msg))
                hit = self._entries.get(key)
                if hit is not None and hit[0] is msg:
                    vr = hit[1]
                else:
                    vr = _versioned(name, type_url, msg)
                    serialised += 1
                entries[key] = (msg, vr)
                items.append(vr)
        self._entries = entries
        self.last_serialised = serialised
        return out
