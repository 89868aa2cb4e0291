"""Tracing translation (``translator/telemetry/tracing.py``, applied by ``telemetry.apply_telemetry``): Istio's
merge of Telemetry tracing entries and mesh defaults, the Envoy tracer configs, collector clusters,
the memo, and the warnings for Telemetry settings the waypoint cannot honour."""

from __future__ import annotations

from envoy.config.trace.v3 import opentelemetry_pb2, zipkin_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.request_id.uuid.v3 import uuid_pb2

from istiod_lite.model import ConfigSnapshot
from istiod_lite.model.meshconfig import MeshConfig
from istiod_lite.translator import telemetry, translate_waypoint
from istiod_lite.translator.core.output import EnvoyResources
from istiod_lite.translator.telemetry import tracing
from tests.unit.test_translator_telemetry import REF, mesh, service, snapshot, telemetry_doc

PROVIDERS = """
extensionProviders:
- name: zipkin
  zipkin: {service: zipkin.istio-system.svc.cluster.local, port: 9411, maxTagLength: 64}
- name: otel
  opentelemetry: {service: observability/otel, port: 4317}
- name: logs
  envoyFileAccessLog: {path: /dev/stdout}
"""
ZIPKIN_SVC = """apiVersion: v1
kind: Service
metadata: {name: zipkin, namespace: istio-system}
spec: {clusterIP: 127.10.9.1, selector: {app: zipkin}, ports: [{name: http, port: 9411}]}
---
apiVersion: v1
kind: Pod
metadata: {name: zipkin-0, namespace: istio-system, labels: {app: zipkin}}
status: {podIP: 127.0.3.1}
"""


def spec_of(snap: ConfigSnapshot, m: MeshConfig, name: str = "echo") -> tracing.TracingSpec | None:
    return tracing.tracing_spec(telemetry.applicable_telemetries(snap, m, REF, service(snap, name)), m)


def hcm_of(resources: EnvoyResources, chain_name: str) -> hcm_pb2.HttpConnectionManager:
    main = resources.listeners["main_internal"]
    chain = next(c for c in main.filter_chains if c.name == chain_name)
    hcm = hcm_pb2.HttpConnectionManager()
    assert chain.filters[-1].typed_config.Unpack(hcm)
    return hcm


ECHO_HTTP = "inbound-vip|80|http|echo.app.svc.cluster.local"
OTHER_HTTP = "inbound-vip|80|http|other.app.svc.cluster.local"


def test_no_telemetry_and_no_default_means_the_legacy_switch() -> None:
    snap = snapshot()
    assert spec_of(snap, mesh(PROVIDERS)) is None
    assert tracing.chain_tracing([], mesh(PROVIDERS), REF) == tracing.NO_TRACING
    legacy = tracing.chain_tracing([], mesh("enableTracing: true"), REF)
    assert legacy.tracing is not None and not legacy.tracing.HasField("provider")
    assert legacy.tracing.random_sampling.value == tracing.DEFAULT_SAMPLING == 1.0
    assert legacy.tracing.client_sampling.value == legacy.tracing.overall_sampling.value == 100.0
    assert [t.tag for t in legacy.tracing.custom_tags] == sorted(t.tag for t in legacy.tracing.custom_tags)
    assert legacy.collector is None and legacy.use_request_id is None


def test_merge_most_specific_wins_and_unknown_provider_disables() -> None:
    m = mesh(PROVIDERS + "defaultProviders: {tracing: [zipkin]}\n")
    snap = snapshot()
    spec = spec_of(snap, m)
    assert spec is not None and spec.provider is not None and spec.provider.name == "zipkin" and not spec.disabled
    root = telemetry_doc("root", "istio-system", "{tracing: [{randomSamplingPercentage: 5, "
                         "customTags: {a: {literal: {value: x}}}}]}")
    ns = telemetry_doc("ns", "app", "{tracing: [{providers: [{name: otel}]}]}")
    svc = telemetry_doc("svc", "app", "{targetRefs: [{kind: Service, name: echo}], tracing: [{providers: "
                        "[{name: missing}]}]}")
    client_only = telemetry_doc("gw", "app", "{targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, "
                                "name: waypoint}], tracing: [{match: {mode: CLIENT}, disableSpanReporting: true}]}")
    snap = snapshot(root, ns, svc, client_only)
    other = spec_of(snap, m, "other")
    assert other is not None and other.provider is not None and other.provider.name == "otel"
    assert other.random_sampling_percentage == 5 and set(other.custom_tags) == {"a"}  # inherited from the root
    assert not other.disabled  # the CLIENT-only entry never applies to a waypoint
    echo = spec_of(snap, m)
    assert echo is not None and echo.provider is None and echo.disabled  # an unknown name leaves no provider
    assert tracing.chain_tracing(telemetry.applicable_telemetries(snap, m, REF, service(snap)), m, REF) \
        == tracing.NO_TRACING
    # disableSpanReporting at the most specific level, re-enabled nowhere: no tracing.
    off = snapshot(root, telemetry_doc("svc", "app", "{targetRefs: [{kind: Service, name: echo}], "
                                                     "tracing: [{disableSpanReporting: true}]}"))
    spec = spec_of(off, m)
    assert spec is not None and spec.disabled and spec.provider is not None


