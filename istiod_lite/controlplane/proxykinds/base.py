"""What a kind of proxy is to the control plane: how its nodes are recognised, what they are served.

Modelled on istiod's per-type generators, one level up: a *kind* (waypoint, proxyless gRPC,
ztunnel, ...) recognises its nodes and maps each to a *group key*, a typed hashable value (every
proxy with the same key is served the same resources); its *generator*, one per control plane,
reads the config and builds each group's versioned resources keyed by type URL.  The core
(``table.py``, ``app.py``) only loops over kinds, so adding one touches neither.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

from envoy.config.core.v3 import base_pb2

from istiod_lite.model import ConfigSnapshot
from istiod_lite.model.meshconfig import MeshConfig
from istiod_lite.translator.clusters.dynamic_dns import DEFAULT_OPTIONS, DynamicDnsOptions
from istiod_lite.xds.resources import ResourceSnapshot

#: A kind's group key type: frozen (hashable), compared and never parsed; ``str()`` of it names
#: the group in logs and ``/debug/syncz``.
Group = TypeVar("Group", bound=Hashable)


@dataclass(frozen=True)
class KindContext:
    """What a generator may read besides the config: the control plane's fixed options."""

    trust_domain: str = "cluster.local"
    mesh: MeshConfig | None = None
    #: How waypoints serve DYNAMIC_DNS ServiceEntries (server options).
    dynamic_dns: DynamicDnsOptions = DEFAULT_OPTIONS


class Generator(ABC, Generic[Group]):
    """One kind's resources for the running control plane.  Called on the event loop, never concurrently.

    ``update`` sees every new config before ``snapshot`` is asked for any group under it;
    ``snapshot`` is asked only for groups with a connected proxy, so a kind may translate lazily.
    """

    @abstractmethod
    def update(self, config: ConfigSnapshot) -> None:
        """The config changed: recompute what all groups share (or just remember the config) and
        drop state of what left it."""

    @abstractmethod
    def snapshot(self, group: Group) -> ResourceSnapshot:
        """Every resource a proxy of ``group`` is served under the current config, by type URL.
        Must not raise for a group the config does not know (serve it an empty set)."""

    def release(self, group: Group) -> None:
        """No proxy of ``group`` is connected any more: drop what was kept for it."""


class ProxyKind(ABC, Generic[Group]):
    """A kind of proxy: an entry of ``PROXY_KINDS`` (``proxykinds/__init__.py``)."""

    #: Short name: the table's key for the kind's generator (``ControlPlane.proxies.generator(name)``).
    name: str
    #: The class of this kind's group keys (distinct per kind: groups are routed to generators by it).
    group_type: type[Group]
    #: Config kinds (``ResourceKey.kind``) whose change can alter this kind's resources; a change
    #: of none of them does not regenerate it.  None: any change may.
    reads: frozenset[str] | None = None

    @abstractmethod
    def recognise(self, node: base_pb2.Node) -> Group | None:
        """The node's group if this kind serves it, else None (the next kind is asked).  Cheap, never raises."""

    @abstractmethod
    def generator(self, context: KindContext) -> Generator[Group]:
        """A fresh generator for one control plane."""
