"""Which MeshConfig fields a waypoint served by istiod-lite honours, and why the others are ignored.

One table (``FIELDS``) is the single source for ``istiod-lite validate --mesh-config`` warnings,
the server's start-up log and docs/meshconfig.md (a unit test checks the doc lists every entry,
and that every field of the model has an entry: a new field cannot be silently dropped).

Keys are wire paths (camelCase); ``[]`` stands for any list element.  An entry is:

* ``HONOURED`` - applied; nothing below it is looked at;
* ``IGNORED`` - accepted and unused; reported once with its path when the mesh config sets it;
* ``BY_FIELD`` - look at the fields set below it (each has its own entry).

A set field without an entry (a field added to the model without a decision) counts as ignored.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final, Literal

from pydantic import BaseModel

from istiod_lite.model.meshconfig import MeshConfig

Status = Literal["honoured", "ignored", "by-field"]
HONOURED: Final = "honoured"
IGNORED: Final = "ignored"
BY_FIELD: Final = "by-field"


@dataclass(frozen=True, slots=True)
class FieldSupport:
    status: Status
    #: What the waypoint does with it (honoured) or why it does nothing (ignored).
    note: str = ""


def _h(note: str) -> FieldSupport:
    return FieldSupport(HONOURED, note)


def _i(note: str) -> FieldSupport:
    return FieldSupport(IGNORED, note)


_BY: Final = FieldSupport(BY_FIELD)
_SIDECAR: Final = "sidecar/gateway setting; a waypoint has no such listener"
_AGENT: Final = "per-proxy agent setting that istiod-lite's waypoint agent does not take from the mesh config"
_INSTALL: Final = "installation/istiod setting, not part of the waypoint's xDS"
_EXPORT: Final = "the exportTo of objects that set none (docs/istio-waypoint-shape.md §3.1)"
_TELEMETRY_KIND: Final = ("provider kind the waypoint cannot export to with upstream Envoy; a Telemetry naming it "
                          "is reported by validate")

FIELDS: Final[dict[str, FieldSupport]] = {
    # --- honoured ---------------------------------------------------------------------------
    "accessLogFile": _h("built-in 'envoy' file access log path"),
    "accessLogEncoding": _h("built-in 'envoy' access log format (TEXT/JSON)"),
    "accessLogFormat": _h("built-in 'envoy' access log format string"),
    "enableTracing": _h("tracing on the HTTP chains when no Telemetry configures it"),
    "defaultProviders": _h("mesh-wide access logging/tracing/metrics providers"),
    "extensionProviders": _BY,
    "extensionProviders[].name": _h("provider name referenced by Telemetry and CUSTOM AuthorizationPolicy"),
    "extensionProviders[].envoyFileAccessLog": _BY,
    "extensionProviders[].envoyFileAccessLog.path": _h("access log file"),
    "extensionProviders[].envoyFileAccessLog.logFormat": _h("text or JSON access log format"),
    "extensionProviders[].envoyFileAccessLog.omitEmptyValues": _h("Envoy log_format.omit_empty_values"),
    "extensionProviders[].zipkin": _BY,
    "extensionProviders[].zipkin.service": _h("collector"),
    "extensionProviders[].zipkin.port": _h("collector port"),
    "extensionProviders[].zipkin.maxTagLength": _h("max_path_tag_length"),
    "extensionProviders[].zipkin.enable64bitTraceId": _h("trace_id_128bit"),
    "extensionProviders[].zipkin.path": _h("collector endpoint"),
    "extensionProviders[].zipkin.traceContextOption": _h("B3 / B3+W3C propagation"),
    "extensionProviders[].zipkin.timeout": _i("not sent to upstream Envoy's Zipkin tracer yet"),
    "extensionProviders[].zipkin.headers": _i("not sent to upstream Envoy's Zipkin tracer yet"),
    "extensionProviders[].opentelemetry": _BY,
    "extensionProviders[].opentelemetry.service": _h("OTLP collector"),
    "extensionProviders[].opentelemetry.port": _h("OTLP collector port"),
    "extensionProviders[].opentelemetry.maxTagLength": _h("max_path_tag_length"),
    "extensionProviders[].opentelemetry.http": _BY,
    "extensionProviders[].opentelemetry.http.path": _h("OTLP/HTTP path"),
    "extensionProviders[].opentelemetry.http.timeout": _h("OTLP/HTTP timeout"),
    "extensionProviders[].opentelemetry.http.headers": _BY,
    "extensionProviders[].opentelemetry.http.headers[].name": _h("header name"),
    "extensionProviders[].opentelemetry.http.headers[].value": _h("header value"),
    "extensionProviders[].opentelemetry.http.headers[].envName": _i("istiod's environment is not read; the "
                                                                    "header is not sent"),
    "extensionProviders[].opentelemetry.grpc": _BY,
    "extensionProviders[].opentelemetry.grpc.timeout": _h("OTLP/gRPC timeout"),
    "extensionProviders[].opentelemetry.grpc.initialMetadata": _BY,
    "extensionProviders[].opentelemetry.grpc.initialMetadata[].name": _h("metadata name"),
    "extensionProviders[].opentelemetry.grpc.initialMetadata[].value": _h("metadata value"),
    "extensionProviders[].opentelemetry.grpc.initialMetadata[].envName": _i("istiod's environment is not read; "
                                                                            "the entry is not sent"),
    "extensionProviders[].opentelemetry.resourceDetectors": _i("resource detectors are not configured"),
    "extensionProviders[].opentelemetry.serviceAttributeEnrichment": _i("service attributes are not enriched"),
    "extensionProviders[].opentelemetry.dynatraceSampler": _i("no Dynatrace sampler in the waypoint's tracer"),
    "extensionProviders[].prometheus": _h("Envoy stats on /stats/prometheus"),
    "extensionProviders[].envoyExtAuthzHttp": _h("CUSTOM AuthorizationPolicy provider (HTTP ext_authz)"),
    "extensionProviders[].envoyExtAuthzGrpc": _h("CUSTOM AuthorizationPolicy provider (gRPC ext_authz)"),
    "extensionProviders[].lightstep": _i(_TELEMETRY_KIND),
    "extensionProviders[].datadog": _i(_TELEMETRY_KIND),
    "extensionProviders[].stackdriver": _i(_TELEMETRY_KIND),
    "extensionProviders[].opencensus": _i(_TELEMETRY_KIND),
    "extensionProviders[].skywalking": _i(_TELEMETRY_KIND),
    "extensionProviders[].envoyHttpAls": _i(_TELEMETRY_KIND),
    "extensionProviders[].envoyTcpAls": _i(_TELEMETRY_KIND),
    "extensionProviders[].envoyOtelAls": _i(_TELEMETRY_KIND),
    "extensionProviders[].sds": _i("SDS providers serve gateway credentials; a waypoint has none"),
    "rootNamespace": _h("root namespace of AuthorizationPolicy/Telemetry"),
    "pathNormalization": _h("HCM path normalization before authorization and routing"),
    "trustDomain": _h("SPIFFE trust domain: HBONE peer SAN check, authorization principals, certificates"),
    "trustDomainAliases": _h("domains treated as the trust domain: HBONE peer SAN check and authorization "
                             "principals"),
    "connectTimeout": _h("connect timeout of every service cluster a DestinationRule does not set, and of "
                         "connect_originate"),
    "hboneIdleTimeout": _h("idle timeout of connect_originate's HBONE connections to ztunnel (default 1h)"),
    "defaultConfig": _BY,
    "defaultConfig.tracing": _BY,
    "defaultConfig.tracing.sampling": _h("random sampling % where no Telemetry sets randomSamplingPercentage"),
    # (defaultConfig.proxyHeaders: see below, field by field)
    # --- ignored ----------------------------------------------------------------------------
    "defaultServiceExportTo": _h(_EXPORT),
    "defaultVirtualServiceExportTo": _h(_EXPORT),
    "defaultDestinationRuleExportTo": _h(_EXPORT),
    "localityLbSetting": _h("mesh-wide locality load balancing where no DestinationRule sets one (docs/locality.md)"),
    "proxyListenPort": _i(_SIDECAR),
    "proxyInboundListenPort": _i(_SIDECAR),
    "proxyHttpPort": _i(_SIDECAR),
    "protocolDetectionTimeout": _i("no protocol sniffing on a waypoint (protocols come from Service ports)"),
    "tcpKeepalive": _i("mesh-wide upstream TCP keepalive is not applied (a DestinationRule's is)"),
    "ingressClass": _i(_INSTALL),
    "ingressService": _i(_INSTALL),
    "ingressControllerMode": _i(_INSTALL),
    "ingressSelector": _i(_INSTALL),
    "enableEnvoyAccessLogService": _i("legacy ALS; use Telemetry and extensionProviders"),
    "disableEnvoyListenerLog": _i("no listener-level access log is configured"),
    "outboundTrafficPolicy": _i("a waypoint only serves the services bound to it: istiod builds no Passthrough "
                                "or BlackHole cluster for it, so there is nothing the policy could change"),
    "inboundTrafficPolicy": _i(_SIDECAR),
    "configSources": _i("istiod-lite reads --config and the cluster, not MCP config sources"),
    "enableAutoMtls": _i("waypoint upstreams are always HBONE (mTLS) or per DestinationRule TLS"),
    "caCertificates": _i("extra trust roots are not distributed; the agent trusts its CA's root"),
    "dnsRefreshRate": _i("DNS clusters use istiod's fixed refresh rate"),
    "h2UpgradePolicy": _i("mesh-wide h2 upgrade not applied (a DestinationRule's is)"),
    "inboundClusterStatName": _i("cluster stat names keep istiod's defaults"),
    "outboundClusterStatName": _i("cluster stat names keep istiod's defaults"),
    "certificates": _i("deprecated DNS certificates"),
    "serviceSettings": _i("clusterLocal host settings are multi-cluster; istiod-lite serves one cluster"),
    "serviceScopeConfigs": _i("service scope is multi-cluster; istiod-lite serves one cluster"),
    "enablePrometheusMerge": _i(_AGENT),
    "verifyCertificateAtClient": _i("deprecated"),
    "ca": _i("istiod-lite is its own CA (--ca-dir)"),
    "discoverySelectors": _i("all namespaces are watched"),
    "defaultHttpRetryPolicy": _i("routes keep istiod's default retry policy unless a VirtualService sets one"),
    "meshMTLS": _i("HBONE is TLS 1.3 only; its TLS settings are fixed"),
    "tlsDefaults": _i("upstream TLS parameters keep Envoy's defaults"),
    # defaultConfig (ProxyConfig) fields
    "defaultConfig.tracing.zipkin": _i("legacy tracer; use Telemetry and extensionProviders"),
    "defaultConfig.tracing.lightstep": _i("legacy tracer; use Telemetry and extensionProviders"),
    "defaultConfig.tracing.datadog": _i("legacy tracer; use Telemetry and extensionProviders"),
    "defaultConfig.tracing.stackdriver": _i("legacy tracer; use Telemetry and extensionProviders"),
    "defaultConfig.tracing.openCensusAgent": _i("legacy tracer; use Telemetry and extensionProviders"),
    "defaultConfig.tracing.customTags": _i("legacy tracer tags; use Telemetry customTags"),
    "defaultConfig.tracing.maxPathTagLength": _i("legacy tracer setting; use the provider's maxTagLength"),
    "defaultConfig.tracing.tlsSettings": _i("legacy tracer setting"),
    "defaultConfig.tracing.enableIstioTags": _i("legacy tracer setting; Istio tags follow Telemetry"),
    "defaultConfig.configPath": _i(_AGENT),
    "defaultConfig.binaryPath": _i(_AGENT),
    "defaultConfig.serviceCluster": _i("the waypoint's cluster name comes from its Gateway"),
    "defaultConfig.tracingServiceName": _i("the waypoint's trace service name comes from its Gateway"),
    "defaultConfig.drainDuration": _h("the agent's --drain-duration in the waypoint Deployments istiod-lite "
                                      "renders (--waypoint-image)"),
    "defaultConfig.discoveryAddress": _i(_AGENT),
    "defaultConfig.discoveryRefreshDelay": _i("deprecated"),
    "defaultConfig.zipkinAddress": _i("deprecated"),
    "defaultConfig.statsdUdpAddress": _i(_AGENT),
    "defaultConfig.envoyMetricsServiceAddress": _i("deprecated"),
    "defaultConfig.proxyAdminPort": _i(_AGENT),
    "defaultConfig.availabilityZone": _i("deprecated"),
    "defaultConfig.controlPlaneAuthPolicy": _i(_AGENT),
    "defaultConfig.customConfigFile": _i(_AGENT),
    "defaultConfig.statNameLength": _i(_AGENT),
    "defaultConfig.concurrency": _h("the agent's --concurrency (Envoy workers) in the waypoint Deployments "
                                    "istiod-lite renders"),
    "defaultConfig.proxyBootstrapTemplatePath": _i(_AGENT),
    "defaultConfig.interceptionMode": _i(_SIDECAR),
    "defaultConfig.sds": _i("deprecated"),
    "defaultConfig.envoyAccessLogService": _i(_AGENT),
    "defaultConfig.envoyMetricsService": _i(_AGENT),
    "defaultConfig.proxyMetadata": _i(_AGENT),
    "defaultConfig.runtimeValues": _i(_AGENT),
    "defaultConfig.statusPort": _i(_AGENT),
    "defaultConfig.extraStatTags": _i("upstream Envoy has no istio.stats filter to tag"),
    "defaultConfig.gatewayTopology": _i("ingress gateway setting; waypoints do not trust X-Forwarded-For hops"),
    "defaultConfig.terminationDrainDuration": _h("the agent's --termination-drain-duration in the waypoint "
                                                 "Deployments istiod-lite renders"),
    "defaultConfig.meshId": _i(_AGENT),
    "defaultConfig.readinessProbe": _i(_SIDECAR),
    "defaultConfig.proxyStatsMatcher": _h("already satisfied: a waypoint's Envoy keeps every stat (istiod-lite sets "
                                          "no stats inclusion list), so each inclusion holds"),
    "defaultConfig.holdApplicationUntilProxyStarts": _i(_SIDECAR),
    "defaultConfig.caCertificatesPem": _i(_AGENT),
    "defaultConfig.image": _i(_INSTALL),
    "defaultConfig.privateKeyProvider": _i(_AGENT),
    "defaultConfig.proxyHeaders": _BY,
    "defaultConfig.proxyHeaders.server": _h("Server header: name (value) or passed through (disabled), on "
                                            "connect_terminate and the HTTP chains"),
    "defaultConfig.proxyHeaders.requestId": _h("generate_request_id false when disabled, on connect_terminate and "
                                               "the HTTP chains"),
    "defaultConfig.proxyHeaders.forwardedClientCert": _h("connect_terminate's forward_client_cert_details"),
    "defaultConfig.proxyHeaders.envoyDebugHeaders": _h("router suppress_envoy_headers on the HTTP chains"),
    "defaultConfig.proxyHeaders.xForwardedPort": _h("append_x_forwarded_port on the HTTP chains"),
    "defaultConfig.proxyHeaders.setCurrentClientCertDetails": _i("istiod keeps connect_terminate's fixed subject/"
                                                                 "uri/dns details on a waypoint"),
    "defaultConfig.proxyHeaders.attemptCount": _i("the waypoint's routes set no x-envoy-attempt-count"),
    "defaultConfig.proxyHeaders.metadataExchangeHeaders": _i("a waypoint has no metadata-exchange headers"),
    "defaultConfig.proxyHeaders.preserveHttp1HeaderCase": _i("HTTP/1 header case is not preserved (upstream "
                                                             "Envoy's header formatter extension is not configured)"),
    "defaultConfig.proxyHeaders.xForwardedHost": _i("x-forwarded-host is not appended on the waypoint's routes"),
    "defaultConfig.fileFlushInterval": _i(_AGENT),
    "defaultConfig.fileFlushMinSizeKb": _i(_AGENT),
    "defaultConfig.statsCompression": _i(_AGENT),
}


def _wire(model: type[BaseModel] | BaseModel, name: str) -> str:
    info = model.model_fields[name]
    return info.alias or name


def _key(path: str) -> str:
    """``extensionProviders[2].zipkin`` -> ``extensionProviders[].zipkin``."""
    out, depth = [], 0
    for ch in path:
        if ch == "[":
            depth += 1
            out.append("[]")
        elif ch == "]":
            depth -= 1
        elif depth == 0:
            out.append(ch)
    return "".join(out)


def support(path: str) -> FieldSupport | None:
    """The table entry for a concrete path (list indices allowed)."""
    return FIELDS.get(_key(path))


def _set_fields(model: BaseModel, prefix: str) -> Iterator[tuple[str, Any]]:
    for name in sorted(model.model_fields_set, key=lambda n: list(type(model).model_fields).index(n)):
        yield f"{prefix}{_wire(type(model), name)}", getattr(model, name)


def _walk(model: BaseModel, prefix: str, label: str) -> Iterator[tuple[str, FieldSupport]]:
    for path, value in _set_fields(model, prefix):
        entry = support(path) or FieldSupport(IGNORED, "not used by istiod-lite")
        if entry.status == HONOURED:
            continue
        if entry.status == IGNORED:
            yield _labelled(path, label), entry
            continue
        if isinstance(value, BaseModel):
            yield from _walk(value, f"{path}.", label)
        elif isinstance(value, tuple):
            for i, item in enumerate(value):
                if isinstance(item, BaseModel):
                    name = getattr(item, "name", "") if path == "extensionProviders" else ""
                    yield from _walk(item, f"{path}[{i}].", name or label)


def _labelled(path: str, provider: str) -> str:
    return f"{path} ({provider})" if provider else path


def ignored_fields(mesh: MeshConfig) -> list[tuple[str, str]]:
    """``(path, why)`` of every field the mesh config sets that the waypoint does not use."""
    return sorted((p, e.note) for p, e in _walk(mesh, "", ""))


def mesh_config_warnings(mesh: MeshConfig) -> list[str]:
    """Everything to tell the operator about a loaded mesh config, one line each: fields this
    Istio model does not know (stripped, as istiod does), then set fields the waypoint ignores."""
    out = [f"{p}: unknown field (ignored)" for p in sorted(mesh.unknown_fields)]
    out += [f"{p}: ignored: {why}" for p, why in ignored_fields(mesh)]
    return out


def decided(path: str) -> bool:
    """Whether ``path`` (a ``model_paths`` key) is covered by the table: it has an entry, or its
    nearest ancestor with an entry is honoured or ignored as a whole."""
    probe = path
    while True:
        entry = FIELDS.get(probe)
        if entry is not None:
            return probe == path or entry.status != BY_FIELD
        cut = max(probe.rfind("."), probe.rfind("[]"))
        if cut <= 0:
            return False
        probe = probe[:cut]


def model_paths(model: type[BaseModel], prefix: str = "") -> Iterator[str]:
    """Every wire path of a model class (lists as ``[]``): what the completeness test walks."""
    from typing import get_args, get_origin

    for name, info in model.model_fields.items():
        path = f"{prefix}{info.alias or name}"
        yield path
        ann = info.annotation
        stack = [ann]
        while stack:
            t = stack.pop()
            if isinstance(t, type) and issubclass(t, BaseModel):
                sub = "[]." if get_origin(ann) is tuple or "tuple" in str(ann) else "."
                yield from model_paths(t, f"{path}{sub}")
                break
            if get_origin(t) is dict:
                break
            stack.extend(get_args(t))


__all__ = [
    "BY_FIELD",
    "FIELDS",
    "HONOURED",
    "IGNORED",
    "FieldSupport",
    "decided",
    "ignored_fields",
    "mesh_config_warnings",
    "model_paths",
    "support",
]
