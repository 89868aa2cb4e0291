"""Valid Istio configuration that a waypoint silently ignores or cannot honour, as messages.

Istio drops these without a word (or only in a debug log, or a status condition nobody reads in a
YAML directory); an operator deserves to know.  Pure and memoised per map of the kinds read; the
control plane logs new entries, as it does for binding problems.  Only mesh-bound VirtualServices
are inspected (others never reach a waypoint).

Gateway API mesh routes are checked against what a waypoint will do with them: a parent that does
not resolve (missing Service or ServiceEntry, a Gateway parent, an unknown kind), a parent service
bound to no waypoint, a route from a namespace the service's waypoint does not take routes from,
a parent port the service does not have, a backend Service that does not exist (its requests get
500), a route Istio refuses to convert, and VirtualServices ignored because an HTTPRoute takes
precedence.  Bound ServiceEntries that cannot be served (a host without address, a host already
served, ``DYNAMIC_DNS`` ports or settings a waypoint does not honour) are reported too.
"""

from __future__ import annotations

from istiod_lite.model import ConfigSnapshot
from istiod_lite.model import gateway as gw
from istiod_lite.model import gateway_routes as gr
from istiod_lite.model.core import Service
from istiod_lite.model.networking import (
    ClientTLSSettings,
    DestinationRule,
    L4MatchAttributes,
    ServiceEntry,
    TLSMatchAttributes,
    TrafficPolicy,
    VirtualService,
)
from istiod_lite.translator.binding import service_model
from istiod_lite.translator.binding.waypoints import WAYPOINT_CLASS, Bindings, WaypointRef, bindings_of
from istiod_lite.translator.clusters.dynamic_dns import DEFAULT_OPTIONS, DynamicDnsOptions
from istiod_lite.translator.core import tables
from istiod_lite.translator.routing import httproute
from istiod_lite.translator.routing.httproute import CORE_GROUPS, ISTIO_GROUP
from istiod_lite.translator.routing.mesh_routes import MESH_ROUTE_KINDS, mesh_routes
from istiod_lite.translator.waypoint import applicable_virtual_services, bound_views, destination_rule

_SUPPORTED_REDIRECT_CODES = frozenset({0, 301, 302, 303, 307, 308})


def route_warnings(snapshot: ConfigSnapshot) -> list[str]:
    """One message per ignored piece of routing config, sorted."""
    out = list(tables.ROUTE_WARNINGS.of(snapshot))
    if snapshot.by_kind.get("ServiceEntry") or any(snapshot.by_kind.get(k) for k in MESH_ROUTE_KINDS):
        out += tables.MESH_WARNINGS.of(snapshot)
    out += _waypoint_gateway_warnings(snapshot)
    out += tables.UNADDRESSED_SERVICE_WARNINGS.of(snapshot)
    return sorted(out)


@tables.UNADDRESSED_SERVICE_WARNINGS.computed_by
def _unaddressed_service_warnings(snapshot: ConfigSnapshot) -> tuple[str, ...]:
    """Bound Services without a cluster IP: in a cluster the API server assigns one on create, but a
    manifest applied as a YAML file (Istio's samples are) has none, and without an address the
    waypoint cannot tell the service's traffic apart: its clusters are built, no listener chain is.
    Memoised on the bindings' kinds (a scan of every bound Service otherwise runs on every change)."""
    bindings = bindings_of(snapshot)
    return tuple(f"Service {svc.namespace}/{svc.name}: spec.clusterIP is not set (the API server would assign one); "
                 f"waypoint {ref} builds no listener chain or routes for it"
                 for ref, services in sorted(bindings.services.items(), key=lambda kv: str(kv[0]))
                 for svc in services if not svc.vips and svc.spec.cluster_ip != "None"
                 and svc.spec.type in ("ClusterIP", "NodePort", "LoadBalancer"))


