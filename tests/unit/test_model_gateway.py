"""Gateway API models: documented examples load under v1 and v1beta1; what the CRD schema or its
CEL rules refuse is refused here with the field path."""

from __future__ import annotations

import textwrap
from typing import Any

import pytest
import yaml

from istiod_lite.model import ResourceInvalid, parse_object
from istiod_lite.model.gateway import Gateway, GatewayClass, HTTPRoute


def load(text: str) -> Any:
    return parse_object(yaml.safe_load(textwrap.dedent(text)), source="t.yaml", doc_index=0)


def errors(text: str) -> str:
    with pytest.raises(ResourceInvalid) as info:
        load(text)
    return "\n".join(str(e) for e in info.value.errors)


def route(spec: str, version: str = "v1") -> str:
    return (f"apiVersion: gateway.networking.k8s.io/{version}\nkind: HTTPRoute\n"
            "metadata: {name: r, namespace: ns}\nspec:\n" + textwrap.indent(textwrap.dedent(spec), "  "))


def gateway(spec: str, extra: str = "") -> str:
    return ("apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: waypoint, namespace: ns}\n"
            "spec:\n" + textwrap.indent(textwrap.dedent(spec), "  ") + extra)


WAYPOINT = """\
gatewayClassName: istio-waypoint
listeners:
- name: mesh
  port: 15008
  protocol: HBONE
"""


@pytest.mark.parametrize("version", ["v1", "v1beta1"])
def test_waypoint_gateway_loads(version: str) -> None:
    gw = load(gateway(WAYPOINT).replace("/v1\n", f"/{version}\n", 1) + "status:\n  addresses:\n"
              "  - {type: IPAddress, value: 10.0.0.9}\n  conditions: [{type: Programmed, status: 'True'}]\n")
    assert isinstance(gw, Gateway)
    assert gw.spec.gateway_class_name == "istio-waypoint"
    assert gw.spec.listeners[0].protocol == "HBONE"
    assert gw.status is not None and gw.status.addresses[0].value == "10.0.0.9"


def test_gateway_unknown_field_is_an_error() -> None:
    assert "spec.listeners[0].prot" in errors(gateway(WAYPOINT + "  prot: 1\n"))


def test_gateway_address_must_be_ip() -> None:
    text = errors(gateway(WAYPOINT + "addresses:\n- {type: IPAddress, value: not-an-ip}\n"))
    assert "spec.addresses[0]" in text and "must be an IP address" in text


def test_gateway_listener_names_unique_and_port_range() -> None:
    text = errors(gateway("gatewayClassName: x\nlisteners:\n- {name: a, port: 80, protocol: HTTP}\n"
                          "- {name: a, port: 70000, protocol: HTTP}\n"))
    assert "spec.listeners[1].port: must be between 1 and 65535" in text


def test_gateway_class() -> None:
    gc = load("apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata: {name: istio-waypoint}\n"
              "spec: {controllerName: istio.io/mesh-controller}\n")
    assert isinstance(gc, GatewayClass)
    assert "spec" in errors("apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\n"
                            "metadata: {name: x}\nspec: {controllerName: nopath}\n")


FULL_ROUTE = """\
parentRefs:
- {group: "", kind: Service, name: reviews, port: 9080}
hostnames: [reviews.example.com]
rules:
- matches:
  - path: {type: PathPrefix, value: /api}
    headers: [{name: x-user, value: jason}]
    queryParams: [{type: RegularExpression, name: v, value: "^[0-9]+$"}]
    method: GET
  filters:
  - type: RequestHeaderModifier
    requestHeaderModifier: {set: [{name: x-a, value: b}], remove: [x-c]}
  - type: URLRewrite
    urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /v2}}
  backendRefs:
  - {name: reviews-v1, port: 9080, weight: 90}
  - {name: reviews-v2, port: 9080, weight: 10}
  timeouts: {request: 10s, backendRequest: 2s}
  retry: {codes: [503], attempts: 2, backoff: 100ms}
"""


