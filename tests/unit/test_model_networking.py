"""networking.istio.io models: Istio's documented examples load, and bad configs are rejected with
Istio's rule and the path of the offending field."""

from __future__ import annotations

import textwrap
import typing
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from istiod_lite.model import ResourceInvalid, parse_object
from istiod_lite.model.base import dump
from istiod_lite.model.networking import (
    DestinationRule,
    ServiceEntry,
    VirtualService,
    WorkloadEntry,
)

VERSIONS = ("v1", "v1beta1", "v1alpha3")


def load(text: str) -> Any:
    doc = yaml.safe_load(textwrap.dedent(text))
    return parse_object(doc, source="test.yaml", doc_index=0)


def errors(text: str) -> str:
    with pytest.raises(ResourceInvalid) as info:
        load(text)
    return "\n".join(str(e) for e in info.value.errors)


def vs(spec: str, name: str = "reviews") -> str:
    return f"apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: {name}, namespace: ns}}\n" \
        + "spec:\n" + textwrap.indent(textwrap.dedent(spec), "  ")


def dr(spec: str) -> str:
    return "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: reviews, namespace: ns}\n" \
        + "spec:\n" + textwrap.indent(textwrap.dedent(spec), "  ")


def se(spec: str) -> str:
    return "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: ext, namespace: ns}\n" \
        + "spec:\n" + textwrap.indent(textwrap.dedent(spec), "  ")


def we(spec: str) -> str:
    return "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: vm1, namespace: ns}\n" \
        + "spec:\n" + textwrap.indent(textwrap.dedent(spec), "  ")


# --- field names ------------------------------------------------------------------------------

