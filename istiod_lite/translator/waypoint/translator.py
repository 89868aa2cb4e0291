"""Translate everything one waypoint serves into Envoy resources.  Pure and deterministic.

Input: an immutable ``ConfigSnapshot`` and the waypoint's reference.  Output: ``EnvoyResources``
in Istio's waypoint shape (docs/istio-waypoint-shape.md §2-4) whose content depends only
on the input (stable ordering everywhere), so identical input gives byte-identical output and
content-hash versions move only on real change.

Shape: listeners ``connect_terminate`` (per proxy: it binds the proxy's own address, see
``waypoint_assembly``), ``main_internal`` and ``connect_originate``; clusters
``main_internal``, ``encap``, ``connect_originate`` and ``inbound-vip|P|http[/subset]|H`` /
``inbound-vip|P|tcp[/subset]|H`` per bound service port; endpoints of those clusters (ambient
workloads through ``connect_originate``, others as plain addresses); route configurations (RDS), one
per HTTP chain and named like it (``inbound-vip|P|http|H``, ``direct-http``).

Bound services are Kubernetes Services and ServiceEntry hosts alike (``service_model``), ordered
by creation time as Istio orders them.  Their routes come from Gateway API HTTPRoutes attached to
the service when there are any (``route_httproute``), else from VirtualServices.

Precedence (a choice; Istio leaves it undefined): when an HTTPRoute in the waypoint's or the
service's namespace attaches to a service, that service's VirtualServices are ignored on the
waypoint and reported (``config_warnings``).  Istio's ambient docs call mixing the two "not
supported, and will lead to undefined behavior", and its code concatenates whatever the sidecar
scope lists (ordered by creation time); the Gateway API route is the one the waypoint docs
prescribe, so it wins, deterministically.
"""

from __future__ import annotations

from dataclasses import dataclass

from envoy.config.listener.v3 import listener_components_pb2

from istiod_lite.model import ConfigSnapshot
from istiod_lite.model.meshconfig import MeshConfig, PathNormalizationType, ProxyPathNormalization
from istiod_lite.model.networking import DestinationRule, VirtualService
from istiod_lite.model.registry import kinds_read_whole_by_waypoints
from istiod_lite.translator.authz import EMPTY, AuthzFilters, authz_for_direct, authz_for_service, request_cluster
from istiod_lite.translator.authz.discovery import DIRECT_SCOPE, discovered
from istiod_lite.translator.binding import protocols, service_model
from istiod_lite.translator.binding.service_model import ServiceInfo
from istiod_lite.translator.binding.waypoints import Bindings, WaypointRef, bindings_of
from istiod_lite.translator.clusters import endpoints, for_service, outbound, policy_select
from istiod_lite.translator.clusters.dynamic_dns import DEFAULT_OPTIONS, DynamicDnsOptions
from istiod_lite.translator.clusters.locality import ProxyLocality
from istiod_lite.translator.clusters.locality_lb import LbContext
from istiod_lite.translator.core import names, tables
from istiod_lite.translator.core.index import index_of, virtual_services_for
from istiod_lite.translator.core.output import LISTENER, Encoded, EnvoyResources, Resource
from istiod_lite.translator.listeners import inbound
from istiod_lite.translator.routing import route_actions, routes, tcp_routes
from istiod_lite.translator.routing.mesh_routes import mesh_routes
from istiod_lite.translator.shape import cluster_templates, hbone
from istiod_lite.translator.shape.proxy_headers import DEFAULT_HEADERS, HeaderSettings, header_settings
from istiod_lite.translator.waypoint import dynamic_dns

DEFAULT_TRUST_DOMAIN = "cluster.local"
#: Kinds a waypoint's translation reads every object of, besides its bound services and workloads:
#: those declared ``WaypointRead.WHOLE`` with their model class.  HTTPRoutes are narrower
#: (``WaypointRead.NARROWER``): only those attached to its services count, see ``_attached_routes``.
#: VirtualServices are narrower too: only those in the waypoint's namespace or a bound service's
#: namespace can apply (``_relevant_virtual_services``), so an edit in one namespace does not make
#: every other waypoint walk its services again.
_READ_KINDS = kinds_read_whole_by_waypoints()


