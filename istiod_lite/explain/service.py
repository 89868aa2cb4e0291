"""``explain service NS/NAME``: which waypoint serves a service, and what config applies to it there.

Every answer is read from a translator decision, never decided again here:

* the waypoint: ``binding_decision`` (the label, the object carrying it, the outcome) and
  ``bound_views`` (a bound ServiceEntry host the waypoint still cannot serve);
* routes: ``service_routes`` / ``applicable_virtual_services`` and ``mesh_routes`` (HTTPRoutes win);
* the DestinationRule: ``waypoint_destination_rule`` (each source rule of a merged one), and why
  every other rule naming the host does not apply: ``export_warnings.rule_outcomes`` (exportTo,
  precedence, merge), the same records the ``validate`` warnings are made from;
* AuthorizationPolicy / RequestAuthentication: the attach index (``for_service``);
* Telemetry: ``applicable_telemetries``;
* notes on what a waypoint ignores in an applied object: the diagnostics (``diagnose``) about it.

Objects that name the service and are *not* in those answers are listed with the first reason, in a
fixed order of checks, that explains their absence (no waypoint, not for the mesh, wrong namespace,
selector instead of targetRefs, not exported, shadowed, superseded).
"""

from __future__ import annotations

from collections.abc import Iterable

from istiod_lite.explain.lookup import Lookup, order
from istiod_lite.explain.model import Entry, ServiceExplanation, WaypointChoice
from istiod_lite.model import ConfigSnapshot
from istiod_lite.model import gateway as gw
from istiod_lite.model import gateway_routes as gr
from istiod_lite.model.core import Service
from istiod_lite.model.meshconfig import MeshConfig
from istiod_lite.model.networking import DestinationRule, ServiceEntry, VirtualService
from istiod_lite.model.security import AuthorizationPolicy, RequestAuthentication
from istiod_lite.model.telemetry import Telemetry
from istiod_lite.translator import export_warnings as ew
from istiod_lite.translator.authz import attach
from istiod_lite.translator.binding import service_model
from istiod_lite.translator.binding.service_model import ServiceInfo
from istiod_lite.translator.binding.waypoints import (
    BOUND,
    NOT_ALLOWED,
    OPTED_OUT,
    TRAFFIC_TYPE_MISMATCH,
    UNLABELLED,
    USE_WAYPOINT,
    WAYPOINT_CLASS,
    WAYPOINT_MISSING,
    BindingDecision,
    WaypointRef,
    binding_decision,
    bindings_of,
)
from istiod_lite.translator.clusters.dynamic_dns import DEFAULT_OPTIONS as DNS_OPTIONS
from istiod_lite.translator.clusters.endpoints import service_pods
from istiod_lite.translator.clusters.policy_select import NO_RULE, ResolvedRule, waypoint_destination_rule
from istiod_lite.translator.core.index import qualify
from istiod_lite.translator.diagnostics import Finding, diagnose, findings
from istiod_lite.translator.routing.mesh_routes import mesh_routes
from istiod_lite.translator.telemetry.apply import applicable_telemetries
from istiod_lite.translator.waypoint import applicable_virtual_services, bound_views

#: ``Entry.code`` values of objects that do not apply.
NO_WAYPOINT = "no-waypoint"
NOT_MESH = "not-mesh"
WRONG_NAMESPACE = "wrong-namespace"
SHADOWED = "shadowed-by-httproute"
SELECTOR = "selector"
NAMESPACE_WIDE = "namespace-wide"
SUPERSEDED = "superseded"
NOT_CONVERTED = "not-converted"
NOT_MATCHED = "not-matched"
#: DestinationRule / VirtualService outcomes of the exportTo and precedence rules (``export_warnings``).
NOT_EXPORTED = "not-exported"
SERVICE_NOT_EXPORTED = "service-not-exported"
SHADOWED_BY_NAMESPACE = "shadowed-by-namespace"
SHADOWED_BY_HOST = "shadowed-by-host"
SELECTOR_FIRST = "selector-rule-first"
DYNAMIC_DNS_HOST = "dynamic-dns-host"
#: ``RuleOutcome.reason`` -> ``Entry.code``.
OUTCOME_CODES = {ew.NOT_EXPORTED: NOT_EXPORTED, ew.SERVICE_NOT_EXPORTED: SERVICE_NOT_EXPORTED,
                 ew.EARLIER_NAMESPACE: SHADOWED_BY_NAMESPACE, ew.HIDDEN_BY_HOST: SHADOWED_BY_HOST,
                 ew.MORE_SPECIFIC: SHADOWED_BY_HOST, ew.NOT_MERGED: SUPERSEDED, ew.SELECTOR_FIRST: SELECTOR_FIRST}
