"""CUSTOM AuthorizationPolicies -> RBAC (shadow) + ext_authz filters (Istio's ``builder/extauthz.go``).

Facts: docs/istio-waypoint-shape.md §5.2 and Istio's builder:

* per provider (sorted by name): an RBAC filter whose ``shadow_rules`` (action DENY, stat prefix
  ``istio_ext_authz_``) hold the provider's policies, keyed ``istio-ext-authz-<provider>-ns[..]..``;
  then the ext_authz filter, enabled only when that RBAC filter's shadow result names one of them
  (``filter_enabled_metadata`` on ``istio_ext_authz_shadow_effective_policy_id``);
* the provider comes from MeshConfig ``extensionProviders`` (typed ``EnvoyExtAuthzHttp`` /
  ``EnvoyExtAuthzGrpc`` in ``model/meshconfig.py``); its service must exist (a Kubernetes Service
  or ServiceEntry host) and declare the port, and the check goes to cluster
  ``outbound|<port>||<host>``, which the caller must add (returned as a ``ClusterRequest``; the
  waypoint translator turns it into the service's outbound clusters);
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
from pydantic import ValidationError

from istiod_lite.model import ConfigSnapshot
from istiod_lite.model.meshconfig import (
    EnvoyExtAuthzGrpc,
    EnvoyExtAuthzHttp,
    ExtAuthzBufferSettings,
    ExtensionProvider,
    MeshConfig,
)
from istiod_lite.model.types import Duration
from istiod_lite.translator.authz import rbac
from istiod_lite.translator.authz.rbac import CompiledPolicy, HttpFilter, NetworkFilter
from istiod_lite.translator.authz.rules import Policy
from istiod_lite.translator.clusters import outbound
from istiod_lite.translator.core import names
from istiod_lite.translator.core.protos import packed

HTTP_EXT_AUTHZ: Final = "envoy.filters.http.ext_authz"
NETWORK_EXT_AUTHZ: Final = "envoy.filters.network.ext_authz"
EXT_AUTHZ_STAT_PREFIX: Final = "istio_ext_authz_"
SHADOW_POLICY_ID: Final = "shadow_effective_policy_id"
DEFAULT_TIMEOUT_S: Final = 600
@dataclass(frozen=True)
class ClusterRequest:
    """A cluster the generated filters name and the caller must provide (``outbound|P||H``)."""

    name: str
    host: str
    port: int
    #: The upstream speaks TLS (an ``https`` JWKS URI).
    tls: bool = False
    #: The upstream needs HTTP/2 (a gRPC ext_authz service).
    h2: bool = False
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


def _duration(value: Duration | None) -> duration_pb2.Duration:
    if value is None:
        return duration_pb2.Duration(seconds=DEFAULT_TIMEOUT_S)
    return duration_pb2.Duration(seconds=value.seconds, nanos=value.subsecond_nanos)


def _headers(values: Sequence[str], where: str) -> string_pb2.ListStringMatcher | None:
    """Istio's ``generateHeaders``: ``x*`` prefix, ``*x`` suffix, else exact; case-insensitive."""
    if not values:
        return None
    out = string_pb2.ListStringMatcher()
    for v in values:
        if not v:
            raise ValueError(f"{where}: a header name must not be empty")
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


def _resolve_service(snapshot: ConfigSnapshot, service: str, port: int) -> tuple[str, object]:
    """``[<namespace>/]<hostname>`` -> (hostname, the Service/ServiceEntry it names).

    The port must be one the service declares (a choice: Istio does not check, and an
    ``envoy_grpc`` naming a cluster that does not exist makes Envoy reject the whole listener)."""
    ns, slash, host = service.rpartition("/")
    if slash and "." not in host:
        host = names.service_fqdn(host, ns)
    info = outbound.service_for_host(snapshot, host)
    if info is None or (slash and info.namespace != ns):
        raise ValueError(f"could not find service {service} in the service registry")
    if info.port(port) is None:
        raise ValueError(f"service {service} has no port {port}")
    return host, outbound.source_for_host(snapshot, host)


def _status(value: str) -> http_status_pb2.HttpStatus | None:
    """Istio's ``parseStatusOnError``: empty -> Envoy's default (403), else a known HTTP status."""
    if not value:
        return None
    try:
        code = int(value)
        http_status_pb2.StatusCode.Name(code)
    except ValueError:
        raise ValueError(f"unsupported statusOnError {value!r}") from None
    return http_status_pb2.HttpStatus(code=code)


def _body(value: ExtAuthzBufferSettings | None) -> http_ext_authz_pb2.BufferSettings | None:
    if value is None:
        return None
    return http_ext_authz_pb2.BufferSettings(max_request_bytes=value.max_request_bytes,
                                             allow_partial_message=value.allow_partial_message,
                                             pack_as_bytes=value.pack_as_bytes)


