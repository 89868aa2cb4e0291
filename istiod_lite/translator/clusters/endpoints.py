"""Endpoints of a service port: the workloads behind it, as Envoy ``LbEndpoint``s.

Where they come from (Istio's service registries, reduced to what a waypoint needs):

* a Kubernetes Service: the ready (and unready, marked UNHEALTHY) pods its selector matches, and
  the WorkloadEntries of its namespace whose labels match the selector (Istio's cross-registry
  selection); a WorkloadEntry's port is ``ports[<service port name>]``, else the numeric target
  port (a named target port is looked up in ``ports``), else the service port;
* a ServiceEntry host: its inline ``endpoints``, or the WorkloadEntries and pods of its namespace
  matched by ``workloadSelector``; for ``DNS`` without either, the host name itself.  A
  WorkloadEntry whose address is a host name only serves DNS entries (Istio's
  ``DNSServiceEntryOnly``): EDS endpoints must be IPs.  The port is
  ``ports[<port name>]`` if set, else ``targetPort``, else the port (pods: the container port named
  like the service port).

* a Kubernetes Service's EndpointSlices (``kubernetes.io/service-name``) replace its pods when it
  has any, as istiod builds every Service's endpoints from them; a Service without a selector
  has no others.  A slice port serves the Service port of the same name, at the slice's port
  number (the slice controller resolved ``targetPort``); an address that is a pod's (the
  ``targetRef``, else the pod with that IP in the namespace) is that pod, with its labels and
  locality; a ``targetRef`` to a pod not (yet) known is skipped, as istiod does.  Health
  (``endpointHealthStatus``): ready (or unset) is HEALTHY; not ready but serving and terminating
  is DRAINING on a service with the ``istio.io/persistent-session`` label; terminating (or unset)
  is dropped; not ready and not terminating is UNHEALTHY.  Duplicates across slices (same address
  and port name) are kept once; FQDN slices are ignored.

Locality (``locality.py``): a pod's from its locality label or its node, an entry's from its
``locality`` field.  Endpoints of one locality form one group (sorted by locality, weight = the sum
of their weights); when no endpoint has a locality there is a single group without one.  The
locality load balancing of ``locality_lb`` then sets priorities and weights for the proxy.

How they are reached from a waypoint: an ambient pod or WorkloadEntry
(``istio.io/dataplane-mode=ambient`` on it or its namespace, or Istio's
``networking.istio.io/tunnel: http`` label) through ``connect_originate`` (HBONE to its ztunnel),
anything else at its plain address.  A ServiceEntry's inline endpoint is HBONE only with the tunnel
label: such endpoints are usually outside the mesh, whatever the entry's namespace says.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from envoy.config.core.v3 import address_pb2, health_check_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2

from istiod_lite.model import ConfigSnapshot
from istiod_lite.model.core import Endpoint, EndpointSlice, Namespace, Pod, Service, ServicePort
from istiod_lite.model.networking import ServiceEntry, WorkloadEntry
from istiod_lite.model.networking_common import is_ip
from istiod_lite.model.networking_se import WorkloadEntrySpec
from istiod_lite.translator.binding.service_model import DNS, DNS_ROUND_ROBIN, PortInfo, ServiceInfo
from istiod_lite.translator.binding.waypoints import DATAPLANE_MODE, is_ambient
from istiod_lite.translator.clusters import locality
from istiod_lite.translator.clusters.locality import Locality
from istiod_lite.translator.clusters.locality_lb import EndpointLb, Group, LabelsOf, apply_to_endpoints
from istiod_lite.translator.core import tables
from istiod_lite.translator.core.index import index_of, workload_entries_of, workload_entry_labels
from istiod_lite.translator.core.names import CONNECT_ORIGINATE, ORIGINAL_DST_KEY

#: Istio's label for workloads that terminate HBONE themselves (``model.TunnelLabel``).
TUNNEL_LABEL = "networking.istio.io/tunnel"
_HEALTHY: int = health_check_pb2.HEALTHY
_UNHEALTHY: int = health_check_pb2.UNHEALTHY
_DRAINING: int = health_check_pb2.DRAINING
#: Istio's ``PILOT_PERSISTENT_SESSION_LABEL``: such services are also sent draining endpoints.
PERSISTENT_SESSION_LABEL = "istio.io/persistent-session"
SERVICE_NAME_LABEL = "kubernetes.io/service-name"


@dataclass
class _Ep:
    """One endpoint being built: the Envoy endpoint, its locality, and (lazily) the labels a
    ``failoverPriority`` compares."""

    lb: endpoint_components_pb2.LbEndpoint
    locality: Locality | None
    labels: LabelsOf


def _no_labels() -> Mapping[str, str]:
    return locality.augmented({}, None)


def _pod_labels(pod: Pod, loc: Locality | None) -> LabelsOf:
    return lambda: locality.augmented(pod.metadata.labels, loc, pod.spec.node_name)


def _fixed_labels(labels: Mapping[str, str], loc: Locality | None) -> LabelsOf:
    return lambda: locality.augmented(labels, loc)


def target_port(pod: Pod, port: ServicePort) -> int | None:
    return _pod_port(pod, port.port, port.target_port)


def _pod_port(pod: Pod, number: int, target: int | str | None) -> int | None:
    if target is None:
        return number
    if isinstance(target, int):
        return target
    if target.isdigit():
        return int(target)
    return pod.named_port(target)


def _selector_with(selector: Mapping[str, str] | None, subset_labels: Mapping[str, str] | None
                   ) -> dict[str, str] | None:
    """The selector narrowed by a subset's labels; None when they contradict (nothing matches)."""
    out = dict(selector or {})
    for k, v in (subset_labels or {}).items():
        if out.setdefault(k, v) != v:
            return None
    return out


