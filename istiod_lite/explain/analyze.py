"""``istiod-lite analyze``: analysis messages in the shape of ``istioctl analyze``.

Where the messages come from (nothing is decided anew here):

* schema errors of the loaded config -> IST0106 (one per rejected resource or document);
* the waypoint binding decisions -> ISTL0001-0003 (a use-waypoint label naming a missing or
  incompatible waypoint, on the Service/ServiceEntry, or once on a Namespace whose label binds
  nothing);
* the translator's diagnostics (``diagnose``), each classified into one message type: a reference
  to something missing -> IST0101, an address-less ServiceEntry -> IST0134, a shadowed VirtualService,
  an HTTPRoute from the wrong namespace, unsupported settings, policies with selectors, ...;
* ``explain`` over every service: config that names a service no waypoint serves (ISTL0004), config
  in a namespace the service's waypoint does not read (ISTL0006), superseded objects (ISTL0011);
* the exportTo / precedence / merge outcomes (``export_warnings.rule_outcomes``, the structured form
  of those diagnostics, which are therefore not classified again): not exported (ISTL0013),
  shadowed by a namespace searched first or an unexported more specific host (ISTL0014; a
  root-namespace rule overridden, or a same-namespace rule superseded: ISTL0011), merge losses
  (ISTL0015);
* VirtualService rules (IST0101 for a destination host or subset that does not exist, IST0130 for
  a rule after a catch-all, IST0131 for a repeated match) and DestinationRule subsets that select
  no pod (ISTL0012).

Messages are sorted (level, then origin, then code, then text) and de-duplicated.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from istiod_lite.explain import messages as m
from istiod_lite.explain import service as explain
from istiod_lite.explain.messages import MessageType
from istiod_lite.explain.model import ServiceExplanation
from istiod_lite.model import ConfigError, ConfigSnapshot
from istiod_lite.model import gateway as gw
from istiod_lite.model.core import Service
from istiod_lite.model.meshconfig import MeshConfig
from istiod_lite.model.networking import DestinationRule, ServiceEntry, VirtualService
from istiod_lite.translator import export_warnings as ew
from istiod_lite.translator.binding import service_model
from istiod_lite.translator.binding.waypoints import (
    NOT_ALLOWED,
    TRAFFIC_TYPE_MISMATCH,
    WAYPOINT_CLASS,
    WAYPOINT_MISSING,
    bindings_of,
)
from istiod_lite.translator.core.index import host_matches, qualify
from istiod_lite.translator.diagnostics import Finding, diagnose, findings
from istiod_lite.translator.export_warnings import RuleOutcome, rule_outcomes


@dataclass(frozen=True)
class AnalysisMessage:
    type: MessageType
    message: str
    kind: str = ""
    namespace: str = ""
    name: str = ""
    #: Where the object was read from (a file relative to the config directory), if known.
    reference: str = ""

    @property
    def origin(self) -> str:
        if not self.kind:
            return ""
        return f"{self.kind} {self.namespace}/{self.name}" if self.namespace else f"{self.kind} {self.name}"

    def sort_key(self) -> tuple[int, str, str, str]:
        return (m.LEVELS.index(self.type.level), self.origin, self.type.code, self.message)

    def log_line(self) -> str:
        """istioctl's log format: ``Level [CODE] (origin reference) message``."""
        where = " ".join(p for p in (self.origin, self.reference) if p)
        return f"{self.type.level} [{self.type.code}]{f' ({where})' if where else ''} {self.message}"

    def to_dict(self) -> dict[str, Any]:
        """istioctl's JSON fields, plus the type's name."""
        return {"code": self.type.code, "name": self.type.name, "level": self.type.level, "message": self.message,
                "origin": self.origin, "reference": self.reference,
                "documentationUrl": self.type.documentation_url}


