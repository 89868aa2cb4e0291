"""Shared builders for the HBONE tests: meshes (CAs) issuing credential files, a CA gRPC server,
and a raw TLS probe that tells whether an HBONE server accepted us.

Kept in a ``test_hbone_*`` module so the HBONE tests stay self-contained; the tests at the bottom
check the builders themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ssl
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from istiod_lite.ca.authority import CertificateAuthority
from istiod_lite.ca.config import CaConfig
from istiod_lite.ca.keystore import load_or_create
from istiod_lite.ca.runtime import CaRuntime
from istiod_lite.ca.tokens import create_token
from istiod_lite.hbone import Credentials, Endpoint, FileCredentials, HboneConfig, HboneProxy
from tests.support.mesh import exclusive_ip

pytestmark = pytest.mark.e2e

TD = "cluster.local"
CLIENT_ID = f"spiffe://{TD}/ns/default/sa/sleep"
SERVER_ID = f"spiffe://{TD}/ns/default/sa/waypoint"
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
#: An empty SETTINGS frame: length 0, type 4, flags 0, stream 0.
H2_SETTINGS = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


_IP_LOCKS = Path(tempfile.gettempdir()) / "istiod-lite-hbone-ips"
_held: list[TextIO] = []  # locks held until this process exits


def hbone_ip() -> str:
    """A fresh pod address whose HBONE port 15008 nobody else uses (see ``mesh.exclusive_ip``)."""
    return exclusive_ip()


@dataclass(frozen=True)
class CredFiles:
    cert: Path
    key: Path
    root: Path

    def source(self) -> FileCredentials:
        return FileCredentials(self.cert, self.key, self.root)

    def cli_args(self) -> list[str]:
        return ["--cert", str(self.cert), "--key", str(self.key), "--root-cert", str(self.root)]


class Mesh:
    """A CA (its own self-signed root) that writes workload credentials to files."""

    def __init__(self, directory: Path, trust_domain: str = TD, authority: CertificateAuthority | None = None) -> None:
        """A new root in ``directory``, or the given ``authority``'s (e.g. a running CA server's)."""
        self.directory = directory
        self.trust_domain = trust_domain
        self.authority = authority or CertificateAuthority(load_or_create(directory / "ca", trust_domain=trust_domain))
        self._n = 0

    @property
    def root_pem(self) -> str:
        return self.authority.material.root_pem

    def credentials(self, spiffe_id: str, ttl: dt.timedelta = dt.timedelta(hours=1)) -> Credentials:
        key = ec.generate_private_key(ec.SECP256R1())
        leaf = self.authority.issue(key.public_key(), x509.UniformResourceIdentifier(spiffe_id), ttl)
        key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()).decode()
        return Credentials(leaf + "".join(self.authority.material.chain_tail_pem[:-1]), key_pem, self.root_pem)

    def issue(self, spiffe_id: str, *, extra_roots: str = "", ttl: dt.timedelta = dt.timedelta(hours=1)) -> CredFiles:
        """Credentials for ``spiffe_id`` as files; ``extra_roots`` are trusted in addition to ours."""
        self._n += 1
        out = self.directory / f"creds-{self._n}"
        out.mkdir(parents=True)
        creds = self.credentials(spiffe_id, ttl)
        files = CredFiles(out / "cert-chain.pem", out / "key.pem", out / "root-cert.pem")
        files.cert.write_text(creds.chain_pem)
        files.key.write_text(creds.key_pem)
        files.root.write_text(creds.roots_pem + extra_roots)
        return files


@dataclass
class CaServer:
    """The mesh CA's gRPC service on 127.0.0.1 (TLS; the certificate names only istiod's DNS names)."""

    runtime: CaRuntime
    server: grpc.aio.Server
    port: int

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def root_file(self) -> Path:
        return self.runtime.config.ca_dir / "root-cert.pem"

    def token_file(self, directory: Path, namespace: str, sa: str) -> Path:
        path = directory / f"token-{namespace}-{sa}"
        path.write_text(create_token(self.runtime.config.ca_dir, namespace, sa))
        return path


@contextlib.asynccontextmanager
async def ca_server(directory: Path) -> AsyncIterator[CaServer]:
    runtime = CaRuntime.create(CaConfig(ca_dir=directory / "ca-server"))
    await runtime.start()
    server = grpc.aio.server()
    runtime.add_to_server(server)
    port = server.add_secure_port("127.0.0.1:0", runtime.server_credentials())
    await server.start()
    try:
        yield CaServer(runtime, server, port)
    finally:
        await server.stop(None)
        await runtime.close()


@contextlib.asynccontextmanager
async def hbone(config: HboneConfig, creds: CredFiles, identity: str | None = None) -> AsyncIterator[HboneProxy]:
    proxy = HboneProxy(config, creds.source(), identity=identity, concurrency=1)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.stop()


def client_tls(creds: CredFiles | None, roots: Path) -> ssl.SSLContext:
    """What ztunnel's client side offers: TLS 1.3, ALPN h2, a SPIFFE certificate (or none)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False  # SPIFFE peers are checked by URI SAN, not host name
    ctx.load_verify_locations(cafile=str(roots))
    ctx.set_alpn_protocols(["h2"])
    if creds is not None:
        ctx.load_cert_chain(str(creds.cert), str(creds.key))
    return ctx


async def h2_accepted(server: Endpoint, creds: CredFiles | None, roots: Path, timeout: float = 5.0) -> bool:
    """Handshake, send the HTTP/2 preface and read: True if the server answers with frames.

    In TLS 1.3 the client's handshake completes before the server has checked the client
    certificate, so a refusal only shows on the first read (an alert, a reset or EOF).
    """
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(server.host, server.port, ssl=client_tls(creds, roots)), timeout)
    except (ssl.SSLError, ConnectionError):
        return False
    try:
        writer.write(H2_PREFACE + H2_SETTINGS)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(9), timeout)
        return len(data) == 9 and data[3] == 0x4  # a SETTINGS frame
    except (ssl.SSLError, ConnectionError):
        return False
    finally:
        writer.close()
        with contextlib.suppress(ssl.SSLError, ConnectionError):
            await writer.wait_closed()


# ----------------------------------------------------------------------------- the builders themselves


def test_mesh_issues_checked_credentials(tmp_path: Path) -> None:
    from istiod_lite.hbone.credentials import check, load_files

    mesh = Mesh(tmp_path)
    files = mesh.issue(CLIENT_ID)
    check(load_files(files.cert, files.key, files.root), identity=CLIENT_ID, san_prefix=f"spiffe://{TD}/")


async def test_ca_server_issues_to_a_token_holder(tmp_path: Path) -> None:
    from istiod_lite.hbone import CaClient

    async with ca_server(tmp_path) as ca:
        client = CaClient(ca.address, ca.token_file(tmp_path, "default", "sleep"), ca.root_file.read_text())
        creds = await client.request(CLIENT_ID)
    assert creds.uri_sans == [CLIENT_ID]
