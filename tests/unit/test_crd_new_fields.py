"""Fields new in Istio 1.30/1.31 and Gateway API v1.6 load with Istio's and the CRDs' rules, and
kinds of real manifests that waypoints do not use are reported as ignored, never as errors.

What each field does to Envoy config is in the golden case ``crd-istio-131-fields`` (checked by
``envoy --mode validate`` too); here: acceptance, rejection with the field's path, and the notices.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from istiod_lite.model import ResourceInvalid, parse_object
from istiod_lite.model.registry import KindIgnored
from istiod_lite.sources import DirectorySource

_API = {"VirtualService": "networking.istio.io/v1", "DestinationRule": "networking.istio.io/v1",
        "AuthorizationPolicy": "security.istio.io/v1", "Telemetry": "telemetry.istio.io/v1",
        "Gateway": "gateway.networking.k8s.io/v1"}


def load(kind: str, spec: str) -> Any:
    doc = {"apiVersion": _API[kind], "kind": kind, "metadata": {"name": "x", "namespace": "app"},
           "spec": yaml.safe_load(textwrap.dedent(spec))}
    return parse_object(doc, source="t.yaml", doc_index=0)


def errors(kind: str, spec: str) -> str:
    with pytest.raises(ResourceInvalid) as info:
        load(kind, spec)
    return "\n".join(str(e) for e in info.value.errors)


# --- accepted ------------------------------------------------------------------------------------

@pytest.mark.parametrize(("kind", "spec"), [
    ("AuthorizationPolicy", "rules: [{when: [{key: source.trustDomain, values: [cluster.local, '*.corp']}]}]"),
    ("AuthorizationPolicy", "action: DENY\nrules: [{when: [{key: source.trustDomain, notValues: ['td-*']}]}]"),
    ("DestinationRule", "host: a\ntrafficPolicy: {connectionPool: {http: {http2KeepAlive: {interval: 30s, "
                        "timeout: 5s}}}}"),
    ("DestinationRule", "host: a\ntrafficPolicy: {outlierDetection: {outlierDetectionHttpErrorCodes: [500, 503]}}"),
    ("DestinationRule", "host: a\ntrafficPolicy: {retryBudget: {percent: 10, budgetInterval: 10s}}"),
    ("DestinationRule", "host: a\ntrafficPolicy: {loadBalancer: {zoneAwareLbSetting: {enabled: true, "
                        "minClusterSize: 2, failover: [{from: us-east, to: us-west}], "
                        "failoverPriority: [example.com/rack]}}}"),
    ("VirtualService", "hosts: [a]\nhttp: [{redirect: {prefixRewrite: /v2}}]"),
    ("Telemetry", "tracing: [{disableContextPropagation: true, "
                  "customTags: {r: {formatter: {value: '%ROUTE_NAME%'}}}}]"),
    ("Gateway", "gatewayClassName: istio\nlisteners: [{name: https, port: 443, protocol: HTTPS}]"),
    ("Gateway", """\
        gatewayClassName: istio
        allowedListeners:
          namespaces: {from: Selector, selector: {matchExpressions: [{key: team, operator: In, values: [a]}]}}
        tls:
          backend: {clientCertificateRef: {name: client-cert}}
          frontend:
            default: {validation: {caCertificateRefs: [{group: "", kind: ConfigMap, name: ca}]}}
            perPort: [{port: 443, tls: {validation: {caCertificateRefs: [{group: "", kind: ConfigMap, name: ca2}],
                                                     mode: AllowInsecureFallback}}}]
        listeners:
        - name: http
          port: 80
          protocol: HTTP
          allowedRoutes: {namespaces: {from: Selector, selector: {matchLabels: {a: b}}}}
        """),
])
def test_istio_and_gateway_api_shapes_load(kind: str, spec: str) -> None:
    assert load(kind, spec).spec is not None


# --- rejected, with the field's path -------------------------------------------------------------

@pytest.mark.parametrize(("kind", "spec", "message"), [
    ("AuthorizationPolicy", "rules: [{when: [{key: source.trustDomain, values: ['a*b']}]}]",
     "spec.rules[0].when[0].values[0]: invalid `value` for `key` source.trustDomain: wildcard is "
     "only allowed at the start or end"),
    ("AuthorizationPolicy", "rules: [{when: [{key: source.trustDomain, values: ['*a*']}]}]",
     "at most one wildcard is allowed"),
    ("AuthorizationPolicy", "action: CUSTOM\nprovider: {name: p}\nrules: [{when: [{key: source.trustDomain, "
                            "values: [td]}]}]",
     "spec.rules[0].when[0].key: source.trustDomain is currently not supported with CUSTOM action"),
    ("AuthorizationPolicy", "rules: [{from: [{source: {trustDomains: [td/ns]}}]}]",
     "spec.rules[0].from[0].source.trustDomains[0]: trust domain must not contain '/'"),
    ("DestinationRule", "host: a\ntrafficPolicy: {connectionPool: {http: {http2KeepAlive: {interval: 30s}}}}",
     "spec.trafficPolicy.connectionPool.http.http2KeepAlive.timeout: required field is missing"),
    ("DestinationRule", "host: a\ntrafficPolicy: {connectionPool: {http: {http2KeepAlive: {interval: 0.5ms, "
                        "timeout: 1s}}}}",
     "spec.trafficPolicy.connectionPool.http.http2KeepAlive.interval"),
    ("DestinationRule", "host: a\ntrafficPolicy: {outlierDetection: {outlierDetectionHttpErrorCodes: [99]}}",
     "spec.trafficPolicy.outlierDetection.outlierDetectionHttpErrorCodes[0]: must be between 100 and 599"),
    ("DestinationRule", "host: a\ntrafficPolicy: {loadBalancer: {zoneAwareLbSetting: {}, localityLbSetting: {}}}",
     "only one of localityLbSetting and zoneAwareLbSetting can be set"),
    ("DestinationRule", "host: a\ntrafficPolicy: {loadBalancer: {zoneAwareLbSetting: {failoverPriority: "
                        "[topology.kubernetes.io/zone]}}}",
     "must not use topology label 'topology.kubernetes.io/zone'"),
    ("DestinationRule", "host: a\ntrafficPolicy: {loadBalancer: {zoneAwareLbSetting: {minClusterSize: 0}}}",
     "zoneAwareLbSetting.minClusterSize"),
    ("Telemetry", "tracing: [{customTags: {r: {formatter: {value: x}, literal: {value: y}}}}]",
     "exactly one of literal, header, environment or formatter"),
    ("Gateway", "gatewayClassName: istio\nlisteners: [{name: h, port: 443, protocol: HTTPS, "
                "tls: {mode: Passthrough}}]",
     "tls mode must be Terminate for protocol HTTPS"),
    ("Gateway", "gatewayClassName: istio\nlisteners: [{name: t, port: 443, protocol: TLS}]",
     "tls mode must be set for protocol TLS"),
    ("Gateway", "gatewayClassName: istio\nallowedListeners: {namespaces: {from: Some}}",
     "spec.allowedListeners.namespaces.from"),
    ("Gateway", "gatewayClassName: istio\nlisteners: [{name: h, port: 80, protocol: HTTP, allowedRoutes: "
                "{namespaces: {from: Selector, selector: {matchExpressions: [{key: a, operator: In}]}}}}]",
     "values must be non-empty when operator is In"),
    ("Gateway", "gatewayClassName: istio\ntls: {frontend: {default: {validation: {caCertificateRefs: []}}}}",
     "spec.tls.frontend.default.validation.caCertificateRefs"),
])
def test_bad_values_are_rejected_with_their_path(kind: str, spec: str, message: str) -> None:
    assert message in errors(kind, spec)


def test_a_label_selector_matches_like_kubernetes() -> None:
    gw = load("Gateway", """\
        gatewayClassName: istio
        listeners:
        - name: h
          port: 80
          protocol: HTTP
          allowedRoutes:
            namespaces:
              from: Selector
              selector:
                matchLabels: {env: prod}
                matchExpressions: [{key: team, operator: NotIn, values: [x]}, {key: tier, operator: Exists}]
        """)
    sel = gw.spec.listeners[0].allowed_routes.namespaces.selector
    assert sel.matches({"env": "prod", "tier": "1"})
    assert not sel.matches({"env": "prod", "tier": "1", "team": "x"})
    assert not sel.matches({"env": "prod"})
    assert not sel.matches({"env": "dev", "tier": "1"})


# --- kinds waypoints have no use for ------------------------------------------------------------

_MANIFESTS = """\
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec: {replicas: 1}
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default, namespace: shop}
spec: {egress: [{hosts: ["./*"]}]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: reader}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec: {clusterIP: 127.10.0.9, ports: [{name: http, port: 80}]}
"""


def test_ignored_kinds_are_notices_with_kind_and_name(tmp_path: Path) -> None:
    (tmp_path / "all.yaml").write_text(_MANIFESTS)
    update = DirectorySource(tmp_path).load()
    assert not update.errors
    assert len(update.snapshot) == 1  # the Service
    got = sorted((n.doc_index, n.kind, n.namespace, n.name) for n in update.notices)
    assert got == [(0, "Deployment", "default", "web"), (1, "Sidecar", "shop", "default"),
                   (2, "ClusterRole", "", "reader")]
    assert "has no sidecar" in next(n.message for n in update.notices if n.kind == "Sidecar")


def test_a_misspelt_kind_is_still_an_error() -> None:
    doc = {"apiVersion": "networking.istio.io/v1", "kind": "Sidecars", "metadata": {"name": "x"}}
    with pytest.raises(ResourceInvalid, match="unsupported apiVersion/kind"):
        parse_object(doc)
    with pytest.raises(KindIgnored):
        parse_object({**doc, "kind": "Sidecar"})


def test_validate_prints_ignored_kinds_and_exits_zero(tmp_path: Path) -> None:
    (tmp_path / "all.yaml").write_text(_MANIFESTS)
    out = subprocess.run([sys.executable, "-m", "istiod_lite.cli.main", "validate", "--config", str(tmp_path)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "warning: ignored: all.yaml#1: Sidecar shop/default: networking.istio.io/v1/Sidecar is ignored" \
        in out.stderr
    assert "1 resource(s) valid, 0 error(s), 3 ignored" in out.stderr