def analyze(snapshot: ConfigSnapshot, errors: Iterable[ConfigError] = (), mesh: MeshConfig | None = None,
            reference: dict[tuple[str, str, str], str] | None = None) -> list[AnalysisMessage]:
    """Every message for a loaded config (``errors``: what loading rejected); ``reference`` maps
    (kind, namespace, name) to where it was read from."""
    refs = reference or {}
    out: list[AnalysisMessage] = [_schema(e) for e in errors]
    found = findings(diagnose(snapshot, mesh))
    outcomes = rule_outcomes(snapshot, mesh)
    structured = {o.message for o in outcomes}
    out += _binding(snapshot)
    out += [msg for f in found if f.message not in structured and (msg := _classify(f)) is not None]
    out += [_outcome(o, mesh or MeshConfig()) for o in outcomes]
    out += _from_explanations(explain.explain_all(snapshot, mesh, found))
    out += _virtual_services(snapshot)
    out += _subsets(snapshot)
    unique = {(x.type.code, x.origin, x.message): x for x in out}
    return sorted((AnalysisMessage(x.type, x.message, x.kind, x.namespace, x.name,
                                   x.reference or refs.get((x.kind, x.namespace, x.name), ""))
                   for x in unique.values()), key=AnalysisMessage.sort_key)


def _schema(e: ConfigError) -> AnalysisMessage:
    detail = f"{e.field_path}: {e.message}" if e.field_path else e.message
    where = e.source if e.doc_index is None else f"{e.source}#{e.doc_index}"
    return AnalysisMessage(m.SCHEMA_VALIDATION_ERROR, f"Schema validation error: {detail}", e.kind, e.namespace,
                           e.name, where)


_BINDING_OUTCOMES = {WAYPOINT_MISSING: m.WAYPOINT_NOT_FOUND, TRAFFIC_TYPE_MISMATCH: m.WAYPOINT_TRAFFIC_TYPE_MISMATCH,
                     NOT_ALLOWED: m.WAYPOINT_ATTACHMENT_DENIED}


def _binding(snapshot: ConfigSnapshot) -> list[AnalysisMessage]:
    """From the binding decisions of Services and ServiceEntries; a namespace label that names a
    missing waypoint is reported once, on the Namespace (the services inherit it silently)."""
    out = []
    for (kind, ns, name), d in sorted(bindings_of(snapshot).decisions.items()):
        mtype = _BINDING_OUTCOMES.get(d.outcome)
        if mtype is None:
            continue
        if d.label_on.startswith("Namespace ") and d.outcome == WAYPOINT_MISSING:
            out.append(AnalysisMessage(mtype, f"istio.io/use-waypoint names waypoint {d.requested}, which does not "
                                              "exist; no service of the namespace is bound", "Namespace", "", ns))
            continue
        label = f" (label on {d.label_on})" if d.label_on.startswith("Namespace ") else ""
        text = d.message.split(": ", 1)[1]
        gateway = snapshot.get(gw.Gateway, d.requested.namespace, d.requested.name) if d.requested else None
        if d.outcome == WAYPOINT_MISSING and gateway is not None:
            text = (f"istio.io/use-waypoint names Gateway {d.requested}, which is of class "
                    f"{gateway.spec.gateway_class_name!r}, not {WAYPOINT_CLASS!r}: not a waypoint")
        out.append(AnalysisMessage(mtype, text + label, kind, ns, name))
    return out


