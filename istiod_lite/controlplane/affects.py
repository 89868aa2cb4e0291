"""Which Envoy resource types a change to each config kind can alter: declared as data, with each kind.

Used to decide whether a config change needs translation at all (a changed ServiceAccount alters
no waypoint resource today), to name the push reason in metrics (endpoint-only changes are
``endpoint`` pushes, as in istiod).  Each kind declares what its changes touch next to its model
class (``@register(KindDeclaration(...))``); ``AFFECTS`` gathers them.  Translation itself is
incremental per service, and the xDS layer sends each stream only resources whose content changed,
so unaffected proxies receive nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from istiod_lite.model import ResourceKey
from istiod_lite.model.kind_declaration import CDS, EDS, LDS, RDS, XDS_TYPES
from istiod_lite.model.registry import declared_kinds

__all__ = ["AFFECTS", "ALL", "CDS", "EDS", "ENDPOINT_ONLY", "LDS", "RDS", "affected_types", "push_reason"]

ALL = XDS_TYPES

#: Kind -> the xDS types a change to it can alter, as declared with each model class
#: (``@register(KindDeclaration(...))``, where the reasons are written down).
AFFECTS: Mapping[str, frozenset[str]] = {d.kind: d.declaration.affects for d in declared_kinds()}

ENDPOINT_ONLY = frozenset({EDS})


def affected_types(changed: Iterable[ResourceKey]) -> frozenset[str]:
    """Union of what the changed kinds can alter; unknown kinds are assumed to alter everything."""
    out: set[str] = set()
    for key in changed:
        out |= AFFECTS.get(key.kind, ALL)
    return frozenset(out)


def push_reason(changed: Iterable[ResourceKey]) -> str:
    """istiod's ``pilot_push_triggers`` reason: ``endpoint`` if only endpoints can change."""
    types = affected_types(changed)
    return "endpoint" if types and types <= ENDPOINT_ONLY else "config"
