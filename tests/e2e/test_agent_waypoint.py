"""The waypoint agent with a real Envoy, a real CA and a real (in-process) istiod-like server.

One gRPC server on 127.0.0.1 plays istiod: ``CreateCertificate`` and ADS on a TLS port (15012's
role, certificate issued by the CA, server authentication only) and ADS on a plaintext port
(15010's).  Envoy reaches the TLS port through the agent's xDS proxy, which adds the bearer token;
the control plane's real ``XdsAuthenticator`` checks every stream (token, and the node's
NAMESPACE/SERVICE_ACCOUNT against it).  The ADS side serves the waypoint one listener that
terminates mTLS with the SDS secrets ``default``/``ROOTCA`` from the agent's ``sds-grpc`` cluster, so
a Python TLS client can check which certificate Envoy really uses.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography import x509
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2
from google.protobuf import any_pb2, json_format

from istiod_lite.agent.bootstrap import WaypointIdentity, sds_secret_config
from istiod_lite.agent.rotation import RotationPolicy
from istiod_lite.agent.runner import AgentConfig, EnvoySettings, WaypointAgent
from istiod_lite.controlplane.secure import XdsAuthenticator
from istiod_lite.envoy_binary import envoy_binary
from istiod_lite.xds import typeurls
from istiod_lite.xds.resources import ResourceSnapshot
from tests.support.plain_listener import http_connection_manager
from tests.support.ports import free_port
from tests.support.wait import wait_until
from tests.unit.test_agent_fixtures import NAMESPACE, WAYPOINT, WAYPOINT_SPIFFE, Istiod, running_istiod


@pytest.fixture
async def istiod(tmp_path: Path) -> AsyncIterator[Istiod]:
    async with running_istiod(tmp_path) as harness:
        harness.streams.check = XdsAuthenticator(harness.authenticators())  # istiod's secure-port rule
        yield harness


pytestmark = pytest.mark.e2e

BODY = b"hello from the waypoint"


# -- what the in-test istiod serves ------------------------------------------------------------------
def mtls_listener(port: int) -> listener_pb2.Listener:
    """TLS with the agent's secrets, client certificate required, then a fixed HTTP answer."""
    rc = route_pb2.RouteConfiguration(name="mtls")
    route = rc.virtual_hosts.add(name="all", domains=["*"]).routes.add()
    route.match.prefix = "/"
    route.direct_response.status = 200
    route.direct_response.body.inline_bytes = BODY
    hcm = any_pb2.Any()
    hcm.Pack(http_connection_manager("mtls", rc))
    tls = json_format.ParseDict({
        "require_client_certificate": True,
        "common_tls_context": {
            "tls_certificate_sds_secret_configs": [sds_secret_config("default")],
            "validation_context_sds_secret_config": sds_secret_config("ROOTCA"),
        },
    }, tls_pb2.DownstreamTlsContext())
    lst = listener_pb2.Listener(name="mtls")
    lst.address.socket_address.address = "127.0.0.1"
    lst.address.socket_address.port_value = port
    chain = lst.filter_chains.add()
    chain.filters.add(name="envoy.filters.network.http_connection_manager", typed_config=hcm)
    chain.transport_socket.name = "envoy.transport_sockets.tls"
    chain.transport_socket.typed_config.Pack(tls)
    return lst


def waypoint_config(port: int) -> ResourceSnapshot:
    lst = mtls_listener(port)
    return ResourceSnapshot.from_messages({typeurls.LISTENER: {lst.name: lst}, typeurls.CLUSTER: {}})


# -- talking to Envoy --------------------------------------------------------------------------------
@dataclass
class Handshake:
    peer: x509.Certificate
    response: bytes

    @property
    def uris(self) -> list[str]:
        san = self.peer.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        return list(san.get_values_for_type(x509.UniformResourceIdentifier))


def _handshake(port: int, root: Path, client: tuple[Path, Path] | None) -> Handshake:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False  # SPIFFE certificates have no DNS name; the URI SAN is checked below
    ctx.load_verify_locations(root)
    if client is not None:
        ctx.load_cert_chain(*client)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, ctx.wrap_socket(raw) as tls:
        der = tls.getpeercert(binary_form=True)
        assert der is not None
        tls.sendall(b"GET / HTTP/1.1\r\nHost: waypoint\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := tls.recv(65536):
            data += chunk
    return Handshake(x509.load_der_x509_certificate(der), data)


async def handshake(port: int, root: Path, client: tuple[Path, Path] | None) -> Handshake:
    return await asyncio.to_thread(_handshake, port, root, client)


async def handshake_when_listening(port: int, root: Path, client: tuple[Path, Path], timeout: float) -> Handshake:
    """Retry until the listener is up (connection refused, or TLS before its secrets arrived)."""

    async def attempt() -> Handshake | None:
        try:
            return await handshake(port, root, client)
        except OSError:  # ssl.SSLError is an OSError too
            return None

    got = await wait_until(attempt, timeout=timeout, message=f"mTLS listener on {port}")
    assert got is not None
    return got


async def admin_get(admin_port: int, path: str) -> str:
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http,
        http.get(f"http://127.0.0.1:{admin_port}{path}") as resp,
    ):
        resp.raise_for_status()
        return await resp.text()


