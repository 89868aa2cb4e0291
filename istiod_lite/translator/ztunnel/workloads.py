"""``istio.workload.Workload`` from Pods, WorkloadEntries, ServiceEntry endpoints and EndpointSlices.

Built as istiod builds them.

Each builder takes what it needs already looked up (selecting services, policy names, waypoint,
locality), so it is a pure function of its arguments and the translator can memoise it on them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from istiod_lite._generated.istio.workload import workload_pb2 as wl
from istiod_lite.model.core import EndpointSlice, Pod, Service
from istiod_lite.model.networking import ServiceEntry, WorkloadEntry
from istiod_lite.model.networking_se import WorkloadEntrySpec
from istiod_lite.translator.core import names as core_names
from istiod_lite.translator.ztunnel.names import (
    ZtunnelOptions,
    endpoint_slice_uid,
    ip_bytes,
    namespaced,
    pod_uid,
    service_entry_uid,
    workload_entry_uid,
)

#: A service a workload belongs to.
Owner = Service | ServiceEntry

AMBIENT_REDIRECTION = "ambient.istio.io/redirection"
TUNNEL_LABEL = "networking.istio.io/tunnel"
_NAME_LABELS = ("service.istio.io/canonical-name", "app.kubernetes.io/name", "app")
_REVISION_LABELS = ("service.istio.io/canonical-revision", "app.kubernetes.io/version", "version")


def canonical(labels: Mapping[str, str], workload_name: str) -> tuple[str, str]:
    """Istio's canonical service name and revision: the first label present, else the workload name / ``latest``."""
    name = next((labels[k] for k in _NAME_LABELS if k in labels), workload_name)
    revision = next((labels[k] for k in _REVISION_LABELS if k in labels), "latest")
    return name, revision


def set_tunnel(w: wl.Workload, labels: Mapping[str, str], annotations: Mapping[str, str], ambient: bool) -> None:
    """HBONE for captured workloads.  istio-cni marks a captured pod with the annotation
    ``ambient.istio.io/redirection: enabled``; without CNI (YAML mode) the ambient label decides.
    A workload declaring ``networking.istio.io/tunnel: http`` speaks HBONE itself."""
    redirection = annotations.get(AMBIENT_REDIRECTION)
    if redirection == "enabled" or (redirection is None and ambient):
        w.tunnel_protocol = wl.HBONE
    if labels.get(TUNNEL_LABEL) == "http":
        w.tunnel_protocol = wl.HBONE
        w.native_tunnel = True


def workload_name_of_pod(pod: Pod) -> str:
    """The Deployment (via its ReplicaSet), CronJob (via its Job) or other owner's name; else the pod's."""
    for ref in pod.metadata.owner_references:
        name = ref.name
        if ref.kind == "ReplicaSet":
            h = pod.metadata.labels.get("pod-template-hash", "")
            return name[: -len(h) - 1] if h and name.endswith("-" + h) else name
        if ref.kind == "Job":
            # A CronJob's job is NAME-<scheduled time in minutes>; Istio names the CronJob.
            base, sep, suffix = name.rpartition("-")
            return base if sep and suffix.isdigit() else name
        return name
    return pod.name


def _locality(text: str) -> wl.Locality | None:
    parts = [*text.split("/"), "", "", ""][:3]
    return wl.Locality(region=parts[0], zone=parts[1], subzone=parts[2]) if any(parts) else None


def _pod_ports(pod: Pod, owner: Owner) -> wl.PortList:
    pl = wl.PortList()
    if isinstance(owner, Service):
        for p in owner.spec.ports:
            if isinstance(p.target_port, str):
                tp = pod.named_port(p.target_port)
                if tp is None:
                    continue  # the pod does not declare the named port: not served on it
                pl.ports.add(service_port=p.port, target_port=tp)
            else:
                pl.ports.add(service_port=p.port, target_port=p.port if p.target_port is None else p.target_port)
    else:
        for sp in owner.spec.ports:
            target = pod.named_port(sp.name) if sp.name else None
            pl.ports.add(service_port=sp.number, target_port=target or sp.target_port or sp.number)
    return pl


