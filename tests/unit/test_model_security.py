"""security.istio.io models: Istio's documented examples load under v1 and v1beta1, and bad configs
are rejected with Istio's rule and the path of the offending field."""

from __future__ import annotations

import json
import textwrap
import typing
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from istiod_lite.model import ResourceInvalid, parse_object
from istiod_lite.model.base import dump
from istiod_lite.model.security import (
    AuthorizationPolicy,
    PeerAuthentication,
    RequestAuthentication,
    check_ip_block,
    check_path_template,
)

VERSIONS = ("v1", "v1beta1")


def load(text: str) -> Any:
    doc = yaml.safe_load(textwrap.dedent(text))
    return parse_object(doc, source="test.yaml", doc_index=0)


def errors(text: str) -> str:
    with pytest.raises(ResourceInvalid) as info:
        load(text)
    return "\n".join(str(e) for e in info.value.errors)


def _doc(kind: str, spec: str, version: str, metadata: str) -> str:
    return f"apiVersion: security.istio.io/{version}\nkind: {kind}\nmetadata: {metadata}\n" \
        + "spec:\n" + textwrap.indent(textwrap.dedent(spec), "  ")


def ap(spec: str, version: str = "v1", metadata: str = "{name: httpbin, namespace: foo}") -> str:
    return _doc("AuthorizationPolicy", spec, version, metadata)


def ra(spec: str, version: str = "v1", metadata: str = "{name: jwt, namespace: foo}") -> str:
    return _doc("RequestAuthentication", spec, version, metadata)


def pa(spec: str, version: str = "v1", metadata: str = "{name: default, namespace: foo}") -> str:
    return _doc("PeerAuthentication", spec, version, metadata)


# --- field names ------------------------------------------------------------------------------

#: Every field name in the CRD schemas of the three kinds (istio/api customresourcedefinitions.gen.yaml).
_ISTIO_FIELD_NAMES = """
apiVersion kind metadata spec status
selector matchLabels targetRef targetRefs group name namespace
rules action provider from to when source operation key values notValues
principals notPrincipals requestPrincipals notRequestPrincipals namespaces notNamespaces ipBlocks notIpBlocks
remoteIpBlocks notRemoteIpBlocks serviceAccounts notServiceAccounts trustDomains notTrustDomains
hosts notHosts ports notPorts methods notMethods paths notPaths
jwtRules issuer audiences jwksUri jwks fromHeaders prefix fromParams fromCookies outputPayloadToHeader
forwardOriginalToken outputClaimToHeaders header claim timeout spaceDelimitedClaims
mtls mode portLevelMtls
"""
ISTIO_FIELDS = set(_ISTIO_FIELD_NAMES.split())


def _aliases(model: type[BaseModel], seen: set[type[BaseModel]]) -> set[str]:
    if model in seen:
        return set()
    seen.add(model)
    out: set[str] = set()
    for name, field in model.model_fields.items():
        out.add(field.alias or name)
        stack: list[Any] = [field.annotation]
        while stack:
            tp = stack.pop()
            if isinstance(tp, type) and issubclass(tp, BaseModel):
                out |= _aliases(tp, seen)
            stack.extend(typing.get_args(tp))
    return out


@pytest.mark.parametrize("kind", [AuthorizationPolicy, RequestAuthentication, PeerAuthentication])
def test_every_field_uses_istios_yaml_name(kind: type[BaseModel]) -> None:
    names = _aliases(kind, set()) - {"creationTimestamp", "resourceVersion", "generation", "uid", "annotations",
                                      "ownerReferences", "deletionTimestamp", "labels"}
    unknown = names - ISTIO_FIELDS
    assert not unknown, f"field names not in Istio's API: {sorted(unknown)}"


@pytest.mark.parametrize("kind", ["AuthorizationPolicy", "RequestAuthentication", "PeerAuthentication"])
def test_registered_under_v1_and_v1beta1_only(kind: str) -> None:
    for v in VERSIONS:
        doc = {"apiVersion": f"security.istio.io/{v}", "kind": kind, "metadata": {"name": "x"}, "spec": {}}
        obj = parse_object(doc)
        assert obj.kind == kind and obj.namespace == "default"
    with pytest.raises(ResourceInvalid) as info:
        parse_object({"apiVersion": "security.istio.io/v1alpha1", "kind": kind, "metadata": {"name": "x"}})
    assert "supported apiVersions: security.istio.io/v1, security.istio.io/v1beta1" in str(info.value)


def test_spec_may_be_omitted() -> None:
    obj = parse_object({"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy", "metadata": {"name": "x"}})
    assert isinstance(obj, AuthorizationPolicy)
    assert obj.spec.action == "ALLOW" and obj.spec.rules == ()


