"""DestinationRule (networking.istio.io v1/v1beta1/v1alpha3).

Fields and names follow istio/api ``networking/v1alpha3/destination_rule.proto`` (as rendered in its
CRD schema); the rules follow Istio's webhook (``validateTrafficPolicy``, ``validateConnectionPool``,
``validateLoadBalancer``, ``validateOutlierDetection``, ``agent.ValidateTLS``,
``agent.ValidateLocalityLbSetting``).
"""

from __future__ import annotations

import math
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, model_validator

from istiod_lite.model.base import IstioModel, Resource
from istiod_lite.model.kind_declaration import CDS, EDS, LDS, RDS, KindDeclaration, StatusWriter, WaypointRead
from istiod_lite.model.networking_common import (
    MatchLabelsSelector,
    MsDuration,
    PortSelector,
    UInt32,
    check_export_to,
    check_fqdn,
    check_labels,
    check_wildcard_domain,
    fail,
    is_dns_label,
    is_ip,
)
from istiod_lite.model.registry import register
from istiod_lite.model.types import DurationField, IntPercentage, NonNegativeInt, bounded_float, bounded_int

_TOPOLOGY_LABELS = ("topology.kubernetes.io/region", "topology.kubernetes.io/zone", "topology.istio.io/subzone")


class TCPKeepalive(IstioModel):
    probes: UInt32 | None = None
    time: MsDuration | None = None
    interval: MsDuration | None = None


class TCPSettings(IstioModel):
    max_connections: NonNegativeInt | None = None
    connect_timeout: MsDuration | None = None
    tcp_keepalive: TCPKeepalive | None = Field(default=None, alias="tcpKeepalive")
    max_connection_duration: MsDuration | None = None
    #: ``0s`` disables the idle timeout, so it is exempt from the >= 1ms rule.
    idle_timeout: DurationField | None = None

    @model_validator(mode="after")
    def _check(self) -> TCPSettings:
        idle = self.idle_timeout
        if idle is not None and idle.nanos and (idle.nanos < 1_000_000 or idle.nanos % 1_000_000):
            raise ValueError("idleTimeout: duration must be greater than 1ms and a whole number of milliseconds")
        return self


class HTTP2KeepAlive(IstioModel):
    """``ConnectionPoolSettings.HTTPSettings.ConnectionKeepalive``: HTTP/2 PINGs on upstream
    connections (Envoy's ``http2_protocol_options.connection_keepalive``); both fields required."""

    interval: MsDuration
    timeout: MsDuration


class HTTPSettings(IstioModel):
    http1_max_pending_requests: NonNegativeInt | None = Field(default=None, alias="http1MaxPendingRequests")
    http2_max_requests: NonNegativeInt | None = Field(default=None, alias="http2MaxRequests")
    max_requests_per_connection: NonNegativeInt | None = Field(default=None, alias="maxRequestsPerConnection")
    max_retries: NonNegativeInt | None = None
    idle_timeout: MsDuration | None = None
    h2_upgrade_policy: Literal["DEFAULT", "DO_NOT_UPGRADE", "UPGRADE"] = Field(
        default="DEFAULT", alias="h2UpgradePolicy"
    )
    use_client_protocol: bool = False
    max_concurrent_streams: NonNegativeInt | None = None
    http2_keep_alive: HTTP2KeepAlive | None = Field(default=None, alias="http2KeepAlive")

    @model_validator(mode="after")
    def _check(self) -> HTTPSettings:
        if self.h2_upgrade_policy == "UPGRADE" and self.use_client_protocol:
            raise ValueError("use client protocol must not be true when H2UpgradePolicy is UPGRADE")
        return self


class ConnectionPoolSettings(IstioModel):
    tcp: TCPSettings | None = None
    http: HTTPSettings | None = None

    @model_validator(mode="after")
    def _check(self) -> ConnectionPoolSettings:
        if self.tcp is None and self.http is None:
            raise ValueError("connection pool must have at least one field")
        return self


class CookieAttribute(IstioModel):
    name: str
    value: str = ""


