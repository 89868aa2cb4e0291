"""Which Gateways are waypoints, and which services and workloads each one serves (destination-only).

Facts: docs/istio-waypoint-shape.md §1.2-1.3.

* A Gateway of class ``istio-waypoint`` is a waypoint; its address is ``status.addresses`` if the
  controller wrote one, else ``spec.addresses`` (YAML-directory mode).
* Traffic type: label ``istio.io/waypoint-for`` on the GatewayClass, then on the Gateway (the
  Gateway wins); default ``service``; values ``service``, ``workload``, ``all``, ``none``.
* Binding: label ``istio.io/use-waypoint`` on the object (Service, ServiceEntry, Pod,
  WorkloadEntry), else on its Namespace;
  ``istio.io/use-waypoint-namespace`` names the waypoint's namespace (default: the object's own);
  the value ``none`` opts the object out even when its namespace sets a waypoint.
* A service (Service or ServiceEntry) binds only to a waypoint for ``service``/``all``; a workload
  (Pod or WorkloadEntry with an IP address) only to ``workload``/``all`` (a namespace-inherited
  mismatch for a workload is silently not a binding, as in Istio).
* Cross-namespace binding needs the waypoint's HBONE listener to allow it
  (``allowedRoutes.namespaces.from``: ``Same`` by default, ``All``, or ``Selector``).

A binding that does not fit is reported (``binding_problems``) and not used.  Every Service and
ServiceEntry also gets a ``BindingDecision`` (``binding_decision``): which label on which object asked
for which waypoint, and the outcome; ``istiod-lite explain`` and ``analyze`` read it, so they and the
problem messages come from the very same decision.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from istiod_lite.model import ConfigSnapshot
from istiod_lite.model.core import Namespace, Pod, Service
from istiod_lite.model.gateway import Gateway, GatewayClass, LabelSelector
from istiod_lite.model.networking import ServiceEntry, WorkloadEntry
from istiod_lite.model.networking_common import is_ip
from istiod_lite.translator.core import tables

WAYPOINT_CLASS = "istio-waypoint"
USE_WAYPOINT = "istio.io/use-waypoint"
USE_WAYPOINT_NAMESPACE = "istio.io/use-waypoint-namespace"
WAYPOINT_FOR = "istio.io/waypoint-for"
DATAPLANE_MODE = "istio.io/dataplane-mode"
TRAFFIC_TYPES = ("service", "workload", "all", "none")


@dataclass(frozen=True, order=True)
class WaypointRef:
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"

    @classmethod
    def parse(cls, text: str) -> WaypointRef:
        ns, sep, name = text.partition("/")
        if not sep or not ns or not name:
            raise ValueError(f"waypoint must be NAMESPACE/NAME, got {text!r}")
        return cls(ns, name)


@dataclass(frozen=True)
class Waypoint:
    ref: WaypointRef
    addresses: tuple[str, ...]
    traffic_type: str
    #: ``allowedRoutes.namespaces`` of the HBONE listener: ``from`` and the label selector.
    allowed_from: str = "Same"
    allowed_selector: LabelSelector | None = None

    def serves_services(self) -> bool:
        return self.traffic_type in ("service", "all")

    def serves_workloads(self) -> bool:
        return self.traffic_type in ("workload", "all")


def _traffic_type(gw: Gateway, classes: Mapping[str, GatewayClass]) -> str:
    gc = classes.get(gw.spec.gateway_class_name)
    value = gw.metadata.labels.get(WAYPOINT_FOR) or (gc.metadata.labels.get(WAYPOINT_FOR) if gc else None)
    return value if value in TRAFFIC_TYPES else "service"


def find_waypoints(snapshot: ConfigSnapshot) -> list[Waypoint]:
    """Every Gateway of class ``istio-waypoint``, sorted by namespace/name."""
    classes = {gc.name: gc for gc in snapshot.of_kind(GatewayClass)}
    out = []
    for gw in snapshot.of_kind(Gateway):
        if gw.spec.gateway_class_name != WAYPOINT_CLASS:
            continue
        status_addrs = tuple(a.value for a in (gw.status.addresses if gw.status else ()) if a.value)
        spec_addrs = tuple(a.value for a in gw.spec.addresses if a.value)
        hbone = next((li for li in gw.spec.listeners if li.protocol == "HBONE" or li.port == 15008), None)
        allowed_from, selector = "Same", None
        if hbone is not None:
            allowed_from = hbone.allowed_routes.namespaces.from_
            selector = hbone.allowed_routes.namespaces.selector
        out.append(Waypoint(ref=WaypointRef(gw.namespace, gw.name), addresses=status_addrs or spec_addrs,
                            traffic_type=_traffic_type(gw, classes), allowed_from=allowed_from,
                            allowed_selector=selector))
    return out


def _selector_matches(selector: LabelSelector | None, labels: Mapping[str, str]) -> bool:
    """A Kubernetes LabelSelector (matchLabels and matchExpressions); none matches everything."""
    return selector is None or selector.matches(dict(labels))


#: ``BindingDecision.outcome`` values.
BOUND = "Bound"
#: No ``istio.io/use-waypoint`` label on the object nor on its namespace.
UNLABELLED = "NoLabel"
#: ``istio.io/use-waypoint: none`` (or empty) on the object or its namespace.
OPTED_OUT = "OptedOut"
#: The label names a waypoint Gateway that does not exist (or is not of class ``istio-waypoint``).
WAYPOINT_MISSING = "WaypointNotFound"
#: The waypoint's ``istio.io/waypoint-for`` does not take this kind of traffic.
TRAFFIC_TYPE_MISMATCH = "UnsupportedTrafficType"
#: The waypoint's HBONE listener ``allowedRoutes`` refuses the object's namespace.
NOT_ALLOWED = "AttachmentDenied"


@dataclass(frozen=True)
class BindingDecision:
    """Why a Service or ServiceEntry is (or is not) bound to a waypoint."""

    kind: str
    namespace: str
    name: str
    #: One of the outcome constants above (named after Istio's ``WaypointBound`` reasons where it has one).
    outcome: str
    #: The waypoint the labels ask for (None when unlabelled or opted out).
    requested: WaypointRef | None = None
    #: Where the deciding label is: ``"Service ns/name"``, ``"Namespace ns"``, ... ("" when unlabelled).
    label_on: str = ""
    #: The deciding labels as written (``istio.io/use-waypoint`` and, if set, ``-namespace``).
    labels: tuple[tuple[str, str], ...] = ()
    #: The problem message (as in ``binding_problems``; also set for an inherited label that does not
    #: fit, which is silently not a binding for workloads but still worth explaining).
    message: str = ""

    @property
    def bound(self) -> bool:
        return self.outcome == BOUND


#: Reasons of the ``istio.io/WaypointBound`` condition, as istiod writes them on Services and
#: ServiceEntries (pilot/pkg/serviceregistry/ambient/status.go and model.WaypointAccepted), by outcome.
WAYPOINT_BOUND_REASONS: Final[Mapping[str, str]] = {
    BOUND: "WaypointAccepted",
    WAYPOINT_MISSING: "WaypointIsNotReady",
    NOT_ALLOWED: "AttachmentDenied",
    TRAFFIC_TYPE_MISMATCH: "UnsupportedTrafficType",
}
ACCEPTED_REASON: Final = WAYPOINT_BOUND_REASONS[BOUND]


@dataclass(frozen=True)
class BindingVerdict:
    """A binding decision as the status writer sees it: Istio's ``WaypointBound`` reason (``bound``
    iff the reason is ``WaypointAccepted``) for a service that asks for a waypoint."""

    waypoint: WaypointRef
    reason: str
    message: str
    #: The request came from the object's namespace's label, not its own.
    inherited: bool

    @property
    def bound(self) -> bool:
        return self.reason == ACCEPTED_REASON


def verdict_of(decision: BindingDecision) -> BindingVerdict | None:
    """The status view of ``decision`` (None: unlabelled or opted out, no condition)."""
    if decision.requested is None:
        return None
    message = f"bound to waypoint {decision.requested}" if decision.bound else decision.message
    return BindingVerdict(decision.requested, WAYPOINT_BOUND_REASONS[decision.outcome], message,
                          decision.label_on.startswith("Namespace "))



@dataclass
class Bindings:
    """Result of binding every service and workload of a snapshot (computed once per snapshot)."""

    waypoints: dict[WaypointRef, Waypoint] = field(default_factory=dict)
    services: dict[WaypointRef, list[Service]] = field(default_factory=dict)
    workloads: dict[WaypointRef, list[Pod]] = field(default_factory=dict)
    #: ServiceEntries bound like Services (oldest first), and WorkloadEntries bound like pods.
    service_entries: dict[WaypointRef, list[ServiceEntry]] = field(default_factory=dict)
    workload_entries: dict[WaypointRef, list[WorkloadEntry]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    #: (kind, namespace, name) -> the decision for every Service and ServiceEntry.
    decisions: dict[tuple[str, str, str], BindingDecision] = field(default_factory=dict)

    @property
    def service_verdicts(self) -> dict[tuple[str, str, str], BindingVerdict]:
        """("Service" | "ServiceEntry", namespace, name) -> the status verdict, for every service
        that asks for a waypoint (own label or its namespace's; not those opted out with ``none``)."""
        out: dict[tuple[str, str, str], BindingVerdict] = {}
        for key, decision in self.decisions.items():
            verdict = verdict_of(decision)
            if verdict is not None:
                out[key] = verdict
        return out

    def workload_ips(self, ref: WaypointRef) -> list[str]:
        """Addresses of the workloads (pods and WorkloadEntries) bound to ``ref``, sorted, unique."""
        ips = {ip for pod in self.workloads.get(ref, ()) for ip in pod.ips}
        ips.update(we.spec.address for we in self.workload_entries.get(ref, ()))
        return sorted(ips)


def _requested(labels: Mapping[str, str], namespace: str) -> WaypointRef | str | None:
    """The waypoint an object's labels ask for; ``"none"`` for an explicit opt-out; None if unset."""
    name = labels.get(USE_WAYPOINT)
    if name is None:
        return None
    if name in ("", "none"):
        return "none"
    return WaypointRef(labels.get(USE_WAYPOINT_NAMESPACE, namespace), name)


@tables.BINDINGS.computed_by
def compute_bindings(snapshot: ConfigSnapshot) -> Bindings:
    out = Bindings()
    for wp in find_waypoints(snapshot):
        out.waypoints[wp.ref] = wp
        out.services[wp.ref] = []
        out.workloads[wp.ref] = []
        out.service_entries[wp.ref] = []
        out.workload_entries[wp.ref] = []
    namespaces = {ns.name: ns for ns in snapshot.of_kind(Namespace)}

    def ns_labels(ns: str) -> Mapping[str, str]:
        obj = namespaces.get(ns)
        return obj.metadata.labels if obj is not None else {}

    inherited_verdicts: dict[tuple[WaypointRef, str, str], bool] = {}

    def admit(ref: WaypointRef, obj_ns: str, what: str, kind: str, inherited: bool) -> bool:
        if inherited and kind == "workload":
            # Thousands of pods inherit their namespace's label: decide once per namespace.
            key = (ref, obj_ns, kind)
            verdict = inherited_verdicts.get(key)
            if verdict is None:
                verdict = inherited_verdicts[key] = _admit(ref, obj_ns, what, kind, inherited)[0] == BOUND
            return verdict
        return _admit(ref, obj_ns, what, kind, inherited)[0] == BOUND

    def _admit(ref: WaypointRef, obj_ns: str, what: str, kind: str, inherited: bool) -> tuple[str, str]:
        """(outcome, message); the message is also a reported problem unless the rules stay silent."""
        outcome, message, reported = _fit(ref, obj_ns, what, kind)
        if message and (reported or not inherited):
            out.problems.append(message)
        return outcome, message

    def _fit(ref: WaypointRef, obj_ns: str, what: str, kind: str) -> tuple[str, str, bool]:
        wp = out.waypoints.get(ref)
        if wp is None:
            # An inherited label naming no waypoint is not reported (Istio is silent too).
            return WAYPOINT_MISSING, f"{what}: {USE_WAYPOINT} names waypoint {ref}, which does not exist", False
        fits = wp.serves_services() if kind == "service" else wp.serves_workloads()
        allowed = obj_ns == ref.namespace or wp.allowed_from == "All" or (
            wp.allowed_from == "Selector" and _selector_matches(wp.allowed_selector, ns_labels(obj_ns)))
        # A service's attachment is checked before its traffic type, as istiod does (the reason it
        # reports when both fail); a workload's the other way round (an inherited label naming a
        # waypoint for services is no binding at all, and no problem).
        if not allowed and (fits or kind == "service"):
            return (NOT_ALLOWED, f"{what}: waypoint {ref} does not allow bindings from namespace {obj_ns} "
                    f"(its HBONE listener allows {wp.allowed_from}); not bound", True)
        if not fits:
            return (TRAFFIC_TYPE_MISMATCH, f"{what}: waypoint {ref} is for {wp.traffic_type!r} traffic, not {kind}s; "
                    "not bound", kind == "service")
        return BOUND, "", False

    def decide(kind: str, obj_ns: str, obj_name: str, labels: Mapping[str, str]) -> WaypointRef | None:
        """A Service's or ServiceEntry's decision, recorded; the waypoint it binds to, or None."""
        label_on, source = f"{kind} {obj_ns}/{obj_name}", labels
        req = _requested(labels, obj_ns)
        inherited = req is None
        if req is None:
            label_on, source = f"Namespace {obj_ns}", ns_labels(obj_ns)
            req = _requested(source, obj_ns)
        written = tuple((k, source[k]) for k in (USE_WAYPOINT, USE_WAYPOINT_NAMESPACE) if k in source)
        if req is None:
            decision = BindingDecision(kind, obj_ns, obj_name, UNLABELLED)
        elif not isinstance(req, WaypointRef):
            decision = BindingDecision(kind, obj_ns, obj_name, OPTED_OUT, label_on=label_on, labels=written)
        else:
            outcome, message = _admit(req, obj_ns, f"{kind} {obj_ns}/{obj_name}", "service", inherited)
            decision = BindingDecision(kind, obj_ns, obj_name, outcome, req, label_on, written, message)
        out.decisions[(kind, obj_ns, obj_name)] = decision
        return decision.requested if decision.bound else None

    for svc in snapshot.of_kind(Service):
        if svc.metadata.labels.get("gateway.istio.io/managed") == "istio.io-mesh-controller":
            continue  # a waypoint's own Service never uses a waypoint
        bound = decide("Service", svc.namespace, svc.name, svc.metadata.labels)
        if bound is not None:
            out.services[bound].append(svc)
    ns_requests: dict[str, WaypointRef | str | None] = {}
    for pod in snapshot.of_kind(Pod):
        labels = pod.metadata.labels
        if "gateway.networking.k8s.io/gateway-name" in labels:
            continue  # waypoint pods themselves
        req = _requested(labels, pod.namespace) if USE_WAYPOINT in labels else None
        inherited = req is None
        if req is None:
            ns = pod.namespace
            if ns not in ns_requests:
                ns_requests[ns] = _requested(ns_labels(ns), ns)
            req = ns_requests[ns]
        if isinstance(req, WaypointRef) and pod.ips and admit(req, pod.namespace, f"Pod {pod.namespace}/{pod.name}",
                                                              "workload", inherited):
            out.workloads[req].append(pod)
    for se in snapshot.of_kind(ServiceEntry):
        bound = decide("ServiceEntry", se.namespace, se.name, se.metadata.labels)
        if bound is not None:
            out.service_entries[bound].append(se)
    for we in snapshot.of_kind(WorkloadEntry):
        labels = we.metadata.labels
        req = _requested(labels, we.namespace) if USE_WAYPOINT in labels else None
        inherited = req is None
        if req is None:
            req = _requested(ns_labels(we.namespace), we.namespace)
        if isinstance(req, WaypointRef) and is_ip(we.spec.address) and admit(
                req, we.namespace, f"WorkloadEntry {we.namespace}/{we.name}", "workload", inherited):
            out.workload_entries[req].append(we)
    for lst in out.services.values():
        lst.sort(key=lambda s: (s.metadata.creation_timestamp, s.namespace, s.name))
    for entries in out.service_entries.values():
        entries.sort(key=lambda s: (s.metadata.creation_timestamp, s.namespace, s.name))
    return out


def is_ambient(snapshot: ConfigSnapshot, pod: Pod) -> bool:
    """Captured by ztunnel: ``istio.io/dataplane-mode=ambient`` on the pod or its namespace (the
    pod's own ``none`` opts out)."""
    mode = pod.metadata.labels.get(DATAPLANE_MODE)
    if mode is not None:
        return mode == "ambient"
    ns = snapshot.get(Namespace, "", pod.namespace)
    return ns is not None and ns.metadata.labels.get(DATAPLANE_MODE) == "ambient"


def waypoint_of_service(snapshot: ConfigSnapshot, svc: Service) -> WaypointRef | None:
    """The waypoint a Service is bound to (after every rule), or None."""
    b = bindings_of(snapshot)
    for ref, services in b.services.items():
        if any(s is svc for s in services):
            return ref
    return None


def bound_services(snapshot: ConfigSnapshot, ref: WaypointRef) -> list[Service]:
    """Services this waypoint serves, oldest first (Istio's order), then namespace/name."""
    return list(bindings_of(snapshot).services.get(ref, ()))


def bound_workloads(snapshot: ConfigSnapshot, ref: WaypointRef) -> list[Pod]:
    return list(bindings_of(snapshot).workloads.get(ref, ()))


def binding_problems(snapshot: ConfigSnapshot) -> list[str]:
    return list(bindings_of(snapshot).problems)


def binding_decision(snapshot: ConfigSnapshot, kind: str, namespace: str, name: str) -> BindingDecision | None:
    """The decision for Service or ServiceEntry ``namespace/name`` (None if there is no such object,
    or it is a waypoint's own Service)."""
    return bindings_of(snapshot).decisions.get((kind, namespace, name))


#: Everything binding reads: a change to any other kind re-uses the previous bindings object.
BINDING_KINDS = tables.BINDING_KINDS


def bindings_of(snapshot: ConfigSnapshot) -> Bindings:
    """``compute_bindings``, once per distinct set of the kinds it reads."""
    return tables.BINDINGS.of(snapshot)
