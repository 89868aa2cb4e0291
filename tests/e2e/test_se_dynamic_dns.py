"""Wildcard egress through a real waypoint: a ``DYNAMIC_DNS`` ServiceEntry ``*.ext.test`` bound to
the waypoint, Envoy's dynamic forward proxy resolving each name with a DNS server of the test.

client ztunnel (hbone forward, to the entry's allocated address) -> waypoint Envoy (agent, CA
certificate, secure xDS) -> "external" loopback servers found by name:

* HTTP: ``Host: api.ext.test`` reaches the HTTP server ``api.ext.test`` resolves to (port 80, the
  dynamic forward proxy's default for a Host without port); a name outside the wildcard gets 404
  without being resolved; a name under it that does not resolve gets 503;
* TLS passthrough: a client's TLS session with SNI ``secure.ext.test`` reaches the TLS server that
  name resolves to, on the service port, unterminated (the client verifies the server's own
  certificate); an SNI that does not resolve gets no server.

The DNS server (``tests/support/dnsserver.py``) is given to the control plane as an operator would
(``serve --dynamic-dns-resolver``), and the waypoint must query it: ``/etc/hosts`` is not touched.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from istiod_lite.translator.clusters.dynamic_dns import DynamicDnsOptions
from tests.support.backends import BackendPod
from tests.support.dnsserver import TYPE_A, DnsServer
from tests.support.mesh import ambient_mesh, exclusive_ip
from tests.support.ports import alloc_pod_ip, alloc_vip, free_port
from tests.support.wait import wait_until

pytestmark = pytest.mark.e2e

CONFIG = """apiVersion: v1
kind: Namespace
metadata: {{name: egress}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: waypoint, namespace: egress}}
spec:
  gatewayClassName: istio-waypoint
  addresses: [{{type: IPAddress, value: {wp}}}]
  listeners: [{{name: mesh, port: 15008, protocol: HBONE}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: ext
  namespace: egress
  labels: {{istio.io/use-waypoint: waypoint}}
spec:
  hosts: ["*.ext.test"]
  location: MESH_EXTERNAL
  resolution: DYNAMIC_DNS
  ports:
  - {{number: 80, name: http, protocol: HTTP}}
  - {{number: {tls_port}, name: tls, protocol: TLS}}
status:
  addresses: [{{value: {vip}, host: "*.ext.test"}}]
"""


def _self_signed(name: str, out: Path) -> tuple[Path, Path]:
    """A certificate for ``name`` signed by its own key (the client trusts exactly it)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = out / f"{name}.pem", out / f"{name}-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


class TlsEcho:
    """A TLS server that answers each line with ``<name> <line>`` and records the SNI it was asked for."""

    def __init__(self, name: str, host: str, port: int, cert: Path, key: Path) -> None:
        self.name, self.host, self.port = name, host, port
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(cert, key)
        self.snis: list[str | None] = []
        self.ctx.sni_callback = lambda _sock, sni, _ctx: self.snis.append(sni)
        self._server: asyncio.Server | None = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await reader.readline()
            writer.write(f"{self.name} {line.decode().strip()}\n".encode())
            await writer.drain()
        except (OSError, ssl.SSLError):
            pass
        finally:
            writer.close()

    async def __aenter__(self) -> TlsEcho:
        self._server = await asyncio.start_server(self._serve, self.host, self.port, ssl=self.ctx)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


async def tls_exchange(addr: str, sni: str, ca: Path, line: str) -> str:
    """One TLS session to ``addr`` (the client ztunnel's local port) with ``sni``, the server's
    certificate verified against ``ca`` for that name; the server's answer to ``line``."""
    host, port = addr.rsplit(":", 1)
    ctx = ssl.create_default_context(cafile=str(ca))
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(host, int(port), ssl=ctx, server_hostname=sni), timeout=10)
    try:
        writer.write(f"{line}\n".encode())
        await writer.drain()
        return (await asyncio.wait_for(reader.readline(), timeout=10)).decode().strip()
    finally:
        writer.close()


async def http_get(addr: str, host: str) -> tuple[int, str]:
    """GET / with ``Host: host``: the status and the answering server (``x-pod``)."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http, \
            http.get(f"http://{addr}/", headers={"Host": host}) as r:
        return r.status, r.headers.get("x-pod", "")


@pytest.fixture
async def http_external() -> AsyncIterator[BackendPod]:
    """The HTTP server ``api.ext.test`` resolves to, on port 80 (a Host without port means 80 to the
    dynamic forward proxy); its address is claimed for this process, so port 80 on it is free."""
    pod = BackendPod("api-external", host=exclusive_ip(), port=80)
    try:
        await pod.start()
    except PermissionError:
        pytest.skip("binding port 80 needs root or CAP_NET_BIND_SERVICE")
    try:
        yield pod
    finally:
        await pod.aclose()


async def test_wildcard_egress_http_and_tls_passthrough(tmp_path: Path, http_external: BackendPod) -> None:
    wp, vip = exclusive_ip(), alloc_vip()
    tls_host = alloc_pod_ip()
    tls_port = free_port(tls_host)
    cert, key = _self_signed("secure.ext.test", tmp_path)
    records = {"api.ext.test": http_external.host, "secure.ext.test": tls_host}
    cfg = tmp_path / "cfg"
    cfg.mkdir()
    (cfg / "mesh.yaml").write_text(CONFIG.format(wp=wp, vip=vip, tls_port=tls_port))
    async with DnsServer(alloc_pod_ip(), records) as dns, TlsEcho("tls-external", tls_host, tls_port, cert, key) as tls:
        options = DynamicDnsOptions(wildcard_tls=True, resolvers=((dns.host, dns.port),))
        async with ambient_mesh(tmp_path, cfg, dynamic_dns=options) as mesh, \
                mesh.waypoint("egress", "waypoint", wp), \
                mesh.client([(vip, 80), (vip, tls_port)], wp) as local:
            http_addr, tls_addr = local[(vip, 80)], local[(vip, tls_port)]

            async def http_ready() -> bool:
                try:
                    return await http_get(http_addr, "api.ext.test") == (200, "api-external")
                except (aiohttp.ClientError, OSError, TimeoutError):
                    return False

            await wait_until(http_ready, timeout=20, message="HTTP through the waypoint's dynamic forward proxy")
            http_external.reset()
            for _ in range(5):
                assert await http_get(http_addr, "api.ext.test") == (200, "api-external")
            assert http_external.count == 5
            assert all(r.header("host") == "api.ext.test" for r in http_external.requests)
            assert ("api.ext.test", TYPE_A) in dns.queries  # resolved by the waypoint, with our server

            # Outside the wildcard: no route (Istio's virtual host domains are the wildcard only),
            # so the proxy is never asked to resolve or forward it.
            asked = len(dns.queries)
            assert (await http_get(http_addr, "api.elsewhere.test"))[0] == 404
            assert not any(q[0] == "api.elsewhere.test" for q in dns.queries[asked:])
            # Under the wildcard but unknown to DNS: the forward proxy cannot resolve it.
            assert (await http_get(http_addr, "missing.ext.test"))[0] == 503
            assert ("missing.ext.test", TYPE_A) in dns.queries
            assert http_external.count == 5

            async def tls_ready() -> bool:
                try:
                    return await tls_exchange(tls_addr, "secure.ext.test", cert, "hello") == "tls-external hello"
                except (OSError, ssl.SSLError, TimeoutError):
                    return False

            await wait_until(tls_ready, timeout=20, message="TLS passthrough by SNI through the waypoint")
            # The waypoint did not terminate TLS: the client verified the server's own certificate
            # for the SNI it sent, and the server saw that SNI.
            assert await tls_exchange(tls_addr, "secure.ext.test", cert, "again") == "tls-external again"
            assert set(tls.snis) == {"secure.ext.test"}
            assert ("secure.ext.test", TYPE_A) in dns.queries
            # An SNI under the wildcard that does not resolve reaches no server.
            with pytest.raises((OSError, ssl.SSLError, TimeoutError, asyncio.IncompleteReadError)):
                await tls_exchange(tls_addr, "nowhere.ext.test", cert, "lost")
            assert set(tls.snis) == {"secure.ext.test"}