class HTTPCookie(IstioModel):
    name: str
    path: str = ""
    ttl: DurationField | None = None
    attributes: tuple[CookieAttribute, ...] = ()

    @model_validator(mode="after")
    def _check(self) -> HTTPCookie:
        if not self.name:
            raise ValueError("name required for HttpCookie")
        return self


class RingHash(IstioModel):
    minimum_ring_size: UInt32 = 0


class MagLev(IstioModel):
    table_size: UInt32 = 0

    @model_validator(mode="after")
    def _check(self) -> MagLev:
        errs = []
        if self.table_size == 0:
            errs.append("tableSize must be set for maglev")
        if self.table_size >= 5000011:
            errs.append("tableSize must be less than 5000011 for maglev")
        if not _is_prime(self.table_size):
            errs.append("tableSize must be a prime number for maglev")
        fail(errs)
        return self


def _is_prime(x: int) -> bool:
    """Envoy's primality test (``utility.cc``), which Istio copies: 0 counts as not prime."""
    if 0 < x < 4:
        return True
    if x % 2 == 0:
        return False
    return all(x % f for f in range(3, math.isqrt(x) + 1, 2))


class ConsistentHashLB(IstioModel):
    http_header_name: str | None = None
    http_cookie: HTTPCookie | None = None
    use_source_ip: bool | None = None
    http_query_parameter_name: str | None = None
    ring_hash: RingHash | None = None
    maglev: MagLev | None = None
    #: Deprecated: use ``ringHash.minimumRingSize``.
    minimum_ring_size: UInt32 = 0

    @model_validator(mode="after")
    def _check(self) -> ConsistentHashLB:
        keys = (self.http_header_name, self.http_cookie, self.use_source_ip, self.http_query_parameter_name)
        if sum(k is not None for k in keys) > 1:
            raise ValueError("only one of httpHeaderName, httpCookie, useSourceIp or httpQueryParameterName may be set")
        if self.ring_hash is not None and self.maglev is not None:
            raise ValueError("only one of ringHash or maglev may be set")
        if self.minimum_ring_size and (self.ring_hash is not None or self.maglev is not None):
            raise ValueError("only one of MinimumRingSize or Maglev/Ringhash can be specified")
        return self


class LocalityDistribute(IstioModel):
    from_: str = Field(default="", alias="from")
    to: dict[str, UInt32] = Field(default_factory=dict)


class LocalityFailover(IstioModel):
    from_: str = Field(default="", alias="from")
    to: str = ""


def _check_localities(localities: list[str]) -> str | None:
    """Istio's ``validateLocalities``: one trailing wildcard at most, no empty part, and no locality
    covered by one listed before it (``*`` covers everything after it)."""
    seen: dict[str, dict[str, set[str]]] = {}
    for loc in localities:
        if loc.count("*") > 1 or ("*" in loc and not loc.endswith("*")):
            return f"locality {loc} wildcard '*' number can not exceed 1 and must be in the end"
        overlap = f"locality {loc} overlap with previous specified ones"
        if "*" in seen:
            return overlap
        parts = loc.split("/", 2)
        if "" in parts:
            return f"locality {loc} must not contain empty region/zone/subzone info"
        zones = seen.get(parts[0])
        if len(parts) == 1:
            if zones is not None:
                return overlap
            seen[parts[0]] = {"*": {"*"}}
        elif zones is None:
            seen[parts[0]] = {parts[1]: {"*" if len(parts) == 2 else parts[2]}}
        elif "*" in zones:
            return overlap
        elif len(parts) == 2:
            if parts[1] in zones:
                return overlap
            zones[parts[1]] = {"*"}
        else:
            subzones = zones.setdefault(parts[1], set())
            if "*" in subzones or parts[2] in subzones:
                return overlap
            subzones.add(parts[2])
    return None


