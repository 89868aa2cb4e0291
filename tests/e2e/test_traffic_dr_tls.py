"""DestinationRule ``tls: SIMPLE`` (and ``MUTUAL``) through a real waypoint: the waypoint originates
TLS to a TLS pod, trusting the CA file the DestinationRule names, which its agent serves over SDS as
``file-root:<path>``.

The pod is a Python ``ssl`` server whose certificate comes from a throwaway CA made here.  Steps:
right CA -> 200 and the pod saw TLS with the configured SNI; a CA file that does not exist yet ->
Envoy keeps the new cluster warming and the old one serves; the file appears with the wrong CA ->
503 (certificate verify failed); the same file rewritten with the right CA -> 200 again (the agent
re-read it).  A CA file missing when the waypoint starts holds Envoy's initialisation (no
listener at all) until it appears.  ``MUTUAL`` presents the client certificate and key files
(``file-cert:<cert>~<key>``), and a rotation of those files on disk reaches new handshakes."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from istiod_lite.agent import sds
from tests.support.mesh import ambient_mesh, exclusive_ip
from tests.support.meshyaml import SHOP_WAYPOINT
from tests.support.ports import alloc_pod_ip, alloc_vip, free_port
from tests.support.wait import wait_until

pytestmark = pytest.mark.e2e

SNI = "reviews.tls.internal"


class Ca:
    """A throwaway CA that issues server certificates."""

    def __init__(self, name: str) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = dt.datetime.now(dt.UTC)
        self.cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
                     .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
                     .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(hours=1))
                     .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                     .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                                  content_commitment=False, key_encipherment=False,
                                                  data_encipherment=False, key_agreement=False,
                                                  encipher_only=False, decipher_only=False), critical=True)
                     .sign(self.key, hashes.SHA256()))

    @property
    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def issue(self, dns: str, out: Path, stem: str = "server") -> tuple[Path, Path]:
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns)]))
                .issuer_name(self.cert.subject).public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(hours=1))
                .add_extension(x509.SubjectAlternativeName([x509.DNSName(dns)]), critical=False)
                .sign(self.key, hashes.SHA256()))
        cert_path, key_path = out / f"{stem}.pem", out / f"{stem}-key.pem"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        return cert_path, key_path


class TlsPod:
    """An HTTPS pod: answers ``x-pod`` and closes the connection (so every request is a new
    handshake); records each handshake's SNI, each request's TLS version and client certificate
    CN.  With ``client_ca`` it requires a client certificate from that CA (mutual TLS)."""

    def __init__(self, name: str, cert: Path, key: Path, client_ca: Path | None = None) -> None:
        self.name = name
        self.host = alloc_pod_ip()
        self.port = free_port(self.host)
        self.snis: list[str | None] = []
        self.requests: list[str] = []  # the TLS version each request arrived over
        self.clients: list[str] = []  # the client certificate's CN, per request ("" if none)
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(cert, key)
        self.ctx.sni_callback = lambda _sock, name, _ctx: self.snis.append(name)
        if client_ca is not None:
            self.ctx.verify_mode = ssl.CERT_REQUIRED
            self.ctx.load_verify_locations(client_ca)
        self._runner: web.AppRunner | None = None

    async def _handle(self, req: web.Request) -> web.Response:
        ssl_obj = req.transport.get_extra_info("ssl_object") if req.transport else None
        version = ssl_obj.version() if ssl_obj is not None else "plaintext"
        peer = ssl_obj.getpeercert() if ssl_obj is not None else None
        cn = next((v for rdn in (peer or {}).get("subject", ()) for k, v in rdn if k == "commonName"), "")
        self.requests.append(version)
        self.clients.append(cn)
        resp = web.Response(text=json.dumps({"tls": version, "client": cn}), headers={"x-pod": self.name})
        resp.force_close()
        return resp

    async def __aenter__(self) -> TlsPod:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port, ssl_context=self.ctx).start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


CONFIG = SHOP_WAYPOINT + """apiVersion: v1
kind: Service
metadata: {{name: reviews, namespace: shop}}
spec:
  clusterIP: {vip}
  selector: {{app: reviews}}
  ports: [{{name: http, port: 9080, targetPort: {port}}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: reviews-tls, namespace: shop, labels: {{app: reviews}}}}
status: {{podIP: {ip}}}
"""

DR = """apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: reviews, namespace: shop}}
spec:
  host: reviews
  trafficPolicy:
    tls: {{mode: SIMPLE, caCertificates: {ca}, sni: {sni}}}