def _build(snapshot: ConfigSnapshot, name: str, cfg: EnvoyExtAuthzHttp | EnvoyExtAuthzGrpc
           ) -> tuple[ExtAuthzProvider, object]:
    """One typed MeshConfig ext_authz provider -> its filters (Istio's ``buildExtAuthzHTTP``/``GRPC``)."""
    port = cfg.port
    host, source = _resolve_service(snapshot, cfg.service, port)
    cluster = names.outbound_cluster(port, host)
    timeout = _duration(cfg.timeout)
    status = _status(cfg.status_on_error)
    body = _body(cfg.include_request_body_in_check)
    ea = http_ext_authz_pb2.ExtAuthz(failure_mode_allow=cfg.fail_open, transport_api_version=config_source_pb2.V3,
                                     clear_route_cache=cfg.clear_route_cache,
                                     filter_enabled_metadata=_filter_enabled(rbac.HTTP_RBAC, name))
    if status is not None:
        ea.status_on_error.CopyFrom(status)
    if body is not None:
        ea.with_request_body.CopyFrom(body)
    tcp: NetworkFilter | None = None
    kind: Literal["http", "grpc"]
    if isinstance(cfg, EnvoyExtAuthzHttp):
        kind = "http"
        svc = ea.http_service
        svc.path_prefix = cfg.path_prefix
        svc.server_uri.CopyFrom(http_uri_pb2.HttpUri(uri=f"http://{host}", cluster=cluster, timeout=timeout))
        allowed = _headers(cfg.include_request_headers_in_check, "includeRequestHeadersInCheck") or _headers(
            cfg.include_headers_in_check, "includeHeadersInCheck")
        if allowed is not None:
            ea.allowed_headers.CopyFrom(allowed)
        extra = cfg.include_additional_headers_in_check
        for k in sorted(extra):
            svc.authorization_request.headers_to_add.add(key=k, value=extra[k])
        response = {"allowed_upstream_headers": ("headersToUpstreamOnAllow", cfg.headers_to_upstream_on_allow),
                    "allowed_client_headers": ("headersToDownstreamOnDeny", cfg.headers_to_downstream_on_deny),
                    "allowed_client_headers_on_success": ("headersToDownstreamOnAllow",
                                                          cfg.headers_to_downstream_on_allow)}
        for attr, (key, values) in response.items():
            lst = _headers(values, key)
            if lst is not None:
                getattr(svc.authorization_response, attr).CopyFrom(lst)
    else:
        kind = "grpc"
        grpc = grpc_service_pb2.GrpcService(timeout=timeout)
        grpc.envoy_grpc.cluster_name = cluster
        # The provider's hostname, as istiod sets it (istio/istio#46289): the ext_authz server sees
        # the service it is, not a cluster name (``|`` is not even valid in an authority).
        grpc.envoy_grpc.authority = host
        ea.grpc_service.CopyFrom(grpc)
        net = net_ext_authz_pb2.ExtAuthz(stat_prefix=rbac.TCP_STAT_PREFIX, failure_mode_allow=cfg.fail_open,
                                         transport_api_version=config_source_pb2.V3, grpc_service=grpc,
                                         filter_enabled_metadata=_filter_enabled(rbac.NETWORK_RBAC, name))
        tcp = NetworkFilter(name=NETWORK_EXT_AUTHZ, typed_config=packed(net))
    request = ClusterRequest(cluster, host, port, h2=kind == "grpc", purpose=f"ext_authz provider {name}")
    return ExtAuthzProvider(name=name, kind=kind, http=HttpFilter(name=HTTP_EXT_AUTHZ, typed_config=packed(ea)),
                            tcp=tcp, cluster=request), source


def _validation_message(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(x) for x in e['loc'])}: {e['msg']}" if e["loc"] else str(e["msg"])
                     for e in exc.errors())


def _typed_entries(mesh_config: MeshConfig | Mapping[str, Any] | None, errors: dict[str, str]
                   ) -> list[ExtensionProvider]:
    """The mesh config's providers, typed.  A raw mapping (Istio's camelCase YAML) is validated
    entry by entry, so one bad provider makes only itself unusable (its policies deny)."""
    if mesh_config is None:
        return []
    if isinstance(mesh_config, MeshConfig):
        return list(mesh_config.extension_providers)  # validated, names unique
    entries = mesh_config.get("extensionProviders") or []
    if not isinstance(entries, list):
        errors[""] = "extensionProviders must be a list"
        return []
    out: dict[str, ExtensionProvider] = {}
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
        try:
            out[name] = ExtensionProvider.model_validate(entry)
        except ValidationError as exc:
            errors[name] = f"failed to parse extension provider {name}: {_validation_message(exc)}"
    return list(out.values())


