"""The kinds of proxy the control plane serves, as a list: the one place a kind is registered.

A node is asked of each kind in order; the first that recognises it decides its group, and so what
it is served.  To add a kind (docs/architecture.md, "How to add a proxy kind"): write a module here
with a ``ProxyKind`` and its ``Generator`` (``base.py``) and add an instance to ``PROXY_KINDS``
before ``UnrecognisedKind``, which must stay last.
"""

from __future__ import annotations

from typing import Any

from istiod_lite.controlplane.proxykinds.base import Generator, KindContext, ProxyKind
from istiod_lite.controlplane.proxykinds.proxyless import ProxylessClients, ProxylessGrpcKind
from istiod_lite.controlplane.proxykinds.table import ProxyKindTable
from istiod_lite.controlplane.proxykinds.unrecognised import UnrecognisedKind, UnrecognisedProxies
from istiod_lite.controlplane.proxykinds.waypoint import WaypointGenerator, WaypointKind, WaypointProxies
from istiod_lite.controlplane.proxykinds.ztunnel import ZtunnelGenerator, ZtunnelKind, ZtunnelProxies

PROXY_KINDS: tuple[ProxyKind[Any], ...] = (
    WaypointKind(),
    ProxylessGrpcKind(),
    ZtunnelKind(),
    UnrecognisedKind(),
)

__all__ = [
    "PROXY_KINDS",
    "Generator",
    "KindContext",
    "ProxyKind",
    "ProxyKindTable",
    "ProxylessClients",
    "ProxylessGrpcKind",
    "UnrecognisedKind",
    "UnrecognisedProxies",
    "WaypointGenerator",
    "WaypointKind",
    "WaypointProxies",
    "ZtunnelGenerator",
    "ZtunnelKind",
    "ZtunnelProxies",
]