@pytest.mark.parametrize("version", ["v1", "v1beta1"])
def test_http_route_loads(version: str) -> None:
    r = load(route(FULL_ROUTE, version))
    assert isinstance(r, HTTPRoute)
    rule = r.spec.rules[0]
    assert [b.weight for b in rule.backend_refs] == [90, 10]
    assert rule.timeouts is not None and rule.timeouts.request is not None
    assert rule.timeouts.request.seconds == 10
    assert rule.matches[0].path.value == "/api"


def test_http_route_defaults() -> None:
    r = load(route("parentRefs: [{name: waypoint}]\nrules:\n- backendRefs: [{name: a, port: 80}]\n"))
    rule = r.spec.rules[0]
    assert rule.matches[0].path.type == "PathPrefix" and rule.matches[0].path.value == "/"
    assert rule.backend_refs[0].weight == 1
    assert r.spec.parent_refs[0].kind == "Gateway"


@pytest.mark.parametrize(
    ("spec", "path", "message"),
    [
        ("rules:\n- backendRefs: [{name: a}]\n", "spec.rules[0].backendRefs[0]", "Must have port for Service"),
        ("rules:\n- backendRefs: [{name: a, port: 80, weight: 1000001}]\n", "spec.rules[0].backendRefs[0].weight",
         "must be between 0 and 1000000"),
        ("rules:\n- matches: [{path: {type: PathPrefix, value: api}}]\n", "spec.rules[0].matches[0].path",
         "must be an absolute path"),
        ("rules:\n- matches: [{path: {type: RegularExpression, value: '(a'}}]\n", "spec.rules[0].matches[0].path",
         "invalid RE2 regex"),
        ("rules:\n- matches: [{path: {type: Suffix, value: /a}}]\n", "spec.rules[0].matches[0].path.type", ""),
        ("rules:\n- matches: [{headers: [{name: 'bad header', value: x}]}]\n",
         "spec.rules[0].matches[0].headers[0].name", "invalid header name"),
        ("rules:\n- filters: [{type: RequestHeaderModifier}]\n", "spec.rules[0].filters[0]",
         "requestHeaderModifier must be specified"),
        ("rules:\n- filters: [{type: RequestMirror, requestHeaderModifier: {}, requestMirror: "
         "{backendRef: {name: m, port: 80}}}]\n", "spec.rules[0].filters[0]", "requestHeaderModifier must be nil"),
        ("rules:\n- timeouts: {request: 1.5s}\n", "spec.rules[0].timeouts.request", "Gateway API form"),
        ("rules:\n- timeouts: {request: 1s, backendRequest: 2s}\n", "spec.rules[0].timeouts",
         "backendRequest timeout cannot be longer"),
        ("hostnames: [10.0.0.1]\n", "spec.hostnames[0]", "must not be an IP address"),
        ("rules:\n- matches: [{path: {type: Exact, value: /a}}]\n  filters:\n  - type: URLRewrite\n"
         "    urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /b}}\n", "spec.rules[0]",
         "ReplacePrefixMatch"),
        ("rules:\n- filters:\n  - {type: URLRewrite, urlRewrite: {path: {type: ReplaceFullPath}}}\n",
         "spec.rules[0].filters[0].urlRewrite.path", "replaceFullPath must be specified"),
        ("rules:\n- matches: [{method: FETCH}]\n", "spec.rules[0].matches[0].method", ""),
        ("rules:\n- backendRefs: [{name: a, port: 80, wieght: 3}]\n", "spec.rules[0].backendRefs[0].wieght", ""),
    ],
)
def test_http_route_rejections(spec: str, path: str, message: str) -> None:
    text = errors(route(spec))
    assert f"HTTPRoute ns/r: {path}" in text
    assert message in text
    assert text.startswith("t.yaml#0: ")
