"""Every memoised value the translator derives, declared in one place, typed.

Why one list: these tables decide what a config change costs (a table that reads a kind is
rebuilt when that kind changes, and only then), and a name or type collision between two of them
would silently serve one's value as the other's.  Here each has one typed object, the kinds it
reads, and the module that computes it (which binds it with ``@TABLE.computed_by``; the builders
stay next to the logic they belong to).  Mechanism and lifetimes: ``translator/core/memo.py``.

Per snapshot (``Derived``): ``reads`` names the kinds a table depends on; a snapshot built from a
previous one keeps the table while those kinds are unchanged.  No ``reads``: rebuilt for every
snapshot (such tables are cheap compositions of the others, computed once for all waypoints).
Per config object (``PerObject``): kept while the object lives.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Final

from istiod_lite.translator.core.memo import Derived, PerObject

if TYPE_CHECKING:
    from istiod_lite.model import gateway as gw
    from istiod_lite.model import gateway_routes as gr
    from istiod_lite.model.core import EndpointSlice, Pod, Service
    from istiod_lite.model.networking import (
        HTTPRoute,
        ServiceEntry,
        TCPRoute,
        TLSRoute,
        VirtualService,
    )
    from istiod_lite.model.security import AuthorizationPolicy, RequestAuthentication
    from istiod_lite.translator.authz.attach import AttachIndex
    from istiod_lite.translator.authz.generate import AuthzTranslators
    from istiod_lite.translator.authz.matchers import Limits
    from istiod_lite.translator.authz.rbac import CompiledPolicy
    from istiod_lite.translator.binding.service_model import ServiceInfo
    from istiod_lite.translator.binding.waypoints import Bindings, WaypointRef
    from istiod_lite.translator.core.destination_rules import DestinationRuleIndexes
    from istiod_lite.translator.core.index import SnapshotIndex, WorkloadEntryIndex
    from istiod_lite.translator.export_warnings import Incremental, PerMesh, RulesByHost
    from istiod_lite.translator.routing.mesh_routes import MeshRoutes

# --- kinds read together --------------------------------------------------------------------------

#: Everything waypoint binding reads: a change to any other kind re-uses the previous bindings.
BINDING_KINDS: Final = ("Service", "Pod", "Namespace", "Gateway", "GatewayClass", "ServiceEntry", "WorkloadEntry")
#: What mesh routes (Gateway API routes with Service/ServiceEntry parents) are built from.
ROUTE_KINDS: Final = ("HTTPRoute", "GRPCRoute", "TCPRoute", "TLSRoute", "ServiceEntry")
#: What the mesh-route and ServiceEntry warnings read (DestinationRule: the one a DYNAMIC_DNS host
#: does not apply).
MESH_WARNING_KINDS: Final = tuple(dict.fromkeys((*BINDING_KINDS, *ROUTE_KINDS, "VirtualService", "DestinationRule")))

# --- lookup tables (index.py) ---------------------------------------------------------------------

#: The composed lookup tables of one snapshot (each part is its own table below).
SNAPSHOT_INDEX: Final[Derived[SnapshotIndex]] = Derived("snapshot-index")
#: (namespace, label key, label value) -> pods with an IP carrying that label.
PODS_BY_LABEL: Final[Derived[Mapping[tuple[str, str, str], tuple[Pod, ...]]]] = Derived(
    "pods-by-label", reads=("Pod",))
#: Mesh VirtualServices by (namespace, exact host), and those with a wildcard host by namespace.
VS_BY_HOST: Final[Derived[tuple[Mapping[tuple[str, str], tuple[VirtualService, ...]],
                                Mapping[str, tuple[VirtualService, ...]]]]] = Derived(
    "vs-by-host", reads=("VirtualService",))
#: The DestinationRules in Istio's order, with their pools per MeshConfig (destination_rules.py).
DESTINATION_RULE_INDEXES: Final[Derived[DestinationRuleIndexes]] = Derived(
    "destination-rule-indexes", reads=("DestinationRule",))
#: (namespace, service name) -> its EndpointSlices (``kubernetes.io/service-name``), by name.
ENDPOINT_SLICES: Final[Derived[Mapping[tuple[str, str], tuple[EndpointSlice, ...]]]] = Derived(
    "endpoint-slices", reads=("EndpointSlice",))
#: IP -> pods with that IP (an EndpointSlice endpoint without a targetRef; a proxy by its address).
PODS_BY_IP: Final[Derived[Mapping[str, tuple[Pod, ...]]]] = Derived("pods-by-ip", reads=("Pod",))
#: node name -> (region, zone, subzone) from its topology labels (nodes without any: absent).
NODE_LOCALITIES: Final[Derived[Mapping[str, tuple[str, str, str]]]] = Derived("node-localities", reads=("Node",))
#: Labels the config's DestinationRules and traffic distributions make a ``failoverPriority`` compare.
FAILOVER_PRIORITY_LABELS: Final[Derived[frozenset[str]]] = Derived(
    "failover-priority-labels", reads=("DestinationRule", "Service", "ServiceEntry", "Namespace"))
#: WorkloadEntries with an address, by label.
WORKLOAD_ENTRIES: Final[Derived[WorkloadEntryIndex]] = Derived("workload-entries", reads=("WorkloadEntry",))
#: host -> the ServiceEntries declaring it, oldest first.
SERVICE_ENTRIES_BY_HOST: Final[Derived[Mapping[str, tuple[ServiceEntry, ...]]]] = Derived(
    "service-entries-by-host", reads=("ServiceEntry",))
#: A VirtualService's hosts, fully qualified and sorted.
VS_QUALIFIED_HOSTS: Final[PerObject[VirtualService, tuple[str, ...]]] = PerObject("vs-qualified-hosts")

# --- binding (waypoints.py) -----------------------------------------------------------------------

#: Which services, workloads and entries each waypoint serves.
BINDINGS: Final[Derived[Bindings]] = Derived("bindings", reads=BINDING_KINDS)

# --- routes (routing/mesh_routes.py, httproute.py, grpcroute.py, l4route.py, waypoint.py) ---------

#: Mesh routes converted to VirtualServices, by host.
MESH_ROUTES: Final[Derived[MeshRoutes]] = Derived("mesh-routes", reads=ROUTE_KINDS)
#: One HTTPRoute converted (None if it cannot be), with its problems.
CONVERTED_ROUTE: Final[PerObject[gw.HTTPRoute, tuple[tuple[HTTPRoute, ...] | None, tuple[str, ...]]]] = (
    PerObject("converted-route"))
#: One GRPCRoute converted (None if it cannot be), with its problems.
CONVERTED_GRPC_ROUTE: Final[PerObject[gr.GRPCRoute, tuple[tuple[HTTPRoute, ...] | None, tuple[str, ...]]]] = (
    PerObject("converted-grpc-route"))
#: One TCPRoute's rules converted (None if it cannot be), with its problems.
CONVERTED_TCP_ROUTE: Final[PerObject[gr.TCPRoute, tuple[tuple[TCPRoute, ...] | None, tuple[str, ...]]]] = (
    PerObject("converted-tcp-route"))
#: One TLSRoute's rules converted (None if it cannot be), with its problems.
CONVERTED_TLS_ROUTE: Final[PerObject[gr.TLSRoute, tuple[tuple[TLSRoute, ...] | None, tuple[str, ...]]]] = (
    PerObject("converted-tls-route"))
#: A VirtualService's referenced hosts (route and mirror destinations).
VS_REFERENCED_HOSTS: Final[PerObject[VirtualService, tuple[str, ...]]] = PerObject("vs-referenced-hosts")
#: namespace -> every host its mesh routes name.
ROUTED_HOSTS_BY_NAMESPACE: Final[Derived[dict[str, tuple[str, ...]]]] = Derived(
    "routed-hosts-by-namespace", reads=("VirtualService", *ROUTE_KINDS))
#: namespace -> the Service or ServiceEntry (or None) of every host its routes name.
ROUTE_TARGETS_BY_NAMESPACE: Final[Derived[dict[str, tuple[object, ...]]]] = Derived(
    "route-targets-by-namespace", reads=("VirtualService", "Service", *ROUTE_KINDS))
#: namespace -> its VirtualServices.
VS_BY_NAMESPACE: Final[Derived[dict[str, tuple[VirtualService, ...]]]] = Derived(
    "vs-by-namespace", reads=("VirtualService",))

# --- the whole-waypoint shortcut (waypoint.py): once per snapshot for all waypoints ---------------

#: waypoint -> the route targets of every route that can apply to it.
ROUTE_TARGETS_BY_WAYPOINT: Final[Derived[dict[WaypointRef, tuple[object, ...]]]] = Derived(
    "route-targets-by-waypoint")
#: waypoint -> every VirtualService that may route one of its services.
RELEVANT_VS_BY_WAYPOINT: Final[Derived[dict[WaypointRef, tuple[object, ...]]]] = Derived("relevant-vs-by-waypoint")
#: waypoint -> the HTTPRoutes attached to each of its services.
ATTACHED_ROUTES_BY_WAYPOINT: Final[Derived[dict[WaypointRef, tuple[object, ...]]]] = Derived(
    "attached-routes-by-waypoint")
#: A Service's view (FQDN, addresses, ports).
SERVICE_VIEW: Final[PerObject[Service, ServiceInfo]] = PerObject("service-view")

# --- warnings (config_warnings.py) ----------------------------------------------------------------

#: Ignored VirtualService / DestinationRule config.
ROUTE_WARNINGS: Final[Derived[tuple[str, ...]]] = Derived("route-warnings", reads=("VirtualService", "DestinationRule"))
#: Bound Services without a cluster IP (only the bindings are read).
UNADDRESSED_SERVICE_WARNINGS: Final[Derived[tuple[str, ...]]] = Derived(
    "unaddressed-service-warnings", reads=BINDING_KINDS)
#: Ignored mesh-route and ServiceEntry config.
MESH_WARNINGS: Final[Derived[tuple[str, ...]]] = Derived("mesh-warnings", reads=MESH_WARNING_KINDS)

#: Why DestinationRules / VirtualServices / Services are not applied or seen (export_warnings.py):
#: one holder per snapshot, keeping the messages per MeshConfig.
EXPORT_WARNINGS: Final[Derived[PerMesh]] = Derived(
    "export-warnings", reads=(*BINDING_KINDS, *ROUTE_KINDS, "VirtualService", "DestinationRule"))
#: Their per-(waypoint, host) memo, passed from snapshot to snapshot: each entry keeps the config
#: objects it was computed from and is checked against them (an edit recomputes only the hosts it
#: can change).
EXPORT_WARNING_MEMO: Final[Derived[Incremental]] = Derived("export-warning-memo", reads=())
#: DestinationRules by (namespace, host) for those warnings, with and without selector-scoped ones.
EXPORT_RULES_BY_HOST: Final[Derived[RulesByHost]] = Derived("export-rules-by-host", reads=("DestinationRule",))

# --- authorization (authz/) -----------------------------------------------------------------------

#: Which policies target what.
AP_ATTACHMENTS: Final[Derived[AttachIndex[AuthorizationPolicy]]] = Derived(
    "authorization-policy-attachments", reads=("AuthorizationPolicy",))
RA_ATTACHMENTS: Final[Derived[AttachIndex[RequestAuthentication]]] = Derived(
    "request-authentication-attachments", reads=("RequestAuthentication",))
#: One AuthorizationPolicy compiled to RBAC, per (proxy limits, trust-domain bundle).
COMPILED_POLICIES: Final[PerObject[AuthorizationPolicy, dict[tuple[Limits, tuple[str, ...]], CompiledPolicy]]] = (
    PerObject("compiled-policies"))
#: The authorization translators (one per settings) with their per-chain memos.  They read no kind
#: whole: each checks what its chains read itself, so they pass from snapshot to snapshot (a policy
#: edit rebuilds only the chains it attaches to).
AUTHZ_TRANSLATORS: Final[Derived[AuthzTranslators]] = Derived("authz-translators", reads=())

#: Every declaration, for introspection and tests.
ALL: Final[tuple[Derived[object] | PerObject[object, object], ...]] = tuple(
    v for v in list(globals().values()) if isinstance(v, Derived | PerObject))