def applicable_virtual_services(snapshot: ConfigSnapshot, ref: WaypointRef, sv: ServiceInfo,
                                mesh: MeshConfig | None = None) -> list[VirtualService]:
    """VirtualServices from the waypoint's or the service's namespace, bound to ``mesh``, exported
    to the waypoint's namespace, whose hosts match the service; in Istio's order (the waypoint
    namespace's private ones, those exported to it by name, the public ones; each by creation
    time, then name)."""
    return virtual_services_for(index_of(snapshot), (ref.namespace, sv.namespace), sv.host, mesh)


def service_routes(snapshot: ConfigSnapshot, ref: WaypointRef, sv: ServiceInfo, mesh: MeshConfig | None = None
                   ) -> tuple[list[VirtualService], tuple[object, ...]]:
    """The VirtualServices that route ``sv`` on this waypoint and the config objects they come
    from (for the memo): the HTTPRoutes attached to it from the waypoint's or the service's
    namespace, converted, if there are any (they take precedence); else its VirtualServices."""
    namespaces = (ref.namespace, sv.namespace)
    routes = mesh_routes(snapshot)
    attached = routes.routes(namespaces, sv.host)
    if attached:
        return routes.virtual_services(namespaces, sv.host), attached
    vss = applicable_virtual_services(snapshot, ref, sv, mesh)
    return vss, tuple(vss)


def resolved_destination_rule(snapshot: ConfigSnapshot, ref: WaypointRef, sv: ServiceInfo,
                              mesh: MeshConfig | None = None) -> policy_select.ResolvedRule:
    """How the waypoint's namespace resolves the service's DestinationRule (``policy_select``:
    the waypoint's namespace, then the service's, then the root namespace; exportTo; merging)."""
    return policy_select.waypoint_destination_rule(snapshot, ref.namespace, sv, mesh)


def destination_rule(snapshot: ConfigSnapshot, ref: WaypointRef, sv: ServiceInfo,
                     mesh: MeshConfig | None = None) -> DestinationRule | None:
    """The DestinationRule whose settings the waypoint applies to the service (None: none)."""
    return resolved_destination_rule(snapshot, ref, sv, mesh).rule


def bound_views(bindings: Bindings, ref: WaypointRef) -> list[ServiceInfo]:
    """Every service the waypoint serves - Services and ServiceEntry hosts - in Istio's order
    (creation time, then name); a host already served keeps its first (oldest) definition."""
    views = [tables.SERVICE_VIEW.of(s) for s in bindings.services.get(ref, ())]
    views += [v for se in bindings.service_entries.get(ref, ()) for v in service_model.of_service_entry(se)]
    if len(views) > 1 and bindings.service_entries.get(ref):
        views.sort(key=service_model.sort_key)
    seen: set[str] = set()
    out = []
    for v in views:
        if v.host not in seen:
            seen.add(v.host)
            out.append(v)
    return out


@dataclass(frozen=True)
class _Inputs:
    """Everything one service's fragment is computed from, compared by identity.

    Sources keep the same object for an unchanged resource across snapshots, so "same objects"
    means "same config"; the objects are held here, so their ids cannot be reused meanwhile.
    """

    objects: tuple[object, ...]
    owned: tuple[tuple[str, tuple[int, ...]], ...]

    def same_as(self, other: _Inputs) -> bool:
        return (len(self.objects) == len(other.objects)
                and all(a is b for a, b in zip(self.objects, other.objects, strict=True))
                and self.owned == other.owned)


@dataclass
class _Fragment:
    """One service's share of the output.  ``resources``: its clusters, endpoints and route
    configurations; ``chains``: its filter chains in ``main_internal``, which name their routes
    (RDS) but do not contain them, so a route edit leaves them equal and the previous objects are
    kept (``_keep_chains``): ``main_internal`` is then re-used as is, and not even re-serialised."""

    resources: EnvoyResources
    chains: inbound.ServiceChains


