"""gateway.networking.k8s.io route kinds beyond HTTPRoute: GRPCRoute, TCPRoute and TLSRoute.

Waypoints apply them when a ``parentRef`` names a Service or ServiceEntry (mesh routes), as Istio
converts them (``translator/routing/grpcroute.py``, ``translator/routing/l4route.py``).

Versions: the ones Istio reads (Gateway API v1.6 serves v1 of all three; v1alpha2 is kept so
older manifests load).  The limits the CRDs enforce are checked here with their field path; where
v1 is stricter than v1alpha2 (TCPRoute/TLSRoute take one rule, a v1 TLSRoute needs ``hostnames``)
the object's ``apiVersion`` decides, as the API server would.

Shared pieces (parent references, header filters, mirrors, hostnames) are the ones HTTPRoute uses
(``model/gateway.py``); only what differs is defined here.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, model_validator

from istiod_lite.model import gateway as gw
from istiod_lite.model.base import IstioModel, Resource
from istiod_lite.model.kind_declaration import CDS, EDS, LDS, RDS, KindDeclaration, WaypointRead
from istiod_lite.model.networking_common import fail
from istiod_lite.model.registry import register
from istiod_lite.model.types import PortNumber, bounded_int, bounded_str

_VERSIONS = ("v1", "v1alpha2")
#: The CRDs' CEL rules for an ``Exact`` gRPC service and method name.
_GRPC_SERVICE = re.compile(r"^\.?[a-z_][a-z_0-9]*(\.[a-z_][a-z_0-9]*)*$", re.IGNORECASE)
_GRPC_METHOD = re.compile(r"^[A-Za-z_][A-Za-z_0-9]*$")
#: Attaching a mesh route to a service replaces its VirtualServices on the waypoint: HTTP routes
#: (RDS) and the TCP chain's ``tcp_proxy`` (LDS) both change; targets add clusters and endpoints.
_ROUTE_AFFECTS = frozenset({LDS, RDS, CDS, EDS})


class L4BackendRef(IstioModel):
    """A plain ``BackendRef`` (TCPRoute, TLSRoute): no filters."""

    group: gw.Group = ""
    kind: gw.Kind = "Service"
    name: gw.ObjectName
    namespace: gw.Namespace | None = None
    port: PortNumber | None = None
    weight: Annotated[int, bounded_int(0, 1_000_000)] = 1

    @model_validator(mode="after")
    def _check(self) -> L4BackendRef:
        if self.kind == "Service" and self.group in ("", "core") and self.port is None:
            fail(["Must have port for Service reference"])
        return self


# --------------------------------------------------------------------------- GRPCRoute


class GRPCMethodMatch(IstioModel):
    type: Literal["Exact", "RegularExpression"] = "Exact"
    service: Annotated[str, bounded_str(1024)] | None = None
    method: Annotated[str, bounded_str(1024)] | None = None

    @model_validator(mode="after")
    def _check(self) -> GRPCMethodMatch:
        errs = []
        if self.service is None and self.method is None:
            errs.append("One or both of 'service' or 'method' must be specified")
        if self.type == "Exact":
            if self.service is not None and not _GRPC_SERVICE.match(self.service):
                errs.append(f"service {self.service!r} must only contain valid characters "
                            "(matching ^(?i)\\.?[a-z_][a-z_0-9]*(\\.[a-z_][a-z_0-9]*)*$)")
            if self.method is not None and not _GRPC_METHOD.match(self.method):
                errs.append(f"method {self.method!r} must only contain valid characters "
                            "(matching ^[A-Za-z_][A-Za-z_0-9]*$)")
        else:  # the regex Istio builds from them must compile (and fit) in RE2, as Envoy's will
            for part in (self.service, self.method):
                if part is not None:
                    gw.RE2_ADAPTER.validate_python(part)
        fail(errs)
        return self


class GRPCHeaderMatch(IstioModel):
    type: Literal["Exact", "RegularExpression"] = "Exact"
    name: gw.HeaderName
    value: Annotated[str, bounded_str(4096)]

    @model_validator(mode="after")
    def _check(self) -> GRPCHeaderMatch:
        if not self.value:
            fail(["value must not be empty"])
        if self.type == "RegularExpression":
            gw.RE2_ADAPTER.validate_python(self.value)
        return self


class GRPCRouteMatch(IstioModel):
    method: GRPCMethodMatch | None = None
    headers: tuple[GRPCHeaderMatch, ...] = Field(default=(), max_length=16)

    @model_validator(mode="after")
    def _check(self) -> GRPCRouteMatch:
        names = [h.name.lower() for h in self.headers]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            fail([f"headers must not contain duplicate names: {', '.join(dup)}"])
        return self


_GRPC_FILTER_FIELDS = {
    "RequestHeaderModifier": "request_header_modifier",
    "ResponseHeaderModifier": "response_header_modifier",
    "RequestMirror": "request_mirror",
    "ExtensionRef": "extension_ref",
}


class GRPCRouteFilter(IstioModel):
    """One filter; exactly the field its ``type`` names must be set (the CRD's CEL rule)."""

    type: Literal["RequestHeaderModifier", "ResponseHeaderModifier", "RequestMirror", "ExtensionRef"]
    request_header_modifier: gw.HTTPHeaderFilter | None = None
    response_header_modifier: gw.HTTPHeaderFilter | None = None
    request_mirror: gw.HTTPRequestMirrorFilter | None = None
    extension_ref: gw.LocalObjectReference | None = None

    @model_validator(mode="after")
    def _check(self) -> GRPCRouteFilter:
        want = _GRPC_FILTER_FIELDS[self.type]
        errs = []
        if getattr(self, want) is None:
            errs.append(f"filter.{type(self).model_fields[want].alias} must be specified for {self.type} filter.type")
        for typ, attr in _GRPC_FILTER_FIELDS.items():
            if attr != want and getattr(self, attr) is not None:
                errs.append(f"filter.{type(self).model_fields[attr].alias} must be nil if the filter.type is not {typ}")
        fail(errs)
        return self


def _no_repeated_modifiers(filters: tuple[GRPCRouteFilter, ...]) -> list[str]:
    types = [f.type for f in filters]
    return [f"{t} filter cannot be repeated" for t in ("RequestHeaderModifier", "ResponseHeaderModifier")
            if types.count(t) > 1]


class GRPCBackendRef(L4BackendRef):
    filters: tuple[GRPCRouteFilter, ...] = Field(default=(), max_length=16)

    @model_validator(mode="after")
    def _check_filters(self) -> GRPCBackendRef:
        fail(_no_repeated_modifiers(self.filters))
        return self


class GRPCRouteRule(IstioModel):
    name: gw.SectionName | None = None
    matches: tuple[GRPCRouteMatch, ...] = Field(default=(), max_length=64)
    filters: tuple[GRPCRouteFilter, ...] = Field(default=(), max_length=16)
    backend_refs: tuple[GRPCBackendRef, ...] = Field(default=(), max_length=16)
    session_persistence: gw.SessionPersistence | None = None

    @model_validator(mode="after")
    def _check(self) -> GRPCRouteRule:
        fail(_no_repeated_modifiers(self.filters))
        return self


class GRPCRouteSpec(gw.CommonRouteSpec):
    hostnames: tuple[gw.Hostname, ...] = Field(default=(), max_length=16)
    rules: tuple[GRPCRouteRule, ...] = Field(default=(), max_length=16)

    @model_validator(mode="after")
    def _check(self) -> GRPCRouteSpec:
        errs = []
        if sum(len(r.matches) for r in self.rules) > 128:
            errs.append("While 16 rules and 64 matches per rule are allowed, the total number of matches across "
                        "all rules in a route must be less than 128")
        names = [r.name for r in self.rules if r.name]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            errs.append(f"Rule name must be unique within the route: {', '.join(dup)}")
        fail(errs)
        return self


@register(KindDeclaration("grpcroutes", _ROUTE_AFFECTS, WaypointRead.NARROWER))
class GRPCRoute(Resource):
    KIND: ClassVar[str] = "GRPCRoute"
    GROUP: ClassVar[str] = gw.GROUP
    VERSIONS: ClassVar[tuple[str, ...]] = _VERSIONS
    kind: Literal["GRPCRoute"]
    spec: GRPCRouteSpec = Field(default_factory=GRPCRouteSpec)
    status: dict[str, Any] | None = None


# --------------------------------------------------------------------------- TCPRoute, TLSRoute


class L4RouteRule(IstioModel):
    """A ``TCPRouteRule`` or ``TLSRouteRule``: a name and 1 to 16 backends."""

    name: gw.SectionName | None = None
    backend_refs: tuple[L4BackendRef, ...] = Field(min_length=1, max_length=16)


class TCPRouteSpec(gw.CommonRouteSpec):
    rules: tuple[L4RouteRule, ...] = Field(min_length=1, max_length=16)


class TLSRouteSpec(gw.CommonRouteSpec):
    hostnames: tuple[gw.Hostname, ...] = Field(default=(), max_length=1024)
    rules: tuple[L4RouteRule, ...] = Field(min_length=1, max_length=16)


def _v1_limits(api_version: str, rules: int, hostnames: int | None) -> None:
    """What v1 allows less of than v1alpha2 (the API server checks the version it is sent)."""
    if not api_version.endswith("/v1"):
        return
    errs = []
    if rules > 1:
        errs.append(f"spec.rules: must have at most 1 item in {api_version} (has {rules})")
    if hostnames == 0:
        errs.append(f"spec.hostnames: at least one hostname is required in {api_version}")
    fail(errs)


@register(KindDeclaration("tcproutes", _ROUTE_AFFECTS, WaypointRead.NARROWER))
class TCPRoute(Resource):
    KIND: ClassVar[str] = "TCPRoute"
    GROUP: ClassVar[str] = gw.GROUP
    VERSIONS: ClassVar[tuple[str, ...]] = _VERSIONS
    kind: Literal["TCPRoute"]
    spec: TCPRouteSpec
    status: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _check_version(self) -> TCPRoute:
        _v1_limits(self.api_version, len(self.spec.rules), None)
        return self


@register(KindDeclaration("tlsroutes", _ROUTE_AFFECTS, WaypointRead.NARROWER))
class TLSRoute(Resource):
    KIND: ClassVar[str] = "TLSRoute"
    GROUP: ClassVar[str] = gw.GROUP
    VERSIONS: ClassVar[tuple[str, ...]] = _VERSIONS
    kind: Literal["TLSRoute"]
    spec: TLSRouteSpec
    status: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _check_version(self) -> TLSRoute:
        _v1_limits(self.api_version, len(self.spec.rules), len(self.spec.hostnames))
        return self


#: Every Gateway API route kind a waypoint applies, HTTPRoute included.
MeshRoute = gw.HTTPRoute | GRPCRoute | TCPRoute | TLSRoute

__all__ = [
    "GRPCBackendRef",
    "GRPCHeaderMatch",
    "GRPCMethodMatch",
    "GRPCRoute",
    "GRPCRouteFilter",
    "GRPCRouteMatch",
    "GRPCRouteRule",
    "L4BackendRef",
    "L4RouteRule",
    "MeshRoute",
    "TCPRoute",
    "TLSRoute",
]