#: ``WaypointChoice.outcome`` of a bound ServiceEntry host the waypoint cannot serve.
NOT_SERVABLE = "NotServable"
WAYPOINT_SERVICE = "WaypointService"


#: How each Gateway API route kind's rules are ordered on a waypoint (``routing/mesh_routes.py``).
_ROUTE_PRECEDENCE = {
    "HTTPRoute": "merged with the HTTP and gRPC routes of its namespace for this host and port, rules by Gateway "
                 "API precedence",
    "GRPCRoute": "merged with the HTTP and gRPC routes of its namespace for this host and port, rules by Gateway "
                 "API precedence",
    "TCPRoute": "TCP traffic of its parent port; the first route's rule wins",
    "TLSRoute": "TLS traffic by SNI on its parent port; the first matching route wins",
}


class TargetNotFound(LookupError):
    """``NS/NAME`` names no Service, ServiceEntry host or ServiceEntry."""


def resolve(snapshot: ConfigSnapshot, target: str) -> list[ServiceInfo]:
    """The service views ``NS/NAME`` means: Service NS/NAME; else every ServiceEntry host NAME in NS;
    else every host of ServiceEntry NS/NAME."""
    ns, sep, name = target.partition("/")
    if not sep or not ns or not name:
        raise TargetNotFound(f"service must be NAMESPACE/NAME (or NAMESPACE/HOST of a ServiceEntry), got {target!r}")
    svc = snapshot.get(Service, ns, name)
    if svc is not None:
        return [service_model.of_service(svc)]
    entries = sorted((se for se in snapshot.of_kind(ServiceEntry) if se.namespace == ns),
                     key=lambda se: (se.metadata.creation_timestamp, se.name))
    by_host = [v for se in entries for v in _views(se) if v.host == name]
    if by_host:
        return by_host
    se = snapshot.get(ServiceEntry, ns, name)
    if se is not None:
        return list(_views(se))
    raise TargetNotFound(f"no Service {ns}/{name}, no ServiceEntry with host {name} in namespace {ns} and no "
                         f"ServiceEntry {ns}/{name}")


def _views(se: ServiceEntry) -> tuple[ServiceInfo, ...]:
    """The translator's views of a ServiceEntry (one per host, ``DYNAMIC_DNS`` wildcards included)."""
    return service_model.of_service_entry(se)


def explain_service(snapshot: ConfigSnapshot, target: str, mesh: MeshConfig | None = None
                    ) -> list[ServiceExplanation]:
    """One explanation per service host ``target`` names (raises ``TargetNotFound``)."""
    views = resolve(snapshot, target)
    notes = Lookup(snapshot, findings(diagnose(snapshot, mesh)), ew.rule_outcomes(snapshot, mesh))
    return [_explain(snapshot, view, mesh or MeshConfig(), notes) for view in views]


def kind_of(view: ServiceInfo) -> str:
    return "ServiceEntry" if view.is_service_entry else "Service"


def _explain(snapshot: ConfigSnapshot, view: ServiceInfo, mesh: MeshConfig, notes: Lookup) -> ServiceExplanation:
    kind = kind_of(view)
    choice, ref = waypoint_choice(snapshot, view, notes)
    applied: list[Entry] = []
    not_applied: list[Entry] = []
    ctx = _Context(snapshot, view, ref, mesh, notes)
    for part in (ctx.routes, ctx.destination_rules, ctx.authorization, ctx.authentication, ctx.telemetry):
        a, n = part()
        applied += a
        not_applied += n
    service_notes = _port_notes(view, ref)
    if ref is not None:
        service_notes += [f"{view.host} is {o.why}" for o in notes.outcomes(ref, view.host)
                          if o.reason == ew.SERVICE_NOT_EXPORTED]
    if ref is not None and not view.vips:
        service_notes.append(f"{view.host} has no address: the waypoint matches traffic by address, so it is "
                             "unreachable through it")
    return ServiceExplanation(kind, view.namespace, view.source.name, view.host, choice, tuple(applied),
                              tuple(not_applied), tuple(service_notes))