class WaypointTranslator:
    """Translates one waypoint, re-using the fragment of every service whose inputs did not change.

    Pure in the sense that matters: the output is a function of (snapshot, ref, trust domain,
    path normalization, proxy locality) only; the memo just skips recomputing fragments that would come out
    identical.  One instance per waypoint.  ``connect_terminate`` and telemetry are not included: see
    ``waypoint_assembly.WaypointAssembly``, which adds them.

    ``encoded``: keep (and hand out) each service's clusters, endpoints, route configurations and
    filter configs as ``Encoded`` bytes, serialised as soon as its fragment is built, instead of as
    messages (the server: what it keeps per service is then about its wire size, not 7-12x that).
    ``main_internal`` (the largest resource: every chain) is kept serialised too; the waypoint-wide
    resources stay messages.  Same bytes either way.

    ``proxy``: where the proxies it translates for are (locality load balancing gives their
    endpoints priorities relative to it); fixed for the instance, so the memos stay correct; the
    server keeps one translator per distinct value (``controlplane/proxykinds/waypoint.py``).
    """

    def __init__(self, ref: WaypointRef, trust_domain: str = DEFAULT_TRUST_DOMAIN,
                 path_normalization: ProxyPathNormalization | None = None, mesh: MeshConfig | None = None,
                 encoded: bool = False, proxy: ProxyLocality | None = None,
                 dynamic_dns: DynamicDnsOptions = DEFAULT_OPTIONS) -> None:
        self.ref = ref
        self.proxy = proxy or ProxyLocality()
        self.encoded = encoded
        #: How ``DYNAMIC_DNS`` entries are served (server options; fixed, so the memos stay right).
        self.dynamic_dns = dynamic_dns
        #: Authorization reads the mesh config (root namespace, ext_authz providers).  It may be
        #: replaced between translations: it is part of every memo key (path normalization is not).
        #: What the static clusters and the HTTP chains take from it (trust domain aliases,
        #: connectTimeout for connect_originate, hboneIdleTimeout, proxyHeaders) is read here once.
        self.mesh = mesh
        #: Hosts the last translation's authorization filters call (their services are memo inputs).
        self._authz_hosts: tuple[str, ...] = ()
        self.trust_domain = trust_domain
        # Fixed for the instance, so the memos (all per instance) stay correct.
        self.path_normalization: PathNormalizationType = (
            path_normalization.normalization if path_normalization is not None else "BASE")
        #: MeshConfig ``defaultConfig.proxyHeaders`` on the HTTP chains (fixed for the instance too).
        self.headers = header_settings(mesh)
        self._fragments: dict[str, tuple[_Inputs, _Fragment]] = {}
        self.last_rebuilt = 0
        self._main_internal: tuple[tuple[object, ...], Resource] | None = None
        self._last: tuple[tuple[object, ...], EnvoyResources] | None = None
        self._static = EnvoyResources()
        self._static.listeners[hbone.CONNECT_ORIGINATE] = hbone.connect_originate_listener()
        self._static.routes[inbound.DIRECT_HTTP] = inbound.direct_route_configuration()
        self._static.clusters[hbone.MAIN_INTERNAL] = hbone.main_internal_cluster()
        self._static.clusters[hbone.ENCAP] = hbone.encap_cluster()
        self._static.clusters[hbone.CONNECT_ORIGINATE] = hbone.connect_originate_cluster(
            trust_domain, ref.namespace, mesh.trust_domain_aliases if mesh is not None else (),
            mesh.connect_timeout if mesh is not None else None, mesh.hbone_idle_timeout if mesh is not None else None)

    def translate(self, snapshot: ConfigSnapshot) -> EnvoyResources:
        ref = self.ref
        bindings = bindings_of(snapshot)
        # Whole-waypoint shortcut: same bound objects and same maps of every other kind read
        # below means the same output (a change elsewhere in the mesh costs a few comparisons).
        key = (*bindings.services.get(ref, ()), None, *bindings.workloads.get(ref, ()), None,
               *bindings.service_entries.get(ref, ()), None, *bindings.workload_entries.get(ref, ()), None,
               *(snapshot.by_kind.get(k) for k in _READ_KINDS), None, *_relevant_virtual_services(snapshot, ref),
               None, *_route_target_services(snapshot, ref), None, *_attached_routes(snapshot, ref),
               None, self.mesh, *self._authz_key(snapshot))
        if self._last is not None and len(self._last[0]) == len(key) and all(
                a is b for a, b in zip(self._last[0], key, strict=True)):
            self.last_rebuilt = 0
            return self._last[1]
        hosts = self._authz_hosts
        out = self._translate(snapshot, bindings)
        if self._authz_hosts != hosts:  # the services authorization calls are only known now
            key = (*key[:len(key) - len(hosts)], *self._authz_key(snapshot))
        self._last = (key, out)
        return out

    def _lb_context(self) -> LbContext:
        return LbContext(self.mesh, self.proxy)

    def _authz_key(self, snapshot: ConfigSnapshot) -> tuple[object, ...]:
        """The Services/ServiceEntries of the hosts authorization calls (ext_authz, remote JWKS):
        not among the kinds the shortcut compares whole, and not bound to this waypoint."""
        return tuple(outbound.source_for_host(snapshot, h) for h in self._authz_hosts)

    def _translate(self, snapshot: ConfigSnapshot, bindings: Bindings) -> EnvoyResources:
        ref = self.ref
        views = bound_views(bindings, ref)
        owned = {v.host: v for v in views}
        out = EnvoyResources()
        fragments: dict[str, tuple[_Inputs, _Fragment]] = {}
        chains: list[inbound.ServiceChains] = []
        rebuilt = 0
        authz_hosts: set[str] = set()
        for sv in views:
            resolved = resolved_destination_rule(snapshot, ref, sv, self.mesh)
            dr = resolved.rule
            vss, route_inputs = service_routes(snapshot, ref, sv, self.mesh)
            # Routes may name other services of this waypoint: whether those are owned, and their
            # ports, matter too.  Converted HTTPRoutes are new objects per snapshot: the
            # HTTPRoutes themselves stand for them.
            az = authz_for_service(snapshot, ref, sv.source.namespace, sv.source.name,
                                   kind="ServiceEntry" if sv.is_service_entry else "Service", mesh_config=self.mesh)
            authz_hosts.update(c.host for c in az.clusters)
            # The DestinationRules the applied one is made of (a merged copy is a new object
            # whenever any DestinationRule changes; its sources are not).
            inputs = _Inputs((sv.source, *resolved.sources, _TARGET_END, az, self.mesh,
                              *_authz_objects(snapshot, ref.namespace, az, self.mesh),
                              *route_inputs, _TARGET_END, *endpoints.endpoint_inputs(snapshot, sv),
                              *_target_objects(snapshot, ref, vss, owned, self.mesh)),
                             _target_signature(vss, owned))
            cached = self._fragments.get(sv.host)
            if cached is not None and cached[0].same_as(inputs):
                frag = cached[1]
            else:
                frag = _service_fragment(snapshot, sv, dr, vss, owned, ref.namespace, az, self.path_normalization,
                                         self._lb_context(), self.dynamic_dns, self.headers)
                if self.encoded:
                    frag = _Fragment(frag.resources.encoded(), frag.chains)
                if cached is not None:
                    frag = _keep_chains(frag, cached[1])
                rebuilt += 1
            fragments[sv.host] = (inputs, frag)
            out.merge(frag.resources)
            chains.append(frag.chains)
        self._fragments = fragments
        self.last_rebuilt = rebuilt
        workload_ips = bindings.workload_ips(ref)
        direct = authz_for_direct(snapshot, ref, mesh_config=self.mesh)
        if direct.clusters:  # usually already there: Gateway-wide policies apply to every service too
            out.merge(_authz_resources(snapshot, ref.namespace, direct, self._lb_context()))
            authz_hosts.update(c.host for c in direct.clusters)
        self._authz_hosts = tuple(sorted(authz_hosts))
        # Authorization is in ECDS resources: the listener names the slots only (authz/discovery.py).
        direct_slots = discovered(direct, DIRECT_SCOPE)
        out.extension_configs.update(direct_slots.http_configs)
        out.extension_configs.update(direct_slots.tcp_configs)
        # main_internal holds every chain: rebuild it only if a chain (object, or its content: a
        # policy edit rebuilds the chain with the same slots), the workloads or the direct chains'
        # slots changed.
        key = (*chains, *workload_ips, direct_slots.slots)
        if self._main_internal is not None and len(self._main_internal[0]) == len(key) and all(
                a is b or a == b for a, b in zip(self._main_internal[0], key, strict=True)):
            main = self._main_internal[1]
        else:
            listener = inbound.main_internal_listener(chains, workload_ips, authz=direct_slots.http,
                                                      tcp_authz=direct_slots.tcp,
                                                      path_normalization=self.path_normalization,
                                                      headers=self.headers)
            main = Encoded.of(LISTENER, listener) if self.encoded else listener
            self._main_internal = (key, main)
        out.by_type[LISTENER][hbone.MAIN_INTERNAL] = main
        out.merge(self._static)
        return out.sorted()



