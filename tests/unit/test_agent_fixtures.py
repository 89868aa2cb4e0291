"""A small in-process "istiod" for the agent tests: the real CA and an ADS server on one TLS port.

Like istiod's 15012, ``CreateCertificate`` and ADS share one gRPC server whose certificate
(``istiod.istio-system.svc``, ``localhost``) is issued by the CA itself; a plaintext ADS port
(15010's role) is added too.  Kept in a ``test_agent_*`` module so unit and e2e tests share it;
the test at the bottom checks the harness itself.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from istiod_lite.agent.certs import key_pem
from istiod_lite.ca.config import CaConfig
from istiod_lite.ca.keystore import ROOT_CERT
from istiod_lite.ca.runtime import CaRuntime
from istiod_lite.ca.tokens import create_token
from istiod_lite.xds import typeurls
from istiod_lite.xds.cache import SnapshotCache
from istiod_lite.xds.resources import ResourceSnapshot
from istiod_lite.xds.server import AdsServer

NAMESPACE = "ns1"
WAYPOINT = "waypoint"
WAYPOINT_SPIFFE = f"spiffe://cluster.local/ns/{NAMESPACE}/sa/{WAYPOINT}"
EMPTY_CONFIG = ResourceSnapshot.from_messages({typeurls.CLUSTER: {}, typeurls.LISTENER: {}})


@dataclass
class Istiod:
    ca: CaRuntime
    ca_dir: Path
    server: grpc.aio.Server
    cache: SnapshotCache
    ads: AdsServer
    tls_port: int
    plain_port: int

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
    server = grpc.aio.server()
    ca.add_to_server(server)
    cache = SnapshotCache(lambda node: "waypoints")
    ads = AdsServer(cache)
    ads.register(server)
    tls_port = server.add_secure_port("127.0.0.1:0", ca.server_credentials())
    plain_port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return Istiod(ca, ca_dir, server, cache, ads, tls_port, plain_port)


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
