"""SDS for the local Envoy: the workload certificate as Istio's secrets ``default`` and ``ROOTCA``, and
the files a DestinationRule names as ``file-root:<path>`` / ``file-cert:<cert>~<key>`` (``filesecrets``).

Served on a Unix domain socket in the agent's working directory (Istio:
``./var/run/secrets/workload-spiffe-uds/socket``), as ``envoy.service.secret.v3.SecretDiscoveryService``
with both ``StreamSecrets`` (SotW) and ``DeltaSecrets``.  The protocol is the project's xDS layer,
unchanged: a ``SnapshotCache`` with one group holds the two secrets, and the ``AdsServer`` stream
machinery (SotW and Delta state machines, nonces, ACK/NACK) serves them under the SDS service
name -- the request and response messages of SDS are the ADS ones.  A rotation is just a new
snapshot: every open stream is woken and sends the changed secrets, Envoy swaps them in without a
restart or a dropped connection.

The socket is the only access control (anyone who can connect gets the private key), so its
directory is created 0700 and the socket 0600, like Istio's agent-private volume (``uds.py``).

File secrets are loaded on demand: every request passing through to the ADS machinery is looked at
first, and file secret names it carries are read *before* the request is applied, so the answer to
it already holds them.  A poller re-reads changed files every ``file_poll_interval`` seconds and
publishes a new snapshot, which pushes only to the streams that named the changed secret.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2
from envoy.service.discovery.v3 import discovery_pb2

from istiod_lite.agent.bootstrap import DEFAULT_SECRET, ROOT_SECRET
from istiod_lite.agent.certs import IssuedCertificate
from istiod_lite.agent.filesecrets import DEFAULT_CREDENTIAL_DIRS, FileSecrets, is_file_secret
from istiod_lite.agent.uds import check_socket_path, start_on_socket
from istiod_lite.xds import wire
from istiod_lite.xds.cache import SnapshotCache
from istiod_lite.xds.resources import ResourceSnapshot
from istiod_lite.xds.server import AdsServer, XdsServerOptions
from istiod_lite.xds.typeurls import SECRET

log = logging.getLogger(__name__)

SDS_SERVICE = "envoy.service.secret.v3.SecretDiscoveryService"
#: Every Envoy on this socket is this agent's own: one group.
_GROUP = "local"
#: How often watched secret files are checked for changes (seconds).
FILE_POLL_INTERVAL = 2.0


def secrets(cert: IssuedCertificate) -> dict[str, secret_pb2.Secret]:
    """The two secrets for one certificate, inline (Envoy never reads key files)."""
    default = secret_pb2.Secret(
        name=DEFAULT_SECRET,
        tls_certificate=common_pb2.TlsCertificate(
            certificate_chain=base_pb2.DataSource(inline_bytes=cert.certificate_chain_pem),
            private_key=base_pb2.DataSource(inline_bytes=cert.key_pem),
        ),
    )
    root = secret_pb2.Secret(
        name=ROOT_SECRET,
        validation_context=common_pb2.CertificateValidationContext(
            trusted_ca=base_pb2.DataSource(inline_bytes=cert.root_pem)),
    )
    return {DEFAULT_SECRET: default, ROOT_SECRET: root}


def secrets_snapshot(cert: IssuedCertificate) -> ResourceSnapshot:
    return ResourceSnapshot.from_messages({SECRET: secrets(cert)})


class SdsServer:
    """The SDS gRPC server on ``socket_path``; ``update(cert)`` publishes a certificate.

    ``file_poll_interval``: seconds between checks of the watched secret files (default
    ``FILE_POLL_INTERVAL``; read again before every sleep, so a change applies from the next one)."""

    def __init__(self, socket_path: Path, *, file_poll_interval: float | None = None,
                 credential_dirs: Sequence[Path] = DEFAULT_CREDENTIAL_DIRS) -> None:
        check_socket_path(socket_path, "SDS socket")
        self.socket_path = socket_path
        self.cache = SnapshotCache(lambda node: _GROUP)
        # One local client: no admission; a stuck Envoy is still cut off after 30 s.
        self.ads = AdsServer(self.cache, XdsServerOptions(max_new_streams_per_second=0, max_syncing_streams=0,
                                                          max_loop_lag=0))
        self._server: grpc.aio.Server | None = None
        self._poller: asyncio.Task[None] | None = None
        self.current: IssuedCertificate | None = None
        self.files = FileSecrets(credential_dirs=tuple(credential_dirs))
        self.file_poll_interval = FILE_POLL_INTERVAL if file_poll_interval is None else file_poll_interval

    def register(self, server: grpc.aio.Server) -> None:
        """Add ``SecretDiscoveryService`` to ``server``, backed by the ADS stream handlers."""

        async def stream(requests: AsyncIterator[discovery_pb2.DiscoveryRequest],
                         context: grpc.aio.ServicerContext) -> None:
            await self.ads.StreamAggregatedResources(self._loading(requests, lambda r: r.resource_names), context)

        async def delta(requests: AsyncIterator[discovery_pb2.DeltaDiscoveryRequest],
                        context: grpc.aio.ServicerContext) -> None:
            await self.ads.DeltaAggregatedResources(
                self._loading(requests, lambda r: r.resource_names_subscribe), context)

        handlers = {
            "StreamSecrets": grpc.stream_stream_rpc_method_handler(
                stream,
                request_deserializer=discovery_pb2.DiscoveryRequest.FromString,
                response_serializer=wire.serialize,
            ),
            "DeltaSecrets": grpc.stream_stream_rpc_method_handler(
                delta,
                request_deserializer=discovery_pb2.DeltaDiscoveryRequest.FromString,
                response_serializer=wire.serialize,
            ),
        }
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SDS_SERVICE, handlers),))

    async def _loading(self, requests: AsyncIterator[Any], names_of: Callable[[Any], Iterable[str]]
                       ) -> AsyncIterator[Any]:
        """Pass ``requests`` on, after reading the file secrets each one names for the first time."""
        async for req in requests:
            names = [n for n in names_of(req) if is_file_secret(n)]
            if names and await self.files.request(names):
                self._publish()
            yield req

    def _publish(self) -> None:
        named = self.files.secrets()
        if self.current is not None:
            named.update(secrets(self.current))
        self.cache.set_snapshot(_GROUP, ResourceSnapshot.from_messages({SECRET: named}))

    def update(self, cert: IssuedCertificate) -> None:
        """Serve ``cert`` from now on; open streams push the new secrets right away."""
        self.current = cert
        self._publish()
        self.cache.mark_ready()  # streams are refused (UNAVAILABLE) until the first certificate

    @property
    def has_certificate(self) -> bool:
        return self.current is not None

    def subscribed(self) -> set[str]:
        """Every secret name an open stream asks for."""
        names: set[str] = set()
        for conn in self.ads.connections.values():
            sub = conn.subs.get(SECRET)
            if sub is not None:
                names |= sub.names
        return names

    async def poll_files(self) -> None:
        """One check of the watched files; publishes if a served secret changed."""
        if await self.files.poll(self.subscribed()):
            self._publish()

    async def _poll_forever(self) -> None:
        while True:
            await asyncio.sleep(self.file_poll_interval)
            try:
                await self.poll_files()
            except Exception:  # a bug must not stop the watching
                log.exception("checking the SDS secret files failed")

    async def start(self) -> None:
        server = grpc.aio.server()
        self.register(server)
        await start_on_socket(server, self.socket_path)
        self._server = server
        self._poller = asyncio.create_task(self._poll_forever(), name="sds-file-poller")
        log.info("SDS serving on unix:%s", self.socket_path)

    async def stop(self, grace: float = 1.0) -> None:
        poller, self._poller = self._poller, None
        if poller is not None:
            poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poller
        server, self._server = self._server, None
        if server is not None:
            await server.stop(grace)
        self.socket_path.unlink(missing_ok=True)

    def status(self) -> list[dict[str, object]]:
        return self.ads.status()
