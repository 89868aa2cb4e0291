"""The agent's wiring with the real CA and a stand-in Envoy: ordering, bootstrap, stop, failures."""

from __future__ import annotations

import asyncio
import json
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf import json_format

from istiod_lite.agent.bootstrap import WaypointIdentity
from istiod_lite.agent.certs import IssuedCertificate
from istiod_lite.agent.rotation import RotationPolicy
from istiod_lite.agent.runner import AgentConfig, EnvoySettings, WaypointAgent
from istiod_lite.agent.sds import SdsServer
from istiod_lite.controlplane.secure import XdsAuthenticator
from istiod_lite.xds import typeurls
from tests.unit.test_agent_fixtures import (
    EMPTY_CONFIG,
    NAMESPACE,
    WAYPOINT,
    WAYPOINT_SPIFFE,
    Istiod,
    running_istiod,
)
from tests.unit.test_agent_supervisor import fake_envoy, wait_for


@pytest.fixture
async def istiod(tmp_path: Path) -> AsyncIterator[Istiod]:
    async with running_istiod(tmp_path) as harness:
        yield harness


def pipe(cluster: dict[str, Any]) -> str:
    return str(cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["pipe"]["path"])


FAST = RotationPolicy(initial_backoff=0.05, max_backoff=0.1, max_sleep=0.5)


def config(istiod: Istiod, tmp_path: Path, **kw: Any) -> AgentConfig:
    binary, _ = fake_envoy(tmp_path, "run")
    values: dict[str, Any] = {
        "identity": WaypointIdentity(name=WAYPOINT, namespace=NAMESPACE),
        "token_file": tmp_path / "istio-token",
        "xds_address": istiod.tls_address,
        "ca_address": istiod.tls_address,
        "root_cert": istiod.root_path,
        # No termination drain: the stand-in has no admin port to take it.
        "envoy": EnvoySettings(binary=str(binary), admin_port=0, termination_drain_duration=0),
        "cert_ttl": 600,
        "rotation": FAST,
    }
    values.update(kw)
    return AgentConfig(**values)


async def test_envoy_starts_only_after_the_first_certificate(istiod: Istiod, tmp_path: Path) -> None:
    token = tmp_path / "istio-token"
    token.write_text("not-yet-a-token")
    agent = WaypointAgent(config(istiod, tmp_path))
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    await wait_for(lambda: agent.rotator is not None and agent.rotator.failures >= 2)
    assert agent.supervisor.starts == 0 and not agent.bootstrap_path.exists()
    istiod.token_file(token)  # the token arrives; the next retry succeeds
    await wait_for(lambda: agent.supervisor.pid is not None)
    assert agent.certificate is not None
    boot = json.loads(agent.bootstrap_path.read_text())
    clusters = {c["name"]: c for c in boot["static_resources"]["clusters"]}
    assert pipe(clusters["sds-grpc"]) == str(agent.sds.socket_path)
    # Envoy's xDS goes to the agent's proxy socket, never straight to istiod, and without TLS.
    assert pipe(clusters["xds-grpc"]) == str(agent.xds_socket_path) == str(agent.work_dir / "proxy" / "XDS")
    assert "transport_socket" not in clusters["xds-grpc"]
    assert agent.xds_socket_path.is_socket()
    assert agent.xds_proxy is not None and agent.xds_proxy.config.root_cert is not None
    assert agent.xds_proxy.config.upstream == istiod.tls_address
    # The node claims the identity the CA issued from the token (istiod's secure port checks it).
    meta = boot["node"]["metadata"]
    cert = agent.certificate
    assert cert is not None
    assert f"spiffe://cluster.local/ns/{meta['NAMESPACE']}/sa/{meta['SERVICE_ACCOUNT']}" == WAYPOINT_SPIFFE
    assert cert.leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value \
        .get_values_for_type(x509.UniformResourceIdentifier) == [WAYPOINT_SPIFFE]
    work = agent.work_dir
    stop.set()
    assert await asyncio.wait_for(task, 5) == 0
    assert not work.exists()  # a work dir the agent made itself is removed


