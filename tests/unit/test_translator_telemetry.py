"""Access-log translation (``translator/telemetry/apply.py``): Istio's attachment levels and merge, the
Envoy loggers each provider becomes, the inbound chain parameters, and the bootstrap's stat tags."""

from __future__ import annotations

import json
import re
import textwrap
from typing import Any

import yaml
from envoy.extensions.access_loggers.file.v3 import file_pb2
from envoy.extensions.access_loggers.filters.cel.v3 import cel_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2

from istiod_lite.agent.bootstrap import WAYPOINT_STATS_TAGS, waypoint_stats_config
from istiod_lite.model import ConfigSnapshot, parse_object
from istiod_lite.model.meshconfig import MeshConfig, parse_mesh_config
from istiod_lite.translator import telemetry, translate_waypoint
from istiod_lite.translator.binding.service_model import ServiceInfo, of_service
from istiod_lite.translator.binding.waypoints import WaypointRef
from istiod_lite.translator.listeners import inbound
from tests.support.meshyaml import APP_WAYPOINT

REF = WaypointRef("app", "waypoint")
BASE = APP_WAYPOINT + """\
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: app}
spec: {clusterIP: 127.10.0.1, selector: {app: echo}, ports: [{name: http, port: 80}, {name: tcp, port: 90}]}
---
apiVersion: v1
kind: Service
metadata: {name: other, namespace: app}
spec: {clusterIP: 127.10.0.2, selector: {app: other}, ports: [{name: http, port: 80}]}
"""


def telemetry_doc(name: str, namespace: str, spec: str, created: str = "") -> str:
    meta = f"{{name: {name}, namespace: {namespace}" + (f", creationTimestamp: '{created}'" if created else "") + "}"
    return f"apiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {meta}\nspec: {spec}\n"


def snapshot(*extra: str) -> ConfigSnapshot:
    text = BASE + "".join("---\n" + e for e in extra)
    return ConfigSnapshot.build([parse_object(d) for d in yaml.safe_load_all(text)])


def service(snap: ConfigSnapshot, name: str = "echo") -> ServiceInfo:
    from istiod_lite.model.core import Service
    svc = snap.get(Service, "app", name)
    assert svc is not None
    return of_service(svc)


def mesh(text: str = "") -> MeshConfig:
    return parse_mesh_config(yaml.safe_load(textwrap.dedent(text)) if text else None)


def settings(snap: ConfigSnapshot, m: MeshConfig, name: str = "echo") -> list[tuple[str, str | None]]:
    ts = telemetry.applicable_telemetries(snap, m, REF, service(snap, name))
    return [(s.name, s.filter_expression) for s in telemetry.effective_providers(ts, m)]


def test_default_text_format_is_istios() -> None:
    fmt = telemetry.ISTIO_TEXT_FORMAT
    assert fmt.startswith('[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%"')
    assert fmt.endswith("%REQUESTED_SERVER_NAME% %ROUTE_NAME%\n")
    assert len(telemetry.ISTIO_JSON_FORMAT) == 24


def test_nothing_configured_means_no_logs() -> None:
    snap = snapshot()
    assert telemetry.access_logs_for(snap, None, REF, service(snap)) == []
    assert telemetry.access_logs_for(snap, mesh(), REF, service(snap)) == []
    out = translate_waypoint(snap, REF)
    assert telemetry.apply_access_logs(out, snap, mesh("accessLogEncoding: JSON"), REF) is out


def test_levels_and_most_specific_wins() -> None:
    m = mesh("""
        accessLogFile: /dev/stdout
        extensionProviders:
        - {name: a, envoyFileAccessLog: {path: /a}}
        - {name: b, envoyFileAccessLog: {path: /b}}
        """)
    root = telemetry_doc("root", "istio-system", "{accessLogging: [{providers: [{name: a}]}]}")
    ns = telemetry_doc("ns", "app", "{accessLogging: [{filter: {expression: 'response.code >= 400'}}]}")
    gw = telemetry_doc("gw", "app", "{targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, "
                                    "name: waypoint}], accessLogging: [{providers: [{name: b}]}]}")
    svc = telemetry_doc("svc", "app", "{targetRefs: [{kind: Service, name: echo}], accessLogging: [{disabled: true}]}")
    assert settings(snapshot(), m) == [("envoy", None)]  # accessLogFile alone: the built-in provider
    assert settings(snapshot(root), m) == [("a", None)]
    # The namespace entry names no provider: it inherits "a" and sets its filter.
    assert settings(snapshot(root, ns), m) == [("a", "response.code >= 400")]
    # Naming "b" replaces "a" (providers are overridden, not added).
    assert settings(snapshot(root, ns, gw), m) == [("b", None)]
    # The Service-level Telemetry disables the inherited provider for echo only.
    assert settings(snapshot(root, ns, gw, svc), m) == []
    assert settings(snapshot(root, ns, gw, svc), m, "other") == [("b", None)]