def _keep_chains(new: _Fragment, old: _Fragment) -> _Fragment:
    """``new`` with ``old``'s chain objects when they are equal (a route, endpoint or subset edit):
    ``main_internal``'s memo compares chains by identity first, so it is re-used, and the xDS layer
    (which caches serialisations by message identity) sends no listener update."""
    if new.chains is old.chains or new.chains != old.chains:
        return new
    return _Fragment(new.resources, old.chains)


def _referenced(vss: list[VirtualService]) -> list[str]:
    """Every host the VirtualServices route or mirror to, sorted."""
    return sorted({h for vs in vss for h in outbound.referenced_hosts(vs)})


def _target_signature(
    vss: list[VirtualService], owned: dict[str, ServiceInfo]
) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """(host, served ports or () if not owned) of every destination the VirtualServices name."""
    return tuple((h, tuple(p.number for p in owned[h].served_ports()) if h in owned else ())
                 for h in _referenced(vss))


#: Separates one target's objects from the next in a fragment's inputs (never a config object).
_TARGET_END = object()


def _target_objects(
    snapshot: ConfigSnapshot, ref: WaypointRef, vss: list[VirtualService], owned: dict[str, ServiceInfo],
    mesh: MeshConfig | None = None,
) -> tuple[object, ...]:
    """What a fragment reads about its route targets, for the memo: per target host, whether it is
    owned, its Service or ServiceEntry (ports, protocols, exportTo) and the DestinationRules its
    applied one is made of (consistent hash, subsets); for a target this waypoint does not own also
    what its endpoints come from (its outbound endpoints)."""
    out: list[object] = []
    hosts = _referenced(vss)
    resolver = outbound.DestinationResolver(snapshot, ref.namespace, owned, mesh) if hosts else None
    for host in hosts:
        assert resolver is not None
        view = owned.get(host)
        out += (view is not None, view.source if view is not None else outbound.source_for_host(snapshot, host),
                *resolver.resolved_rule(host).sources, _TARGET_END)
        target = outbound.service_for_host(snapshot, host) if view is None else None
        if target is not None:
            out += endpoints.endpoint_inputs(snapshot, target)
        out.append(_TARGET_END)
    return tuple(out)