def test_zipkin_and_otel_provider_configs() -> None:
    m = mesh(PROVIDERS)
    built = tracing.provider_config(m.provider("zipkin"), REF)  # type: ignore[arg-type]
    assert built is not None
    http, max_len, collector = built
    z = zipkin_pb2.ZipkinConfig()
    assert http.name == tracing.ZIPKIN and http.typed_config.Unpack(z)
    assert (z.collector_cluster, z.collector_endpoint, z.collector_hostname) == (
        "outbound|9411||zipkin.istio-system.svc.cluster.local", "/api/v2/spans",
        "zipkin.istio-system.svc.cluster.local")
    assert z.collector_endpoint_version == zipkin_pb2.ZipkinConfig.HTTP_JSON and z.trace_id_128bit
    assert z.HasField("shared_span_context") and not z.shared_span_context.value
    assert max_len == 64 and collector == tracing.Collector("zipkin.istio-system.svc.cluster.local", 9411, h2=False)
    otel = tracing.provider_config(m.provider("otel"), REF)  # type: ignore[arg-type]
    assert otel is not None
    o = opentelemetry_pb2.OpenTelemetryConfig()
    assert otel[0].name == tracing.OPENTELEMETRY and otel[0].typed_config.Unpack(o)
    assert o.service_name == "waypoint.app"  # the waypoint's service cluster, not the destination
    assert o.grpc_service.envoy_grpc.cluster_name == "outbound|4317||otel.observability.svc.cluster.local"
    assert o.grpc_service.envoy_grpc.authority == "otel.observability.svc.cluster.local"
    assert otel[2].h2
    assert tracing.provider_config(m.provider("logs"), REF) is None  # type: ignore[arg-type]
    assert tracing.resolve_host("ns/svc") == "svc.ns.svc.cluster.local"
    assert tracing.resolve_host("ns/svc.example.com") == tracing.resolve_host("svc.example.com") == "svc.example.com"


def test_applied_to_http_chains_with_collector_clusters() -> None:
    m = mesh(PROVIDERS)
    svc_t = telemetry_doc("svc", "app", "{targetRefs: [{kind: Service, name: echo}], tracing: [{providers: "
                          "[{name: zipkin}], randomSamplingPercentage: 25, useRequestIdForTraceSampling: false, "
                          "enableIstioTags: false, customTags: {h: {header: {name: x-user}}, "
                          "e: {environment: {name: HOME, defaultValue: none}}}}]}")
    snap = snapshot(ZIPKIN_SVC, svc_t)
    out = telemetry.apply_telemetry(translate_waypoint(snap, REF), snap, m, REF)
    hcm = hcm_of(out, ECHO_HTTP)
    assert hcm.tracing.random_sampling.value == 25 and hcm.tracing.max_path_tag_length.value == 64
    assert [(t.tag, t.WhichOneof("type")) for t in hcm.tracing.custom_tags] == [
        ("e", "environment"), ("h", "request_header")]
    rid = uuid_pb2.UuidRequestIdConfig()
    assert hcm.request_id_extension.typed_config.Unpack(rid)
    assert rid.HasField("use_request_id_for_trace_sampling") and not rid.use_request_id_for_trace_sampling.value
    assert not hcm_of(out, OTHER_HTTP).HasField("tracing")  # the Telemetry targets echo only
    # The TCP chain of echo has no HCM and is untouched.
    tcp = next(c for c in out.listeners["main_internal"].filter_chains
               if c.name.endswith("|tcp|echo.app.svc.cluster.local"))
    assert tcp.filters[-1].name == "envoy.filters.network.tcp_proxy"
    # A known Service: its outbound EDS cluster and endpoints.
    name = "outbound|9411||zipkin.istio-system.svc.cluster.local"
    assert out.clusters[name].type == out.clusters[name].EDS
    assert [e.endpoint.address.socket_address.address for e in out.endpoints[name].endpoints[0].lb_endpoints] == [
        "127.0.3.1"]
    # Without the Service: STRICT_DNS to host:port.
    bare = snapshot(svc_t)
    dns = telemetry.apply_telemetry(translate_waypoint(bare, REF), bare, m, REF).clusters[name]
    assert dns.type == dns.STRICT_DNS and name not in telemetry.apply_telemetry(
        translate_waypoint(bare, REF), bare, m, REF).endpoints
    sa = dns.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address
    assert (sa.address, sa.port_value) == ("zipkin.istio-system.svc.cluster.local", 9411)
    # A port the Service does not declare: also DNS (no cluster of that name exists to reuse).
    assert tracing.collector_resources(snap, REF, [tracing.Collector(
        "zipkin.istio-system.svc.cluster.local", 9999, h2=True)]).clusters[
        "outbound|9999||zipkin.istio-system.svc.cluster.local"].type == dns.STRICT_DNS


