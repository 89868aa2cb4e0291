"""``istiod-lite demo``: the whole product on a laptop in under a minute.

Starts the control plane on a YAML directory with its CA, a waypoint per waypoint Gateway (the
agent gets a certificate from the CA and runs a real Envoy fed over secure xDS), a tiny HTTP "pod"
for every Pod in the config (ambient pods behind a ztunnel stand-in on <podIP>:15008), then sends
requests to each service's VIP through a ztunnel stand-in that follows the control plane's ztunnel
xDS (``hbone.node``: the waypoint the service is bound to, over HBONE) and prints which pods
answered — e.g. the 80/20 canary of ``examples/bookinfo`` — and ends with ``explain service`` on the
canary: which waypoint serves it, and which config made the split.

Only the story goes to stdout: every component's log lines (and each Envoy's output) go to files in
a log directory named at the end, or to the terminal with ``--verbose``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
import logging
import shutil
import socket
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
from aiohttp import ClientError, ClientSession, ClientTimeout, web
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from istiod_lite.agent.bootstrap import WaypointIdentity
from istiod_lite.agent.runner import AgentConfig, EnvoySettings, WaypointAgent
from istiod_lite.ca.config import CaConfig
from istiod_lite.ca.keystore import ROOT_CERT
from istiod_lite.ca.runtime import CaRuntime
from istiod_lite.ca.tokens import create_token
from istiod_lite.controlplane.app import ControlPlane, ControlPlaneOptions
from istiod_lite.envoy_binary import envoy_binary
from istiod_lite.explain import explain_service
from istiod_lite.explain.render import service_text
from istiod_lite.hbone import Endpoint, FileCredentials, HboneConfig, HboneProxy, InboundTerminator
from istiod_lite.hbone.caclient import DEFAULT_CA_SERVER_NAME
from istiod_lite.hbone.node import HboneNode, NodeConfig
from istiod_lite.hbone.xdsclient import ztunnel_node
from istiod_lite.model import ConfigSnapshot
from istiod_lite.model.core import Pod, Service
from istiod_lite.translator import Waypoint, find_waypoints
from istiod_lite.translator.binding.waypoints import bound_services, is_ambient
from istiod_lite.translator.clusters.endpoints import service_pods, target_port


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _start_pod(pod: Pod, ip: str, port: int) -> web.AppRunner:
    async def handle(req: web.Request) -> web.Response:
        body = {"pod": pod.name, "namespace": pod.namespace, "labels": pod.metadata.labels, "path": req.path_qs}
        return web.json_response(body, headers={"x-pod": pod.name})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, ip, port).start()
    return runner


def _pod_targets(config: ConfigSnapshot) -> dict[tuple[str, int], Pod]:
    out: dict[tuple[str, int], Pod] = {}
    for svc in config.of_kind(Service):
        for pod in service_pods(config, svc):
            for p in svc.spec.ports:
                tp = target_port(pod, p)
                if tp and pod.ips and pod.ips[0].startswith("127."):
                    out.setdefault((pod.ips[0], tp), pod)
    return out


async def _wait_listening(ip: str, port: int, timeout: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            _, w = await asyncio.open_connection(ip, port)
            w.close()
            return
        except OSError:
            if loop.time() > deadline:
                raise TimeoutError(f"nothing listening on {ip}:{port} after {timeout}s") from None
            await asyncio.sleep(0.1)


def _pod_credentials(ca: CaRuntime, directory: Path, namespace: str, sa: str) -> FileCredentials:
    """A CA-issued workload certificate as files (what a ztunnel holds for its pods)."""
    key = ec.generate_private_key(ec.SECP256R1())
    spiffe = f"spiffe://cluster.local/ns/{namespace}/sa/{sa}"
    leaf = ca.authority.issue(key.public_key(), x509.UniformResourceIdentifier(spiffe), dt.timedelta(hours=4))
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "cert.pem").write_text(leaf + "".join(ca.authority.material.chain_tail_pem[:-1]))
    (directory / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                          serialization.NoEncryption()))
    (directory / "root.pem").write_text(ca.authority.material.root_pem)
    return FileCredentials(directory / "cert.pem", directory / "key.pem", directory / "root.pem")


@contextlib.asynccontextmanager
async def _client_node(cp: ControlPlane, ca_dir: Path, workdir: Path,
                       destinations: list[Endpoint]) -> AsyncIterator[HboneNode]:
    """The client's ztunnel stand-in, driven by ztunnel xDS on the secure port (a ztunnel's token
    and node id), with one local listener per service address the demo sends to."""
    assert cp.ca is not None
    token = create_token(ca_dir, "istio-system", "ztunnel")
    creds = grpc.ssl_channel_credentials(root_certificates=(ca_dir / ROOT_CERT).read_bytes())
    config = NodeConfig(node=ztunnel_node(pod="ztunnel-demo", ip="127.0.0.1", node_name="demo"),
                        routes=tuple((Endpoint("127.0.0.1", 0), d) for d in destinations))
    async with grpc.aio.secure_channel(f"127.0.0.1:{cp.secure_port}", creds,
                                       options=[("grpc.ssl_target_name_override", DEFAULT_CA_SERVER_NAME)]) as ch:
        node = HboneNode(config, _pod_credentials(cp.ca, workdir / "client", "default", "sleep"), ch,
                         metadata=(("authorization", f"Bearer {token}"),))
        await node.start()
        try:
            yield node
        finally:
            await node.stop()


@contextlib.contextmanager
def _logs_to(path: Path | None) -> Iterator[None]:
    """Route every log record to ``path`` (the terminal stays for the story) while the demo runs;
    None keeps the handlers as they are (``--verbose``)."""
    if path is None:
        yield
        return
    root = logging.getLogger()
    saved = root.handlers[:]
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.handlers = [handler]
    try:
        yield
    finally:
        root.handlers = saved
        handler.close()


def _explain_canary(config: ConfigSnapshot, config_dir: Path, shown: list[Service]) -> None:
    """``explain service`` on the first service shown whose routes come from config (the canary)."""
    for svc in shown:
        target = f"{svc.namespace}/{svc.name}"
        found = explain_service(config, target)
        if any(e.kind in ("VirtualService", "HTTPRoute") for x in found for e in x.applied):
            print(f"\nwhy: istiod-lite explain service {target} --config {config_dir}")
            print("".join(f"  {line}\n" for line in service_text(found).splitlines()), end="")
            return


async def run_demo(config_dir: Path, requests: int = 200, keep_running: bool = False, verbose: bool = False) -> int:
    log_dir = None if verbose else Path(tempfile.mkdtemp(prefix="istiod-lite-demo-logs-"))
    try:
        with _logs_to(log_dir / "istiod-lite.log" if log_dir else None):
            return await _run_demo(config_dir, requests, keep_running, log_dir)
    finally:
        if log_dir is not None:
            print(f"\nlogs: {log_dir} (istiod-lite.log: control plane, agent, hbone; *.envoy.log: each Envoy)")
            sys.stdout.flush()


async def _run_demo(config_dir: Path, requests: int, keep_running: bool, log_dir: Path | None) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="istiod-lite-demo-"))
    envoy_logs = log_dir or workdir
    ca_dir = workdir / "ca"
    cp = ControlPlane(ControlPlaneOptions(config_dir=config_dir, grpc_addr="", monitoring_addr="127.0.0.1:0",
                                          secure_grpc_addr="127.0.0.1:0", ca=CaConfig(ca_dir=ca_dir)))
    await cp.start()
    assert cp.ca is not None
    print(f"control plane: CA + secure xDS on 127.0.0.1:{cp.secure_port}; {len(cp.config)} resources loaded "
          f"from {config_dir}")
    for err in cp.errors:
        print(f"  rejected: {err}")
    runners: list[web.AppRunner] = []
    stack = contextlib.AsyncExitStack()
    try:
        targets = _pod_targets(cp.config)
        for (ip, port), pod in sorted(targets.items()):
            runners.append(await _start_pod(pod, ip, port))
        ambient = sorted({ip for (ip, _), pod in targets.items() if is_ambient(cp.config, pod)})
        print(f"pods: {len(runners)} demo HTTP servers on loopback ({len(ambient)} ambient, behind a ztunnel "
              "stand-in that terminates HBONE on <podIP>:15008)")
        if ambient:
            await stack.enter_async_context(HboneProxy(
                HboneConfig(inbound=tuple(InboundTerminator(Endpoint(ip, 15008)) for ip in ambient)),
                _pod_credentials(cp.ca, workdir / "pods", "default", "ztunnel"), concurrency=1))
        waypoints = find_waypoints(cp.config)
        tunnels: list[tuple[Waypoint, Service, str, int]] = []
        for wp in waypoints:
            ip = wp.addresses[0] if wp.addresses else "127.0.1.1"
            token = workdir / f"token-{wp.ref.namespace}-{wp.ref.name}"
            token.write_text(create_token(ca_dir, wp.ref.namespace, wp.ref.name))
            agent_dir = Path(tempfile.mkdtemp(prefix="wp-"))
            agent = WaypointAgent(AgentConfig(
                identity=WaypointIdentity(name=wp.ref.name, namespace=wp.ref.namespace, ip=ip),
                token_file=token, xds_address=f"127.0.0.1:{cp.secure_port}", ca_address=f"127.0.0.1:{cp.secure_port}",
                root_cert=ca_dir / ROOT_CERT, work_dir=agent_dir,
                envoy=EnvoySettings(binary=envoy_binary(), admin_port=_free_port(), concurrency=1,
                                    output_path=envoy_logs / f"{wp.ref.namespace}-{wp.ref.name}.envoy.log"),
            ))
            stop = asyncio.Event()
            task = asyncio.create_task(agent.run(stop))

            async def _stop(stop: asyncio.Event = stop, task: asyncio.Task[int] = task) -> None:
                stop.set()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(task, 15)

            stack.push_async_callback(_stop)
            print(f"waypoint {wp.ref}: the agent gets a CA certificate for spiffe://cluster.local/ns/"
                  f"{wp.ref.namespace}/sa/{wp.ref.name} and runs a real Envoy on {ip}:15008")
            for svc in bound_services(cp.config, wp.ref):
                for vip in svc.vips[:1]:
                    for p in svc.spec.ports:
                        tunnels.append((wp, svc, vip, p.port))
        if not tunnels:
            print("no service is bound to a waypoint: nothing to send")
            return 0
        node = await stack.enter_async_context(_client_node(
            cp, ca_dir, workdir, [Endpoint(vip, port) for _, _, vip, port in tunnels]))
        print("client: a ztunnel stand-in follows the control plane's ztunnel xDS and sends each service VIP "
              "where it says (here: to its waypoint, over HBONE: mTLS, HTTP/2 CONNECT)")
        shown: list[Service] = []
        async with ClientSession(timeout=ClientTimeout(total=10)) as http:
            for (wp, svc, vip, port), local in zip(tunnels, node.route_addresses, strict=True):
                hop = node.table.route(Endpoint(vip, port))
                counts: collections.Counter[str] = collections.Counter()
                await _wait_serving(http, f"http://{local}/")
                for _ in range(requests):
                    async with http.get(f"http://{local}/") as resp:
                        counts[resp.headers.get("x-pod", f"HTTP {resp.status}")] += 1
                via = f"via waypoint {wp.ref}" if hop is not None and hop.kind == "waypoint" and hop.peer is not None \
                    and hop.peer.host in wp.addresses else f"{hop.kind} via {hop.via}" if hop else "no route"
                print(f"\n{svc.namespace}/{svc.name} ({vip}:{port}) {via}, {requests} requests:")
                shown.append(svc)
                for name, n in sorted(counts.items()):
                    print(f"  {name:<28} {n:>5}  {100 * n / requests:5.1f}%  {'#' * (50 * n // requests)}")
        _explain_canary(cp.config, config_dir, shown)
        print(f"\nsee the Envoy config: istiod-lite translate --config {config_dir} --waypoint "
              f"{waypoints[0].ref if waypoints else 'NS/NAME'}")
        if keep_running:
            print("serving until Ctrl-C ...")
            await asyncio.Event().wait()
        return 0
    finally:
        await stack.aclose()
        for r in runners:
            await r.cleanup()
        await cp.stop()
        shutil.rmtree(workdir, ignore_errors=True)
        sys.stdout.flush()


async def _wait_serving(http: ClientSession, url: str, timeout: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            async with http.get(url) as resp:
                if resp.status == 200 and "x-pod" in resp.headers:
                    return
        except (OSError, TimeoutError, ClientError):
            pass
        if loop.time() > deadline:
            raise TimeoutError(f"no answer through the waypoint at {url} after {timeout}s")
        await asyncio.sleep(0.2)
