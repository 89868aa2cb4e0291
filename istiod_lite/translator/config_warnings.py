"""Valid Istio configuration that a waypoint silently ignores or cannot honour, as messages.

Istio drops these without a word (or only in a debug log); an operator deserves to know.  Pure and
memoised per (VirtualService, DestinationRule) maps; the control plane logs new entries, as it
does for binding problems.  Only mesh-bound VirtualServices are inspected (others never reach a
waypoint).
"""

from __future__ import annotations

from istiod_lite.model import ConfigSnapshot
from istiod_lite.model.networking import (
    ClientTLSSettings,
    DestinationRule,
    L4MatchAttributes,
    TLSMatchAttributes,
    TrafficPolicy,
    VirtualService,
)
from istiod_lite.translator.index import derived_from_kinds

_SUPPORTED_REDIRECT_CODES = frozenset({0, 301, 302, 303, 307, 308})


def route_warnings(snapshot: ConfigSnapshot) -> list[str]:
    """One message per ignored piece of routing config, sorted."""
    return list(derived_from_kinds(snapshot, "route-warnings", ("VirtualService", "DestinationRule"), _build))


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
        lbs = [tp.load_balancer, *(p.load_balancer for p in tp.port_level_settings)]
        if any(lb is not None and lb.locality_lb_setting is not None for lb in lbs):
            out.append(f"{what}: {where} localityLbSetting is not applied by istiod-lite; ignored")
    return out
