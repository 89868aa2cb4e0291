"""HBONE data path with real Envoys: forwarder -> terminator -> backend, in-process and via the CLI."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from istiod_lite.hbone import (
    CaClient,
    CaCredentials,
    Endpoint,
    FileCredentials,
    HboneConfig,
    HboneError,
    HboneProxy,
    InboundTerminator,
    OutboundTunnel,
)
from tests.e2e.test_hbone_fixtures import CLIENT_ID, SERVER_ID, Mesh, ca_server, hbone, hbone_ip
from tests.support.backends import BackendsFactory
from tests.support.ports import alloc_vip
from tests.support.wait import wait_until

pytestmark = pytest.mark.e2e

ANY = Endpoint("127.0.0.1", 0)


async def get_json(url: str, n: int = 1) -> list[dict[str, object]]:
    """``n`` GETs, each on a new connection (so each is a new HBONE tunnel)."""
    out = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True),
                                     timeout=aiohttp.ClientTimeout(total=5)) as http:
        for i in range(n):
            async with http.get(f"{url}/r{i}") as resp:
                assert resp.status == 200
                out.append(await resp.json())
    return out


async def test_forwarder_to_terminator_reaches_backend(tmp_path: Path, backends_factory: BackendsFactory) -> None:
    mesh = Mesh(tmp_path)
    pod = (await backends_factory(1))[0]
    waypoint, vip = Endpoint(hbone_ip(), 15008), Endpoint(alloc_vip(), 9080)
    # The terminator stands in for a waypoint's 15008: it accepts the VIP and sends it to the pod.
    terminator = HboneConfig(inbound=(InboundTerminator(waypoint, Endpoint(pod.host, pod.port)),))
    forwarder = HboneConfig(outbound=(OutboundTunnel(ANY, vip, waypoint),))
    async with hbone(terminator, mesh.issue(SERVER_ID)) as wp, hbone(forwarder, mesh.issue(CLIENT_ID)) as fwd:
        listen = fwd.outbound_addresses[0]
        replies = await get_json(f"http://{listen}", 10)
        assert {r["pod"] for r in replies} == {pod.name}
        assert pod.count == 10
        stats = await admin_stats(wp)
        assert stats["http.hbone_in_0.downstream_cx_ssl_total"] >= 1
        assert stats["cluster.hbone_in_0_app.upstream_cx_total"] == 10  # one TCP connection per tunnel
        fstats = await admin_stats(fwd)
        # Tunnels share the HTTP/2 connection to the waypoint, as ztunnel pools them.
        assert fstats[f"cluster.waypoint_{waypoint.host}_15008.upstream_cx_total"] == 1
        assert fstats[f"cluster.waypoint_{waypoint.host}_15008.upstream_rq_total"] == 10


async def test_several_tunnels_and_terminators_in_one_envoy(tmp_path: Path,
                                                            backends_factory: BackendsFactory) -> None:
    """The CONNECT authority picks the pod when no --forward is given (destination ztunnel mode)."""
    mesh = Mesh(tmp_path)
    pods = await backends_factory(2, hosts=[hbone_ip(), hbone_ip()])
    pod_ips = [p.host for p in pods]
    terminators = tuple(InboundTerminator(Endpoint(ip, 15008)) for ip in pod_ips)
    # Straight to each pod's 15008, as a waypoint's connect_originate does.
    tunnels = tuple(OutboundTunnel(ANY, Endpoint(p.host, p.port), Endpoint(p.host, 15008)) for p in pods)
    async with hbone(HboneConfig(outbound=tunnels, inbound=terminators), mesh.issue(CLIENT_ID)) as proxy:
        for i, pod in enumerate(pods):
            replies = await get_json(f"http://{proxy.outbound_addresses[i]}", 2)
            assert {r["pod"] for r in replies} == {pod.name}
        assert [p.count for p in pods] == [2, 2]


async def test_terminator_without_forward_refuses_other_hosts(tmp_path: Path,
                                                              backends_factory: BackendsFactory) -> None:
    """A destination ztunnel delivers only to its own pod: CONNECT <other IP> is answered 404."""
    mesh = Mesh(tmp_path)
    pods = await backends_factory(2, hosts=[hbone_ip(), hbone_ip()])
    here, elsewhere = pods[0], pods[1]
    terminator = InboundTerminator(Endpoint(here.host, 15008))
    tunnel = OutboundTunnel(ANY, Endpoint(elsewhere.host, elsewhere.port), Endpoint(here.host, 15008))
    async with hbone(HboneConfig(outbound=(tunnel,), inbound=(terminator,)), mesh.issue(CLIENT_ID)) as proxy:
        with pytest.raises(aiohttp.ClientError):
            await get_json(f"http://{proxy.outbound_addresses[0]}")
        stats = await admin_stats(proxy)
        assert stats["http.hbone_in_0.downstream_rq_4xx"] >= 1  # (aiohttp may retry once)
        assert stats.get("cluster.hbone_in_authority.upstream_cx_total", 0) == 0
    assert elsewhere.count == 0


async def test_ca_credentials_are_renewed_in_place(tmp_path: Path, backends_factory: BackendsFactory) -> None:
    """A 4-second certificate is renewed at half-life by the proxy itself; Envoy serves the new one
    without a restart and tunnels keep working."""
    pod = (await backends_factory(1, hosts=[hbone_ip()]))[0]
    async with ca_server(tmp_path) as ca:
        client = CaClient(ca.address, ca.token_file(tmp_path, "default", "sleep"), ca.root_file.read_text(), ttl_s=4)
        config = HboneConfig(outbound=(OutboundTunnel(ANY, Endpoint(pod.host, pod.port), Endpoint(pod.host, 15008)),),
                             inbound=(InboundTerminator(Endpoint(pod.host, 15008)),))
        proxy = HboneProxy(config, CaCredentials(client, CLIENT_ID), identity=CLIENT_ID, concurrency=1)
        async with proxy:
            assert proxy.credentials is not None
            first = proxy.credentials.leaf.serial_number
            assert 1.0 <= proxy.renewal_delay() <= 2.0
            await get_json(f"http://{proxy.outbound_addresses[0]}")

            async def serving_a_new_certificate() -> bool:
                certs = json.loads(await admin_get(proxy, "/certs"))["certificates"]
                # Envoy prints the serial as hex of its bytes (a leading zero nibble kept): compare numbers.
                serials = {int(c["serial_number"], 16) for entry in certs for c in entry.get("cert_chain", [])}
                return first not in serials and bool(serials)

            await wait_until(serving_a_new_certificate, timeout=8, message="Envoy serving a renewed certificate")
            assert proxy.credentials.leaf.serial_number != first
            await get_json(f"http://{proxy.outbound_addresses[0]}")
    assert pod.count == 2


async def test_bytes_and_half_close_cross_the_tunnel_intact(tmp_path: Path) -> None:
    """The client's FIN reaches the app as EOF, the app's answer after it arrives whole, and the app's
    close reaches the client as EOF: an HTTP/1.0-style exchange works through HBONE."""
    mesh = Mesh(tmp_path)
    payload = os.urandom(4 * 1024 * 1024)
    tail = bytes(range(256)) * 1024

    async def app(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received = await reader.read()  # until the client's EOF
        writer.write(hashlib.sha256(received).digest() + tail)
        await writer.drain()
        writer.close()

    pod_ip = hbone_ip()
    server = await asyncio.start_server(app, pod_ip, 0)
    port = server.sockets[0].getsockname()[1]
    config = HboneConfig(outbound=(OutboundTunnel(ANY, Endpoint(pod_ip, port), Endpoint(pod_ip, 15008)),),
                         inbound=(InboundTerminator(Endpoint(pod_ip, 15008)),))
    try:
        async with hbone(config, mesh.issue(CLIENT_ID)) as proxy:
            listen = proxy.outbound_addresses[0]
            reader, writer = await asyncio.open_connection(listen.host, listen.port)
            writer.write(payload)
            writer.write_eof()
            answer = await asyncio.wait_for(reader.read(), 10)  # until the app's close arrives as EOF
            writer.close()
    finally:
        server.close()
        await server.wait_closed()
    assert answer == hashlib.sha256(payload).digest() + tail


class _RenewableFiles(FileCredentials):
    renewable = True


async def test_wait_ends_with_envoy_or_with_a_dead_renewer(tmp_path: Path) -> None:
    mesh = Mesh(tmp_path)
    files = mesh.issue(CLIENT_ID)
    config = HboneConfig(inbound=(InboundTerminator(Endpoint(hbone_ip(), 15008), Endpoint("127.0.0.1", 9)),))
    proxy = HboneProxy(config, _RenewableFiles(files.cert, files.key, files.root), concurrency=1)

    def broken(now: object = None) -> float:
        raise RuntimeError("bug in the renewal schedule")

    proxy.renewal_delay = broken  # type: ignore[method-assign]
    async with proxy:
        with pytest.raises(HboneError, match="bug in the renewal schedule"):
            await asyncio.wait_for(proxy.wait(), 5)
    # A stop() while someone waits is a normal end: wait() returns Envoy's exit code.
    proxy = HboneProxy(config, _RenewableFiles(files.cert, files.key, files.root), concurrency=1)
    proxy.renewal_delay = lambda now=None: 3600.0  # type: ignore[method-assign]
    await proxy.start()
    waiting = asyncio.create_task(proxy.wait())
    await asyncio.sleep(0.1)
    await proxy.stop()
    assert await asyncio.wait_for(waiting, 5) == 0


# ----------------------------------------------------------------------------- the CLI


@contextlib.asynccontextmanager
async def cli(args: list[str], workdir: Path) -> AsyncIterator[dict[str, list[str]]]:
    """``python -m istiod_lite.cli.hbone_cmd ARGS`` until it reports ready; SIGTERM and a clean exit after."""
    ready = workdir / "ready.json"
    workdir.mkdir(parents=True, exist_ok=True)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "istiod_lite.cli.hbone_cmd", *args, "--ready-file", str(ready),
        "--concurrency", "1", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        async def started() -> bool:
            if proc.returncode is not None:
                raise AssertionError(f"exited {proc.returncode}: {(await proc.stderr.read()).decode()}")  # type: ignore[union-attr]
            return ready.exists()

        await wait_until(started, timeout=15, message="hbone CLI ready")
        yield json.loads(ready.read_text())
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        out, err = await asyncio.wait_for(proc.communicate(), 10)
    assert proc.returncode == 0, err.decode()
    assert b"ready" in out
    assert not ready.exists()


async def test_cli_forward_with_ca_certificate_and_inbound_with_files(
        tmp_path: Path, backends_factory: BackendsFactory) -> None:
    pod = (await backends_factory(1, hosts=[hbone_ip()]))[0]
    async with ca_server(tmp_path) as ca:
        root = str(ca.root_file)
        # The destination "pod": its ztunnel's certificate comes from files, signed by the same CA.
        server = Mesh(tmp_path / "files", authority=ca.runtime.authority).issue(SERVER_ID)
        inbound = ["inbound", "--listen", pod.host, "--identity", "default/waypoint", *server.cli_args()]
        forward = ["forward", "--listen", "127.0.0.1:0", "--destination", f"{pod.host}:{pod.port}",
                   "--waypoint", pod.host, "--identity", "default/sleep", "--root-cert", root,
                   "--ca-address", ca.address, "--token-file", str(ca.token_file(tmp_path, "default", "sleep"))]
        async with cli(inbound, tmp_path / "in"), cli(forward, tmp_path / "out") as fwd:
            replies = await get_json(f"http://{fwd['outbound'][0]}", 3)
    assert [r["pod"] for r in replies] == [pod.name] * 3


async def test_cli_usage_errors_exit_2(tmp_path: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "istiod_lite.cli.hbone_cmd", "forward", "--waypoint", "127.0.1.1",
        "--listen", "127.0.0.1:0", "--destination", "127.10.0.1:80", "--root-cert", str(tmp_path / "r"),
        "--ca-address", "127.0.0.1:1", stderr=asyncio.subprocess.PIPE)
    _, err = await proc.communicate()
    assert proc.returncode == 2
    assert b"--token-file" in err


# ----------------------------------------------------------------------------- helpers


async def admin_get(proxy: HboneProxy, path: str) -> str:
    async with aiohttp.ClientSession() as http, http.get(f"http://{proxy.admin}{path}") as resp:
        return await resp.text()


async def admin_stats(proxy: HboneProxy) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in (await admin_get(proxy, "/stats")).splitlines():
        name, _, value = line.rpartition(": ")
        with contextlib.suppress(ValueError):
            out[name] = int(value)
    return out
