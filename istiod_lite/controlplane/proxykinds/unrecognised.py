"""Nodes no other kind recognises: one group, served an empty but valid config (never an error).

Must stay last in ``PROXY_KINDS``: it recognises every node.
"""

from __future__ import annotations

from dataclasses import dataclass

from envoy.config.core.v3 import base_pb2

from istiod_lite.controlplane.proxykinds.base import Generator, KindContext, ProxyKind
from istiod_lite.model import ConfigSnapshot
from istiod_lite.xds.resources import EMPTY, ResourceSnapshot


@dataclass(frozen=True)
class UnrecognisedProxies:
    """The one group of every node no kind recognises."""

    def __str__(self) -> str:
        return "unknown"


class EmptyGenerator(Generator[UnrecognisedProxies]):
    def update(self, config: ConfigSnapshot) -> None:
        pass

    def snapshot(self, group: UnrecognisedProxies) -> ResourceSnapshot:
        return EMPTY


class UnrecognisedKind(ProxyKind[UnrecognisedProxies]):
    name = "unrecognised"
    group_type = UnrecognisedProxies
    #: Serves nothing whatever the config says.
    reads = frozenset[str]()

    def recognise(self, node: base_pb2.Node) -> UnrecognisedProxies:
        return UnrecognisedProxies()

    def generator(self, context: KindContext) -> EmptyGenerator:
        return EmptyGenerator()