# --- AuthorizationPolicy: Istio doc examples ---------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
def test_allow_example_with_sources_operations_and_conditions(version: str) -> None:
    obj = load(ap("""
        action: ALLOW
        rules:
        - from:
          - source:
              principals: ["cluster.local/ns/default/sa/sleep"]
          - source:
              namespaces: ["test"]
          to:
          - operation:
              methods: ["GET"]
              paths: ["/info*"]
          - operation:
              methods: ["POST"]
              paths: ["/data"]
          when:
          - key: request.auth.claims[iss]
            values: ["https://accounts.google.com"]
    """, version))
    assert isinstance(obj, AuthorizationPolicy)
    rule = obj.spec.rules[0]
    assert obj.spec.action == "ALLOW" and obj.spec.provider is None
    assert [s.principals for s in rule.sources] == [("cluster.local/ns/default/sa/sleep",), ()]
    assert rule.sources[1].namespaces == ("test",)
    assert [(o.methods, o.paths) for o in rule.operations] == [(("GET",), ("/info*",)), (("POST",), ("/data",))]
    assert rule.when[0].key == "request.auth.claims[iss]"
    assert rule.when[0].values == ("https://accounts.google.com",) and rule.when[0].not_values == ()


@pytest.mark.parametrize("version", VERSIONS)
def test_deny_audit_and_custom_examples(version: str) -> None:
    deny = load(ap("""
        action: DENY
        rules:
        - from: [{source: {namespaces: ["dev"]}}]
          to: [{operation: {methods: ["POST"]}}]
        - to: [{operation: {methods: ["POST"], ports: ["8080"]}}]
    """, version))
    assert deny.spec.action == "DENY" and deny.spec.rules[1].operations[0].ports == ("8080",)
    audit = load(ap("""
        selector: {matchLabels: {app: myapi}}
        action: AUDIT
        rules: [{to: [{operation: {methods: ["GET"], paths: ["/user/profile/*"]}}]}]
    """, version))
    assert audit.spec.action == "AUDIT" and audit.spec.selector.match_labels == {"app": "myapi"}
    custom = load(ap("""
        selector: {matchLabels: {app: istio-ingressgateway}}
        action: CUSTOM
        provider: {name: "my-custom-authz"}
        rules: [{to: [{operation: {paths: ["/admin/*"]}}]}]
    """, version, "{name: ext-authz, namespace: istio-system}"))
    assert custom.spec.provider.name == "my-custom-authz"


@pytest.mark.parametrize("version", VERSIONS)
def test_allow_nothing_allow_all_and_selector_only(version: str) -> None:
    nothing = load(ap("{}", version, "{name: allow-nothing, namespace: foo}"))
    assert nothing.spec.rules == () and nothing.spec.selector is None and nothing.spec.targets == ()
    everything = load(ap("rules:\n- {}\n", version, "{name: allow-all, namespace: foo}"))
    assert len(everything.spec.rules) == 1
    assert everything.spec.rules[0].from_ == () and everything.spec.rules[0].to == ()
    selected = load(ap("selector: {matchLabels: {app: httpbin}}", version))
    assert selected.spec.selector.match_labels == {"app": "httpbin"} and selected.spec.rules == ()


def test_waypoint_policy_with_target_refs() -> None:
    obj = load(ap("""
        targetRefs:
        - kind: Gateway
          group: gateway.networking.k8s.io
          name: waypoint
        - kind: Service
          group: ""
          name: productpage
        - {kind: ServiceEntry, group: networking.istio.io, name: ext}
        action: ALLOW
        rules:
        - from:
          - source:
              serviceAccounts: ["sleep", "other-ns/curl"]
              notIpBlocks: ["10.0.0.0/8", "2001:db8::/32"]
              remoteIpBlocks: ["203.0.113.4"]
          to:
          - operation:
              hosts: ["*.example.com"]
              notPaths: ["/admin/{**}", "/api/{*}/private"]
              notPorts: ["9090"]
          when:
          - {key: "request.headers[x-version]", notValues: ["v1"]}
          - {key: destination.port, values: ["8080"]}
          - {key: source.serviceAccount, values: ["ns/sa"]}
          - {key: "experimental.envoy.filters.network.mysql_proxy[db.table]", values: ["[update]"]}
    """))
    assert [(t.canonical_group, t.kind, t.name) for t in obj.spec.targets] == [
        ("gateway.networking.k8s.io", "Gateway", "waypoint"),
        ("core", "Service", "productpage"),
        ("networking.istio.io", "ServiceEntry", "ext"),
    ]
    src = obj.spec.rules[0].sources[0]
    assert src.service_accounts == ("sleep", "other-ns/curl")
    assert src.not_ip_blocks == ("10.0.0.0/8", "2001:db8::/32")
    op = obj.spec.rules[0].operations[0]
    assert op.not_paths == ("/admin/{**}", "/api/{*}/private") and op.not_ports == ("9090",)