tables.SERVICE_VIEW.computed_by(service_model.of_service)


@tables.VS_REFERENCED_HOSTS.computed_by
def _referenced_one(vs: VirtualService) -> tuple[str, ...]:
    return tuple(outbound.referenced_hosts(vs))


@tables.ROUTED_HOSTS_BY_NAMESPACE.computed_by
def _vs_hosts_by_namespace(snapshot: ConfigSnapshot) -> dict[str, tuple[str, ...]]:
    """namespace -> every host its mesh VirtualServices and mesh HTTPRoutes route or mirror to (sorted)."""
    hosts: dict[str, set[str]] = {}
    for vs in snapshot.of_kind(VirtualService):
        if vs.spec.applies_to_mesh:
            # Per object: after one VirtualService edit only that one is walked again.
            hosts.setdefault(vs.namespace, set()).update(tables.VS_REFERENCED_HOSTS.of(vs))
    for converted in mesh_routes(snapshot).vs_by_host.values():
        for vs in converted:
            hosts.setdefault(vs.namespace, set()).update(outbound.referenced_hosts(vs))
    return {ns: tuple(sorted(hs)) for ns, hs in hosts.items()}


@tables.ROUTE_TARGETS_BY_NAMESPACE.computed_by
def _vs_targets_by_namespace(snapshot: ConfigSnapshot) -> dict[str, tuple[object, ...]]:
    """namespace -> the Service or ServiceEntry (or None) of every host its routes name."""
    hosts = tables.ROUTED_HOSTS_BY_NAMESPACE.of(snapshot)
    return {ns: tuple(outbound.source_for_host(snapshot, h) for h in hs) for ns, hs in hosts.items()}


