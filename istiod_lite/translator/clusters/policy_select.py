"""Which DestinationRule settings apply to one cluster, and which consistent hash to one route.

Facts: docs/istio-waypoint-shape.md §3 "DR -> cluster mapping" (Istio's
``util.GetPortLevelTrafficPolicy``, ``util.MergeSubsetTrafficPolicy``, ``route.HashForHTTPDestination``).
Istio's rules, kept exactly because they surprise:

* port-level settings *replace* the top-level policy for that port (nothing is inherited: a port
  entry with only ``loadBalancer`` drops the top-level ``connectionPool``);
* a subset's policy overrides the (port-selected) top-level one field by field; if the subset has
  port-level settings for the port, they replace every field (again, no inheritance);
* the consistent hash of a route destination comes from the subset's port-level settings, else
  the subset, else the top-level port-level settings (only when the destination names a port),
  else the top-level load balancer.

Which DestinationRule applies at all (``resolve_destination_rule``, ``waypoint_destination_rule``)
is Istio's ``PushContext.destinationRule`` over the pools of ``core/destination_rules.py``, for a
waypoint as for any proxy of its namespace (``DefaultSidecarScopeForGateway``):

1. the waypoint's namespace: its namespace-local rules (public or private), most specific host
   first; if the waypoint runs in the root namespace, only the root namespace's private rules;
2. the service's namespace: its exported rules, most specific host, kept only if exported to the
   waypoint's namespace (``exportTo`` empty, ``*`` or naming it);
3. the root namespace (MeshConfig ``rootNamespace``): the same, for its exported rules.

The first step that finds a host match decides, even if what it found then applies nothing (in
step 1, a match whose rules all have a ``workloadSelector``; in steps 2-3, a more specific host
whose rules are not exported to the waypoint hides a less specific one that is).  Of the entries
found, the last one without a ``workloadSelector`` applies (``SidecarScope.DestinationRule``):
selector-scoped rules never apply to a waypoint's clusters here (Istio applies a matching one to
outbound clusters only; the waypoint's own labels are not known to the translator).  A service that
is not exported to the waypoint's namespace has no DestinationRule there at all (the waypoint's
scope does not list it).

Pure functions of the model objects; the cluster builder (``cluster_policy``) turns a ``Policy``
into Envoy fields.
"""

from __future__ import annotations

from dataclasses import dataclass

from istiod_lite.model import ConfigSnapshot
from istiod_lite.model.meshconfig import MeshConfig
from istiod_lite.model.networking import (
    ClientTLSSettings,
    ConnectionPoolSettings,
    ConsistentHashLB,
    DestinationRule,
    LoadBalancerSettings,
    OutlierDetection,
    ProxyProtocol,
    RetryBudget,
    TrafficPolicy,
)
from istiod_lite.translator.binding.service_model import ServiceInfo
from istiod_lite.translator.core import visibility
from istiod_lite.translator.core.destination_rules import (
    ConsolidatedRule,
    DestinationRuleIndex,
    indexes_of,
)


@dataclass(frozen=True)
class ResolvedRule:
    """The DestinationRule a proxy namespace applies to one host, and how it was found.

    ``rule``: the rule whose settings apply (a merged copy when several merged), None if none;
    ``sources``: the rules it is made of (memo keys: identity-stable across snapshots);
    ``found``: every entry of the host match that decided (some may not apply); ``namespace``:
    where it was found ("" if nowhere); ``step``: ``proxy``, ``service`` or ``root``."""

    rule: DestinationRule | None
    sources: tuple[DestinationRule, ...] = ()
    found: tuple[ConsolidatedRule, ...] = ()
    namespace: str = ""
    step: str = ""
    matched_host: str = ""

    @property
    def entry(self) -> ConsolidatedRule | None:
        return next((e for e in self.found if e.rule is self.rule), None)


NO_RULE = ResolvedRule(None)


def dr_index(snapshot: ConfigSnapshot, mesh: MeshConfig | None = None) -> DestinationRuleIndex:
    """The snapshot's DestinationRule pools for ``mesh`` (root namespace, default exportTo)."""
    m = visibility.mesh_or_default(mesh)
    return indexes_of(snapshot).get(m.root_namespace, m.default_destination_rule_export_to)


def resolve_destination_rule(snapshot: ConfigSnapshot, proxy_namespace: str, service_namespace: str, host: str,
                             mesh: MeshConfig | None = None) -> ResolvedRule:
    """``PushContext.destinationRule`` + ``SidecarScope.DestinationRule`` (rules above)."""
    idx = dr_index(snapshot, mesh)
    key = (proxy_namespace, service_namespace, host)
    hit = idx.lookups.get(key)
    if hit is None:
        hit = idx.lookups.setdefault(key, _lookup(idx, proxy_namespace, service_namespace, host))
    assert isinstance(hit, ResolvedRule)
    return hit


def waypoint_destination_rule(snapshot: ConfigSnapshot, proxy_namespace: str, service: ServiceInfo | None,
                              mesh: MeshConfig | None = None) -> ResolvedRule:
    """The DestinationRule a waypoint of ``proxy_namespace`` applies to ``service``: none when the
    service is unknown or not exported to that namespace."""
    if service is None or not visibility.service_visible(service.source, proxy_namespace, mesh):
        return NO_RULE
    return resolve_destination_rule(snapshot, proxy_namespace, service.namespace, service.host, mesh)


def _applied(found: tuple[ConsolidatedRule, ...], namespace: str, step: str, matched: str) -> ResolvedRule:
    entry = next((e for e in reversed(found) if not e.has_selector), None)
    if entry is None:
        return ResolvedRule(None, (), found, namespace, step, matched)
    return ResolvedRule(entry.rule, entry.sources, found, namespace, step, matched)


