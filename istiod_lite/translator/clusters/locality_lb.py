"""Locality-aware load balancing: which setting applies to a cluster, what it sets on the
cluster, and the priorities and weights it gives a proxy's endpoints.

Facts (istiod ``loadbalancer.GetEffectiveLbSetting``, ``ApplyToCluster``,
``ApplyLocalityLoadBalancer``; EDS ``BuildClusterLoadAssignment``):

* which setting: the DestinationRule's ``loadBalancer.localityLbSetting`` (``enabled: false``:
  none), else the service's traffic distribution (``spec.trafficDistribution``, else the
  ``networking.istio.io/traffic-distribution`` annotation of the service, else of its namespace):
  ``PreferClose``/``PreferSameZone`` become ``failoverPriority`` [network, region, zone] and
  ``PreferSameNode`` [network, region, zone, subzone, hostname], both *forced* (they fail over on
  endpoint health, no outlier detection needed); else the mesh's ``localityLbSetting``, whose
  default is ``enabled: true`` (so outlier detection alone turns on locality failover);
* the cluster: ``common_lb_config.locality_weighted_lb_config`` when ``distribute`` is set, or
  when failover is on (outlier detection, or forced) and ``failover``/``failoverPriority`` is set;
* the endpoints, per proxy: ``distribute`` reweights the proxy's matching localities (others get
  no endpoints); else, only with failover on, ``failoverPriority`` splits each locality by how many
  leading labels match the proxy's (``label=value`` compares with a fixed value), and/or the
  region/zone/subzone match sets priorities 0-3 (4 for a region a ``failover`` entry does not
  name); priorities are then renumbered 0..N without gaps.  Without outlier detection nothing
  changes: Envoy would never move to a lower priority.

Zone-aware settings (``zoneAwareLbSetting``) are not modelled: istiod ignores them for waypoints.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2

from istiod_lite.model import ConfigSnapshot
from istiod_lite.model.core import Namespace, Service
from istiod_lite.model.meshconfig import MeshConfig
from istiod_lite.model.networking import DestinationRule, ServiceEntry
from istiod_lite.model.networking_dr import LoadBalancerSettings, LocalityLoadBalancerSetting
from istiod_lite.translator.clusters.locality import (
    HOSTNAME,
    NETWORK,
    REGION,
    SUBZONE,
    ZONE,
    Locality,
    ProxyLocality,
)
from istiod_lite.translator.core import tables

#: Istio's annotation for a traffic distribution (services without the field, ServiceEntries, namespaces).
TRAFFIC_DISTRIBUTION_ANNOTATION = "networking.istio.io/traffic-distribution"
#: Istio's default mesh setting (``DefaultMeshConfig``): enabled, nothing else.
MESH_DEFAULT = LocalityLoadBalancerSetting(enabled=True)
_SAME_ZONE = LocalityLoadBalancerSetting(enabled=True, failover_priority=(NETWORK, REGION, ZONE))
_SAME_NODE = LocalityLoadBalancerSetting(enabled=True, failover_priority=(NETWORK, REGION, ZONE, SUBZONE, HOSTNAME))
#: The field's values (Kubernetes spells them exactly); the annotations compare case-insensitively.
_DISTRIBUTIONS = {"PreferClose": _SAME_ZONE, "PreferSameZone": _SAME_ZONE, "PreferSameNode": _SAME_NODE}
_ANNOTATED = {k.lower(): v for k, v in _DISTRIBUTIONS.items()}


@dataclass(frozen=True)
class LocalityLb:
    """The setting that applies to one cluster; ``force``: fail over without outlier detection."""

    setting: LocalityLoadBalancerSetting
    force: bool = False

    def failover_on(self, outlier_detection: bool) -> bool:
        return self.force or outlier_detection

    def weighted_config(self, outlier_detection: bool) -> bool:
        """Whether the cluster gets ``locality_weighted_lb_config``."""
        s = self.setting
        return bool(s.distribute) or (self.failover_on(outlier_detection) and bool(s.failover or s.failover_priority))


def traffic_distribution(snapshot: ConfigSnapshot, source: object) -> LocalityLoadBalancerSetting | None:
    """``GetTrafficDistribution``: the field (known values only), else the service's annotation,
    else its namespace's (an unknown annotation value means "any")."""
    if not isinstance(source, Service | ServiceEntry):
        return None
    if isinstance(source, Service) and source.spec.traffic_distribution:
        found = _DISTRIBUTIONS.get(source.spec.traffic_distribution)
        if found is not None:
            return found
    value = source.metadata.annotations.get(TRAFFIC_DISTRIBUTION_ANNOTATION, "")
    if not value:
        ns = snapshot.get(Namespace, "", source.namespace)
        value = ns.metadata.annotations.get(TRAFFIC_DISTRIBUTION_ANNOTATION, "") if ns is not None else ""
    return _ANNOTATED.get(value.lower()) if value else None


