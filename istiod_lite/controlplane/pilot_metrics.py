"""The rest of the ``pilot_*`` series Istio's control-plane dashboard reads, with Istio's names and
meanings (``pilot/pkg/model/monitoring.go``, ``pilot/pkg/config/kube/crdclient``,
``serviceregistry/kube/controller``): the build info, config and registry events, the number of
services and virtual services known, and internal errors.

Events come from what the config sources hand over: each changed resource is an ``add`` (new),
``update`` or ``delete`` (gone), counted under ``pilot_k8s_reg_events`` for the Kubernetes registry's
kinds (as Istio: ``Services``, ``Pods``, ...) and under ``pilot_k8s_cfg_events`` for the config kinds
(Istio's kind names: ``VirtualService``, ``Telemetry``, ...).  The first load counts every resource
as an ``add``, as Istio's informers do at start.

Also here: Istio's older per-type reject gauges (``pilot_xds_{cds,eds,lds,rds}_reject{node,err}``,
kept by istiod for dashboards written before ``pilot_total_xds_rejects``), fed by the xDS server's
NACK listener (the xDS layer knows type URLs, not Istio's metric names); the listener-conflict
gauges, which stay 0 for waypoints (see ``CONFLICT_GAUGES``); and the process and Python runtime
series (``process_*``, ``python_*``) that stand where istiod has ``go_*``.
"""

from __future__ import annotations

from collections.abc import Iterable
from importlib import metadata
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, GCCollector, ProcessCollector

from istiod_lite.model import ConfigSnapshot, ResourceKey
from istiod_lite.model.core import Service
from istiod_lite.model.networking import ServiceEntry, VirtualService
from istiod_lite.xds.typeurls import CLUSTER, ENDPOINT, LISTENER, ROUTE

#: Istio's registry event types (kind -> ``type`` label of ``pilot_k8s_reg_events``).
REGISTRY_TYPES: Final[dict[str, str]] = {
    "Service": "Services", "Pod": "Pods", "Namespace": "Namespaces", "Node": "Nodes",
    "Endpoints": "Endpoints", "EndpointSlice": "EndpointSlice",
}
#: Kinds that are neither registry nor Istio/Gateway config (no Istio event counts them).
_UNCOUNTED: Final = frozenset({"ServiceAccount", "Secret", "ConfigMap"})

#: The types istiod keeps a per-type reject gauge for, and the gauge's name.
REJECT_GAUGES: Final[dict[str, str]] = {
    CLUSTER: "pilot_xds_cds_reject", ENDPOINT: "pilot_xds_eds_reject", LISTENER: "pilot_xds_lds_reject",
    ROUTE: "pilot_xds_rds_reject",
}
#: The ``err`` label: the NACK's ``error_detail.code`` as Go's ``codes.Code.String()`` spells it.
GRPC_CODE_NAMES: Final = (
    "OK", "Canceled", "Unknown", "InvalidArgument", "DeadlineExceeded", "NotFound", "AlreadyExists",
    "PermissionDenied", "ResourceExhausted", "FailedPrecondition", "Aborted", "OutOfRange", "Unimplemented",
    "Internal", "Unavailable", "DataLoss", "Unauthenticated",
)
#: Distinct ``node`` values the reject gauges keep; NACKs from further nodes count under ``other``.
#: (Node ids are chosen by clients; istiod keeps one series per node forever, which a churn of
#: proxies, or one client inventing ids, would grow without bound.)
MAX_REJECT_NODES: Final = 1000
#: istiod's listener-conflict gauges.  Both count conflicts between a sidecar's per-port listeners
#: (two TCP services on one outbound port; two services selecting one inbound port of a pod).  A
#: waypoint has no per-port listeners (one listener, one filter-chain matcher), so istiod records 0
#: for a waypoint-only mesh, and so does istiod-lite.
CONFLICT_GAUGES: Final[dict[str, str]] = {
    "pilot_conflict_inbound_listener": "Number of conflicting inbound listeners.",
    "pilot_conflict_outbound_listener_tcp_over_current_tcp": "Number of conflicting tcp listeners with current "
                                                             "tcp listener.",
}