def _lookup(idx: DestinationRuleIndex, proxy_ns: str, service_ns: str, host: str) -> ResolvedRule:
    root = idx.root_namespace
    first = idx.root_local if proxy_ns == root else idx.namespace_local.get(proxy_ns)
    if first is not None and (m := first.most_specific(host)) is not None:
        return _applied(m[1], proxy_ns, "proxy", m[0])
    for ns, step in ((service_ns, "service"), (root, "root")):
        if not ns:
            continue
        pool = idx.exported.get(ns)
        m = pool.most_specific(host) if pool is not None else None
        if m is None:
            continue
        out = tuple(e for e in m[1] if exported_to(e, proxy_ns))
        if out:
            return _applied(out, ns, step, m[0])
    return NO_RULE


def exported_to(entry: ConsolidatedRule, namespace: str) -> bool:
    """``getExportedDestinationRuleFromNamespace``'s test."""
    e = entry.export_to
    return not e or visibility.PUBLIC in e or namespace in e


@dataclass(frozen=True)
class Policy:
    """The traffic-policy fields one cluster is built from (Istio's ``selectTrafficPolicyComponents``)."""

    connection_pool: ConnectionPoolSettings | None = None
    outlier_detection: OutlierDetection | None = None
    load_balancer: LoadBalancerSettings | None = None
    tls: ClientTLSSettings | None = None
    proxy_protocol: ProxyProtocol | None = None
    retry_budget: RetryBudget | None = None


def _whole(tp: TrafficPolicy) -> Policy:
    return Policy(tp.connection_pool, tp.outlier_detection, tp.load_balancer, tp.tls, tp.proxy_protocol,
                  tp.retry_budget)


def port_policy(tp: TrafficPolicy | None, port: int) -> tuple[Policy | None, bool]:
    """``GetPortLevelTrafficPolicy``: the policy for ``port`` and whether port-level settings won."""
    if tp is None:
        return None, False
    pls = tp.for_port(port)
    if pls is None:
        return _whole(tp), False
    # Port-level settings carry only these four; the rest falls back to defaults, as in Istio.
    return Policy(pls.connection_pool, pls.outlier_detection, pls.load_balancer, pls.tls), True


def cluster_policy(dr: DestinationRule | None, port: int, subset: str = "") -> Policy | None:
    """The policy of cluster ``(port, subset)`` of ``dr``'s host (None: no policy at all, which
    also means no ``config`` metadata on the cluster)."""
    if dr is None:
        return None
    top, _ = port_policy(dr.spec.traffic_policy, port)
    if not subset:
        return top
    ss = dr.spec.subset(subset)
    if ss is None or ss.traffic_policy is None:
        return top
    sub, port_level = port_policy(ss.traffic_policy, port)
    assert sub is not None
    if top is None:
        return sub
    return Policy(
        connection_pool=sub.connection_pool if sub.connection_pool is not None or port_level else top.connection_pool,
        outlier_detection=sub.outlier_detection if sub.outlier_detection is not None or port_level
        else top.outlier_detection,
        load_balancer=sub.load_balancer if sub.load_balancer is not None or port_level else top.load_balancer,
        tls=sub.tls if sub.tls is not None or port_level else top.tls,
        proxy_protocol=sub.proxy_protocol if sub.proxy_protocol is not None else top.proxy_protocol,
        retry_budget=sub.retry_budget if sub.retry_budget is not None else top.retry_budget,
    )


def destination_hash(dr: DestinationRule | None, port: int | None, subset: str) -> ConsistentHashLB | None:
    """``HashForHTTPDestination``: the consistent hash a route to (port, subset) must carry.

    ``port`` is the destination's *explicit* port (port-level hashes apply only then)."""
    if dr is None:
        return None
    tp = dr.spec.traffic_policy
    top = tp.load_balancer.consistent_hash if tp and tp.load_balancer else None
    pls_hash = _port_hash(tp, port)
    sub_hash = sub_pls_hash = None
    ss = dr.spec.subset(subset) if subset else None
    if ss is not None and ss.traffic_policy is not None:
        stp = ss.traffic_policy
        sub_hash = stp.load_balancer.consistent_hash if stp.load_balancer else None
        sub_pls_hash = _port_hash(stp, port)
    return next((h for h in (sub_pls_hash, sub_hash, pls_hash, top) if h is not None), None)


def service_hash(dr: DestinationRule | None, port: int) -> ConsistentHashLB | None:
    """``hashForService``: the hash of a service's default route (top level, port level wins)."""
    if dr is None or dr.spec.traffic_policy is None:
        return None
    tp = dr.spec.traffic_policy
    pls_hash = _port_hash(tp, port)
    return pls_hash if pls_hash is not None else (tp.load_balancer.consistent_hash if tp.load_balancer else None)


def _port_hash(tp: TrafficPolicy | None, port: int | None) -> ConsistentHashLB | None:
    if tp is None or port is None:
        return None
    pls = tp.for_port(port)
    return pls.load_balancer.consistent_hash if pls is not None and pls.load_balancer else None


def tcp_source_ip_hash(dr: DestinationRule | None, subset: str) -> bool:
    """``maybeSetHashPolicy``: whether a tcp_proxy hashes on the source IP (top level, a subset's
    load balancer replaces it)."""
    if dr is None:
        return False
    tp = dr.spec.traffic_policy
    ch = tp.load_balancer.consistent_hash if tp and tp.load_balancer else None
    use = bool(ch and ch.use_source_ip)
    ss = dr.spec.subset(subset) if subset else None
    if ss is not None and ss.traffic_policy is not None and ss.traffic_policy.load_balancer is not None:
        sch = ss.traffic_policy.load_balancer.consistent_hash
        use = bool(sch and sch.use_source_ip)
    return use
