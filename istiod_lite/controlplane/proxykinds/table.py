"""The control plane's side of the proxy kinds: node -> group, group -> generator, config -> groups.

Generic over kinds: it loops over the list it is given (``PROXY_KINDS`` unless a test passes its
own) and never names one.  The groups live in the xDS cache; the table decides which of them get a
new snapshot after a config change, and drops (cache entry and generator state) those no proxy
watches any more.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Iterable, Sequence
from typing import Any

from envoy.config.core.v3 import base_pb2

from istiod_lite.controlplane.proxykinds.base import Generator, KindContext, ProxyKind
from istiod_lite.model import ConfigSnapshot
from istiod_lite.xds.cache import SnapshotCache

log = logging.getLogger(__name__)


class ProxyKindTable:
    """The kinds of one control plane, each with its generator; the first kind that recognises a node wins.

    The last kind must recognise every node (``UnrecognisedKind``): a node always gets a group.
    """

    def __init__(self, kinds: Sequence[ProxyKind[Any]], context: KindContext) -> None:
        if not kinds or kinds[-1].recognise(base_pb2.Node()) is None:
            raise ValueError("the last proxy kind must recognise every node (e.g. UnrecognisedKind)")
        self.kinds = tuple(kinds)
        self._generators: dict[str, Generator[Any]] = {}
        self._by_group_type: dict[type, Generator[Any]] = {}
        for kind in self.kinds:
            if kind.name in self._generators or kind.group_type in self._by_group_type:
                raise ValueError(f"proxy kind {kind.name!r}: name or group type already registered")
            gen = kind.generator(context)
            self._generators[kind.name] = gen
            self._by_group_type[kind.group_type] = gen
        #: Generators given the newest config by the last ``update`` (their groups need new snapshots).
        self._updated: set[type] = set()

    def generator(self, name: str) -> Generator[Any]:
        """The generator of the kind called ``name`` (KeyError if none)."""
        return self._generators[name]

    def group_of(self, node: base_pb2.Node) -> Hashable:
        """The ``SnapshotCache`` grouper: the first kind's key that recognises ``node``."""
        for kind in self.kinds:
            group: Hashable | None = kind.recognise(node)
            if group is not None:
                return group
        raise AssertionError("unreachable: the last kind recognises every node")

    def update(self, config: ConfigSnapshot, changed_kinds: Iterable[str] | None = None) -> None:
        """Give every kind that reads any of ``changed_kinds`` (None: every kind) the new config."""
        changed = None if changed_kinds is None else frozenset(changed_kinds)
        self._updated = set()
        for kind in self.kinds:
            if changed is not None and kind.reads is not None and not (changed & kind.reads):
                continue
            self._generators[kind.name].update(config)
            self._updated.add(kind.group_type)

    def publish(self, cache: SnapshotCache, trigger_time: float | None = None) -> None:
        """After ``update``: a new snapshot for every watched group of an updated kind; groups no
        proxy watches are dropped (translated again on demand if a proxy of them connects)."""
        watched = set(cache.watched_groups())
        for group in cache.groups():
            if group not in watched:
                cache.clear_snapshot(group)
                self._generator_of(group).release(group)
            elif type(group) in self._updated:
                cache.set_snapshot(group, self._generator_of(group).snapshot(group), trigger_time)

    def release(self, group: Hashable) -> None:
        """The group's last proxy left (the cache has forgotten it): its generator drops its state."""
        self._generator_of(group).release(group)

    def on_demand(self, cache: SnapshotCache, group: Hashable) -> None:
        """The first proxy of ``group`` connected (the cache has no snapshot for it): compute it."""
        cache.set_snapshot(group, self._generator_of(group).snapshot(group))

    def _generator_of(self, group: Hashable) -> Generator[Any]:
        return self._by_group_type[type(group)]