"""
MUTUAL_DR = """apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: reviews, namespace: shop}}
spec:
  host: reviews
  trafficPolicy:
    tls: {{mode: MUTUAL, caCertificates: {ca}, clientCertificate: {cert}, privateKey: {key}, sni: {sni}}}
"""


@pytest.fixture
def fast_file_polls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sds, "FILE_POLL_INTERVAL", 0.2)


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
        yield http


async def get(http: aiohttp.ClientSession, addr: str) -> tuple[int, str]:
    # A new connection per request: a kept-alive one would hide nothing here, but be explicit.
    async with http.get(f"http://{addr}/", headers={"connection": "close"}) as r:
        return r.status, await r.text()


async def warming(admin_port: int, http: aiohttp.ClientSession) -> bool:
    async with http.get(f"http://127.0.0.1:{admin_port}/config_dump?resource=dynamic_warming_clusters") as r:
        return "reviews" in await r.text()


@pytest.mark.usefixtures("fast_file_polls")
async def test_simple_tls_origination_with_file_ca(tmp_path: Path, session: aiohttp.ClientSession) -> None:
    good, other = Ca("reviews-ca"), Ca("some-other-ca")
    certs = tmp_path / "certs"
    certs.mkdir()
    (certs / "ca.pem").write_bytes(good.pem)
    cert, key = good.issue(SNI, certs)
    later = certs / "later-ca.pem"  # does not exist yet
    wp, vip = exclusive_ip(), alloc_vip()
    cfg = tmp_path / "cfg"
    cfg.mkdir()
    async with TlsPod("reviews-tls", cert, key) as pod:
        (cfg / "mesh.yaml").write_text(CONFIG.format(wp=wp, vip=vip, port=pod.port, ip=pod.host))
        (cfg / "dr.yaml").write_text(DR.format(ca=certs / "ca.pem", sni=SNI))
        async with ambient_mesh(tmp_path, cfg) as mesh, mesh.waypoint("shop", "waypoint", wp) as agent, \
                mesh.client([(vip, 9080)], wp) as local:
            addr = local[(vip, 9080)]
            admin = agent.config.envoy.admin_port

            async def ok() -> bool:
                try:
                    return (await get(session, addr))[0] == 200
                except (aiohttp.ClientError, OSError, TimeoutError):
                    return False

            await wait_until(ok, timeout=30, message="TLS origination with the right CA")
            for _ in range(5):
                status, body = await get(session, addr)
                assert status == 200 and json.loads(body)["tls"].startswith("TLSv1."), body
            assert pod.requests and set(pod.requests) <= {"TLSv1.2", "TLSv1.3"}, pod.requests
            assert pod.snis and set(pod.snis) == {SNI}, pod.snis  # the DR's sni, on every handshake
            assert agent.sds.files.watched() == {f"file-root:{certs / 'ca.pem'}": ""}

            # A CA file that does not exist: not served, the new cluster warms, the old one serves on.
            (cfg / "dr.yaml").write_text(DR.format(ca=later, sni=SNI))
            await wait_until(lambda: warming(admin, session), timeout=15, message="the new cluster warming")
            await wait_until(lambda: "No such file" in agent.sds.files.watched().get(f"file-root:{later}", ""),
                             timeout=10, message="Envoy asking for the missing CA file")
            status, body = await get(session, addr)
            assert status == 200, body

            # The file appears, with the wrong CA: the cluster warms with it and the handshake fails.
            later.write_bytes(other.pem)

            async def refused() -> str:
                status, body = await get(session, addr)
                return body if status == 503 else ""

            body = await wait_until(refused, timeout=15, message="503 with the wrong CA")
            assert "CERTIFICATE_VERIFY_FAILED" in body or "TLS_error" in body or "connection failure" in body, body
            handshakes = len(pod.snis)
            for _ in range(5):
                assert (await get(session, addr))[0] == 503
            assert len(pod.snis) > handshakes  # the waypoint did try TLS; the pod answered nothing

            # The same file now holds the right CA: the agent re-reads it and traffic flows again.
            later.write_bytes(good.pem)
            await wait_until(ok, timeout=15, message="200 after the CA file was fixed")
            assert not await warming(admin, session)


@pytest.mark.usefixtures("fast_file_polls")
async def test_ca_file_missing_at_startup_holds_the_waypoint_until_it_appears(
        tmp_path: Path, session: aiohttp.ClientSession) -> None:
    ca = Ca("reviews-ca")
    certs = tmp_path / "certs"
    certs.mkdir()
    cert, key = ca.issue(SNI, certs)
    missing = certs / "ca.pem"
    wp, vip = exclusive_ip(), alloc_vip()
    cfg = tmp_path / "cfg"
    cfg.mkdir()
    async with TlsPod("reviews-tls", cert, key) as pod:
        (cfg / "mesh.yaml").write_text(CONFIG.format(wp=wp, vip=vip, port=pod.port, ip=pod.host))
        (cfg / "dr.yaml").write_text(DR.format(ca=missing, sni=SNI))
        async with ambient_mesh(tmp_path, cfg) as mesh, mesh.waypoint("shop", "waypoint", wp) as agent, \
                mesh.client([(vip, 9080)], wp) as local:
            addr, admin = local[(vip, 9080)], agent.config.envoy.admin_port
            name = f"file-root:{missing}"

            async def admin_get(path: str) -> str:
                try:
                    async with session.get(f"http://127.0.0.1:{admin}{path}") as r:
                        return await r.text()
                except (aiohttp.ClientError, OSError):
                    return ""

            # Envoy asked for the secret, the agent could not serve it: Envoy's initialisation
            # waits for the warming cluster (as in Istio: initial_fetch_timeout 0s), so no listener.
            await wait_until(lambda: "No such file" in agent.sds.files.watched().get(name, ""), timeout=20,
                             message="Envoy asking for the missing CA file")
            await wait_until(lambda: admin_get("/ready"), timeout=10, message="the admin port")
            await asyncio.sleep(1)
            assert "PRE_INITIALIZING" in await admin_get("/ready")
            assert "15008" not in await admin_get("/listeners")

            missing.write_bytes(ca.pem)

            async def ok() -> bool:
                try:
                    return (await get(session, addr))[0] == 200
                except (aiohttp.ClientError, OSError, TimeoutError):
                    return False

            await wait_until(ok, timeout=15, message="traffic once the CA file exists")
            assert "LIVE" in await admin_get("/ready") and pod.snis


@pytest.mark.usefixtures("fast_file_polls")
async def test_mutual_tls_with_file_client_certificate_and_its_rotation(
        tmp_path: Path, session: aiohttp.ClientSession) -> None:
    server_ca, client_ca = Ca("reviews-ca"), Ca("clients-ca")
    certs = tmp_path / "certs"
    certs.mkdir()
    (certs / "ca.pem").write_bytes(server_ca.pem)
    (certs / "client-ca.pem").write_bytes(client_ca.pem)
    cert, key = server_ca.issue(SNI, certs)
    client_cert, client_key = client_ca.issue("waypoint-client-1", certs, stem="client")
    wp, vip = exclusive_ip(), alloc_vip()
    cfg = tmp_path / "cfg"
    cfg.mkdir()
    async with TlsPod("reviews-mtls", cert, key, client_ca=certs / "client-ca.pem") as pod:
        (cfg / "mesh.yaml").write_text(CONFIG.format(wp=wp, vip=vip, port=pod.port, ip=pod.host))
        (cfg / "dr.yaml").write_text(MUTUAL_DR.format(ca=certs / "ca.pem", cert=client_cert, key=client_key, sni=SNI))
        async with ambient_mesh(tmp_path, cfg) as mesh, mesh.waypoint("shop", "waypoint", wp) as agent, \
                mesh.client([(vip, 9080)], wp) as local:
            addr = local[(vip, 9080)]

            async def client_cn() -> str:
                try:
                    status, body = await get(session, addr)
                except (aiohttp.ClientError, OSError, TimeoutError):
                    return ""
                return str(json.loads(body)["client"]) if status == 200 else ""

            assert await wait_until(client_cn, timeout=30, message="mutual TLS to the pod") == "waypoint-client-1"
            assert {await client_cn() for _ in range(5)} == {"waypoint-client-1"}
            cert_name = f"file-cert:{client_cert}~{client_key}"
            assert agent.sds.files.watched() == {f"file-root:{certs / 'ca.pem'}": "", cert_name: ""}

            # Rotated on disk (a new key and certificate): the agent re-reads both and pushes them;
            # the pod closes every connection, so the next handshakes show the new certificate.
            client_ca.issue("waypoint-client-2", certs, stem="client")
            async def rotated() -> bool:
                return await client_cn() == "waypoint-client-2"

            await wait_until(rotated, timeout=15, message="the rotated client certificate in use")
            assert {await client_cn() for _ in range(5)} == {"waypoint-client-2"}
            assert pod.clients.count("") == 0  # never without a client certificate