def _entry_ports(entry: WorkloadEntrySpec, owner: Owner) -> wl.PortList:
    pl = wl.PortList()
    if isinstance(owner, Service):
        for p in owner.spec.ports:
            if isinstance(p.target_port, str):
                if p.target_port not in entry.ports:
                    continue
                target = entry.ports[p.target_port]
            else:
                target = entry.ports.get(p.name, p.port if p.target_port is None else p.target_port)
            pl.ports.add(service_port=p.port, target_port=target)
    else:
        for sp in owner.spec.ports:
            pl.ports.add(service_port=sp.number, target_port=entry.ports.get(sp.name, sp.target_port or sp.number))
    return pl


def _owner_keys(owner: Owner, opts: ZtunnelOptions) -> list[str]:
    if isinstance(owner, Service):
        return [namespaced(owner.namespace, core_names.service_fqdn(owner.name, owner.namespace, opts.domain))]
    return [namespaced(owner.namespace, h) for h in owner.spec.hosts]


def pod_workload(pod: Pod, opts: ZtunnelOptions, *, owners: Sequence[Owner], policies: Sequence[str],
                 waypoint: wl.GatewayAddress | None, locality: wl.Locality | None, ambient: bool,
                 extra_services: Mapping[str, wl.PortList] | None = None) -> wl.Workload | None:
    """None for a pod that is finished or has no (valid) IP, as istiod skips them."""
    if pod.status.phase in ("Succeeded", "Failed") or not pod.ips:
        return None
    parsed = [ip_bytes(ip) for ip in pod.ips]
    addresses = [a for a in parsed if a is not None]
    if len(addresses) != len(parsed):
        return None
    w = wl.Workload(uid=pod_uid(opts, pod.namespace, pod.name), name=pod.name, namespace=pod.namespace,
                    addresses=addresses, network=opts.network, cluster_id=opts.cluster_id,
                    service_account=pod.spec.service_account_name, node=pod.spec.node_name,
                    authorization_policies=policies, trust_domain=opts.workload_trust_domain,
                    workload_type=wl.POD)
    if not pod.ready or pod.metadata.deletion_timestamp:
        w.status = wl.UNHEALTHY
    if waypoint is not None:
        w.waypoint.CopyFrom(waypoint)
    if locality is not None:
        w.locality.CopyFrom(locality)
    if pod.spec.host_network:
        w.network_mode = wl.HOST_NETWORK
    for owner in owners:
        for key in _owner_keys(owner, opts):
            w.services[key].CopyFrom(_pod_ports(pod, owner))
    for key, pl in (extra_services or {}).items():
        w.services[key].CopyFrom(pl)
    w.workload_name = workload_name_of_pod(pod)
    w.canonical_name, w.canonical_revision = canonical(pod.metadata.labels, w.workload_name)
    set_tunnel(w, pod.metadata.labels, pod.metadata.annotations, ambient)
    return w


def entry_labels(we: WorkloadEntry) -> dict[str, str]:
    """A WorkloadEntry's labels: its metadata's and its spec's (the spec's win, as in istiod)."""
    return {**we.metadata.labels, **we.spec.labels}


def _entry_common(w: wl.Workload, entry: WorkloadEntrySpec, opts: ZtunnelOptions) -> None:
    raw = ip_bytes(entry.address)
    if raw is not None:
        w.addresses.append(raw)
    else:
        w.hostname = entry.address
    w.network = entry.network or opts.network
    if entry.weight > 0:
        w.capacity.value = entry.weight
    loc = _locality(entry.locality)
    if loc is not None:
        w.locality.CopyFrom(loc)


