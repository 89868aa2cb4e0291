"""The agent's file secrets (``file-root:<path>``, ``file-cert:<cert>~<key>``): names, checks, lazy
loading, change polling, last-good on breakage, pruning; and served over the SDS socket (SotW and
Delta) with pushes when a file changes."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from envoy.config.core.v3 import base_pb2
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from envoy.service.discovery.v3 import discovery_pb2
from envoy.service.secret.v3 import sds_pb2_grpc

from istiod_lite.agent.certs import IssuedCertificate
from istiod_lite.agent.filesecrets import (
    SYSTEM_CA_BUNDLES,
    FileSecretError,
    FileSecrets,
    FileSecretSource,
    load_secret,
    parse_name,
    signature,
    system_ca_bundle,
)
from istiod_lite.agent.sds import SdsServer
from istiod_lite.xds.typeurls import SECRET

NODE = base_pb2.Node(id="waypoint~127.0.1.1~waypoint-1.ns1~ns1.svc.cluster.local", cluster="waypoint.ns1")
_NOW = dt.datetime.now(dt.UTC)


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _cert(subject: str, key: ec.EllipticCurvePrivateKey, issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None
          ) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    issuer_name, signer = issuer or (name, key)
    return (x509.CertificateBuilder().subject_name(name).issuer_name(issuer_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(_NOW - dt.timedelta(minutes=1))
            .not_valid_after(_NOW + dt.timedelta(hours=1))
            .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
            .sign(signer, hashes.SHA256()))


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


class Pki:
    """A CA and a client certificate, written as files under ``directory``."""

    def __init__(self, directory: Path, name: str = "ca") -> None:
        self.ca_key = _key()
        self.ca = _cert(name, self.ca_key, None)
        self.dir = directory
        self.ca_path = directory / f"{name}.pem"
        self.ca_path.write_bytes(_pem(self.ca))
        self.cert_path, self.key_path = directory / f"{name}-client.pem", directory / f"{name}-client-key.pem"
        self.client_key = self.new_client()

    def new_client(self) -> ec.EllipticCurvePrivateKey:
        key = _key()
        leaf = _cert("client", key, (self.ca.subject, self.ca_key))
        self.cert_path.write_bytes(_pem(leaf) + _pem(self.ca))
        self.key_path.write_bytes(_pem_key(key))
        return key

    @property
    def root_name(self) -> str:
        return f"file-root:{self.ca_path}"

    @property
    def cert_name(self) -> str:
        return f"file-cert:{self.cert_path}~{self.key_path}"


def workload_cert(pki: Pki) -> IssuedCertificate:
    key = _key()
    leaf = _cert("workload", key, (pki.ca.subject, pki.ca_key))
    return IssuedCertificate(key_pem=_pem_key(key), chain_pem=(_pem(leaf).decode(), _pem(pki.ca).decode()),
                             leaf=leaf, received_at=_NOW)


def touch_later(path: Path, data: bytes) -> None:
    """Rewrite ``path`` so that its mtime surely moves (coarse-mtime filesystems)."""
    path.write_bytes(data)
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path)


# -- names ---------------------------------------------------------------------------------------

def test_names() -> None:
    assert parse_name("file-root:/etc/ca.pem") == FileSecretSource("file-root:/etc/ca.pem", (Path("/etc/ca.pem"),))
    cert = parse_name("file-cert:/c/cert.pem~/c/key.pem")
    assert cert.paths == (Path("/c/cert.pem"), Path("/c/key.pem")) and not cert.is_root
    system = parse_name("file-root:system")
    assert system.is_root and str(system.paths[0]) in SYSTEM_CA_BUNDLES
    for bad in ("file-root:", "file-cert:/only-cert.pem", "file-cert:~/k.pem", "file-cert:/a~/b~/c", "default"):
        with pytest.raises(FileSecretError):
            parse_name(bad)


def test_system_bundle_is_the_first_that_exists(tmp_path: Path) -> None:
    (tmp_path / "b.pem").write_text("x")
    (tmp_path / "c.pem").write_text("x")
    assert system_ca_bundle([str(tmp_path / n) for n in ("a.pem", "b.pem", "c.pem")]) == tmp_path / "b.pem"
    assert system_ca_bundle([str(tmp_path / "none.pem")]) == tmp_path / "none.pem"  # the error will name it


# -- loading and checks --------------------------------------------------------------------------

def test_root_and_cert_secrets(pki: Pki) -> None:
    root = load_secret(parse_name(pki.root_name))
    assert root.name == pki.root_name
    assert root.validation_context.trusted_ca.inline_bytes == pki.ca_path.read_bytes()
    cert = load_secret(parse_name(pki.cert_name))
    assert cert.tls_certificate.certificate_chain.inline_bytes == pki.cert_path.read_bytes()
    assert cert.tls_certificate.private_key.inline_bytes == pki.key_path.read_bytes()


def test_refused_content(pki: Pki, tmp_path: Path) -> None:
    def error(name: str) -> str:
        with pytest.raises(FileSecretError) as info:
            load_secret(parse_name(name))
        return str(info.value)

    assert "No such file" in error(f"file-root:{tmp_path / 'missing.pem'}")
    (tmp_path / "junk.pem").write_text("not a certificate")
    assert "no valid PEM certificate" in error(f"file-root:{tmp_path / 'junk.pem'}")
    other_key = tmp_path / "other-key.pem"
    other_key.write_bytes(_pem_key(_key()))
    assert "is not the key of" in error(f"file-cert:{pki.cert_path}~{other_key}")
    encrypted = tmp_path / "encrypted-key.pem"
    encrypted.write_bytes(pki.client_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                       serialization.BestAvailableEncryption(b"secret")))
    assert "not an unencrypted PEM private key" in error(f"file-cert:{pki.cert_path}~{encrypted}")
    assert "cannot read" in error(f"file-cert:{pki.cert_path}~{tmp_path / 'nokey.pem'}")


def test_signature_sees_rewrites_and_renames(pki: Pki) -> None:
    source = parse_name(pki.root_name)
    first = signature(source)
    assert signature(source) == first
    touch_later(pki.ca_path, pki.ca_path.read_bytes())
    second = signature(source)
    assert second != first
    replacement = pki.dir / "new.pem"
    replacement.write_bytes(pki.ca_path.read_bytes())
    os.replace(replacement, pki.ca_path)  # atomic swap, as Kubernetes volumes do: a new inode
    assert signature(source) != second
    pki.ca_path.unlink()
    assert signature(source) == (None,)


# -- FileSecrets: lazy load, polling, last good, pruning ------------------------------------------

async def test_loaded_on_request_then_only_on_change(pki: Pki) -> None:
    files = FileSecrets(credential_dirs=None)
    assert files.secrets() == {}
    assert await files.request(["default", "ROOTCA", pki.root_name, pki.cert_name])
    assert set(files.secrets()) == {pki.root_name, pki.cert_name}  # only file secrets, read at once
    assert not await files.request([pki.root_name])  # already watched: not read again
    assert not await files.poll()  # nothing changed
    pki.new_client()
    touch_later(pki.key_path, pki.key_path.read_bytes())
    assert await files.poll()
    assert files.secrets()[pki.cert_name].tls_certificate.private_key.inline_bytes == pki.key_path.read_bytes()


async def test_missing_file_is_not_served_until_it_appears(pki: Pki, tmp_path: Path, caplog: pytest.LogCaptureFixture
                                                           ) -> None:
    later = tmp_path / "later.pem"
    name = f"file-root:{later}"
    files = FileSecrets(credential_dirs=None)
    assert not await files.request([name])
    assert files.secrets() == {}
    assert "No such file" in files.watched()[name]
    assert "not served" in caplog.text
    caplog.clear()
    assert not await files.poll()
    assert caplog.text == ""  # the same error is logged once, not at every poll
    later.write_bytes(pki.ca_path.read_bytes())
    assert await files.poll()
    assert files.secrets()[name].validation_context.trusted_ca.inline_bytes == pki.ca_path.read_bytes()
    assert files.watched() == {name: ""}


async def test_broken_file_keeps_the_last_good_version(pki: Pki, caplog: pytest.LogCaptureFixture) -> None:
    files = FileSecrets(credential_dirs=None)
    assert await files.request([pki.root_name])
    good = files.secrets()[pki.root_name]
    touch_later(pki.ca_path, b"half-written")
    assert not await files.poll()
    assert files.secrets()[pki.root_name] == good
    assert "keeping the last good version" in caplog.text
    other = Pki(pki.dir, "other")
    touch_later(pki.ca_path, other.ca_path.read_bytes())
    assert await files.poll()
    assert files.secrets()[pki.root_name].validation_context.trusted_ca.inline_bytes == other.ca_path.read_bytes()


async def test_same_content_rewritten_is_no_change(pki: Pki) -> None:
    files = FileSecrets(credential_dirs=None)
    await files.request([pki.root_name])
    touch_later(pki.ca_path, pki.ca_path.read_bytes())
    assert not await files.poll()


async def test_malformed_name_is_never_served() -> None:
    files = FileSecrets(credential_dirs=None)
    assert not await files.request(["file-cert:/no-key.pem"])
    assert "expected file-cert:" in files.watched()["file-cert:/no-key.pem"]
    assert not await files.poll()


async def test_unrequested_secrets_are_dropped_after_two_polls(pki: Pki) -> None:
    files = FileSecrets(credential_dirs=None)
    await files.request([pki.root_name, pki.cert_name])
    assert not await files.poll({pki.root_name})  # first poll without cert_name: kept
    assert set(files.secrets()) == {pki.root_name, pki.cert_name}
    assert await files.request([pki.cert_name]) is False  # asked again: the count restarts
    assert not await files.poll({pki.root_name})
    assert await files.poll({pki.root_name})  # second poll in a row: dropped
    assert set(files.secrets()) == {pki.root_name}


async def test_concurrent_requests_read_once(pki: Pki, monkeypatch: pytest.MonkeyPatch) -> None:
    from istiod_lite.agent import filesecrets

    reads: list[str] = []
    real = filesecrets.load_secret

    def counting(source: FileSecretSource, credential_dirs: object = None) -> secret_pb2.Secret:
        reads.append(source.name)
        return real(source)

    monkeypatch.setattr(filesecrets, "load_secret", counting)
    files = FileSecrets(credential_dirs=None)
    results = await asyncio.gather(*(files.request([pki.root_name]) for _ in range(5)))
    assert results.count(True) == 1 and reads == [pki.root_name]


# -- served over the SDS socket -------------------------------------------------------------------

@pytest.fixture
async def sds(pki: Pki) -> AsyncIterator[SdsServer]:
    with tempfile.TemporaryDirectory(prefix="sds-") as d:  # short: the socket path limit
        server = SdsServer(Path(d) / "sds" / "socket", file_poll_interval=3600, credential_dirs=[pki.dir])
        server.update(workload_cert(pki))
        await server.start()
        try:
            yield server
        finally:
            await server.stop(0)


def unpack(resource: object) -> secret_pb2.Secret:
    secret = secret_pb2.Secret()
    assert resource.Unpack(secret)  # type: ignore[attr-defined]
    return secret


async def read(call: grpc.aio.StreamStreamCall) -> discovery_pb2.DiscoveryResponse:
    return await asyncio.wait_for(call.read(), 5)


async def ack(call: grpc.aio.StreamStreamCall, names: list[str],
              resp: discovery_pb2.DiscoveryResponse) -> None:
    await call.write(discovery_pb2.DiscoveryRequest(type_url=SECRET, resource_names=names,
                                                    version_info=resp.version_info, response_nonce=resp.nonce))


async def test_sotw_first_answer_holds_the_file_secret_and_changes_are_pushed(sds: SdsServer, pki: Pki) -> None:
    names = ["default", pki.cert_name]
    async with grpc.aio.insecure_channel(f"unix:{sds.socket_path}") as ch:
        call = sds_pb2_grpc.SecretDiscoveryServiceStub(ch).StreamSecrets()
        await call.write(discovery_pb2.DiscoveryRequest(node=NODE, type_url=SECRET, resource_names=names))
        resp = await read(call)
        got = {unpack(r).name: unpack(r) for r in resp.resources}
        assert set(got) == set(names)
        assert got[pki.cert_name].tls_certificate.private_key.inline_bytes == pki.key_path.read_bytes()
        await ack(call, names, resp)
        assert sds.subscribed() == set(names)

        pki.new_client()  # rotated on disk: cert and key
        touch_later(pki.cert_path, pki.cert_path.read_bytes())
        await sds.poll_files()
        pushed = await read(call)
        assert pushed.version_info != resp.version_info
        by_name = {unpack(r).name: unpack(r) for r in pushed.resources}
        assert by_name[pki.cert_name].tls_certificate.private_key.inline_bytes == pki.key_path.read_bytes()
        call.cancel()


async def test_sotw_missing_file_is_pushed_when_it_appears(sds: SdsServer, pki: Pki, tmp_path: Path) -> None:
    later = tmp_path / "later.pem"
    name = f"file-root:{later}"
    async with grpc.aio.insecure_channel(f"unix:{sds.socket_path}") as ch:
        call = sds_pb2_grpc.SecretDiscoveryServiceStub(ch).StreamSecrets()
        await call.write(discovery_pb2.DiscoveryRequest(node=NODE, type_url=SECRET, resource_names=[name]))
        first = await read(call)
        assert list(first.resources) == []  # nothing to serve yet (Envoy ACKs it and keeps warming)
        await ack(call, [name], first)
        await sds.poll_files()
        await asyncio.sleep(0.2)
        assert sds.status()[0]["types"]["SDS"]["responses"] == 1  # type: ignore[index]  # still missing: no push
        later.write_bytes(pki.ca_path.read_bytes())
        await sds.poll_files()
        resp = await read(call)
        assert [unpack(r).validation_context.trusted_ca.inline_bytes for r in resp.resources] == [
            pki.ca_path.read_bytes()]
        call.cancel()


async def test_poller_pushes_without_help(pki: Pki) -> None:
    with tempfile.TemporaryDirectory(prefix="sds-") as d:
        server = SdsServer(Path(d) / "sds" / "socket", file_poll_interval=0.05, credential_dirs=[pki.dir])
        server.update(workload_cert(pki))
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"unix:{server.socket_path}") as ch:
                call = sds_pb2_grpc.SecretDiscoveryServiceStub(ch).StreamSecrets()
                await call.write(discovery_pb2.DiscoveryRequest(node=NODE, type_url=SECRET,
                                                                resource_names=[pki.root_name]))
                first = await read(call)
                await ack(call, [pki.root_name], first)
                other = Pki(pki.dir, "other")
                touch_later(pki.ca_path, other.ca_path.read_bytes())
                pushed = await read(call)
                assert unpack(pushed.resources[0]).validation_context.trusted_ca.inline_bytes == \
                    other.ca_path.read_bytes()
                call.cancel()
        finally:
            await server.stop(0)
        assert server._poller is None


async def test_delta_subscribe_loads_file_secret(sds: SdsServer, pki: Pki) -> None:
    async with grpc.aio.insecure_channel(f"unix:{sds.socket_path}") as ch:
        call = sds_pb2_grpc.SecretDiscoveryServiceStub(ch).DeltaSecrets()
        await call.write(discovery_pb2.DeltaDiscoveryRequest(node=NODE, type_url=SECRET,
                                                             resource_names_subscribe=[pki.root_name, "ROOTCA"]))
        resp = await asyncio.wait_for(call.read(), 5)
        by_name = {r.name: unpack(r.resource) for r in resp.resources}
        assert set(by_name) == {pki.root_name, "ROOTCA"}
        assert by_name[pki.root_name].validation_context.trusted_ca.inline_bytes == pki.ca_path.read_bytes()
        call.cancel()


async def test_certificate_rotation_keeps_file_secrets(sds: SdsServer, pki: Pki) -> None:
    await sds.files.request([pki.root_name])
    sds.update(workload_cert(pki))  # a rotation republishes everything
    snap = sds.cache.get("local")
    assert snap is not None and set(snap.of_type(SECRET)) == {"default", "ROOTCA", pki.root_name}
