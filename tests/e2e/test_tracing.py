"""Distributed tracing through the real ambient path: the client's ztunnel (HBONE) -> the waypoint's
Envoy (agent, CA, secure xDS) -> an ambient pod behind its ztunnel (HBONE), with the waypoint's spans
exported to test collectors on loopback (``tests/support/collectors.py``): Zipkin v2 JSON over HTTP,
OTLP over gRPC and OTLP over HTTP.

The mesh-wide Telemetry samples 0% of new traces, so every span a collector gets exists only because
the request carried a sampled trace context (``x-b3-*`` or ``traceparent``): the waypoint *joins* the
caller's trace -- same trace id, its span's parent is the caller's span -- and passes its own span id
on to the pod.  Envoy's tracers flush their spans in order, so a span for a request that carried no
context would have reached the collector with (or before) the later ones: the tests check there is none.
"""

from __future__ import annotations

import secrets
from pathlib import Path

import aiohttp
import pytest
import yaml

from istiod_lite.model.meshconfig import parse_mesh_config
from tests.e2e.test_waypoint_traffic import serving, write
from tests.support.backends import BackendGroup, BackendsFactory
from tests.support.collectors import OtlpGrpcCollector, OtlpHttpCollector, Span, ZipkinCollector
from tests.support.mesh import ambient_mesh, exclusive_ip
from tests.support.ports import alloc_vip
from tests.support.wait import wait_until

pytestmark = pytest.mark.e2e

HOST = "reviews.shop.svc.cluster.local"
OPERATION = f"{HOST}:9080/*"  # the route's decorator (Istio's default route operation)
SERVICE = "waypoint.shop"  # the waypoint's service cluster: <gateway>.<namespace>

TELEMETRY = """apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {{name: mesh-default, namespace: istio-system}}
spec:
  tracing:
  - providers: [{{name: {provider}}}]
    randomSamplingPercentage: {sampling}
    customTags:
      team: {{literal: {{value: payments}}}}
      user: {{header: {{name: x-user, defaultValue: anonymous}}}}
"""

# Every request to the ambient pod v2 (over HBONE from the waypoint).
TO_V2 = """apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: shop}
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {host: reviews, subset: v2}
"""

# The Zipkin collector is a ServiceEntry (the provider's cluster is its outbound EDS cluster); the
# OTLP collectors are not in the registry (STRICT_DNS clusters to the loopback address).
ZIPKIN_SE = """apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: zipkin, namespace: observability}}
spec:
  hosts: [zipkin.observability.example]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports: [{{number: {port}, name: http, protocol: HTTP}}]
  endpoints: [{{address: 127.0.0.1}}]
"""


def mesh_yaml(zipkin: int, grpc_port: int, http_port: int) -> str:
    return f"""extensionProviders:
- name: zipkin
  zipkin: {{service: zipkin.observability.example, port: {zipkin}}}
- name: otel-grpc
  opentelemetry:
    service: 127.0.0.1
    port: {grpc_port}
    grpc: {{initialMetadata: [{{name: x-tenant, value: shop}}]}}
- name: otel-http
  opentelemetry:
    service: 127.0.0.1
    port: {http_port}
    http: {{path: /v1/traces, timeout: 5s, headers: [{{name: x-tenant, value: shop}}]}}
"""


async def _mesh_setup(tmp_path: Path, backends_factory: BackendsFactory) -> tuple[Path, str, str, BackendGroup, str]:
    """Config dir with the shop waypoint and ``reviews`` (all traffic to the ambient pod v2)."""
    plain_ip, ambient_ip = exclusive_ip(), exclusive_ip()
    pods = await backends_factory(2, names=["reviews-v1", "reviews-v2"], hosts=[plain_ip, ambient_ip])
    wp, vip = exclusive_ip(), alloc_vip()
    cfg = tmp_path / "cfg"
    cfg.mkdir()
    write(cfg, wp=wp, vip=vip, port=pods.port, ip1=plain_ip, ip2=ambient_ip, ambient2=True)
    (cfg / "vs.yaml").write_text(TO_V2)
    return cfg, wp, vip, pods, ambient_ip