async def test_envoys_xds_reaches_the_tls_port_authenticated(istiod: Istiod, tmp_path: Path) -> None:
    """What the agent's Envoy would do: ADS on the proxy socket, with the bootstrap's node; the
    control plane's real check (token + node identity) lets it through."""
    istiod.token_file(tmp_path / "istio-token")
    istiod.streams.check = XdsAuthenticator(istiod.authenticators())
    istiod.serve(EMPTY_CONFIG)
    agent = WaypointAgent(config(istiod, tmp_path))
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    await wait_for(lambda: agent.supervisor.pid is not None)
    node = json_format.ParseDict(json.loads(agent.bootstrap_path.read_text())["node"], base_pb2.Node())
    async with grpc.aio.insecure_channel(f"unix:{agent.xds_socket_path}") as channel:
        call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).DeltaAggregatedResources()
        await call.write(discovery_pb2.DeltaDiscoveryRequest(node=node, type_url=typeurls.CLUSTER,
                                                             resource_names_subscribe=["*"]))
        response = await asyncio.wait_for(call.read(), 5)
        assert response.type_url == typeurls.CLUSTER
        call.cancel()
    [seen] = istiod.streams.seen
    assert seen.tls and seen.values("authorization") == [f"Bearer {(tmp_path / 'istio-token').read_text().strip()}"]
    stop.set()
    assert await asyncio.wait_for(task, 5) == 0


async def test_plaintext_xds_still_goes_through_the_proxy(istiod: Istiod, tmp_path: Path) -> None:
    istiod.token_file(tmp_path / "istio-token")
    agent = WaypointAgent(config(istiod, tmp_path, xds_tls=False, xds_address=istiod.plain_address))
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    await wait_for(lambda: agent.supervisor.pid is not None)
    clusters = {c["name"]: c for c in json.loads(agent.bootstrap_path.read_text())["static_resources"]["clusters"]}
    assert pipe(clusters["xds-grpc"]) == str(agent.xds_socket_path)
    assert "sds-grpc" in clusters
    proxy = agent.xds_proxy
    assert proxy is not None and proxy.config.root_cert is None and proxy.config.token_file is None
    assert proxy.config.upstream == istiod.plain_address
    stop.set()
    assert await asyncio.wait_for(task, 5) == 0
    assert not agent.xds_socket_path.exists()


async def test_stop_while_waiting_for_the_ca(istiod: Istiod, tmp_path: Path) -> None:
    istiod.token_file(tmp_path / "istio-token")
    with tempfile.TemporaryDirectory(prefix="wp-") as d:
        work = Path(d) / "work"
        agent = WaypointAgent(config(istiod, tmp_path, ca_address="127.0.0.1:1", work_dir=work))
        stop = asyncio.Event()
        task = asyncio.create_task(agent.run(stop))
        await wait_for(lambda: agent.rotator is not None and agent.rotator.failures >= 1)
        stop.set()
        assert await asyncio.wait_for(task, 5) == 0
        assert agent.supervisor.starts == 0
        assert work.exists()  # a --work-dir given by the user is kept
        assert not (work / "sds" / "socket").exists()
        assert not (work / "proxy" / "XDS").exists()


async def test_unusable_root_cert_fails(istiod: Istiod, tmp_path: Path) -> None:
    bad = tmp_path / "root.pem"
    bad.write_text("not a certificate")
    for root in (bad, tmp_path / "missing.pem"):
        agent = WaypointAgent(config(istiod, tmp_path, root_cert=root))
        assert await asyncio.wait_for(agent.run(asyncio.Event()), 5) == 1
        assert agent.supervisor.starts == 0


async def test_a_dead_rotator_stops_envoy_and_fails(istiod: Istiod, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    istiod.token_file(tmp_path / "istio-token")
    real_update = SdsServer.update
    calls: list[IssuedCertificate] = []

    def update_then_break(self: SdsServer, cert: IssuedCertificate) -> None:
        calls.append(cert)
        if len(calls) > break_after:
            raise RuntimeError("simulated bug while publishing a rotated certificate")
        real_update(self, cert)

    monkeypatch.setattr(SdsServer, "update", update_then_break)
    break_after = 1
    agent = WaypointAgent(config(istiod, tmp_path, cert_ttl=1))  # renewed after ~0.5 s
    assert await asyncio.wait_for(agent.run(asyncio.Event()), 10) == 1
    assert agent.supervisor.starts == 1 and agent.supervisor.pid is None
    assert calls[0].leaf.extensions  # the first certificate was real
    assert agent.config.spiffe == WAYPOINT_SPIFFE
    # Dying before the first certificate: Envoy is never started, and the agent does not hang.
    calls.clear()
    break_after = 0
    agent = WaypointAgent(config(istiod, tmp_path))
    assert await asyncio.wait_for(agent.run(asyncio.Event()), 10) == 1
    assert agent.supervisor.starts == 0