def test_memo_reuses_the_listener_and_follows_collector_endpoints() -> None:
    m = mesh(PROVIDERS + "defaultProviders: {tracing: [zipkin]}\n")
    snap = snapshot(ZIPKIN_SVC)
    out = translate_waypoint(snap, REF)
    memo = telemetry.TelemetryMemo(REF)
    first = memo.apply(out, snap, m)
    assert first == telemetry.apply_telemetry(out, snap, m, REF)
    assert hcm_of(first, ECHO_HTTP).tracing.provider.name == tracing.ZIPKIN
    assert memo.apply(out, snap, m) is first
    # The collector's pod moves: same listener object, new endpoints.
    # (as the sources do, every unchanged resource is the same object in the new snapshot)
    pod = snapshot(ZIPKIN_SVC.replace("127.0.3.1", "127.0.3.9")).by_kind["Pod"][("istio-system", "zipkin-0")]
    moved = ConfigSnapshot.build([pod if o.kind == "Pod" else o for items in snap.by_kind.values()
                                  for o in items.values()])
    second = memo.apply(out, moved, m)
    assert second.listeners["main_internal"] is first.listeners["main_internal"]
    name = "outbound|9411||zipkin.istio-system.svc.cluster.local"
    assert second.endpoints[name].endpoints[0].lb_endpoints[0].endpoint.address.socket_address.address \
        == "127.0.3.9"
    assert second == telemetry.apply_telemetry(out, moved, m, REF)
    # A Telemetry edit is noticed.
    quiet = snapshot(ZIPKIN_SVC, telemetry_doc("q", "app", "{tracing: [{disableSpanReporting: true}]}"))
    assert not hcm_of(memo.apply(out, quiet, m), ECHO_HTTP).HasField("tracing")


def test_no_tracing_config_keeps_output_identical() -> None:
    snap = snapshot()
    out = translate_waypoint(snap, REF)
    assert telemetry.apply_telemetry(out, snap, mesh(PROVIDERS), REF) is out
    assert telemetry.apply_telemetry(out, snap, None, REF) is out


def test_warnings_for_what_the_waypoint_cannot_honour() -> None:
    m = mesh(PROVIDERS + "- name: prom\n  prometheus: {}\n")
    snap = snapshot(
        telemetry_doc("metrics", "app", "{metrics: [{providers: [{name: prom}, {name: logs}], overrides: "
                      "[{match: {metric: REQUEST_COUNT}, disabled: true}, {tagOverrides: {x: {operation: REMOVE}}}, "
                      "{match: {customMetric: my_metric}, disabled: true}, "
                      "{tagOverrides: {y: {value: \"request.size > 10 ? 'big' : 'small'\"}}}], "
                      "reportingInterval: 10s}]}"),
        telemetry_doc("traces", "istio-system", "{tracing: [{providers: [{name: logs}, {name: zipkin}]}], "
                      "accessLogging: [{providers: [{name: otel}, {name: nope}]}]}"),
        telemetry_doc("sel", "app", "{selector: {matchLabels: {app: echo}}, tracing: [{}]}"),
    )
    w = telemetry.telemetry_warnings(snap, m)
    assert w == sorted(w)
    text = "\n".join(w)
    # Istio's standard metrics honour disabled, REMOVE, literal/header tags and reportingInterval
    # (translator/telemetry/metrics.py): only what needs CEL or istio.stats is reported.
    assert "REQUEST_COUNT disabled" not in text and "tagOverrides x" not in text
    assert "reportingInterval" not in text
    assert "Telemetry app/metrics: metrics override customMetric my_metric ignored" in text
    assert "Telemetry app/metrics: metrics override ALL_METRICS tagOverrides y value" in text
    assert "Telemetry app/metrics: metrics provider 'logs' is not a prometheus provider" in text
    assert "Telemetry istio-system/traces: only the first tracing provider (logs) is used" in text
    assert "Telemetry istio-system/traces: provider 'logs' does not support tracing" in text
    assert "access-log provider 'otel' is not an envoyFileAccessLog provider" in text
    assert "access-log provider 'nope' is not in the mesh config" in text
    assert "Telemetry app/sel: a selector Telemetry does not apply to waypoints" in text
    assert telemetry.telemetry_warnings(snapshot(), m) == []
    clean = snapshot(telemetry_doc("ok", "app", "{metrics: [{providers: [{name: prom}]}], "
                                   "tracing: [{providers: [{name: zipkin}]}]}"))
    assert telemetry.telemetry_warnings(clean, m) == []
    assert telemetry.telemetry_warnings(snapshot(), mesh("defaultProviders: {tracing: [gone]}")) == [
        "mesh defaultProviders.tracing: tracing provider 'gone' is not in the mesh config's extensionProviders "
        "(no tracing)"]
