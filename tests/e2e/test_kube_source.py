"""Config from a (fake) cluster reaches a waypoint's translated config, byte-identical to the YAML route.

The first tests check the control plane's own per-waypoint resources (``waypoint_resources(cp)``), which is
what every waypoint proxy of the group is served; the last runs a real waypoint (agent + Envoy,
certificate from a CA) against a control plane watching the fake cluster, while an invalid
VirtualService is rejected with a status condition and then fixed.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from istiod_lite.controlplane.app import ControlPlane, ControlPlaneOptions
from istiod_lite.controlplane.debounce import DebounceOptions
from istiod_lite.sources import KubeSourceOptions
from istiod_lite.translator.binding.waypoints import WaypointRef
from tests.support.controlplane import waypoint_resources
from tests.support.fakekube import FakeKubeApiServer

pytestmark = pytest.mark.e2e

BOOKINFO = Path(__file__).resolve().parents[2] / "examples" / "bookinfo"
WAYPOINT = WaypointRef("bookinfo", "waypoint")


def bookinfo_docs() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted(BOOKINFO.glob("*.yaml")):
        docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    return docs


@contextlib.asynccontextmanager
async def control_plane(config_dir: Path | None, kube: KubeSourceOptions | None) -> AsyncIterator[ControlPlane]:
    cp = ControlPlane(ControlPlaneOptions(
        config_dir=config_dir, kube=kube, grpc_addr="127.0.0.1:0", monitoring_addr="127.0.0.1:0",
        poll_interval=0.05, debounce=DebounceOptions(quiet=0.02, max_delay=1.0)))
    await cp.start()
    try:
        yield cp
    finally:
        await cp.stop(grace=0)


def versions(cp: ControlPlane) -> dict[str, dict[str, str]]:
    return {t: {r.name: r.version for r in items} for t, items in waypoint_resources(cp)[WAYPOINT].items()}


async def test_cluster_config_reaches_the_waypoint(tmp_path: Path) -> None:
    with FakeKubeApiServer() as kube:
        for doc in bookinfo_docs():
            kube.apply(doc)
        opts = KubeSourceOptions(kubeconfig=kube.write_kubeconfig(tmp_path / "kubeconfig"), sync_timeout=10.0,
                                 backoff_initial=0.05, backoff_max=0.2)
        async with control_plane(BOOKINFO, None) as from_files:
            expected = versions(from_files)
        async with control_plane(None, opts) as cp:
            assert cp.cache.ready and cp.errors == ()
            assert versions(cp) == expected  # same config, same bytes, whichever source it came from
            routes_before = versions(cp)
            vs = next(d for d in bookinfo_docs() if d["kind"] == "VirtualService")
            vs["spec"]["http"] = [{"route": [{"destination": {"host": vs["spec"]["hosts"][0]}, "weight": 100}],
                                   "timeout": "7s"}]
            while kube.open_watches() < len(opts.kinds):
                await asyncio.sleep(0.01)
            kube.apply(vs)
            deadline = time.monotonic() + 5
            while versions(cp) == routes_before:
                assert time.monotonic() < deadline, "the cluster change never reached the waypoint"
                await asyncio.sleep(0.02)
            kube.delete("gateway.networking.k8s.io/v1", "Gateway", "bookinfo", "waypoint")
            deadline = time.monotonic() + 5
            while WAYPOINT in waypoint_resources(cp):
                assert time.monotonic() < deadline, "deleting the Gateway never removed the waypoint"
                await asyncio.sleep(0.02)


async def envoy_config(admin_port: int) -> str:
    """Envoy's config dump ("" while the agent is still starting Envoy)."""
    try:
        async with (aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http,
                    http.get(f"http://127.0.0.1:{admin_port}/config_dump") as resp):
            return await resp.text() if resp.status == 200 else ""
    except (aiohttp.ClientError, TimeoutError):
        return ""


def rejection(kube: FakeKubeApiServer, name: str) -> dict[str, Any] | None:
    obj = kube.get("networking.istio.io/v1", "VirtualService", "bookinfo", name)
    assert obj is not None
    conds = [c for c in (obj.get("status") or {}).get("conditions") or [] if c.get("type") == "Accepted"]
    return conds[0] if conds else None