def test_scoping_rules() -> None:
    m = mesh("accessLogFile: /dev/stdout")
    off = "{accessLogging: [{disabled: true}]}"
    # Another namespace, another Gateway, another Service, a selector: none applies.
    unrelated = [
        telemetry_doc("x", "elsewhere", off),
        telemetry_doc("y", "app", "{targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: other}], "
                                  "accessLogging: [{disabled: true}]}"),
        telemetry_doc("z", "app", "{targetRefs: [{kind: Service, name: other}], accessLogging: [{disabled: true}]}"),
        telemetry_doc("w", "app", "{selector: {matchLabels: {app: echo}}, accessLogging: [{disabled: true}]}"),
        telemetry_doc("c", "app", "{targetRefs: [{kind: Service, name: echo}], "
                                  "accessLogging: [{match: {mode: CLIENT}, disabled: true}]}"),
    ]
    assert settings(snapshot(*unrelated), m) == [("envoy", None)]
    # Two at one level: the oldest is used.
    older = telemetry_doc("b-old", "app", "{accessLogging: [{filter: {expression: 'old'}}]}", "2024-01-01T00:00:00Z")
    newer = telemetry_doc("a-new", "app", "{accessLogging: [{filter: {expression: 'new'}}]}", "2025-01-01T00:00:00Z")
    assert settings(snapshot(newer, older), m) == [("envoy", "old")]
    # The root namespace comes from the mesh config.
    rooted = mesh("{accessLogFile: /dev/stdout, rootNamespace: meshroot}")
    assert settings(snapshot(telemetry_doc("r", "meshroot", off)), rooted) == []
    assert settings(snapshot(telemetry_doc("r", "istio-system", off)), rooted) == [("envoy", None)]


def _file(al: Any) -> file_pb2.FileAccessLog:
    fl = file_pb2.FileAccessLog()
    assert al.typed_config.Unpack(fl)
    return fl


def test_loggers() -> None:
    m = mesh("""
        accessLogFile: /var/log/access.log
        accessLogEncoding: JSON
        accessLogFormat: '{"code": "%RESPONSE_CODE%"}'
        extensionProviders:
        - {name: text, envoyFileAccessLog: {logFormat: {text: "%RESPONSE_CODE%"}}}
        - {name: json, envoyFileAccessLog: {path: /j, logFormat: {labels: {}}}}
        - {name: zipkin, zipkin: {service: z, port: 9411}}
        """)
    builtin = telemetry.access_log(telemetry.ProviderSetting("envoy", "response.code >= 500"), m)
    assert builtin is not None and builtin.name == telemetry.FILE_LOGGER
    fl = _file(builtin)
    assert fl.path == "/var/log/access.log"
    assert dict(fl.log_format.json_format) == {"code": "%RESPONSE_CODE%"}
    assert builtin.filter.extension_filter.name == telemetry.CEL_FILTER
    cel = cel_pb2.ExpressionFilter()
    assert builtin.filter.extension_filter.typed_config.Unpack(cel) and cel.expression == "response.code >= 500"

    text = telemetry.access_log(telemetry.ProviderSetting("text"), m)
    assert text is not None and not text.HasField("filter")
    assert _file(text).path == "/dev/stdout"
    assert _file(text).log_format.text_format_source.inline_string == "%RESPONSE_CODE%\n"  # newline added
    js = telemetry.access_log(telemetry.ProviderSetting("json"), m)
    assert js is not None and dict(_file(js).log_format.json_format) == telemetry.ISTIO_JSON_FORMAT  # empty labels
    assert telemetry.access_log(telemetry.ProviderSetting("zipkin"), m) is None  # not an access-log provider
    assert telemetry.access_log(telemetry.ProviderSetting("missing"), m) is None

    text_mesh = mesh("accessLogFile: /dev/stdout")
    default = telemetry.access_log(telemetry.ProviderSetting("envoy"), text_mesh)
    assert default is not None
    assert _file(default).log_format.text_format_source.inline_string == telemetry.ISTIO_TEXT_FORMAT


def test_inbound_parameters_default_to_todays_output() -> None:
    plain = inbound.http_chain("c", 80, False)
    assert inbound.http_chain("c", 80, False, access_logs=()).SerializeToString(deterministic=True) \
        == plain.SerializeToString(deterministic=True)
    logs = [telemetry.access_log(telemetry.ProviderSetting("envoy"), mesh("accessLogFile: /dev/stdout"))]
    with_logs = inbound.http_chain("c", 80, False, access_logs=logs)
    hcm = hcm_pb2.HttpConnectionManager()
    with_logs.filters[-1].typed_config.Unpack(hcm)
    assert list(hcm.access_log) == logs
    # The post-pass gives the same chain as the parameter.
    assert telemetry.with_access_logs(plain, logs) == with_logs
    assert telemetry.with_access_logs(plain, []) is plain

    tcp = inbound.tcp_chain("t", "t", access_logs=logs)
    proxy = tcp_proxy_pb2.TcpProxy()
    tcp.filters[-1].typed_config.Unpack(proxy)
    assert list(proxy.access_log) == logs
    assert telemetry.with_access_logs(inbound.tcp_chain("t", "t"), logs) == tcp
    assert inbound.tcp_chain("t", "t", access_logs=()) == inbound.tcp_chain("t", "t")


