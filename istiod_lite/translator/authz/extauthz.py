"""CUSTOM AuthorizationPolicies -> RBAC (shadow) + ext_authz filters (Istio's ``builder/extauthz.go``).

Facts: shared/reference/istio-waypoint.md §5.2 and Istio's builder:

* per provider (sorted by name): an RBAC filter whose ``shadow_rules`` (action DENY, stat prefix
  ``istio_ext_authz_``) hold the provider's policies, keyed ``istio-ext-authz-<provider>-ns[..]..``;
  then the ext_authz filter, enabled only when that RBAC filter's shadow result names one of them
  (``filter_enabled_metadata`` on ``istio_ext_authz_shadow_effective_policy_id``);
* the provider comes from MeshConfig ``extensionProviders`` (``envoyExtAuthzHttp`` or
  ``envoyExtAuthzGrpc``); its service must exist (a Kubernetes Service or ServiceEntry host), and
  the check goes to cluster ``outbound|<port>||<host>``, which the caller must add (returned as a
  ``ClusterRequest``: a waypoint has no outbound clusters of its own);
* an unknown or invalid provider, or several providers without the multiple-providers switch
  (Istio's ``PILOT_ENABLE_MULTIPLE_CUSTOM_AUTHZ_PROVIDERS``), turns the CUSTOM policies into a
  DENY RBAC filter with keys suffixed ``-deny-due-to-bad-CUSTOM-action`` (fail closed).

Deviation (fail closed): Istio attaches nothing to TCP chains for an HTTP provider, so TCP traffic
the policy selects is never checked.  Here such traffic is denied instead (the bad-CUSTOM DENY
filter), and it is reported.

The ext_authz metadata prefix includes the provider (``istio-ext-authz-<provider>-ns[``), so with
several providers each ext_authz filter triggers only for its own provider's policies.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from envoy.config.core.v3 import config_source_pb2, grpc_service_pb2, http_uri_pb2
from envoy.extensions.filters.http.ext_authz.v3 import ext_authz_pb2 as http_ext_authz_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as http_rbac_pb2
from envoy.extensions.filters.network.ext_authz.v3 import ext_authz_pb2 as net_ext_authz_pb2
from envoy.extensions.filters.network.rbac.v3 import rbac_pb2 as net_rbac_pb2
from envoy.type.matcher.v3 import metadata_pb2, string_pb2
from envoy.type.v3 import http_status_pb2
from google.protobuf import duration_pb2
from pydantic_core import PydanticCustomError

from istiod_lite.model import ConfigSnapshot
from istiod_lite.model.types import parse_duration
from istiod_lite.translator import names, outbound
from istiod_lite.translator.authz import rbac
from istiod_lite.translator.authz.rbac import CompiledPolicy, HttpFilter, NetworkFilter
from istiod_lite.translator.authz.rules import Policy
from istiod_lite.translator.protos import packed

HTTP_EXT_AUTHZ: Final = "envoy.filters.http.ext_authz"
NETWORK_EXT_AUTHZ: Final = "envoy.filters.network.ext_authz"
EXT_AUTHZ_STAT_PREFIX: Final = "istio_ext_authz_"
SHADOW_POLICY_ID: Final = "shadow_effective_policy_id"
DEFAULT_TIMEOUT_S: Final = 600
_HTTP_KEYS: Final = frozenset({
    "service", "port", "timeout", "pathPrefix", "failOpen", "clearRouteCache", "statusOnError",
    "includeRequestHeadersInCheck", "includeHeadersInCheck", "includeAdditionalHeadersInCheck",
    "includeRequestBodyInCheck", "headersToUpstreamOnAllow", "headersToDownstreamOnDeny",
    "headersToDownstreamOnAllow"})
_GRPC_KEYS: Final = frozenset({"service", "port", "timeout", "failOpen", "clearRouteCache", "statusOnError",
                               "includeRequestBodyInCheck"})
_BODY_KEYS: Final = frozenset({"maxRequestBytes", "allowPartialMessage", "packAsBytes"})


@dataclass(frozen=True)
class ClusterRequest:
    """A cluster the generated filters name and the caller must provide (``outbound|P||H``)."""

    name: str
    host: str
    port: int
    #: The upstream speaks TLS (an ``https`` JWKS URI).
    tls: bool = False
    #: What needs it, for logs ("ext_authz provider x", "JWKS of issuer y").
    purpose: str = ""


@dataclass(frozen=True, eq=False)
class ExtAuthzProvider:
    name: str
    kind: Literal["http", "grpc"]
    http: HttpFilter
    #: gRPC providers only: the network ext_authz filter for TCP chains.
    tcp: NetworkFilter | None
    cluster: ClusterRequest


@dataclass(frozen=True, eq=False)
class Providers:
    """The mesh config's ext_authz providers, resolved against a snapshot's services."""

    by_name: Mapping[str, ExtAuthzProvider] = field(default_factory=dict)
    #: provider name -> why it cannot be used (invalid config, service not found, not ext_authz).
    errors: Mapping[str, str] = field(default_factory=dict)
    #: The config objects resolution read (for callers' memo keys).
    inputs: tuple[object, ...] = ()


def _duration(value: Any, where: str) -> duration_pb2.Duration:
    try:
        d = parse_duration(value)
    except PydanticCustomError as exc:
        raise ValueError(f"{where}: {exc}") from None
    return duration_pb2.Duration(seconds=d.seconds, nanos=d.subsecond_nanos)


def _headers(values: Any, where: str) -> string_pb2.ListStringMatcher | None:
    """Istio's ``generateHeaders``: ``x*`` prefix, ``*x`` suffix, else exact; case-insensitive."""
    if values is None:
        return None
    if not isinstance(values, list) or not all(isinstance(v, str) and v for v in values):
        raise ValueError(f"{where} must be a list of header names")
    if not values:
        return None
    out = string_pb2.ListStringMatcher()
    for v in values:
        if v == "*":
            raise ValueError(f'{where}: a single wildcard ("*") is not supported, use a prefix or suffix match')
        if v.startswith("*"):
            out.patterns.add(suffix=v[1:], ignore_case=True)
        elif v.endswith("*"):
            out.patterns.add(prefix=v[:-1], ignore_case=True)
        else:
            out.patterns.add(exact=v, ignore_case=True)
    return out


