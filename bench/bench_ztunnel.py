"""Node proxies at scale: the reference mesh (1000 services, 2000 pods) served to N ztunnel-like clients.

    PYTHONPATH=. python bench/bench_ztunnel.py [--services 1000] [--clients 100]

Runs the real control plane in process (plaintext ADS port) and N clients speaking Delta xDS as
ztunnel does (``tests/support/ztunnelclient.py``: wildcard Address + Authorization, every
resource decoded with the compiled protos, ACKed).  Prints: the initial sync time (first request
to the last client holding everything), bytes per client and in total, then the bytes each client
receives for one pod change (target: <= 2 KB) and how long that change took to reach them all.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support.controlplane import control_plane
from tests.support.scalemesh import write_scale_mesh
from tests.support.ztunnelclient import ADDRESS, AUTHORIZATION, ZtunnelClient, ztunnel_node

POD = """apiVersion: v1
kind: Pod
metadata: {{name: bench-pod, namespace: ns-0, labels: {{app: svc-0, version: {version}}}}}
spec: {{serviceAccountName: svc-0}}
status: {{podIP: 10.250.0.1, phase: Running}}
"""


async def _initial(zt: ZtunnelClient) -> int:
    """Bytes of the first Address and Authorization responses (the initial sync)."""
    a = await zt.next(ADDRESS, timeout=120)
    b = await zt.next(AUTHORIZATION, timeout=120)
    return a.wire_bytes + b.wire_bytes


async def run(services: int, clients: int) -> None:
    with tempfile.TemporaryDirectory(prefix="bench_ztunnel_") as tmp:
        root = Path(tmp)
        mesh = write_scale_mesh(root, services)
        (root / "bench-pod.yaml").write_text(POD.format(version="v1"))
        async with control_plane(root, quiet=0.05) as cp:
            channels = [grpc.aio.insecure_channel(f"127.0.0.1:{cp.grpc_port}",
                                                  options=[("grpc.max_receive_message_length", 64 << 20)])
                        for _ in range(min(clients, 10))]
            zts = [ZtunnelClient(channels[i % len(channels)], node=ztunnel_node(pod=f"ztunnel-{i}",
                                                                              ip=f"10.0.{i // 250}.{i % 250 + 1}"))
                   for i in range(clients)]
            t0 = time.perf_counter()
            for zt in zts:
                await zt.connect()
            sizes = await asyncio.gather(*(_initial(zt) for zt in zts))
            t_sync = time.perf_counter() - t0
            held = len(zts[0].held[ADDRESS])
            print(f"mesh: {mesh.services} services, {2 * mesh.services + 1} pods; {clients} node proxies")
            print(f"initial sync: {t_sync:.2f} s for all {clients} clients ({held} addresses, "
                  f"{len(zts[0].held[AUTHORIZATION])} policies each)")
            print(f"initial bytes: {sizes[0] / 1e6:.2f} MB per client, {sum(sizes) / 1e6:.1f} MB total")

            (root / "bench-pod.yaml").write_text(POD.format(version="v2"))
            t1 = time.perf_counter()
            changes = await asyncio.gather(*(zt.next(ADDRESS, timeout=60) for zt in zts))
            t_change = time.perf_counter() - t1
            per = sorted(c.wire_bytes for c in changes)
            names = {n for c in changes for n in c.resources}
            print(f"one pod change: {per[-1]} bytes per client (max; min {per[0]}), resources {sorted(names)}, "
                  f"{sum(per) / 1e3:.1f} KB total; reached all clients in {t_change:.2f} s "
                  f"(includes the source's poll and debounce)")
            print(f"target <= 2 KB per node proxy: {'met' if per[-1] <= 2048 else 'NOT met'}")
            for zt in zts:
                await zt.close()
            for ch in channels:
                await ch.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--services", type=int, default=1000)
    p.add_argument("--clients", type=int, default=100)
    args = p.parse_args()
    asyncio.run(run(args.services, args.clients))


if __name__ == "__main__":
    main()