def service_pods(snapshot: ConfigSnapshot, svc: Service, subset_labels: Mapping[str, str] | None = None) -> list[Pod]:
    """Pods with an IP selected by the Service's selector (and the subset's labels, if any)."""
    if not svc.spec.selector:
        return []
    selector = _selector_with(svc.spec.selector, subset_labels)
    return index_of(snapshot).selected_pods(svc.namespace, selector) if selector else []


def service_workload_entries(snapshot: ConfigSnapshot, svc: Service,
                             subset_labels: Mapping[str, str] | None = None) -> list[WorkloadEntry]:
    """WorkloadEntries of the Service's namespace selected like its pods."""
    if not svc.spec.selector:
        return []
    selector = _selector_with(svc.spec.selector, subset_labels)
    return workload_entries_of(snapshot).selected(svc.namespace, selector) if selector else []


def _we_port(we: WorkloadEntrySpec, port: PortInfo, k8s: bool) -> int | None:
    by_name = we.ports.get(port.name)
    if by_name:
        return by_name
    t = port.target
    if isinstance(t, str) and not t.isdigit():
        return we.ports.get(t) if k8s else None
    return int(t) if t else port.number


def _k8s_endpoints(snapshot: ConfigSnapshot, svc: Service, port: PortInfo, subset_labels: Mapping[str, str] | None,
                   hbone: bool) -> list[_Ep]:
    out: list[_Ep] = []
    slices = endpoint_slices(snapshot, svc)
    if slices:
        out += _slice_endpoints(snapshot, svc, slices, port, subset_labels, hbone)
    else:
        for pod in service_pods(snapshot, svc, subset_labels):
            tp = _pod_port(pod, port.number, port.target)
            if tp is not None:
                out.append(_pod_endpoint(snapshot, pod, tp, hbone))
    for we in service_workload_entries(snapshot, svc, subset_labels):
        wp = _we_port(we.spec, port, k8s=True)
        if wp is not None and is_ip(we.spec.address):  # Istio: a host-name entry serves DNS entries only
            out.append(_workload_entry_endpoint(snapshot, we, wp, hbone))
    return out