def _filter_enabled(rbac_filter: str, provider: str) -> metadata_pb2.MetadataMatcher:
    m = metadata_pb2.MetadataMatcher(filter=rbac_filter)
    m.path.add(key=EXT_AUTHZ_STAT_PREFIX + SHADOW_POLICY_ID)
    m.value.string_match.prefix = f"{rbac.EXT_AUTHZ_PREFIX}-{provider}-ns["
    return m


def _resolve_service(snapshot: ConfigSnapshot, service: Any) -> tuple[str, object]:
    """``[<namespace>/]<hostname>`` -> (hostname, the Service/ServiceEntry it names)."""
    if not isinstance(service, str) or not service:
        raise ValueError("service must not be empty")
    ns, slash, host = service.rpartition("/")
    if slash and "." not in host:
        host = names.service_fqdn(host, ns)
    info = outbound.service_for_host(snapshot, host)
    if info is None or (slash and info.namespace != ns):
        raise ValueError(f"could not find service {service} in the service registry")
    return host, outbound.source_for_host(snapshot, host)


def _status(value: Any) -> http_status_pb2.HttpStatus | None:
    if value in (None, ""):
        return None
    try:
        code = int(str(value))
        http_status_pb2.StatusCode.Name(code)
    except ValueError:
        raise ValueError(f"unsupported statusOnError {value!r}") from None
    return http_status_pb2.HttpStatus(code=code)


def _body(value: Any) -> http_ext_authz_pb2.BufferSettings | None:
    if value is None:
        return None
    if not isinstance(value, Mapping) or set(value) - _BODY_KEYS:
        raise ValueError(f"includeRequestBodyInCheck accepts only {sorted(_BODY_KEYS)}")
    return http_ext_authz_pb2.BufferSettings(max_request_bytes=int(value.get("maxRequestBytes", 0)),
                                             allow_partial_message=bool(value.get("allowPartialMessage", False)),
                                             pack_as_bytes=bool(value.get("packAsBytes", False)))