async def test_rejected_virtual_service_gets_a_condition_while_a_real_envoy_keeps_the_valid_config(
        tmp_path: Path) -> None:
    from istiod_lite.agent.bootstrap import WaypointIdentity
    from istiod_lite.agent.runner import AgentConfig, EnvoySettings, WaypointAgent
    from istiod_lite.envoy_binary import envoy_binary
    from tests.e2e.test_hbone_fixtures import ca_server, hbone_ip
    from tests.e2e.test_hbone_waypoint import short_dir
    from tests.support.ports import free_port

    waypoint_ip = hbone_ip()  # connect_terminate binds <ip>:15008: an address nobody else uses
    ratings_vs: dict[str, Any] = {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
                  "metadata": {"name": "ratings", "namespace": "bookinfo"},
                  "spec": {"hosts": ["ratings"], "http": [{"timeout": "7s", "route": [
                      {"destination": {"host": "ratings"}, "weight": -1}]}]}}
    with FakeKubeApiServer() as kube:
        for doc in bookinfo_docs():
            if doc["kind"] == "Gateway":
                doc["spec"]["addresses"] = [{"type": "IPAddress", "value": waypoint_ip}]
            kube.apply(doc)
        kube.apply(ratings_vs)
        opts = KubeSourceOptions(kubeconfig=kube.write_kubeconfig(tmp_path / "kubeconfig"), sync_timeout=10.0,
                                 backoff_initial=0.05, backoff_max=0.2)
        async with (ca_server(tmp_path) as ca, control_plane(None, opts) as cp):
            assert [e.name for e in cp.errors] == ["ratings"]
            with short_dir() as work:
                admin_port = free_port()
                agent = WaypointAgent(AgentConfig(
                    identity=WaypointIdentity(name="waypoint", namespace="bookinfo", ip=waypoint_ip),
                    token_file=ca.token_file(tmp_path, "bookinfo", "waypoint"),
                    xds_address=f"127.0.0.1:{cp.grpc_port}", xds_tls=False,
                    ca_address=ca.address, root_cert=ca.root_file,
                    envoy=EnvoySettings(binary=envoy_binary(), admin_port=admin_port, concurrency=1,
                                        output_path=work / "envoy.out"),
                    work_dir=work))
                stop = asyncio.Event()
                task = asyncio.create_task(agent.run(stop))
                try:
                    # The valid config (the reviews canary, 80/20) reaches the real Envoy; the
                    # rejected ratings VirtualService (its 7s timeout) does not.
                    deadline = time.monotonic() + 30
                    while '"weight": 80' not in (config := await envoy_config(admin_port)):
                        assert time.monotonic() < deadline, "the waypoint Envoy never got the reviews routes"
                        assert not task.done(), "the waypoint agent exited"
                        await asyncio.sleep(0.1)
                    assert '"7s"' not in config
                    # ... and the cluster says why it was rejected, with the field path.
                    deadline = time.monotonic() + 10
                    while (cond := rejection(kube, "ratings")) is None:
                        assert time.monotonic() < deadline, "no status condition on the rejected VirtualService"
                        await asyncio.sleep(0.05)
                    assert cond["status"] == "False" and cond["reason"] == "Invalid"
                    assert cond["message"].startswith("spec.http[0].route[0].weight: ")
                    # Fixed: Envoy gets the route, the condition goes away.
                    ratings_vs["spec"]["http"][0]["route"][0]["weight"] = 100
                    kube.apply(ratings_vs)
                    deadline = time.monotonic() + 30
                    while '"7s"' not in (config := await envoy_config(admin_port)):
                        assert time.monotonic() < deadline, "the fixed VirtualService never reached Envoy"
                        await asyncio.sleep(0.1)
                    assert '"weight": 80' in config
                    deadline = time.monotonic() + 10
                    while rejection(kube, "ratings") is not None:
                        assert time.monotonic() < deadline, "the condition was never cleared"
                        await asyncio.sleep(0.05)
                    assert cp.errors == ()
                except BaseException:
                    out = work / "envoy.out"
                    print("\n----- waypoint Envoy -----\n" + (out.read_text()[-4000:] if out.exists() else "(none)"))
                    raise
                finally:
                    stop.set()
                    await asyncio.wait_for(task, 15)