def endpoint_slices(snapshot: ConfigSnapshot, svc: Service) -> tuple[EndpointSlice, ...]:
    """The Service's EndpointSlices of IP addresses, by name."""
    return tables.ENDPOINT_SLICES.of(snapshot).get((svc.namespace, svc.name), ())


@tables.ENDPOINT_SLICES.computed_by
def _slices_table(snapshot: ConfigSnapshot) -> Mapping[tuple[str, str], tuple[EndpointSlice, ...]]:
    out: dict[tuple[str, str], list[EndpointSlice]] = {}
    for es in sorted(snapshot.of_kind(EndpointSlice), key=lambda e: (e.namespace, e.name)):
        if es.service_name and es.address_type != "FQDN":
            out.setdefault((es.namespace, es.service_name), []).append(es)
    return {k: tuple(v) for k, v in out.items()}


def _slice_health(svc: Service, e: Endpoint) -> int | None:
    """``endpointHealthStatus`` and the EDS filter: None for an endpoint not sent (terminating)."""
    c = e.conditions
    if c.ready is None or c.ready:
        return _HEALTHY
    if PERSISTENT_SESSION_LABEL in svc.metadata.labels and c.serving is not False and c.terminating is not False:
        return _DRAINING
    if c.terminating is not False:
        return None
    return _UNHEALTHY


def _slice_pod(snapshot: ConfigSnapshot, es: EndpointSlice, e: Endpoint, address: str) -> tuple[Pod | None, bool]:
    """(the pod behind an address, whether one was expected): the ``targetRef`` pod, else the
    pod of the slice's namespace with that IP (``getPod``)."""
    ref = e.target_ref
    if ref is not None and ref.kind == "Pod":
        return snapshot.get(Pod, ref.namespace or es.namespace, ref.name), True
    for pod in locality.pods_at(snapshot, address):
        if pod.namespace == es.namespace:
            return pod, False
    return None, False


def _slice_endpoints(snapshot: ConfigSnapshot, svc: Service, slices: Sequence[EndpointSlice], port: PortInfo,
                     subset_labels: Mapping[str, str] | None, hbone: bool) -> list[_Ep]:
    out: list[_Ep] = []
    seen: set[str] = set()
    for es in slices:
        number = next((p.port for p in es.ports if p.name == port.name), None)
        if not number:
            continue
        for e in es.endpoints:
            health = _slice_health(svc, e)
            if health is None:
                continue
            for address in e.addresses:
                if address in seen or not is_ip(address):
                    continue
                pod, expected = _slice_pod(snapshot, es, e, address)
                if pod is None and expected:
                    continue
                labels = pod.metadata.labels if pod is not None else {}
                if not _labels_match(labels, subset_labels):
                    continue
                seen.add(address)
                out.append(_address_endpoint(snapshot, pod, address, number, health, hbone))
    return out


def _address_endpoint(snapshot: ConfigSnapshot, pod: Pod | None, address: str, port: int, health: int,
                      hbone: bool) -> _Ep:
    """A slice endpoint: a pod's like the pod's (HBONE when ambient), a plain address otherwise
    (``;;;;Kubernetes``: istiod's metadata for an endpoint without a workload)."""
    if pod is None:
        ep = _plain_endpoint(address, port, health)
        _workload_metadata(ep, "", "", {})
        ep.load_balancing_weight.value = 1
        return _Ep(ep, None, _no_labels)
    ep = _tunnel_endpoint(address, port, health) if hbone and is_ambient(snapshot, pod) \
        else _plain_endpoint(address, port, health)
    _workload_metadata(ep, pod.name, pod.namespace, pod.metadata.labels)
    ep.load_balancing_weight.value = 1
    loc = locality.pod_locality(snapshot, pod)
    return _Ep(ep, loc, _pod_labels(pod, loc))


def _pod_endpoint(snapshot: ConfigSnapshot, pod: Pod, port: int, hbone: bool) -> _Ep:
    return _address_endpoint(snapshot, pod, pod.ips[0], port, _HEALTHY if pod.ready else _UNHEALTHY, hbone)