async def admin_or_none(admin_port: int, path: str) -> str | None:
    try:
        return await admin_get(admin_port, path)
    except (aiohttp.ClientError, TimeoutError):
        return None


async def envoy_leaf(admin_port: int) -> dict[str, Any] | None:
    """The workload certificate Envoy holds, from admin ``/certs`` (None before it has one)."""
    text = await admin_or_none(admin_port, "/certs")
    if not text:
        return None
    for entry in json.loads(text).get("certificates", []):
        for cert in entry.get("cert_chain", []):
            if {"uri": WAYPOINT_SPIFFE} in cert.get("subject_alt_names", []):
                return dict(cert)
    return None


async def stat(admin_port: int, name: str) -> int:
    text = await admin_get(admin_port, f"/stats?filter=^{name}$")
    return int(text.strip().rpartition(": ")[2] or 0)


async def uptime_seconds(admin_port: int) -> int:
    """Seconds since this Envoy process started (``/server_info`` computes it per request, unlike the
    ``server.uptime`` gauge, which only moves at each 5 s stats flush)."""
    info = json.loads(await admin_get(admin_port, "/server_info"))
    return int(str(info["uptime_current_epoch"]).rstrip("s"))


def assert_proxied_with_token(istiod: Istiod, token_file: Path) -> None:
    """Every ADS stream istiod saw came over TLS, carrying the token file's token once."""
    assert istiod.streams.seen
    token = f"Bearer {token_file.read_text().strip()}"
    for seen in istiod.streams.seen:
        assert seen.tls and seen.values("authorization") == [token]
        meta = seen.node.metadata.fields
        assert (meta["NAMESPACE"].string_value, meta["SERVICE_ACCOUNT"].string_value) == (NAMESPACE, WAYPOINT)


