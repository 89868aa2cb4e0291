"""A tiny real gRPC service without generated code: ``/echo.Echo/Call`` returns the server's name.

Used as the backend "pod" for proxyless gRPC tests, and (run as ``python -m tests.support.grpc_echo
client ...``) as the proxyless client process, because gRPC reads ``GRPC_XDS_BOOTSTRAP`` once per
process.
"""

from __future__ import annotations

import asyncio
import sys

import grpc

METHOD = "/echo.Echo/Call"


def _identity(b: bytes) -> bytes:
    return b


class EchoServer:
    def __init__(self, name: str, host: str) -> None:
        self.name = name
        self.host = host
        self.port = 0
        self.calls = 0
        self._server: grpc.aio.Server | None = None

    async def start(self, port: int = 0) -> None:
        async def call(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            self.calls += 1
            return self.name.encode()

        handler = grpc.method_handlers_generic_handler(
            "echo.Echo", {"Call": grpc.unary_unary_rpc_method_handler(call, _identity, _identity)}
        )
        self._server = grpc.aio.server()
        self._server.add_generic_rpc_handlers((handler,))
        self.port = self._server.add_insecure_port(f"{self.host}:{port}")
        await self._server.start()

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(0)


def client_main(target: str, count: int, interval: float) -> None:
    """Call ``target`` (e.g. ``xds:///svc.ns.svc.cluster.local:8080``) ``count`` times; print who answered."""
    with grpc.insecure_channel(target) as ch:
        stub = ch.unary_unary(METHOD, request_serializer=_identity, response_deserializer=_identity)
        for _ in range(count):
            try:
                print(stub(b"hi", timeout=10).decode(), flush=True)
            except grpc.RpcError as exc:
                print(f"ERROR {exc.code().name}", flush=True)
            if interval:
                import time

                time.sleep(interval)


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "client":
        client_main(sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 1,
                    float(sys.argv[4]) if len(sys.argv) > 4 else 0.0)
    else:
        async def _serve() -> None:
            s = EchoServer(sys.argv[1], sys.argv[2])
            await s.start(int(sys.argv[3]))
            await asyncio.Event().wait()

        asyncio.run(_serve())