def _we_ambient(snapshot: ConfigSnapshot, we: WorkloadEntry) -> bool:
    """Like a pod: the entry's own dataplane-mode label, else its namespace's; or Istio's tunnel label."""
    labels = workload_entry_labels(we)
    if labels.get(TUNNEL_LABEL) == "http":
        return True
    mode = labels.get(DATAPLANE_MODE)
    if mode is not None:
        return mode == "ambient"
    ns = snapshot.get(Namespace, "", we.namespace)
    return ns is not None and ns.metadata.labels.get(DATAPLANE_MODE) == "ambient"


def _we_health(we: WorkloadEntry) -> int:
    """Istio's health check controller writes ``status.conditions[type=Healthy]``; absent means healthy."""
    for c in (we.status or {}).get("conditions") or ():
        if isinstance(c, Mapping) and c.get("type") == "Healthy":
            return _HEALTHY if c.get("status") == "True" else _UNHEALTHY
    return _HEALTHY


def _workload_entry_endpoint(snapshot: ConfigSnapshot, we: WorkloadEntry, port: int, hbone: bool) -> _Ep:
    health = _we_health(we)
    address = we.spec.address
    ep = _tunnel_endpoint(address, port, health) if hbone and _we_ambient(snapshot, we) \
        else _plain_endpoint(address, port, health)
    labels = workload_entry_labels(we)
    _workload_metadata(ep, we.name, we.namespace, labels)
    ep.load_balancing_weight.value = we.spec.weight or 1
    loc = locality.parse(we.spec.locality)
    return _Ep(ep, loc, _fixed_labels(labels, loc))


def load_assignment(
    cluster_name: str, snapshot: ConfigSnapshot, svc: Service, port: ServicePort,
    subset_labels: Mapping[str, str] | None = None, hbone: bool = False,
) -> endpoint_pb2.ClusterLoadAssignment:
    """Endpoints of a Kubernetes Service port, sorted by address; unready pods are kept as UNHEALTHY
    (Istio sends unhealthy endpoints with their status and lets Envoy's panic threshold decide)."""
    info = PortInfo(port.port, port.name, "", port.target_port)
    return _assignment(cluster_name, _k8s_endpoints(snapshot, svc, info, subset_labels, hbone), None)


def service_load_assignment(
    cluster_name: str, snapshot: ConfigSnapshot, svc: ServiceInfo, port: PortInfo,
    subset_labels: Mapping[str, str] | None = None, hbone: bool = True, lb: EndpointLb | None = None,
) -> endpoint_pb2.ClusterLoadAssignment:
    """Endpoints of any service port (Service or ServiceEntry host), sorted by locality then
    address; ``lb``: the locality load balancing that applies, for the proxy it is built for."""
    src = svc.source
    if isinstance(src, ServiceEntry):
        eps = _service_entry_endpoints(snapshot, src, svc, port, subset_labels, hbone)
    else:
        eps = _k8s_endpoints(snapshot, src, port, subset_labels, hbone)
    return _assignment(cluster_name, eps, lb)


def _labels_match(labels: Mapping[str, str], wanted: Mapping[str, str] | None) -> bool:
    return all(labels.get(k) == v for k, v in (wanted or {}).items())


