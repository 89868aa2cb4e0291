"""Benchmark: parse + validate a large config directory (foundation issue).

Generates 1000 Services, 2000 Pods, 1000 VirtualServices and 1000 DestinationRules as YAML files
in a temporary directory, then times ``DirectorySource.load()`` (read, YAML parse, validation,
snapshot build).  Prints wall time per run and peak RSS.  Target: <= 1.5 s on 2 cores.

    python bench/bench_model_parse.py [--services 1000] [--runs 3]
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

from istiod_lite.sources import DirectorySource


def service_docs(i: int, ns: str) -> str:
    return f"""apiVersion: v1
kind: Service
metadata: {{name: svc-{i}, namespace: {ns}, labels: {{app: svc-{i}}}}}
spec:
  clusterIP: 127.10.{i // 250}.{i % 250 + 1}
  selector: {{app: svc-{i}}}
  ports:
  - {{name: http, port: 8080, targetPort: 8080}}
---
""" + "".join(
        f"""apiVersion: v1
kind: Pod
metadata:
  name: svc-{i}-v{v}-abc{v}
  namespace: {ns}
  labels: {{app: svc-{i}, version: v{v}}}
spec:
  serviceAccountName: svc-{i}
  containers:
  - name: app
    image: example/app:1.0
    ports: [{{containerPort: 8080, name: http}}]
    resources: {{requests: {{cpu: 10m, memory: 32Mi}}}}
    readinessProbe: {{httpGet: {{path: /healthz, port: 8080}}}}
status:
  podIP: 127.0.{2 + (2 * i + v) // 250}.{(2 * i + v) % 250 + 1}
  phase: Running
---
"""
        for v in (1, 2)
    ) + f"""apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: svc-{i}, namespace: {ns}}}
spec:
  host: svc-{i}
  trafficPolicy:
    connectionPool: {{http: {{http1MaxPendingRequests: 100}}}}
    outlierDetection: {{consecutive5xxErrors: 5, interval: 10s, baseEjectionTime: 30s}}
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: svc-{i}, namespace: {ns}}}
spec:
  hosts: [svc-{i}]
  http:
  - match:
    - uri: {{prefix: /api/v2}}
      headers: {{x-canary: {{exact: "true"}}}}
    route:
    - destination: {{host: svc-{i}, subset: v2}}
    timeout: 2s
    retries: {{attempts: 3, perTryTimeout: 500ms, retryOn: "5xx,connect-failure"}}
  - route:
    - destination: {{host: svc-{i}, subset: v1}}
      weight: 90
    - destination: {{host: svc-{i}, subset: v2}}
      weight: 10
---
"""


def generate(root: Path, services: int, namespaces: int = 50) -> int:
    per_file = 100
    docs = 0
    for start in range(0, services, per_file):
        with open(root / f"mesh-{start:05d}.yaml", "w") as f:
            for i in range(start, min(start + per_file, services)):
                f.write(service_docs(i, f"ns-{i % namespaces}"))
                docs += 5
    return docs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--services", type=int, default=1000)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        docs = generate(root, args.services)
        size = sum(p.stat().st_size for p in root.iterdir())
        print(f"generated {docs} documents ({args.services} Services, {2 * args.services} Pods, "
              f"{args.services} VirtualServices, {args.services} DestinationRules), {size / 1e6:.1f} MB")
        times = []
        for run in range(args.runs):
            t0 = time.perf_counter()
            update = DirectorySource(root).load()
            dt = time.perf_counter() - t0
            times.append(dt)
            print(f"run {run + 1}: {dt:.3f} s  ({len(update.snapshot)} resources, {len(update.errors)} errors)")
            if update.errors:
                print("  first error:", update.errors[0])
        rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"best {min(times):.3f} s, median {sorted(times)[len(times) // 2]:.3f} s, peak RSS {rss_mb:.0f} MB "
              f"(target <= 1.5 s)")


if __name__ == "__main__":
    main()
