"""The rest of the ``pilot_*`` series Istio's control-plane dashboard reads, with Istio's names and
meanings (``pilot/pkg/model/monitoring.go``, ``pilot/pkg/config/kube/crdclient``,
``serviceregistry/kube/controller``): the build info, config and registry events, the number of
services and virtual services known, and internal errors.

Events come from what the config sources hand over: each changed resource is an ``add`` (new),
``update`` or ``delete`` (gone), counted under ``pilot_k8s_reg_events`` for the Kubernetes registry's
kinds (as Istio: ``Services``, ``Pods``, ...) and under ``pilot_k8s_cfg_events`` for the config kinds
(Istio's kind names: ``VirtualService``, ``Telemetry``, ...).  The first load counts every resource
as an ``add``, as Istio's informers do at start.
"""

from __future__ import annotations

from collections.abc import Iterable
from importlib import metadata
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge

from istiod_lite.model import ConfigSnapshot, ResourceKey
from istiod_lite.model.core import Service
from istiod_lite.model.networking import ServiceEntry, VirtualService

#: Istio's registry event types (kind -> ``type`` label of ``pilot_k8s_reg_events``).
REGISTRY_TYPES: Final[dict[str, str]] = {
    "Service": "Services", "Pod": "Pods", "Namespace": "Namespaces", "Node": "Nodes",
    "Endpoints": "Endpoints", "EndpointSlice": "EndpointSlice",
}
#: Kinds that are neither registry nor Istio/Gateway config (no Istio event counts them).
_UNCOUNTED: Final = frozenset({"ServiceAccount", "Secret", "ConfigMap"})


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


__all__ = ["PilotMetrics", "build_version"]
