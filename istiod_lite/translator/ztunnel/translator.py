"""The whole ztunnel translation, memoised per object: a pod edit rebuilds (and re-serialises) one address.

Indexes that every address needs (services by namespace, bindings, policies, localities) are built
once per translation; each address is then looked up in a memo keyed by its source object (by
identity: sources keep the same object for an unchanged resource) and everything else it was built
from.  A hit returns the very same message object, which ``VersionedCache`` does not serialise again.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any

from istiod_lite._generated.istio.workload import workload_pb2 as wl
from istiod_lite.model import ConfigSnapshot
from istiod_lite.model.core import EndpointSlice, Namespace, Pod, Service
from istiod_lite.model.networking import ServiceEntry, WorkloadEntry
from istiod_lite.translator.binding.waypoints import DATAPLANE_MODE, Waypoint, WaypointRef, bindings_of
from istiod_lite.translator.clusters import locality as _locality  # noqa: F401 (computes NODE_LOCALITIES)
from istiod_lite.translator.core import names as core_names
from istiod_lite.translator.core import tables
from istiod_lite.translator.core.output import EnvoyResources
from istiod_lite.translator.ztunnel import services as svcs
from istiod_lite.translator.ztunnel import workloads as wls
from istiod_lite.translator.ztunnel.authorization import build_authorizations, workload_policy_names
from istiod_lite.translator.ztunnel.names import ADDRESS, AUTHORIZATION, ZtunnelOptions, namespaced, network_address

#: Port Istio's waypoints accept HBONE on.
HBONE_PORT = 15008


@dataclass
class ZtunnelTranslation:
    resources: EnvoyResources
    #: Accepted-with-warning and not-served policies (``Kind ns/name: message``), sorted.
    warnings: list[str] = field(default_factory=list)


def waypoint_address(wp: Waypoint, network: str) -> wl.GatewayAddress | None:
    """How workloads name their waypoint: its hostname (preferred, as istiod), else its IP; None
    when the waypoint has no address yet (then nothing points at it)."""
    for value in wp.addresses:
        if network_address(network, value) is None:
            return wl.GatewayAddress(hostname=wl.NamespacedHostname(namespace=wp.ref.namespace, hostname=value),
                                     hbone_mtls_port=HBONE_PORT)
    for value in wp.addresses:
        addr = network_address(network, value)
        if addr is not None:
            return wl.GatewayAddress(address=addr, hbone_mtls_port=HBONE_PORT)
    return None


def node_localities(snapshot: ConfigSnapshot) -> dict[str, wl.Locality]:
    """Node name -> locality, from the one table the waypoint translator's locality load balancing
    reads too (``tables.NODE_LOCALITIES``: topology labels, the beta ones as fallback).  As istiod's
    ambient index (``getPodLocality``), a workload's locality is its node's only: the pod's
    ``istio-locality`` label is a sidecar-mode notion and is not consulted here."""
    return {name: wl.Locality(region=r, zone=z, subzone=sz)
            for name, (r, z, sz) in tables.NODE_LOCALITIES.of(snapshot).items()}


def _selects(selector: Mapping[str, str] | None, labels: Mapping[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in (selector or {}).items())


class ZtunnelTranslator:
    """Translates snapshots for node proxies, keeping the previous translation's messages to re-use."""

    def __init__(self, opts: ZtunnelOptions | None = None) -> None:
        self.opts = opts or ZtunnelOptions()
        #: memo key -> (source object, message); replaced by each translation (so it holds one generation).
        self._memo: dict[Hashable, tuple[Any, Any]] = {}
        self.last_built = 0

    def _memoised(self, new: dict[Hashable, tuple[Any, Any]], obj: Any, key: Hashable, build: Any) -> Any:
        hit = self._memo.get(key)
        if hit is not None and hit[0] is obj:
            value = hit[1]
        else:
            value = build()
            self.last_built += 1
        new[key] = (obj, value)
        return value

    def translate(self, snapshot: ConfigSnapshot) -> ZtunnelTranslation:
        opts = self.opts
        self.last_built = 0
        new: dict[Hashable, tuple[Any, Any]] = {}
        auth = build_authorizations(snapshot, opts.root_namespace)
        namespaces = {ns.name: ns.metadata.labels for ns in snapshot.of_kind(Namespace)}
        bindings = bindings_of(snapshot)
        gateway: dict[WaypointRef, bytes] = {}
        gateway_msg: dict[WaypointRef, wl.GatewayAddress | None] = {}
        for ref, wp in bindings.waypoints.items():
            gateway_msg[ref] = ga = waypoint_address(wp, opts.network)
            gateway[ref] = ga.SerializeToString(deterministic=True) if ga is not None else b""
        bound: dict[int, WaypointRef] = {}
        for table in (bindings.services, bindings.workloads, bindings.service_entries, bindings.workload_entries):
            for ref, objs in table.items():
                for o in objs:
                    bound[id(o)] = ref

        def waypoint_of(obj: object) -> tuple[bytes, wl.GatewayAddress | None]:
            ref = bound.get(id(obj))
            if ref is None:
                return b"", None
            return gateway[ref], gateway_msg[ref]

        def ambient(labels: Mapping[str, str], namespace: str) -> bool:
            mode = labels.get(DATAPLANE_MODE)
            if mode is not None:
                return mode == "ambient"
            return namespaces.get(namespace, {}).get(DATAPLANE_MODE) == "ambient"

        services = snapshot.of_kind(Service)
        entries = snapshot.of_kind(ServiceEntry)
        selecting_services: dict[str, list[Service]] = {}
        for s in services:
            if s.spec.selector:
                selecting_services.setdefault(s.namespace, []).append(s)
        selecting_entries: dict[str, list[ServiceEntry]] = {}
        for se in entries:
            if se.spec.workload_selector is not None and se.spec.workload_selector.labels:
                selecting_entries.setdefault(se.namespace, []).append(se)
        slices = snapshot.of_kind(EndpointSlice)
        by_host = {(s.namespace, s.name): s for s in services}
        # Pods a selectorless Service reaches through an EndpointSlice's targetRef.
        pod_slice_services: dict[tuple[str, str], list[Service]] = {}
        for es in slices:
            svc = by_host.get((es.namespace, es.service_name))
            if svc is None or svc.spec.selector:
                continue
            for ep in es.endpoints:
                if ep.target_ref is not None and ep.target_ref.kind == "Pod":
                    pod_slice_services.setdefault((es.namespace, ep.target_ref.name), []).append(svc)
        localities = node_localities(snapshot)

        addresses: dict[str, wl.Address] = {}

        # Services.
        for s in services:
            if s.spec.type == "ExternalName":
                continue
            wkey, wmsg = waypoint_of(s)
            name = namespaced(s.namespace, core_names.service_fqdn(s.name, s.namespace, opts.domain))
            addresses[name] = self._memoised(new, s, ("svc", id(s), wkey),
                                             lambda s=s, wmsg=wmsg: wl.Address(
                                                 service=svcs.kube_service(s, wmsg, opts)))
        for se in entries:
            wkey, wmsg = waypoint_of(se)
            built = self._memoised(new, se, ("se", id(se), wkey), lambda se=se, wmsg=wmsg: [
                wl.Address(service=x) for x in svcs.service_entry_services(se, wmsg, opts)])
            for a in built:
                addresses.setdefault(namespaced(se.namespace, a.service.hostname), a)

        # Workloads.
        for pod in snapshot.of_kind(Pod):
            labels = pod.metadata.labels
            owners: list[Service | ServiceEntry] = [s for s in selecting_services.get(pod.namespace, ())
                                                    if _selects(s.spec.selector, labels)]
            owners += [se for se in selecting_entries.get(pod.namespace, ())
                       if _selects(se.spec.workload_selector.labels if se.spec.workload_selector else None, labels)]
            seen = {id(o) for o in owners}
            owners += [s for s in pod_slice_services.get((pod.namespace, pod.name), ()) if id(s) not in seen]
            policies = workload_policy_names(auth, opts.root_namespace, pod.namespace, labels)
            wkey, wmsg = waypoint_of(pod)
            loc = localities.get(pod.spec.node_name)
            amb = ambient(labels, pod.namespace)
            key = ("pod", id(pod), tuple(id(o) for o in owners), policies, wkey,
                   loc.SerializeToString() if loc is not None else b"", amb)
            w = self._memoised(new, pod, key, lambda pod=pod, owners=owners, policies=policies, wmsg=wmsg, loc=loc,
                               amb=amb: self._address_of(wls.pod_workload(pod, opts, owners=owners, policies=policies,
                                                                          waypoint=wmsg, locality=loc, ambient=amb)))
            if w is not None:
                addresses[w.workload.uid] = w
        for we in snapshot.of_kind(WorkloadEntry):
            labels = wls.entry_labels(we)
            owners = [s for s in selecting_services.get(we.namespace, ()) if _selects(s.spec.selector, labels)]
            owners += [se for se in selecting_entries.get(we.namespace, ())
                       if _selects(se.spec.workload_selector.labels if se.spec.workload_selector else None, labels)]
            policies = workload_policy_names(auth, opts.root_namespace, we.namespace, labels)
            wkey, wmsg = waypoint_of(we)
            amb = ambient(labels, we.namespace)
            we_key = ("we", id(we), tuple(id(o) for o in owners), policies, wkey, amb)
            a = self._memoised(new, we, we_key, lambda we=we, owners=owners, policies=policies, wmsg=wmsg, amb=amb:
                               wl.Address(workload=wls.workload_entry_workload(we, opts, owners=owners,
                                                                              policies=policies, waypoint=wmsg,
                                                                              ambient=amb)))
            addresses[a.workload.uid] = a
        for se in entries:
            policies = workload_policy_names(auth, opts.root_namespace, se.namespace, se.metadata.labels)
            amb = ambient(se.metadata.labels, se.namespace)
            se_key = ("se-wl", id(se), policies, amb)
            built = self._memoised(new, se, se_key, lambda se=se, policies=policies, amb=amb: [
                wl.Address(workload=x) for x in wls.service_entry_workloads(se, opts, policies=policies, ambient=amb)])
            for a in built:
                addresses.setdefault(a.workload.uid, a)
        for es in slices:
            svc = by_host.get((es.namespace, es.service_name))
            if svc is None:
                continue
            built = self._memoised(new, es, ("es", id(es), id(svc)), lambda es=es, svc=svc: [
                wl.Address(workload=x) for x in wls.endpoint_slice_workloads(es, svc, opts)])
            for a in built:
                addresses.setdefault(a.workload.uid, a)

        self._memo = new
        out = EnvoyResources({ADDRESS: dict(sorted(addresses.items())), AUTHORIZATION: dict(auth.policies)})
        return ZtunnelTranslation(out, sorted(auth.warnings))

    @staticmethod
    def _address_of(w: wl.Workload | None) -> wl.Address | None:
        return None if w is None else wl.Address(workload=w)