def effective(mesh: MeshConfig | None, lb: LoadBalancerSettings | None,
              distribution: LocalityLoadBalancerSetting | None) -> LocalityLb | None:
    """``GetEffectiveLbSetting``: DestinationRule > traffic distribution > mesh; None: off."""
    dr_setting = lb.locality_lb_setting if lb is not None else None
    if dr_setting is not None:
        return None if dr_setting.enabled is False else LocalityLb(dr_setting)
    if distribution is not None:
        return LocalityLb(distribution, force=True)
    mesh_setting = mesh.locality_lb_setting if mesh is not None else None
    if mesh_setting is None:
        mesh_setting = MESH_DEFAULT
    return None if mesh_setting.enabled is False else LocalityLb(mesh_setting)


def apply_to_cluster(c: cluster_pb2.Cluster, lb: LocalityLb | None) -> None:
    """``ApplyToCluster``'s cluster part (the proxy-dependent part is ``apply_to_endpoints``)."""
    if lb is not None and lb.weighted_config(c.HasField("outlier_detection")):
        c.common_lb_config.locality_weighted_lb_config.SetInParent()


#: A locality group under construction: the Envoy group and a getter of each endpoint's labels
#: (augmented with topology), computed only when a ``failoverPriority`` needs them.
LabelsOf = Callable[[], Mapping[str, str]]


@dataclass
class Group:
    """``WrappedLocalityLbEndpoints``: an Envoy locality group and its endpoints' labels."""

    envoy: endpoint_components_pb2.LocalityLbEndpoints
    labels: list[LabelsOf]


def apply_to_endpoints(groups: list[Group], lb: LocalityLb, proxy: ProxyLocality,
                       outlier_detection: bool) -> list[endpoint_components_pb2.LocalityLbEndpoints]:
    """``ApplyLocalityLoadBalancer`` for one proxy: the groups with priorities and weights set
    (``failoverPriority`` may split a group in several)."""
    s = lb.setting
    out = [g.envoy for g in groups]
    if s.distribute:
        _apply_weights(proxy.locality, out, s)
    elif lb.failover_on(outlier_detection):
        if s.failover_priority:
            out = _apply_failover_priorities(groups, proxy.label_map, s.failover_priority)
            if s.failover:
                _apply_failover(proxy.locality, out, s)
        else:
            _apply_failover(proxy.locality, out, s)
    return out


def _parts(loc: Locality | None) -> tuple[str, str, str]:
    return (loc.region, loc.zone, loc.subzone) if loc is not None else ("", "", "")


def _envoy_parts(g: endpoint_components_pb2.LocalityLbEndpoints) -> tuple[str, str, str]:
    return (g.locality.region, g.locality.zone, g.locality.sub_zone)


def _matches(parts: tuple[str, str, str], rule: str) -> bool:
    """``LocalityMatch``: ``*`` or an omitted zone/subzone matches anything."""
    r = [*rule.split("/"), "", ""][:3]
    return (r[0] == "*" or parts[0] == r[0]) and all(
        r[i] in ("*", "") or parts[i] == r[i] for i in (1, 2))


def _apply_weights(proxy: Locality | None, groups: Sequence[endpoint_components_pb2.LocalityLbEndpoints],
                   s: LocalityLoadBalancerSetting) -> None:
    """``applyLocalityWeights``: the first ``distribute`` entry whose ``from`` matches the proxy
    shares each ``to`` weight among the groups it matches (by their own weights); groups no ``to``
    matches lose their endpoints."""
    me = _parts(proxy)
    for d in s.distribute:
        if not _matches(me, d.from_):
            continue
        unmatched = set(range(len(groups)))
        for pattern, weight in d.to.items():
            picked = {i: (groups[i].load_balancing_weight.value if groups[i].HasField("load_balancing_weight")
                          else 1) for i in sorted(unmatched) if _matches(_envoy_parts(groups[i]), pattern)}
            unmatched -= picked.keys()
            total = sum(picked.values())
            for i, original in picked.items():
                share = original * weight / total if total else 0
                if share > 0:
                    groups[i].load_balancing_weight.value = math.ceil(share)
        for i in unmatched:
            del groups[i].lb_endpoints[:]
        return


def _lb_priority(me: tuple[str, str, str], them: tuple[str, str, str]) -> int:
    """``LbPriority``: 0 same subzone, 1 same zone, 2 same region, 3 elsewhere."""
    if me[0] != them[0]:
        return 3
    if me[1] != them[1]:
        return 2
    return 0 if me[2] == them[2] else 1


def _apply_failover(proxy: Locality | None, groups: Sequence[endpoint_components_pb2.LocalityLbEndpoints],
                    s: LocalityLoadBalancerSetting) -> None:
    """``applyLocalityFailover``: priority by region/zone/subzone match, a region other than the
    proxy's ``failover`` target below the others; composed with earlier priorities (x5)."""
    me = _parts(proxy)
    prios: list[int] = []
    for g in groups:
        them = _envoy_parts(g)
        p = _lb_priority(me, them)
        if p == 3:
            for f in s.failover:
                if f.from_ == me[0]:
                    if them[0] != f.to:
                        p = 4
                    break
        prios.append(g.priority * 5 + p)
    _compact(groups, prios)


