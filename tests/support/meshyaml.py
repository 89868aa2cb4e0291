"""YAML builders for the config directories that real-traffic tests write.

Every such test needs the same few objects (a namespace bound to a waypoint, the waypoint's
Gateway, Services and Pods on loopback addresses); building them here keeps each test down to
the objects its behaviour is about.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import yaml


def _doc(obj: Mapping[str, object]) -> str:
    return yaml.safe_dump(obj, sort_keys=False, default_flow_style=None)


def namespace(name: str, waypoint: str | None = "waypoint", *, ambient: bool = False,
              labels: Mapping[str, str] | None = None) -> str:
    lab = dict(labels or {})
    if waypoint:
        lab["istio.io/use-waypoint"] = waypoint
    if ambient:
        lab["istio.io/dataplane-mode"] = "ambient"
    return _doc({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": lab}})


def waypoint_gateway(namespace: str, ip: str, name: str = "waypoint", *, labels: Mapping[str, str] | None = None,
                     allowed_from: str | None = None) -> str:
    listener: dict[str, object] = {"name": "mesh", "port": 15008, "protocol": "HBONE"}
    if allowed_from:
        listener["allowedRoutes"] = {"namespaces": {"from": allowed_from}}
    return _doc({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
                 "metadata": {"name": name, "namespace": namespace, "labels": dict(labels or {})},
                 "spec": {"gatewayClassName": "istio-waypoint", "addresses": [{"type": "IPAddress", "value": ip}],
                          "listeners": [listener]}})


def service(namespace: str, name: str, vip: str, ports: Sequence[tuple[str, int, int]], *,
            selector: Mapping[str, str] | None = None, labels: Mapping[str, str] | None = None) -> str:
    """``ports``: (name, port, targetPort)."""
    return _doc({"apiVersion": "v1", "kind": "Service",
                 "metadata": {"name": name, "namespace": namespace, "labels": dict(labels or {})},
                 "spec": {"clusterIP": vip, "selector": dict(selector or {"app": name}),
                          "ports": [{"name": n, "port": p, "targetPort": t} for n, p, t in ports]}})


def pod(namespace: str, name: str, ip: str, labels: Mapping[str, str], *, ambient: bool = False,
        ready: bool = True) -> str:
    lab = dict(labels)
    if ambient:
        lab["istio.io/dataplane-mode"] = "ambient"
    status: dict[str, object] = {"podIP": ip}
    if not ready:
        status["conditions"] = [{"type": "Ready", "status": "False"}]
    return _doc({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace, "labels": lab},
                 "status": status})


def documents(*docs: str) -> str:
    return "---\n".join(docs)


#: Namespace ``app`` bound to waypoint ``app/waypoint`` at 127.0.1.1 (for translator unit tests that
#: only look at config), followed by a document separator.
APP_WAYPOINT = documents(namespace("app"), waypoint_gateway("app", "127.0.1.1")) + "---\n"

#: A ``str.format`` template: namespace ``shop`` bound to waypoint ``shop/waypoint`` at ``{wp}``,
#: followed by a document separator (real-traffic tests prepend it to their own templates).
SHOP_WAYPOINT = """apiVersion: v1
kind: Namespace
metadata: {{name: shop, labels: {{istio.io/use-waypoint: waypoint}}}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: waypoint, namespace: shop}}
spec:
  gatewayClassName: istio-waypoint
  addresses: [{{type: IPAddress, value: {wp}}}]
  listeners: [{{name: mesh, port: 15008, protocol: HBONE}}]
---
"""


def one_service_mesh(ns: str, svc: str, wp: str, vip: str, port: int, target_port: int, pod_ip: str) -> str:
    """A namespace bound to its waypoint at ``wp``, with one HTTP Service ``svc`` on ``vip:port``
    and its one pod ``<svc>-1`` (label ``app: <svc>``) at ``pod_ip:target_port``."""
    return documents(namespace(ns), waypoint_gateway(ns, wp), service(ns, svc, vip, [("http", port, target_port)]),
                     pod(ns, f"{svc}-1", pod_ip, {"app": svc}))


def versioned_service(name: str, port_name: str, port: int, *, vip: str = "vip", target: str = "port",
                      ips: tuple[str, str] = ("ip1", "ip2")) -> str:
    """A ``str.format`` template (to follow ``SHOP_WAYPOINT``): Service ``shop/<name>`` on ``{<vip>}:port``
    (target port ``{<target>}``), pods ``<name>-v1`` and ``<name>-v2`` (labels app and version) at
    ``{<ips[0]>}`` and ``{<ips[1]>}``, and a DestinationRule with subsets v1 and v2."""
    return f"""apiVersion: v1
kind: Service
metadata: {{{{name: {name}, namespace: shop}}}}
spec:
  clusterIP: {{{vip}}}
  selector: {{{{app: {name}}}}}
  ports: [{{{{name: {port_name}, port: {port}, targetPort: {{{target}}}}}}}]
---
apiVersion: v1
kind: Pod
metadata: {{{{name: {name}-v1, namespace: shop, labels: {{{{app: {name}, version: v1}}}}}}}}
status: {{{{podIP: {{{ips[0]}}}}}}}
---
apiVersion: v1
kind: Pod
metadata: {{{{name: {name}-v2, namespace: shop, labels: {{{{app: {name}, version: v2}}}}}}}}
status: {{{{podIP: {{{ips[1]}}}}}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{{{name: {name}, namespace: shop}}}}
spec:
  host: {name}
  subsets:
  - {{{{name: v1, labels: {{{{version: v1}}}}}}}}
  - {{{{name: v2, labels: {{{{version: v2}}}}}}}}
"""
