"""The agent's wiring with the real CA and a stand-in Envoy: ordering, bootstrap, stop, failures."""

from __future__ import annotations

import asyncio
import json
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from istiod_lite.agent.bootstrap import WaypointIdentity
from istiod_lite.agent.certs import IssuedCertificate
from istiod_lite.agent.rotation import RotationPolicy
from istiod_lite.agent.runner import AgentConfig, EnvoySettings, WaypointAgent
from istiod_lite.agent.sds import SdsServer
from tests.unit.test_agent_fixtures import NAMESPACE, WAYPOINT, WAYPOINT_SPIFFE, Istiod, running_istiod
from tests.unit.test_agent_supervisor import fake_envoy, wait_for


@pytest.fixture
async def istiod(tmp_path: Path) -> AsyncIterator[Istiod]:
    async with running_istiod(tmp_path) as harness:
        yield harness


FAST = RotationPolicy(initial_backoff=0.05, max_backoff=0.1, max_sleep=0.5)


def config(istiod: Istiod, tmp_path: Path, **kw: Any) -> AgentConfig:
    binary, _ = fake_envoy(tmp_path, "run")
    values: dict[str, Any] = {
        "identity": WaypointIdentity(name=WAYPOINT, namespace=NAMESPACE),
        "token_file": tmp_path / "istio-token",
        "xds_address": istiod.tls_address,
        "ca_address": istiod.tls_address,
        "root_cert": istiod.root_path,
        "envoy": EnvoySettings(binary=str(binary), admin_port=0),
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
    sds_endpoint = clusters["sds-grpc"]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    assert sds_endpoint["address"]["pipe"]["path"] == str(agent.sds.socket_path)
    assert clusters["xds-grpc"]["transport_socket"]["typed_config"]["sni"] == "istiod.istio-system.svc"
    assert boot["node"]["metadata"]["SERVICE_ACCOUNT"] == WAYPOINT
    work = agent.work_dir
    stop.set()
    assert await asyncio.wait_for(task, 5) == 0
    assert not work.exists()  # a work dir the agent made itself is removed


async def test_plaintext_xds_bootstrap(istiod: Istiod, tmp_path: Path) -> None:
    istiod.token_file(tmp_path / "istio-token")
    agent = WaypointAgent(config(istiod, tmp_path, xds_tls=False, xds_address=istiod.plain_address))
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    await wait_for(lambda: agent.supervisor.pid is not None)
    clusters = {c["name"]: c for c in json.loads(agent.bootstrap_path.read_text())["static_resources"]["clusters"]}
    assert "transport_socket" not in clusters["xds-grpc"]
    assert "sds-grpc" in clusters
    stop.set()
    assert await asyncio.wait_for(task, 5) == 0


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
