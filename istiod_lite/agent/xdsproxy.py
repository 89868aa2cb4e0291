"""The agent's xDS proxy: Envoy's ADS streams, forwarded to istiod with the waypoint's token.

Why it exists: istiod's secure port (15012) is TLS with server authentication only -- gRPC Python
cannot ask for an *optional* client certificate -- so every caller authenticates with
``authorization: Bearer <JWT>``, as at the CA.  Envoy's gRPC client could only send a token fixed
in its bootstrap, but the token file is rewritten by Kubernetes before it expires.  So, as in
Istio (``pkg/istio-agent/xds_proxy.go``), Envoy's ``xds-grpc`` cluster is a Unix socket served by
the agent (Istio: ``./etc/istio/proxy/XDS``), and each ADS stream Envoy opens there becomes one
stream to ``--xds-address``, over TLS trusting only ``--root-cert``, whose metadata carries the
token *read from the file when that upstream stream opens* (and ``clusterid``, as Istio's proxy).

The proxy does not decode xDS: messages are passed on as bytes in both directions (no
deserialisation cost, and nothing the control plane adds can be lost in translation).  What it
does carry across is the stream's life:

* Envoy half-closes -> the upstream stream is half-closed;
* Envoy goes away (cancel, reset) -> the upstream stream is cancelled;
* istiod ends the stream -> Envoy's stream ends with the *same* status code and details, so
  ``PERMISSION_DENIED``, ``UNAUTHENTICATED``, ``RESOURCE_EXHAUSTED`` ... reach Envoy's log and its
  retry logic, and an istiod that cannot be reached shows up as ``UNAVAILABLE``: Envoy retries
  with its own backoff, which is all the reconnect logic this needs;
* a token file that cannot be read fails Envoy's stream with ``UNAVAILABLE`` (the file may come
  back; Envoy retries).

All upstream streams share one channel (one HTTP/2 connection, reconnected by gRPC), with
keepalive pings so a dead istiod is noticed without waiting for TCP.  Envoy normally has a single
ADS stream; the sharing matters for its reconnects, which then need no new TLS handshake.

Plaintext (``root_cert=None``, the agent's ``--plaintext-xds``): the same proxy with an insecure
channel and *no* token, since a bearer token must never cross a plaintext connection.  Envoy
always talks to the socket, so the bootstrap does not depend on how istiod is reached.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from istiod_lite.agent.bootstrap import DEFAULT_CLUSTER_ID
from istiod_lite.agent.certs import TokenError, read_token, tls_server_name
from istiod_lite.agent.uds import check_socket_path, start_on_socket
from istiod_lite.safetext import safe
from istiod_lite.xds.server import ADS_SERVICE

log = logging.getLogger(__name__)

#: The two ADS methods Envoy may call (SotW and Delta); both are bidirectional streams.
ADS_METHODS = ("StreamAggregatedResources", "DeltaAggregatedResources")
#: xDS responses (a full CDS or LDS) easily exceed gRPC's default 4 MiB receive limit; Envoy sets
#: none and neither does Istio's proxy (``MaxCallRecvMsgSize(math.MaxInt32)``).
_UNLIMITED = -1


@dataclass(frozen=True)
class XdsProxyConfig:
    #: The Unix socket Envoy's ``xds-grpc`` cluster points at.
    socket_path: Path
    #: istiod's xDS ``host:port``.
    upstream: str
    #: PEM roots trusted for istiod's certificate; ``None`` = plaintext upstream without token.
    root_cert: bytes | None
    #: Bearer token file, re-read for every upstream stream (required with ``root_cert``).
    token_file: Path | None = None
    #: Name verified on istiod's certificate (``None``: see ``certs.tls_server_name``).
    server_name: str | None = None
    cluster_id: str = DEFAULT_CLUSTER_ID
    #: Keepalive on the upstream connection (Istio's agent: 30 s, 10 s).
    keepalive_time: float = 30.0
    keepalive_timeout: float = 10.0

    def __post_init__(self) -> None:
        if self.root_cert is not None and self.token_file is None:
            raise ValueError("a TLS upstream needs a token file: istiod authenticates xDS by bearer token")


class XdsProxy:
    """Serve ADS on ``config.socket_path``, forwarding each stream to ``config.upstream``.

    ``await start()`` binds the socket and opens the upstream channel; ``await stop()`` ends every
    stream and closes both.
    """

    def __init__(self, config: XdsProxyConfig) -> None:
        check_socket_path(config.socket_path, "xDS proxy socket")
        self.config = config
        self.socket_path = config.socket_path
        self._server: grpc.aio.Server | None = None
        self._channel: grpc.aio.Channel | None = None
        #: Downstream streams accepted / open now (for logs, status and tests).
        self.streams = 0
        self.active = 0
        #: The last non-OK status an upstream stream ended with (code, details).
        self.last_error: tuple[grpc.StatusCode, str] | None = None

    # -- lifecycle -------------------------------------------------------------------------------
    def _channel_options(self) -> list[tuple[str, Any]]:
        options: list[tuple[str, Any]] = [
            ("grpc.keepalive_time_ms", int(self.config.keepalive_time * 1000)),
            ("grpc.keepalive_timeout_ms", int(self.config.keepalive_timeout * 1000)),
            # An ADS stream is silent for long stretches; by default gRPC stops pinging after two
            # pings without data (then at most one a minute), which would blunt dead-peer detection.
            # istiod and istiod-lite accept a ping every 15 s (their ping policy), as Go's client assumes.
            ("grpc.http2.max_pings_without_data", 0),
            ("grpc.max_receive_message_length", _UNLIMITED),
        ]
        if self.config.root_cert is not None:
            # istiod's certificate names istiod.istio-system.svc, not the IP it is reached on.
            options.append(("grpc.ssl_target_name_override",
                            tls_server_name(self.config.upstream, self.config.server_name)))
        return options

    def _open_channel(self) -> grpc.aio.Channel:
        if self.config.root_cert is None:
            return grpc.aio.insecure_channel(self.config.upstream, self._channel_options())
        credentials = grpc.ssl_channel_credentials(root_certificates=self.config.root_cert)
        return grpc.aio.secure_channel(self.config.upstream, credentials, self._channel_options())

    def register(self, server: grpc.aio.Server) -> None:
        """Add the two ADS methods to ``server``; no (de)serialisers, so handlers see raw bytes."""
        handlers = {name: grpc.stream_stream_rpc_method_handler(self._handler(name)) for name in ADS_METHODS}
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(ADS_SERVICE, handlers),))

    async def start(self) -> None:
        """Open the upstream channel and serve the socket.  Raises ``OSError``/``RuntimeError``
        when the socket cannot be bound."""
        self._channel = self._open_channel()
        server = grpc.aio.server(options=[("grpc.max_receive_message_length", _UNLIMITED)])
        self.register(server)
        try:
            await start_on_socket(server, self.socket_path)
        except BaseException:
            await self._channel.close()
            self._channel = None
            raise
        self._server = server
        mode = "TLS + bearer token" if self.config.root_cert is not None else "plaintext"
        log.info("xDS proxy serving on unix:%s -> %s (%s)", self.socket_path, self.config.upstream, mode)

    async def stop(self, grace: float = 1.0) -> None:
        """Stop accepting, end open streams after ``grace`` seconds, close the upstream channel."""
        server, self._server = self._server, None
        if server is not None:
            await server.stop(grace)
        channel, self._channel = self._channel, None
        if channel is not None:
            await channel.close()
        self.socket_path.unlink(missing_ok=True)

    # -- one stream ------------------------------------------------------------------------------
    def _handler(self, method: str) -> Any:
        path = f"/{ADS_SERVICE}/{method}"

        async def handle(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> None:
            await self._proxy(path, requests, context)

        handle.__qualname__ = f"XdsProxy.{method}"
        return handle

    async def _metadata(self) -> tuple[tuple[str, str], ...]:
        """Upstream call metadata; the token is read from its file now, for this stream."""
        metadata: tuple[tuple[str, str], ...] = (("clusterid", self.config.cluster_id),)
        if self.config.root_cert is None or self.config.token_file is None:
            return metadata  # plaintext: never send a bearer token in the clear
        token = await asyncio.to_thread(read_token, self.config.token_file)
        return (("authorization", f"Bearer {token}"), *metadata)

    async def _proxy(self, path: str, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> None:
        channel = self._channel
        if channel is None:  # stopping
            await context.abort(grpc.StatusCode.UNAVAILABLE, "xDS proxy is shutting down")
            return  # (abort raises)
        self.streams += 1
        self.active += 1
        try:
            try:
                metadata = await self._metadata()
            except TokenError as exc:
                log.warning("xDS stream from Envoy refused: %s", exc)
                self.last_error = (grpc.StatusCode.UNAVAILABLE, str(exc))
                await context.abort(grpc.StatusCode.UNAVAILABLE, f"xDS proxy: {exc}")
                return
            # No serialisers: requests and responses stay bytes.
            call = channel.stream_stream(path)(metadata=metadata)
            log.info("xDS stream from Envoy -> %s%s", self.config.upstream, path)
            pump = asyncio.create_task(self._pump_requests(requests, call), name="xds-proxy-requests")
            try:
                async for response in call:
                    await context.write(response)
            except grpc.aio.AioRpcError as exc:
                code, details = exc.code(), exc.details() or ""
                self.last_error = (code, details)
                log.warning("xDS stream to %s ended: %s: %s", self.config.upstream, code.name, safe(details, 1024))
                await context.abort(code, details)
            finally:
                pump.cancel()
                call.cancel()  # no-op once the call is done; otherwise Envoy went away
                with contextlib.suppress(asyncio.CancelledError):
                    await pump
            log.info("xDS stream to %s closed by the server", self.config.upstream)
        finally:
            self.active -= 1

    @staticmethod
    async def _pump_requests(requests: AsyncIterator[bytes], call: Any) -> None:
        """Envoy -> istiod, until Envoy half-closes (then half-close upstream too)."""
        try:
            async for request in requests:
                await call.write(request)
            await call.done_writing()
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
            pass  # the upstream call has ended; its status is reported by the response side
        except Exception:
            # Reading Envoy's side failed (the stream broke): end the upstream stream too, so the
            # response side does not wait forever for a stream nobody is feeding.
            log.debug("xDS proxy: reading Envoy's requests failed", exc_info=True)
            call.cancel()