# -- running the agent in-process ---------------------------------------------------------------------
@contextlib.contextmanager
def short_dir() -> Iterator[Path]:
    """A work dir short enough for the SDS socket path (pytest's tmp_path can exceed 107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="wp-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@dataclass
class RunningAgent:
    agent: WaypointAgent
    stop: asyncio.Event
    task: asyncio.Task[int]
    admin_port: int

    def log(self) -> str:
        out = self.agent.work_dir / "envoy.out"
        return out.read_text(errors="replace")[-4000:] if out.exists() else "(no Envoy output)"


@contextlib.asynccontextmanager
async def running_agent(istiod: Istiod, tmp_path: Path, *, cert_ttl: int = 3600,
                        status_port: int = 0, prometheus_port: int = 0) -> AsyncIterator[RunningAgent]:
    with short_dir() as work:
        admin_port = free_port()
        config = AgentConfig(
            identity=WaypointIdentity(name=WAYPOINT, namespace=NAMESPACE),
            token_file=istiod.token_file(tmp_path / "istio-token"),
            xds_address=istiod.tls_address,
            ca_address=istiod.tls_address,
            root_cert=istiod.root_path,
            envoy=EnvoySettings(binary=envoy_binary(), admin_port=admin_port, log_level="info", concurrency=1,
                                output_path=work / "envoy.out", status_port=status_port,
                                prometheus_port=prometheus_port, termination_drain_duration=0.5),
            cert_ttl=cert_ttl,
            work_dir=work,
            rotation=RotationPolicy(max_sleep=1.0),
        )
        agent = WaypointAgent(config)
        stop = asyncio.Event()
        running = RunningAgent(agent, stop, asyncio.create_task(agent.run(stop)), admin_port)
        try:
            yield running
        except BaseException:
            print("\n----- Envoy output -----\n" + running.log())
            raise
        finally:
            stop.set()
            assert await asyncio.wait_for(running.task, 15) == 0
            assert agent.supervisor.pid is None


async def test_envoy_serves_mtls_with_the_ca_issued_certificate(istiod: Istiod, tmp_path: Path) -> None:
    port = free_port()
    istiod.serve(waypoint_config(port))
    async with running_agent(istiod, tmp_path) as run:
        # (a) Envoy holds the certificate the CA issued for the waypoint's identity.
        leaf = await wait_until(lambda: envoy_leaf(run.admin_port), timeout=15, message="certificate in /certs")
        issued = run.agent.certificate
        assert issued is not None
        assert int(leaf["serial_number"], 16) == issued.serial
        assert issued.leaf.issuer == istiod.ca.material.signing_cert.subject

        # xDS came through the agent's proxy socket to the TLS port, authenticated by the token.
        await wait_until(lambda: len(istiod.ads.connections) == 1, timeout=10, message="ADS stream")
        assert_proxied_with_token(istiod, tmp_path / "istio-token")
        assert istiod.streams.seen[0].node.id == run.agent.config.identity.node_id
        assert run.agent.xds_proxy is not None and run.agent.xds_proxy.streams >= 1
        assert await stat(run.admin_port, "control_plane.connected_state") == 1
        assert await stat(run.admin_port, "cluster.xds-grpc.upstream_cx_total") >= 1  # the Unix socket

        # (b) mTLS with the SDS-delivered secrets: the server presents the waypoint's SPIFFE cert.
        client = istiod.client_cert(tmp_path)
        got = await handshake_when_listening(port, istiod.root_path, client, timeout=15)
        assert got.uris == [WAYPOINT_SPIFFE]
        assert got.peer.serial_number == issued.serial
        assert got.response.startswith(b"HTTP/1.1 200") and got.response.endswith(BODY)
        # ROOTCA is enforced: no client certificate, no response.
        with pytest.raises(OSError):
            await handshake(port, istiod.root_path, None)


async def test_rotation_reaches_envoy_without_restart(istiod: Istiod, tmp_path: Path) -> None:
    port = free_port()
    istiod.serve(waypoint_config(port))
    async with running_agent(istiod, tmp_path, cert_ttl=6) as run:  # renewed after ~3 s
        first = await wait_until(lambda: envoy_leaf(run.admin_port), timeout=15, message="first certificate")
        pid = run.agent.supervisor.pid
        uptime = await uptime_seconds(run.admin_port)

        async def rotated() -> dict[str, Any] | None:
            leaf = await envoy_leaf(run.admin_port)
            return leaf if leaf and leaf["serial_number"] != first["serial_number"] else None

        second = await wait_until(rotated, timeout=12, interval=0.2, message="a new serial in /certs")
        assert run.agent.rotator is not None and run.agent.rotator.issued >= 2
        assert run.agent.supervisor.pid == pid and run.agent.supervisor.starts == 1
        assert await uptime_seconds(run.admin_port) > uptime  # the same Envoy, still up
        # New connections get the new certificate.
        client = istiod.client_cert(tmp_path)
        got = await handshake_when_listening(port, istiod.root_path, client, timeout=5)
        assert got.peer.serial_number != int(first["serial_number"], 16)
        assert got.peer.serial_number in {int(second["serial_number"], 16), run.agent.certificate.serial}  # type: ignore[union-attr]


# -- the real CLI as a subprocess: crash restart and SIGTERM ------------------------------------------
def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text())
    except (OSError, ValueError):
        return None


async def test_cli_restarts_a_killed_envoy_and_stops_cleanly(istiod: Istiod, tmp_path: Path) -> None:
    istiod.serve(waypoint_config(free_port()))
    admin_port = free_port()
    with short_dir() as work:
        cmd = [sys.executable, "-m", "istiod_lite.cli.agent_cmd", "run",
               "--name", WAYPOINT, "--namespace", NAMESPACE,
               "--token-file", str(istiod.token_file(tmp_path / "istio-token")),
               "--xds-address", istiod.tls_address, "--root-cert", str(istiod.root_path),
               "--admin-port", str(admin_port), "--work-dir", str(work), "--concurrency", "1",
               "--envoy-output", str(work / "envoy.out")]
        log = (tmp_path / "agent.log").open("wb")
        agent = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        pid_file = work / "envoy.pid"
        try:
            first = await wait_until(lambda: _read_pid(pid_file), timeout=15, message="Envoy started")
            assert first is not None
            assert await wait_until(lambda: admin_or_none(admin_port, "/ready"), timeout=15, message="/ready")
            assert await envoy_leaf(admin_port) is not None
            await wait_until(lambda: len(istiod.ads.connections) == 1, timeout=15, message="ADS via the proxy")
            assert_proxied_with_token(istiod, tmp_path / "istio-token")
            assert (work / "proxy" / "XDS").is_socket()
            streams_before = len(istiod.streams.seen)

            # (d) Envoy dies: the agent starts a new one (after ~1 s of backoff).
            os.kill(first, signal.SIGKILL)
            second = await wait_until(lambda: (p := _read_pid(pid_file)) != first and p, timeout=15,
                                      message="Envoy restarted")
            assert await wait_until(lambda: admin_or_none(admin_port, "/ready"), timeout=15,
                                    message="/ready after restart")
            assert await envoy_leaf(admin_port) is not None  # SDS served the restarted Envoy too
            # ... and the new Envoy's ADS stream went through the proxy again, with the token.
            await wait_until(lambda: len(istiod.streams.seen) > streams_before and len(istiod.ads.connections) == 1,
                             timeout=15, message="ADS stream of the restarted Envoy")
            assert_proxied_with_token(istiod, tmp_path / "istio-token")
            assert agent.poll() is None

            # Envoy runs with pilot-agent's drain settings (the CLI's defaults).
            options = json.loads(await admin_get(admin_port, "/server_info"))["command_line_options"]
            assert (options["drain_time"], options["drain_strategy"]) == ("45s", "Immediate")

            # SIGTERM to the agent: Envoy's listeners drain first (terminationDrainDuration, 5 s),
            # then Envoy is stopped and the agent exits 0.
            agent.send_signal(signal.SIGTERM)
            stopping = asyncio.get_running_loop().time()

            def draining() -> bool:  # Envoy answered POST /drain_listeners?graceful (it has no "draining" state)
                return "draining Envoy's listeners (started)" in (tmp_path / "agent.log").read_text(errors="replace")

            await wait_until(draining, timeout=4, interval=0.1, message="Envoy draining after SIGTERM")
            assert _alive(second) and await admin_or_none(admin_port, "/ready")  # still serving while it drains
            assert await asyncio.to_thread(agent.wait, 15) == 0
            assert asyncio.get_running_loop().time() - stopping >= 4.5  # the whole drain: no early exit
            assert isinstance(second, int) and not _alive(second)
            assert not pid_file.exists()
            assert not (work / "sds" / "socket").exists()
            assert not (work / "proxy" / "XDS").exists()
        except BaseException:
            print("\n----- agent log -----\n" + (tmp_path / "agent.log").read_text(errors="replace")[-4000:])
            raise
        finally:
            if agent.poll() is None:
                agent.kill()
                agent.wait(5)
            log.close()
            leftover = _read_pid(pid_file)
            if leftover is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(leftover, signal.SIGKILL)


async def _status_of(host: str, port: int, request: bytes) -> int | None:
    """The HTTP status line's code for a raw request (None: nothing listening yet)."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 2)
    except OSError:
        return None
    try:
        writer.write(request)
        line = await asyncio.wait_for(reader.readline(), 5)
        return int(line.split()[1]) if line.startswith(b"HTTP/1.1 ") else None
    finally:
        writer.close()