def _waypoint_gateway_warnings(snapshot: ConfigSnapshot) -> list[str]:
    """Gateway API settings a waypoint Gateway may carry but cannot use: it terminates HBONE only
    (client TLS, ListenerSets and listener TLS are ingress features).  A few Gateways: not memoised."""
    out = []
    for g in snapshot.of_kind(gw.Gateway):
        if g.spec.gateway_class_name != WAYPOINT_CLASS:
            continue
        what = f"Gateway {g.namespace}/{g.name}"
        for field, value in (("spec.tls", g.spec.tls), ("spec.allowedListeners", g.spec.allowed_listeners),
                             ("spec.backendTLS", g.spec.backend_tls)):
            if value is not None:
                out.append(f"{what}: {field} has no meaning for a waypoint; ignored")
        out += [f"{what}: spec.listeners[{i}].tls has no meaning for a waypoint; ignored"
                for i, li in enumerate(g.spec.listeners) if li.tls is not None]
    return out


@tables.ROUTE_WARNINGS.computed_by
def _build(snapshot: ConfigSnapshot) -> tuple[str, ...]:
    out: list[str] = []
    for vs in snapshot.of_kind(VirtualService):
        if vs.spec.applies_to_mesh:
            out.extend(_vs_warnings(vs))
    for dr in snapshot.of_kind(DestinationRule):
        if dr.spec.workload_selector is None:
            out.extend(_dr_warnings(dr))
    return tuple(sorted(out))


def _vs_warnings(vs: VirtualService) -> list[str]:
    what = f"VirtualService {vs.namespace}/{vs.name}"
    out = []
    for i, http in enumerate(vs.spec.http):
        for j, m in enumerate(http.match):
            if m.source_labels:
                out.append(f"{what}: http[{i}].match[{j}] uses sourceLabels, which waypoints cannot evaluate; "
                           "the match is dropped")
        if http.delegate is not None:
            out.append(f"{what}: http[{i}] delegates to another VirtualService, which waypoints do not "
                       "support; the route is skipped")
        if http.redirect is not None and http.redirect.redirect_code not in _SUPPORTED_REDIRECT_CODES:
            out.append(f"{what}: http[{i}].redirect.redirectCode {http.redirect.redirect_code} is not supported "
                       "(301, 302, 303, 307, 308); the route is skipped")
    l4: list[tuple[str, int, int, TLSMatchAttributes | L4MatchAttributes]] = [
        ("tls", i, j, m) for i, tls in enumerate(vs.spec.tls) for j, m in enumerate(tls.match)]
    l4 += [("tcp", i, j, m) for i, tcp in enumerate(vs.spec.tcp) for j, m in enumerate(tcp.match)]
    for kind, i, j, lm in l4:
        if lm.source_labels or lm.source_namespace:
            out.append(f"{what}: {kind}[{i}].match[{j}] uses sourceLabels/sourceNamespace, which "
                       "waypoints cannot evaluate; the match never applies")
    return out


