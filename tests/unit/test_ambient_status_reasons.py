"""Every reason translator/ambient_status.py gives, from a snapshot (no cluster): the binding's
verdicts for Services/ServiceEntries, the AuthorizationPolicy target checks and their folding, and
the HTTPRoute parent conditions."""

from __future__ import annotations

from typing import Any

import yaml

from istiod_lite.model import ConfigSnapshot, parse_object
from istiod_lite.translator.ambient_status import ObjectStatus, ambient_status

BASE = """
apiVersion: v1
kind: Namespace
metadata: {name: app}
---
apiVersion: v1
kind: Namespace
metadata: {name: other, labels: {istio.io/use-waypoint: wp, istio.io/use-waypoint-namespace: app}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: istio-waypoint}
spec: {controllerName: istio.io/mesh-controller}
---
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: not-waypoint}
spec: {controllerName: example.com/other}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: wp, namespace: app}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: wl, namespace: app, labels: {istio.io/waypoint-for: workload}}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
---
apiVersion: v1
kind: Service
metadata: {name: bound, namespace: app, labels: {istio.io/use-waypoint: wp}}
spec: {ports: [{name: http, port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: for-workloads, namespace: app, labels: {istio.io/use-waypoint: wl}}
spec: {ports: [{name: http, port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: plain, namespace: app}
spec: {ports: [{name: http, port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: denied, namespace: other}
spec: {ports: [{name: http, port: 80}]}
"""


def statuses(extra: str = "", root: str = "istio-system") -> dict[tuple[str, str, str], ObjectStatus]:
    docs: list[Any] = [d for d in yaml.safe_load_all(BASE + "---\n" + extra) if d]
    return ambient_status(ConfigSnapshot.build([parse_object(d) for d in docs]), root)


def cond(s: dict[tuple[str, str, str], ObjectStatus], kind: str, ns: str, name: str) -> tuple[bool, str, str]:
    (c,) = s[(kind, ns, name)].conditions
    return c.status, c.reason, c.message


def test_waypoint_bound_reasons() -> None:
    s = statuses()
    assert cond(s, "Service", "app", "bound")[:2] == (True, "WaypointAccepted")
    assert cond(s, "Service", "app", "for-workloads")[:2] == (False, "UnsupportedTrafficType")
    # Inherited from its namespace, naming a waypoint in "app" whose listener allows Same only.
    assert cond(s, "Service", "other", "denied")[:2] == (False, "AttachmentDenied")
    assert ("Service", "app", "plain") not in s  # asks for nothing: no condition (cleared if there)
    gw = cond(s, "Gateway", "app", "wp")
    assert gw == (True, "AttachedServices", "1 service(s) attached: Service app/bound")


def test_authorization_policy_targets_and_folding() -> None:
    extra = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: mixed, namespace: app}
spec:
  targetRefs:
  - {kind: Service, group: "", name: bound}
  - {kind: Service, group: "", name: plain}
  rules: [{}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: class-outside-root, namespace: app}
spec:
  targetRefs: [{kind: GatewayClass, group: gateway.networking.k8s.io, name: istio-waypoint}]
  rules: [{}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: class, namespace: istio-system}
spec:
  targetRefs: [{kind: GatewayClass, group: gateway.networking.k8s.io, name: not-waypoint}]
  rules: [{}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: unbound, namespace: app}
spec:
  targetRefs: [{kind: Service, group: "", name: plain}]
  rules: [{}]
"""
    s = statuses(extra)
    status, reason, message = cond(s, "AuthorizationPolicy", "app", "mixed")
    assert (status, reason) == (True, "PartiallyInvalid") and "Service.core:app/plain" in message
    assert cond(s, "AuthorizationPolicy", "app", "class-outside-root")[:2] == (False, "Invalid")
    assert cond(s, "AuthorizationPolicy", "istio-system", "class")[:2] == (False, "Invalid")
    assert cond(s, "AuthorizationPolicy", "app", "unbound")[:2] == (False, "AncestorNotBound")


def test_route_parents() -> None:
    extra = """
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r, namespace: app}
spec:
  parentRefs:
  - {group: "", kind: Service, name: gone}
  - {group: "", kind: Service, name: plain}
  - {name: some-gateway}
  rules: [{backendRefs: [{name: bound, port: 80}]}]
"""
    (entry,) = [v for k, v in statuses(extra).items() if k[0] == "HTTPRoute"]
    by_name = {p.parent_ref["name"]: {c.type: (c.status, c.reason, c.message) for c in p.conditions}
               for p in entry.parents}
    assert set(by_name) == {"gone", "plain"}  # a Gateway parent is not a mesh parent: not ours
    assert by_name["gone"]["Accepted"][:2] == (False, "NoMatchingParent")
    assert by_name["plain"]["Accepted"][:2] == (True, "Accepted")
    assert by_name["plain"]["ResolvedRefs"][:2] == (True, "ResolvedRefs")
    status, reason, message = by_name["plain"]["ResolvedWaypoints"]
    assert (status, reason) == (True, "ResolvedWaypoints") and "istio.io/use-waypoint" in message