class LocalityLoadBalancerSetting(IstioModel):
    distribute: tuple[LocalityDistribute, ...] = ()
    failover: tuple[LocalityFailover, ...] = ()
    failover_priority: tuple[str, ...] = ()
    enabled: bool | None = None

    @model_validator(mode="after")
    def _check(self) -> LocalityLoadBalancerSetting:
        if self.distribute and self.failover:
            raise ValueError("can not simultaneously specify 'distribute' and 'failover'")
        errs = [f"can not simultaneously set 'failover' and topology label '{p}' in 'failover_priority'"
                for p in self.failover_priority if self.failover and p in _TOPOLOGY_LABELS][:1]
        for d in self.distribute:
            if any(not 1 <= w <= 100 for w in d.to.values()):
                errs.append("locality weight must be in range [1, 100]")
            elif sum(d.to.values()) != 100:
                errs.append(f"total locality weight {sum(d.to.values())} != 100")
            elif err := _check_localities(list(d.to)):
                errs.append(err)
        if err := _check_localities([d.from_ for d in self.distribute]):
            errs.append(err)
        for f in self.failover:
            if f.from_ == f.to:
                errs.append("locality lb failover settings must specify different regions")
            if "/" in f.from_ or "/" in f.to:
                errs.append("locality lb failover only specify region")
            if "*" in f.from_ or "*" in f.to:
                errs.append("locality lb failover region should not contain '*' wildcard")
        fail(errs)
        return self


class ZoneAwareLoadBalancerSetting(IstioModel):
    """``ZoneAwareLoadBalancerSetting`` (Istio 1.31): Envoy's zone-aware routing instead of
    ``localityLbSetting``; ``failover`` orders regions only (``agent.ValidateZoneAwareLbSetting``)."""

    enabled: bool | None = None
    failover: tuple[LocalityFailover, ...] = ()
    failover_priority: tuple[str, ...] = ()
    min_cluster_size: Annotated[int, bounded_int(1, 2**32 - 1)] | None = None

    @model_validator(mode="after")
    def _check(self) -> ZoneAwareLoadBalancerSetting:
        errs = [f"'failover_priority' for zone aware lb must not use topology label '{p}'; "
                "region- and zone-level routing are handled automatically"
                for p in self.failover_priority if p in _TOPOLOGY_LABELS]
        for f in self.failover:
            if f.from_ == f.to:
                errs.append("zone aware lb failover settings must specify different regions")
            if "/" in f.from_ or "/" in f.to:
                errs.append("zone aware lb failover only specifies region; zone and subzone failover "
                            "are handled automatically")
            if "*" in f.from_ or "*" in f.to:
                errs.append("zone aware lb failover region should not contain '*' wildcard")
        fail(errs)
        return self


class WarmupConfiguration(IstioModel):
    duration: MsDuration
    minimum_percent: Annotated[float, bounded_float(0.0, 100.0)] | None = None
    aggression: float | None = None

    @model_validator(mode="after")
    def _check(self) -> WarmupConfiguration:
        if self.aggression is not None and self.aggression < 1:
            raise ValueError("aggression should be greater than or equal to 1")
        return self


class LoadBalancerSettings(IstioModel):
    simple: Literal["UNSPECIFIED", "LEAST_CONN", "RANDOM", "PASSTHROUGH", "ROUND_ROBIN", "LEAST_REQUEST"] | None = None
    consistent_hash: ConsistentHashLB | None = None
    locality_lb_setting: LocalityLoadBalancerSetting | None = None
    zone_aware_lb_setting: ZoneAwareLoadBalancerSetting | None = None
    #: Deprecated: use ``warmup``.
    warmup_duration_secs: MsDuration | None = None
    warmup: WarmupConfiguration | None = None

    @model_validator(mode="after")
    def _check(self) -> LoadBalancerSettings:
        if self.simple is not None and self.consistent_hash is not None:
            raise ValueError("only one of simple or consistentHash may be set")
        if self.locality_lb_setting is not None and self.zone_aware_lb_setting is not None:
            raise ValueError("only one of localityLbSetting and zoneAwareLbSetting can be set")
        return self


