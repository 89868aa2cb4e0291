"""The status istiod writes about ambient binding, computed from a snapshot (pure, deterministic).

What a user sees with ``kubectl get -o yaml`` (docs/kubernetes.md, "Status"):

* **Services and ServiceEntries** that ask for a waypoint (``istio.io/use-waypoint`` on the object
  or its namespace): condition ``istio.io/WaypointBound`` - True with reason ``WaypointAccepted``,
  or False with ``WaypointIsNotReady`` (no such waypoint), ``AttachmentDenied`` (its
  ``allowedRoutes`` refuses the namespace) or ``UnsupportedTrafficType`` (a waypoint for workloads).
  The reasons are the binding's own verdicts (``binding.waypoints.BindingVerdict``), not re-derived.
* **AuthorizationPolicies** with ``targetRefs``: condition ``WaypointAccepted`` - per target
  ``Accepted``, ``TargetNotFound``, ``AncestorNotBound`` (a Service/ServiceEntry no waypoint serves)
  or ``Invalid`` (a GatewayClass target outside the root namespace, or not a waypoint class);
  several targets are folded into one condition as istiod does (True if any is bound; reason
  ``PartiallyInvalid`` when some are not).
* **AuthorizationPolicies** without ``targetRefs`` (ztunnel's): condition ``ZtunnelAccepted`` -
  True ``Accepted``; True ``UnsupportedValue`` when served without its HTTP attributes (the message
  says which, and whether the policy is now stricter or has no effect); False ``UnsupportedValue``
  when not served at all (CUSTOM or AUDIT action, dry-run).  From ``ztunnel.authorization``'s
  verdict, the same conversion that builds what ztunnel is served.
* **HTTPRoutes** with Service or ServiceEntry parents: one ``status.parents`` entry per such
  parent, controller ``istio.io/gateway-controller``, the parentRef echoed, conditions
  ``Accepted`` (``NoMatchingParent`` for a missing parent), ``ResolvedRefs`` (``BackendNotFound``
  for a missing backend Service) and ``ResolvedWaypoints`` (True; its message says when neither
  the parent nor its namespace names a waypoint, as istiod's does).
* **Waypoint Gateways**: istiod writes no count of what a waypoint serves; istiod-lite adds
  condition ``istio.io/AttachedServices`` (always True, informational, like istiod's
  ``istio.io/VisibilityApplied``) whose message counts and names the bound services.

Messages are istiod-lite's own words; types, reasons and statuses are istiod's (pilot/pkg/model/
service.go, pilot/pkg/serviceregistry/ambient/{status,policies}.go, pilot/pkg/config/kube/gateway/
conditions.go).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from istiod_lite.model import ConfigSnapshot
from istiod_lite.model import gateway as gw
from istiod_lite.model.core import Namespace, Service
from istiod_lite.model.networking import ServiceEntry
from istiod_lite.model.security import AuthorizationPolicy, PolicyTargetReference
from istiod_lite.translator.binding.waypoints import USE_WAYPOINT, WaypointRef, bindings_of
from istiod_lite.translator.routing import httproute
from istiod_lite.translator.ztunnel.authorization import ztunnel_verdict

WAYPOINT_BOUND = "istio.io/WaypointBound"
WAYPOINT_ACCEPTED = "WaypointAccepted"
ZTUNNEL_ACCEPTED = "ZtunnelAccepted"
ATTACHED_SERVICES = "istio.io/AttachedServices"
#: Gateway API route parents istiod writes carry this controller name (PILOT_GATEWAY_CONTROLLER default).
GATEWAY_CONTROLLER = "istio.io/gateway-controller"
#: A GatewayClass is a waypoint class when its controller is this one.
MESH_CONTROLLER = "istio.io/mesh-controller"

#: The condition types each kind's status carries from this module (the writer owns exactly these).
OWNED_CONDITIONS: Mapping[str, frozenset[str]] = {
    "Service": frozenset({WAYPOINT_BOUND}),
    "ServiceEntry": frozenset({WAYPOINT_BOUND}),
    "AuthorizationPolicy": frozenset({WAYPOINT_ACCEPTED, ZTUNNEL_ACCEPTED}),
    "Gateway": frozenset({ATTACHED_SERVICES}),
}
MAX_NAMES = 10


@dataclass(frozen=True)
class Condition:
    type: str
    status: bool
    reason: str
    message: str
    observed_generation: int | None = None

    def as_dict(self) -> dict[str, Any]:
        """A ``metav1.Condition`` without ``lastTransitionTime`` (the writer sets it)."""
        out: dict[str, Any] = {"type": self.type, "status": "True" if self.status else "False",
                               "reason": self.reason, "message": self.message}
        if self.observed_generation:
            out["observedGeneration"] = self.observed_generation
        return out


@dataclass(frozen=True)
class RouteParentStatus:
    #: The parentRef as the route names it (camelCase keys, defaults as the API server stores them).
    parent_ref: Mapping[str, Any]
    conditions: tuple[Condition, ...]


@dataclass(frozen=True)
class ObjectStatus:
    """What this module says about one object: conditions (kinds in ``OWNED_CONDITIONS``) or route
    parents (HTTPRoute)."""

    kind: str
    namespace: str
    name: str
    conditions: tuple[Condition, ...] = ()
    parents: tuple[RouteParentStatus, ...] = ()


StatusKey = tuple[str, str, str]


def _generation(obj: Any) -> int | None:
    gen: int = obj.metadata.generation
    return gen or None


# -- Services and ServiceEntries ----------------------------------------------------------------------
def _service_statuses(snapshot: ConfigSnapshot, out: dict[StatusKey, ObjectStatus]) -> None:
    for (kind, ns, name), verdict in bindings_of(snapshot).service_verdicts.items():
        obj = snapshot.get(Service, ns, name) if kind == "Service" else snapshot.get(ServiceEntry, ns, name)
        gen = _generation(obj) if obj is not None else None
        out[(kind, ns, name)] = ObjectStatus(kind, ns, name, (
            Condition(WAYPOINT_BOUND, verdict.bound, verdict.reason, verdict.message, gen),))


# -- AuthorizationPolicies ---------------------------------------------------------------------------
@dataclass(frozen=True)
class _TargetResult:
    ancestor: str
    bound: bool
    reason: str
    message: str


def _service_waypoint(snapshot: ConfigSnapshot, kind: str, ns: str, name: str) -> WaypointRef | None:
    b = bindings_of(snapshot)
    verdict = b.service_verdicts.get((kind, ns, name))
    return verdict.waypoint if verdict is not None and verdict.bound else None


def _target(snapshot: ConfigSnapshot, policy: AuthorizationPolicy, t: PolicyTargetReference,
            root_namespace: str) -> _TargetResult:
    ns = t.namespace or policy.namespace
    ancestor = f"{t.kind}.{t.canonical_group}:{ns}/{t.name}"
    if t.kind == "GatewayClass":
        if policy.namespace != root_namespace:
            return _TargetResult(ancestor, False, "Invalid",
                                 f"a policy targeting a GatewayClass must be in the root namespace {root_namespace}")
        gc = snapshot.get(gw.GatewayClass, "", t.name)
        if gc is None:
            return _TargetResult(ancestor, False, "TargetNotFound", f"GatewayClass {t.name} does not exist")
        if gc.spec.controller_name != MESH_CONTROLLER:
            return _TargetResult(ancestor, False, "Invalid",
                                 f"GatewayClass {t.name} is not a waypoint class (controller {MESH_CONTROLLER})")
        return _TargetResult(ancestor, True, "Accepted", f"bound to GatewayClass {t.name}")
    if t.kind == "Gateway":
        ref = WaypointRef(ns, t.name)
        if ref in bindings_of(snapshot).waypoints:
            return _TargetResult(ancestor, True, "Accepted", f"bound to waypoint {ref}")
        return _TargetResult(ancestor, False, "TargetNotFound", f"waypoint {ref} does not exist")
    if t.kind in ("Service", "ServiceEntry"):
        cls: type[Service] | type[ServiceEntry] = Service if t.kind == "Service" else ServiceEntry
        if snapshot.get(cls, ns, t.name) is None:
            return _TargetResult(ancestor, False, "TargetNotFound", f"{t.kind} {ns}/{t.name} does not exist")
        wp = _service_waypoint(snapshot, t.kind, ns, t.name)
        if wp is None:
            return _TargetResult(ancestor, False, "AncestorNotBound",
                                 f"{t.kind} {ns}/{t.name} is not bound to a waypoint")
        return _TargetResult(ancestor, True, "Accepted", f"bound to waypoint {wp}")
    return _TargetResult(ancestor, False, "unknown", f"targets of kind {t.kind} are not bound to waypoints")


def _policy_condition(results: list[_TargetResult], generation: int | None) -> Condition:
    """Several targets folded into one condition, as istiod folds them."""
    if len(results) == 1:
        r = results[0]
        return Condition(WAYPOINT_ACCEPTED, r.bound, r.reason, r.message, generation)
    bound = any(r.bound for r in results)
    unbound = [r.ancestor for r in results if not r.bound]
    reason = ("PartiallyInvalid" if unbound else "Accepted") if bound else "Invalid"
    message = f"not bound: {', '.join(unbound)}" if unbound else "every target is bound"
    return Condition(WAYPOINT_ACCEPTED, bound, reason, message, generation)


def _policy_statuses(snapshot: ConfigSnapshot, root_namespace: str, out: dict[StatusKey, ObjectStatus]) -> None:
    for policy in snapshot.of_kind(AuthorizationPolicy):
        targets = policy.spec.targets
        if not targets:
            verdict = ztunnel_verdict(root_namespace, policy)
            if verdict is not None:
                out[("AuthorizationPolicy", policy.namespace, policy.name)] = ObjectStatus(
                    "AuthorizationPolicy", policy.namespace, policy.name,
                    (Condition(ZTUNNEL_ACCEPTED, verdict.served, verdict.reason, verdict.message,
                               _generation(policy)),))
            continue
        results = [_target(snapshot, policy, t, root_namespace) for t in targets]
        out[("AuthorizationPolicy", policy.namespace, policy.name)] = ObjectStatus(
            "AuthorizationPolicy", policy.namespace, policy.name,
            (_policy_condition(results, _generation(policy)),))


# -- HTTPRoutes ----------------------------------------------------------------------------------------
def parent_ref_dict(p: gw.ParentReference) -> dict[str, Any]:
    """The parentRef as the API server returns it (defaults filled in), for ``status.parents``."""
    out: dict[str, Any] = {"group": p.group, "kind": p.kind, "name": p.name}
    if p.namespace is not None:
        out["namespace"] = p.namespace
    if p.section_name is not None:
        out["sectionName"] = p.section_name
    if p.port is not None:
        out["port"] = p.port
    return out


def _names_waypoint(snapshot: ConfigSnapshot, labels: Mapping[str, str], namespace: str) -> bool:
    """The parent, or else its namespace, carries a use-waypoint label other than ``none``."""
    value = labels.get(USE_WAYPOINT)
    if value is None:
        ns = snapshot.get(Namespace, "", namespace)
        value = ns.metadata.labels.get(USE_WAYPOINT) if ns is not None else None
    return value not in (None, "", "none")


def _route_statuses(snapshot: ConfigSnapshot, out: dict[StatusKey, ObjectStatus]) -> None:
    for route in snapshot.of_kind(gw.HTTPRoute):
        gen = _generation(route)
        missing = []
        for rule in route.spec.rules:
            for b in rule.backend_refs:
                if b.kind == "Service" and b.group in ("", "core") and \
                        snapshot.get(Service, b.namespace or route.namespace, b.name) is None:
                    missing.append(f"{b.namespace or route.namespace}/{b.name}")
        resolved = Condition("ResolvedRefs", True, "ResolvedRefs", "every backend resolved", gen)
        if missing:
            resolved = Condition("ResolvedRefs", False, "BackendNotFound",
                                 f"backend Service(s) not found: {', '.join(sorted(set(missing)))}", gen)
        parents: dict[str, RouteParentStatus] = {}
        for p in route.spec.parent_refs:
            service = httproute.is_service_parent(p)
            if not service and not httproute.is_service_entry_parent(p):
                continue  # Gateway parents: not a mesh attachment, not written here
            ns = p.namespace or route.namespace
            target: Service | ServiceEntry | None = (snapshot.get(Service, ns, p.name) if service
                                                     else snapshot.get(ServiceEntry, ns, p.name))
            kind = "Service" if service else "ServiceEntry"
            if target is None:
                accepted = Condition("Accepted", False, "NoMatchingParent", f"{kind} {ns}/{p.name} does not exist",
                                     gen)
                waypoints = Condition("ResolvedWaypoints", True, "ResolvedWaypoints", "the parent does not exist",
                                      gen)
            else:
                accepted = Condition("Accepted", True, "Accepted", "accepted for this parent", gen)
                named = _names_waypoint(snapshot, target.metadata.labels, ns)
                waypoints = Condition(
                    "ResolvedWaypoints", True, "ResolvedWaypoints",
                    "every waypoint resolved" if named else
                    f"neither {kind} {ns}/{p.name} nor its namespace has the {USE_WAYPOINT} label: "
                    "in ambient mode the route is not applied", gen)
            ref = parent_ref_dict(p)
            key = repr(sorted(ref.items()))
            parents.setdefault(key, RouteParentStatus(ref, (accepted, resolved, waypoints)))
        if parents:
            out[("HTTPRoute", route.namespace, route.name)] = ObjectStatus(
                "HTTPRoute", route.namespace, route.name, parents=tuple(parents[k] for k in sorted(parents)))


# -- waypoint Gateways ---------------------------------------------------------------------------------
def _gateway_statuses(snapshot: ConfigSnapshot, out: dict[StatusKey, ObjectStatus]) -> None:
    b = bindings_of(snapshot)
    for ref in sorted(b.waypoints):
        gateway = snapshot.get(gw.Gateway, ref.namespace, ref.name)
        names = [f"Service {s.namespace}/{s.name}" for s in b.services.get(ref, ())]
        names += [f"ServiceEntry {s.namespace}/{s.name}" for s in b.service_entries.get(ref, ())]
        shown = ", ".join(names[:MAX_NAMES]) + (f" and {len(names) - MAX_NAMES} more" if len(names) > MAX_NAMES
                                                else "")
        message = f"{len(names)} service(s) attached" + (f": {shown}" if names else "")
        out[("Gateway", ref.namespace, ref.name)] = ObjectStatus("Gateway", ref.namespace, ref.name, (
            Condition(ATTACHED_SERVICES, True, "AttachedServices", message,
                      _generation(gateway) if gateway is not None else None),))


def ambient_status(snapshot: ConfigSnapshot, root_namespace: str = "istio-system") -> dict[StatusKey, ObjectStatus]:
    """Every object this module has something to say about, keyed by (kind, namespace, name).

    An object of a kind in ``OWNED_CONDITIONS`` (or an HTTPRoute) that is absent has nothing: a
    condition it carries from before is to be removed."""
    out: dict[StatusKey, ObjectStatus] = {}
    _service_statuses(snapshot, out)
    _policy_statuses(snapshot, root_namespace, out)
    _route_statuses(snapshot, out)
    _gateway_statuses(snapshot, out)
    return dict(sorted(out.items()))
