"""CUSTOM AuthorizationPolicies with real ext_authz servers, and dry-run policies, on a real waypoint.

The providers come from a typed MeshConfig (``extensionProviders``: ``envoyExtAuthzHttp`` and
``envoyExtAuthzGrpc``), as ``--mesh-config`` loads it.  Each server is a Kubernetes Service in
namespace ``authz`` (not served by the waypoint) whose pod is a real server on a loopback address
(``tests/support/extauthz.py``): the waypoint calls it through its ``outbound|<port>||<host>``
cluster.  The server decides (``x-ext-authz: allow``), and every decision is checked against what
the server saw.  A policy naming a provider the mesh config does not define denies everything it
selects.

Dry run (``istio.io/dry-run: "true"``): the policy is not enforced, but its result shows in Envoy's
RBAC stats under Istio's prefixes: ``http.<chain>.rbac.istio_dry_run_deny_.shadow_denied`` and so
on (this Envoy joins ``shadow_rules_stat_prefix`` and the counter with a dot).
"""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from istiod_lite.agent.runner import WaypointAgent
from istiod_lite.model.meshconfig import MeshConfig, parse_mesh_config
from tests.support.backends import BackendsFactory
from tests.support.envoy import parse_stats
from tests.support.extauthz import RESULT_HEADER, USER_HEADER, GrpcExtAuthz, HttpExtAuthz
from tests.support.mesh import ambient_mesh, exclusive_ip
from tests.support.meshyaml import documents, namespace, one_service_mesh, pod, service, waypoint_gateway
from tests.support.ports import alloc_vip
from tests.support.wait import wait_until

pytestmark = pytest.mark.e2e

HTTP_HOST = "ext-authz-http.authz.svc.cluster.local"
GRPC_HOST = "ext-authz-grpc.authz.svc.cluster.local"


def mesh_config() -> MeshConfig:
    return parse_mesh_config({"extensionProviders": [
        {"name": "http-authz", "envoyExtAuthzHttp": {
            "service": HTTP_HOST, "port": 8000, "pathPrefix": "/check", "timeout": "5s",
            "includeRequestHeadersInCheck": ["x-ext-authz", "x-user"],
            "headersToUpstreamOnAllow": [USER_HEADER], "headersToDownstreamOnDeny": [RESULT_HEADER]}},
        {"name": "grpc-authz", "envoyExtAuthzGrpc": {"service": f"authz/{GRPC_HOST}", "port": "9000",
                                                     "timeout": "5s"}},
    ]})


def custom(name: str, target: str, provider: str) -> str:
    return f"""apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: {name}, namespace: shop}}
spec:
  targetRefs: [{{kind: Service, group: "", name: {target}}}]
  action: CUSTOM
  provider: {{name: {provider}}}
  rules:
  - to: [{{operation: {{paths: ["/protected/*"]}}}}]
"""


async def call(addr: str, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str]]:
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http, \
                http.get(f"http://{addr}{path}", headers=headers or {}) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}
    except (aiohttp.ClientError, OSError, TimeoutError):
        return -1, {}


async def test_custom_http_and_grpc_providers_decide(tmp_path: Path, backends_factory: BackendsFactory) -> None:
    pods = await backends_factory(3, names=["cart-1", "inventory-1", "misc-1"])
    cart, inventory, misc = pods.pods
    wp = exclusive_ip()
    vips = {name: alloc_vip() for name in ("cart", "inventory", "misc", "ext-authz-http", "ext-authz-grpc")}
    cfg = tmp_path / "cfg"
    cfg.mkdir()
    async with HttpExtAuthz() as http_server, GrpcExtAuthz() as grpc_server:
        (cfg / "mesh.yaml").write_text(documents(
            namespace("shop"), waypoint_gateway("shop", wp), namespace("authz", waypoint=None),
            service("shop", "cart", vips["cart"], [("http", 8080, pods.port)]),
            service("shop", "inventory", vips["inventory"], [("http", 8080, pods.port)]),
            service("shop", "misc", vips["misc"], [("http", 8080, pods.port)]),
            pod("shop", "cart-1", cart.address[0], {"app": "cart"}),
            pod("shop", "inventory-1", inventory.address[0], {"app": "inventory"}),
            pod("shop", "misc-1", misc.address[0], {"app": "misc"}),
            service("authz", "ext-authz-http", vips["ext-authz-http"], [("http", 8000, http_server.port)]),
            pod("authz", "ext-authz-http-1", http_server.host, {"app": "ext-authz-http"}),
            service("authz", "ext-authz-grpc", vips["ext-authz-grpc"], [("grpc", 9000, grpc_server.port)]),
            pod("authz", "ext-authz-grpc-1", grpc_server.host, {"app": "ext-authz-grpc"})))
        (cfg / "policy.yaml").write_text(documents(
            custom("http-check", "cart", "http-authz"), custom("grpc-check", "inventory", "grpc-authz"),
            custom("nowhere", "misc", "not-in-mesh-config")))
        targets = [(vips[n], 8080) for n in ("cart", "inventory", "misc")]
        async with ambient_mesh(tmp_path, cfg, mesh=mesh_config()) as mesh, mesh.waypoint("shop", "waypoint", wp), \
                mesh.client(targets, wp, namespace="web", sa="frontend") as client:
            to_cart, to_inventory, to_misc = (client[t] for t in targets)
            allow = {"x-ext-authz": "allow", "x-user": "alice"}

            async def ready() -> bool:
                return (await call(to_cart, "/protected/a", allow))[0] == 200 and \
                    (await call(to_inventory, "/protected/a", allow))[0] == 200

            await wait_until(ready, timeout=30, message="both ext_authz providers allow")
            for server in (http_server, grpc_server):
                server.checks.clear()
            pods.reset()

            # HTTP provider: the server's answer decides; allowed headers reach the backend / client.
            status, _ = await call(to_cart, "/protected/a", allow)
            assert status == 200 and cart.requests[-1].header(USER_HEADER) == "alice"
            status, headers = await call(to_cart, "/protected/b", {"x-user": "mallory"})
            assert status == 403 and headers.get(RESULT_HEADER) == "denied"
            assert [(c.method, c.path, c.headers.get("x-user")) for c in http_server.checks] == [
                ("GET", "/check/protected/a", "alice"), ("GET", "/check/protected/b", "mallory")]
            # A path no CUSTOM rule selects is never sent to the server.
            assert (await call(to_cart, "/public"))[0] == 200
            assert len(http_server.checks) == 2

            # gRPC provider: the same decisions over envoy.service.auth.v3.Authorization/Check.
            status, _ = await call(to_inventory, "/protected/a", allow)
            assert status == 200 and inventory.requests[-1].header(USER_HEADER) == "alice"
            status, headers = await call(to_inventory, "/protected/b", {"x-user": "mallory"})
            assert status == 403 and headers.get(RESULT_HEADER) == "denied"
            assert [(c.method, c.path, c.headers.get("x-user")) for c in grpc_server.checks] == [
                ("GET", "/protected/a", "alice"), ("GET", "/protected/b", "mallory")]
            assert (await call(to_inventory, "/public"))[0] == 200
            assert len(grpc_server.checks) == 2
            assert not http_server.checks[2:]  # the gRPC-checked service never used the HTTP provider

            # Unknown provider: what the policy selects is denied; nothing is asked of any server.
            assert (await call(to_misc, "/protected/a", allow))[0] == 403
            assert (await call(to_misc, "/public"))[0] == 200
            assert len(http_server.checks) == 2 and len(grpc_server.checks) == 2
            assert [r.path for r in misc.requests] == ["/public"]
            assert [r.path for r in cart.requests] == ["/protected/a", "/public"]
            assert [r.path for r in inventory.requests] == ["/protected/a", "/public"]