def _dr_warnings(dr: DestinationRule) -> list[str]:
    what = f"DestinationRule {dr.namespace}/{dr.name}"
    policies: list[tuple[str, TrafficPolicy]] = []
    if dr.spec.traffic_policy is not None:
        policies.append(("trafficPolicy", dr.spec.traffic_policy))
    policies += [(f"subsets[{i}].trafficPolicy", s.traffic_policy)
                 for i, s in enumerate(dr.spec.subsets) if s.traffic_policy is not None]
    out = []
    for where, tp in policies:
        tls_settings: list[tuple[str, ClientTLSSettings | None]] = [(f"{where}.tls", tp.tls)]
        tls_settings += [(f"{where}.portLevelSettings[{i}].tls", p.tls) for i, p in enumerate(tp.port_level_settings)]
        for tls_where, tls in tls_settings:
            if tls is not None and tls.credential_name and tls.mode in ("SIMPLE", "MUTUAL"):
                out.append(f"{what}: {tls_where}.credentialName secrets are not served by istiod-lite; "
                           "the cluster stays unready")
        if tp.tunnel is not None:
            out.append(f"{what}: {where}.tunnel is not supported on waypoints; ignored")
        # a subset's policy inherits the top-level outlier detection (policy_select.cluster_policy)
        top = dr.spec.traffic_policy
        od_default = top.outlier_detection if top is not None and tp is not top else None
        settings = [(where, tp.load_balancer, tp.outlier_detection or od_default)]
        settings += [(f"{where}.portLevelSettings[{i}]", p.load_balancer, p.outlier_detection)
                     for i, p in enumerate(tp.port_level_settings)]
        for lb_where, lb, od in settings:
            loc = lb.locality_lb_setting if lb is not None else None
            if loc is not None and loc.enabled is not False and not loc.distribute \
                    and (loc.failover or loc.failover_priority) and od is None:
                out.append(f"{what}: {lb_where}.loadBalancer.localityLbSetting failover needs outlierDetection "
                           "(Envoy never leaves a healthy-looking priority otherwise); not applied")
        lbs = [tp.load_balancer, *(p.load_balancer for p in tp.port_level_settings)]
        if any(lb is not None and lb.zone_aware_lb_setting is not None for lb in lbs):
            out.append(f"{what}: {where} zoneAwareLbSetting is not applied by istiod-lite; ignored")
        if tp.retry_budget is not None and tp.retry_budget.budget_interval is not None:
            out.append(f"{what}: {where}.retryBudget.budgetInterval is not in the Envoy API istiod-lite "
                       "builds against; ignored (Envoy's default interval applies)")
    return out


# --------------------------------------------------------------------------- mesh routes, ServiceEntries


@tables.MESH_WARNINGS.computed_by
def _build_mesh(snapshot: ConfigSnapshot) -> tuple[str, ...]:
    bindings = bindings_of(snapshot)
    # service host -> the waypoints serving it
    serving: dict[str, list[WaypointRef]] = {}
    for ref in bindings.waypoints:
        for view in bound_views(bindings, ref):
            serving.setdefault(view.host, []).append(ref)
    out = list(mesh_routes(snapshot).problems)
    for route in snapshot.of_kind(gw.HTTPRoute):
        out += _route_warnings(snapshot, route, serving)
    others: list[gr.GRPCRoute | gr.TCPRoute | gr.TLSRoute] = [
        *snapshot.of_kind(gr.GRPCRoute), *snapshot.of_kind(gr.TCPRoute), *snapshot.of_kind(gr.TLSRoute)]
    for other in others:
        out += _parent_warnings(snapshot, other, serving)
        out += _other_route_warnings(snapshot, other)
    out += _precedence_warnings(snapshot, bindings)
    out += _service_entry_warnings(snapshot, bindings)
    return tuple(sorted(set(out)))


def _parent_target(snapshot: ConfigSnapshot, route: gr.MeshRoute, p: gw.ParentReference
                   ) -> tuple[str, Service | ServiceEntry | None]:
    """(description, object) of a mesh parent; ("", None) for a parent that is not a mesh parent."""
    ns = p.namespace or route.namespace
    if httproute.is_service_parent(p):
        return f"Service {ns}/{p.name}", snapshot.get(Service, ns, p.name)
    if httproute.is_service_entry_parent(p):
        return f"ServiceEntry {ns}/{p.name}", snapshot.get(ServiceEntry, ns, p.name)
    return "", None