@tables.ROUTE_TARGETS_BY_WAYPOINT.computed_by
def _route_targets_by_waypoint(snapshot: ConfigSnapshot) -> dict[WaypointRef, tuple[object, ...]]:
    """waypoint -> the route targets of every route that can apply to it (those in its namespace
    or a bound service's), once per snapshot for all waypoints."""
    targets = tables.ROUTE_TARGETS_BY_NAMESPACE.of(snapshot)
    out: dict[WaypointRef, tuple[object, ...]] = {}
    b = bindings_of(snapshot)
    for ref, services in b.services.items():
        owner_ns = {ref.namespace, *(s.namespace for s in services),
                    *(se.namespace for se in b.service_entries.get(ref, ()))}
        namespaces = sorted(owner_ns & targets.keys())
        out[ref] = tuple(x for ns in namespaces for x in (*targets[ns], _TARGET_END))
    return out


def _route_target_services(snapshot: ConfigSnapshot, ref: WaypointRef) -> tuple[object, ...]:
    """For the whole-waypoint shortcut: route targets may be services this waypoint does not own;
    a change to one of them must not be missed (changes to other Services do not matter)."""
    return tables.ROUTE_TARGETS_BY_WAYPOINT.of(snapshot).get(ref, ())


@tables.VS_BY_NAMESPACE.computed_by
def _mesh_vs_by_namespace(snapshot: ConfigSnapshot) -> dict[str, tuple[VirtualService, ...]]:
    """namespace -> its VirtualServices (all of them: which apply is decided per service later)."""
    out: dict[str, list[VirtualService]] = {}
    for vs in snapshot.of_kind(VirtualService):
        out.setdefault(vs.namespace, []).append(vs)
    return {ns: tuple(v) for ns, v in out.items()}


@tables.RELEVANT_VS_BY_WAYPOINT.computed_by
def _relevant_vs_by_waypoint(snapshot: ConfigSnapshot) -> dict[WaypointRef, tuple[object, ...]]:
    """waypoint -> every VirtualService that may route one of its services: those in its own
    namespace and in its bound services' namespaces (``applicable_virtual_services`` reads no
    others), once per snapshot for all waypoints."""
    by_ns = tables.VS_BY_NAMESPACE.of(snapshot)
    b = bindings_of(snapshot)
    out: dict[WaypointRef, tuple[object, ...]] = {}
    for ref in b.waypoints:
        owner_ns = {ref.namespace, *(s.namespace for s in b.services.get(ref, ())),
                    *(se.namespace for se in b.service_entries.get(ref, ()))}
        out[ref] = tuple(x for ns in sorted(owner_ns & by_ns.keys()) for x in (*by_ns[ns], _TARGET_END))
    return out


