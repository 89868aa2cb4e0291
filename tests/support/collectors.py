"""Test trace collectors on loopback, speaking what Envoy's tracers send:

* ``ZipkinCollector``: HTTP ``POST <path>`` (default ``/api/v2/spans``) with a Zipkin v2 JSON array;
* ``OtlpGrpcCollector``: gRPC ``opentelemetry.proto.collector.trace.v1.TraceService/Export``;
* ``OtlpHttpCollector``: OTLP/HTTP ``POST /v1/traces`` with a protobuf ``ExportTraceServiceRequest``.

Each keeps every span received as a ``Span`` (ids as lowercase hex, as Zipkin writes them) plus the
request metadata (``requests``: path, host / authority, content type, custom headers), so a test can
check what the waypoint's Envoy exported::

    async with ZipkinCollector() as zipkin:
        ...
        spans = await zipkin.wait_for(lambda s: s.trace_id == trace_id)

The OTLP messages come from ``opentelemetry.proto`` as shipped by ``xds-protos`` (an older revision of
the same wire format; installing ``opentelemetry-proto`` beside it would overwrite its files), and the
gRPC service is registered with a generic handler, so no generated stubs and no extra package are needed.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

import grpc
from aiohttp import web
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

from tests.support.ports import check_loopback
from tests.support.wait import wait_until

_OTLP_KINDS = {trace_pb2.Span.SPAN_KIND_SERVER: "SERVER", trace_pb2.Span.SPAN_KIND_CLIENT: "CLIENT",
               trace_pb2.Span.SPAN_KIND_INTERNAL: "INTERNAL", trace_pb2.Span.SPAN_KIND_PRODUCER: "PRODUCER",
               trace_pb2.Span.SPAN_KIND_CONSUMER: "CONSUMER"}
EXPORT_METHOD = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"


@dataclass(frozen=True)
class Span:
    """One exported span, whatever the wire format."""

    trace_id: str
    span_id: str
    parent_id: str | None
    name: str
    service: str
    kind: str
    tags: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ExportRequest:
    """How one export reached the collector."""

    path: str
    authority: str
    content_type: str
    headers: dict[str, str]


class _Collector:
    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.requests: list[ExportRequest] = []
        self.port = 0

    async def wait_for(self, predicate: Callable[[Span], bool], count: int = 1, timeout: float = 30.0
                       ) -> list[Span]:
        """The spans matching ``predicate`` once there are at least ``count`` (Envoy's tracers
        flush every 5 s or every 5 spans)."""
        def matching() -> list[Span]:
            found = [s for s in self.spans if predicate(s)]
            return found if len(found) >= count else []

        return await wait_until(matching, timeout=timeout, interval=0.1,
                                message=lambda: f"{count} span(s) at {type(self).__name__}; got {self.spans!r}")


def _zipkin_span(d: dict[str, Any]) -> Span:
    return Span(trace_id=str(d["traceId"]), span_id=str(d["id"]), parent_id=d.get("parentId"),
                name=str(d.get("name", "")), service=str(d.get("localEndpoint", {}).get("serviceName", "")),
                kind=str(d.get("kind", "")), tags={str(k): str(v) for k, v in d.get("tags", {}).items()})


def _attr_value(v: Any) -> str:
    which = v.WhichOneof("value")
    return "" if which is None else str(getattr(v, which))


def _scope_spans(rs: trace_pb2.ResourceSpans) -> Any:
    """``scope_spans`` (field 2); ``xds-protos`` ships an older ``trace.proto`` that names the same
    field ``instrumentation_library_spans`` (same number, same inner layout: wire-compatible)."""
    for name in ("scope_spans", "instrumentation_library_spans"):
        if name in rs.DESCRIPTOR.fields_by_name:
            return getattr(rs, name)
    raise AssertionError("ResourceSpans without field 2")


def otlp_spans(req: trace_service_pb2.ExportTraceServiceRequest) -> list[Span]:
    """Flatten an OTLP export into ``Span``s (``service`` is the resource's ``service.name``)."""
    out = []
    for rs in req.resource_spans:
        service = next((_attr_value(a.value) for a in rs.resource.attributes if a.key == "service.name"), "")
        for ss in _scope_spans(rs):
            for s in ss.spans:
                out.append(Span(trace_id=s.trace_id.hex(), span_id=s.span_id.hex(),
                                parent_id=s.parent_span_id.hex() or None, name=s.name, service=service,
                                kind=_OTLP_KINDS.get(s.kind, str(s.kind)),
                                tags={a.key: _attr_value(a.value) for a in s.attributes}))
    return out


class _HttpCollector(_Collector):
    def __init__(self, path: str, host: str) -> None:
        super().__init__()
        self.path = path
        self.host = check_loopback(host)
        self._runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.requests.append(ExportRequest(request.path, request.host, request.content_type,
                                           {k.lower(): v for k, v in request.headers.items()}))
        self.spans.extend(self.parse(body))
        return self.reply()

    def parse(self, body: bytes) -> list[Span]:
        raise NotImplementedError

    def reply(self) -> web.Response:
        return web.Response(status=202)

    async def __aenter__(self) -> Self:
        app = web.Application()
        app.router.add_post(self.path, self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, 0)
        await site.start()
        server = site._server
        assert server is not None and server.sockets  # type: ignore[attr-defined]
        self.port = int(server.sockets[0].getsockname()[1])  # type: ignore[attr-defined]
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


class ZipkinCollector(_HttpCollector):
    """Zipkin's v2 HTTP API (JSON)."""

    def __init__(self, path: str = "/api/v2/spans", host: str = "127.0.0.1") -> None:
        super().__init__(path, host)

    def parse(self, body: bytes) -> list[Span]:
        return [_zipkin_span(d) for d in json.loads(body)]


class OtlpHttpCollector(_HttpCollector):
    """OTLP/HTTP with protobuf bodies."""

    def __init__(self, path: str = "/v1/traces", host: str = "127.0.0.1") -> None:
        super().__init__(path, host)

    def parse(self, body: bytes) -> list[Span]:
        return otlp_spans(trace_service_pb2.ExportTraceServiceRequest.FromString(body))

    def reply(self) -> web.Response:
        return web.Response(body=trace_service_pb2.ExportTraceServiceResponse().SerializeToString(),
                            content_type="application/x-protobuf")


class OtlpGrpcCollector(_Collector):
    """OTLP/gRPC ``TraceService``."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        super().__init__()
        self.host = check_loopback(host)
        self._server: grpc.aio.Server | None = None

    async def _export(self, req: trace_service_pb2.ExportTraceServiceRequest, context: grpc.aio.ServicerContext[
            Any, Any]) -> trace_service_pb2.ExportTraceServiceResponse:
        meta = {k: v if isinstance(v, str) else v.decode() for k, v in context.invocation_metadata() or ()}
        self.requests.append(ExportRequest(EXPORT_METHOD, meta.get(":authority", ""),
                                           meta.get("content-type", "application/grpc"), meta))
        self.spans.extend(otlp_spans(req))
        return trace_service_pb2.ExportTraceServiceResponse()

    async def __aenter__(self) -> Self:
        self._server = grpc.aio.server()
        handler = grpc.unary_unary_rpc_method_handler(
            self._export, request_deserializer=trace_service_pb2.ExportTraceServiceRequest.FromString,
            response_serializer=trace_service_pb2.ExportTraceServiceResponse.SerializeToString)
        self._server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            "opentelemetry.proto.collector.trace.v1.TraceService", {"Export": handler}),))
        self.port = self._server.add_insecure_port(f"{self.host}:0")
        await self._server.start()
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        if self._server is not None:
            await self._server.stop(grace=None)


__all__ = ["EXPORT_METHOD", "ExportRequest", "OtlpGrpcCollector", "OtlpHttpCollector", "Span", "ZipkinCollector",
           "otlp_spans"]