def _parent_warnings(snapshot: ConfigSnapshot, route: gr.MeshRoute, serving: dict[str, list[WaypointRef]]
                     ) -> list[str]:
    """Parents that do not resolve, are not served by a waypoint, or cannot carry the route's kind."""
    what = f"{route.kind} {route.namespace}/{route.name}"
    out = []
    for i, p in enumerate(route.spec.parent_refs):
        where = f"{what}: parentRefs[{i}]"
        desc, target = _parent_target(snapshot, route, p)
        if not desc:
            out.append(_non_mesh_parent(snapshot, route, p, where))
            continue
        if target is None:
            out.append(f"{where} names {desc}, which does not exist; ignored")
            continue
        hosts = httproute.parent_hosts(snapshot, route, p)
        if p.port is not None:
            ports = [v.ports for h in hosts for v in _views(target, h)]
            if ports and not any(pi.number == p.port for ps in ports for pi in ps):
                out.append(f"{where}: port {p.port} is not a port of {desc}; the route never matches")
        if not isinstance(route, gw.HTTPRoute):
            out += _chain_kind_warning(route, target, hosts, p.port, desc, where)
        for host in hosts:
            refs = serving.get(host, [])
            if not refs:
                out.append(f"{where}: {desc} ({host}) is not bound to a waypoint; the route has no effect there")
            for ref in refs:
                if route.namespace not in (ref.namespace, target.namespace):
                    allowed = " and ".join(sorted({ref.namespace, target.namespace}))
                    out.append(f"{where}: waypoint {ref} applies routes for {host} only from namespace {allowed}; "
                               "ignored there")
            if isinstance(route, gr.TLSRoute) and route.spec.hostnames and host not in route.spec.hostnames:
                out.append(f"{where}: waypoints apply a TLSRoute to {host} only when its hostnames name exactly "
                           f"that host (or none); it never applies there")
    return out


def _chain_kind_warning(route: gr.GRPCRoute | gr.TCPRoute | gr.TLSRoute, target: Service | ServiceEntry,
                        hosts: tuple[str, ...], port: int | None, desc: str, where: str) -> list[str]:
    """A GRPCRoute needs an HTTP port of the parent (appProtocol ``grpc``/``http2`` or a ``grpc-``
    name, for HTTP/2 to the backends), a TCPRoute/TLSRoute a TCP one (``tcp``, ``tls``...)."""
    ports = [pi for h in hosts for v in _views(target, h) for pi in v.served_ports()
             if port is None or pi.number == port]
    if not ports:
        return []
    if isinstance(route, gr.GRPCRoute):
        if not any("http" in pi.chain_kinds for pi in ports):
            return [f"{where}: {desc} has no HTTP port (name it grpc-* or set appProtocol: grpc); "
                    "the route never applies"]
        return []
    if not any("tcp" in pi.chain_kinds for pi in ports):
        proto = "tls" if isinstance(route, gr.TLSRoute) else "tcp"
        return [f"{where}: {desc} has no TCP port (name it {proto}-* or set appProtocol: {proto}); "
                "the route never applies"]
    return []


def _route_warnings(snapshot: ConfigSnapshot, route: gw.HTTPRoute, serving: dict[str, list[WaypointRef]]
                    ) -> list[str]:
    what = f"HTTPRoute {route.namespace}/{route.name}"
    out = _parent_warnings(snapshot, route, serving)
    for i, rule in enumerate(route.spec.rules):
        if rule.session_persistence is not None:
            out.append(f"{what}: rules[{i}].sessionPersistence is not supported (Istio does not convert it); "
                       "ignored")
        for j, b in enumerate(rule.backend_refs):
            if b.weight > 0 and _missing_service(snapshot, route, b.group, b.kind, b.name, b.namespace):
                out.append(f"{what}: rules[{i}].backendRefs[{j}] names Service {b.namespace or route.namespace}/"
                           f"{b.name}, which does not exist; its share of requests gets 500")
        for k, f in enumerate(rule.filters):
            m = f.request_mirror
            if m is not None and _missing_service(snapshot, route, m.backend_ref.group, m.backend_ref.kind,
                                                  m.backend_ref.name, m.backend_ref.namespace):
                out.append(f"{what}: rules[{i}].filters[{k}] mirrors to Service "
                           f"{m.backend_ref.namespace or route.namespace}/{m.backend_ref.name}, which does not exist; "
                           "the mirror is dropped")
    return out


