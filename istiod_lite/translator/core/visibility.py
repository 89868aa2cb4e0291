"""``exportTo``: which namespaces see a Service, ServiceEntry, VirtualService or DestinationRule.

Why here: a waypoint is a proxy in its own namespace, and istiod decides what it sees exactly as
for any proxy of that namespace (``PushContext``'s service, VirtualService and DestinationRule
indexes, built from ``exportTo`` or, when a resource has none, the MeshConfig defaults).  These
helpers state Istio's rules once; the DestinationRule lookup (``clusters/policy_select.py``), the
VirtualService lookup (``core/index.py``) and the warnings read them.

Values: ``*`` everyone, ``.`` the resource's own namespace, ``~`` no one, else a namespace name.
Facts (istio/istio ``pilot/pkg/model/push_context.go``):

* Services and ServiceEntries (``IsServiceVisible``): the set is the resource's ``exportTo`` (a
  Service's ``networking.istio.io/exportTo`` annotation, comma separated) or else
  ``defaultServiceExportTo``; visible when it holds ``*``, or ``.`` and the client is in the
  owner's namespace, or the client's namespace;
* VirtualServices (``initVirtualServices``): ``.`` means the owner's namespace; ``*`` is public and
  wins over everything else; ``~`` hides it; otherwise it is visible to the namespaces named
  (its own only if named, or ``.``).  A proxy lists the private ones (own namespace) first, then
  those exported to its namespace by name, then the public ones, each in creation order;
* DestinationRules: see ``clusters/policy_select.py`` (their defaults honour only ``.`` and ``*``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from istiod_lite.model.core import Service
from istiod_lite.model.meshconfig import MeshConfig
from istiod_lite.model.networking import ServiceEntry, VirtualService

PUBLIC: Final = "*"
PRIVATE: Final = "."
NONE: Final = "~"
#: The Service annotation Istio reads a Service's ``exportTo`` from.
SERVICE_EXPORT_TO_ANNOTATION: Final = "networking.istio.io/exportTo"

#: VirtualService order buckets for one client namespace (``VirtualServicesForGateway``).
VS_PRIVATE, VS_EXPORTED, VS_PUBLIC = 0, 1, 2

_DEFAULT_MESH: Final = MeshConfig()


def mesh_or_default(mesh: MeshConfig | None) -> MeshConfig:
    return mesh if mesh is not None else _DEFAULT_MESH


def service_export_to(source: Service | ServiceEntry) -> tuple[str, ...]:
    """The ``exportTo`` a Service (annotation, entries trimmed, empty ones dropped) or a
    ServiceEntry (``spec.exportTo``) declares; () when it declares none."""
    if isinstance(source, ServiceEntry):
        return source.spec.export_to
    raw = source.metadata.annotations.get(SERVICE_EXPORT_TO_ANNOTATION, "")
    return tuple(e for e in (p.strip() for p in raw.split(",")) if e) if raw else ()


def effective(declared: Iterable[str], default: Iterable[str]) -> frozenset[str]:
    """A resource's own ``exportTo``, else the mesh default."""
    own = frozenset(declared)
    return own if own else frozenset(default)


def service_visible(source: Service | ServiceEntry, client_namespace: str, mesh: MeshConfig | None = None) -> bool:
    """``IsServiceVisible``: whether proxies in ``client_namespace`` see the service."""
    export = effective(service_export_to(source), mesh_or_default(mesh).default_service_export_to)
    return (PUBLIC in export or (PRIVATE in export and source.namespace == client_namespace)
            or client_namespace in export)


def vs_export_set(vs: VirtualService, mesh: MeshConfig | None = None) -> frozenset[str]:
    """The VirtualService's effective ``exportTo`` with ``.`` replaced by its namespace."""
    export = effective(vs.spec.export_to, mesh_or_default(mesh).default_virtual_service_export_to)
    return frozenset(vs.namespace if e == PRIVATE else e for e in export)


def vs_bucket(vs: VirtualService, client_namespace: str, mesh: MeshConfig | None = None) -> int | None:
    """Where the VirtualService sits in the list a proxy of ``client_namespace`` gets: private
    (``VS_PRIVATE``), exported by name (``VS_EXPORTED``), public (``VS_PUBLIC``); None: not visible."""
    export = vs_export_set(vs, mesh)
    if PUBLIC in export:
        return VS_PUBLIC
    if NONE in export or client_namespace not in export:
        return None
    return VS_PRIVATE if client_namespace == vs.namespace else VS_EXPORTED


def describe(export_to: Iterable[str], default: Iterable[str]) -> str:
    """``exportTo`` as a warning shows it (the mesh default when the resource sets none)."""
    own = list(export_to)
    if own:
        return f"exportTo {own}"
    return f"exportTo unset, mesh default {list(default)}"
