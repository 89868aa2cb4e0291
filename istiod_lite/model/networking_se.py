"""ServiceEntry and WorkloadEntry (networking.istio.io v1/v1beta1/v1alpha3).

Fields and names follow istio/api ``service_entry.proto`` and ``workload_entry.proto`` (as rendered
in their CRD schemas, whose CEL rules are enforced too); the rules follow Istio's webhook
(``ValidateServiceEntry``, ``validateWorkloadEntry``).  A ServiceEntry endpoint *is* a
WorkloadEntry spec, validated further against the entry's resolution and ports.
"""

from __future__ import annotations

import posixpath
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, model_validator

from istiod_lite.model.base import IstioModel, Resource
from istiod_lite.model.kind_declaration import CDS, EDS, LDS, XDS_TYPES, KindDeclaration, StatusWriter, WaypointRead
from istiod_lite.model.networking_common import (
    UInt32,
    WorkloadSelector,
    check_export_to,
    check_fqdn,
    check_ip_subnet,
    check_labels,
    check_wildcard_domain,
    fail,
    is_dns_label,
    is_ip,
)
from istiod_lite.model.registry import register
from istiod_lite.model.types import PortNumber, bounded_str

UNIX_PREFIX = "unix://"
#: Protocol names Istio parses (``pkg/config/protocol``), compared case-insensitively.
_PROTOCOLS = frozenset({"tcp", "udp", "grpc", "grpc-web", "http", "http_proxy", "http2", "https", "tls",
                        "mongo", "redis", "mysql"})
_HTTP_PROTOCOLS = frozenset({"http", "http2", "http_proxy", "grpc", "grpc-web"})
_TLS_PROTOCOLS = frozenset({"https", "tls"})
#: Protocols a ``DYNAMIC_DNS`` entry may declare (Istio's webhook: HTTP, TLS, GRPC and HTTP2).
_DYNAMIC_DNS_PROTOCOLS = frozenset({"http", "tls", "grpc", "http2"})
#: The label that binds a resource to a waypoint (``istio.io/use-waypoint``; "none" opts out).
_USE_WAYPOINT = "istio.io/use-waypoint"


def _check_unix_path(path: str) -> str | None:
    if not path:
        return "unix address must not be empty"
    if path.startswith("@"):
        return None  # abstract socket
    if not posixpath.isabs(path) or path.endswith("/"):
        return f"{path} is not an absolute path to a file"
    return None


class WorkloadEntrySpec(IstioModel):
    """A workload outside Kubernetes (also the type of ``ServiceEntry.endpoints``)."""

    address: Annotated[str, bounded_str(256)] = ""
    ports: dict[str, PortNumber] = Field(default_factory=dict, max_length=128)
    labels: dict[str, str] = Field(default_factory=dict, max_length=256)
    network: Annotated[str, bounded_str(2048)] = ""
    locality: Annotated[str, bounded_str(2048)] = ""
    weight: UInt32 = 0
    service_account: Annotated[str, bounded_str(253)] = ""

    @property
    def is_unix(self) -> bool:
        return self.address.startswith(UNIX_PREFIX)

    @model_validator(mode="after")
    def _check(self) -> WorkloadEntrySpec:
        if not self.address and not self.network:
            raise ValueError("address is required")
        errs = []
        if self.is_unix:
            if err := _check_unix_path(self.address[len(UNIX_PREFIX):]):
                errs.append(err)
            if self.ports:
                errs.append(f"unix endpoint {self.address} must not include ports")
        elif self.address and not is_ip(self.address) and check_fqdn(self.address):
            errs.append(f"endpoint address {self.address!r} is not a valid FQDN or an IP address")
        errs += [f"invalid port name: {name}" for name in self.ports if not is_dns_label(name)]
        fail(errs + check_labels(self.labels))
        return self


class ServicePort(IstioModel):
    number: PortNumber
    protocol: Annotated[str, bounded_str(256)] = ""
    name: Annotated[str, bounded_str(256)]
    target_port: PortNumber | None = None

    @property
    def protocol_name(self) -> str:
        """Upper-cased protocol, ``""`` when unset (Istio sniffs it)."""
        return self.protocol.upper()

    @model_validator(mode="after")
    def _check(self) -> ServicePort:
        errs = [] if is_dns_label(self.name) else [f"invalid port name: {self.name}"]
        if self.protocol and self.protocol.lower() not in _PROTOCOLS:
            errs.append(f"unsupported protocol: {self.protocol}")
        fail(errs)
        return self


Resolution = Literal["NONE", "STATIC", "DNS", "DNS_ROUND_ROBIN", "DYNAMIC_DNS"]


