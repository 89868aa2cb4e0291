"""A small in-process "istiod" for the agent tests: the real CA and an ADS server on one TLS port.

Like istiod's 15012, ``CreateCertificate`` and ADS share one gRPC server whose certificate
(``istiod.istio-system.svc``, ``localhost``) is issued by the CA itself; a plaintext ADS port
(15010's role) is added too.  Every ADS stream passes ``streams`` (the ``AdsServer`` stream
check), which records the caller's node, call metadata and transport, and runs ``streams.check``
when a test installs one (e.g. the control plane's real ``XdsAuthenticator``).  Kept in a
``test_agent_*`` module so unit and e2e tests share it; the test at the bottom checks the harness.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from envoy.config.core.v3 import base_pb2

from istiod_lite.agent.certs import key_pem
from istiod_lite.ca.authn import Authenticators
from istiod_lite.ca.config import CaConfig, build_authenticators
from istiod_lite.ca.keystore import ROOT_CERT
from istiod_lite.ca.runtime import CaRuntime
from istiod_lite.ca.tokens import create_token
from istiod_lite.xds import typeurls
from istiod_lite.xds.cache import SnapshotCache
from istiod_lite.xds.connection import Connection
from istiod_lite.xds.resources import ResourceSnapshot
from istiod_lite.xds.server import AdsServer, StreamCheck

NAMESPACE = "ns1"
WAYPOINT = "waypoint"
WAYPOINT_SPIFFE = f"spiffe://cluster.local/ns/{NAMESPACE}/sa/{WAYPOINT}"
EMPTY_CONFIG = ResourceSnapshot.from_messages({typeurls.CLUSTER: {}, typeurls.LISTENER: {}})


@dataclass(frozen=True)
class SeenStream:
    """One ADS stream as the server saw it, when its first request arrived."""

    node: base_pb2.Node
    #: The call metadata exactly as received (repeated keys stay repeated).
    metadata: tuple[tuple[str, str | bytes], ...]
    tls: bool

    def values(self, key: str) -> list[str | bytes]:
        return [v for k, v in self.metadata if k == key]


@dataclass
class StreamRecorder:
    """The harness's ``AdsServer`` stream check: records every stream, then runs ``check``."""

    seen: list[SeenStream] = field(default_factory=list)
    check: StreamCheck | None = None

    async def __call__(self, conn: Connection, context: grpc.aio.ServicerContext) -> None:
        tls = context.auth_context().get("transport_security_type") == [b"ssl"]
        self.seen.append(SeenStream(conn.node, tuple(context.invocation_metadata() or ()), tls))
        if self.check is not None:
            await self.check(conn, context)


@dataclass
class Istiod:
    ca: CaRuntime
    ca_dir: Path
    server: grpc.aio.Server
    cache: SnapshotCache
    ads: AdsServer
    tls_port: int
    plain_port: int
    streams: StreamRecorder

    @property
    def tls_address(self) -> str:
        return f"127.0.0.1:{self.tls_port}"

    @property
    def plain_address(self) -> str:
        return f"127.0.0.1:{self.plain_port}"

    @property
    def root_path(self) -> Path:
        return self.ca_dir / ROOT_CERT

    def token_file(self, path: Path, namespace: str = NAMESPACE, sa: str = WAYPOINT) -> Path:
        path.write_text(create_token(self.ca_dir, namespace, sa) + "\n")
        return path

    def client_cert(self, directory: Path, spiffe: str = "spiffe://cluster.local/ns/client/sa/client"
                    ) -> tuple[Path, Path]:
        """A (cert, key) pair issued by the CA for ``spiffe``, for TLS clients in tests."""
        key = ec.generate_private_key(ec.SECP256R1())
        leaf = self.ca.authority.issue(key.public_key(), x509.UniformResourceIdentifier(spiffe),
                                       dt.timedelta(hours=1))
        cert_path, key_path = directory / "client.pem", directory / "client-key.pem"
        cert_path.write_text(leaf)
        key_path.write_bytes(key_pem(key))
        return cert_path, key_path

    def authenticators(self) -> Authenticators:
        """The CA's caller authentication (client certificate, then bearer JWT), for xDS checks."""
        return build_authenticators(self.ca.config, self.ca.material)

    def serve(self, snapshot: ResourceSnapshot) -> None:
        self.cache.set_snapshot("waypoints", snapshot)
        self.cache.mark_ready()

    async def close(self) -> None:
        await self.server.stop(None)
        await self.ca.close()


async def start_istiod(tmp_path: Path) -> Istiod:
    ca_dir = tmp_path / "ca"
    ca = CaRuntime.create(CaConfig(ca_dir=ca_dir))
    await ca.start()
    # istiod-lite's (and Istio's) ping policy, so the agent's 30 s keepalive is welcome here too.
    server = grpc.aio.server(options=[("grpc.keepalive_permit_without_calls", 1),
                                      ("grpc.http2.min_ping_interval_without_data_ms", 15_000)])
    ca.add_to_server(server)
    cache = SnapshotCache(lambda node: "waypoints")
    streams = StreamRecorder()
    ads = AdsServer(cache, stream_check=streams)
    ads.register(server)
    tls_port = server.add_secure_port("127.0.0.1:0", ca.server_credentials())
    plain_port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return Istiod(ca, ca_dir, server, cache, ads, tls_port, plain_port, streams)


@contextlib.asynccontextmanager
async def running_istiod(tmp_path: Path) -> AsyncIterator[Istiod]:
    """``async with running_istiod(tmp_path) as istiod``: each test module's ``istiod`` fixture."""
    harness = await start_istiod(tmp_path)
    try:
        yield harness
    finally:
        await harness.close()


@pytest.fixture
async def istiod(tmp_path: Path) -> AsyncIterator[Istiod]:
    async with running_istiod(tmp_path) as harness:
        yield harness


async def test_harness_issues_tokens_and_client_certs(istiod: Istiod, tmp_path: Path) -> None:
    token = istiod.token_file(tmp_path / "token").read_text().strip()
    assert token.count(".") == 2
    cert, key = istiod.client_cert(tmp_path)
    leaf = x509.load_pem_x509_certificate(cert.read_bytes())
    assert leaf.issuer == istiod.ca.material.signing_cert.subject
    assert key.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
