"""Golden files: each case's input YAML translates to exactly the expected Envoy JSON, and every
expected file is accepted by the real Envoy (``envoy --mode validate``).

    UPDATE_GOLDEN=1 python -m pytest tests/golden     # rewrite expected files, delete stale ones

Layout: ``tests/golden/<case>/input/*.yaml`` and ``tests/golden/<case>/expected/<ns>.<name>.json``
(one file per waypoint of the case); an optional ``tests/golden/<case>/mesh.yaml`` is the case's mesh
config (Istio's MeshConfig: access-log defaults and extension providers); an optional
``tests/golden/<case>/options.yaml`` holds server options (``dynamicDns``: ``wildcardTls``, ``resolvers``).
The proxy is located as the server locates it: the pod at the waypoint's address and its node, if the case has them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
import yaml
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2

from istiod_lite.cli.render import render
from istiod_lite.model import ConfigSnapshot
from istiod_lite.model.meshconfig import MeshConfig, load_mesh_config
from istiod_lite.sources import DirectorySource
from istiod_lite.translator import WaypointAssembly, find_waypoints, proxy_locality_of
from istiod_lite.translator.binding.waypoints import WaypointRef
from istiod_lite.translator.clusters.dynamic_dns import DynamicDnsOptions, parse_resolver
from istiod_lite.translator.diagnostics import diagnose
from tests.support.envoy import envoy_validate, inline_rds

HERE = Path(__file__).resolve().parent
CASES = sorted(p.name for p in HERE.iterdir() if (p / "input").is_dir())
UPDATE = os.environ.get("UPDATE_GOLDEN") == "1"


def _dynamic_dns(case: str) -> DynamicDnsOptions:
    """The case's ``DYNAMIC_DNS`` server options (``options.yaml``), else the defaults."""
    path = HERE / case / "options.yaml"
    opts = (yaml.safe_load(path.read_text()) or {}).get("dynamicDns", {}) if path.exists() else {}
    return DynamicDnsOptions(wildcard_tls=bool(opts.get("wildcardTls", False)),
                             resolvers=tuple(parse_resolver(r) for r in opts.get("resolvers", ())))


def _assembly(snapshot: ConfigSnapshot, ref: WaypointRef, mesh: MeshConfig | None,
              dynamic_dns: DynamicDnsOptions | None = None) -> WaypointAssembly:
    """The assembly for a proxy at the waypoint's own address, located from the config."""
    address = WaypointAssembly(ref).default_address(snapshot)
    return WaypointAssembly(ref, mesh=mesh, proxy=proxy_locality_of(snapshot, ref, address, mesh),
                            dynamic_dns=dynamic_dns or DynamicDnsOptions())


def _translate_case(case: str) -> dict[str, str]:
    update = DirectorySource(HERE / case / "input").load()
    assert not update.errors, [str(e) for e in update.errors]
    mesh_file = HERE / case / "mesh.yaml"
    mesh: MeshConfig | None = load_mesh_config(mesh_file) if mesh_file.exists() else None
    # What the server serves a proxy of the waypoint at the waypoint's own address: same object,
    # same methods (``WaypointAssembly``), so the expected files are what Envoy receives.
    dynamic_dns = _dynamic_dns(case)
    out = {f"{w.ref.namespace}.{w.ref.name}.json": render(
        _assembly(update.snapshot, w.ref, mesh, dynamic_dns).proxy_resources(update.snapshot))
           for w in find_waypoints(update.snapshot)}
    # Reported, never silently dropped: bindings that do not fit, policies that do not attach or
    # fail closed, route settings the waypoint ignores, Telemetry upstream Envoy cannot honour.
    found = diagnose(update.snapshot, mesh, dynamic_dns)
    for name, messages in (("binding-problems.txt", sorted(found.binding)),
                           ("authz-problems.txt", sorted(found.authorization)),
                           ("ignored.txt", found.routes), ("telemetry-ignored.txt", found.telemetry)):
        if messages:
            out[name] = "".join(f"{m}\n" for m in messages)
    return out


@pytest.mark.parametrize("case", CASES)
def test_golden(case: str) -> None:
    got = _translate_case(case)
    expected_dir = HERE / case / "expected"
    if UPDATE:
        expected_dir.mkdir(exist_ok=True)
        for stale in {p.name for p in expected_dir.iterdir() if p.suffix in (".json", ".txt")} - set(got):
            (expected_dir / stale).unlink()
        for name, text in got.items():
            (expected_dir / name).write_text(text)
    want = {p.name: p.read_text() for p in sorted(expected_dir.iterdir()) if p.suffix in (".json", ".txt")}
    assert sorted(got) == sorted(want), "waypoints differ from the expected files (UPDATE_GOLDEN=1 to accept)"
    for name in want:
        assert got[name] == want[name], f"{case}/{name} differs (UPDATE_GOLDEN=1 to accept, then review the diff)"