def _hex(nbytes: int) -> str:
    return secrets.token_hex(nbytes)


async def _get(addr: str, headers: dict[str, str]) -> int:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10),
                                     connector=aiohttp.TCPConnector(force_close=True)) as http, \
            http.get(f"http://{addr}/traced", headers=headers) as r:
        await r.read()
        return r.status


def _check_span(span: Span, trace_id: str, parent: str) -> None:
    assert span.trace_id == trace_id
    assert span.parent_id == parent, span  # a child of the caller's span: the trace is joined
    assert span.span_id not in (parent, "", None)
    assert span.service == SERVICE, span
    assert span.name == OPERATION, span
    assert span.kind == "SERVER", span


async def test_zipkin_joins_b3_trace(tmp_path: Path, backends_factory: BackendsFactory) -> None:
    cfg, wp, vip, pods, ambient_ip = await _mesh_setup(tmp_path, backends_factory)
    async with ZipkinCollector() as zipkin:
        (cfg / "zipkin-se.yaml").write_text(ZIPKIN_SE.format(port=zipkin.port))
        (cfg / "telemetry.yaml").write_text(TELEMETRY.format(provider="zipkin", sampling=0))
        mesh_config = parse_mesh_config(yaml.safe_load(mesh_yaml(zipkin.port, 1, 1)))
        async with ambient_mesh(tmp_path, cfg, mesh=mesh_config) as mesh, mesh.waypoint("shop", "waypoint", wp), \
                mesh.pod_ztunnels([ambient_ip], "shop", "reviews"), mesh.client([(vip, 9080)], wp) as local:
            addr = local[(vip, 9080)]
            await wait_until(lambda: serving(addr), timeout=30, message="traffic through the waypoint")
            await _get(addr, {})  # no trace context, 0% sampling: no span
            sent: dict[str, str] = {}
            jason = ""
            for i in range(5):  # Envoy's Zipkin tracer flushes every 5 spans
                trace_id, span_id = _hex(16), _hex(8)
                sent[trace_id] = span_id
                headers = {"x-b3-traceid": trace_id, "x-b3-spanid": span_id, "x-b3-sampled": "1"}
                if i == 0:
                    headers["x-user"] = jason = trace_id
                assert await _get(addr, headers) == 200
            spans = await zipkin.wait_for(lambda s: s.trace_id in sent, count=5)
            assert {s.trace_id for s in zipkin.spans} == set(sent), zipkin.spans  # nothing else sampled
            for span in spans:
                _check_span(span, span.trace_id, sent[span.trace_id])
                assert span.tags["team"] == "payments"
                assert span.tags["istio.canonical_service"] == "waypoint"
                assert span.tags["istio.namespace"] == "shop"
            # The header tag: the request's x-user, else its default value.
            assert {s.trace_id: s.tags["user"] for s in spans} == {
                t: (jason if t == jason else "anonymous") for t in sent}
            assert {r.path for r in zipkin.requests} == {"/api/v2/spans"}
            assert {r.content_type for r in zipkin.requests} == {"application/json"}
            assert {r.authority for r in zipkin.requests} == {"zipkin.observability.example"}
            # The pod (behind its ztunnel, reached over HBONE) got the waypoint's span as its parent.
            seen = {r.header("x-b3-traceid"): r for r in pods[1].requests if r.path == "/traced"}
            for span in spans:
                req = seen[span.trace_id]
                assert req.header("x-b3-spanid") == span.span_id
                assert req.header("x-b3-parentspanid") == sent[span.trace_id]
                assert req.header("x-b3-sampled") == "1"