class ServiceEntrySpec(IstioModel):
    hosts: tuple[str, ...] = Field(max_length=256)
    addresses: tuple[Annotated[str, bounded_str(64)], ...] = Field(default=(), max_length=256)
    ports: tuple[ServicePort, ...] = Field(default=(), max_length=256)
    location: Literal["MESH_EXTERNAL", "MESH_INTERNAL"] = "MESH_EXTERNAL"
    resolution: Resolution = "NONE"
    endpoints: tuple[WorkloadEntrySpec, ...] = Field(default=(), max_length=4096)
    workload_selector: WorkloadSelector | None = None
    export_to: tuple[str, ...] = ()
    subject_alt_names: tuple[str, ...] = ()

    def port(self, number: int) -> ServicePort | None:
        return next((p for p in self.ports if p.number == number), None)

    @model_validator(mode="after")
    def _check(self) -> ServiceEntrySpec:
        errs = [] if self.hosts else ["service entry must have at least one host"]
        if self.workload_selector is not None and self.endpoints:
            errs.append("only one of WorkloadSelector or Endpoints is allowed in Service Entry")
        for h in self.hosts:
            err = f"invalid host {h}" if h == "*" else check_wildcard_domain(h)
            errs += [err] if err else []
        errs += [e for a in self.addresses if (e := check_ip_subnet(a))]
        if any("/" in a for a in self.addresses) and self.resolution not in ("NONE", "STATIC"):
            errs.append("CIDR addresses are allowed only for NONE/STATIC resolution types")
        names: set[str] = set()
        numbers: set[int] = set()
        for p in self.ports:
            if p.name in names:
                errs.append(f"service entry port name {p.name!r} already defined")
            if p.number in numbers:
                errs.append(f"service entry port {p.number} already defined")
            names.add(p.name)
            numbers.add(p.number)
        errs += self._check_resolution(names)
        if self.resolution != "NONE" and len(self.hosts) > 1 and any(
            p.protocol.lower() not in _HTTP_PROTOCOLS | _TLS_PROTOCOLS for p in self.ports
        ):
            errs.append("multiple hosts provided with non-HTTP, non-TLS ports")
        fail(errs + check_export_to(self.export_to))
        return self

    def _check_resolution(self, port_names: set[str]) -> list[str]:
        errs: list[str] = []
        res = self.resolution
        if res == "NONE" and self.endpoints:
            errs.append("no endpoints should be provided for resolution type none")
        if res in ("DNS", "DNS_ROUND_ROBIN"):
            if not self.endpoints and any(check_fqdn(h) for h in self.hosts):
                errs.append(f"hosts must be FQDN if no endpoints are provided for resolution mode {res}")
            if res == "DNS_ROUND_ROBIN" and len(self.endpoints) > 1:
                errs.append(f"there must only be 0 or 1 endpoint for resolution mode {res}")
        if res == "DYNAMIC_DNS":
            errs += self._check_dynamic_dns()
        for ep in self.endpoints if res in ("STATIC", "DNS", "DNS_ROUND_ROBIN") else ():
            if res == "STATIC" and ep.address and not ep.is_unix and not is_ip(ep.address):
                errs.append(f"endpoint address {ep.address!r} is not a valid IP address")
            if res != "STATIC" and (ep.is_unix or not ep.address):
                errs.append(f"endpoint address {ep.address!r} is not a valid FQDN or an IP address")
            if res == "STATIC" and ep.is_unix and len(port_names) != 1:
                errs.append("exactly 1 service port required for unix endpoints")
            errs += [f"endpoint port {n} is not defined by the service entry" for n in ep.ports if n not in port_names]
        return errs

    def _check_dynamic_dns(self) -> list[str]:
        """Istio's rules for ``DYNAMIC_DNS`` (Envoy's dynamic forward proxy resolves the name the
        client sent): wildcard hosts only, no addresses, no endpoints, HTTP/TLS/GRPC/HTTP2 ports."""
        errs = [f"host must be wildcarded for resolution mode DYNAMIC_DNS: {h}"
                for h in self.hosts if not h.startswith("*")]
        if self.addresses:
            errs.append("addresses cannot be set for resolution type DYNAMIC_DNS (the destination comes from "
                        "the request's host or SNI)")
        if self.endpoints:
            errs.append("endpoints cannot be set for resolution type DYNAMIC_DNS (the destination is resolved "
                        "from the request's host or SNI)")
        if any(p.protocol.lower() not in _DYNAMIC_DNS_PROTOCOLS for p in self.ports):
            errs.append("only HTTP, TLS, GRPC, and HTTP2 protocols are supported for resolution type DYNAMIC_DNS")
        return errs


# Binding and addressing, like a Service (its hosts are served and routed to).
@register(KindDeclaration("serviceentries", XDS_TYPES, WaypointRead.WHOLE, status=StatusWriter.REJECTIONS,
                          ambient_status=True))
class ServiceEntry(Resource):
    KIND: ClassVar[str] = "ServiceEntry"
    GROUP: ClassVar[str] = "networking.istio.io"
    VERSIONS: ClassVar[tuple[str, ...]] = ("v1", "v1beta1", "v1alpha3")
    kind: Literal["ServiceEntry"]
    spec: ServiceEntrySpec
    status: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _check_waypoint(self) -> ServiceEntry:
        """Istio's webhook: a ``DYNAMIC_DNS`` entry bound to a waypoint must be ``MESH_EXTERNAL``."""
        use = self.metadata.labels.get(_USE_WAYPOINT, "")
        if (self.spec.resolution == "DYNAMIC_DNS" and self.spec.location == "MESH_INTERNAL"
                and use and use.lower() != "none"):
            raise ValueError("spec.location: MESH_INTERNAL with resolution type DYNAMIC_DNS is not supported "
                             "when using waypoints")
        return self


# Endpoints, but also the inline endpoints of DNS ServiceEntry clusters that select them (CDS)
# and, for entries bound to a workload waypoint, main_internal's workload addresses (LDS).
@register(KindDeclaration("workloadentries", frozenset({LDS, CDS, EDS}), WaypointRead.WHOLE,
                          status=StatusWriter.REJECTIONS))
class WorkloadEntry(Resource):
    KIND: ClassVar[str] = "WorkloadEntry"
    GROUP: ClassVar[str] = "networking.istio.io"
    VERSIONS: ClassVar[tuple[str, ...]] = ("v1", "v1beta1", "v1alpha3")
    kind: Literal["WorkloadEntry"]
    spec: WorkloadEntrySpec
    status: dict[str, Any] | None = None


__all__ = ["Resolution", "ServiceEntry", "ServiceEntrySpec", "ServicePort", "WorkloadEntry", "WorkloadEntrySpec"]
