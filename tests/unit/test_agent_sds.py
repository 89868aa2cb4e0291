"""The agent's SDS server over its Unix socket: Istio's secret names, SotW and Delta, rotation pushes."""

from __future__ import annotations

import asyncio
import datetime as dt
import stat
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from envoy.config.core.v3 import base_pb2
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from envoy.service.discovery.v3 import discovery_pb2
from envoy.service.secret.v3 import sds_pb2_grpc

from istiod_lite.agent.certs import IssuedCertificate, check_response, utcnow
from istiod_lite.agent.sds import SdsServer, secrets
from istiod_lite.xds.typeurls import SECRET
from tests.unit.test_agent_fixtures import WAYPOINT_SPIFFE, Istiod, running_istiod


@pytest.fixture
async def istiod(tmp_path: Path) -> AsyncIterator[Istiod]:
    async with running_istiod(tmp_path) as harness:
        yield harness


NODE = base_pb2.Node(id="waypoint~127.0.1.1~waypoint-1.ns1~ns1.svc.cluster.local", cluster="waypoint.ns1")


def issue(istiod: Istiod) -> IssuedCertificate:
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = istiod.ca.authority.issue(key.public_key(), x509.UniformResourceIdentifier(WAYPOINT_SPIFFE),
                                     dt.timedelta(hours=1))
    return check_response([leaf, *istiod.ca.material.chain_tail_pem], key, WAYPOINT_SPIFFE, utcnow())


@pytest.fixture
async def sds() -> AsyncIterator[SdsServer]:
    with tempfile.TemporaryDirectory(prefix="sds-") as d:  # short: the socket path limit
        server = SdsServer(Path(d) / "sds" / "socket")
        await server.start()
        try:
            yield server
        finally:
            await server.stop(0)


def unpack(resource: object) -> secret_pb2.Secret:
    secret = secret_pb2.Secret()
    assert resource.Unpack(secret)  # type: ignore[attr-defined]
    return secret


async def test_secrets_have_istio_names_and_content(istiod: Istiod) -> None:
    cert = issue(istiod)
    got = secrets(cert)
    assert set(got) == {"default", "ROOTCA"}
    assert got["default"].tls_certificate.certificate_chain.inline_bytes == cert.certificate_chain_pem
    assert got["default"].tls_certificate.private_key.inline_bytes == cert.key_pem
    assert got["ROOTCA"].validation_context.trusted_ca.inline_bytes == istiod.root_path.read_bytes()


async def test_socket_is_private(sds: SdsServer) -> None:
    assert stat.S_IMODE(sds.socket_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(sds.socket_path.parent.stat().st_mode) == 0o700


def test_socket_path_limit() -> None:
    with pytest.raises(ValueError, match="107 bytes"):
        SdsServer(Path("/tmp") / ("x" * 120) / "socket")


async def test_refused_until_the_first_certificate(sds: SdsServer) -> None:
    async with grpc.aio.insecure_channel(f"unix:{sds.socket_path}") as ch:
        call = sds_pb2_grpc.SecretDiscoveryServiceStub(ch).StreamSecrets()
        await call.write(discovery_pb2.DiscoveryRequest(node=NODE, type_url=SECRET, resource_names=["default"]))
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call.read()
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_sotw_stream_gets_rotated_secret(sds: SdsServer, istiod: Istiod) -> None:
    first, second = issue(istiod), issue(istiod)
    sds.update(first)
    async with grpc.aio.insecure_channel(f"unix:{sds.socket_path}") as ch:
        call = sds_pb2_grpc.SecretDiscoveryServiceStub(ch).StreamSecrets()
        await call.write(discovery_pb2.DiscoveryRequest(node=NODE, type_url=SECRET, resource_names=["default"]))
        resp = await asyncio.wait_for(call.read(), 5)
        assert resp.type_url == SECRET
        assert [unpack(r).name for r in resp.resources] == ["default"]
        got = unpack(resp.resources[0]).tls_certificate.certificate_chain.inline_bytes
        assert got == first.certificate_chain_pem
        await call.write(discovery_pb2.DiscoveryRequest(type_url=SECRET, resource_names=["default"],
                                                        version_info=resp.version_info,
                                                        response_nonce=resp.nonce))
        sds.update(second)  # rotation: the open stream is pushed the new certificate
        resp2 = await asyncio.wait_for(call.read(), 5)
        assert resp2.version_info != resp.version_info
        rotated = unpack(resp2.resources[0]).tls_certificate
        assert rotated.certificate_chain.inline_bytes == second.certificate_chain_pem
        assert rotated.private_key.inline_bytes == second.key_pem
        call.cancel()
    assert sds.current is second


async def test_delta_stream_gets_both_secrets(sds: SdsServer, istiod: Istiod) -> None:
    cert = issue(istiod)
    sds.update(cert)
    async with grpc.aio.insecure_channel(f"unix:{sds.socket_path}") as ch:
        call = sds_pb2_grpc.SecretDiscoveryServiceStub(ch).DeltaSecrets()
        await call.write(discovery_pb2.DeltaDiscoveryRequest(node=NODE, type_url=SECRET,
                                                             resource_names_subscribe=["default", "ROOTCA"]))
        resp = await asyncio.wait_for(call.read(), 5)
        by_name = {r.name: unpack(r.resource) for r in resp.resources}
        assert set(by_name) == {"default", "ROOTCA"}
        assert by_name["ROOTCA"].validation_context.trusted_ca.inline_bytes == cert.root_pem
        call.cancel()