def rds_names(listeners: Iterable[listener_pb2.Listener]) -> set[str]:
    """Every route configuration name the listeners' HTTP connection managers take over RDS; every
    HTTP chain of ``main_internal`` must take its routes that way (``connect_terminate``'s fixed
    CONNECT route stays inline)."""
    out: set[str] = set()
    for lst in listeners:
        for fc in lst.filter_chains:
            for f in fc.filters:
                if f.typed_config.Is(hcm_pb2.HttpConnectionManager.DESCRIPTOR):
                    hcm = hcm_pb2.HttpConnectionManager()
                    f.typed_config.Unpack(hcm)
                    if hcm.HasField("rds"):
                        out.add(hcm.rds.route_config_name)
                    else:
                        assert lst.name != "main_internal", f"{fc.name}: routes not over RDS"
    return out


@pytest.mark.parametrize("case", CASES)
def test_every_rds_name_is_served_in_the_same_snapshot(case: str) -> None:
    """Warming: a listener is never served naming a route configuration the same resources lack
    (Envoy would keep it warming, with ``initial_fetch_timeout`` 0s forever), and no route
    configuration is served that no listener names."""
    update = DirectorySource(HERE / case / "input").load()
    mesh_file = HERE / case / "mesh.yaml"
    mesh = load_mesh_config(mesh_file) if mesh_file.exists() else None
    for w in find_waypoints(update.snapshot):
        res = _assembly(update.snapshot, w.ref, mesh, _dynamic_dns(case)).proxy_resources(update.snapshot)
        assert rds_names(res.listeners.values()) == set(res.routes), w.ref


def with_discovered_configs(listener: dict[str, Any], configs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """``listener`` with each ``config_discovery`` (ECDS slot) given its served config as
    ``default_config``, applied without warming: offline, Envoy then builds every filter from the
    very config the slot would receive, and still checks the slot itself (its type URLs must admit
    the config).  A slot naming no served config fails the test: a real Envoy would warm forever."""
    def walk(node: Any) -> Any:
        if isinstance(node, list):
            return [walk(x) for x in node]
        if not isinstance(node, dict):
            return node
        out = {k: walk(v) for k, v in node.items()}
        if "config_discovery" in out:
            name = out["name"]
            assert name in configs, f"filter slot {name!r} names no served extension config"
            out["config_discovery"] = {**out["config_discovery"], "default_config": configs[name]["typed_config"],
                                       "apply_default_config_without_warming": True}
        return out

    result: dict[str, Any] = walk(listener)
    return result


def validation_bootstrap(resources: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Embed translated resources in a bootstrap Envoy can validate offline: listeners and clusters
    as static resources (EDS clusters keep their ADS config source), each endpoint assignment as
    a static cluster's load_assignment, each route configuration inline in the connection manager
    that names it over RDS (validate mode never fetches RDS), and each extension config (ECDS) as
    its slot's default config (``with_discovered_configs``).  Every route configuration must be
    named by a listener, so each one is validated."""
    def strip(d: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in d.items() if k != "@type"}

    configs = {c["name"]: c for c in resources.get("extension_configs", [])}
    route_configs = {r["name"]: r for r in resources["routes"]}
    used: set[str] = set()
    listeners = inline_rds([with_discovered_configs(strip(x), configs) for x in resources["listeners"]],
                           route_configs, used)
    assert used == set(route_configs), f"route configurations no listener names: {sorted(set(route_configs) - used)}"

    clusters = [strip(c) for c in resources["clusters"]]
    clusters += [{"name": f"golden-eds-{i}", "type": "STATIC", "connect_timeout": "1s",
                  "load_assignment": strip(e)} for i, e in enumerate(resources["endpoints"])]
    clusters.append({**_h2_cluster("sds-grpc"), "load_assignment": {"cluster_name": "sds-grpc", "endpoints": [
        {"lb_endpoints": [{"endpoint": {"address": {"pipe": {"path": "/tmp/golden-sds.sock"}}}}]}]}})
    clusters.append({"name": "xds-grpc", "type": "STATIC", "connect_timeout": "1s",
                     "typed_extension_protocol_options": {
                         "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                             "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                             "explicit_http_config": {"http2_protocol_options": {}}}},
                     "load_assignment": {"cluster_name": "xds-grpc", "endpoints": [{"lb_endpoints": [
                         {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1",
                                                                      "port_value": 15010}}}}]}]}})
    return {
        "node": {"id": "golden~127.0.0.1~golden.ns~ns.svc.cluster.local", "cluster": "golden"},
        "bootstrap_extensions": [{"name": "envoy.bootstrap.internal_listener", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.bootstrap.internal_listener.v3.InternalListener"}}],
        "static_resources": {"listeners": listeners, "clusters": clusters},
        "dynamic_resources": {"ads_config": {"api_type": "DELTA_GRPC", "transport_api_version": "V3",
                                             "grpc_services": [{"envoy_grpc": {"cluster_name": "xds-grpc"}}]}},
    }


def _h2_cluster(name: str) -> dict[str, Any]:
    return {"name": name, "type": "STATIC", "connect_timeout": "1s", "typed_extension_protocol_options": {
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}}}}}


@pytest.mark.e2e
@pytest.mark.parametrize("case", CASES)
def test_expected_files_are_accepted_by_envoy(case: str) -> None:
    for path in sorted((HERE / case / "expected").glob("*.json")):
        resources = json.loads(path.read_text())
        ok, out = envoy_validate(validation_bootstrap(resources))
        assert ok, f"{case}/{path.name} rejected by envoy --mode validate:\n{out[-3000:]}"