def _port_notes(view: ServiceInfo, ref: WaypointRef | None) -> list[str]:
    """Ports a waypoint does not serve; for a ``DYNAMIC_DNS`` host, how the waypoint serves it (the
    same rules as ``ServiceInfo.served_ports`` and the server's ``DynamicDnsOptions``, whose
    defaults ``diagnose`` reports with)."""
    served = set(view.served_ports())
    if view.resolution != service_model.DYNAMIC_DNS:
        return [f"port {p.number} ({p.protocol}) is not served by waypoints" for p in view.ports if p not in served]
    by = f"waypoint {ref}" if ref is not None else "a waypoint"
    out = [f"DYNAMIC_DNS: {by} forwards requests for any name matching {view.host} (dynamic forward proxy: the "
           "HTTP Host header, or a TLS port's SNI, names the upstream, resolved by the waypoint itself)"]
    for p in view.ports:
        if p not in served:
            out.append(f"port {p.number} ({p.protocol}) is not served: a waypoint serves only HTTP and TLS ports of "
                       "a DYNAMIC_DNS entry")
        elif p.protocol == "tls" and not DNS_OPTIONS.wildcard_tls:
            out.append(f"port {p.number} (tls) is served only when the server runs with "
                       "--enable-wildcard-host-service-entries-for-tls (a client's SNI is not verified); not served "
                       "by default")
        else:
            out.append(f"port {p.number} ({p.protocol}) is served: {'SNI' if p.protocol == 'tls' else 'HTTP'} "
                       "dynamic forward proxy")
    return out


def _label_text(decision: BindingDecision) -> str:
    return ", ".join(f"{k}={v}" for k, v in decision.labels) or f"{USE_WAYPOINT}"


def waypoint_choice(snapshot: ConfigSnapshot, view: ServiceInfo, notes: Lookup | None = None
                    ) -> tuple[WaypointChoice, WaypointRef | None]:
    """The waypoint serving ``view`` (or None) and why, from the binding decision."""
    kind, name = kind_of(view), view.source.name
    decision = binding_decision(snapshot, kind, view.namespace, name)
    if decision is None:
        return WaypointChoice("", WAYPOINT_SERVICE, f"{kind} {view.namespace}/{name} is a waypoint's own Service; "
                                                    "it never uses a waypoint"), None
    labels = decision.labels
    if decision.outcome == UNLABELLED:
        return WaypointChoice("", UNLABELLED, f"no {USE_WAYPOINT} label on {kind} {view.namespace}/{name} nor on "
                                              f"Namespace {view.namespace}"), None
    if decision.outcome == OPTED_OUT:
        return WaypointChoice("", OPTED_OUT, f"{decision.label_on} has label {_label_text(decision)}: opted out of "
                                             "waypoints", decision.label_on, labels), None
    assert decision.requested is not None
    ref = decision.requested
    if decision.outcome == WAYPOINT_MISSING:
        reason = f"{decision.label_on} has label {_label_text(decision)}, but waypoint Gateway {ref} does not exist"
        g = snapshot.get(gw.Gateway, ref.namespace, ref.name)
        if g is not None:
            reason = (f"{decision.label_on} has label {_label_text(decision)}, but Gateway {ref} is of class "
                      f"{g.spec.gateway_class_name!r}, not {WAYPOINT_CLASS!r}: it is not a waypoint")
        return WaypointChoice(str(ref), WAYPOINT_MISSING, reason, decision.label_on, labels), None
    if decision.outcome in (TRAFFIC_TYPE_MISMATCH, NOT_ALLOWED):
        detail = decision.message.split(": ", 1)[1]
        return WaypointChoice(str(ref), decision.outcome, f"{decision.label_on} has label {_label_text(decision)}, "
                                                          f"but {detail}", decision.label_on, labels), None
    assert decision.outcome == BOUND
    served = notes.served(ref, view.host) if notes is not None else next(
        (v for v in bound_views(bindings_of(snapshot), ref) if v.host == view.host), None)
    if served is None or served.source is not view.source:
        why = [f.detail for f in (notes.about(kind, view.namespace, name) if notes else ())
               if view.host in f.message]
        reason = (f"{decision.label_on} has label {_label_text(decision)}, but the waypoint cannot serve "
                  f"{view.host}: " + ("; ".join(why) or "another service already has this host"))
        return WaypointChoice(str(ref), NOT_SERVABLE, reason, decision.label_on, labels), None
    return WaypointChoice(str(ref), BOUND, f"{decision.label_on} has label {_label_text(decision)}",
                          decision.label_on, labels), ref