def test_deprecated_single_target_ref_and_gateway_class() -> None:
    obj = load(ap("targetRef: {kind: GatewayClass, group: gateway.networking.k8s.io, name: istio-waypoint}",
                  metadata="{name: x, namespace: istio-system}"))
    assert obj.spec.targets == (obj.spec.target_ref,)
    assert load(ap("targetRef: {kind: Service, group: core, name: s}")).spec.targets[0].name == "s"


def test_dry_run_annotation() -> None:
    obj = load(ap("""
        selector: {matchLabels: {app: httpbin}}
        action: DENY
        rules: [{to: [{operation: {paths: ["/headers"]}}]}]
    """, metadata='{name: dry-run-example, annotations: {"istio.io/dry-run": "true"}}'))
    assert obj.dry_run is True
    assert load(ap("{}", metadata='{name: x, annotations: {"istio.io/dry-run": "F"}}')).dry_run is False
    assert load(ap("{}")).dry_run is False


def test_round_trip_and_frozen() -> None:
    obj = load(ap("""
        targetRefs: [{kind: Service, name: productpage}]
        action: DENY
        rules:
        - from: [{source: {notRequestPrincipals: ["*"]}}]
          to: [{operation: {notMethods: [GET], notHosts: [a.com]}}]
          when: [{key: remote.ip, notValues: [192.168.0.0/16]}]
    """))
    wire = dump(obj)
    assert wire["spec"]["rules"][0]["from"][0]["source"] == {"notRequestPrincipals": ["*"]}
    assert wire["spec"]["rules"][0]["when"][0] == {"key": "remote.ip", "notValues": ["192.168.0.0/16"]}
    assert parse_object(wire) == obj
    with pytest.raises(Exception, match="frozen"):
        obj.spec.action = "ALLOW"


