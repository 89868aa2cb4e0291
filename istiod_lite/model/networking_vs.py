"""VirtualService (networking.istio.io v1/v1beta1/v1alpha3).

Fields and names follow istio/api ``networking/v1alpha3/virtual_service.proto`` (as rendered in its
CRD schema); the rules follow Istio's webhook (``pkg/config/validation/validation.go`` and
``virtualservice.go``).  Notable faithful details: weights are relative (any value >= 0, but several
destinations may not all be 0; Istio dropped the 0..100 bound and the sum-to-100 rule in 1.15,
istio/istio#39544); a VirtualService without hosts is a *delegate*; ``timeout: 0s`` is rejected
(Istio's ``ValidateDuration`` wants >= 1ms).  The actions of an HTTP route are in ``networking_vs_http``.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, model_validator

from istiod_lite.model.base import IstioModel, Resource
from istiod_lite.model.kind_declaration import CDS, EDS, LDS, RDS, KindDeclaration, StatusWriter, WaypointRead
from istiod_lite.model.networking_common import (
    Destination,
    MatchPort,
    MsDuration,
    Percent,
    PresenceStringMatch,
    StringMatch,
    UInt32,
    check_export_to,
    check_fqdn,
    check_ip_subnet,
    check_labels,
    check_match_header_name,
    check_wildcard_domain,
    fail,
    host_matches,
    host_subset_of,
    is_dns_label,
    is_ip,
    is_jwt_claim_header,
)
from istiod_lite.model.networking_vs_http import (
    CorsPolicy,
    Delegate,
    Headers,
    HTTPDirectResponse,
    HTTPFaultInjection,
    HTTPMirrorPolicy,
    HTTPRedirect,
    HTTPRetry,
    HTTPRewrite,
)
from istiod_lite.model.registry import register
from istiod_lite.model.types import bounded_int

#: Weights are int32 and relative; only negatives are invalid.
Weight = Annotated[int, bounded_int(0, 2**31 - 1)]


def check_gateway_name(name: str) -> str | None:
    """``validateGatewayNames``: ``<namespace>/<name>``, or a bare (or legacy FQDN) name such as ``mesh``."""
    ns, slash, gw = name.partition("/")
    if not slash:
        return check_fqdn(name)
    if not ns or not gw:
        return "config namespace and gateway name cannot be empty"
    if not is_dns_label(ns):
        return f"invalid value for namespace: {ns!r}"
    if not is_dns_label(gw):
        return f"invalid value for gateway name: {gw!r}"
    return None


def _check_l4_match(gateways: tuple[str, ...], subnets: tuple[str, ...], labels: dict[str, str]) -> list[str]:
    errs = [e for s in subnets if (e := check_ip_subnet(s))]
    errs += check_labels(labels)
    return errs + [e for g in gateways if (e := check_gateway_name(g))]


class HTTPMatchRequest(IstioModel):
    name: str = ""
    uri: StringMatch | None = None
    scheme: StringMatch | None = None
    method: StringMatch | None = None
    authority: StringMatch | None = None
    headers: dict[str, StringMatch] = Field(default_factory=dict)
    port: MatchPort = None
    source_labels: dict[str, str] = Field(default_factory=dict)
    gateways: tuple[str, ...] = ()
    query_params: dict[str, StringMatch] = Field(default_factory=dict)
    ignore_uri_case: bool = False
    without_headers: dict[str, PresenceStringMatch] = Field(default_factory=dict)
    source_namespace: str = ""
    stat_prefix: str = ""

    @model_validator(mode="after")
    def _check(self) -> HTTPMatchRequest:
        errs = [e for n in (*self.headers, *self.without_headers) if (e := check_match_header_name(n))]
        # Envoy allows an empty URI prefix but no other empty prefix (``validateStringMatch``).
        others = {"scheme": self.scheme, "method": self.method, "authority": self.authority}
        others.update({f"headers.{k}": v for k, v in self.headers.items()})
        others.update({f"queryParams.{k}": v for k, v in self.query_params.items()})
        others.update({f"withoutHeaders.{k}": v for k, v in self.without_headers.items()})
        errs += [f'"{where}": prefix string match should not be empty' for where, sm in others.items()
                 if sm is not None and sm.prefix == ""]
        errs += _check_l4_match(self.gateways, (), self.source_labels)
        if self.source_namespace and not is_dns_label(self.source_namespace):
            errs.append(f"sourceNamespace match {self.source_namespace} is invalid")
        fail(errs)
        return self


class HTTPRouteDestination(IstioModel):
    destination: Destination
    weight: Weight | None = None
    headers: Headers | None = None


class RouteDestination(IstioModel):
    destination: Destination
    weight: Weight | None = None


def _check_weights(weights: list[int | None]) -> list[str]:
    if len(weights) > 1 and sum(w or 0 for w in weights) == 0:
        return ["total destination weight = 0"]
    return []


class HTTPRoute(IstioModel):
    name: str = ""
    match: tuple[HTTPMatchRequest, ...] = ()
    route: tuple[HTTPRouteDestination, ...] = ()
    redirect: HTTPRedirect | None = None
    direct_response: HTTPDirectResponse | None = None
    delegate: Delegate | None = None
    rewrite: HTTPRewrite | None = None
    timeout: MsDuration | None = None
    retries: HTTPRetry | None = None
    fault: HTTPFaultInjection | None = None
    mirror: Destination | None = None
    #: Deprecated (``mirror_percent`` is accepted too); use ``mirrorPercentage``.
    mirror_percent: UInt32 | None = None
    mirror_percentage: Percent | None = None
    mirrors: tuple[HTTPMirrorPolicy, ...] = ()
    cors_policy: CorsPolicy | None = None
    headers: Headers | None = None

    @model_validator(mode="after")
    def _check(self) -> HTTPRoute:
        errs = self._conflicts()
        if self.mirror_percent is not None and self.mirror_percent > 100:
            errs.append(f"mirror_percent must have a max value of 100 (it has {self.mirror_percent})")
        authority = [self.rewrite.authority] if self.rewrite and self.rewrite.authority else []
        authority += self.headers.authority() if self.headers else []
        if len(authority) > 1:
            errs.append(f"authority header cannot be set multiple times: have {authority[0]!r}, "
                        f"attempting to set {authority[1]!r}")
        errs += _check_weights([d.weight for d in self.route])
        fail(errs)
        return self

    def _conflicts(self) -> list[str]:
        """``validateHTTPRouteConflict``: one action per route (a delegating root route has none)."""
        if self.delegate is not None:
            return [f"root HTTP route {self.name} must not specify {what}"
                    for what, v in (("redirect", self.redirect), ("route", self.route)) if v]
        errs = []
        action = "redirect" if self.redirect else "direct_response" if self.direct_response else ""
        if action:
            others: dict[str, object] = {"route": self.route, "fault": self.fault, "rewrite": self.rewrite}
            if action == "redirect":
                others["direct_response"] = self.direct_response
            errs += [f"HTTP route cannot contain both {o} and {action}" for o, v in others.items() if v]
        elif not self.route:
            errs.append("HTTP route, redirect or direct_response is required")
        if self.mirror is not None and self.mirrors:
            errs.append("HTTP route cannot contain both mirror and mirrors")
        return errs


class TLSMatchAttributes(IstioModel):
    sni_hosts: tuple[str, ...] = Field(alias="sniHosts")
    destination_subnets: tuple[str, ...] = ()
    port: MatchPort = None
    source_labels: dict[str, str] = Field(default_factory=dict)
    gateways: tuple[str, ...] = ()
    source_namespace: str = ""

    @model_validator(mode="after")
    def _check(self) -> TLSMatchAttributes:
        errs = [] if self.sni_hosts else ["TLS match must have at least one SNI host"]
        errs += [e for h in self.sni_hosts if not is_ip(h) and (e := check_wildcard_domain(h))]
        fail(errs + _check_l4_match(self.gateways, self.destination_subnets, self.source_labels))
        return self


class TLSRoute(IstioModel):
    match: tuple[TLSMatchAttributes, ...]
    route: tuple[RouteDestination, ...] = ()

    @model_validator(mode="after")
    def _check(self) -> TLSRoute:
        errs = [] if self.match else ["TLS route must have at least one match condition"]
        errs += [] if self.route else ["TLS route is required"]
        fail(errs + _check_weights([d.weight for d in self.route]))
        return self


class L4MatchAttributes(IstioModel):
    destination_subnets: tuple[str, ...] = ()
    port: MatchPort = None
    source_subnet: str = ""
    source_labels: dict[str, str] = Field(default_factory=dict)
    gateways: tuple[str, ...] = ()
    source_namespace: str = ""

    @model_validator(mode="after")
    def _check(self) -> L4MatchAttributes:
        fail(_check_l4_match(self.gateways, self.destination_subnets, self.source_labels))
        return self


class TCPRoute(IstioModel):
    match: tuple[L4MatchAttributes, ...] = ()
    route: tuple[RouteDestination, ...] = ()

    @model_validator(mode="after")
    def _check(self) -> TCPRoute:
        fail((["TCP route is required"] if not self.route else []) + _check_weights([d.weight for d in self.route]))
        return self


class VirtualServiceSpec(IstioModel):
    hosts: tuple[str, ...] = ()
    gateways: tuple[str, ...] = ()
    http: tuple[HTTPRoute, ...] = ()
    tls: tuple[TLSRoute, ...] = ()
    tcp: tuple[TCPRoute, ...] = ()
    export_to: tuple[str, ...] = ()

    @property
    def is_delegate(self) -> bool:
        """A VirtualService without hosts is only reachable through another one's ``delegate``."""
        return not self.hosts

    @property
    def applies_to_mesh(self) -> bool:
        return not self.gateways or "mesh" in self.gateways

    @model_validator(mode="after")
    def _check(self) -> VirtualServiceSpec:
        errs: list[str] = []
        if self.is_delegate:
            forbidden = (("gateways", self.gateways), ("tls route", self.tls), ("tcp route", self.tcp))
            errs += [f"delegate virtual service must have no {what} specified" for what, v in forbidden if v]
            if any(r.delegate is not None for r in self.http):
                errs.append("delegate HTTP route cannot contain delegate")
        errs += [e for g in self.gateways if (e := check_gateway_name(g))]
        if self.applies_to_mesh:
            claims = sorted({k for r in self.http for m in r.match for k in (*m.headers, *m.without_headers)
                             if is_jwt_claim_header(k)})
            errs += [f"JWT claim based routing (key: {k}) is only supported for gateway, found no gateways: "
                     f"{list(self.gateways)}" for k in claims]
        host_errs = [e for h in self.hosts if not is_ip(h) and (e := check_wildcard_domain(h))]
        if self.applies_to_mesh and "*" in self.hosts:
            host_errs.append("wildcard host * is not allowed for virtual services bound to the mesh gateway")
        if not host_errs:
            errs += [f"duplicate hosts in virtual service: {a} & {b}" for i, a in enumerate(self.hosts)
                     for b in self.hosts[i + 1:] if host_matches(a, b)]
        errs += host_errs
        if not (self.http or self.tcp or self.tls):
            errs.append("http, tcp or tls must be provided in virtual service")
        for sni in (s for r in self.tls for m in r.match for s in m.sni_hosts if not is_ip(s)):
            if not any(host_subset_of(sni, h) for h in self.hosts):
                errs.append(f"SNI host {sni!r} is not a compatible subset of any of the virtual service hosts: "
                            f"[{', '.join(self.hosts)}]")
        fail(errs + check_export_to(self.export_to))
        return self


# Routing: HTTP routes are served over RDS, TCP/TLS routes are in listeners; targets add clusters.
@register(KindDeclaration("virtualservices", frozenset({LDS, RDS, CDS, EDS}), WaypointRead.NARROWER,
                          status=StatusWriter.REJECTIONS))
class VirtualService(Resource):
    KIND: ClassVar[str] = "VirtualService"
    GROUP: ClassVar[str] = "networking.istio.io"
    VERSIONS: ClassVar[tuple[str, ...]] = ("v1", "v1beta1", "v1alpha3")
    kind: Literal["VirtualService"]
    spec: VirtualServiceSpec
    status: dict[str, Any] | None = None


__all__ = [
    "HTTPMatchRequest", "HTTPRoute", "HTTPRouteDestination", "L4MatchAttributes", "RouteDestination", "TCPRoute",
    "TLSMatchAttributes", "TLSRoute", "VirtualService", "VirtualServiceSpec",
]