class _Context:
    """One service's view of the config: each method gives (applied, not applied) entries for one kind."""

    def __init__(self, snapshot: ConfigSnapshot, view: ServiceInfo, ref: WaypointRef | None, mesh: MeshConfig,
                 notes: Lookup) -> None:
        self.snapshot, self.view, self.ref, self.mesh, self.notes = snapshot, view, ref, mesh, notes
        self.namespaces = (ref.namespace, view.namespace) if ref is not None else ()
        self.root = mesh.root_namespace

    def _no_waypoint(self, what: str) -> str:
        return f"no waypoint serves {self.view.host}, so nothing applies its {what}"

    def _namespaces_text(self) -> str:
        assert self.ref is not None
        if self.ref.namespace == self.view.namespace:
            return f"namespace {self.ref.namespace}"
        return f"its own namespace ({self.ref.namespace}) and the service's ({self.view.namespace})"

    def _move_text(self) -> str:
        assert self.ref is not None
        if self.ref.namespace == self.view.namespace:
            return f"; create it in namespace {self.ref.namespace} instead"
        return "; create it in one of those instead"

    # -- routes ------------------------------------------------------------------------------------
    def routes(self) -> tuple[list[Entry], list[Entry]]:
        host, ref = self.view.host, self.ref
        naming_vs = self.notes.virtual_services.naming(host)
        naming_routes = self.notes.routes.naming(host)
        applied: list[Entry] = []
        not_applied: list[Entry] = []
        attached: tuple[gr.MeshRoute, ...] = ()
        used_vs: list[VirtualService] = []
        outcomes: dict[tuple[str, str], list[ew.RuleOutcome]] = {}
        if ref is not None:
            attached = mesh_routes(self.snapshot).routes(self.namespaces, host)
            used_vs = applicable_virtual_services(self.snapshot, ref, self.view, self.mesh)
            for o in self.notes.outcomes(ref, host):
                if o.kind == "VirtualService":
                    outcomes.setdefault((o.namespace, o.name), []).append(o)
        for i, r in enumerate(attached):
            applied.append(Entry(r.kind, r.namespace, r.name,
                                 f"routes {host} (Gateway API route {i + 1} of {len(attached)}, oldest first; "
                                 f"{_ROUTE_PRECEDENCE[r.kind]}; Gateway API routes take precedence over "
                                 "VirtualServices)",
                                 notes=self.notes.notes(r.kind, r.namespace, r.name, host)))
        if attached and all(r.kind == "HTTPRoute" for r in attached):
            shadow = "HTTPRoute " + ", ".join(f"{r.namespace}/{r.name}" for r in attached)
        else:
            shadow = ", ".join(f"{r.kind} {r.namespace}/{r.name}" for r in attached)
        for i, vs in enumerate(used_vs):
            if attached:
                not_applied.append(Entry("VirtualService", vs.namespace, vs.name,
                                         f"shadowed: {shadow} attaches to {host}, and Gateway API routes "
                                         "take precedence over VirtualServices on a waypoint", SHADOWED))
            else:
                notes = self.notes.notes("VirtualService", vs.namespace, vs.name, host)
                notes += tuple(o.why for o in outcomes.get((vs.namespace, vs.name), ())
                               if o.reason == ew.TARGET_NOT_EXPORTED)
                applied.append(Entry("VirtualService", vs.namespace, vs.name,
                                     f"routes {host} (VirtualService {i + 1} of {len(used_vs)}, merged oldest first)"
                                     + route_summary(vs, host), notes=notes))
        used_ids = {id(v) for v in used_vs}
        for vs in naming_vs:
            if id(vs) in used_ids:
                continue
            unexported = next((o for o in outcomes.get((vs.namespace, vs.name), ())
                               if o.reason == ew.NOT_EXPORTED), None)
            if not vs.spec.applies_to_mesh:
                not_applied.append(Entry("VirtualService", vs.namespace, vs.name,
                                         f"spec.gateways {list(vs.spec.gateways)} does not include 'mesh': it "
                                         "configures those gateways only, not waypoints", NOT_MESH))
            elif ref is None:
                not_applied.append(Entry("VirtualService", vs.namespace, vs.name, self._no_waypoint("routes"),
                                         NO_WAYPOINT))
            elif unexported is not None:
                not_applied.append(Entry("VirtualService", vs.namespace, vs.name, unexported.why, NOT_EXPORTED))
            elif vs.namespace in self.namespaces and not self._service_visible():
                not_applied.append(Entry("VirtualService", vs.namespace, vs.name, self._service_hidden_text(),
                                         SERVICE_NOT_EXPORTED))
            else:
                not_applied.append(Entry("VirtualService", vs.namespace, vs.name,
                                         f"it is in namespace {vs.namespace}; waypoint {ref} takes VirtualServices "
                                         f"for {host} only from {self._namespaces_text()}"
                                         f"{self._move_text()}", WRONG_NAMESPACE))
        attached_ids = {id(r) for r in attached}
        for r in naming_routes:
            if id(r) in attached_ids:
                continue
            if ref is None:
                not_applied.append(Entry(r.kind, r.namespace, r.name, self._no_waypoint("routes"), NO_WAYPOINT))
            elif r.namespace not in self.namespaces:
                not_applied.append(Entry(r.kind, r.namespace, r.name,
                                         f"it is in namespace {r.namespace}; waypoint {ref} applies routes for {host} "
                                         f"only from {self._namespaces_text()}{self._move_text()}", WRONG_NAMESPACE))
            else:
                why = "; ".join(self.notes.notes(r.kind, r.namespace, r.name, host)) or "it does not convert"
                not_applied.append(Entry(r.kind, r.namespace, r.name, f"not converted: {why}", NOT_CONVERTED))
        return applied, not_applied

    def _service_visible(self) -> bool:
        assert self.ref is not None
        return not any(o.reason == ew.SERVICE_NOT_EXPORTED for o in self.notes.outcomes(self.ref, self.view.host))

    def _service_hidden_text(self) -> str:
        return (f"{kind_of(self.view)} {self.view.namespace}/{self.view.source.name} is not exported to the "
                f"waypoint's namespace ({self.ref.namespace if self.ref else ''}): the waypoint applies neither its "
                "VirtualServices nor its DestinationRules")

    # -- DestinationRule ---------------------------------------------------------------------------
    def destination_rules(self) -> tuple[list[Entry], list[Entry]]:
        """The DestinationRule ``policy_select.waypoint_destination_rule`` resolves (each source rule
        of a merged one), and why each other rule naming the host does not apply (the outcomes of
        ``export_warnings``, else the namespace or selector that rules it out)."""
        host, ref, view = self.view.host, self.ref, self.view
        resolved = waypoint_destination_rule(self.snapshot, ref.namespace, view, self.mesh) if ref else NO_RULE
        sources = resolved.sources if resolved.rule is not None else ()
        applied: list[Entry] = []
        not_applied: list[Entry] = []
        dynamic = view.resolution == service_model.DYNAMIC_DNS
        for i, src in enumerate(sources):
            if dynamic:
                not_applied.append(Entry("DestinationRule", src.namespace, src.name,
                                         f"it is the rule found for {host} ({self._found_text(resolved)}), but "
                                         "the DYNAMIC_DNS host's dynamic forward proxy clusters take no traffic "
                                         "policy or subsets", DYNAMIC_DNS_HOST))
                continue
            applied.append(self._applied_dr(resolved, i))
        outcomes: dict[tuple[str, str], ew.RuleOutcome] = {}
        if ref is not None:
            for o in self.notes.outcomes(ref, host):
                if o.kind == "DestinationRule" and o.reason != ew.MERGE_DROP:
                    outcomes.setdefault((o.namespace, o.name), o)
        for dr in self.notes.destination_rules.naming(host):
            if any(dr is src for src in sources):
                continue
            reason, code = self._dr_absence(dr, outcomes.get((dr.namespace, dr.name)))
            not_applied.append(Entry("DestinationRule", dr.namespace, dr.name, reason, code))
        return applied, not_applied

    def _found_text(self, resolved: ResolvedRule) -> str:
        ns = resolved.namespace
        also = " (also the service's)" if ns == self.view.namespace else ""
        where = {"proxy": f"the waypoint's namespace {ns}{also}, searched first",
                 "service": f"the service's namespace {ns}, searched after the waypoint's",
                 "root": f"the root namespace {ns}, the last resort"}[resolved.step]
        host = resolved.matched_host
        how = "exact host" if host == self.view.host else f"wildcard host {host}, the most specific match there"
        return f"found in {where}; {how}"

    def _applied_dr(self, resolved: ResolvedRule, i: int) -> Entry:
        """Entry for source ``i`` of the applied rule: the first gives the settings, later ones
        (merged: same host and exportTo, same namespace) add subsets; merge losses are notes."""
        src, host = resolved.sources[i], self.view.host
        entry = resolved.entry
        drops = [d for d in (entry.drops if entry is not None else ()) if d.rule is src]
        notes = list(self.notes.notes("DestinationRule", src.namespace, src.name, host))
        notes += [d.detail for d in drops]
        dropped = {d.subset for d in drops}
        subsets = [s.name for s in src.spec.subsets if s.name not in dropped]
        assert resolved.rule is not None
        notes += [f"subset {name} selects no pod" for name in empty_subsets(self.snapshot, self.view, resolved.rule)
                  if name in subsets]
        if i == 0:
            what = "traffic policy" + (f" and subsets {', '.join(subsets)}" if subsets else "")
            merged = ""
            if len(resolved.sources) > 1:
                merged = "; merged with " + ", ".join(f"DestinationRule {s.namespace}/{s.name}"
                                                      for s in resolved.sources[1:]) + " (same host and exportTo)"
            reason = f"{what} for {host} ({self._found_text(resolved)}){merged}"
        else:
            first = resolved.sources[0]
            adds = f"adds subsets {', '.join(subsets)}" if subsets else "adds nothing"
            policy = " and its trafficPolicy" if src.spec.traffic_policy is not None and not any(
                not d.subset for d in drops) else ""
            reason = (f"merged into DestinationRule {first.namespace}/{first.name} (same host and exportTo; "
                      f"oldest first): {adds}{policy}")
        return Entry("DestinationRule", src.namespace, src.name, reason, notes=tuple(notes))

    def _dr_absence(self, dr: DestinationRule, outcome: ew.RuleOutcome | None) -> tuple[str, str]:
        """Why a DestinationRule naming the host is not applied: (reason, code)."""
        host, ref = self.view.host, self.ref
        if dr.spec.workload_selector is not None:
            return ("spec.workloadSelector scopes it to selected workloads' sidecars; waypoints ignore such "
                    "DestinationRules", SELECTOR)
        if ref is None:
            return self._no_waypoint("traffic policy"), NO_WAYPOINT
        if outcome is not None:
            return outcome.why, OUTCOME_CODES[outcome.reason]
        searched = dict.fromkeys((ref.namespace, self.view.namespace, self.root))
        if dr.namespace not in searched:
            within = ", ".join(searched)
            return (f"it is in namespace {dr.namespace}; waypoint {ref} looks up the DestinationRule for {host} "
                    f"only in namespaces {within} (its own, the service's, the root namespace, in that order)"
                    f"{self._move_text()}", WRONG_NAMESPACE)
        if not self._service_visible():
            return self._service_hidden_text(), SERVICE_NOT_EXPORTED
        return (f"its host {dr.spec.host} is not looked up for {host}", NOT_MATCHED)

    # -- AuthorizationPolicy / RequestAuthentication -----------------------------------------------
    def authorization(self) -> tuple[list[Entry], list[Entry]]:
        return self._policies("AuthorizationPolicy", attach.ap_index(self.snapshot))

    def authentication(self) -> tuple[list[Entry], list[Entry]]:
        return self._policies("RequestAuthentication", attach.ra_index(self.snapshot))

    def _policies(self, kind: str, index: attach.AttachIndex[attach.P]) -> tuple[list[Entry], list[Entry]]:
        view, ref = self.view, self.ref
        own_kind, own_name = kind_of(view), view.source.name
        applied: list[Entry] = []
        not_applied: list[Entry] = []
        if ref is not None:
            for pol in attach.for_service(index, own_kind, view.namespace, own_name, ref.namespace, ref.name,
                                          self.root):
                applied.append(Entry(kind, pol.namespace, pol.name, self._attach_reason(kind, pol),
                                     notes=self.notes.notes(kind, pol.namespace, pol.name, view.host)))
        else:
            for pol in index.get(own_kind, view.namespace, own_name):
                not_applied.append(Entry(kind, pol.namespace, pol.name,
                                         f"targetRefs {own_kind} {own_name}, but no waypoint serves {view.host}: "
                                         "nothing enforces it (ztunnel ignores targetRefs policies)", NO_WAYPOINT))
        pods = self._pod_labels()
        scoped = [p for ns in dict.fromkeys((self.root, view.namespace)) for p in self.notes.untargeted(kind, ns)]
        for other in sorted(scoped, key=order):
            selector = other.spec.selector
            if selector is not None:
                if other.namespace != view.namespace or not any(
                        all(labels.get(k) == v for k, v in selector.match_labels.items()) for labels in pods):
                    continue
                not_applied.append(Entry(kind, other.namespace, other.name,
                                         f"spec.selector selects this service's pods, not the service: ztunnel "
                                         f"enforces its L4 part on them, {'the waypoint' if ref else 'a waypoint'} "
                                         f"does not enforce it; use targetRefs ({own_kind} {own_name}) to apply it "
                                         "on the waypoint", SELECTOR))
            else:
                scope = "mesh-wide (root namespace)" if other.namespace == self.root else "namespace-wide"
                not_applied.append(Entry(kind, other.namespace, other.name,
                                         f"no spec.targetRefs: {scope}, enforced by ztunnel at L4 only, not by "
                                         f"waypoints; use targetRefs ({own_kind} {own_name}) to apply it on the "
                                         "waypoint", NAMESPACE_WIDE))
        return applied, not_applied

    def _pod_labels(self) -> list[dict[str, str]]:
        if isinstance(self.view.source, Service):
            return [dict(p.metadata.labels) for p in service_pods(self.snapshot, self.view.source)]
        return []

    def _attach_reason(self, kind: str, pol: AuthorizationPolicy | RequestAuthentication) -> str:
        view, ref = self.view, self.ref
        assert ref is not None
        action = f"{pol.spec.action} " if isinstance(pol, AuthorizationPolicy) else ""
        for t in pol.spec.targets:
            tk = attach.target_kind(t)
            if tk == kind_of(view) and t.name == view.source.name:
                return f"{action}targetRefs {tk} {t.name}"
        for t in pol.spec.targets:
            tk = attach.target_kind(t)
            if tk == "Gateway" and t.name == ref.name:
                return f"{action}targetRefs Gateway {ref.name}: every service of waypoint {ref}"
            if tk == "GatewayClass":
                return f"{action}targetRefs GatewayClass {WAYPOINT_CLASS} in the root namespace: every waypoint"
        return f"{action}attached"

    # -- Telemetry ---------------------------------------------------------------------------------
    def telemetry(self) -> tuple[list[Entry], list[Entry]]:
        view, ref = self.view, self.ref
        own_kind, own_name = kind_of(view), view.source.name
        chosen = applicable_telemetries(self.snapshot, self.mesh, ref, view) if ref is not None else []
        applied = [Entry("Telemetry", t.namespace, t.name, self._telemetry_level(t),
                         notes=self.notes.notes("Telemetry", t.namespace, t.name, view.host)) for t in chosen]
        ids = {id(t) for t in chosen}
        not_applied: list[Entry] = []
        targeting = [t for t in self.notes.telemetries(view.namespace) if any(
            attach.target_kind(r) == own_kind and r.name == own_name for r in t.spec.targets)]
        for t in targeting:
            if id(t) in ids:
                continue
            if ref is None:
                not_applied.append(Entry("Telemetry", t.namespace, t.name, self._no_waypoint("telemetry"),
                                         NO_WAYPOINT))
            else:
                not_applied.append(Entry("Telemetry", t.namespace, t.name,
                                         "superseded: an older Telemetry targets the same service (only the oldest "
                                         "applies)", SUPERSEDED))
        for t in self.notes.telemetries(view.namespace):
            if id(t) in ids or t.spec.targets:
                continue
            if t.spec.selector is not None:
                not_applied.append(Entry("Telemetry", t.namespace, t.name,
                                         "spec.selector selects workloads' sidecars; waypoints apply Telemetry with "
                                         f"targetRefs ({own_kind} {own_name} or the waypoint's Gateway) or without "
                                         "selector", SELECTOR))
            elif ref is not None and t.namespace not in (ref.namespace, self.root):
                not_applied.append(Entry("Telemetry", t.namespace, t.name,
                                         f"namespace-wide in the service's namespace: waypoint {ref} applies "
                                         f"namespace-wide Telemetry only from its own namespace ({ref.namespace}) "
                                         f"and the root namespace ({self.root})", WRONG_NAMESPACE))
        return applied, not_applied

    def _telemetry_level(self, t: Telemetry) -> str:
        assert self.ref is not None
        if t.spec.targets:
            if any(attach.target_kind(r) == "Gateway" for r in t.spec.targets):
                return f"targetRefs Gateway {self.ref.name}: every service of waypoint {self.ref}"
            return f"targetRefs {kind_of(self.view)} {self.view.source.name} (most specific)"
        if t.namespace == self.root:
            return "mesh-wide (root namespace, least specific)"
        return f"namespace-wide in the waypoint's namespace ({t.namespace})"