def _compact(groups: Sequence[endpoint_components_pb2.LocalityLbEndpoints], prios: list[int]) -> None:
    """Priorities renumbered 0..N in order, without gaps (Envoy requires it)."""
    rank = {p: i for i, p in enumerate(sorted(set(prios)))}
    for g, p in zip(groups, prios, strict=True):
        g.priority = rank[p]


def _apply_failover_priorities(groups: list[Group], proxy_labels: Mapping[str, str], keys: Sequence[str]
                               ) -> list[endpoint_components_pb2.LocalityLbEndpoints]:
    """``applyFailoverPriorities``: each group split by priority (the number of leading labels
    that do not match, counted from the end; a network mismatch only lowers it below all else)."""
    names: list[str] = []
    fixed: dict[str, str] = {}
    for k in keys:
        name, sep, value = k.partition("=")
        names.append(name)
        if sep:
            fixed[name] = value
    lowest = len(keys)
    network_first = bool(names) and names[0] == NETWORK
    out: list[endpoint_components_pb2.LocalityLbEndpoints] = []
    for g in groups:
        by_prio: dict[int, list[int]] = {}
        for i, labels_of in enumerate(g.labels):
            labels = labels_of()
            prio = adjust = 0
            for j, name in enumerate(names):
                want = fixed[name] if name in fixed else proxy_labels.get(name, "")
                if want != labels.get(name, ""):
                    if j == 0 and network_first:
                        adjust = lowest
                        continue
                    prio = lowest - j
                    break
            by_prio.setdefault(prio + adjust, []).append(i)
        for prio in sorted(by_prio):
            part = endpoint_components_pb2.LocalityLbEndpoints()
            part.CopyFrom(g.envoy)
            del part.lb_endpoints[:]
            part.priority = prio
            part.lb_endpoints.extend(g.envoy.lb_endpoints[i] for i in by_prio[prio])
            part.load_balancing_weight.value = sum(g.envoy.lb_endpoints[i].load_balancing_weight.value
                                                   for i in by_prio[prio])
            out.append(part)
    _compact(out, [g.priority for g in out])
    return out


_UNKNOWN = ProxyLocality()


@dataclass(frozen=True)
class LbContext:
    """What locality load balancing reads besides the cluster's own policy: the mesh config and
    where the proxy is (unknown by default: then only settings that need no locality change anything)."""

    mesh: MeshConfig | None = None
    proxy: ProxyLocality = _UNKNOWN


@dataclass(frozen=True)
class EndpointLb:
    """Locality load balancing for one cluster's endpoints, for one proxy."""

    lb: LocalityLb
    proxy: ProxyLocality
    outlier_detection: bool


def cluster_lb(snapshot: ConfigSnapshot, mesh: MeshConfig | None, source: object,
               lb: LoadBalancerSettings | None) -> LocalityLb | None:
    """The setting for a cluster of ``source`` (a Service or ServiceEntry) whose policy has ``lb``."""
    return effective(mesh, lb, traffic_distribution(snapshot, source))


def failover_priority_labels(snapshot: ConfigSnapshot, mesh: MeshConfig | None) -> frozenset[str]:
    """Every label a ``failoverPriority`` may compare (DestinationRules', the mesh's, and the
    traffic-distribution ones when any service asks for one): the proxy labels its endpoints
    depend on, so that proxies differing in other labels share a translation.  The config's part
    is computed once per snapshot (the server asks for every connected proxy)."""
    mesh_setting = mesh.locality_lb_setting if mesh is not None else None
    config_keys = tables.FAILOVER_PRIORITY_LABELS.of(snapshot)
    if mesh_setting is None or not mesh_setting.failover_priority:
        return config_keys
    return config_keys | {k.partition("=")[0] for k in mesh_setting.failover_priority}


@tables.FAILOVER_PRIORITY_LABELS.computed_by
def _config_failover_labels(snapshot: ConfigSnapshot) -> frozenset[str]:
    keys: set[str] = set()
    for dr in snapshot.of_kind(DestinationRule):
        policies = [dr.spec.traffic_policy, *(ss.traffic_policy for ss in dr.spec.subsets)]
        for p in policies:
            if p is None:
                continue
            for lb in (p.load_balancer, *(pls.load_balancer for pls in p.port_level_settings)):
                if lb is not None and lb.locality_lb_setting is not None:
                    keys.update(k.partition("=")[0] for k in lb.locality_lb_setting.failover_priority)
    if any(traffic_distribution(snapshot, svc) is not None for svc in
           (*snapshot.of_kind(Service), *snapshot.of_kind(ServiceEntry))):
        keys.update(_SAME_NODE.failover_priority)
    return frozenset(keys)
