"""The scale mesh (issue 13, item 5) as a directory of YAML files: one waypoint serving every service.

Shared by ``bench/bench_scale.py`` (10,000 services) and the bounded scale test (a few thousand), so
both load the very same shape: per service a Service, two Pods (``version: v1``/``v2``; the pods of
every other service carry ``istio.io/dataplane-mode: ambient``), a DestinationRule with two subsets
and a VirtualService splitting 90/10 between them.  Services are spread over ``namespaces``
namespaces, each bound to the one waypoint in namespace ``waypoint`` (its HBONE listener allows
every namespace).  Objects are written in files of ``per_file`` services per kind and namespace,
as a repository of manifests would be, so no file gets big (10,000 services: ~100 files, each well
under 1 MB).

Written as text, not through a YAML emitter: generating 50,000 documents with ``yaml.safe_dump``
would take longer than loading them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

WAYPOINT_NAMESPACE = "waypoint"
WAYPOINT_NAME = "waypoint"
WAYPOINT_IP = "127.0.1.1"
PORT = 8080
AMBIENT = "istio.io/dataplane-mode: ambient"


@dataclass(frozen=True)
class ScaleMesh:
    """What was written: enough for a checker to know what every service must get."""

    services: int
    namespaces: int
    files: int
    bytes: int
    largest_file: int

    def namespace_of(self, i: int) -> str:
        return namespace_of(i, self.namespaces)


def namespace_of(i: int, namespaces: int) -> str:
    return f"ns-{i % namespaces}"


def service_vip(i: int) -> str:
    return f"10.96.{i // 250}.{i % 250 + 1}"


def pod_ip(i: int, version: int) -> str:
    return f"10.{version + 1}.{i // 250}.{i % 250 + 1}"


def _service(i: int, ns: str) -> str:
    return f"""apiVersion: v1
kind: Service
metadata:
  name: svc-{i}
  namespace: {ns}
  labels: {{app: svc-{i}}}
spec:
  clusterIP: {service_vip(i)}
  selector: {{app: svc-{i}}}
  ports:
  - {{name: http, port: {PORT}, targetPort: 9080, protocol: TCP}}
---
"""


def _pods(i: int, ns: str) -> str:
    ambient = f", {AMBIENT}" if i % 2 == 0 else ""
    return "".join(f"""apiVersion: v1
kind: Pod
metadata:
  name: svc-{i}-v{v}
  namespace: {ns}
  labels: {{app: svc-{i}, version: v{v}{ambient}}}
spec:
  serviceAccountName: svc-{i}
  containers: [{{name: app, image: example/app:1.0, ports: [{{containerPort: 9080}}]}}]
status:
  phase: Running
  podIP: {pod_ip(i, v)}
---
""" for v in (1, 2))


def _destination_rule(i: int, ns: str) -> str:
    return f"""apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: svc-{i}
  namespace: {ns}
spec:
  host: svc-{i}.{ns}.svc.cluster.local
  trafficPolicy:
    connectionPool: {{http: {{http1MaxPendingRequests: 100}}}}
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
---
"""


def _virtual_service(i: int, ns: str) -> str:
    return f"""apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: svc-{i}
  namespace: {ns}
spec:
  hosts: [svc-{i}.{ns}.svc.cluster.local]
  http:
  - route:
    - {{destination: {{host: svc-{i}.{ns}.svc.cluster.local, subset: v1}}, weight: 90}}
    - {{destination: {{host: svc-{i}.{ns}.svc.cluster.local, subset: v2}}, weight: 10}}
    timeout: 5s
---
"""


_KINDS = (("services", _service), ("pods", _pods), ("destinationrules", _destination_rule),
          ("virtualservices", _virtual_service))


def _header(namespaces: int) -> str:
    docs = [f"""apiVersion: v1
kind: Namespace
metadata:
  name: {WAYPOINT_NAMESPACE}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: {WAYPOINT_NAME}
  namespace: {WAYPOINT_NAMESPACE}
spec:
  gatewayClassName: istio-waypoint
  addresses: [{{type: IPAddress, value: {WAYPOINT_IP}}}]
  listeners:
  - {{name: mesh, port: 15008, protocol: HBONE, allowedRoutes: {{namespaces: {{from: All}}}}}}
---
"""]
    for n in range(namespaces):
        docs.append(f"""apiVersion: v1
kind: Namespace
metadata:
  name: ns-{n}
  labels: {{istio.io/use-waypoint: {WAYPOINT_NAME}, istio.io/use-waypoint-namespace: {WAYPOINT_NAMESPACE}}}
---
""")
    return "".join(docs)


def write_scale_mesh(root: Path, services: int, *, namespaces: int = 10, per_file: int = 500) -> ScaleMesh:
    """Write the mesh under ``root`` (which must exist): ``00-mesh.yaml`` with the namespaces and the
    waypoint, then ``ns-N/<kind>-<chunk>.yaml`` files of at most ``per_file`` services each."""
    namespaces = max(1, min(namespaces, services))
    sizes = [_write(root / "00-mesh.yaml", _header(namespaces))]
    for n in range(namespaces):
        ns = f"ns-{n}"
        members = list(range(n, services, namespaces))
        (root / ns).mkdir(exist_ok=True)
        for start in range(0, len(members), per_file):
            chunk = members[start:start + per_file]
            for kind, render in _KINDS:
                path = root / ns / f"{kind}-{start // per_file:03d}.yaml"
                sizes.append(_write(path, "".join(render(i, ns) for i in chunk)))
    return ScaleMesh(services, namespaces, len(sizes), sum(sizes), max(sizes))


def _write(path: Path, text: str) -> int:
    data = text.encode()
    path.write_bytes(data)
    return len(data)
