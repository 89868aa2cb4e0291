"""A real grpcio proxyless client (``xds:///HOST:PORT``) calls real gRPC backends using our config,
and follows an endpoint change without a restart."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import pytest

from tests.support.controlplane import control_plane
from tests.support.grpc_echo import EchoServer

pytestmark = pytest.mark.e2e

CONFIG = """apiVersion: v1
kind: Service
metadata: {{name: echo, namespace: grpc-demo}}
spec:
  clusterIP: 127.10.9.1
  selector: {{app: echo}}
  ports: [{{name: grpc, port: 7070, targetPort: {port}}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: echo-1, namespace: grpc-demo, labels: {{app: echo}}}}
status: {{podIP: {ip}}}
"""


async def test_proxyless_client_follows_endpoint_change(tmp_path: Path) -> None:
    a, b = EchoServer("echo-a", "127.0.9.1"), EchoServer("echo-b", "127.0.9.2")
    await a.start()
    await b.start(a.port)  # same port on another loopback address, as two pods would have
    cfg = tmp_path / "cfg"
    cfg.mkdir()
    (cfg / "echo.yaml").write_text(CONFIG.format(ip="127.0.9.1", port=a.port))
    try:
        async with control_plane(cfg) as cp:
            bootstrap = tmp_path / "bootstrap.json"
            bootstrap.write_text(json.dumps({
                "xds_servers": [{"server_uri": f"127.0.0.1:{cp.grpc_port}", "channel_creds": [{"type": "insecure"}],
                                 "server_features": ["xds_v3"]}],
                "node": {"id": "sidecar~127.0.9.100~client-1.grpc-demo~grpc-demo.svc.cluster.local",
                         "metadata": {"GENERATOR": "grpc", "NAMESPACE": "grpc-demo"}},
            }))
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "tests.support.grpc_echo", "client",
                "xds:///echo.grpc-demo.svc.cluster.local:7070", "400", "0.05",
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                env={**os.environ, "GRPC_XDS_BOOTSTRAP": str(bootstrap)}, cwd=Path(__file__).parents[2],
            )
            assert proc.stdout is not None
            seen: list[str] = []
            try:
                async def next_line() -> str:
                    assert proc.stdout is not None
                    return (await asyncio.wait_for(proc.stdout.readline(), 15)).decode().strip()

                for _ in range(5):
                    seen.append(await next_line())
                assert seen == ["echo-a"] * 5, seen
                (cfg / "echo.yaml").write_text(CONFIG.format(ip="127.0.9.2", port=a.port))
                for _ in range(200):
                    line = await next_line()
                    seen.append(line)
                    if line == "echo-b":
                        break
                assert seen[-1] == "echo-b", seen[-20:]
                assert b.calls >= 1
            finally:
                proc.kill()
                _, err = await proc.communicate()
                if seen[-1:] != ["echo-b"]:
                    print(err.decode()[-3000:])
    finally:
        await a.stop()
        await b.stop()
