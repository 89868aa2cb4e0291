"""Which Envoy resource types a change to each config kind can alter: declared as data.

Used to decide whether a config change needs translation at all (a changed ServiceAccount alters
no waypoint resource today), to name the push reason in metrics (endpoint-only changes are
``endpoint`` pushes, as in istiod), and as the one place to read when asking "what does editing X
touch?".  Translation itself is incremental per service, and the xDS layer sends each stream only
resources whose content changed, so unaffected proxies receive nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from istiod_lite.model import ResourceKey

LDS, RDS, CDS, EDS = "LDS", "RDS", "CDS", "EDS"
ALL = frozenset({LDS, RDS, CDS, EDS})

AFFECTS: Mapping[str, frozenset[str]] = {
    # Binding and addressing: which services a waypoint serves, their VIPs and ports.
    "Namespace": ALL,
    "Service": ALL,
    "ServiceEntry": ALL,
    "Gateway": ALL,
    "GatewayClass": ALL,
    # Endpoints only.
    "Pod": frozenset({EDS}),
    "EndpointSlice": frozenset({EDS}),
    # Endpoints, but also the inline endpoints of DNS ServiceEntry clusters that select them (CDS)
    # and, for entries bound to a workload waypoint, main_internal's workload addresses (LDS).
    "WorkloadEntry": frozenset({LDS, CDS, EDS}),
    # Routing: routes are inline in listeners (Istio's waypoint shape); targets add clusters.
    "VirtualService": frozenset({LDS, RDS, CDS, EDS}),
    "HTTPRoute": frozenset({LDS, RDS, CDS, EDS}),
    # Subsets become clusters with their own endpoints; traffic policy lives on clusters.
    "DestinationRule": frozenset({CDS, EDS, LDS}),
    # Policy is enforced by listener filters (and mTLS settings on clusters).
    "AuthorizationPolicy": frozenset({LDS}),
    "RequestAuthentication": frozenset({LDS}),
    "PeerAuthentication": frozenset({LDS, CDS}),
    # Access logs are inline in the listeners' HCM and TCP proxy filters.
    "Telemetry": frozenset({LDS}),
    # Identities come from the CA, not from config: nothing to push.
    "ServiceAccount": frozenset(),
}

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