def parse_providers(snapshot: ConfigSnapshot, mesh_config: MeshConfig | Mapping[str, Any] | None) -> Providers:
    """MeshConfig ``extensionProviders`` -> the usable ext_authz providers.

    ``mesh_config`` is the typed ``MeshConfig`` (what ``--mesh-config`` loads), or a raw mapping
    in Istio's YAML spelling.  Only the ext_authz kinds are built; a provider of another kind
    (tracing, logging ...) is recorded as unusable for CUSTOM, as is one whose service does not
    exist or whose settings Envoy cannot take (``statusOnError``, header patterns)."""
    out: dict[str, ExtAuthzProvider] = {}
    errors: dict[str, str] = {}
    inputs: list[object] = [mesh_config]
    for provider in _typed_entries(mesh_config, errors):
        name = provider.name
        cfg = provider.envoy_ext_authz_http or provider.envoy_ext_authz_grpc
        if cfg is None:
            kinds = [k for k in provider.model_dump(by_alias=True, exclude_none=True) if k != "name"]
            errors[name] = f"extension provider {name} is not an ext_authz provider ({', '.join(kinds) or 'empty'})"
            continue
        try:
            built, source = _build(snapshot, name, cfg)
        except ValueError as exc:
            errors[name] = f"failed to parse extension provider {name}: {exc}"
            inputs.append(None)
            continue
        out[name] = built
        inputs.append(source)
    return Providers(by_name=out, errors=errors, inputs=tuple(inputs))


@dataclass
class CustomResult:
    """The CUSTOM filters of a chain; ``*_roles`` name each filter's slot (``custom-<provider>-rbac``,
    ``custom-<provider>-ext-authz``, ``custom-deny-<provider>``), unique within the chain."""

    http: list[HttpFilter] = field(default_factory=list)
    tcp: list[NetworkFilter] = field(default_factory=list)
    http_roles: list[str] = field(default_factory=list)
    tcp_roles: list[str] = field(default_factory=list)
    clusters: list[ClusterRequest] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def _bad(provider: str, entries_http: Sequence[tuple[str, Policy]], entries_tcp: Sequence[tuple[str, Policy]],
         out: CustomResult) -> None:
    cfg = http_rbac_pb2.RBAC(rules=rbac.bad_custom_rules(entries_http))
    out.http.append(HttpFilter(name=rbac.HTTP_RBAC, typed_config=packed(cfg)))
    out.http_roles.append(f"custom-deny-{provider}")
    _bad_tcp(provider, entries_tcp, out)


def _bad_tcp(provider: str, entries_tcp: Sequence[tuple[str, Policy]], out: CustomResult) -> None:
    net = net_rbac_pb2.RBAC(rules=rbac.bad_custom_rules(entries_tcp), stat_prefix=rbac.TCP_STAT_PREFIX)
    out.tcp.append(NetworkFilter(name=rbac.NETWORK_RBAC, typed_config=packed(net)))
    out.tcp_roles.append(f"custom-deny-{provider}")


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
            _bad(p, [e for cp in group for e in cp.http], [e for cp in group for e in cp.tcp], out)
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
            _bad(p, http_entries, tcp_entries, out)
            continue
        shadow = rbac.rule_sets("CUSTOM", group, for_tcp=False).rules
        cfg = http_rbac_pb2.RBAC(shadow_rules=shadow, shadow_rules_stat_prefix=EXT_AUTHZ_STAT_PREFIX)
        out.http += [HttpFilter(name=rbac.HTTP_RBAC, typed_config=packed(cfg)), provider.http]
        out.http_roles += [f"custom-{p}-rbac", f"custom-{p}-ext-authz"]
        if provider.tcp is not None:
            tshadow = rbac.rule_sets("CUSTOM", group, for_tcp=True).rules
            net = net_rbac_pb2.RBAC(shadow_rules=tshadow, stat_prefix=rbac.TCP_STAT_PREFIX,
                                    shadow_rules_stat_prefix=EXT_AUTHZ_STAT_PREFIX)
            out.tcp += [NetworkFilter(name=rbac.NETWORK_RBAC, typed_config=packed(net)), provider.tcp]
            out.tcp_roles += [f"custom-{p}-rbac", f"custom-{p}-ext-authz"]
        else:
            out.problems.append(f"CUSTOM AuthorizationPolicy {who}: HTTP provider {p!r} cannot check TCP traffic; "
                                "TCP connections the policy selects are denied")
            _bad_tcp(p, tcp_entries, out)
        out.clusters.append(provider.cluster)
    return out