def test_apply_access_logs_to_service_chains() -> None:
    snap = snapshot(telemetry_doc("svc", "app", "{targetRefs: [{kind: Service, name: other}], "
                                                "accessLogging: [{disabled: true}]}"))
    out = translate_waypoint(snap, REF)
    logged = telemetry.apply_access_logs(out, snap, mesh("accessLogFile: /dev/stdout"), REF)
    assert logged is not out and out.listeners["main_internal"] != logged.listeners["main_internal"]
    chains = {c.name: c for c in logged.listeners["main_internal"].filter_chains}
    counts = {}
    for name, chain in chains.items():
        msg = hcm_pb2.HttpConnectionManager() if chain.filters[-1].name.endswith("manager") \
            else tcp_proxy_pb2.TcpProxy()
        chain.filters[-1].typed_config.Unpack(msg)
        counts[name] = len(msg.access_log)
    assert counts == {
        "inbound-vip|80|http|echo.app.svc.cluster.local": 1,
        "inbound-vip|90|tcp|echo.app.svc.cluster.local": 1,
        "inbound-vip|80|http|other.app.svc.cluster.local": 0,  # disabled by its Telemetry
        "direct-http": 0,
        "direct-tcp": 0,
    }
    # Everything else is shared, untouched.
    assert logged.clusters is not out.clusters and logged.clusters == out.clusters


def _envoy_tags(name: str) -> tuple[str, dict[str, str]]:
    """Envoy's tag extraction (``TagExtractorStdRegexImpl``): every regex is matched against the
    whole name; the first group is cut out, the second (inner) group is the tag's value."""
    tags: dict[str, str] = {}
    cut: list[tuple[int, int]] = []
    for tag, regex in WAYPOINT_STATS_TAGS:
        m = re.search(regex, name)
        if m is None or any(a < m.end(1) and m.start(1) < b for a, b in cut):
            continue
        tags.setdefault(tag, m.group(2))
        cut.append((m.start(1), m.end(1)))
    rest = "".join(ch for i, ch in enumerate(name) if not any(a <= i < b for a, b in cut))
    return rest, tags


def test_stat_tags() -> None:
    cfg = waypoint_stats_config()
    assert cfg["use_all_default_tags"] is False
    json.dumps(cfg)
    host = "reviews.shop.svc.cluster.local"
    assert _envoy_tags(f"cluster.inbound-vip|9080|http|{host}.upstream_rq_200") == (
        "cluster.inbound-vip|http|upstream_rq",
        {"destination_port": "9080", "destination_service": host, "response_code": "200"})
    assert _envoy_tags(f"cluster.inbound-vip|9080|http/v1|{host}.upstream_rq_2xx") == (
        "cluster.inbound-vip|http|upstream_rq",
        {"destination_port": "9080", "subset": "v1", "destination_service": host, "response_code_class": "2xx"})
    assert _envoy_tags(f"cluster.inbound-vip|9080|tcp|{host}.circuit_breakers.default.cx_open")[1][
        "destination_service"] == host
    assert _envoy_tags("cluster.inbound-vip|443|tcp|api.example.com.upstream_cx_total")[1] == {
        "destination_port": "443", "destination_service": "api.example.com"}
    assert _envoy_tags("cluster.outbound|80||api.example.com.upstream_rq_total") == (
        "cluster.upstream_rq_total", {"cluster_name": "outbound|80||api.example.com"})
    assert _envoy_tags("http.inbound_0.0.0.0_9080;.downstream_rq_5xx") == (
        "http.inbound_0.0.0.0;.downstream_rq", {"destination_port": "9080", "response_code_class": "5xx"})


def test_memo_reuses_the_listener_and_equals_a_fresh_application() -> None:
    m = mesh("accessLogFile: /dev/stdout")
    snap = snapshot()
    out = translate_waypoint(snap, REF)
    memo = telemetry.TelemetryMemo(REF)
    first = memo.apply(out, snap, m)
    assert first.listeners == telemetry.apply_access_logs(out, snap, m, REF).listeners
    assert memo.apply(out, snap, m) is first
    # Same listener, new resources object (e.g. endpoints changed): the logged listener is re-used.
    again = translate_waypoint(snap, REF)
    again.listeners["main_internal"] = out.listeners["main_internal"]
    second = memo.apply(again, snap, m)
    assert second.listeners["main_internal"] is first.listeners["main_internal"]
    # A Telemetry change is noticed.
    off = snapshot(telemetry_doc("quiet", "app", "{accessLogging: [{disabled: true}]}"))
    assert memo.apply(out, off, m).listeners == out.listeners
