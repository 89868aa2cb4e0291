"""The secure port: ADS streams must authenticate, and may only ask for their own identity's config."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc
from envoy.service.discovery.v3 import discovery_pb2 as d

from istiod_lite.ca.keystore import ROOT_CERT
from istiod_lite.ca.tokens import create_token
from istiod_lite.xds.typeurls import CLUSTER
from tests.e2e.test_waypoint_traffic import write
from tests.support.controlplane import control_plane

pytestmark = pytest.mark.e2e


def node(namespace: str, sa: str) -> base_pb2.Node:
    n = base_pb2.Node(id=f"waypoint~127.0.1.1~waypoint-abc.{namespace}~{namespace}.svc.cluster.local")
    n.metadata.fields["NAMESPACE"].string_value = namespace
    n.metadata.fields["SERVICE_ACCOUNT"].string_value = sa
    n.metadata.fields["LABELS"].struct_value.fields["gateway.networking.k8s.io/gateway-name"].string_value = "waypoint"
    return n


async def first_response(port: int, root: bytes, token: str | None, n: base_pb2.Node) -> object:
    creds = grpc.ssl_channel_credentials(root_certificates=root)
    async with grpc.aio.secure_channel(f"127.0.0.1:{port}", creds,
                                       options=[("grpc.ssl_target_name_override", "istiod.istio-system.svc")]) as ch:
        call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(ch).DeltaAggregatedResources(
            metadata=(("authorization", f"Bearer {token}"),) if token else None)
        await call.write(d.DeltaDiscoveryRequest(node=n, type_url=CLUSTER))
        try:
            return await asyncio.wait_for(call.read(), 10)
        except grpc.aio.AioRpcError as exc:
            return exc.code()


async def test_secure_port_authenticates_streams(tmp_path: Path) -> None:
    cfg = tmp_path / "cfg"
    cfg.mkdir()
    write(cfg, wp="127.0.1.200", vip="127.10.200.1", port=8080, ip1="127.0.2.201", ip2="127.0.2.202")
    ca_dir = tmp_path / "ca"
    async with control_plane(cfg, ca_dir=ca_dir, plaintext=False) as cp:
        root = (ca_dir / ROOT_CERT).read_bytes()
        good = create_token(ca_dir, "shop", "waypoint")
        resp = await first_response(cp.secure_port, root, good, node("shop", "waypoint"))
        assert not isinstance(resp, grpc.StatusCode), resp
        assert any(r.name.startswith("inbound-vip|9080|http|reviews.shop") for r in resp.resources)  # type: ignore[attr-defined]
        # Token for another namespace than the node claims: refused before any resource.
        other = create_token(ca_dir, "other", "waypoint")
        assert await first_response(cp.secure_port, root, other, node("shop", "waypoint")) == \
            grpc.StatusCode.PERMISSION_DENIED
        # Same namespace, other service account: refused too.
        sa = create_token(ca_dir, "shop", "intruder")
        assert await first_response(cp.secure_port, root, sa, node("shop", "waypoint")) == \
            grpc.StatusCode.PERMISSION_DENIED
        assert await first_response(cp.secure_port, root, None, node("shop", "waypoint")) == \
            grpc.StatusCode.UNAUTHENTICATED
        assert await first_response(cp.secure_port, root, "not.a.jwt", node("shop", "waypoint")) == \
            grpc.StatusCode.UNAUTHENTICATED
        assert cp.grpc_port == 0  # the plaintext port is off