#: (category, pattern, type) in order; the first match wins; each category ends with a catch-all.
_RULES: Sequence[tuple[str, re.Pattern[str], MessageType | None]] = [
    # Service/ServiceEntry binding problems come from the decisions (``_binding``); pods and
    # WorkloadEntries only from the messages.
    ("binding", re.compile(r"^(Service|ServiceEntry) "), None),
    ("binding", re.compile(r"which does not exist"), m.WAYPOINT_NOT_FOUND),
    ("binding", re.compile(r"traffic, not"), m.WAYPOINT_TRAFFIC_TYPE_MISMATCH),
    ("binding", re.compile(r"does not allow bindings"), m.WAYPOINT_ATTACHMENT_DENIED),
    ("binding", re.compile(r""), m.IGNORED_SETTING),
    ("route", re.compile(r"does not exist"), m.REFERENCED_RESOURCE_NOT_FOUND),
    ("route", re.compile(r"is not bound to a waypoint"), m.L7_CONFIG_WITHOUT_WAYPOINT),
    ("route", re.compile(r"because (HTTP|GRPC|TCP|TLS)Route .* attaches to it"), m.SHADOWED_BY_HTTPROUTE),
    ("route", re.compile(r"applies routes for \S+ only from namespace"), m.CONFIG_IN_WRONG_NAMESPACE),
    ("route", re.compile(r"has no address"), m.SERVICE_ENTRY_ADDRESSES_REQUIRED),
    ("route", re.compile(r"already served by waypoint|of DYNAMIC_DNS host|of a DYNAMIC_DNS entry"),
     m.SERVICE_ENTRY_NOT_SERVABLE),
    ("route", re.compile(r""), m.IGNORED_SETTING),
    ("authorization", re.compile(r"does not exist"), m.REFERENCED_RESOURCE_NOT_FOUND),
    ("authorization", re.compile(r"which waypoints do not enforce"), m.POLICY_NOT_ON_WAYPOINT),
    ("authorization", re.compile(r""), m.AUTHORIZATION_ENFORCED_DIFFERENTLY),
    ("telemetry", re.compile(r"does not exist"), m.REFERENCED_RESOURCE_NOT_FOUND),
    ("telemetry", re.compile(r"selector .*does not apply to waypoints"), m.POLICY_NOT_ON_WAYPOINT),
    ("telemetry", re.compile(r""), m.IGNORED_SETTING),
]


def _classify(f: Finding) -> AnalysisMessage | None:
    for category, pattern, mtype in _RULES:
        if category == f.category and pattern.search(f.message):
            if mtype is None:
                return None
            return AnalysisMessage(mtype, f.detail, f.kind, f.namespace, f.name)
    return AnalysisMessage(m.IGNORED_SETTING, f.detail, f.kind, f.namespace, f.name)


def _outcome(o: RuleOutcome, mesh: MeshConfig) -> AnalysisMessage:
    """One exportTo / precedence / merge outcome as a message on its subject."""
    if o.reason in (ew.NOT_EXPORTED, ew.SERVICE_NOT_EXPORTED, ew.TARGET_NOT_EXPORTED):
        mtype = m.CONFIG_NOT_EXPORTED
    elif o.reason == ew.MERGE_DROP:
        mtype = m.DESTINATION_RULE_MERGE_LOSS
    elif o.reason in (ew.MORE_SPECIFIC, ew.NOT_MERGED) or (
            o.reason == ew.EARLIER_NAMESPACE and o.namespace == mesh.root_namespace):
        mtype = m.CONFIG_SUPERSEDED
    else:
        mtype = m.CONFIG_SHADOWED
    host = f" (host {o.rule_host})" if o.rule_host and o.rule_host != o.host else ""
    return AnalysisMessage(mtype, f"for {o.host} on waypoint {o.waypoint}{host}: {o.why}", o.kind, o.namespace,
                           o.name)


#: Explanation entry codes -> message types; HTTPRoutes and policies with selectors are already
#: reported by the diagnostics, so only the other kinds are taken from explanations.
_ENTRY_TYPES = {explain.NO_WAYPOINT: m.L7_CONFIG_WITHOUT_WAYPOINT, explain.WRONG_NAMESPACE: m.CONFIG_IN_WRONG_NAMESPACE,
                explain.SUPERSEDED: m.CONFIG_SUPERSEDED}


#: Route kinds whose problems the diagnostics report already.
_REPORTED_KINDS = frozenset(("HTTPRoute", "GRPCRoute", "TCPRoute", "TLSRoute"))


def _from_explanations(explanations: Iterable[ServiceExplanation]) -> list[AnalysisMessage]:
    out = []
    for x in explanations:
        for e in x.not_applied:
            mtype = _ENTRY_TYPES.get(e.code)
            if mtype is None or e.kind in _REPORTED_KINDS:
                continue
            if e.kind in ("DestinationRule", "VirtualService") and e.code == explain.SUPERSEDED:
                continue  # an outcome (``_outcome``)
            why = e.reason
            if e.code == explain.NO_WAYPOINT:
                why = f"{x.host} is served by no waypoint ({x.choice.reason}); nothing applies this {e.kind}"
            out.append(AnalysisMessage(mtype, f"for {x.host}: {why}" if e.code != explain.NO_WAYPOINT else why,
                                       e.kind, e.namespace, e.name))
    return out