def empty_subsets(snapshot: ConfigSnapshot, view: ServiceInfo, dr: DestinationRule) -> list[str]:
    """Subsets of ``dr`` that select no pod of the Service (Services with a selector only: a
    ServiceEntry's endpoints are not pods)."""
    svc = view.source
    if not isinstance(svc, Service) or not svc.spec.selector:
        return []
    return [s.name for s in dr.spec.subsets if s.labels and not service_pods(snapshot, svc, s.labels)]


def explain_all(snapshot: ConfigSnapshot, mesh: MeshConfig | None = None,
                found: Iterable[Finding] | None = None) -> list[ServiceExplanation]:
    """Every Service and ServiceEntry host, in namespace/name order (for ``analyze``); ``found``: the
    diagnostics findings, if the caller has them already."""
    notes = Lookup(snapshot, findings(diagnose(snapshot, mesh)) if found is None else found,
                   ew.rule_outcomes(snapshot, mesh))
    services = sorted(snapshot.of_kind(Service), key=lambda s: (s.namespace, s.name))
    views = [service_model.of_service(s) for s in services]
    views += [v for se in sorted(snapshot.of_kind(ServiceEntry), key=lambda s: (s.namespace, s.name))
              for v in _views(se)]
    return [_explain(snapshot, v, mesh or MeshConfig(), notes) for v in views]


def route_summary(vs: VirtualService, host: str) -> str:
    """``: http[0]: 80% -> subset v1, 20% -> subset v2`` for a VirtualService's first HTTP rules (at
    most three), so a reader sees where requests go without opening the YAML."""
    parts = []
    for i, rule in enumerate(vs.spec.http[:3]):
        dests = []
        total = sum(d.weight or 0 for d in rule.route)
        for d in rule.route:
            target = qualify(d.destination.host, vs.namespace)
            where = " ".join(x for x in ("" if target == host else target,
                                         f"subset {d.destination.subset}" if d.destination.subset else "") if x)
            share = f"{100 * (d.weight or 0) / total:g}% -> " if len(rule.route) > 1 and total else ""
            dests.append(f"{share}{where or 'the service'}")
        what = ", ".join(dests) or ("redirect" if rule.redirect else "direct response" if rule.direct_response
                                    else "no destination")
        parts.append(f"http[{i}]{' (with match)' if rule.match else ''}: {what}")
    if len(vs.spec.http) > 3:
        parts.append(f"... {len(vs.spec.http) - 3} more")
    return (": " + "; ".join(parts)) if parts else ""