# --- AuthorizationPolicy: rejected configs -----------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        # scope: selector / targetRef / targetRefs
        ("selector: {matchLabels: {app: a}}\ntargetRefs: [{kind: Service, name: s}]",
         "spec: only one of selector, targetRef or targetRefs can be set"),
        ("targetRef: {kind: Service, name: s}\ntargetRefs: [{kind: Service, name: t}]",
         "spec: only one of selector, targetRef or targetRefs can be set"),
        ("selector: {matchLabels: {app: '*'}}", "spec.selector: wildcard is not supported in selector: app=*"),
        ("selector: {matchLabels: {app: " + "v" * 64 + "}}",
         "spec.selector.matchLabels.app: label value must be at most 63 characters"),
        ("targetRefs: [{kind: Deployment, group: apps, name: d}]",
         "spec.targetRefs[0]: targetRef must be to one of core/Service, networking.istio.io/ServiceEntry, "
         "gateway.networking.k8s.io/Gateway, gateway.networking.k8s.io/GatewayClass but was apps/Deployment"),
        ("targetRefs: [{kind: Service, name: s}, {kind: Gateway, name: w}]",
         "spec.targetRefs[1]: targetRef must be to one of"),
        ("targetRefs: [{kind: Service, name: s, namespace: other}]",
         "spec.targetRefs[0].namespace: cross namespace referencing is not currently supported"),
        ("targetRef: {kind: Service, name: ''}", "spec.targetRef.name: targetRef name must be set"),
        ("targetRef: {kind: Service}", "spec.targetRef.name: required field is missing"),
        ("targetRef: {kind: 'Bad Kind', name: s}", "spec.targetRef.kind: kind 'Bad Kind' must be 1-63 letters"),
        ("targetRef: {kind: Service, group: Core, name: s}",
         "spec.targetRef.group: group 'Core' must be empty or a DNS subdomain"),
        ("targetRefs: [" + ", ".join(["{kind: Service, name: s}"] * 17) + "]",
         "spec.targetRefs: Tuple should have at most 16 items"),
        # action / provider
        ("action: DENY", "spec.rules: DENY action without `rules` is meaningless as it will never be triggered"),
        ("action: DENY\nrules: []", "spec.rules: DENY action without `rules` is meaningless"),
        ("action: CUSTOM\nprovider: {name: p}", "spec.rules: CUSTOM action without `rules` is meaningless"),
        ("action: CUSTOM\nrules: [{}]", "spec.provider: `provider.name` must not be empty"),
        ("action: CUSTOM\nprovider: {}\nrules: [{}]", "spec.provider: `provider.name` must not be empty"),
        ("provider: {name: p}\nrules: [{}]",
         "spec.provider: `provider` must not be with non CUSTOM action, found ALLOW"),
        ("action: REJECT", "spec.action: Input should be 'ALLOW', 'DENY', 'AUDIT' or 'CUSTOM'"),
        ("action: CUSTOM\nprovider: {name: p}\nrules: [{from: [{source: {ipBlocks: [1.2.3.4]}}, "
         "{source: {notPrincipals: [a]}}]}]",
         "spec.rules[0].from[1].source.notPrincipals: From.NotPrincipals is currently not supported with CUSTOM "
         "action"),
        ("action: CUSTOM\nprovider: {name: p}\nrules: [{from: [{source: {serviceAccounts: [sa]}}]}]",
         "spec.rules[0].from[0].source.serviceAccounts: From.ServiceAccounts is currently not supported"),
        ("action: CUSTOM\nprovider: {name: p}\nrules: [{when: [{key: request.auth.presenter, values: [a]}]}]",
         "spec.rules[0].when[0].key: request.auth.presenter is currently not supported with CUSTOM action"),
        ("action: CUSTOM\nprovider: {name: p}\nrules: [{when: [{key: source.principal, values: [a]}]}]",
         "spec.rules[0].when[0].key: source.principal is currently not supported with CUSTOM action"),
        # from / source
        ("rules: [{from: []}]", "spec.rules[0].from: `from` must not be empty"),
        ("rules: [{from: [{}]}]", "spec.rules[0].from[0]: `from.source` must not be nil"),
        ("rules: [{from: [{source: {}}]}]", "spec.rules[0].from[0].source: `from.source` must not be empty"),
        ("rules: [{from: [{source: {principals: [a, '']}}]}]",
         "spec.rules[0].from[0].source.principals[1]: empty value not allowed"),
        ("rules: [{from: [{source: {notRequestPrincipals: ['']}}]}]",
         "spec.rules[0].from[0].source.notRequestPrincipals[0]: empty value not allowed"),
        ("rules: [{from: [{source: {ipBlocks: [10.0.0.1, 10.0.0.0/33]}}]}]",
         "spec.rules[0].from[0].source.ipBlocks[1]: bad CIDR range (10.0.0.0/33): prefix length out of range"),
        ("rules: [{from: [{source: {notIpBlocks: [300.1.1.1]}}]}]",
         "spec.rules[0].from[0].source.notIpBlocks[0]: bad IP address (300.1.1.1)"),
        ("rules: [{from: [{source: {remoteIpBlocks: [10.0.0.0/255.0.0.0]}}]}]",
         "spec.rules[0].from[0].source.remoteIpBlocks[0]: bad CIDR range (10.0.0.0/255.0.0.0): bad bits after slash"),
        ("rules: [{from: [{source: {notRemoteIpBlocks: [example.com]}}]}]",
         "spec.rules[0].from[0].source.notRemoteIpBlocks[0]: bad IP address (example.com)"),
        ("rules: [{from: [{source: {serviceAccounts: [a], principals: [b]}}]}]",
         "spec.rules[0].from[0].source: cannot set serviceAccounts with namespaces or principals"),
        ("rules: [{from: [{source: {notServiceAccounts: [a], notNamespaces: [b]}}]}]",
         "spec.rules[0].from[0].source: cannot set serviceAccounts with namespaces or principals"),
        ("rules: [{from: [{source: {serviceAccounts: ['ns/*']}}]}]",
         "spec.rules[0].from[0].source.serviceAccounts[0]: wildcard not allowed"),
        ("rules: [{from: [{source: {serviceAccounts: [a/b/c]}}]}]",
         "spec.rules[0].from[0].source.serviceAccounts[0]: expected format 'serviceAccount' or "
         "'namespace/serviceAccount', found \"a/b/c\""),
        ("rules: [{from: [{source: {notServiceAccounts: ['ns/']}}]}]",
         "spec.rules[0].from[0].source.notServiceAccounts[0]: expected format 'serviceAccount' or "
         "'namespace/serviceAccount', found empty serviceAccount \"ns/\""),
        ("rules: [{from: [{source: {serviceAccounts: [" + ", ".join(f"sa{i}" for i in range(17)) + "]}}]}]",
         "spec.rules[0].from[0].source.serviceAccounts: may not have more than 16 values"),
        ("rules: [{from: [{source: {serviceAccounts: ['" + "a" * 321 + "']}}]}]",
         "spec.rules[0].from[0].source.serviceAccounts[0]: value cannot exceed 320 characters"),
        ("rules: [{from: [{source: {principal: [a]}}]}]", "spec.rules[0].from[0].source.principal: unknown field"),
        # to / operation
        ("rules: [{to: []}]", "spec.rules[0].to: `to` must not be empty"),
        ("rules: [{to: [{}]}]", "spec.rules[0].to[0]: `to.operation` must not be nil"),
        ("rules: [{to: [{operation: {}}]}]", "spec.rules[0].to[0].operation: `to.operation` must not be empty"),
        ("rules: [{to: [{operation: {ports: ['80', '65536']}}]}]",
         "spec.rules[0].to[0].operation.ports[1]: bad port (65536): must be a number between 0 and 65535"),
        ("rules: [{to: [{operation: {notPorts: [http]}}]}]",
         "spec.rules[0].to[0].operation.notPorts[0]: bad port (http)"),
        ("rules: [{to: [{operation: {ports: [8080]}}]}]",
         "spec.rules[0].to[0].operation.ports[0]: Input should be a valid string"),
        ("rules: [{to: [{operation: {methods: [GET, '']}}]}]",
         "spec.rules[0].to[0].operation.methods[1]: empty value not allowed"),
        ("rules: [{to: [{operation: {hosts: ['']}}]}]",
         "spec.rules[0].to[0].operation.hosts[0]: empty value not allowed"),
        ("rules: [{to: [{operation: {paths: ['/{**}/{*}']}}]}]",
         "spec.rules[0].to[0].operation.paths[0]: invalid or unsupported path {**}/{*}: {**} is not the last operator"),
        ("rules: [{to: [{operation: {notPaths: ['/{id}/x']}}]}]",
         "spec.rules[0].to[0].operation.notPaths[0]: invalid or unsupported path {id}/x: contains '{' or '}'"),
        ("rules: [{to: [{operation: {paths: ['/{*}/a b']}}]}]",
         "spec.rules[0].to[0].operation.paths[0]: invalid or unsupported path {*}/a b: contains segment 'a b' with "
         "invalid string literal"),
        ("rules: [{to: [{operation: {path: [/a]}}]}]", "spec.rules[0].to[0].operation.path: unknown field"),
        # when / condition
        ("rules: [{when: [{values: [a]}]}]", "spec.rules[0].when[0].key: required field is missing"),
        ("rules: [{when: [{key: '', values: [a]}]}]", "spec.rules[0].when[0].key: `key` must not be empty"),
        ("rules: [{when: [{key: source.ip}]}]",
         "spec.rules[0].when[0]: at least one of `values` or `notValues` must be set for key source.ip"),
        ("rules: [{when: [{key: request.method, values: [GET]}]}]",
         "spec.rules[0].when[0].key: unknown attribute: request.method"),
        ("rules: [{when: [{key: 'request.headers[]', values: [a]}]}]",
         "spec.rules[0].when[0].key: bad key (request.headers[]): should have format a[b]"),
        ("rules: [{when: [{key: request.auth.claims, values: [a]}]}]",
         "spec.rules[0].when[0].key: bad key (request.auth.claims): should have format a[b]"),
        ("rules: [{when: [{key: destination.namespace, values: [a]}]}]",
         "spec.rules[0].when[0].key: attribute destination.namespace is replaced by the metadata.namespace"),
        ("rules: [{when: [{key: 'destination.labels[app]', values: [a]}]}]",
         "spec.rules[0].when[0].key: attribute destination.labels[app] is replaced by the workload selector"),
        ("rules: [{when: [{key: destination.user, values: [a]}]}]",
         "spec.rules[0].when[0].key: deprecated attribute destination.user: only supported in v1alpha1"),
        ("rules: [{when: [{key: source.ip, values: [10.0.0.1, nope]}]}]",
         "spec.rules[0].when[0].values[1]: invalid `value` for `key` source.ip: bad IP address (nope)"),
        ("rules: [{when: [{key: destination.ip, notValues: [10.0.0.0/40]}]}]",
         "spec.rules[0].when[0].notValues[0]: invalid `notValue` for `key` destination.ip: bad CIDR range"),
        ("rules: [{when: [{key: destination.port, values: ['99999']}]}]",
         "spec.rules[0].when[0].values[0]: invalid `value` for `key` destination.port: bad port (99999)"),
        ("rules: [{when: [{key: source.serviceAccount, values: ['*']}]}]",
         "spec.rules[0].when[0].values[0]: invalid `value` for `key` source.serviceAccount: wildcard not allowed"),
        ("rules: [{when: [{key: connection.sni, values: [a, '']}]}]",
         "spec.rules[0].when[0].values[1]: invalid `value` for `key` connection.sni: empty value not allowed"),
        # envelope
        ("rules: [{form: [{source: {principals: [a]}}]}]", "spec.rules[0].form: unknown field"),
    ],
)
def test_authorization_policy_rejections(spec: str, expected: str) -> None:
    msg = errors(ap(spec))
    assert expected in msg
    assert msg.startswith("test.yaml#0: AuthorizationPolicy foo/httpbin: ")