def _service_entry_endpoints(snapshot: ConfigSnapshot, se: ServiceEntry, svc: ServiceInfo, port: PortInfo,
                             subset_labels: Mapping[str, str] | None, hbone: bool) -> list[_Ep]:
    spec = se.spec
    dns = svc.resolution in (DNS, DNS_ROUND_ROBIN)
    out: list[_Ep] = []
    if spec.workload_selector is not None:
        selector = _selector_with(spec.workload_selector.labels, subset_labels)
        if not selector:
            return []
        for pod in index_of(snapshot).selected_pods(se.namespace, selector):
            pp = pod.named_port(port.name) or _se_target(port)
            out.append(_pod_endpoint(snapshot, pod, pp, hbone))
        for we in workload_entries_of(snapshot).selected(se.namespace, selector):
            wp = _we_port(we.spec, port, k8s=False)
            if wp is not None and ((dns and not we.spec.is_unix) or is_ip(we.spec.address)):
                out.append(_workload_entry_endpoint(snapshot, we, wp, hbone))
        return out
    if not spec.endpoints:
        if dns and not subset_labels:  # Istio: a DNS entry without endpoints resolves its host
            ep = _plain_endpoint(svc.host, _se_target(port), _HEALTHY)
            _workload_metadata(ep, se.name, se.namespace, {})
            ep.load_balancing_weight.value = 1
            out.append(_Ep(ep, None, _no_labels))
        return out
    for i, e in enumerate(spec.endpoints):
        if e.is_unix or not e.address or not _labels_match(e.labels, subset_labels):
            continue  # a unix socket is only reachable on the endpoint's own host
        ep_port = e.ports.get(port.name) or _se_target(port)
        tunnel = hbone and e.labels.get(TUNNEL_LABEL) == "http"
        ep = _tunnel_endpoint(e.address, ep_port, _HEALTHY) if tunnel else _plain_endpoint(e.address, ep_port, _HEALTHY)
        _workload_metadata(ep, f"{se.name}-{i}", se.namespace, e.labels)
        ep.load_balancing_weight.value = e.weight or 1
        loc = locality.parse(e.locality)
        out.append(_Ep(ep, loc, _fixed_labels(e.labels, loc)))
    return out


def _se_target(port: PortInfo) -> int:
    return port.target if isinstance(port.target, int) and port.target > 0 else port.number


def _assignment(cluster_name: str, eps: list[_Ep], lb: EndpointLb | None) -> endpoint_pb2.ClusterLoadAssignment:
    """Endpoints grouped by locality (one group without a locality when none has one, as before
    localities were known), then the locality load balancing for the proxy."""
    cla = endpoint_pb2.ClusterLoadAssignment(cluster_name=cluster_name)
    if not eps:
        return cla
    eps.sort(key=lambda e: (e.locality.label if e.locality is not None else "", *_sort_key(e.lb)))
    groups: list[Group] = []
    if all(e.locality is None for e in eps):
        g = endpoint_components_pb2.LocalityLbEndpoints()
        g.lb_endpoints.extend(e.lb for e in eps)
        groups.append(Group(g, [e.labels for e in eps]))
    else:
        by_label: dict[str, Group] = {}
        for e in eps:
            label = e.locality.label if e.locality is not None else ""
            grp = by_label.get(label)
            if grp is None:
                grp = by_label[label] = Group(endpoint_components_pb2.LocalityLbEndpoints(), [])
                if e.locality is not None:
                    grp.envoy.locality.region = e.locality.region
                    grp.envoy.locality.zone = e.locality.zone
                    grp.envoy.locality.sub_zone = e.locality.subzone
                groups.append(grp)
            grp.envoy.lb_endpoints.append(e.lb)
            grp.envoy.load_balancing_weight.value += e.lb.load_balancing_weight.value
            grp.labels.append(e.labels)
    if lb is not None:
        cla.endpoints.extend(apply_to_endpoints(groups, lb.lb, lb.proxy, lb.outlier_detection))
    else:
        cla.endpoints.extend(g.envoy for g in groups)
    return cla


def endpoint_inputs(snapshot: ConfigSnapshot, svc: ServiceInfo) -> tuple[object, ...]:
    """Every object a service's endpoints are computed from, for the translator's memo: selected
    pods and WorkloadEntries (any subset selects among these) and their namespaces (ambient or
    not).  A ServiceEntry's inline endpoints are part of the entry itself."""
    src = svc.source
    pods: Sequence[Pod]
    wes: Sequence[WorkloadEntry]
    if isinstance(src, ServiceEntry):
        sel = src.spec.workload_selector
        if sel is None or not sel.labels:
            return (snapshot.get(Namespace, "", svc.namespace),)
        pods = index_of(snapshot).selected_pods(src.namespace, sel.labels)
        wes = workload_entries_of(snapshot).selected(src.namespace, sel.labels)
    else:
        slices = endpoint_slices(snapshot, src)
        pods = _slice_pods(snapshot, slices) if slices else service_pods(snapshot, src)
        wes = service_workload_entries(snapshot, src)
        if slices:
            # the Service too: its persistent-session label decides whether draining endpoints are sent
            return (src, *slices, None, *_with_localities(snapshot, pods, wes), *_namespaces(snapshot, svc, pods, wes))
    return (*_with_localities(snapshot, pods, wes), *_namespaces(snapshot, svc, pods, wes))