async def test_opentelemetry_grpc_then_http_join_traceparent(tmp_path: Path, backends_factory: BackendsFactory) -> None:
    cfg, wp, vip, pods, ambient_ip = await _mesh_setup(tmp_path, backends_factory)
    async with OtlpGrpcCollector() as grpc_c, OtlpHttpCollector() as http_c:
        (cfg / "telemetry.yaml").write_text(TELEMETRY.format(provider="otel-grpc", sampling=100))
        mesh_config = parse_mesh_config(yaml.safe_load(mesh_yaml(1, grpc_c.port, http_c.port)))
        async with ambient_mesh(tmp_path, cfg, mesh=mesh_config) as mesh, mesh.waypoint("shop", "waypoint", wp), \
                mesh.pod_ztunnels([ambient_ip], "shop", "reviews"), mesh.client([(vip, 9080)], wp) as local:
            addr = local[(vip, 9080)]
            await wait_until(lambda: serving(addr), timeout=30, message="traffic through the waypoint")

            async def traced(collector: OtlpGrpcCollector | OtlpHttpCollector, n: int) -> dict[str, str]:
                """``n`` requests in callers' traces (traceparent, sampled) and one without a trace."""
                sent: dict[str, str] = {}
                for _ in range(n):
                    trace_id, parent = _hex(16), _hex(8)
                    sent[trace_id] = parent
                    assert await _get(addr, {"traceparent": f"00-{trace_id}-{parent}-01"}) == 200
                pods.reset()
                assert await _get(addr, {}) == 200
                fresh = trace_id_of(pods[1].requests[-1].header("traceparent"))
                assert fresh is not None and fresh not in sent
                spans = await collector.wait_for(lambda s: s.trace_id in sent or s.trace_id == fresh, count=n + 1)
                by_trace = {s.trace_id: s for s in spans}
                root = by_trace.pop(fresh)  # no context: the waypoint starts the trace, its span is a root
                assert root.parent_id is None and root.name == OPERATION and root.service == SERVICE, root
                assert set(by_trace) == set(sent)
                for span in by_trace.values():
                    _check_span(span, span.trace_id, sent[span.trace_id])
                    assert span.tags["team"] == "payments" and span.tags["user"] == "anonymous"
                return sent

            # The pod got the waypoint's span as its parent (traceparent rewritten, still sampled).
            pods.reset()
            trace_id, parent = _hex(16), _hex(8)
            assert await _get(addr, {"traceparent": f"00-{trace_id}-{parent}-01"}) == 200
            (span,) = await grpc_c.wait_for(lambda s: s.trace_id == trace_id)
            _check_span(span, trace_id, parent)
            assert pods[1].requests[-1].header("traceparent") == f"00-{trace_id}-{span.span_id}-01"

            await traced(grpc_c, 5)
            assert all(r.headers.get("x-tenant") == "shop" for r in grpc_c.requests)

            # Switch the mesh-wide Telemetry to the OTLP/HTTP provider: no restart, the next spans go there.
            (cfg / "telemetry.yaml").write_text(TELEMETRY.format(provider="otel-http", sampling=100))

            async def switched() -> bool:
                trace_id = _hex(16)
                await _get(addr, {"traceparent": f"00-{trace_id}-{_hex(8)}-01"})
                return bool(http_c.spans)

            await wait_until(switched, timeout=30, interval=0.5, message="spans at the OTLP/HTTP collector")
            sent_http = await traced(http_c, 5)
            assert set(sent_http) <= {s.trace_id for s in http_c.spans}
            assert {r.path for r in http_c.requests} == {"/v1/traces"}
            assert {r.content_type for r in http_c.requests} == {"application/x-protobuf"}
            assert {r.headers.get("x-tenant") for r in http_c.requests} == {"shop"}


def trace_id_of(traceparent: str | None) -> str | None:
    parts = (traceparent or "").split("-")
    return parts[1] if len(parts) == 4 else None