DRY_RUN = """apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: {name}
  namespace: shop
  annotations: {{istio.io/dry-run: "true"}}
spec:
  targetRefs: [{{kind: Service, group: "", name: cart}}]
  action: {action}
  rules:
  - to: [{{operation: {{paths: ["{path}"]}}}}]
"""


async def rbac_stats(agent: WaypointAgent) -> dict[str, int]:
    port = agent.config.envoy.admin_port
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http, \
            http.get(f"http://127.0.0.1:{port}/stats?filter=rbac") as r:
        stats = parse_stats(await r.text())
    # Summed over the HTTP connection managers of the service's chains (names carry the port).
    out: dict[str, int] = {}
    for name, value in stats.items():
        _, sep, tail = name.partition(".rbac.")
        if sep and name.startswith("http."):
            out[tail] = out.get(tail, 0) + value
    return out


async def test_dry_run_is_not_enforced_but_counted(tmp_path: Path, backends_factory: BackendsFactory) -> None:
    pods = await backends_factory(1, names=["cart-1"])
    wp, vip = exclusive_ip(), alloc_vip()
    cfg = tmp_path / "cfg"
    cfg.mkdir()
    (cfg / "mesh.yaml").write_text(one_service_mesh("shop", "cart", wp, vip, 8080, pods.port, pods.pods[0].address[0]))
    # DENY /admin and ALLOW only /ok, both dry-run: nothing is enforced.
    (cfg / "policy.yaml").write_text(documents(DRY_RUN.format(name="deny-admin", action="DENY", path="/admin"),
                                               DRY_RUN.format(name="allow-ok", action="ALLOW", path="/ok")))
    async with ambient_mesh(tmp_path, cfg) as mesh, mesh.waypoint("shop", "waypoint", wp) as agent, \
            mesh.client([(vip, 8080)], wp) as client:
        addr = client[(vip, 8080)]

        async def shadow_rules_loaded() -> bool:
            try:
                return "istio_dry_run_deny_.shadow_denied" in await rbac_stats(agent)
            except (aiohttp.ClientError, OSError):  # Envoy (and its admin port) not started yet
                return False

        await wait_until(shadow_rules_loaded, timeout=30, message="dry-run RBAC filters in the waypoint")

        async def served() -> bool:
            return (await call(addr, "/ok"))[0] == 200

        await wait_until(served, timeout=30, message="traffic through the waypoint")
        before = await rbac_stats(agent)
        results = [(await call(addr, p))[0] for p in ("/admin", "/admin", "/ok", "/other")]
        assert results == [200, 200, 200, 200]  # not enforced
        after = await rbac_stats(agent)
        delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
        # DENY dry-run: /admin matched twice (shadow denied), /ok and /other did not.
        assert delta["istio_dry_run_deny_.shadow_denied"] == 2
        assert delta["istio_dry_run_deny_.shadow_allowed"] == 2
        # ALLOW dry-run: only /ok would have been allowed.
        assert delta["istio_dry_run_allow_.shadow_allowed"] == 1
        assert delta["istio_dry_run_allow_.shadow_denied"] == 3
        # Nothing enforcing was evaluated as a denial.
        assert delta.get("denied", 0) == 0
        assert [r.path for r in pods.pods[0].requests][-4:] == ["/admin", "/admin", "/ok", "/other"]