def _known_hosts(snapshot: ConfigSnapshot) -> tuple[set[str], list[str]]:
    """Exact service hosts, and ServiceEntry host patterns (which may be wildcards)."""
    exact = {service_model.of_service(s).host for s in snapshot.of_kind(Service)}
    patterns = [h for se in snapshot.of_kind(ServiceEntry) for h in se.spec.hosts]
    return exact, patterns


def _virtual_services(snapshot: ConfigSnapshot) -> list[AnalysisMessage]:
    exact, patterns = _known_hosts(snapshot)
    subsets: dict[str, set[str]] = {}
    for dr in snapshot.of_kind(DestinationRule):
        subsets.setdefault(qualify(dr.spec.host, dr.namespace), set()).update(s.name for s in dr.spec.subsets)
    out = []
    for vs in sorted(snapshot.of_kind(VirtualService), key=lambda v: (v.namespace, v.name)):
        if not vs.spec.applies_to_mesh:
            continue

        def msg(mtype: MessageType, text: str, vs: VirtualService = vs) -> AnalysisMessage:
            return AnalysisMessage(mtype, text, "VirtualService", vs.namespace, vs.name)

        dests = [d.destination for r in vs.spec.http for d in r.route]
        dests += [d.destination for t in vs.spec.tcp for d in t.route]
        dests += [d.destination for s in vs.spec.tls for d in s.route]
        for d in dests:
            host = qualify(d.host, vs.namespace)
            if host not in exact and not any(host_matches(p, host) for p in patterns):
                out.append(msg(m.REFERENCED_RESOURCE_NOT_FOUND, f"Referenced host not found: {d.host!r}"))
            elif d.subset and d.subset not in subsets.get(host, set()):
                out.append(msg(m.REFERENCED_RESOURCE_NOT_FOUND,
                               f"Referenced host+subset in destinationrule not found: {f'{d.host}+{d.subset}'!r}"))
        catch_all: int | None = None
        for i, rule in enumerate(vs.spec.http):
            if catch_all is not None:
                out.append(msg(m.VIRTUAL_SERVICE_UNREACHABLE_RULE,
                               f"VirtualService rule #{i} not used (only the last rule can have no matches; rule "
                               f"#{catch_all} matches every request)."))
                continue
            if not rule.match:
                catch_all = i
                continue
            for j, match in enumerate(rule.match):
                earlier = next((k for k in range(i) if match in vs.spec.http[k].match), None)
                if earlier is not None:
                    out.append(msg(m.VIRTUAL_SERVICE_INEFFECTIVE_MATCH,
                                   f"VirtualService rule #{i} match #{j} is not used (duplicate/overlapping match in "
                                   f"rule #{earlier})."))
    return out


def _subsets(snapshot: ConfigSnapshot) -> list[AnalysisMessage]:
    services = {}
    for svc in snapshot.of_kind(Service):
        view = service_model.of_service(svc)
        services[view.host] = (svc, view)
    out = []
    for dr in sorted(snapshot.of_kind(DestinationRule), key=lambda d: (d.namespace, d.name)):
        if dr.spec.workload_selector is not None or not dr.spec.subsets:
            continue
        found = services.get(qualify(dr.spec.host, dr.namespace))
        if found is None:
            continue
        svc, view = found
        for name in explain.empty_subsets(snapshot, view, dr):
            subset = dr.spec.subset(name)
            labels = ", ".join(f"{k}={v}" for k, v in sorted(subset.labels.items())) if subset else ""
            out.append(AnalysisMessage(m.SUBSET_SELECTS_NO_POD,
                                       f"subset {name} ({labels}) selects no pod of Service {svc.namespace}/"
                                       f"{svc.name}; requests routed to it fail", "DestinationRule",
                                       dr.namespace, dr.name))
    return out


def exceeds(found: Iterable[AnalysisMessage], threshold: str) -> bool:
    """Any message at ``threshold`` or worse (istioctl's failure test)."""
    return any(m.at_least(x.type.level, threshold) for x in found)


__all__ = ["AnalysisMessage", "analyze", "exceeds"]