def _port(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise ValueError(f"port must be in the range [1, 65535], found: {value!r}")
    return value


def _build(snapshot: ConfigSnapshot, name: str, kind: Literal["http", "grpc"], cfg: Mapping[str, Any]
           ) -> tuple[ExtAuthzProvider, object]:
    unknown = set(cfg) - (_HTTP_KEYS if kind == "http" else _GRPC_KEYS)
    if unknown:
        raise ValueError(f"unknown field(s) {sorted(unknown)}")
    port = _port(cfg.get("port"))
    host, source = _resolve_service(snapshot, cfg.get("service"))
    cluster = names.outbound_cluster(port, host)
    timeout = _duration(cfg["timeout"], "timeout") if "timeout" in cfg else duration_pb2.Duration(
        seconds=DEFAULT_TIMEOUT_S)
    status = _status(cfg.get("statusOnError"))
    body = _body(cfg.get("includeRequestBodyInCheck"))
    fail_open = bool(cfg.get("failOpen", False))
    ea = http_ext_authz_pb2.ExtAuthz(failure_mode_allow=fail_open, transport_api_version=config_source_pb2.V3,
                                     clear_route_cache=bool(cfg.get("clearRouteCache", False)),
                                     filter_enabled_metadata=_filter_enabled(rbac.HTTP_RBAC, name))
    if status is not None:
        ea.status_on_error.CopyFrom(status)
    if body is not None:
        ea.with_request_body.CopyFrom(body)
    tcp: NetworkFilter | None = None
    if kind == "http":
        prefix = cfg.get("pathPrefix", "")
        if not isinstance(prefix, str) or (prefix and not prefix.startswith("/")):
            raise ValueError(f"pathPrefix must begin with `/`, found: {prefix!r}")
        svc = ea.http_service
        svc.path_prefix = prefix
        svc.server_uri.CopyFrom(http_uri_pb2.HttpUri(uri=f"http://{host}", cluster=cluster, timeout=timeout))
        allowed = _headers(cfg.get("includeRequestHeadersInCheck"), "includeRequestHeadersInCheck") or _headers(
            cfg.get("includeHeadersInCheck"), "includeHeadersInCheck")
        if allowed is not None:
            ea.allowed_headers.CopyFrom(allowed)
        extra = cfg.get("includeAdditionalHeadersInCheck") or {}
        if not isinstance(extra, Mapping):
            raise ValueError("includeAdditionalHeadersInCheck must be a map of header name to value")
        for k in sorted(extra):
            svc.authorization_request.headers_to_add.add(key=str(k), value=str(extra[k]))
        response = {"allowed_upstream_headers": "headersToUpstreamOnAllow",
                    "allowed_client_headers": "headersToDownstreamOnDeny",
                    "allowed_client_headers_on_success": "headersToDownstreamOnAllow"}
        for attr, key in response.items():
            lst = _headers(cfg.get(key), key)
            if lst is not None:
                getattr(svc.authorization_response, attr).CopyFrom(lst)
    else:
        grpc = grpc_service_pb2.GrpcService(timeout=timeout)
        grpc.envoy_grpc.cluster_name = cluster
        # ``|`` is invalid in a gRPC authority: Istio's substitute.
        grpc.envoy_grpc.authority = cluster.replace("|", "_.")
        ea.grpc_service.CopyFrom(grpc)
        net = net_ext_authz_pb2.ExtAuthz(stat_prefix=rbac.TCP_STAT_PREFIX, failure_mode_allow=fail_open,
                                         transport_api_version=config_source_pb2.V3, grpc_service=grpc,
                                         filter_enabled_metadata=_filter_enabled(rbac.NETWORK_RBAC, name))
        tcp = NetworkFilter(name=NETWORK_EXT_AUTHZ, typed_config=packed(net))
    return ExtAuthzProvider(name=name, kind=kind, http=HttpFilter(name=HTTP_EXT_AUTHZ, typed_config=packed(ea)),
                            tcp=tcp, cluster=ClusterRequest(cluster, host, port, purpose=f"ext_authz provider {name}")
                            ), source


def parse_providers(snapshot: ConfigSnapshot, mesh_config: Mapping[str, Any] | None) -> Providers:
    """MeshConfig ``extensionProviders`` (camelCase, as in Istio's mesh config YAML) -> providers.

    Only the ext_authz kinds are built; a provider of another kind (tracing, logging ...) is
    recorded as unusable for CUSTOM.  Names must be unique: every duplicate is unusable."""
    out: dict[str, ExtAuthzProvider] = {}
    errors: dict[str, str] = {}
    inputs: list[object] = [mesh_config]
    entries = (mesh_config or {}).get("extensionProviders") or []
    if not isinstance(entries, list):
        return Providers(errors={"": "extensionProviders must be a list"}, inputs=tuple(inputs))
    seen: set[str] = set()
    for i, entry in enumerate(entries):
        name = entry.get("name") if isinstance(entry, Mapping) else None
        if not isinstance(name, str) or not name:
            errors[f"#{i}"] = f"extension provider name must not be empty, found empty at index: {i}"
            continue
        if name in seen:
            errors[name] = f"extension provider name must be unique, found duplicate: {name}"
            out.pop(name, None)
            continue
        seen.add(name)
        assert isinstance(entry, Mapping)
        kinds = [k for k in entry if k != "name"]
        if kinds == ["envoyExtAuthzHttp"] or kinds == ["envoyExtAuthzGrpc"]:
            kind: Literal["http", "grpc"] = "http" if kinds[0] == "envoyExtAuthzHttp" else "grpc"
            cfg = entry[kinds[0]]
            try:
                if not isinstance(cfg, Mapping):
                    raise ValueError(f"{kinds[0]} must be a mapping")
                provider, source = _build(snapshot, name, kind, cfg)
            except (ValueError, TypeError) as exc:
                errors[name] = f"failed to parse extension provider {name}: {exc}"
                inputs.append(None)
                continue
            out[name] = provider
            inputs.append(source)
        else:
            errors[name] = f"extension provider {name} is not an ext_authz provider ({', '.join(kinds) or 'empty'})"
    return Providers(by_name=out, errors=errors, inputs=tuple(inputs))


@dataclass
class CustomResult:
    http: list[HttpFilter] = field(default_factory=list)
    tcp: list[NetworkFilter] = field(default_factory=list)
    clusters: list[ClusterRequest] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def _bad(entries_http: Sequence[tuple[str, Policy]], entries_tcp: Sequence[tuple[str, Policy]],
         out: CustomResult) -> None:
    cfg = http_rbac_pb2.RBAC(rules=rbac.bad_custom_rules(entries_http))
    out.http.append(HttpFilter(name=rbac.HTTP_RBAC, typed_config=packed(cfg)))
    _bad_tcp(entries_tcp, out)


def _bad_tcp(entries_tcp: Sequence[tuple[str, Policy]], out: CustomResult) -> None:
    net = net_rbac_pb2.RBAC(rules=rbac.bad_custom_rules(entries_tcp), stat_prefix=rbac.TCP_STAT_PREFIX)
    out.tcp.append(NetworkFilter(name=rbac.NETWORK_RBAC, typed_config=packed(net)))


def custom_filters(policies: Sequence[CompiledPolicy], providers: Providers, *,
                   multiple_providers: bool = False) -> CustomResult:
    """The CUSTOM part of a chain's authorization: per provider, RBAC shadow + ext_authz."""
    out = CustomResult()
    by_provider: dict[str, list[CompiledPolicy]] = {}
    for cp in policies:
        by_provider.setdefault(cp.provider, []).append(cp)
    names_ = sorted(by_provider)
    if len(names_) > 1 and not multiple_providers:
        out.problems.append(f"several CUSTOM providers apply ({', '.join(names_)}); without the multiple-providers "
                            "setting every CUSTOM policy is enforced as DENY")
        for p in names_:
            group = by_provider[p]
            _bad([e for cp in group for e in cp.http], [e for cp in group for e in cp.tcp], out)
        return out
    for p in names_:
        group = by_provider[p]
        http_entries = [e for cp in group for e in cp.http]
        tcp_entries = [e for cp in group for e in cp.tcp]
        who = ", ".join(f"{cp.source.namespace}/{cp.source.name}" for cp in group)
        provider = providers.by_name.get(p)
        if provider is None:
            reason = providers.errors.get(p, f"extension provider {p!r} is not defined in the mesh config")
            out.problems.append(f"CUSTOM AuthorizationPolicy {who}: {reason}; enforced as DENY "
                                f"(keys suffixed {rbac.BAD_CUSTOM_SUFFIX})")
            _bad(http_entries, tcp_entries, out)
            continue
        shadow = rbac.rule_sets("CUSTOM", group, for_tcp=False).rules
        cfg = http_rbac_pb2.RBAC(shadow_rules=shadow, shadow_rules_stat_prefix=EXT_AUTHZ_STAT_PREFIX)
        out.http += [HttpFilter(name=rbac.HTTP_RBAC, typed_config=packed(cfg)), provider.http]
        if provider.tcp is not None:
            tshadow = rbac.rule_sets("CUSTOM", group, for_tcp=True).rules
            net = net_rbac_pb2.RBAC(shadow_rules=tshadow, stat_prefix=rbac.TCP_STAT_PREFIX,
                                    shadow_rules_stat_prefix=EXT_AUTHZ_STAT_PREFIX)
            out.tcp += [NetworkFilter(name=rbac.NETWORK_RBAC, typed_config=packed(net)), provider.tcp]
        else:
            out.problems.append(f"CUSTOM AuthorizationPolicy {who}: HTTP provider {p!r} cannot check TCP traffic; "
                                "TCP connections the policy selects are denied")
            _bad_tcp(tcp_entries, out)
        out.clusters.append(provider.cluster)
    return out