def _relevant_virtual_services(snapshot: ConfigSnapshot, ref: WaypointRef) -> tuple[object, ...]:
    """For the whole-waypoint shortcut: the VirtualServices this waypoint's services can read."""
    return tables.RELEVANT_VS_BY_WAYPOINT.of(snapshot).get(ref, ())


@tables.ATTACHED_ROUTES_BY_WAYPOINT.computed_by
def _attached_routes_by_waypoint(snapshot: ConfigSnapshot) -> dict[WaypointRef, tuple[object, ...]]:
    """waypoint -> the HTTPRoutes attached to each of its services (a separator after each
    service), once per snapshot: an HTTPRoute change reaches only the waypoints it attaches to."""
    mesh = mesh_routes(snapshot)
    if not mesh.routes_by_host:
        return {}
    b = bindings_of(snapshot)
    out: dict[WaypointRef, tuple[object, ...]] = {}
    for ref in b.waypoints:
        items: list[object] = []
        for svc in b.services.get(ref, ()):
            items += mesh.routes((ref.namespace, svc.namespace), names.service_fqdn(svc.name, svc.namespace))
            items.append(_TARGET_END)
        for se in b.service_entries.get(ref, ()):
            for host in se.spec.hosts:
                items += mesh.routes((ref.namespace, se.namespace), host)
                items.append(_TARGET_END)
        out[ref] = tuple(items)
    return out


def _attached_routes(snapshot: ConfigSnapshot, ref: WaypointRef) -> tuple[object, ...]:
    """For the whole-waypoint shortcut: the mesh routes its services read (their targets are in
    ``_route_target_services``; the ServiceEntries that ServiceEntry parents name are read whole)."""
    return tables.ATTACHED_ROUTES_BY_WAYPOINT.of(snapshot).get(ref, ())


def _service_fragment(
    snapshot: ConfigSnapshot, sv: ServiceInfo, dr: DestinationRule | None, vss: list[VirtualService],
    owned: dict[str, ServiceInfo], waypoint_namespace: str, az: AuthzFilters | None = None,
    path_normalization: PathNormalizationType = "BASE", lb_context: LbContext | None = None,
    dynamic: DynamicDnsOptions = DEFAULT_OPTIONS,
    headers: HeaderSettings = DEFAULT_HEADERS,
) -> _Fragment:
    """One service's clusters, endpoints, route configurations and chains: inbound-vip clusters per
    port (and DR subset) with the DR's traffic policy, HTTP routes from its routes (else the default route),
    the TCP chain's route, and the outbound clusters of route targets it does not own."""
    mesh = lb_context.mesh if lb_context is not None else None
    out = EnvoyResources()
    if sv.resolution == service_model.DYNAMIC_DNS and not sv.vips:
        return _Fragment(out, inbound.ServiceChains(sv.vips, ()))  # unreachable: nothing to build
    resolver = outbound.DestinationResolver(snapshot, waypoint_namespace, owned, mesh, lb_context)
    meta = cluster_templates.service_metadata(sv.metadata())
    port_chains = []
    slots = discovered(az if az is not None else EMPTY, sv.host)
    for port in sv.served_ports():
        if sv.resolution == service_model.DYNAMIC_DNS:
            dfp = dynamic_dns.port_chains(out, sv, port, vss, resolver, waypoint_namespace, slots,
                                          path_normalization, dynamic)
            if dfp is not None:
                port_chains.append(dfp)
            continue
        http_chain: listener_components_pb2.FilterChain | None = None
        tcp_chain: listener_components_pb2.FilterChain | None = None
        for kind in port.chain_kinds:
            cluster = names.inbound_vip_cluster(port.number, sv.host, kind)
            for_service.add_inbound_vip(out, snapshot, sv, meta, port, kind, dr, lb_context)
            if kind == "http":
                scope = routes.RouteScope(port.number, waypoint_namespace, resolver)
                route_list = routes.http_routes(vss, scope)
                if not route_list:
                    hash_policy = route_actions.hash_policy(policy_select.service_hash(dr, port.number))
                    route_list = [routes.default_route(cluster, sv.host, port.number, hash_policy)]
                # Over RDS: the route configuration is named like the chain that takes it.  A service
                # without addresses has no chain in main_internal, so nothing would name its routes.
                if sv.vips:
                    out.routes[cluster] = routes.route_configuration(cluster, f"inbound|http|{port.number}",
                                                                     route_list)
                http_chain = inbound.http_chain(cluster, port.number, protocols.is_h2(port.protocol),
                                                authz=slots.http, path_normalization=path_normalization,
                                                headers=headers)
                out.extension_configs.update(slots.http_configs)
            else:
                tcp_chain = inbound.with_network_filters(
                    tcp_routes.tcp_chain(cluster, vss, sv.host, port.number, resolver), slots.tcp)
                out.extension_configs.update(slots.tcp_configs)
        port_chains.append(inbound.PortChains(port.number, http_chain, tcp_chain,
                                              tls=port.protocol in ("tls", "https")))
    resolver.include(_referenced(vss))
    if resolver.outbound:
        out.merge(resolver.outbound_resources())
    if az is not None and az.clusters:
        out.merge(_authz_resources(snapshot, waypoint_namespace, az, lb_context))
    return _Fragment(out, inbound.ServiceChains(sv.vips, tuple(port_chains)))