def grpc_code_name(code: int) -> str:
    return GRPC_CODE_NAMES[code] if 0 <= code < len(GRPC_CODE_NAMES) else f"Code({code})"


def build_version() -> str:
    try:
        return metadata.version("istiod-lite")
    except metadata.PackageNotFoundError:
        return "unknown"


class PilotMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.build = Gauge("istio_build", "Istio component build info", ["component", "tag"], registry=registry)
        self.build.labels(component="pilot", tag=build_version()).set(1)
        self.cfg_events = Counter("pilot_k8s_cfg_events", "Events from k8s config.", ["type", "event"],
                                  registry=registry)
        self.reg_events = Counter("pilot_k8s_reg_events", "Events from k8s registry.", ["type", "event"],
                                  registry=registry)
        self.services = Gauge("pilot_services", "Total services known to pilot.", registry=registry)
        self.virt_services = Gauge("pilot_virt_services", "Total virtual services known to pilot.",
                                   registry=registry)
        self.internal_errors = Counter("pilot_total_xds_internal_errors", "Total number of internal XDS errors "
                                       "in pilot.", registry=registry)
        self.type_rejects = {
            type_url: Gauge(name, f"Pilot rejected {name.split('_')[2].upper()} configs.", ["node", "err"],
                            registry=registry)
            for type_url, name in REJECT_GAUGES.items()
        }
        self._reject_nodes: set[str] = set()
        self.conflicts = [Gauge(name, doc, registry=registry) for name, doc in CONFLICT_GAUGES.items()]
        for gauge in self.conflicts:
            gauge.set(0)
        ProcessCollector(registry=registry)
        GCCollector(registry=registry)

    def rejected(self, type_url: str, node_id: str, code: int) -> None:
        """A NACK (the xDS server's reject listener): istiod's per-type gauge goes up by one."""
        gauge = self.type_rejects.get(type_url)
        if gauge is None:
            return
        if node_id not in self._reject_nodes:
            if len(self._reject_nodes) >= MAX_REJECT_NODES:
                node_id = "other"
            else:
                self._reject_nodes.add(node_id)
        gauge.labels(node=node_id, err=grpc_code_name(code)).inc()

    def _event(self, kind: str, event: str) -> None:
        if kind in _UNCOUNTED:
            return
        registry_type = REGISTRY_TYPES.get(kind)
        if registry_type is not None:
            self.reg_events.labels(type=registry_type, event=event).inc()
        else:
            self.cfg_events.labels(type=kind, event=event).inc()

    def observe(self, old: ConfigSnapshot | None, new: ConfigSnapshot, changed: Iterable[ResourceKey]) -> None:
        """Count the events between ``old`` and ``new`` (``changed``: the keys that differ; every key
        of ``new`` when ``old`` is ``None``) and set the totals."""
        if old is None:
            for key in new.keys():  # noqa: SIM118 (a snapshot is not iterable)
                self._event(key.kind, "add")
        else:
            for key in changed:
                before, after = old.get_key(key), new.get_key(key)
                if before is None and after is not None:
                    self._event(key.kind, "add")
                elif before is not None and after is None:
                    self._event(key.kind, "delete")
                elif before is not None:
                    self._event(key.kind, "update")
        hosts = {f"{s.name}.{s.namespace}" for s in new.of_kind(Service)}
        hosts |= {f"{h}@{se.namespace}" for se in new.of_kind(ServiceEntry) for h in se.spec.hosts}
        self.services.set(len(hosts))
        self.virt_services.set(len(new.of_kind(VirtualService)))


__all__ = ["CONFLICT_GAUGES", "REJECT_GAUGES", "PilotMetrics", "build_version", "grpc_code_name"]