def controller_plane(kube: FakeKubeApiServer, tmp_path: Path) -> ControlPlane:
    """A control plane watching ``kube`` with the waypoint controller on (not started)."""
    from istiod_lite.controlplane.waypoint_controller import WaypointControllerOptions

    opts = KubeSourceOptions(kubeconfig=kube.write_kubeconfig(tmp_path / "kubeconfig"), sync_timeout=10.0,
                             backoff_initial=0.05, backoff_max=0.2)
    return ControlPlane(ControlPlaneOptions(
        config_dir=None, kube=opts, grpc_addr="127.0.0.1:0", monitoring_addr="127.0.0.1:0",
        debounce=DebounceOptions(quiet=0.02, max_delay=1.0),
        waypoint_controller=WaypointControllerOptions(image="istiod-lite:test",
                                                      istiod_address="istiod-lite.istio-system.svc")))


async def test_waypoint_controller_deploys_the_waypoint(tmp_path: Path) -> None:
    with FakeKubeApiServer() as kube:
        for doc in bookinfo_docs():
            kube.apply(doc)
        cp = controller_plane(kube, tmp_path)
        await cp.start()
        try:
            deadline = time.monotonic() + 10
            # The controller applies ServiceAccount, Deployment, then Service: wait for all three.
            while any(kube.get(v, k, "bookinfo", "waypoint") is None
                      for v, k in (("v1", "ServiceAccount"), ("apps/v1", "Deployment"), ("v1", "Service"))):
                assert time.monotonic() < deadline, "the waypoint's objects were never applied"
                await asyncio.sleep(0.05)
            dep = kube.get("apps/v1", "Deployment", "bookinfo", "waypoint")
            assert dep is not None
            container = dep["spec"]["template"]["spec"]["containers"][0]
            assert container["image"] == "istiod-lite:test"
            assert "--xds-address" in container["args"]
            gw = kube.get("gateway.networking.k8s.io/v1", "Gateway", "bookinfo", "waypoint")
            assert gw is not None and gw["metadata"]["uid"]
            owner = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway", "name": "waypoint",
                     "uid": gw["metadata"]["uid"], "controller": True}
            for v, k in (("v1", "ServiceAccount"), ("apps/v1", "Deployment"), ("v1", "Service")):
                obj = kube.get(v, k, "bookinfo", "waypoint")
                assert obj is not None and obj["metadata"]["ownerReferences"] == [owner], k
            # Gateway status: the Service's address, Accepted and Programmed
            deadline = time.monotonic() + 10
            while not (kube.get("gateway.networking.k8s.io/v1", "Gateway", "bookinfo", "waypoint") or {}).get(
                    "status", {}).get("addresses"):
                assert time.monotonic() < deadline, "the Gateway status was never written"
                await asyncio.sleep(0.05)
            gw = kube.get("gateway.networking.k8s.io/v1", "Gateway", "bookinfo", "waypoint")
            svc = kube.get("v1", "Service", "bookinfo", "waypoint")
            assert gw is not None and svc is not None
            assert gw["status"]["addresses"] == [{"type": "IPAddress", "value": svc["spec"]["clusterIP"]}]
            # the controller's conditions, beside the ambient status writer's (its own field manager)
            assert {c["type"]: c["status"] for c in gw["status"]["conditions"]} == {
                "Accepted": "True", "Programmed": "True", "istio.io/AttachedServices": "True"}
        finally:
            await cp.stop(grace=0)