async def test_status_and_prometheus_ports_like_istio(istiod: Istiod, tmp_path: Path) -> None:
    """``GET /healthz/ready`` on the proxy IP's status port is Envoy's readiness: not ready until
    the config arrived, 200 after; nothing else of the admin interface is reachable through it."""
    status, prom = free_port(), free_port()
    ip = WaypointIdentity(name=WAYPOINT, namespace=NAMESPACE).ip
    ready = b"GET /healthz/ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    async with running_agent(istiod, tmp_path, status_port=status, prometheus_port=prom) as run:
        await wait_until(lambda: admin_or_none(run.admin_port, "/server_info"), timeout=15, message="Envoy up")
        assert await _status_of(ip, status, ready) != 200  # no config served yet: not ready
        assert "INITIALIZING" in (await admin_get(run.admin_port, "/server_info"))
        istiod.serve(waypoint_config(free_port()))

        async def is_ready() -> bool:
            return await _status_of(ip, status, ready) == 200

        await wait_until(is_ready, timeout=15, message="/healthz/ready 200 once the config is in")
        for request in (b"POST /healthz/ready HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
                        b"GET /stats HTTP/1.1\r\nHost: x\r\n\r\n",
                        b"GET /healthz/ready/../../quitquitquit HTTP/1.1\r\nHost: x\r\n\r\n",
                        b"GET /healthz/readyz HTTP/1.1\r\nHost: x\r\n\r\n"):
            assert await _status_of(ip, status, request) == 404, request
        assert await stat(run.admin_port, "server.state") == 0  # still LIVE
        # The Prometheus port (Istio's 15090) serves Envoy's stats for scraping, and nothing else.
        async with aiohttp.ClientSession() as http, \
                http.get(f"http://{ip}:{prom}/stats/prometheus") as resp:
            assert resp.status == 200
            assert "envoy_server_live" in await resp.text()
        assert await _status_of(ip, prom, b"GET /stats HTTP/1.1\r\nHost: x\r\n\r\n") == 404
        assert await _status_of(ip, prom, ready) == 404
