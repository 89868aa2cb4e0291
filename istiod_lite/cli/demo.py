"""``istiod-lite demo``: the whole product on a laptop in under a minute.

Starts the control plane on a YAML directory, a real Envoy waypoint per waypoint Gateway (with
the bootstrap ``istiod-lite waypoint bootstrap`` prints), a tiny HTTP "pod" for every Pod in the
config, then sends requests to each service's VIP through the waypoint and prints which pods
answered — e.g. the 80/20 canary of ``examples/bookinfo``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from aiohttp import ClientSession, ClientTimeout, web

from istiod_lite.agent.bootstrap import WaypointIdentity, waypoint_bootstrap
from istiod_lite.controlplane.app import ControlPlane, ControlPlaneOptions
from istiod_lite.envoy_binary import envoy_binary
from istiod_lite.model import ConfigSnapshot
from istiod_lite.model.core import Pod, Service
from istiod_lite.translator import find_waypoints
from istiod_lite.translator.endpoints import service_pods, target_port
from istiod_lite.translator.waypoints import bound_services


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


async def run_demo(config_dir: Path, requests: int = 200, keep_running: bool = False) -> int:
    cp = ControlPlane(ControlPlaneOptions(config_dir=config_dir, grpc_addr="127.0.0.1:0",
                                          monitoring_addr="127.0.0.1:0"))
    await cp.start()
    print(f"control plane: xDS on 127.0.0.1:{cp.grpc_port}; {len(cp.config)} resources loaded from {config_dir}")
    for err in cp.errors:
        print(f"  rejected: {err}")
    runners: list[web.AppRunner] = []
    envoys: list[subprocess.Popen[bytes]] = []
    workdir = Path(tempfile.mkdtemp(prefix="istiod-lite-demo-"))
    try:
        for (ip, port), pod in sorted(_pod_targets(cp.config).items()):
            runners.append(await _start_pod(pod, ip, port))
        print(f"pods: {len(runners)} demo HTTP servers on loopback")
        waypoints = find_waypoints(cp.config)
        for wp in waypoints:
            ip = wp.addresses[0] if wp.addresses else "127.0.1.1"
            ident = WaypointIdentity(name=wp.ref.name, namespace=wp.ref.namespace, ip=ip)
            boot = waypoint_bootstrap(ident, f"127.0.0.1:{cp.grpc_port}", admin_port=_free_port())
            path = workdir / f"{wp.ref.namespace}-{wp.ref.name}.json"
            path.write_text(json.dumps(boot))
            log = open(workdir / f"{wp.ref.namespace}-{wp.ref.name}.log", "wb")  # noqa: SIM115
            envoys.append(subprocess.Popen(
                [envoy_binary(), "-c", str(path), "--use-dynamic-base-id", "--log-level", "warning"],
                stdout=log, stderr=subprocess.STDOUT,
            ))
            print(f"waypoint {wp.ref}: real Envoy started (node {ident.node_id}), log {log.name}")
        async with ClientSession(timeout=ClientTimeout(total=10)) as http:
            for wp in waypoints:
                for svc in bound_services(cp.config, wp.ref):
                    for vip in svc.vips[:1]:
                        for p in svc.spec.ports:
                            await _wait_listening(vip, p.port)
                            counts: collections.Counter[str] = collections.Counter()
                            for _ in range(requests):
                                async with http.get(f"http://{vip}:{p.port}/") as resp:
                                    counts[resp.headers.get("x-pod", f"HTTP {resp.status}")] += 1
                            print(f"\n{svc.namespace}/{svc.name} ({vip}:{p.port}) via waypoint {wp.ref}, "
                                  f"{requests} requests:")
                            for name, n in sorted(counts.items()):
                                print(f"  {name:<28} {n:>5}  {100 * n / requests:5.1f}%  {'#' * (50 * n // requests)}")
        print(f"\nsee the Envoy config: istiod-lite translate --config {config_dir} --waypoint "
              f"{waypoints[0].ref if waypoints else 'NS/NAME'}")
        if keep_running:
            print("serving until Ctrl-C ...")
            await asyncio.Event().wait()
        return 0
    finally:
        for e in envoys:
            e.terminate()
        for e in envoys:
            with contextlib.suppress(subprocess.TimeoutExpired):
                e.wait(5)
        for r in runners:
            await r.cleanup()
        await cp.stop()
        sys.stdout.flush()