def _other_route_warnings(snapshot: ConfigSnapshot, route: gr.GRPCRoute | gr.TCPRoute | gr.TLSRoute) -> list[str]:
    """GRPCRoute, TCPRoute and TLSRoute rules: missing backends and mirrors, unsupported settings."""
    what = f"{route.kind} {route.namespace}/{route.name}"
    share = "requests gets 500" if isinstance(route, gr.GRPCRoute) else "connections is refused"
    out = []
    rules: tuple[gr.GRPCRouteRule | gr.L4RouteRule, ...] = route.spec.rules
    for i, rule in enumerate(rules):
        for j, b in enumerate(rule.backend_refs):
            if b.weight > 0 and _missing_service(snapshot, route, b.group, b.kind, b.name, b.namespace):
                out.append(f"{what}: rules[{i}].backendRefs[{j}] names Service {b.namespace or route.namespace}/"
                           f"{b.name}, which does not exist; its share of {share}")
        if not isinstance(rule, gr.GRPCRouteRule):
            if rule.backend_refs and all(b.weight == 0 for b in rule.backend_refs):
                out.append(f"{what}: rules[{i}] has no backend with a positive weight; every connection is refused")
            continue
        if rule.session_persistence is not None:
            out.append(f"{what}: rules[{i}].sessionPersistence is not supported (Istio does not convert it); "
                       "ignored")
        for k, f in enumerate(rule.filters):
            m = f.request_mirror
            if m is not None and _missing_service(snapshot, route, m.backend_ref.group, m.backend_ref.kind,
                                                  m.backend_ref.name, m.backend_ref.namespace):
                out.append(f"{what}: rules[{i}].filters[{k}] mirrors to Service "
                           f"{m.backend_ref.namespace or route.namespace}/{m.backend_ref.name}, which does not exist; "
                           "the mirror is dropped")
    return out


def _missing_service(snapshot: ConfigSnapshot, route: gr.MeshRoute, group: str, kind: str, name: str,
                     namespace: str | None) -> bool:
    if kind != "Service" or group not in CORE_GROUPS or "." in name:
        return False
    return snapshot.get(Service, namespace or route.namespace, name) is None


def _views(target: Service | ServiceEntry, host: str) -> list[service_model.ServiceInfo]:
    if isinstance(target, Service):
        return [service_model.of_service(target)]
    return [v for v in service_model.of_service_entry(target) if v.host == host]


def _non_mesh_parent(snapshot: ConfigSnapshot, route: gr.MeshRoute, p: gw.ParentReference, where: str) -> str:
    ns = p.namespace or route.namespace
    if p.kind == "Gateway" and p.group == gw.GROUP:
        g = snapshot.get(gw.Gateway, ns, p.name)
        if g is not None and g.spec.gateway_class_name == WAYPOINT_CLASS:
            return (f"{where} names waypoint Gateway {ns}/{p.name}; waypoints apply routes attached to Services "
                    "and ServiceEntries only; ignored")
        return f"{where} names Gateway {ns}/{p.name}, which istiod-lite does not serve; ignored"
    group = p.group or "core"
    if p.kind == "ServiceEntry" or group == ISTIO_GROUP:
        return f"{where}: kind {group}/{p.kind} is not a mesh parent (use networking.istio.io/ServiceEntry); ignored"
    return f"{where}: parent kind {group}/{p.kind} is not supported; ignored"


def _precedence_warnings(snapshot: ConfigSnapshot, bindings: Bindings) -> list[str]:
    """VirtualServices a waypoint ignores because Gateway API routes attach to the same service."""
    mesh = mesh_routes(snapshot)
    if not mesh.routes_by_host:
        return []
    out = []
    for ref in bindings.waypoints:
        for view in bound_views(bindings, ref):
            attached = mesh.routes((ref.namespace, view.namespace), view.host)
            if not attached:
                continue
            if all(isinstance(r, gw.HTTPRoute) for r in attached):
                names = "HTTPRoute " + ", ".join(f"{r.namespace}/{r.name}" for r in attached)
            else:
                names = ", ".join(f"{r.kind} {r.namespace}/{r.name}" for r in attached)
            for vs in applicable_virtual_services(snapshot, ref, view):
                out.append(f"VirtualService {vs.namespace}/{vs.name}: ignored for {view.host} on waypoint {ref}, "
                           f"because {names} attaches to it (Gateway API routes take precedence)")
    return out