def test_dry_run_annotation_rejections() -> None:
    assert "metadata.annotations: the annotation istio.io/dry-run currently only supports action ALLOW/DENY, " \
        "found action AUDIT" in errors(ap("action: AUDIT\nrules: [{}]",
                                          metadata='{name: x, annotations: {"istio.io/dry-run": "true"}}'))
    assert "metadata.annotations: annotation istio.io/dry-run has invalid value (yes)" in errors(
        ap("{}", metadata='{name: x, annotations: {"istio.io/dry-run": "yes"}}')
    )
    for text in (ra("{}", metadata='{name: x, annotations: {"istio.io/dry-run": "true"}}'),
                 pa("{}", metadata='{name: x, annotations: {"istio.io/dry-run": "true"}}')):
        assert "metadata.annotations: " in errors(text) and "does not support the annotation istio.io/dry-run" \
            in errors(text)


def test_all_errors_are_reported_not_just_the_first() -> None:
    msg = errors(ap("""
        rules:
        - from: [{source: {ipBlocks: [bad-ip]}}]
          to: [{operation: {ports: [x]}}]
        - when: [{key: nope, values: [a]}]
    """))
    assert "spec.rules[0].from[0].source.ipBlocks[0]" in msg
    assert "spec.rules[0].to[0].operation.ports[0]" in msg
    assert "spec.rules[1].when[0].key" in msg


