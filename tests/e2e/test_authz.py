"""L7 authorization on a real waypoint, with real identities: two clients with CA-issued
certificates (their HBONE peer identity reaches RBAC through filter state), policies attached by
targetRefs, changes applied without restarting Envoy."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest

from tests.support.backends import BackendsFactory
from tests.support.mesh import ambient_mesh, exclusive_ip
from tests.support.meshyaml import one_service_mesh
from tests.support.ports import alloc_vip
from tests.support.wait import wait_until

pytestmark = pytest.mark.e2e

ALLOW = """apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: allow, namespace: shop}}
spec:
  targetRefs: [{{kind: Service, group: "", name: cart}}]
  action: ALLOW
  rules:
  - from: [{{source: {{principals: [{principals}]}}}}]
    to: [{{operation: {{methods: [GET]}}}}]
"""

DENY_ADMIN = """apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: shop}
spec:
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]
  action: DENY
  rules:
  - to: [{operation: {paths: [/admin, "/admin/*"]}}]
"""


async def status(addr: str, path: str = "/", method: str = "GET") -> int:
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http, \
                http.request(method, f"http://{addr}{path}") as r:
            return r.status
    except (aiohttp.ClientError, OSError, TimeoutError):
        return -1


async def test_allow_by_principal_method_and_deny_path(tmp_path: Path, backends_factory: BackendsFactory) -> None:
    pods = await backends_factory(1, names=["cart-1"])
    wp, vip = exclusive_ip(), alloc_vip()
    cfg = tmp_path / "cfg"
    cfg.mkdir()
    (cfg / "mesh.yaml").write_text(one_service_mesh("shop", "cart", wp, vip, 8080, pods.port, pods.pods[0].address[0]))
    (cfg / "policy.yaml").write_text(ALLOW.format(principals="cluster.local/ns/web/sa/frontend"))
    async with ambient_mesh(tmp_path, cfg) as mesh, mesh.waypoint("shop", "waypoint", wp) as agent, \
            mesh.client([(vip, 8080)], wp, namespace="web", sa="frontend") as frontend, \
            mesh.client([(vip, 8080)], wp, namespace="other", sa="intruder") as intruder:
        good, bad = frontend[(vip, 8080)], intruder[(vip, 8080)]

        async def allowed() -> bool:
            return await status(good) == 200

        await wait_until(allowed, timeout=30, message="frontend allowed through the waypoint")
        assert await status(bad) == 403  # RBAC: another peer identity
        assert await status(good, method="POST") == 403  # allowed identity, method not allowed
        envoy_pid = _pid(agent)

        # Widen the policy: the intruder's identity is now allowed too — no Envoy restart.
        (cfg / "policy.yaml").write_text(ALLOW.format(
            principals="cluster.local/ns/web/sa/frontend, cluster.local/ns/other/sa/intruder"))

        async def intruder_allowed() -> bool:
            return await status(bad) == 200

        await wait_until(intruder_allowed, timeout=15, message="policy change applied")
        # DENY /admin on every chain of the waypoint (Gateway targetRef), evaluated before ALLOW.
        (cfg / "deny.yaml").write_text(DENY_ADMIN)

        async def admin_denied() -> bool:
            return await status(good, "/admin") == 403

        await wait_until(admin_denied, timeout=15, message="DENY /admin applied")
        pods.reset()
        for path, want in (("/admin", 403), ("/admin/users", 403), ("/other", 200)):
            assert await status(good, path) == want, path
        await asyncio.sleep(0)
        assert _pid(agent) == envoy_pid
        # Denied requests never reached the pod; the allowed one did.
        assert [r.path for r in pods.pods[0].requests] == ["/other"]


def _pid(agent: object) -> object:
    sup = getattr(agent, "supervisor", None)
    return getattr(sup, "pid", None) if sup is not None else None


SOURCE_POLICY = """apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: allow, namespace: shop}}
spec:
  targetRefs: [{{kind: Service, group: "", name: cart}}]
  action: {action}
  rules:
  - {rule}
"""


async def status_with(addr: str, headers: dict[str, str]) -> int:
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http, \
                http.get(f"http://{addr}/", headers=headers) as r:
            return r.status
    except (aiohttp.ClientError, OSError, TimeoutError):
        return -1


async def test_allow_and_deny_by_namespace_service_account_trust_domain_port_and_header(
        tmp_path: Path, backends_factory: BackendsFactory) -> None:
    """One policy after another on a live waypoint, each checked with both real identities
    (``web/frontend`` and ``other/intruder``, trust domain cluster.local)."""
    pods = await backends_factory(1, names=["cart-1"])
    wp, vip = exclusive_ip(), alloc_vip()
    cfg = tmp_path / "cfg"
    cfg.mkdir()
    (cfg / "mesh.yaml").write_text(one_service_mesh("shop", "cart", wp, vip, 8080, pods.port, pods.pods[0].address[0]))
    steps = [  # (action, rule, frontend's status, intruder's status)
        ("ALLOW", "from: [{source: {namespaces: [web]}}]", 200, 403),
        ("ALLOW", "from: [{source: {serviceAccounts: [other/intruder]}}]", 403, 200),
        ("ALLOW", "from: [{source: {trustDomains: [cluster.local]}}]", 200, 200),
        ("ALLOW", "from: [{source: {trustDomains: [\"*.example\"]}}]", 403, 403),
        ("ALLOW", "to: [{operation: {ports: [\"8080\"]}}]", 200, 200),
        ("ALLOW", "to: [{operation: {ports: [\"9999\"]}}]", 403, 403),
        ("DENY", "from: [{source: {notNamespaces: [web]}}]", 200, 403),
    ]
    (cfg / "policy.yaml").write_text(SOURCE_POLICY.format(action=steps[0][0], rule=steps[0][1]))
    async with ambient_mesh(tmp_path, cfg) as mesh, mesh.waypoint("shop", "waypoint", wp), \
            mesh.client([(vip, 8080)], wp, namespace="web", sa="frontend") as frontend, \
            mesh.client([(vip, 8080)], wp, namespace="other", sa="intruder") as intruder:
        good, bad = frontend[(vip, 8080)], intruder[(vip, 8080)]
        for action, rule, want_good, want_bad in steps:
            (cfg / "policy.yaml").write_text(SOURCE_POLICY.format(action=action, rule=rule))

            async def applied(want: int = want_good) -> bool:
                return await status(good) == want

            await wait_until(applied, timeout=15, message=f"{action} {rule} applied")
            assert await status(bad) == want_bad, (action, rule)

        # DENY by a request header: only the requests carrying it are refused.
        (cfg / "policy.yaml").write_text(SOURCE_POLICY.format(
            action="DENY", rule="when: [{key: 'request.headers[x-block]', values: [\"yes\"]}]"))

        async def header_denied() -> bool:
            return await status_with(good, {"x-block": "yes"}) == 403

        await wait_until(header_denied, timeout=15, message="DENY by header applied")
        assert await status_with(good, {"x-block": "no"}) == 200
        assert await status_with(bad, {}) == 200