def _slice_pods(snapshot: ConfigSnapshot, slices: Sequence[EndpointSlice]) -> list[Pod]:
    """The pods behind the slices' addresses (or None where there is none)."""
    out: list[Pod] = []
    for es in slices:
        for e in es.endpoints:
            for address in e.addresses:
                pod, _ = _slice_pod(snapshot, es, e, address)
                if pod is not None:
                    out.append(pod)
    return out


def _with_localities(snapshot: ConfigSnapshot, pods: Sequence[Pod], wes: Sequence[WorkloadEntry]
                     ) -> tuple[object, ...]:
    """Pods and entries, each pod followed by its (interned) locality: a node's topology labels
    are part of its pods' endpoints."""
    return (*(x for p in pods for x in (p, locality.pod_locality(snapshot, p))), *wes)


def _namespaces(snapshot: ConfigSnapshot, svc: ServiceInfo, pods: Sequence[Pod], wes: Sequence[WorkloadEntry]
                ) -> tuple[object, ...]:
    """Namespaces decide ambient or not (and a namespace-wide traffic distribution)."""
    namespaces = sorted({o.namespace for o in (*pods, *wes)} | {svc.namespace})
    return tuple(snapshot.get(Namespace, "", ns) for ns in namespaces)


def _sort_key(e: endpoint_components_pb2.LbEndpoint) -> tuple[str, str, int]:
    a = e.endpoint.address
    return (a.envoy_internal_address.endpoint_id, a.socket_address.address, a.socket_address.port_value)


def _plain_endpoint(address: str, port: int, health: int) -> endpoint_components_pb2.LbEndpoint:
    return endpoint_components_pb2.LbEndpoint(
        endpoint=endpoint_components_pb2.Endpoint(
            address=address_pb2.Address(socket_address=address_pb2.SocketAddress(address=address, port_value=port))),
        health_status=health)


def _tunnel_endpoint(ip: str, port: int, health: int) -> endpoint_components_pb2.LbEndpoint:
    """An ambient workload: reached through ``connect_originate`` (HBONE to ``ip:15008``), with the
    workload's ``ip:port`` as the tunnel target (original_dst metadata, passed through by the
    cluster's internal_upstream transport)."""
    target = f"{ip}:{port}"
    ep = endpoint_components_pb2.LbEndpoint(health_status=health)
    internal = ep.endpoint.address.envoy_internal_address
    internal.server_listener_name = CONNECT_ORIGINATE
    internal.endpoint_id = target
    ep.metadata.filter_metadata[ORIGINAL_DST_KEY].fields["local"].string_value = target
    return ep


def _workload_metadata(ep: endpoint_components_pb2.LbEndpoint, name: str, namespace: str,
                       labels: Mapping[str, str]) -> None:
    """Istio's ``istio.workload`` endpoint metadata: ``name;namespace;canonical name;revision;cluster``."""
    canonical = labels.get("service.istio.io/canonical-name") or labels.get("app.kubernetes.io/name") \
        or labels.get("app") or name
    revision = labels.get("service.istio.io/canonical-revision") or labels.get("app.kubernetes.io/version") \
        or labels.get("version") or ""
    revision = "" if revision == "latest" else revision
    ep.metadata.filter_metadata["istio"].fields["workload"].string_value = \
        f"{name};{namespace};{canonical};{revision};Kubernetes"

