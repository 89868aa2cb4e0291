"""Kubernetes core kinds: Namespace, Node, Service, Pod, ServiceAccount, EndpointSlice.

Lenient on purpose (see ``base.KubeModel``): a real manifest with containers, probes and resources
loads, and only the fields the control plane reads are kept.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, field_validator

from istiod_lite.model.base import KubeModel, KubeResource
from istiod_lite.model.kind_declaration import EDS, XDS_TYPES, KindDeclaration, WaypointRead
from istiod_lite.model.registry import register
from istiod_lite.model.types import PortNumber


# Binding and addressing: the ambient label and waypoint annotations decide which services a
# waypoint serves and how their endpoints are reached.
@register(KindDeclaration("namespaces", XDS_TYPES, WaypointRead.WHOLE, crd=False))
class Namespace(KubeResource):
    KIND: ClassVar[str] = "Namespace"
    NAMESPACED: ClassVar[bool] = False
    kind: Literal["Namespace"]


# Endpoint locality: a pod's region/zone/subzone are its node's topology labels (as istiod reads them).
@register(KindDeclaration("nodes", frozenset({EDS}), WaypointRead.WHOLE, crd=False))
class Node(KubeResource):
    KIND: ClassVar[str] = "Node"
    NAMESPACED: ClassVar[bool] = False
    kind: Literal["Node"]


class ServicePort(KubeModel):
    name: str = ""
    protocol: Literal["TCP", "UDP", "SCTP"] = "TCP"
    app_protocol: str = ""
    port: PortNumber
    #: int or named port; unset means "same as port".
    target_port: int | str | None = None


class ServiceSpec(KubeModel):
    type: str = "ClusterIP"
    cluster_ip: str = Field(default="", alias="clusterIP")
    cluster_ips: tuple[str, ...] = Field(default=(), alias="clusterIPs")
    selector: dict[str, str] | None = None
    ports: tuple[ServicePort, ...] = ()
    external_name: str = ""
    #: ``PreferClose`` / ``PreferSameZone`` / ``PreferSameNode``: locality-aware load balancing
    #: without a DestinationRule (translator/clusters/locality_lb.py).
    traffic_distribution: str | None = None
    #: Read for node proxies (ztunnel): IP families, node-local routing, not-ready endpoints.
    ip_families: tuple[str, ...] = Field(default=(), alias="ipFamilies")
    internal_traffic_policy: str = ""
    publish_not_ready_addresses: bool = False

    @field_validator("ports")
    @classmethod
    def _unique_ports(cls, ports: tuple[ServicePort, ...]) -> tuple[ServicePort, ...]:
        seen: set[tuple[int, str]] = set()
        for p in ports:
            if (p.port, p.protocol) in seen:
                raise ValueError(f"duplicate port {p.port}/{p.protocol}")
            seen.add((p.port, p.protocol))
        return ports


class ServiceStatus(KubeModel):
    """Only ``conditions`` is kept: the ambient status writer compares its ``istio.io/WaypointBound``
    condition with what is already there (controlplane/ambient_status.py), so it writes only on change."""

    conditions: tuple[dict[str, Any], ...] = ()


# Binding and addressing: which services a waypoint serves, their VIPs and ports.
@register(KindDeclaration("services", XDS_TYPES, WaypointRead.BOUND, crd=False, ambient_status=True))
class Service(KubeResource):
    KIND: ClassVar[str] = "Service"
    kind: Literal["Service"]
    spec: ServiceSpec = Field(default_factory=ServiceSpec)
    status: ServiceStatus | None = None

    @property
    def vips(self) -> tuple[str, ...]:
        """ClusterIPs, without the ``None`` of headless services."""
        ips = self.spec.cluster_ips or ((self.spec.cluster_ip,) if self.spec.cluster_ip else ())
        return tuple(ip for ip in ips if ip and ip != "None")


class ContainerPort(KubeModel):
    name: str = ""
    container_port: PortNumber
    protocol: str = "TCP"


class Container(KubeModel):
    name: str = ""
    ports: tuple[ContainerPort, ...] = ()


class PodSpec(KubeModel):
    service_account_name: str = "default"
    node_name: str = ""
    containers: tuple[Container, ...] = ()
    #: Read for node proxies (ztunnel): a host-network pod shares its node's address.
    host_network: bool = False


class PodIP(KubeModel):
    ip: str


class PodCondition(KubeModel):
    type: str
    status: str


class PodStatus(KubeModel):
    pod_ip: str = Field(default="", alias="podIP")
    pod_ips: tuple[PodIP, ...] = Field(default=(), alias="podIPs")
    phase: str = ""
    conditions: tuple[PodCondition, ...] = ()


# Endpoints only.
@register(KindDeclaration("pods", frozenset({EDS}), WaypointRead.WHOLE, crd=False))
class Pod(KubeResource):
    KIND: ClassVar[str] = "Pod"
    kind: Literal["Pod"]
    spec: PodSpec = Field(default_factory=PodSpec)
    status: PodStatus = Field(default_factory=PodStatus)

    @property
    def ips(self) -> tuple[str, ...]:
        if self.status.pod_ips:
            return tuple(p.ip for p in self.status.pod_ips)
        return (self.status.pod_ip,) if self.status.pod_ip else ()

    @property
    def ready(self) -> bool:
        """A pod with no Ready condition recorded (hand-written YAML) counts as ready."""
        for c in self.status.conditions:
            if c.type == "Ready":
                return c.status == "True"
        return self.status.phase in ("", "Running")

    def named_port(self, name: str) -> int | None:
        for c in self.spec.containers:
            for p in c.ports:
                if p.name == name:
                    return p.container_port
        return None


# Identities come from the CA, not from config: nothing to push.
@register(KindDeclaration("serviceaccounts", frozenset(), WaypointRead.NONE, crd=False))
class ServiceAccount(KubeResource):
    KIND: ClassVar[str] = "ServiceAccount"
    kind: Literal["ServiceAccount"]


class EndpointConditions(KubeModel):
    ready: bool | None = None
    serving: bool | None = None
    terminating: bool | None = None


class ObjectReference(KubeModel):
    kind: str = ""
    namespace: str = ""
    name: str = ""


class Endpoint(KubeModel):
    addresses: tuple[str, ...] = Field(min_length=1)
    conditions: EndpointConditions = Field(default_factory=EndpointConditions)
    target_ref: ObjectReference | None = None
    node_name: str = ""
    zone: str = ""


class EndpointPort(KubeModel):
    name: str = ""
    protocol: str = "TCP"
    port: Annotated[int, Field(ge=0, le=65535)] | None = None
    app_protocol: str = ""


# Endpoints of a Service: with a selector from its slices when it has any (else from the pods it
# selects), without one from its slices only (translator/clusters/endpoints.py).
@register(KindDeclaration("endpointslices", frozenset({EDS}), WaypointRead.WHOLE, crd=False))
class EndpointSlice(KubeResource):
    KIND: ClassVar[str] = "EndpointSlice"
    GROUP: ClassVar[str] = "discovery.k8s.io"
    kind: Literal["EndpointSlice"]
    address_type: Literal["IPv4", "IPv6", "FQDN"]
    endpoints: tuple[Endpoint, ...] = ()
    ports: tuple[EndpointPort, ...] = ()

    @property
    def service_name(self) -> str:
        return self.metadata.labels.get("kubernetes.io/service-name", "")