def _authz_rule(snapshot: ConfigSnapshot, waypoint_namespace: str, svc: ServiceInfo | None,
                mesh: MeshConfig | None) -> policy_select.ResolvedRule:
    """The DestinationRule of a service authorization calls (resolved for the waypoint's namespace;
    the service is found by host whatever its exportTo, as Istio's ``LookupCluster`` does)."""
    if svc is None:
        return policy_select.NO_RULE
    return policy_select.resolve_destination_rule(snapshot, waypoint_namespace, svc.namespace, svc.host, mesh)


def _authz_objects(snapshot: ConfigSnapshot, waypoint_namespace: str, az: AuthzFilters,
                   mesh: MeshConfig | None = None) -> tuple[object, ...]:
    """What ``_authz_resources`` reads, for the memo: per called host its Service/ServiceEntry,
    DestinationRule sources and endpoint sources."""
    if not az.clusters:
        return ()
    out: list[object] = []
    for host in sorted({c.host for c in az.clusters}):
        svc = outbound.service_for_host(snapshot, host)
        out += (outbound.source_for_host(snapshot, host), *_authz_rule(snapshot, waypoint_namespace, svc, mesh).sources,
                _TARGET_END)
        if svc is not None:
            out += endpoints.endpoint_inputs(snapshot, svc)
        out.append(_TARGET_END)
    return tuple(out)


def _authz_resources(snapshot: ConfigSnapshot, waypoint_namespace: str, az: AuthzFilters,
                     lb_context: LbContext | None = None) -> EnvoyResources:
    """The clusters the authorization filters call (ext_authz services, remote JWKS hosts): a known
    service's outbound clusters (even one this waypoint serves), else a cluster straight to the
    host (``authz.request_cluster``; docs/authz.md)."""
    out = EnvoyResources()
    for req in sorted(az.clusters, key=lambda c: c.name):
        if req.name in out.clusters:
            continue
        svc = outbound.service_for_host(snapshot, req.host)
        if svc is not None:
            rule = _authz_rule(snapshot, waypoint_namespace, svc, lb_context.mesh if lb_context else None).rule
            for_service.add_outbound(out, snapshot, svc, rule, lb_context)
        if req.name not in out.clusters:  # not a service, not one of its ports, or a DNS one without endpoints
            out.clusters[req.name] = request_cluster(req)
    return out
