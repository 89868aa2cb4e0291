"""telemetry.istio.io Telemetry and the mesh config's telemetry fields: Istio's documented shapes
load, and misconfigurations are rejected with the offending field's path."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from istiod_lite.model import ResourceInvalid, known_kinds, parse_object
from istiod_lite.model.meshconfig import (
    ENVOY_PROVIDER,
    MeshConfig,
    MeshConfigInvalid,
    load_mesh_config,
    parse_mesh_config,
)
from istiod_lite.model.telemetry import Telemetry


def load(spec: str, version: str = "v1") -> Any:
    doc = {"apiVersion": f"telemetry.istio.io/{version}", "kind": "Telemetry",
           "metadata": {"name": "t", "namespace": "app"}, "spec": yaml.safe_load(textwrap.dedent(spec))}
    return parse_object(doc, source="test.yaml", doc_index=0)


def errors(spec: str) -> str:
    with pytest.raises(ResourceInvalid) as info:
        load(spec)
    return "\n".join(str(e) for e in info.value.errors)


def test_registered_under_both_versions() -> None:
    assert known_kinds()["Telemetry"] is Telemetry
    assert isinstance(load("{}", "v1alpha1"), Telemetry)


def test_full_shape_loads() -> None:
    t = load("""
        targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: waypoint}]
        accessLogging:
        - providers: [{name: envoy}]
          disabled: false
          filter: {expression: "response.code >= 400"}
        tracing:
        - providers: [{name: zipkin}]
          randomSamplingPercentage: 10.5
          disableSpanReporting: false
          customTags:
            team: {literal: {value: shop}}
            user: {header: {name: x-user, defaultValue: anon}}
            pod: {environment: {name: POD_NAME}}
        metrics:
        - providers: [{name: prometheus}]
          overrides:
          - match: {metric: REQUEST_COUNT, mode: SERVER}
            disabled: false
            tagOverrides: {request_host: {value: request.host}, source_principal: {operation: REMOVE}}
          - match: {customMetric: my_metric}
            disabled: true
        """)
    spec = t.spec
    assert [r.name for r in spec.targets] == ["waypoint"]
    assert spec.access_logging[0].filter.expression == "response.code >= 400"
    assert spec.tracing[0].random_sampling_percentage == 10.5
    assert spec.tracing[0].custom_tags["user"].header.default_value == "anon"
    assert spec.metrics[0].overrides[0].match.metric == "REQUEST_COUNT"
    assert spec.metrics[0].overrides[1].match.custom_metric == "my_metric"


def test_service_target_and_selector() -> None:
    assert load("targetRef: {kind: Service, name: echo}").spec.targets[0].kind == "Service"
    assert load("selector: {matchLabels: {app: echo}}").spec.selector.match_labels == {"app": "echo"}


@pytest.mark.parametrize(("spec", "message"), [
    ("accessLoging: []", "accessLoging"),  # a typo is an error, never "logging silently off"
    ("{selector: {matchLabels: {a: b}}, targetRefs: [{kind: Service, name: x}]}", "only one of selector"),
    ("targetRefs: [{kind: Deployment, name: x}]", "targetRef must be to one of"),
    ("tracing: [{randomSamplingPercentage: 101}]", "spec.tracing[0].randomSamplingPercentage"),
    ("tracing: [{}, {}]", "spec.tracing"),
    ("tracing: [{customTags: {a: {}}}]", "exactly one of literal, header, environment or formatter"),
    ("tracing: [{customTags: {a: {literal: {value: x}, header: {name: y}}}}]", "exactly one"),
    ("accessLogging: [{providers: [{name: ''}]}]", "spec.accessLogging[0].providers[0].name"),
    ("accessLogging: [{filter: {expression: '  '}}]", "filter expression must not be empty"),
    ("metrics: [{overrides: [{match: {metric: REQUEST_COUNTS}}]}]", "spec.metrics[0].overrides[0].match.metric"),
    ("metrics: [{overrides: [{match: {metric: REQUEST_COUNT, customMetric: x}}]}]", "only one of metric"),
    ("metrics: [{overrides: [{tagOverrides: {a: {operation: UPSERT}}}]}]", "must provide a value"),
])
def test_rejected(spec: str, message: str) -> None:
    assert message in errors(spec)


def test_mesh_config_defaults() -> None:
    mesh = parse_mesh_config(None)
    assert mesh == MeshConfig()
    assert (mesh.access_log_file, mesh.access_log_encoding, mesh.root_namespace) == ("", "TEXT", "istio-system")
    builtin = mesh.provider(ENVOY_PROVIDER)
    assert builtin is not None and builtin.envoy_file_access_log is not None
    assert mesh.provider("nope") is None


def test_mesh_config_file(tmp_path: Path) -> None:
    path = tmp_path / "mesh.yaml"
    path.write_text(textwrap.dedent("""\
        accessLogFile: /dev/stdout
        accessLogEncoding: JSON
        accessLogFormat: '{"code": "%RESPONSE_CODE%"}'
        enableTracing: true
        rootNamespace: mesh-root
        defaultProviders: {accessLogging: [envoy], tracing: [zipkin], metrics: [prometheus]}
        extensionProviders:
        - name: file
          envoyFileAccessLog: {path: /tmp/a.log, logFormat: {labels: {code: "%RESPONSE_CODE%"}}}
        - name: zipkin
          zipkin: {service: zipkin.istio-system.svc.cluster.local, port: 9411, maxTagLength: 256}
        - name: otel
          opentelemetry:
            service: otel.istio-system.svc.cluster.local
            port: 4318
            http: {path: /v1/traces, timeout: 5s, headers: [{name: x-token, value: abc}]}
        - name: prometheus
          prometheus: {}
        """))
    mesh = load_mesh_config(path)
    assert mesh.root_namespace == "mesh-root"
    assert mesh.default_providers.tracing == ("zipkin",)
    file = mesh.provider("file")
    assert file is not None and file.envoy_file_access_log is not None
    assert file.envoy_file_access_log.log_format is not None
    assert file.envoy_file_access_log.log_format.labels == {"code": "%RESPONSE_CODE%"}
    otel = mesh.provider("otel")
    assert otel is not None and otel.opentelemetry is not None and otel.opentelemetry.http is not None
    assert otel.opentelemetry.http.timeout is not None and otel.opentelemetry.http.timeout.nanos == 5 * 10**9
    assert [(h.name, h.value) for h in otel.opentelemetry.http.headers] == [("x-token", "abc")]


def test_tracing_provider_fields() -> None:
    mesh = parse_mesh_config({"extensionProviders": [
        {"name": "z", "zipkin": {"service": "ns/zipkin", "port": 9411, "path": "/spans", "enable64bitTraceId": True,
                                 "traceContextOption": "USE_B3_WITH_W3C_PROPAGATION"}},
        {"name": "g", "opentelemetry": {"service": "otel", "port": 4317, "grpc": {
            "timeout": "250ms", "initialMetadata": [{"name": "x-tenant", "value": "shop"}]}}},
    ]})
    z = mesh.provider("z")
    assert z is not None and z.zipkin is not None
    assert (z.zipkin.path, z.zipkin.enable_64bit_trace_id, z.zipkin.trace_context_option) == (
        "/spans", True, "USE_B3_WITH_W3C_PROPAGATION")
    g = mesh.provider("g")
    assert g is not None and g.opentelemetry is not None and g.opentelemetry.grpc is not None
    assert g.opentelemetry.grpc.timeout is not None and g.opentelemetry.grpc.timeout.nanos == 250_000_000
    assert g.opentelemetry.grpc.initial_metadata[0].value == "shop"


@pytest.mark.parametrize(("doc", "message"), [
    ({"accessLogEncoding": "XML"}, "accessLogEncoding"),
    ({"accessLogEncoding": "JSON", "accessLogFormat": "not json"}, "not valid JSON"),
    ({"extensionProviders": [{"name": "x"}]}, "exactly one of"),
    ({"extensionProviders": [{"name": "x", "prometheus": {}}, {"name": "x", "prometheus": {}}]}, "duplicate"),
    ({"extensionProviders": [{"name": "z", "zipkin": {"service": "z", "port": 0}}]},
     "extensionProviders[0].zipkin.port"),
    ({"extensionProviders": [{"name": "f", "envoyFileAccessLog": {"logFormat": {"text": "a", "labels": {}}}}]},
     "only one of text or labels"),
    ({"extensionProviders": [{"name": "o", "opentelemetry": {"service": "o", "port": 4317, "http": {},
                                                             "grpc": {}}}]}, "only one of http or grpc"),
    ({"extensionProviders": [{"name": "o", "opentelemetry": {"service": "o", "port": 4318, "http": {
        "headers": [{"name": "x-token", "envName": "TOKEN", "value": "v"}]}}}]}, "only one of value or envName"),
    ({"extensionProviders": [{"name": "o", "opentelemetry": {"service": "o", "port": 4318, "http": {
        "timeout": "soon"}}}]}, "timeout"),
    ({"extensionProviders": [{"name": "z", "zipkin": {"service": "z", "port": 9411,
                                                      "traceContextOption": "W3C"}}]}, "traceContextOption"),
    ({"defaultConfig": {"tracing": {"sampling": "lots"}}}, "defaultConfig.tracing.sampling"),
])
def test_mesh_config_rejected(doc: dict[str, Any], message: str) -> None:
    with pytest.raises(MeshConfigInvalid) as info:
        parse_mesh_config(doc, source="mesh.yaml")
    text = str(info.value)
    assert message in text, text