@pytest.mark.parametrize(
    ("value", "ok"),
    [("10.0.0.1", True), ("2001:db8::1", True), ("10.0.0.0/8", True), ("10.1.2.3/8", True), ("::/0", True),
     ("10.0.0.0/08", False), ("10.0.0.0/", False), ("1.2.3", False), ("010.0.0.1", False), ("::1/129", False),
     ("fe80::1%eth0/64", False)],
)
def test_ip_blocks_follow_go_netip(value: str, ok: bool) -> None:
    assert (check_ip_block(value) is None) is ok


@pytest.mark.parametrize(
    ("path", "ok"),
    [("/info*", True), ("*/info", True), ("/a/{*}/b", True), ("/a/{**}", True), ("/{**}/b", True), ("/a/b{", False),
     ("/a/{*}.txt", False), ("/{**}/{**}", False), ("/a/{*}/c%20d", True)],
)
def test_path_templates(path: str, ok: bool) -> None:
    assert (check_path_template(path) is None) is ok


# --- RequestAuthentication ----------------------------------------------------------------------

_JWKS = json.dumps({"keys": [{"kty": "RSA", "e": "AQAB", "n": "xAE7eB6qugXyCAG3yhh7pkDkT65pHymX", "kid": "k1"},
                             {"kty": "EC", "crv": "P-256", "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
                              "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]})


@pytest.mark.parametrize("version", VERSIONS)
def test_request_authentication_doc_examples(version: str) -> None:
    obj = load(ra(f"""
        selector: {{matchLabels: {{app: httpbin}}}}
        jwtRules:
        - issuer: "issuer-foo"
          jwksUri: https://example.com/.well-known/jwks.json
        - issuer: "example.com"
          jwksUri: https://example.com/.well-known/jwks.json
          audiences: [bookstore_android.apps.example.com, bookstore_web.apps.example.com]
          fromHeaders:
          - name: x-jwt-assertion
            prefix: "Bearer "
          fromParams: [my_token]
          fromCookies: [session]
          outputPayloadToHeader: x-jwt-payload
          forwardOriginalToken: true
          outputClaimToHeaders:
          - header: "x-jwt-claim-foo"
            claim: "foo"
          timeout: 5s
          spaceDelimitedClaims: [scope, permissions]
        - issuer: "local"
          jwks: '{_JWKS}'
    """, version))
    assert isinstance(obj, RequestAuthentication)
    first, second, third = obj.spec.jwt_rules
    assert first.issuer == "issuer-foo" and first.jwks_uri == "https://example.com/.well-known/jwks.json"
    assert second.from_headers[0].name == "x-jwt-assertion" and second.from_headers[0].prefix == "Bearer "
    assert second.output_claim_to_headers[0].header == "x-jwt-claim-foo" and second.forward_original_token
    assert second.timeout is not None and second.timeout.millis == 5000
    assert second.space_delimited_claims == ("scope", "permissions")
    assert json.loads(third.jwks)["keys"][1]["crv"] == "P-256"
    assert dump(obj)["spec"]["jwtRules"][1]["outputPayloadToHeader"] == "x-jwt-payload"


def test_request_authentication_waypoint_target_and_proto_spelling() -> None:
    obj = load(ra("""
        targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]
        jwtRules:
        - jwks_uri: "http://keys.example.com:8080/jwks"
    """))
    rule = obj.spec.jwt_rules[0]
    assert rule.issuer == "" and rule.jwks_uri == "http://keys.example.com:8080/jwks"
    assert obj.spec.targets[0].name == "waypoint"


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("selector: {matchLabels: {a: b}}\ntargetRef: {kind: Service, name: s}",
         "spec: only one of selector, targetRef or targetRefs can be set"),
        ("targetRefs: [{kind: Pod, name: p}]", "spec.targetRefs[0]: targetRef must be to one of"),
        ("jwtRules: [{audiences: [a]}]", "spec.jwtRules[0]: issuer or jwksUri must be non-empty string"),
        ("jwtRules: [{issuer: ''}]", "spec.jwtRules[0].issuer: issuer must not be empty"),
        ("jwtRules: [{issuer: a, jwksUri: ''}]", "spec.jwtRules[0].jwksUri: jwksUri must not be empty"),
        ("jwtRules: [{issuer: a, jwksUri: 'ftp://example.com/jwks'}]",
         'spec.jwtRules[0].jwksUri: URI scheme "ftp" is not supported'),
        ("jwtRules: [{issuer: a, jwksUri: 'example.com/jwks'}]",
         'spec.jwtRules[0].jwksUri: URI scheme "" is not supported'),
        ("jwtRules: [{issuer: a, jwksUri: 'https://example.com:port/jwks'}]",
         "spec.jwtRules[0].jwksUri: invalid jwksUri 'https://example.com:port/jwks': bad port"),
        ("jwtRules: [{issuer: a, jwksUri: 'https:///jwks'}]",
         "spec.jwtRules[0].jwksUri: invalid jwksUri 'https:///jwks': missing host"),
        ("jwtRules: [{issuer: a, jwksUri: 'https://" + "a" * 2048 + "'}]",
         "spec.jwtRules[0].jwksUri: jwksUri must be at most 2048 characters"),
        ("jwtRules: [{issuer: a, jwksUri: 'https://x/a', jwks: '{\"keys\": []}'}]",
         "spec.jwtRules[0]: only one of jwks or jwksUri can be set"),
        ("jwtRules: [{issuer: a, jwksUri: 'https://x/a', jwks_uri: 'https://x/b'}]",
         "spec.jwtRules[0]: only one of jwks or jwksUri can be set"),
        ("jwtRules: [{issuer: a, jwks: 'not json'}]", "spec.jwtRules[0].jwks: jwks parse error: invalid JSON"),
        ("jwtRules: [{issuer: a, jwks: '[1]'}]", "spec.jwtRules[0].jwks: jwks parse error: expected a JSON object"),
        ("jwtRules: [{issuer: a, jwks: '{\"keys\": [{\"kty\": \"RSA\", \"e\": \"AQAB\"}]}'}]",
         "spec.jwtRules[0].jwks: jwks parse error: RSA key 0 is missing n"),
        ("jwtRules: [{issuer: a, jwks: '{\"keys\": [{\"kty\": \"DSA\"}]}'}]",
         "spec.jwtRules[0].jwks: jwks parse error: key 0 has unsupported key type 'DSA'"),
        ("jwtRules: [{issuer: a, audiences: [x, '']}]",
         "spec.jwtRules[0].audiences[1]: audience must be non-empty string"),
        ("jwtRules: [{issuer: a, fromHeaders: [{name: ''}]}]",
         "spec.jwtRules[0].fromHeaders[0].name: location header name must be non-empty string"),
        ("jwtRules: [{issuer: a, fromHeaders: [{prefix: 'Bearer '}]}]",
         "spec.jwtRules[0].fromHeaders[0].name: required field is missing"),
        ("jwtRules: [{issuer: a, fromHeaders: [{name: \"x\\ny\"}]}]",
         "spec.jwtRules[0].fromHeaders[0].name: header name must not contain NUL, CR or LF characters"),
        ("jwtRules: [{issuer: a, fromParams: ['']}]",
         "spec.jwtRules[0].fromParams[0]: location query must be non-empty"),
        ("jwtRules: [{issuer: a, fromCookies: ['']}]",
         "spec.jwtRules[0].fromCookies[0]: cookie name must be non-empty"),
        ("jwtRules: [{issuer: a, outputClaimToHeaders: [{header: 'x:y', claim: sub}]}]",
         "spec.jwtRules[0].outputClaimToHeaders[0].header: header name x:y is not a valid header name"),
        ("jwtRules: [{issuer: a, outputClaimToHeaders: [{header: x, claim: ''}]}]",
         "spec.jwtRules[0].outputClaimToHeaders[0].claim: outputClaimToHeaders header and claim value must be "
         "non-empty string"),
        ("jwtRules: [{issuer: a, outputClaimToHeaders: [{header: x}]}]",
         "spec.jwtRules[0].outputClaimToHeaders[0].claim: required field is missing"),
        ("jwtRules: [{issuer: a, timeout: 0s}]", "spec.jwtRules[0].timeout: must be at least 1ms"),
        ("jwtRules: [{issuer: a, timeout: 1500us}]", "spec.jwtRules[0].timeout: only durations to ms precision"),
        ("jwtRules: [{issuer: a, spaceDelimitedClaims: ['']}]",
         "spec.jwtRules[0].spaceDelimitedClaims[0]: claim name must be non-empty string"),
        ("jwtRules: [{issuer: a, spaceDelimitedClaims: [" + ", ".join(f"c{i}" for i in range(65)) + "]}]",
         "spec.jwtRules[0].spaceDelimitedClaims: Tuple should have at most 64 items"),
        ("jwtRules: [{issuer: a, jwksURI: 'https://x/'}]", "spec.jwtRules[0].jwksURI: unknown field"),
    ],
)
def test_request_authentication_rejections(spec: str, expected: str) -> None:
    msg = errors(ra(spec))
    assert expected in msg
    assert msg.startswith("test.yaml#0: RequestAuthentication foo/jwt: ")


# --- PeerAuthentication -------------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
def test_peer_authentication_doc_examples(version: str) -> None:
    mesh = load(pa("mtls: {mode: STRICT}", version, "{name: default, namespace: istio-system}"))
    assert isinstance(mesh, PeerAuthentication) and mesh.spec.mode == "STRICT"
    workload = load(pa("""
        selector:
          matchLabels:
            app: finance
        mtls:
          mode: PERMISSIVE
        portLevelMtls:
          8080:
            mode: DISABLE
          "9090":
            mode: STRICT
          9443: {}
    """, version))
    spec = workload.spec
    assert spec.port_level_mtls is not None and set(spec.port_level_mtls) == {8080, 9090, 9443}
    assert (spec.port_mode(8080), spec.port_mode(9090), spec.port_mode(9443), spec.port_mode(1)) == (
        "DISABLE", "STRICT", "PERMISSIVE", "PERMISSIVE")
    assert load(pa("{}", version)).spec.mode == "UNSET"
    assert load(pa("mtls: {}", version)).spec.mode == "UNSET"


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("mtls: {mode: STRIKT}", "spec.mtls.mode: Input should be 'UNSET', 'DISABLE', 'PERMISSIVE' or 'STRICT'"),
        ("mtls: {mode: STRICT}\nportLevelMtls: {8080: {mode: DISABLE}}",
         "spec.portLevelMtls: mesh/namespace peer authentication cannot have port level mTLS"),
        ("selector: {matchLabels: {}}\nportLevelMtls: {8080: {mode: DISABLE}}",
         "spec.portLevelMtls: mesh/namespace peer authentication cannot have port level mTLS"),
        ("selector: {matchLabels: {app: a}}\nportLevelMtls: {}",
         "spec.portLevelMtls: port level mTLS, if defined, must have at least one element"),
        ("selector: {matchLabels: {app: a}}\nportLevelMtls: {0: {mode: DISABLE}}",
         "spec.portLevelMtls: port must be in range 1..65535, found 0"),
        ("selector: {matchLabels: {app: a}}\nportLevelMtls: {70000: {mode: DISABLE}, http: {}}",
         "spec.portLevelMtls: port must be in range 1..65535, found 70000, 'http'"),
        ("selector: {matchLabels: {app: a}}\nportLevelMtls: {8080: {mode: SOMETIMES}}",
         "spec.portLevelMtls[8080].mode: Input should be 'UNSET', 'DISABLE', 'PERMISSIVE' or 'STRICT'"),
        ("selector: {matchLabels: {'': a}}", "spec.selector: empty key is not supported in selector: =a"),
        ("mtls: {mode: STRICT, strict: true}", "spec.mtls.strict: unknown field"),
        ("targetRefs: [{kind: Service, name: s}]", "spec.targetRefs: unknown field"),
    ],
)
def test_peer_authentication_rejections(spec: str, expected: str) -> None:
    msg = errors(pa(spec))
    assert expected in msg
    assert msg.startswith("test.yaml#0: PeerAuthentication foo/default: ")