#: Every field name in the v1 CRD schemas of the four kinds (istio/api customresourcedefinitions.gen.yaml).
_ISTIO_FIELD_NAMES = """
apiVersion kind metadata spec status
hosts gateways http tls tcp exportTo
name match route redirect directResponse delegate rewrite timeout retries fault mirror mirrorPercent
mirrorPercentage mirrors corsPolicy headers
uri scheme method authority port sourceLabels queryParams ignoreUriCase withoutHeaders sourceNamespace statPrefix
exact prefix regex destination weight host subset number request response set add remove
derivePort redirectCode status body string bytes namespace uriRegexRewrite rewrite
attempts perTryTimeout retryOn retryRemoteLocalities retryIgnorePreviousHosts backoff
delay abort fixedDelay exponentialDelay percentage percent value httpStatus grpcStatus http2Error
allowOrigin allowOrigins allowMethods allowHeaders exposeHeaders maxAge allowCredentials unmatchedPreflights
sniHosts destinationSubnets sourceSubnet
trafficPolicy subsets workloadSelector labels matchLabels
loadBalancer connectionPool outlierDetection portLevelSettings tunnel proxyProtocol retryBudget
simple consistentHash localityLbSetting warmupDurationSecs warmup
httpHeaderName httpCookie useSourceIp httpQueryParameterName ringHash maglev minimumRingSize tableSize
path ttl attributes distribute failover failoverPriority enabled from to duration minimumPercent aggression
maxConnections connectTimeout tcpKeepalive maxConnectionDuration idleTimeout probes time interval
http1MaxPendingRequests http2MaxRequests maxRequestsPerConnection maxRetries h2UpgradePolicy useClientProtocol
maxConcurrentStreams
splitExternalLocalOriginErrors consecutiveLocalOriginFailures consecutiveGatewayErrors consecutive5xxErrors
baseEjectionTime maxEjectionPercent minHealthPercent consecutiveErrors
mode clientCertificate privateKey caCertificates credentialName subjectAltNames sni insecureSkipVerify caCrl
protocol targetHost targetPort version minRetryConcurrency
addresses ports location resolution endpoints address network locality serviceAccount
prefixRewrite http2KeepAlive zoneAwareLbSetting minClusterSize outlierDetectionHttpErrorCodes budgetInterval
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


@pytest.mark.parametrize("kind", [VirtualService, DestinationRule, ServiceEntry, WorkloadEntry])
def test_every_field_uses_istios_yaml_name(kind: type[BaseModel]) -> None:
    names = _aliases(kind, set()) - {"creationTimestamp", "resourceVersion", "generation", "uid", "annotations",
                                      "ownerReferences", "deletionTimestamp", "apiVersion"}
    unknown = names - ISTIO_FIELDS
    assert not unknown, f"field names not in Istio's API: {sorted(unknown)}"


@pytest.mark.parametrize("kind", ["VirtualService", "DestinationRule", "ServiceEntry", "WorkloadEntry"])
def test_registered_under_every_networking_version(kind: str) -> None:
    spec = {
        "VirtualService": {"hosts": ["a"], "http": [{"route": [{"destination": {"host": "a"}}]}]},
        "DestinationRule": {"host": "a"},
        "ServiceEntry": {"hosts": ["a.example.com"], "resolution": "DNS"},
        "WorkloadEntry": {"address": "127.0.2.9"},
    }[kind]
    for v in VERSIONS:
        obj = parse_object({"apiVersion": f"networking.istio.io/{v}", "kind": kind,
                            "metadata": {"name": "x"}, "spec": spec})
        assert obj.kind == kind and obj.namespace == "default"


# --- VirtualService: Istio doc examples ------------------------------------------------------


def test_bookinfo_reviews_weighted_split() -> None:
    obj = load(vs("""
        hosts: [reviews]
        http:
        - route:
          - destination: {host: reviews, subset: v1}
            weight: 75
          - destination: {host: reviews, subset: v3}
            weight: 25
    """))
    assert isinstance(obj, VirtualService)
    assert [(d.destination.subset, d.weight) for d in obj.spec.http[0].route] == [("v1", 75), ("v3", 25)]
    assert obj.spec.http[0].route[0].destination.port_number is None


def test_header_match_route_with_fault_injection_delay_and_abort() -> None:
    obj = load(vs("""
        hosts: [ratings]
        http:
        - match:
          - headers:
              end-user: {exact: jason}
          fault:
            delay:
              percentage: {value: 100.0}
              fixedDelay: 7s
          route:
          - destination: {host: ratings, subset: v1}
        - fault:
            abort:
              percentage: {value: 12.5}
              httpStatus: 500
          route:
          - destination: {host: ratings, subset: v1}
    """, name="ratings"))
    first, second = obj.spec.http
    assert first.match[0].headers["end-user"].exact == "jason"
    assert first.fault.delay.fixed_delay.millis == 7000
    assert first.fault.delay.percentage.value == 100.0
    assert second.fault.abort.http_status == 500 and second.fault.abort.percentage.value == 12.5


def test_retries_timeout_rewrite_mirror_cors_headers() -> None:
    obj = load(vs("""
        hosts: [reviews.prod.svc.cluster.local]
        http:
        - name: reviews-v2-routes
          match:
          - uri: {prefix: /wpcatalog}
            port: 9080
          - uri: {regex: '^/consumercatalog/[0-9]+$'}
            ignoreUriCase: true
            queryParams:
              debug: {exact: "1"}
            withoutHeaders:
              x-skip: {regex: "*"}
          rewrite: {uri: /newcatalog}
          route:
          - destination:
              host: reviews.prod.svc.cluster.local
              subset: v2
              port: {number: 9080}
            headers:
              response: {remove: [foo]}
          timeout: 10s
          retries:
            attempts: 3
            perTryTimeout: 2s
            retryOn: gateway-error,connect-failure,refused-stream,503
            backoff: 25ms
          mirror: {host: reviews, subset: v3}
          mirrorPercentage: {value: 50.0}
          corsPolicy:
            allowOrigins:
            - exact: https://example.com
            allowMethods: [POST, GET]
            allowCredentials: false
            allowHeaders: [X-Foo-Bar]
            maxAge: 24h
          headers:
            request:
              set: {test: "true"}
            response:
              add: {x-served-by: "%HOSTNAME%"}
        - route:
          - destination: {host: reviews.prod.svc.cluster.local, subset: v1}
    """))
    http = obj.spec.http[0]
    assert http.match[0].port == 9080 and http.match[1].ignore_uri_case
    assert http.match[1].without_headers["x-skip"].regex == "*"
    assert http.route[0].destination.port_number == 9080
    assert http.timeout.total_seconds == 10.0
    assert http.retries.attempts == 3 and http.retries.per_try_timeout.millis == 2000
    assert http.cors_policy.max_age.seconds == 86400
    assert http.headers.response.add == {"x-served-by": "%HOSTNAME%"}


def test_redirect_direct_response_delegate_tls_and_tcp_routes() -> None:
    obj = load(vs("""
        hosts: [bookinfo.com]
        gateways: [mesh, istio-system/ingress]
        http:
        - match: [{uri: {exact: /v1/getProductRatings}}]
          redirect: {uri: /v1/bookRatings, authority: newratings.default.svc.cluster.local, redirectCode: 301}
        - match: [{uri: {prefix: /health}}]
          directResponse:
            status: 503
            body: {string: "unknown error"}
        - match: [{uri: {prefix: /blob}}]
          directResponse:
            status: 200
            body: {bytes: aGVsbG8=}
        - match: [{uri: {prefix: /productpage}}]
          delegate: {name: productpage, namespace: nsA}
        tls:
        - match:
          - port: 443
            sniHosts: [bookinfo.com]
          route:
          - destination: {host: productpage}
        tcp:
        - match: [{port: 27017, destinationSubnets: [10.0.0.0/8]}]
          route:
          - destination: {host: mongo.backup.svc.cluster.local, port: {number: 5555}}
    """))
    assert obj.spec.http[0].redirect.redirect_code == 301
    assert obj.spec.http[1].direct_response.body.string == "unknown error"
    assert obj.spec.http[2].direct_response.body.content == b"hello"
    assert obj.spec.http[3].delegate.name == "productpage"
    assert obj.spec.tls[0].match[0].sni_hosts == ("bookinfo.com",)
    assert obj.spec.tcp[0].route[0].destination.port_number == 5555


def test_delegate_virtual_service_has_no_hosts() -> None:
    obj = load(vs("""
        http:
        - match: [{uri: {prefix: /productpage/v1}}]
          route: [{destination: {host: productpage-v1.nsA.svc.cluster.local}}]
    """, name="productpage"))
    assert obj.spec.is_delegate


def test_weights_are_relative_not_percentages() -> None:
    # Istio 1.15+ (istio/istio#39544): no 0..100 bound and no sum-to-100 rule.
    obj = load(vs("""
        hosts: [reviews]
        http:
        - route:
          - {destination: {host: reviews, subset: v1}, weight: 1000}
          - {destination: {host: reviews, subset: v2}, weight: 3}
    """))
    assert [d.weight for d in obj.spec.http[0].route] == [1000, 3]


def test_round_trip_through_wire_form() -> None:
    text = vs("""
        hosts: [reviews]
        http:
        - match: [{uri: {prefix: /a}, headers: {x-a: {regex: "b+"}}}]
          route: [{destination: {host: reviews, subset: v1}, weight: 100}]
          timeout: 1.5s
          fault: {abort: {http2Error: ""}}
    """)
    with pytest.raises(ResourceInvalid):  # http2Error is not supported by Istio yet
        load(text)
    obj = load(text.replace('fault: {abort: {http2Error: ""}}', "mirrors: [{destination: {host: a}}]"))
    again = parse_object(dump(obj))
    assert again == obj
    assert dump(obj)["spec"]["http"][0]["timeout"] == "1.5s"


def test_models_are_frozen() -> None:
    obj = load(vs("hosts: [a]\nhttp: [{route: [{destination: {host: a}}]}]\n"))
    with pytest.raises(Exception, match="frozen"):
        obj.spec.hosts = ("b",)  # type: ignore[misc]


# --- VirtualService: rejected configs --------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("hosts: [r]\nhttp: [{route: [{destination: {host: r}, weight: -1}, {destination: {host: r}}]}]",
         "spec.http[0].route[0].weight: must be between 0 and 2147483647"),
        ("hosts: [r]\nhttp: [{route: [{destination: {host: r}, weight: 0}, {destination: {host: r}, weight: 0}]}]",
         "spec.http[0]: total destination weight = 0"),
        ("hosts: [r]\nhttp: [{route: [{destination: {host: r}, wieght: 5}]}]",
         "spec.http[0].route[0].wieght: unknown field"),
        ("hosts: [r]\nhttp: [{route: [{destination: {host: r}}], timeout: 1.5x}]",
         'spec.http[0].timeout: invalid duration "1.5x": expected a number with a unit'),
        ("hosts: [r]\nhttp: [{route: [{destination: {host: r}}], timeout: 0s}]",
         "spec.http[0].timeout: must be at least 1ms"),
        ("hosts: [r]\nhttp: [{route: [{destination: {host: r}}], timeout: 1500us}]",
         "spec.http[0].timeout: only durations to ms precision are supported"),
        ("hosts: [r]\nhttp: [{match: [{uri: {regex: '(?<=a)b'}}], route: [{destination: {host: r}}]}]",
         'spec.http[0].match[0].uri.regex: invalid RE2 regex "(?<=a)b"'),
        ("hosts: [r]\nhttp: [{match: [{headers: {x: {regex: '*'}}}], route: [{destination: {host: r}}]}]",
         'spec.http[0].match[0].headers.x.regex: invalid RE2 regex "*"'),
        ("hosts: [r]\nhttp: [{match: [{uri: {exact: /a, prefix: /b}}], route: [{destination: {host: r}}]}]",
         "spec.http[0].match[0].uri: only one of exact, prefix or regex may be set"),
        ("hosts: [r]\nhttp: [{match: [{method: {prefix: ''}}], route: [{destination: {host: r}}]}]",
         'spec.http[0].match[0]: "method": prefix string match should not be empty'),
        ("hosts: [r]\nhttp: [{rewrite: {uriRegexRewrite: {match: '(?<=a)', rewrite: x}}, "
         "route: [{destination: {host: r}}]}]",
         "spec.http[0].rewrite.uriRegexRewrite.match: invalid RE2 regex"),
        ("hosts: [r]\nhttp: [{name: x}]",
         "spec.http[0]: HTTP route, redirect or direct_response is required"),
        ("hosts: [r]\nhttp: [{redirect: {uri: /x}, route: [{destination: {host: r}}]}]",
         "spec.http[0]: HTTP route cannot contain both route and redirect"),
        ("hosts: [r]\nhttp: [{directResponse: {status: 200}, route: [{destination: {host: r}}]}]",
         "spec.http[0]: HTTP route cannot contain both route and direct_response"),
        ("hosts: [r]\nhttp: [{redirect: {uri: /x}, directResponse: {status: 200}}]",
         "spec.http[0]: HTTP route cannot contain both direct_response and redirect"),
        ("hosts: [r]\nhttp: [{directResponse: {status: 700}}]",
         "spec.http[0].directResponse.status: must be between 200 and 599"),
        ("hosts: [r]\nhttp: [{directResponse: {status: 200, body: {string: a, bytes: YQ==}}}]",
         "spec.http[0].directResponse.body: only one of string or bytes may be set"),
        ("hosts: [r]\nhttp: [{redirect: {redirectCode: 302}}]",
         "spec.http[0].redirect: redirect must specify URI, authority, scheme, or port"),
        ("hosts: [r]\nhttp: [{redirect: {uri: /a, redirectCode: 200}}]",
         "spec.http[0].redirect: 200 is not a valid redirect code, must be 3xx"),
        ("hosts: [r]\nhttp: [{redirect: {port: 8080, derivePort: FROM_REQUEST_PORT}}]",
         "spec.http[0].redirect: only one of port or derivePort may be set"),
        ("hosts: [r]\nhttp: [{rewrite: {uri: /a, uriRegexRewrite: {match: a, rewrite: b}}, "
         "route: [{destination: {host: r}}]}]",
         "spec.http[0].rewrite: rewrite may only contain one of URI or UriRegexRewrite"),
        ("hosts: [r]\nhttp: [{route: [{destination: {host: r}}], retries: {attempts: -1}}]",
         "spec.http[0].retries: attempts cannot be negative"),
        ("hosts: [r]\nhttp: [{route: [{destination: {host: r}}], retries: {perTryTimeout: 1s}}]",
         "spec.http[0].retries: http retry policy configured when attempts are set to 0 (disabled)"),
        ("hosts: [r]\nhttp: [{route: [{destination: {host: r}}], retries: {attempts: 2, retryOn: '5xx,bogus'}}]",
         'spec.http[0].retries: "bogus" is not a valid retryOn policy'),
        ("hosts: [r]\nhttp: [{route: [{destination: {host: r}}], fault: {}}]",
         "spec.http[0].fault: HTTP fault injection must have an abort and/or a delay"),
        ("hosts: [r]\nhttp: [{route: [{destination: {host: r}}], fault: {delay: {fixedDelay: 1s, "
         "exponentialDelay: 1s}}}]",
         "spec.http[0].fault.delay: only one of fixedDelay or exponentialDelay may be set"),
        ("hosts: [r]\nhttp: [{route: [{destination: {host: r}}], fault: {abort: {httpStatus: 500, "
         "grpcStatus: UNAVAILABLE}}}]",
         "spec.http[0].fault.abort: only one of httpStatus, grpcStatus or http2Error may be set"),
        ("hosts: [r]\nhttp: [{route: [{destination: {host: r}}], fault: {abort: {grpcStatus: NOPE}}}]",
         "spec.http[0].fault.abort: gRPC status 'NOPE' is not supported"),
        ("hosts: [r]\nhttp: [{route: [{destination: {host: r}}], fault: {abort: {httpStatus: 503, "
         "percentage: {value: 101}}}}]",
         "spec.http[0].fault.abort.percentage.value: must be between 0 and 100"),
        ("hosts: [r]\nhttp: [{route: [{destination: {host: r}}], fault: {delay: {fixedDelay: 1s, percentage: 5}}}]",
         "spec.http[0].fault.delay.percentage: Input should be a valid dictionary or instance of Percent"),
        ("hosts: [r]\nhttp: [{route: [{destination: {host: r}}], mirror: {host: a}, mirrors: [{destination: "
         "{host: b}}]}]",
         "spec.http[0]: HTTP route cannot contain both mirror and mirrors"),
        ("hosts: [r]\nhttp: [{route: [{destination: {host: r}}], mirrorPercent: 101}]",
         "spec.http[0]: mirror_percent must have a max value of 100 (it has 101)"),
        ("hosts: [r]\nhttp: [{route: [{destination: {host: r}}], rewrite: {authority: a}, "
         "headers: {request: {set: {host: b}}}}]",
         "spec.http[0]: authority header cannot be set multiple times: have 'a', attempting to set 'b'"),
        ("hosts: [r]\nhttp: [{route: [{destination: {host: r}}], headers: {request: {set: {':path': /x}}}}]",
         'spec.http[0].headers: invalid header ":path": header cannot have ":" prefix'),
        ("hosts: [r]\nhttp: [{route: [{destination: {host: r}}], headers: {response: {set: {x: 'a%b'}}}}]",
         "spec.http[0].headers: header value configuration: invalid header value 'a%b'"),
        ("hosts: [r]\nhttp: [{route: [{destination: {host: r}}], corsPolicy: {allowMethods: [FETCH]}}]",
         'spec.http[0].corsPolicy: "FETCH" is not a supported HTTP method'),
        ("hosts: [r]\nhttp: [{route: [{destination: {host: '*'}}]}]",
         "spec.http[0].route[0].destination: invalid destination host *"),
        ("hosts: [r]\nhttp: [{route: [{destination: {host: r, subset: V_1}}]}]",
         "spec.http[0].route[0].destination: subset name is invalid: V_1"),
        ("hosts: [r]\nhttp: [{route: [{destination: {host: r, port: {number: 70000}}}]}]",
         "spec.http[0].route[0].destination.port.number: must be between 1 and 65535"),
        ("hosts: [r]\nhttp: [{match: [{port: 70000}], route: [{destination: {host: r}}]}]",
         "spec.http[0].match[0].port: must be between 1 and 65535"),
        ("hosts: ['*']\nhttp: [{route: [{destination: {host: r}}]}]",
         "spec: wildcard host * is not allowed for virtual services bound to the mesh gateway"),
        ("hosts: [a.example.com, '*.example.com']\nhttp: [{route: [{destination: {host: r}}]}]",
         "spec: duplicate hosts in virtual service: a.example.com & *.example.com"),
        ("hosts: [r]", "spec: http, tcp or tls must be provided in virtual service"),
        ("hosts: [r]\ngateways: [a/b/c]\nhttp: [{route: [{destination: {host: r}}]}]",
         "spec: invalid value for gateway name: 'b/c'"),
        ("gateways: [gw]\nhttp: [{route: [{destination: {host: r}}]}]",
         "spec: delegate virtual service must have no gateways specified"),
        ("hosts: [r]\nhttp: [{match: [{headers: {'@request.auth.claims.group': {exact: a}}}], "
         "route: [{destination: {host: r}}]}]",
         "JWT claim based routing (key: @request.auth.claims.group) is only supported for gateway"),
        ("hosts: [r]\nhttp: [{delegate: {name: d}, route: [{destination: {host: r}}]}]",
         "spec.http[0]: root HTTP route  must not specify route"),
        ("hosts: [a.com]\ntls: [{match: [{sniHosts: [b.com]}], route: [{destination: {host: r}}]}]",
         "spec: SNI host 'b.com' is not a compatible subset of any of the virtual service hosts: [a.com]"),
        ("hosts: [a.com]\ntls: [{match: [{sniHosts: []}], route: [{destination: {host: r}}]}]",
         "spec.tls[0].match[0]: TLS match must have at least one SNI host"),
        ("hosts: [a.com]\ntls: [{route: [{destination: {host: r}}]}]",
         "spec.tls[0].match: required field is missing"),
        ("hosts: [a.com]\ntcp: [{match: [{destinationSubnets: [10.0.0.0/33]}]}]",
         "spec.tcp[0].match[0]: 10.0.0.0/33 is not a valid CIDR block"),
        ("hosts: [a.com]\ntcp: [{match: [{port: 1}]}]",
         "spec.tcp[0]: TCP route is required"),
        ("hosts: [r]\nexportTo: ['*', ns2]\nhttp: [{route: [{destination: {host: r}}]}]",
         "spec: cannot have both public (*) and non-public exportTo values for a resource"),
    ],
)
def test_virtual_service_rejections(spec: str, expected: str) -> None:
    msg = errors(vs(spec))
    assert expected in msg
    assert msg.startswith("test.yaml#0: VirtualService ns/")


def test_unknown_top_level_field_and_missing_spec() -> None:
    assert "test.yaml#0: VirtualService ns/reviews: specc: unknown field" in errors(
        vs("hosts: [r]\nhttp: [{route: [{destination: {host: r}}]}]").replace("spec:", "specc:")
    )
    assert "spec: required field is missing" in errors(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: x}\n"
    )


def test_all_errors_are_reported_not_just_the_first() -> None:
    msg = errors(vs("""
        hosts: [r]
        http:
        - route: [{destination: {host: r}, weight: -5}]
          timeout: soon
        - route: [{destination: {host: r}}]
          retries: {attempts: 1, perTryTimeout: 1h1}
    """))
    assert "spec.http[0].route[0].weight" in msg
    assert "spec.http[0].timeout" in msg
    assert "spec.http[1].retries.perTryTimeout" in msg


def test_regex_over_1024_characters_is_rejected() -> None:
    long = "a" * 1025
    spec = f"hosts: [r]\nhttp: [{{match: [{{uri: {{regex: '{long}'}}}}], route: [{{destination: {{host: r}}}}]}}]"
    msg = errors(vs(spec))
    assert "spec.http[0].match[0].uri.regex: regex is 1025 characters long; the maximum is 1024" in msg


# --- DestinationRule ---------------------------------------------------------------------------


def test_destination_rule_doc_examples() -> None:
    obj = load(dr("""
        host: reviews.prod.svc.cluster.local
        trafficPolicy:
          loadBalancer:
            simple: LEAST_REQUEST
            warmup: {duration: 30s, minimumPercent: 10, aggression: 1.5}
          connectionPool:
            tcp:
              maxConnections: 100
              connectTimeout: 30ms
              tcpKeepalive: {time: 7200s, interval: 75s, probes: 9}
              idleTimeout: 0s
            http:
              http1MaxPendingRequests: 1024
              http2MaxRequests: 1024
              maxRequestsPerConnection: 10
              maxRetries: 3
              idleTimeout: 1h
              h2UpgradePolicy: UPGRADE
          outlierDetection:
            consecutive5xxErrors: 7
            consecutiveGatewayErrors: 3
            interval: 5m
            baseEjectionTime: 15m
            maxEjectionPercent: 50
          tls: {mode: ISTIO_MUTUAL}
          portLevelSettings:
          - port: {number: 80}
            loadBalancer: {simple: LEAST_CONN}
          - port: {number: 9080}
            tls: {mode: SIMPLE, sni: reviews.example.com, insecureSkipVerify: true}
          retryBudget: {percent: 25.0, minRetryConcurrency: 5}
        subsets:
        - name: v1
          labels: {version: v1}
        - name: testversion
          labels: {version: v3}
          trafficPolicy:
            loadBalancer:
              consistentHash:
                httpCookie: {name: user, ttl: 0s, path: /, attributes: [{name: SameSite, value: Strict}]}
                ringHash: {minimumRingSize: 1024}
        - name: v4
          labels: {version: v4}
          trafficPolicy:
            loadBalancer:
              consistentHash: {useSourceIp: true, maglev: {tableSize: 65537}}
              localityLbSetting:
                enabled: true
                distribute:
                - from: us-west/zone1/*
                  to: {"us-west/zone1/*": 80, "us-west/zone2/*": 20}
        workloadSelector:
          matchLabels: {app: ratings}
        exportTo: ["."]
    """))
    assert isinstance(obj, DestinationRule)
    tp = obj.spec.traffic_policy
    assert tp.connection_pool.http.http1_max_pending_requests == 1024
    assert tp.connection_pool.http.h2_upgrade_policy == "UPGRADE"
    assert tp.connection_pool.tcp.tcp_keepalive.probes == 9
    assert tp.outlier_detection.consecutive_5xx_errors == 7
    assert tp.for_port(9080).tls.insecure_skip_verify is True
    assert obj.spec.subset("testversion").traffic_policy.load_balancer.consistent_hash.http_cookie.name == "user"
    assert obj.spec.workload_selector.match_labels == {"app": "ratings"}
    wire = dump(obj)["spec"]["trafficPolicy"]
    assert wire["outlierDetection"]["consecutive5xxErrors"] == 7
    assert wire["connectionPool"]["http"]["http1MaxPendingRequests"] == 1024
    assert wire["connectionPool"]["tcp"]["tcpKeepalive"]["probes"] == 9


def test_bench_style_destination_rule_and_failover() -> None:
    obj = load(dr("""
        host: svc-1
        trafficPolicy:
          connectionPool: {http: {http1MaxPendingRequests: 100}}
          outlierDetection: {consecutive5xxErrors: 5, interval: 10s, baseEjectionTime: 30s}
          loadBalancer:
            localityLbSetting:
              failover: [{from: us-east, to: eu-west}]
              failoverPriority: [topology.istio.io/network]
        subsets:
        - {name: v1, labels: {version: v1}}
    """))
    assert obj.spec.traffic_policy.load_balancer.locality_lb_setting.failover[0].from_ == "us-east"


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("subsets: [{name: v1}]", "spec.host: required field is missing"),
        ("host: 'a..b'", "spec: domain name '.b' invalid (label '' invalid)"),
        ("host: r\nsubsets: [{name: v1}, {name: v1}]", "spec: duplicate subset names: v1"),
        ("host: r\nsubsets: [{name: ''}]", "spec.subsets[0]: subset name cannot be empty"),
        ("host: r\nsubsets: [{labels: {a: b}}]", "spec.subsets[0].name: required field is missing"),
        ("host: r\nsubsets: [{name: v1, labels: {'a b': c}}]", "spec.subsets[0]: invalid tag key: 'a b'"),
        ("host: r\ntrafficPolicy: {}", "spec.trafficPolicy: traffic policy must have at least one field"),
        ("host: r\ntrafficPolicy: {loadBalancer: {simple: ROUND_ROBIN, consistentHash: {useSourceIp: true}}}",
         "spec.trafficPolicy.loadBalancer: only one of simple or consistentHash may be set"),
        ("host: r\ntrafficPolicy: {loadBalancer: {simple: ROUND_ROBN}}",
         "spec.trafficPolicy.loadBalancer.simple: Input should be 'UNSPECIFIED', 'LEAST_CONN'"),
        ("host: r\ntrafficPolicy: {loadBalancer: {consistentHash: {httpHeaderName: x, useSourceIp: true}}}",
         "spec.trafficPolicy.loadBalancer.consistentHash: only one of httpHeaderName, httpCookie, useSourceIp "
         "or httpQueryParameterName may be set"),
        ("host: r\ntrafficPolicy: {loadBalancer: {consistentHash: {useSourceIp: true, ringHash: {}, maglev: "
         "{tableSize: 7}}}}",
         "spec.trafficPolicy.loadBalancer.consistentHash: only one of ringHash or maglev may be set"),
        ("host: r\ntrafficPolicy: {loadBalancer: {consistentHash: {useSourceIp: true, maglev: {tableSize: 1000}}}}",
         "spec.trafficPolicy.loadBalancer.consistentHash.maglev: tableSize must be a prime number for maglev"),
        ("host: r\ntrafficPolicy: {loadBalancer: {consistentHash: {httpCookie: {name: ''}}}}",
         "spec.trafficPolicy.loadBalancer.consistentHash.httpCookie: name required for HttpCookie"),
        ("host: r\ntrafficPolicy: {loadBalancer: {localityLbSetting: {distribute: [{from: a, to: {b: 60}}]}}}",
         "spec.trafficPolicy.loadBalancer.localityLbSetting: total locality weight 60 != 100"),
        ("host: r\ntrafficPolicy: {loadBalancer: {localityLbSetting: {failover: [{from: a, to: a}]}}}",
         "locality lb failover settings must specify different regions"),
        ("host: r\ntrafficPolicy: {loadBalancer: {warmup: {duration: 10s, aggression: 0.5}}}",
         "spec.trafficPolicy.loadBalancer.warmup: aggression should be greater than or equal to 1"),
        ("host: r\ntrafficPolicy: {connectionPool: {}}",
         "spec.trafficPolicy.connectionPool: connection pool must have at least one field"),
        ("host: r\ntrafficPolicy: {connectionPool: {http: {http1MaxPendingRequests: -1}}}",
         "spec.trafficPolicy.connectionPool.http.http1MaxPendingRequests: must be between 0 and 2147483647"),
        ("host: r\ntrafficPolicy: {connectionPool: {http: {h2UpgradePolicy: UPGRADE, useClientProtocol: true}}}",
         "spec.trafficPolicy.connectionPool.http: use client protocol must not be true when H2UpgradePolicy"),
        ("host: r\ntrafficPolicy: {connectionPool: {tcp: {connectTimeout: 10}}}",
         'spec.trafficPolicy.connectionPool.tcp.connectTimeout: invalid duration "10"'),
        ("host: r\ntrafficPolicy: {connectionPool: {tcp: {tcpKeeplive: {time: 1s}}}}",
         "spec.trafficPolicy.connectionPool.tcp.tcpKeeplive: unknown field"),
        ("host: r\ntrafficPolicy: {outlierDetection: {maxEjectionPercent: 120}}",
         "spec.trafficPolicy.outlierDetection.maxEjectionPercent: must be between 0 and 100"),
        ("host: r\ntrafficPolicy: {outlierDetection: {consecutive5xxErrors: -1}}",
         "spec.trafficPolicy.outlierDetection.consecutive5xxErrors: must be between 0 and 4294967295"),
        ("host: r\ntrafficPolicy: {outlierDetection: {consecutiveLocalOriginFailures: 3}}",
         "spec.trafficPolicy.outlierDetection: outlier detection consecutive local origin failures is specified"),
        ("host: r\ntrafficPolicy: {tls: {mode: MUTUAL}}",
         "spec.trafficPolicy.tls: client certificate required for mutual tls; private key required for mutual tls"),
        ("host: r\ntrafficPolicy: {tls: {mode: SIMPLE, credentialName: c, caCertificates: /ca.pem}}",
         "spec.trafficPolicy.tls: cannot specify client certificates or CA certificate or CA CRL If credentialName"),
        ("host: r\ntrafficPolicy: {tls: {mode: STRICT}}",
         "spec.trafficPolicy.tls.mode: Input should be 'DISABLE', 'SIMPLE', 'MUTUAL' or 'ISTIO_MUTUAL'"),
        ("host: r\ntrafficPolicy: {portLevelSettings: [{tls: {mode: DISABLE}}]}",
         "spec.trafficPolicy.portLevelSettings[0]: portTrafficPolicy must have valid port"),
        ("host: r\ntrafficPolicy: {portLevelSettings: [{port: {number: 80}}]}",
         "spec.trafficPolicy.portLevelSettings[0]: port traffic policy must have at least one field"),
        ("host: r\ntrafficPolicy: {tunnel: {protocol: CONNECT, targetHost: a.com, targetPort: 80}, "
         "proxyProtocol: {version: V2}}",
         "spec.trafficPolicy: tunnel and proxyProtocol must not be set together"),
        ("host: r\ntrafficPolicy: {tunnel: {protocol: GET, targetHost: a.com, targetPort: 0}}",
         'spec.trafficPolicy.tunnel: tunnel protocol must be "CONNECT" or "POST"; tunnel target port is invalid'),
        ("host: r\ntrafficPolicy: {retryBudget: {percent: 101}}",
         "spec.trafficPolicy.retryBudget.percent: must be between 0 and 100"),
        ("host: r\nworkloadSelector: {matchLabels: {app: '*'}}",
         "spec.workloadSelector: wildcard is not supported in selector: app=*"),
        ("host: r\nworkloadSelector: {matchLabels: {app: a}}\nexportTo: ['*']",
         "DestinationRule ns/reviews: destination rule with workload selector cannot have exportTo beyond current"),
        ("host: r\nexportTo: [a, a]", "spec: duplicate entries in exportTo for entry a"),
    ],
)
def test_destination_rule_rejections(spec: str, expected: str) -> None:
    assert expected in errors(dr(spec))


# --- ServiceEntry --------------------------------------------------------------------------------


def test_service_entry_dns_and_static_examples() -> None:
    ext = load(se("""
        hosts: [api.dropboxapi.com, www.googleapis.com]
        location: MESH_EXTERNAL
        ports:
        - {number: 443, name: https, protocol: TLS}
        resolution: DNS
    """))
    assert isinstance(ext, ServiceEntry)
    assert ext.spec.resolution == "DNS" and ext.spec.port(443).protocol_name == "TLS"
    static = load(se("""
        hosts: [mymongodb.somedomain]
        addresses: [192.192.192.192/24]
        ports:
        - {number: 27018, name: mongodb, protocol: MONGO, targetPort: 27017}
        location: MESH_INTERNAL
        resolution: STATIC
        endpoints:
        - {address: 2.2.2.2}
        - address: 3.3.3.3
          ports: {mongodb: 27019}
          labels: {app: mongo}
          locality: us-east-1/us-east-1a
          weight: 2
          network: net1
          serviceAccount: mongo
    """))
    assert static.spec.endpoints[1].ports == {"mongodb": 27019}
    dns_endpoints = load(se("""
        hosts: ['*.foo.com']
        ports: [{number: 80, name: http, protocol: HTTP}]
        resolution: DNS
        endpoints: [{address: us.foo.com, ports: {http: 8080}}, {address: 1.2.3.4}]
    """))
    assert dns_endpoints.spec.endpoints[0].address == "us.foo.com"
    selector = load(se("""
        hosts: [mysvc.vm.internal]
        ports: [{number: 80, name: http, protocol: HTTP, targetPort: 8080}]
        location: MESH_INTERNAL
        resolution: STATIC
        workloadSelector: {labels: {app: vm}}
        subjectAltNames: [spiffe://cluster.local/ns/vm/sa/vm]
        exportTo: [".", istio-system]
    """))
    assert selector.spec.workload_selector.labels == {"app": "vm"}
    unix = load(se("""
        hosts: [unix.local]
        ports: [{number: 80, name: http, protocol: HTTP}]
        resolution: STATIC
        endpoints: [{address: "unix:///var/run/example/socket"}]
    """))
    assert unix.spec.endpoints[0].is_unix


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("resolution: DNS", "spec.hosts: required field is missing"),
        ("hosts: []", "spec: service entry must have at least one host"),
        ("hosts: ['*']", "spec: invalid host *"),
        ("hosts: [a.com]\nports: [{number: 80, name: http}, {number: 80, name: http2}]",
         "spec: service entry port 80 already defined"),
        ("hosts: [a.com]\nports: [{number: 80, name: http}, {number: 81, name: http}]",
         "spec: service entry port name 'http' already defined"),
        ("hosts: [a.com]\nports: [{number: 80}]", "spec.ports[0].name: required field is missing"),
        ("hosts: [a.com]\nports: [{number: 0, name: a}]", "spec.ports[0].number: must be between 1 and 65535"),
        ("hosts: [a.com]\nports: [{number: 80, name: a, protocol: QUIC}]",
         "spec.ports[0]: unsupported protocol: QUIC"),
        ("hosts: [a.com]\nresolution: STATIC\nendpoints: [{address: 1.1.1.1}]\nworkloadSelector: {labels: {a: b}}",
         "spec: only one of WorkloadSelector or Endpoints is allowed in Service Entry"),
        ("hosts: [a.com]\nresolution: NONE\nendpoints: [{address: 1.1.1.1}]",
         "spec: no endpoints should be provided for resolution type none"),
        ("hosts: ['*.a.com']\nresolution: DNS",
         "spec: hosts must be FQDN if no endpoints are provided for resolution mode DNS"),
        ("hosts: [a.com]\nresolution: DNS_ROUND_ROBIN\nendpoints: [{address: b.com}, {address: c.com}]",
         "spec: there must only be 0 or 1 endpoint for resolution mode DNS_ROUND_ROBIN"),
        ("hosts: [a.com]\nresolution: STATIC\nendpoints: [{address: b.com}]",
         "spec: endpoint address 'b.com' is not a valid IP address"),
        ("hosts: [a.com]\nresolution: STATIC\nports: [{number: 80, name: http}]\n"
         "endpoints: [{address: 1.1.1.1, ports: {grpc: 90}}]",
         "spec: endpoint port grpc is not defined by the service entry"),
        ("hosts: [a.com]\nresolution: STATIC\nendpoints: [{labels: {a: b}}]",
         "spec.endpoints[0]: address is required"),
        ("hosts: [a.com]\nresolution: STATIC\nendpoints: [{address: 1.1.1.1, ports: {http: 70000}}]",
         "spec.endpoints[0].ports.http: must be between 1 and 65535"),
        ("hosts: [a.com]\nresolution: DNS\naddresses: [10.0.0.0/8]",
         "spec: CIDR addresses are allowed only for NONE/STATIC resolution types"),
        ("hosts: [a.com]\naddresses: [10.0.0.300]", "spec: 10.0.0.300 is not a valid IP"),
        ("hosts: [a.com, b.com]\nresolution: DNS\nports: [{number: 3306, name: mysql, protocol: TCP}]",
         "spec: multiple hosts provided with non-HTTP, non-TLS ports"),
        ("hosts: [a.com]\nresolution: DNZ", "spec.resolution: Input should be 'NONE', 'STATIC', 'DNS'"),
        ("hosts: [a.com]\nresolution: STATIC\nendpoints: [{address: 'unix://relative/sock'}]",
         "spec.endpoints[0]: relative/sock is not an absolute path to a file"),
        ("hosts: [a.com]\nworkloadSelector: {labels: {app: 'a*'}}",
         "spec.workloadSelector: wildcard is not supported in selector: app=a*"),
        ("hosts: [a.com]\nexportTo: ['~', ns1]", "spec: cannot export service entry to no one (~) and someone"),
    ],
)
def test_service_entry_rejections(spec: str, expected: str) -> None:
    assert expected in errors(se(spec))


# --- WorkloadEntry -------------------------------------------------------------------------------


def test_workload_entry_examples() -> None:
    vm = load(we("""
        serviceAccount: details-legacy
        address: 2.2.2.2
        labels: {app: details-legacy, instance-id: vm1}
        ports: {http: 9080}
        locality: us-central1/us-central1-a
        network: vm-net
        weight: 3
    """))
    assert isinstance(vm, WorkloadEntry)
    assert vm.spec.service_account == "details-legacy" and vm.spec.ports == {"http": 9080}
    assert load(we("address: vm1.example.com")).spec.address == "vm1.example.com"
    assert load(we("network: remote-net")).spec.network == "remote-net"


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("labels: {a: b}", "spec: address is required"),
        ("address: 'not an address'", "spec: endpoint address 'not an address' is not a valid FQDN or an IP address"),
        ("address: 'unix:///sock'\nports: {http: 80}", "spec: unix endpoint unix:///sock must not include ports"),
        ("address: 1.1.1.1\nports: {Bad_Name: 80}", "spec: invalid port name: Bad_Name"),
        ("address: 1.1.1.1\nweight: -1", "spec.weight: must be between 0 and 4294967295"),
        ("address: 1.1.1.1\nserviceAcount: a", "spec.serviceAcount: unknown field"),
        ("address: 1.1.1.1\nlabels: {app: 'a b'}", "spec: invalid tag value: 'a b'"),
    ],
)
def test_workload_entry_rejections(spec: str, expected: str) -> None:
    assert expected in errors(we(spec))


def test_status_written_by_istio_is_accepted() -> None:
    obj = load(we("address: 1.1.1.1\n") + "status:\n  conditions: [{type: Healthy, status: 'True'}]\n")
    assert obj.status == {"conditions": [{"type": "Healthy", "status": "True"}]}


def test_empty_string_match_means_header_present() -> None:
    # Istio: "If the value is empty and only the name of header is specified, presence of the header is checked."
    obj = load(vs("hosts: [r]\nhttp: [{match: [{headers: {x-debug: {}}}], route: [{destination: {host: r}}]}]"))
    assert obj.spec.http[0].match[0].headers["x-debug"].is_empty