def workload_entry_workload(we: WorkloadEntry, opts: ZtunnelOptions, *, owners: Sequence[Owner],
                            policies: Sequence[str], waypoint: wl.GatewayAddress | None, ambient: bool) -> wl.Workload:
    labels = entry_labels(we)
    w = wl.Workload(uid=workload_entry_uid(opts, we.namespace, we.name), name=we.name, namespace=we.namespace,
                    cluster_id=opts.cluster_id, service_account=we.spec.service_account,
                    authorization_policies=policies, trust_domain=opts.workload_trust_domain, workload_type=wl.POD)
    _entry_common(w, we.spec, opts)
    if waypoint is not None:
        w.waypoint.CopyFrom(waypoint)
    for owner in owners:
        for key in _owner_keys(owner, opts):
            w.services[key].CopyFrom(_entry_ports(we.spec, owner))
    w.workload_name = we.metadata.labels.get("service.istio.io/workload-name", we.name)
    w.canonical_name, w.canonical_revision = canonical(labels, w.workload_name)
    set_tunnel(w, labels, we.metadata.annotations, ambient)
    return w


def service_entry_workloads(se: ServiceEntry, opts: ZtunnelOptions, *, policies: Sequence[str],
                            ambient: bool) -> list[wl.Workload]:
    """Inline endpoints; a DNS entry without endpoints or selector gets one per host (its hostname)."""
    spec = se.spec
    implicit = not spec.endpoints and spec.resolution in ("DNS", "DNS_ROUND_ROBIN", "DYNAMIC_DNS") \
        and spec.workload_selector is None
    entries: list[tuple[WorkloadEntrySpec, Sequence[str]]]
    if implicit:
        entries = [(WorkloadEntrySpec(address=h), (h,)) for h in spec.hosts]
    else:
        entries = [(ep, spec.hosts) for ep in spec.endpoints]
    out = []
    for entry, hosts in entries:
        w = wl.Workload(uid=service_entry_uid(opts, se.namespace, se.name, entry.address), name=se.name,
                        namespace=se.namespace, cluster_id=opts.cluster_id, service_account=entry.service_account,
                        authorization_policies=policies, trust_domain=opts.workload_trust_domain,
                        workload_type=wl.POD, workload_name=se.name)
        _entry_common(w, entry, opts)
        for host in hosts:
            pl = w.services[namespaced(se.namespace, host)]
            for sp in spec.ports:
                pl.ports.add(service_port=sp.number, target_port=entry.ports.get(sp.name, sp.target_port or sp.number))
        w.canonical_name, w.canonical_revision = canonical(se.metadata.labels, se.name)
        set_tunnel(w, se.metadata.labels, se.metadata.annotations, ambient)
        out.append(w)
    return out


def endpoint_slice_workloads(es: EndpointSlice, svc: Service, opts: ZtunnelOptions) -> list[wl.Workload]:
    """Endpoints of a slice that are not pods (a selectorless Service's): opaque addresses, outbound only."""
    if es.address_type == "FQDN":
        return []
    key = namespaced(es.namespace, core_names.service_fqdn(svc.name, svc.namespace, opts.domain))
    pl = wl.PortList()
    for p in es.ports:
        if p.port is None or p.protocol != "TCP":
            continue
        for sp in svc.spec.ports:
            if sp.name == p.name:
                pl.ports.add(service_port=sp.port, target_port=p.port)
                break
    out = []
    seen: set[str] = set()
    for ep in es.endpoints:
        if ep.target_ref is not None and ep.target_ref.kind == "Pod":
            continue  # the Pod is its own, richer workload
        first = ep.addresses[0]
        parsed = [ip_bytes(a) for a in ep.addresses]
        addresses = [a for a in parsed if a is not None]
        if first in seen or len(addresses) != len(parsed):
            continue
        seen.add(first)
        w = wl.Workload(uid=endpoint_slice_uid(opts, es.namespace, es.name, first), name=es.name,
                        namespace=es.namespace, addresses=addresses, network=opts.network,
                        trust_domain=opts.workload_trust_domain, cluster_id=opts.cluster_id,
                        network_mode=wl.HOST_NETWORK)
        w.services[key].CopyFrom(pl)
        if ep.conditions.ready is False:
            w.status = wl.UNHEALTHY
        out.append(w)
    return out