def _service_entry_warnings(snapshot: ConfigSnapshot, bindings: Bindings) -> list[str]:
    out = []
    for ref, entries in bindings.service_entries.items():
        served = {v.host: v for v in bound_views(bindings, ref)}
        for se in entries:
            what = f"ServiceEntry {se.namespace}/{se.name}"
            dynamic = se.spec.resolution == service_model.DYNAMIC_DNS
            for view in service_model.of_service_entry(se):
                owner = served.get(view.host)
                if owner is not None and owner.source is not se:
                    out.append(f"{what}: host {view.host} is already served by waypoint {ref} for "
                               f"{type(owner.source).__name__} {owner.namespace}/{owner.source.name}; ignored")
                elif dynamic and not view.vips:
                    out.append(f"{what}: DYNAMIC_DNS host {view.host} has no address allocated in status.addresses; "
                               f"waypoint {ref} matches traffic by address, so it is unreachable")
                elif dynamic:
                    out += _dynamic_dns_warnings(snapshot, ref, se, view)
                elif not view.vips:
                    out.append(f"{what}: host {view.host} has no address (spec.addresses, or one allocated in "
                               f"status.addresses); waypoint {ref} matches traffic by address, so it is unreachable")
    return out


def _dynamic_dns_warnings(snapshot: ConfigSnapshot, ref: WaypointRef, se: ServiceEntry,
                          view: service_model.ServiceInfo) -> list[str]:
    """What a waypoint does not honour of a ``DYNAMIC_DNS`` host (translator/waypoint/dynamic_dns.py)."""
    what = f"ServiceEntry {se.namespace}/{se.name}"
    served = set(view.served_ports())
    out = [f"{what}: port {p.number} ({p.protocol.upper()}) of DYNAMIC_DNS host {view.host}: a waypoint serves only "
           f"HTTP and TLS ports of such an entry; not served by {ref}" for p in view.ports if p not in served]
    dr = destination_rule(snapshot, ref, view)
    if dr is not None:
        out.append(f"DestinationRule {dr.namespace}/{dr.name}: not applied to DYNAMIC_DNS host {view.host} on "
                   f"waypoint {ref} (its dynamic forward proxy clusters take no traffic policy or subsets here)")
    return out


def dynamic_dns_warnings(snapshot: ConfigSnapshot, options: DynamicDnsOptions = DEFAULT_OPTIONS) -> list[str]:
    """``DYNAMIC_DNS`` TLS ports left unserved because the server runs without ``wildcard_tls``
    (Istio's ``ENABLE_WILDCARD_HOST_SERVICE_ENTRIES_FOR_TLS``, off by default), sorted."""
    if options.wildcard_tls or not snapshot.by_kind.get("ServiceEntry"):
        return []
    out = []
    for ref, entries in bindings_of(snapshot).service_entries.items():
        for se in entries:
            if se.spec.resolution != service_model.DYNAMIC_DNS:
                continue
            for p in se.spec.ports:
                if service_model.se_protocol(p.protocol) == "tls":
                    out.append(f"ServiceEntry {se.namespace}/{se.name}: TLS port {p.number} of a DYNAMIC_DNS entry is "
                               f"served by waypoint {ref} only with --enable-wildcard-host-service-entries-for-tls "
                               "(Istio's ENABLE_WILDCARD_HOST_SERVICE_ENTRIES_FOR_TLS: a client's SNI is not "
                               "verified); not served")
    return sorted(out)
