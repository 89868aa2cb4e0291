"""What the streams of one ADS server compute once and share, owned by that server.

Why: with a thousand streams of one waypoint, every stream moves between the same two resource
maps, subscribes to the same names and is sent the same large responses.  Computing those per
stream was most of a push's cost (and its memory).  The memos used to be module globals; they
belong to the server whose streams share them: two servers in one process (istiod and an
agent's SDS server, or two tests) share nothing, and a server's memos go with it, or when its
last stream closes (``AdsServer`` calls ``clear``).

The SotW and Delta state machines stay pure: the server passes its ``PushMemo`` in.  Everything
here is keyed by object identity and holds the objects it is keyed on, so an id is never reused
while its entry lives.  Bounded (newest kept); not thread-safe (one event loop serves the
streams).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping

from istiod_lite.xds.resources import TypeMap, VersionedResource, diff_maps, set_version
from istiod_lite.xds.wire import SharedResponses

#: A named view: (the type's map it was cut from, the view, its ``set_version``).
_View = tuple[TypeMap, dict[str, VersionedResource], str]
_Diff = tuple[TypeMap, TypeMap, tuple[str, ...], tuple[str, ...]]


class PushMemo:
    """Resource-map diffs, SotW named views and their version maps, and large responses."""

    def __init__(self, max_views: int = 32, max_diffs: int = 16) -> None:
        self.max_views = max_views
        self.max_diffs = max_diffs
        #: Large responses by content (see ``wire.SharedResponses``).
        self.responses = SharedResponses()
        #: (id(old), id(new)) -> (old, new, changed names, removed names).
        self._diffs: OrderedDict[tuple[int, int], _Diff] = OrderedDict()
        #: (id(type map), names) -> view.  Streams of one waypoint subscribe to the same names.
        self._views: OrderedDict[tuple[int, frozenset[str]], _View] = OrderedDict()
        #: id(view) -> (view, name -> version): one map for every stream sent the view.
        self._version_maps: OrderedDict[int, tuple[Mapping[str, VersionedResource], dict[str, str]]] = (
            OrderedDict())

    def diff(self, old: TypeMap, new: TypeMap) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """``resources.diff_maps(old, new)``, once per pair of maps."""
        key = (id(old), id(new))
        hit = self._diffs.get(key)
        if hit is not None and hit[0] is old and hit[1] is new:
            self._diffs.move_to_end(key)
            return hit[2], hit[3]
        changed, removed = diff_maps(old, new)
        self._diffs[key] = (old, new, changed, removed)
        while len(self._diffs) > self.max_diffs:
            self._diffs.popitem(last=False)
        return changed, removed

    def named_view(self, available: TypeMap, names: frozenset[str]) -> tuple[dict[str, VersionedResource], str]:
        """The resources of ``available`` named in ``names`` (sorted by name), and their version."""
        key = (id(available), names)
        hit = self._views.get(key)
        if hit is not None and hit[0] is available:
            self._views.move_to_end(key)
            return hit[1], hit[2]
        visible = {n: available[n] for n in sorted(names) if n in available}
        version = set_version(visible.values())
        self._views[key] = (available, visible, version)
        while len(self._views) > self.max_views:
            self._views.popitem(last=False)
        return visible, version

    def versions_of(self, visible: Mapping[str, VersionedResource]) -> dict[str, str]:
        """name -> version of a view, shared by the streams sent the same view (never mutate it)."""
        hit = self._version_maps.get(id(visible))
        if hit is not None and hit[0] is visible:
            return hit[1]
        versions = {n: r.version for n, r in visible.items()}
        self._version_maps[id(visible)] = (visible, versions)
        while len(self._version_maps) > self.max_views:
            self._version_maps.popitem(last=False)
        return versions

    def clear(self) -> None:
        """Drop everything (and the snapshots' maps and responses it holds)."""
        self.responses.clear()
        self._diffs.clear()
        self._views.clear()
        self._version_maps.clear()
