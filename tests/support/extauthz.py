"""Real external authorization servers for tests, as Envoy's ext_authz filter calls them.

* ``HttpExtAuthz``: the HTTP protocol - Envoy sends the request's method, ``pathPrefix`` + path and
  the configured headers; a 200 answer allows (its allowed headers go upstream), anything else
  denies (the status and allowed headers go to the client).
* ``GrpcExtAuthz``: ``envoy.service.auth.v3.Authorization/Check`` on ``grpc.aio`` with the real
  generated service from xds-protos; status OK allows, PERMISSION_DENIED denies.

Both decide the same way: allow when the request carries ``x-ext-authz: allow``; the allowed
answer carries ``x-ext-authz-user: <the request's x-user header or "anonymous">``, the denial
``x-ext-authz-check-result: denied``.  Every check is recorded (``checks``) before it is answered.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import grpc
from aiohttp import web
from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from envoy.type.v3 import http_status_pb2
from google.rpc import code_pb2, status_pb2

from tests.support.jwtissuer import serve_http
from tests.support.ports import alloc_pod_ip, check_loopback

DECISION_HEADER = "x-ext-authz"
USER_HEADER = "x-ext-authz-user"
RESULT_HEADER = "x-ext-authz-check-result"


@dataclass(frozen=True)
class Check:
    """One authorization check as the server received it."""

    method: str
    path: str
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def allowed(self) -> bool:
        return self.headers.get(DECISION_HEADER) == "allow"


class HttpExtAuthz:
    def __init__(self, host: str | None = None) -> None:
        self.host = check_loopback(host or alloc_pod_ip())
        self.port = 0
        self.checks: list[Check] = []
        self._runner: web.ServerRunner | None = None

    async def start(self) -> HttpExtAuthz:
        async def handle(req: web.BaseRequest) -> web.Response:
            check = Check(req.method, req.raw_path, {k.lower(): v for k, v in req.headers.items()})
            self.checks.append(check)
            if check.allowed:
                return web.Response(status=200, headers={USER_HEADER: check.headers.get("x-user", "anonymous")})
            return web.Response(status=403, text="denied by ext_authz", headers={RESULT_HEADER: "denied"})

        self._runner, self.port = await serve_http(handle, self.host)
        return self

    async def aclose(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> HttpExtAuthz:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class _Servicer(external_auth_pb2_grpc.AuthorizationServicer):
    def __init__(self, checks: list[Check]) -> None:
        self.checks = checks

    async def Check(self, request: external_auth_pb2.CheckRequest,
                    context: grpc.aio.ServicerContext) -> external_auth_pb2.CheckResponse:
        http = request.attributes.request.http
        headers = {k.lower(): v for k, v in http.headers.items()}
        for h in http.header_map.headers:
            headers[h.key.lower()] = h.value or h.raw_value.decode()
        check = Check(http.method, http.path, headers)
        self.checks.append(check)
        resp = external_auth_pb2.CheckResponse()
        if check.allowed:
            resp.status.CopyFrom(status_pb2.Status(code=code_pb2.OK))
            resp.ok_response.headers.add(header=base_pb2.HeaderValue(key=USER_HEADER,
                                                                     value=headers.get("x-user", "anonymous")))
        else:
            resp.status.CopyFrom(status_pb2.Status(code=code_pb2.PERMISSION_DENIED))
            resp.denied_response.status.code = http_status_pb2.Forbidden
            resp.denied_response.headers.add(header=base_pb2.HeaderValue(key=RESULT_HEADER, value="denied"))
            resp.denied_response.body = "denied by ext_authz (gRPC)"
        return resp


class GrpcExtAuthz:
    def __init__(self, host: str | None = None) -> None:
        self.host = check_loopback(host or alloc_pod_ip())
        self.port = 0
        self.checks: list[Check] = []
        self._server: grpc.aio.Server | None = None

    async def start(self) -> GrpcExtAuthz:
        server = grpc.aio.server()
        external_auth_pb2_grpc.add_AuthorizationServicer_to_server(_Servicer(self.checks), server)
        self.port = server.add_insecure_port(f"{self.host}:0")
        await server.start()
        self._server = server
        return self

    async def aclose(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            await server.stop(grace=0)

    async def __aenter__(self) -> GrpcExtAuthz:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