class OutlierDetection(IstioModel):
    split_external_local_origin_errors: bool = False
    consecutive_local_origin_failures: UInt32 | None = None
    consecutive_gateway_errors: UInt32 | None = None
    consecutive_5xx_errors: UInt32 | None = Field(default=None, alias="consecutive5xxErrors")
    interval: MsDuration | None = None
    base_ejection_time: MsDuration | None = None
    max_ejection_percent: IntPercentage = 0
    min_health_percent: IntPercentage = 0
    #: Deprecated: use ``consecutive5xxErrors`` / ``consecutiveGatewayErrors``.
    consecutive_errors: int = 0
    #: Response codes counted as errors (Envoy's ``HttpProtocolOptions.outlier_detection``).
    outlier_detection_http_error_codes: tuple[Annotated[int, bounded_int(100, 599)], ...] = ()

    @model_validator(mode="after")
    def _check(self) -> OutlierDetection:
        if not self.split_external_local_origin_errors and (self.consecutive_local_origin_failures or 0) > 0:
            raise ValueError("outlier detection consecutive local origin failures is specified, "
                             "but split external local origin errors is set to false")
        return self


class ClientTLSSettings(IstioModel):
    mode: Literal["DISABLE", "SIMPLE", "MUTUAL", "ISTIO_MUTUAL"] = "DISABLE"
    client_certificate: str = ""
    private_key: str = ""
    ca_certificates: str = ""
    credential_name: str = ""
    subject_alt_names: tuple[str, ...] = ()
    sni: str = ""
    insecure_skip_verify: bool | None = None
    ca_crl: str = ""

    @model_validator(mode="after")
    def _check(self) -> ClientTLSSettings:
        errs = []
        if self.insecure_skip_verify and self.mode == "SIMPLE" and (
            self.ca_certificates or self.credential_name or self.subject_alt_names
        ):
            errs.append("cannot specify CaCertificates or CredentialName or SubjectAltNames "
                        "when InsecureSkipVerify is set true")
        if self.insecure_skip_verify and self.mode == "MUTUAL" and (self.ca_certificates or self.subject_alt_names):
            errs.append("cannot specify CaCertificates or SubjectAltNames when InsecureSkipVerify is set true")
        if self.mode in ("SIMPLE", "MUTUAL") and self.credential_name:
            if self.client_certificate or self.ca_certificates or self.private_key or self.ca_crl:
                errs.append("cannot specify client certificates or CA certificate or CA CRL If credentialName is set")
        elif self.mode == "MUTUAL":
            if not self.client_certificate:
                errs.append("client certificate required for mutual tls")
            if not self.private_key:
                errs.append("private key required for mutual tls")
        fail(errs)
        return self


class TunnelSettings(IstioModel):
    protocol: str = ""
    target_host: str
    target_port: UInt32

    @model_validator(mode="after")
    def _check(self) -> TunnelSettings:
        errs = [] if self.protocol in ("", "CONNECT", "POST") else ['tunnel protocol must be "CONNECT" or "POST"']
        if not is_ip(self.target_host) and (err := check_fqdn(self.target_host)):
            errs.append(f"tunnel target host must be valid FQDN or IP address: {err}")
        if not 1 <= self.target_port <= 65535:
            errs.append(f"tunnel target port is invalid: port number {self.target_port} must be in the range 1..65535")
        fail(errs)
        return self


class ProxyProtocol(IstioModel):
    version: Literal["V1", "V2"] = "V1"


class RetryBudget(IstioModel):
    percent: Annotated[float, bounded_float(0.0, 100.0)] | None = None
    min_retry_concurrency: UInt32 | None = None
    #: Envoy's ``RetryBudget.budget_interval``, which the Envoy API this project builds against lacks:
    #: accepted and reported as ignored (translator/config_warnings.py).
    budget_interval: DurationField | None = None


class PortTrafficPolicy(IstioModel):
    port: PortSelector | None = None
    load_balancer: LoadBalancerSettings | None = None
    connection_pool: ConnectionPoolSettings | None = None
    outlier_detection: OutlierDetection | None = None
    tls: ClientTLSSettings | None = None

    @model_validator(mode="after")
    def _check(self) -> PortTrafficPolicy:
        errs = [] if self.port is not None else ["portTrafficPolicy must have valid port"]
        if not (self.outlier_detection or self.connection_pool or self.load_balancer or self.tls):
            errs.append("port traffic policy must have at least one field")
        fail(errs)
        return self


