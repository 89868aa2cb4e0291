"""Where a workload and a waypoint proxy are: their locality (region/zone/subzone) and the
topology labels istiod adds to their labels.  Facts only; what a locality changes in load
balancing is ``locality_lb``.

Istio's sources, in its order (``getPodLocality``, ``localityFromProxyLabels``,
``AugmentLabels``):

* a pod: its ``topology.istio.io/locality`` label (else the older ``istio-locality``; dots stand
  for slashes when there is no slash), else its node's ``topology.kubernetes.io/region`` /
  ``topology.kubernetes.io/zone`` (else the ``failure-domain.beta.kubernetes.io/*`` ones) and
  ``topology.istio.io/subzone`` labels, found through ``spec.nodeName``;
* a WorkloadEntry or a ServiceEntry endpoint: its ``locality`` field;
* a waypoint proxy: the pod at its address (as above), else the topology labels or locality label
  of the labels its node metadata carries, else the Envoy ``node.locality`` it sent.

Labels a ``failoverPriority`` compares are the workload's own labels plus, added as istiod does,
the region, zone and subzone, ``kubernetes.io/hostname`` (the node name) and
``topology.istio.io/cluster`` (the cluster ID).  Localities are interned (one object per value),
so the translator's identity-compared memo inputs stay identical while a locality does not change.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from istiod_lite.model import ConfigSnapshot
from istiod_lite.model.core import Node, Pod
from istiod_lite.translator.core import tables

REGION = "topology.kubernetes.io/region"
ZONE = "topology.kubernetes.io/zone"
SUBZONE = "topology.istio.io/subzone"
HOSTNAME = "kubernetes.io/hostname"
CLUSTER = "topology.istio.io/cluster"
NETWORK = "topology.istio.io/network"
#: Istio's locality label on a pod (the older name second).
LOCALITY_LABELS = ("topology.istio.io/locality", "istio-locality")
_BETA_REGION = "failure-domain.beta.kubernetes.io/region"
_BETA_ZONE = "failure-domain.beta.kubernetes.io/zone"
#: The only cluster this control plane knows (``CLUSTER_ID`` of its proxies).
CLUSTER_ID = "Kubernetes"


@dataclass(frozen=True)
class Locality:
    """A region/zone/subzone triple (any part may be empty).  Build with ``locality()``."""

    region: str
    zone: str
    subzone: str

    @property
    def label(self) -> str:
        """``region/zone/subzone``: the sort key of endpoint groups (Istio's locality label)."""
        return f"{self.region}/{self.zone}/{self.subzone}"


_INTERNED: dict[tuple[str, str, str], Locality] = {}


def locality(region: str, zone: str = "", subzone: str = "") -> Locality | None:
    """The one ``Locality`` object for these parts; None when all are empty (locality unknown)."""
    if not (region or zone or subzone):
        return None
    key = (region, zone, subzone)
    loc = _INTERNED.get(key)
    if loc is None:
        loc = _INTERNED.setdefault(key, Locality(*key))
    return loc


def parse(label: str) -> Locality | None:
    """``region/zone/subzone`` (fewer parts allowed; without a slash, dots separate: Kubernetes
    label values cannot hold slashes), as Istio's ``SanitizeLocalityLabel`` + ``ConvertLocality``."""
    if not label:
        return None
    parts = label.split("/") if "/" in label else label.split(".")
    parts += ["", ""]
    return locality(parts[0], parts[1], parts[2])


def from_topology_labels(labels: Mapping[str, str]) -> Locality | None:
    """From the topology labels (region, zone, subzone) when any is present."""
    return locality(labels.get(REGION, ""), labels.get(ZONE, ""), labels.get(SUBZONE, ""))


def label_locality(labels: Mapping[str, str]) -> Locality | None:
    """Istio's locality label (``GetLocalityLabel``): the newer name wins."""
    for key in LOCALITY_LABELS:
        if key in labels:
            return parse(labels[key])
    return None


def pod_locality(snapshot: ConfigSnapshot, pod: Pod) -> Locality | None:
    """``getPodLocality``: the pod's locality label, else its node's topology labels."""
    own = label_locality(pod.metadata.labels)
    if own is not None:
        return own
    parts = tables.NODE_LOCALITIES.of(snapshot).get(pod.spec.node_name) if pod.spec.node_name else None
    return locality(*parts) if parts is not None else None


@tables.NODE_LOCALITIES.computed_by
def _node_localities(snapshot: ConfigSnapshot) -> Mapping[str, tuple[str, str, str]]:
    out: dict[str, tuple[str, str, str]] = {}
    for node in snapshot.of_kind(Node):
        labels = node.metadata.labels
        parts = (labels.get(REGION) or labels.get(_BETA_REGION, ""), labels.get(ZONE) or labels.get(_BETA_ZONE, ""),
                 labels.get(SUBZONE, ""))
        if any(parts):
            out[node.name] = parts
    return out


def augmented(labels: Mapping[str, str], loc: Locality | None, node_name: str = "") -> dict[str, str]:
    """``AugmentLabels``: the labels plus the topology ones istiod adds (region, zone, subzone,
    cluster, node name) - what a ``failoverPriority`` label is looked up in."""
    out = dict(labels)
    if loc is not None:
        for key, value in ((REGION, loc.region), (ZONE, loc.zone), (SUBZONE, loc.subzone)):
            if value:
                out[key] = value
    out[CLUSTER] = CLUSTER_ID
    if node_name:
        out[HOSTNAME] = node_name
    return out


@dataclass(frozen=True)
class ProxyLocality:
    """What a waypoint proxy's endpoints depend on: its locality, and the values of its labels
    that some ``failoverPriority`` names (only those, so replicas in one zone share a translation).
    The translation is computed once per distinct value."""

    locality: Locality | None = None
    labels: tuple[tuple[str, str], ...] = ()

    @property
    def label_map(self) -> dict[str, str]:
        return dict(self.labels)


def pods_at(snapshot: ConfigSnapshot, ip: str) -> tuple[Pod, ...]:
    """Pods with ``ip`` among their addresses, by namespace then name."""
    return tables.PODS_BY_IP.of(snapshot).get(ip, ())


@tables.PODS_BY_IP.computed_by
def _pods_by_ip(snapshot: ConfigSnapshot) -> Mapping[str, tuple[Pod, ...]]:
    out: dict[str, list[Pod]] = {}
    for pod in sorted(snapshot.of_kind(Pod), key=lambda p: (p.namespace, p.name)):
        for ip in pod.ips:
            out.setdefault(ip, []).append(pod)
    return {k: tuple(v) for k, v in out.items()}


def proxy_locality(snapshot: ConfigSnapshot, address: str, node_labels: Mapping[str, str],
                   node_locality: str = "", namespace: str = "",
                   label_keys: frozenset[str] = frozenset()) -> ProxyLocality:
    """Where the proxy at ``address`` is, as istiod finds it (``SetWorkloadLabels`` then
    ``setTopologyLabels``): the pod at that address (in the proxy's namespace when it says one),
    whose labels the registry augments with its locality and node; else the node metadata's
    labels; the locality from those labels' topology keys, else their locality label, else the
    node's own ``locality``.  ``label_keys``: the labels to keep (those ``failoverPriority`` names)."""
    pods = [p for p in pods_at(snapshot, address) if not namespace or p.namespace == namespace]
    if pods:
        pod = pods[0]
        labels = augmented(pod.metadata.labels, pod_locality(snapshot, pod), pod.spec.node_name)
    else:
        labels = dict(node_labels)
    loc = from_topology_labels(labels) or label_locality(labels) or parse(node_locality)
    if not pods:
        labels = augmented(labels, loc)
    kept = tuple(sorted((k, v) for k, v in labels.items() if k in label_keys))
    return ProxyLocality(loc, kept)
