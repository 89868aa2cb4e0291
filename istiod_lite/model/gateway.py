"""gateway.networking.k8s.io kinds: GatewayClass, Gateway, HTTPRoute (v1 and v1beta1).

Field names follow the Gateway API (``apis/v1``); limits and the rules its CRDs enforce with
OpenAPI bounds and CEL (path values start with ``/``, a filter's type names its one field, a
Service backend needs a port, at most 16 rules/backends...) are checked here, so a manifest the
API server would refuse is refused with its field path.

``status`` is written by controllers, not users: it is parsed leniently (unknown fields dropped)
and only ``status.addresses`` is read - it is where a waypoint's assigned address lives.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, BeforeValidator, Field, PlainSerializer, model_validator
from pydantic_core import PydanticCustomError

from istiod_lite.model.base import IstioModel, KubeModel, Resource
from istiod_lite.model.kind_declaration import (
    CDS,
    EDS,
    LDS,
    RDS,
    XDS_TYPES,
    KindDeclaration,
    StatusWriter,
    WaypointRead,
)
from istiod_lite.model.networking_common import check_header_value, check_wildcard_domain, fail, is_ip
from istiod_lite.model.registry import register
from istiod_lite.model.types import Duration, PortNumber, RE2Regex, bounded_int, bounded_str, parse_duration

GROUP = "gateway.networking.k8s.io"
_VERSIONS = ("v1", "v1beta1")

#: Gateway API ``Duration``: GEP-2257 (``1h``, ``500ms``, ``1h30m``; no fractions, no ``us``).
_GEP2257 = re.compile(r"^([0-9]{1,5}(h|m|s|ms)){1,4}$")
_HEADER_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+\-.^_`|~]+$")
_SECTION_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DOMAIN = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
_CONTROLLER_NAME = re.compile(rf"^{_DOMAIN}/[A-Za-z0-9/\-._~%!$&'()*+,;=:]+$")


def _gep2257(value: Any) -> Duration:
    if isinstance(value, Duration):
        return value
    if not isinstance(value, str) or not _GEP2257.match(value):
        raise PydanticCustomError("duration", "invalid duration {v!r}: use Gateway API form like 10s, 500ms, 1h30m",
                                  {"v": value})
    return parse_duration(value)


def _header_name(name: str) -> str:
    if not _HEADER_NAME.match(name) or len(name) > 256:
        raise PydanticCustomError("header", "invalid header name {n!r}", {"n": name})
    return name


def _section_name(name: str) -> str:
    if not _SECTION_NAME.match(name) or len(name) > 253:
        raise PydanticCustomError("name", "invalid section name {n!r} (lowercase RFC 1123 label)", {"n": name})
    return name


def _object_name(name: str) -> str:
    if not name or len(name) > 253:
        raise PydanticCustomError("name", "must be 1 to 253 characters")
    return name


def _hostname(host: str) -> str:
    if is_ip(host):
        raise PydanticCustomError("hostname", "hostname {h!r} must not be an IP address", {"h": host})
    if err := check_wildcard_domain(host):
        raise PydanticCustomError("hostname", "{e}", {"e": err})
    return host


GatewayDuration = Annotated[Duration, BeforeValidator(_gep2257), PlainSerializer(str)]
HeaderName = Annotated[str, AfterValidator(_header_name)]
SectionName = Annotated[str, AfterValidator(_section_name)]
ObjectName = Annotated[str, AfterValidator(_object_name)]
Hostname = Annotated[str, AfterValidator(_hostname)]
Namespace = Annotated[str, bounded_str(63)]
Group = Annotated[str, bounded_str(253)]
Kind = Annotated[str, bounded_str(63)]


# --------------------------------------------------------------------------- references


class ParentReference(IstioModel):
    group: Group = GROUP
    kind: Kind = "Gateway"
    namespace: Namespace | None = None
    name: ObjectName
    section_name: SectionName | None = None
    port: PortNumber | None = None


class BackendRef(IstioModel):
    """A ``backendRef`` of a route rule (Service by default)."""

    group: Group = ""
    kind: Kind = "Service"
    name: ObjectName
    namespace: Namespace | None = None
    port: PortNumber | None = None
    weight: Annotated[int, bounded_int(0, 1_000_000)] = 1
    filters: tuple[HTTPRouteFilter, ...] = Field(default=(), max_length=16)

    @model_validator(mode="after")
    def _check(self) -> BackendRef:
        if self.kind == "Service" and self.group in ("", "core") and self.port is None:
            fail(["Must have port for Service reference"])
        return self


class MirrorBackendRef(IstioModel):
    group: Group = ""
    kind: Kind = "Service"
    name: ObjectName
    namespace: Namespace | None = None
    port: PortNumber | None = None

    @model_validator(mode="after")
    def _check(self) -> MirrorBackendRef:
        if self.kind == "Service" and self.group in ("", "core") and self.port is None:
            fail(["Must have port for Service reference"])
        return self


class LocalObjectReference(IstioModel):
    group: Group
    kind: Kind
    name: ObjectName


class SecretObjectReference(IstioModel):
    group: Group = ""
    kind: Kind = "Secret"
    name: ObjectName
    namespace: Namespace | None = None


# --------------------------------------------------------------------------- HTTPRoute matches


class HTTPPathMatch(IstioModel):
    type: Literal["Exact", "PathPrefix", "RegularExpression"] = "PathPrefix"
    value: Annotated[str, bounded_str(1024)] = "/"

    @model_validator(mode="after")
    def _check(self) -> HTTPPathMatch:
        if self.type == "RegularExpression":
            RE2_ADAPTER.validate_python(self.value)
        elif not self.value.startswith("/"):
            fail(["value must be an absolute path and start with '/' when type one of ['Exact', 'PathPrefix']"])
        elif "//" in self.value or "/./" in self.value or "/../" in self.value or "#" in self.value:
            fail(["must not contain '//', '/./', '/../' or '#' when type one of ['Exact', 'PathPrefix']"])
        elif self.type == "PathPrefix" and self.value.endswith(("/.", "/..")):
            fail(["must not end with '/.' or '/..' when type is PathPrefix"])
        return self


class HTTPHeaderMatch(IstioModel):
    type: Literal["Exact", "RegularExpression"] = "Exact"
    name: HeaderName
    value: Annotated[str, bounded_str(4096)]

    @model_validator(mode="after")
    def _check(self) -> HTTPHeaderMatch:
        if self.type == "RegularExpression":
            RE2_ADAPTER.validate_python(self.value)
        return self


class HTTPQueryParamMatch(IstioModel):
    type: Literal["Exact", "RegularExpression"] = "Exact"
    name: Annotated[str, bounded_str(256)]
    value: Annotated[str, bounded_str(1024)]

    @model_validator(mode="after")
    def _check(self) -> HTTPQueryParamMatch:
        if not self.name:
            fail(["name must not be empty"])
        if self.type == "RegularExpression":
            RE2_ADAPTER.validate_python(self.value)
        return self


HTTPMethod = Literal["GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"]


class HTTPRouteMatch(IstioModel):
    path: HTTPPathMatch = Field(default_factory=HTTPPathMatch)
    headers: tuple[HTTPHeaderMatch, ...] = Field(default=(), max_length=16)
    query_params: tuple[HTTPQueryParamMatch, ...] = Field(default=(), max_length=16)
    method: HTTPMethod | None = None

    @model_validator(mode="after")
    def _check(self) -> HTTPRouteMatch:
        errs = []
        for label, names in (("headers", [h.name.lower() for h in self.headers]),
                             ("queryParams", [q.name for q in self.query_params])):
            dup = sorted({n for n in names if names.count(n) > 1})
            if dup:
                errs.append(f"{label} must not contain duplicate names: {', '.join(dup)}")
        fail(errs)
        return self


# --------------------------------------------------------------------------- HTTPRoute filters


class HTTPHeader(IstioModel):
    name: HeaderName
    value: Annotated[str, bounded_str(4096)]

    @model_validator(mode="after")
    def _check(self) -> HTTPHeader:
        if err := check_header_value(self.value):
            fail([err])
        return self


class HTTPHeaderFilter(IstioModel):
    set: tuple[HTTPHeader, ...] = Field(default=(), max_length=16)
    add: tuple[HTTPHeader, ...] = Field(default=(), max_length=16)
    remove: tuple[HeaderName, ...] = Field(default=(), max_length=16)

    @model_validator(mode="after")
    def _check(self) -> HTTPHeaderFilter:
        errs = []
        for label, names in (("set", [h.name.lower() for h in self.set]),
                             ("add", [h.name.lower() for h in self.add]),
                             ("remove", [n.lower() for n in self.remove])):
            dup = sorted({n for n in names if names.count(n) > 1})
            if dup:
                errs.append(f"{label} must not contain duplicate header names: {', '.join(dup)}")
        fail(errs)
        return self


class HTTPPathModifier(IstioModel):
    type: Literal["ReplaceFullPath", "ReplacePrefixMatch"]
    replace_full_path: Annotated[str, bounded_str(1024)] | None = None
    replace_prefix_match: Annotated[str, bounded_str(1024)] | None = None

    @model_validator(mode="after")
    def _check(self) -> HTTPPathModifier:
        errs = []
        if self.type == "ReplaceFullPath" and (self.replace_full_path is None or self.replace_prefix_match is not None):
            errs.append("replaceFullPath must be specified (and only it) when type is ReplaceFullPath")
        if self.type == "ReplacePrefixMatch" and (
            self.replace_prefix_match is None or self.replace_full_path is not None
        ):
            errs.append("replacePrefixMatch must be specified (and only it) when type is ReplacePrefixMatch")
        for v in (self.replace_full_path, self.replace_prefix_match):
            if v and not v.startswith("/"):
                errs.append(f"path {v!r} must start with '/'")
        fail(errs)
        return self


class HTTPRequestRedirectFilter(IstioModel):
    scheme: Literal["http", "https"] | None = None
    hostname: Hostname | None = None
    path: HTTPPathModifier | None = None
    port: PortNumber | None = None
    status_code: Literal[301, 302, 303, 307, 308] = 302


class HTTPURLRewriteFilter(IstioModel):
    hostname: Hostname | None = None
    path: HTTPPathModifier | None = None


class Fraction(IstioModel):
    numerator: Annotated[int, bounded_int(0, 2**31 - 1)]
    denominator: Annotated[int, bounded_int(1, 2**31 - 1)] = 100

    @model_validator(mode="after")
    def _check(self) -> Fraction:
        if self.numerator > self.denominator:
            fail(["numerator must be less than or equal to denominator"])
        return self


class HTTPRequestMirrorFilter(IstioModel):
    backend_ref: MirrorBackendRef
    percent: Annotated[int, bounded_int(0, 100)] | None = None
    fraction: Fraction | None = None

    @model_validator(mode="after")
    def _check(self) -> HTTPRequestMirrorFilter:
        if self.percent is not None and self.fraction is not None:
            fail(["Only one of percent or fraction may be specified"])
        return self


class HTTPCORSFilter(IstioModel):
    allow_origins: tuple[Annotated[str, bounded_str(253)], ...] = Field(default=(), max_length=64)
    allow_credentials: bool | None = None
    allow_methods: tuple[Annotated[str, bounded_str(64)], ...] = Field(default=(), max_length=9)
    allow_headers: tuple[HeaderName, ...] = Field(default=(), max_length=64)
    expose_headers: tuple[HeaderName, ...] = Field(default=(), max_length=64)
    max_age: Annotated[int, bounded_int(1, 2**31 - 1)] = 5


_FILTER_FIELDS = {
    "RequestHeaderModifier": "request_header_modifier",
    "ResponseHeaderModifier": "response_header_modifier",
    "RequestMirror": "request_mirror",
    "RequestRedirect": "request_redirect",
    "URLRewrite": "url_rewrite",
    "CORS": "cors",
    "ExtensionRef": "extension_ref",
}


class HTTPRouteFilter(IstioModel):
    """One filter; exactly the field its ``type`` names must be set (the CRD's CEL rule)."""

    type: Literal["RequestHeaderModifier", "ResponseHeaderModifier", "RequestMirror", "RequestRedirect",
                  "URLRewrite", "CORS", "ExtensionRef"]
    request_header_modifier: HTTPHeaderFilter | None = None
    response_header_modifier: HTTPHeaderFilter | None = None
    request_mirror: HTTPRequestMirrorFilter | None = None
    request_redirect: HTTPRequestRedirectFilter | None = None
    url_rewrite: HTTPURLRewriteFilter | None = Field(default=None, alias="urlRewrite")
    cors: HTTPCORSFilter | None = None
    extension_ref: LocalObjectReference | None = None

    @model_validator(mode="after")
    def _check(self) -> HTTPRouteFilter:
        want = _FILTER_FIELDS[self.type]
        errs = []
        if getattr(self, want) is None:
            errs.append(f"filter.{type(self).model_fields[want].alias} must be specified for {self.type} filter.type")
        for typ, attr in _FILTER_FIELDS.items():
            if attr != want and getattr(self, attr) is not None:
                errs.append(f"filter.{type(self).model_fields[attr].alias} must be nil if the filter.type is not {typ}")
        fail(errs)
        return self


# --------------------------------------------------------------------------- HTTPRoute rules


class HTTPRouteTimeouts(IstioModel):
    request: GatewayDuration | None = None
    backend_request: GatewayDuration | None = None

    @model_validator(mode="after")
    def _check(self) -> HTTPRouteTimeouts:
        r, b = self.request, self.backend_request
        if r is not None and b is not None and r.nanos != 0 and b.nanos > r.nanos:
            fail(["backendRequest timeout cannot be longer than request timeout"])
        return self


class HTTPRouteRetry(IstioModel):
    codes: tuple[Annotated[int, bounded_int(400, 599)], ...] = ()
    attempts: Annotated[int, bounded_int(0, 2**31 - 1)] | None = None
    backoff: GatewayDuration | None = None


class SessionPersistence(IstioModel):
    session_name: Annotated[str, bounded_str(128)] | None = None
    absolute_timeout: GatewayDuration | None = None
    idle_timeout: GatewayDuration | None = None
    type: Literal["Cookie", "Header"] = "Cookie"
    cookie_config: dict[str, Any] | None = None


class HTTPRouteRule(IstioModel):
    name: SectionName | None = None
    matches: tuple[HTTPRouteMatch, ...] = Field(default_factory=lambda: (HTTPRouteMatch(),), max_length=64)
    filters: tuple[HTTPRouteFilter, ...] = Field(default=(), max_length=16)
    backend_refs: tuple[BackendRef, ...] = Field(default=(), max_length=16)
    timeouts: HTTPRouteTimeouts | None = None
    retry: HTTPRouteRetry | None = None
    session_persistence: SessionPersistence | None = None

    @model_validator(mode="after")
    def _check(self) -> HTTPRouteRule:
        errs = []
        types = [f.type for f in self.filters]
        for once in ("RequestHeaderModifier", "ResponseHeaderModifier", "RequestRedirect", "URLRewrite", "CORS"):
            if types.count(once) > 1:
                errs.append(f"{once} filter cannot be repeated")
        if "RequestRedirect" in types and "URLRewrite" in types:
            errs.append("may specify either a RequestRedirect or a URLRewrite filter, but not both")
        for f in self.filters:
            p = f.request_redirect.path if f.request_redirect else None
            p = p or (f.url_rewrite.path if f.url_rewrite else None)
            if p is not None and p.type == "ReplacePrefixMatch" and not all(
                m.path.type == "PathPrefix" for m in self.matches
            ):
                errs.append("When using ReplacePrefixMatch, matches must use PathPrefix paths")
        fail(errs)
        return self


class CommonRouteSpec(IstioModel):
    parent_refs: tuple[ParentReference, ...] = Field(default=(), max_length=32)


class HTTPRouteSpec(CommonRouteSpec):
    hostnames: tuple[Hostname, ...] = Field(default=(), max_length=16)
    rules: tuple[HTTPRouteRule, ...] = Field(default_factory=lambda: (HTTPRouteRule(),), max_length=16)

    @model_validator(mode="after")
    def _check(self) -> HTTPRouteSpec:
        names = [r.name for r in self.rules if r.name]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            fail([f"Rule name must be unique within the route: {', '.join(dup)}"])
        return self


# --------------------------------------------------------------------------- Gateway


class RouteGroupKind(IstioModel):
    group: Group = GROUP
    kind: Kind


class LabelSelectorRequirement(IstioModel):
    """``metav1.LabelSelectorRequirement``: In/NotIn need values, Exists/DoesNotExist take none."""

    key: Annotated[str, bounded_str(317)]
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    values: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _check(self) -> LabelSelectorRequirement:
        if self.operator in ("In", "NotIn") and not self.values:
            fail([f"values must be non-empty when operator is {self.operator}"])
        if self.operator in ("Exists", "DoesNotExist") and self.values:
            fail([f"values must be empty when operator is {self.operator}"])
        return self

    def matches(self, labels: dict[str, str]) -> bool:
        present = self.key in labels
        if self.operator == "In":
            return present and labels[self.key] in self.values
        if self.operator == "NotIn":
            return not present or labels[self.key] not in self.values
        return present == (self.operator == "Exists")


class LabelSelector(IstioModel):
    """``metav1.LabelSelector``: every label and every expression must match; empty matches all."""

    match_labels: dict[str, str] = Field(default_factory=dict)
    match_expressions: tuple[LabelSelectorRequirement, ...] = ()

    def matches(self, labels: dict[str, str]) -> bool:
        return (all(labels.get(k) == v for k, v in self.match_labels.items())
                and all(e.matches(labels) for e in self.match_expressions))


class RouteNamespaces(IstioModel):
    from_: Literal["All", "Same", "Selector"] = Field(default="Same", alias="from")
    selector: LabelSelector | None = None

    @model_validator(mode="after")
    def _check(self) -> RouteNamespaces:
        if self.from_ == "Selector" and self.selector is None:
            fail(["selector must be specified when from is Selector"])
        return self


class AllowedRoutes(IstioModel):
    namespaces: RouteNamespaces = Field(default_factory=RouteNamespaces)
    kinds: tuple[RouteGroupKind, ...] = Field(default=(), max_length=8)


class GatewayTLSConfig(IstioModel):
    mode: Literal["Terminate", "Passthrough"] = "Terminate"
    certificate_refs: tuple[SecretObjectReference, ...] = Field(default=(), max_length=64)
    frontend_validation: dict[str, Any] | None = None
    options: dict[str, str] = Field(default_factory=dict)


#: Protocols a Gateway listener may name: the standard ones and domain-prefixed ones (Istio's HBONE).
_PROTOCOL = re.compile(rf"^[a-zA-Z0-9]([-a-zA-Z0-9]*[a-zA-Z0-9])?$|^{_DOMAIN}/[A-Za-z0-9]+$")


def _protocol(value: str) -> str:
    if not _PROTOCOL.match(value) or len(value) > 255:
        raise PydanticCustomError("protocol", "invalid protocol {p!r}", {"p": value})
    return value


class Listener(IstioModel):
    name: SectionName
    hostname: Hostname | None = None
    port: PortNumber
    protocol: Annotated[str, AfterValidator(_protocol)]
    tls: GatewayTLSConfig | None = None
    allowed_routes: AllowedRoutes = Field(default_factory=AllowedRoutes)

    @model_validator(mode="after")
    def _check(self) -> Listener:
        # Gateway API v1.6: an HTTPS listener may omit ``tls`` (certificates can come from elsewhere,
        # e.g. ListenerSets); a given one must terminate.  A TLS listener must name its mode.
        errs = []
        if self.protocol in ("HTTP", "TCP", "UDP") and self.tls is not None:
            errs.append(f"tls must not be specified for protocol {self.protocol}")
        if self.protocol == "HTTPS" and self.tls is not None and self.tls.mode != "Terminate":
            errs.append("tls mode must be Terminate for protocol HTTPS")
        if self.protocol == "TLS" and self.tls is None:
            errs.append("tls mode must be set for protocol TLS")
        if self.protocol in ("TCP", "UDP") and self.hostname is not None:
            errs.append(f"hostname must not be specified for protocol {self.protocol}")
        fail(errs)
        return self


class GatewaySpecAddress(IstioModel):
    type: Annotated[str, bounded_str(253)] = "IPAddress"
    value: Annotated[str, bounded_str(253)] = ""

    @model_validator(mode="after")
    def _check(self) -> GatewaySpecAddress:
        if self.type == "IPAddress" and self.value and not is_ip(self.value):
            fail([f"value {self.value!r} must be an IP address when type is IPAddress"])
        if self.type == "Hostname" and self.value and not _DNS_SUBDOMAIN.match(self.value):
            fail([f"value {self.value!r} must be a valid hostname when type is Hostname"])
        return self


class ParametersReference(IstioModel):
    group: Group
    kind: Kind
    name: ObjectName
    namespace: Namespace | None = None


class GatewayInfrastructure(IstioModel):
    labels: dict[str, str] = Field(default_factory=dict, max_length=8)
    annotations: dict[str, str] = Field(default_factory=dict, max_length=8)
    parameters_ref: ParametersReference | None = None


class ObjectReference(IstioModel):
    """A namespaced reference to any object (``caCertificateRefs`` entries: group and kind required)."""

    group: Group
    kind: Kind
    name: ObjectName
    namespace: Namespace | None = None


class FrontendTLSValidation(IstioModel):
    """``FrontendTLSValidation``: client certificates checked against these CAs (mTLS from clients)."""

    ca_certificate_refs: tuple[ObjectReference, ...] = Field(min_length=1, max_length=16)
    mode: Literal["AllowValidOnly", "AllowInsecureFallback"] = "AllowValidOnly"


class TLSConfig(IstioModel):
    validation: FrontendTLSValidation | None = None


class TLSPortConfig(IstioModel):
    port: PortNumber
    tls: TLSConfig


class FrontendTLSConfig(IstioModel):
    default: TLSConfig
    per_port: tuple[TLSPortConfig, ...] = Field(default=(), max_length=64)

    @model_validator(mode="after")
    def _check(self) -> FrontendTLSConfig:
        ports = [p.port for p in self.per_port]
        if len(set(ports)) != len(ports):
            fail(["Port for TLS configuration must be unique within the Gateway"])
        return self


class GatewayBackendTLS(IstioModel):
    """``GatewayBackendTLS``: the client certificate the Gateway presents to TLS backends."""

    client_certificate_ref: SecretObjectReference | None = None


class GatewayTLSSettings(IstioModel):
    """``spec.tls`` (Gateway API v1.5+): Gateway-wide frontend (client validation) and backend TLS."""

    backend: GatewayBackendTLS | None = None
    frontend: FrontendTLSConfig | None = None


class ListenerNamespaces(IstioModel):
    from_: Literal["All", "Selector", "Same", "None"] = Field(default="None", alias="from")
    selector: LabelSelector | None = None


class AllowedListeners(IstioModel):
    """``spec.allowedListeners``: which namespaces' ListenerSets may attach to this Gateway."""

    namespaces: ListenerNamespaces = Field(default_factory=ListenerNamespaces)


class GatewaySpec(IstioModel):
    gateway_class_name: ObjectName
    listeners: tuple[Listener, ...] = Field(default=(), max_length=64)
    addresses: tuple[GatewaySpecAddress, ...] = Field(default=(), max_length=16)
    infrastructure: GatewayInfrastructure | None = None
    #: Experimental before v1.5 (now ``tls.backend``); kept so older manifests still load.
    backend_tls: dict[str, Any] | None = Field(default=None, alias="backendTLS")
    allowed_listeners: AllowedListeners | None = None
    tls: GatewayTLSSettings | None = None

    @model_validator(mode="after")
    def _check(self) -> GatewaySpec:
        errs = []
        names = [listener.name for listener in self.listeners]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            errs.append(f"Listener name must be unique within the Gateway: {', '.join(dup)}")
        combos = [(li.port, li.protocol, li.hostname or "") for li in self.listeners]
        if len(set(combos)) != len(combos):
            errs.append("Combination of port, protocol and hostname must be unique for each listener")
        ips = [a.value for a in self.addresses if a.type == "IPAddress"]
        if len(set(ips)) != len(ips):
            errs.append("IPAddress values must be unique")
        fail(errs)
        return self


class StatusAddress(KubeModel):
    type: str = "IPAddress"
    value: str = ""


class GatewayStatus(KubeModel):
    """Controller-written; kept lenient. ``addresses`` is read for binding; ``conditions`` only by the
    ambient status writer (to write only on change)."""

    addresses: tuple[StatusAddress, ...] = ()
    conditions: tuple[dict[str, Any], ...] = ()


# Binding and addressing: a waypoint is a Gateway; the waypoint controller writes its address into its status.
@register(KindDeclaration("gateways", XDS_TYPES, WaypointRead.BOUND, status=StatusWriter.WAYPOINT_CONTROLLER,
                          ambient_status=True))
class Gateway(Resource):
    KIND: ClassVar[str] = "Gateway"
    GROUP: ClassVar[str] = GROUP
    VERSIONS: ClassVar[tuple[str, ...]] = _VERSIONS
    kind: Literal["Gateway"]
    spec: GatewaySpec
    status: GatewayStatus | None = None


class GatewayClassSpec(IstioModel):
    controller_name: Annotated[str, bounded_str(253)]
    parameters_ref: ParametersReference | None = None
    description: Annotated[str, bounded_str(64)] | None = None

    @model_validator(mode="after")
    def _check(self) -> GatewayClassSpec:
        if not _CONTROLLER_NAME.match(self.controller_name):
            fail([f"controllerName {self.controller_name!r} must be a domain-prefixed path"
                  " (e.g. istio.io/gateway-controller)"])
        return self


# Binding: the class's traffic type label decides what its waypoints serve.
@register(KindDeclaration("gatewayclasses", XDS_TYPES, WaypointRead.BOUND))
class GatewayClass(Resource):
    KIND: ClassVar[str] = "GatewayClass"
    GROUP: ClassVar[str] = GROUP
    VERSIONS: ClassVar[tuple[str, ...]] = _VERSIONS
    NAMESPACED: ClassVar[bool] = False
    kind: Literal["GatewayClass"]
    spec: GatewayClassSpec
    status: dict[str, Any] | None = None


# Routing: HTTP routes are served over RDS; attaching one replaces the service's VirtualServices, TCP
# routes included (LDS); targets add clusters.
@register(KindDeclaration("httproutes", frozenset({LDS, RDS, CDS, EDS}), WaypointRead.NARROWER, ambient_status=True))
class HTTPRoute(Resource):
    KIND: ClassVar[str] = "HTTPRoute"
    GROUP: ClassVar[str] = GROUP
    VERSIONS: ClassVar[tuple[str, ...]] = _VERSIONS
    kind: Literal["HTTPRoute"]
    spec: HTTPRouteSpec = Field(default_factory=HTTPRouteSpec)
    status: dict[str, Any] | None = None


def _re2_adapter() -> Any:
    from pydantic import TypeAdapter

    return TypeAdapter(RE2Regex)


RE2_ADAPTER = _re2_adapter()

BackendRef.model_rebuild()

__all__ = [
    "BackendRef",
    "Gateway",
    "GatewayClass",
    "GatewaySpec",
    "HTTPHeaderFilter",
    "HTTPPathMatch",
    "HTTPRoute",
    "HTTPRouteFilter",
    "HTTPRouteMatch",
    "HTTPRouteRule",
    "HTTPRouteSpec",
    "Listener",
    "ParentReference",
]