async def test_waypoint_controller_refuses_a_foreign_service_until_it_is_gone(tmp_path: Path) -> None:
    """A waypoint Gateway named like the application's Service ``reviews``: the Service is left as it is and
    the Gateway says why; deleting the Service (a watch event, a new snapshot) lets the waypoint deploy."""
    gw_path = ("gateway.networking.k8s.io/v1", "Gateway", "bookinfo", "reviews")

    def programmed() -> dict[str, Any]:
        gw = kube.get(*gw_path) or {}
        return next((c for c in gw.get("status", {}).get("conditions", []) if c["type"] == "Programmed"), {})

    with FakeKubeApiServer() as kube:
        for doc in bookinfo_docs():
            kube.apply(doc)
        victim = kube.get("v1", "Service", "bookinfo", "reviews")
        assert victim is not None
        kube.apply({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
                    "metadata": {"name": "reviews", "namespace": "bookinfo"},
                    "spec": {"gatewayClassName": "istio-waypoint",
                             "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}]}})
        cp = controller_plane(kube, tmp_path)
        await cp.start()
        try:
            deadline = time.monotonic() + 10
            while programmed().get("reason") != "Invalid":
                assert time.monotonic() < deadline, "the conflict was never reported"
                await asyncio.sleep(0.05)
            assert "Service bookinfo/reviews" in programmed()["message"]
            now = kube.get("v1", "Service", "bookinfo", "reviews")
            assert now is not None  # untouched but for its status (istio.io/WaypointBound, the ambient writer's)
            assert (now["spec"], now["metadata"]["labels"]) == (victim["spec"], victim["metadata"]["labels"])
            assert [c["type"] for c in now["status"]["conditions"]] == ["istio.io/WaypointBound"]
            assert kube.get("apps/v1", "Deployment", "bookinfo", "reviews") is None
            kube.delete("v1", "Service", "bookinfo", "reviews")
            deadline = time.monotonic() + 10
            while programmed().get("status") != "True":
                assert time.monotonic() < deadline, "the conflict never cleared"
                await asyncio.sleep(0.05)
            assert kube.get("apps/v1", "Deployment", "bookinfo", "reviews") is not None
        finally:
            await cp.stop(grace=0)


async def test_secure_xds_authenticates_cluster_tokens_by_token_review(tmp_path: Path) -> None:
    """In cluster mode the secure port (CA + ADS) asks the cluster's TokenReview about pod tokens, for
    audience istio-ca, and checks the audiences the API server answers."""
    import grpc

    from istiod_lite.ca.config import CaConfig
    from istiod_lite.ca.keystore import ROOT_CERT
    from istiod_lite.ca.tokenreview import TokenReviewConfig
    from tests.e2e.test_secure_xds import first_response, node
    from tests.support.fakekube import FakeTokenUser
    from tests.unit.test_ca_tokenreview import fake_jwt

    with FakeKubeApiServer() as kube:
        for doc in bookinfo_docs():
            kube.apply(doc)
        kubeconfig = kube.write_kubeconfig(tmp_path / "kubeconfig")
        good, wrong_aud, other_sa, unknown = (fake_jwt(f"system:serviceaccount:bookinfo:{n}") for n in "abcd")
        kube.add_token(good, FakeTokenUser.service_account("bookinfo", "waypoint"))
        kube.add_token(wrong_aud, FakeTokenUser("system:serviceaccount:bookinfo:waypoint",
                                                groups=("system:serviceaccounts",), status_audiences=("other",)))
        kube.add_token(other_sa, FakeTokenUser.service_account("bookinfo", "intruder"))
        ca_dir = tmp_path / "ca"
        cp = ControlPlane(ControlPlaneOptions(
            config_dir=None, grpc_addr="", monitoring_addr="127.0.0.1:0", secure_grpc_addr="127.0.0.1:0",
            debounce=DebounceOptions(quiet=0.02, max_delay=1.0),
            kube=KubeSourceOptions(kubeconfig=kubeconfig, sync_timeout=10.0),
            ca=CaConfig(ca_dir=ca_dir, token_review=TokenReviewConfig(kubeconfig=kubeconfig))))
        await cp.start()
        try:
            root = (ca_dir / ROOT_CERT).read_bytes()
            wp = node("bookinfo", "waypoint")
            resp = await first_response(cp.secure_port, root, good, wp)
            assert not isinstance(resp, grpc.StatusCode), resp
            assert resp.resources  # type: ignore[attr-defined]
            assert [r["spec"]["audiences"] for r in kube.token_reviews()] == [["istio-ca"]]
            # authenticated by the API server, but not for istio-ca: refused
            assert await first_response(cp.secure_port, root, wrong_aud, wp) == grpc.StatusCode.UNAUTHENTICATED
            assert await first_response(cp.secure_port, root, unknown, wp) == grpc.StatusCode.UNAUTHENTICATED
            # a real token of another service account cannot read the waypoint's config
            assert await first_response(cp.secure_port, root, other_sa, wp) == grpc.StatusCode.PERMISSION_DENIED
            assert len(kube.token_reviews()) == 4
        finally:
            await cp.stop(grace=0)