class TrafficPolicy(IstioModel):
    load_balancer: LoadBalancerSettings | None = None
    connection_pool: ConnectionPoolSettings | None = None
    outlier_detection: OutlierDetection | None = None
    tls: ClientTLSSettings | None = None
    port_level_settings: tuple[PortTrafficPolicy, ...] = Field(default=(), max_length=4096)
    tunnel: TunnelSettings | None = None
    proxy_protocol: ProxyProtocol | None = None
    retry_budget: RetryBudget | None = None

    def for_port(self, port: int) -> PortTrafficPolicy | None:
        """The port-level settings for ``port``, if any (the first entry wins)."""
        return next((p for p in self.port_level_settings if p.port and p.port.number == port), None)

    @model_validator(mode="after")
    def _check(self) -> TrafficPolicy:
        fields = (self.outlier_detection, self.connection_pool, self.load_balancer, self.tls,
                  self.port_level_settings, self.tunnel, self.proxy_protocol, self.retry_budget)
        if not any(f for f in fields):
            raise ValueError("traffic policy must have at least one field")
        if self.tunnel is not None and self.proxy_protocol is not None:
            raise ValueError("tunnel and proxyProtocol must not be set together")
        return self


class Subset(IstioModel):
    name: str
    labels: dict[str, str] = Field(default_factory=dict)
    traffic_policy: TrafficPolicy | None = None

    @model_validator(mode="after")
    def _check(self) -> Subset:
        errs = []
        if not self.name:
            errs.append("subset name cannot be empty")
        elif not is_dns_label(self.name):
            errs.append(f"subset name is invalid: {self.name}")
        fail(errs + check_labels(self.labels))
        return self


class DestinationRuleSpec(IstioModel):
    host: str
    traffic_policy: TrafficPolicy | None = None
    subsets: tuple[Subset, ...] = ()
    export_to: tuple[str, ...] = ()
    workload_selector: MatchLabelsSelector | None = None

    def subset(self, name: str) -> Subset | None:
        return next((s for s in self.subsets if s.name == name), None)

    @model_validator(mode="after")
    def _check(self) -> DestinationRuleSpec:
        errs = [e] if (e := check_wildcard_domain(self.host)) else []
        names: set[str] = set()
        for s in self.subsets:
            if s.name in names:
                errs.append(f"duplicate subset names: {s.name}")
            names.add(s.name)
        fail(errs + check_export_to(self.export_to))
        return self


# Subsets become clusters with their own endpoints; traffic policy lives on clusters; a consistent
# hash becomes the routes' hash policy (RDS); TCP idle timeouts are on tcp_proxy (LDS).
@register(KindDeclaration("destinationrules", frozenset({CDS, EDS, LDS, RDS}), WaypointRead.WHOLE,
                          status=StatusWriter.REJECTIONS))
class DestinationRule(Resource):
    KIND: ClassVar[str] = "DestinationRule"
    GROUP: ClassVar[str] = "networking.istio.io"
    VERSIONS: ClassVar[tuple[str, ...]] = ("v1", "v1beta1", "v1alpha3")
    kind: Literal["DestinationRule"]
    spec: DestinationRuleSpec
    status: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _selector_export(self) -> DestinationRule:
        """A DestinationRule with a workload selector is only visible in its own namespace."""
        spec = self.spec
        if spec.workload_selector is not None and spec.export_to:
            targets = {self.namespace if e == "." else e for e in spec.export_to}
            if self.namespace not in targets:
                raise ValueError(
                    "destination rule with workload selector cannot have exportTo beyond current namespace"
                )
            if len(targets) > 1:
                raise ValueError("destination rule with workload selector cannot have multiple entries in exportTo")
        return self


__all__ = [
    "ClientTLSSettings", "ConnectionPoolSettings", "ConsistentHashLB", "CookieAttribute", "DestinationRule",
    "DestinationRuleSpec", "HTTPCookie", "HTTPSettings", "LoadBalancerSettings", "LocalityDistribute",
    "LocalityFailover", "LocalityLoadBalancerSetting", "MagLev", "OutlierDetection", "PortTrafficPolicy",
    "ProxyProtocol", "RetryBudget", "RingHash", "Subset", "TCPKeepalive", "TCPSettings", "TrafficPolicy",
    "TunnelSettings", "WarmupConfiguration",
]
