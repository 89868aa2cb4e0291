"""Istio's real mesh configs load (leniently, as istiod loads them), and every field is either
honoured or reported as ignored, with its path.

Fixtures: tests/fixtures/meshconfig/{default,ambient,demo}.yaml, reconstructed from Istio's charts
(each file names its source).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from istiod_lite.model.meshconfig import MeshConfig, MeshConfigInvalid, load_mesh_config, parse_mesh_config
from istiod_lite.model.meshconfig_fields import (
    BY_FIELD,
    FIELDS,
    decided,
    ignored_fields,
    mesh_config_warnings,
    model_paths,
)
from istiod_lite.model.types import Duration

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures" / "meshconfig"
DOCS = REPO / "docs" / "meshconfig.md"

#: What each real profile sets that a waypoint does not use (paths, sorted).
IGNORED_BY_PROFILE = {
    "default": ["defaultConfig.discoveryAddress", "enablePrometheusMerge"],
    "ambient": ["defaultConfig.discoveryAddress", "defaultConfig.image", "defaultConfig.proxyMetadata",
                "enablePrometheusMerge", "serviceScopeConfigs"],
    "demo": ["defaultConfig.discoveryAddress", "enablePrometheusMerge",
             "extensionProviders[0].envoyOtelAls (otel)", "extensionProviders[1].skywalking (skywalking)"],
}


@pytest.mark.parametrize("profile", sorted(IGNORED_BY_PROFILE))
def test_istio_profile_mesh_configs_load(profile: str) -> None:
    mesh = load_mesh_config(FIXTURES / f"{profile}.yaml")
    assert mesh.unknown_fields == ()
    assert mesh.trust_domain == "cluster.local"
    assert mesh.root_namespace == "istio-system"
    assert mesh.default_providers.metrics == ("prometheus",)
    assert mesh.enable_prometheus_merge is True
    assert mesh.default_config.discovery_address == "istiod.istio-system.svc:15012"
    assert [p for p, _ in ignored_fields(mesh)] == IGNORED_BY_PROFILE[profile]


def test_ambient_profile_fields_are_typed() -> None:
    mesh = load_mesh_config(FIXTURES / "ambient.yaml")
    assert mesh.default_config.proxy_metadata == {"ISTIO_META_ENABLE_HBONE": "true"}
    assert mesh.default_config.image is not None and mesh.default_config.image.image_type == "distroless"
    (scope,) = mesh.service_scope_configs
    assert scope.scope == "GLOBAL"
    assert scope.services_selector is not None
    assert scope.services_selector.match_expressions[0].operator == "Exists"


def test_demo_profile_providers() -> None:
    mesh = load_mesh_config(FIXTURES / "demo.yaml")
    assert [p.kind for p in mesh.extension_providers] == ["envoy_otel_als", "skywalking", "opentelemetry"]
    assert mesh.access_log_file == "/dev/stdout"


@pytest.mark.parametrize(("doc", "path"), [
    ({"connectTimeout": "soon"}, "connectTimeout"),
    ({"trustDomainAliases": "old.example"}, "trustDomainAliases"),
    ({"defaultConfig": {"concurrency": "two"}}, "defaultConfig.concurrency"),
    ({"defaultConfig": {"drainDuration": 45}}, "defaultConfig.drainDuration"),
    ({"defaultConfig": {"tracing": {"sampling": 101}}}, "defaultConfig.tracing.sampling"),
    ({"defaultConfig": {"proxyHeaders": {"server": {"disabled": "maybe"}}}},
     "defaultConfig.proxyHeaders.server.disabled"),
    ({"defaultConfig": {"proxyHeaders": {"forwardedClientCert": "SOMETIMES"}}},
     "defaultConfig.proxyHeaders.forwardedClientCert"),
    ({"outboundTrafficPolicy": {"mode": "SOMETIMES"}}, "outboundTrafficPolicy.mode"),
    ({"extensionProviders": [{"name": "s", "skywalking": {"port": "x"}}]}, "extensionProviders[0].skywalking.port"),
    ({"extensionProviders": [{"name": "a", "envoyHttpAls": {"logName": ["x"]}}]},
     "extensionProviders[0].envoyHttpAls.logName"),
    ({"localityLbSetting": {"enabled": "perhaps"}}, "localityLbSetting.enabled"),
    ({"defaultHttpRetryPolicy": {"attempts": "many"}}, "defaultHttpRetryPolicy.attempts"),
    ({"caCertificates": [{"pem": "a", "spiffeBundleUrl": "b"}]}, "caCertificates[0]"),
])
def test_wrong_type_is_an_error_with_its_path(doc: dict[str, Any], path: str) -> None:
    with pytest.raises(MeshConfigInvalid) as info:
        parse_mesh_config(doc, source="mesh.yaml")
    assert f"mesh.yaml: MeshConfig: {path}" in str(info.value), str(info.value)


def test_unknown_fields_are_warnings_with_their_path_not_errors() -> None:
    mesh = parse_mesh_config({
        "trustDomain": "td", "enableFutureThing": True,
        "defaultConfig": {"drainDuration": "5s", "newKnob": {"a": 1}},
        "extensionProviders": [{"name": "p", "prometheus": {"scrapeInterval": "5s"}},
                               {"name": "g", "envoyExtAuthzGrpc": {"service": "a", "port": 80, "pathPrefix": "/x"}}],
        "localityLbSetting": {"enabled": True, "futureField": 1},
    })
    assert mesh.trust_domain == "td"
    assert mesh.default_config.drain_duration == Duration(5 * 10**9)
    assert sorted(mesh.unknown_fields) == [
        "defaultConfig.newKnob", "enableFutureThing", "extensionProviders[0].prometheus.scrapeInterval",
        "extensionProviders[1].envoyExtAuthzGrpc.pathPrefix", "localityLbSetting.futureField"]
    warnings = mesh_config_warnings(mesh)
    assert "enableFutureThing: unknown field (ignored)" in warnings
    assert "defaultConfig.newKnob: unknown field (ignored)" in warnings


def test_an_unknown_field_next_to_a_wrong_type_reports_the_error() -> None:
    with pytest.raises(MeshConfigInvalid) as info:
        parse_mesh_config({"enableFutureThing": 1, "connectTimeout": "soon"})
    assert [e.field_path for e in info.value.errors] == ["connectTimeout"]


def test_istio_kinds_stay_strict() -> None:
    """Only the mesh config loader strips unknown fields: the same nested type inside a
    DestinationRule still rejects them (a typo in a policy must not pass silently)."""
    from pydantic import ValidationError

    from istiod_lite.model.networking_dr import LocalityLoadBalancerSetting

    with pytest.raises(ValidationError):
        LocalityLoadBalancerSetting.model_validate({"enabled": True, "futureField": 1})


def test_proto3_json_spellings() -> None:
    mesh = parse_mesh_config({"trustDomain": None, "outboundTrafficPolicy": {"mode": 0},
                              "trust_domain_aliases": ["old"], "defaultConfig": {"concurrency": "4"}})
    assert mesh.trust_domain == "cluster.local"
    assert mesh.outbound_traffic_policy is not None and mesh.outbound_traffic_policy.mode == "REGISTRY_ONLY"
    assert mesh.trust_domain_aliases == ("old",)
    assert mesh.default_config.concurrency == 4


def test_every_model_field_is_honoured_or_ignored_and_the_table_has_no_stale_entry() -> None:
    paths = set(model_paths(MeshConfig))
    assert [p for p in sorted(paths) if not decided(p)] == []
    assert [k for k in FIELDS if k not in paths] == []


def test_docs_list_every_table_entry_with_its_status() -> None:
    text = DOCS.read_text()
    for key, entry in FIELDS.items():
        if entry.status != BY_FIELD:
            assert f"| `{key}` | {entry.status} |" in text, key


def test_ignored_fields_are_listed_once_each() -> None:
    mesh = parse_mesh_config({"outboundTrafficPolicy": {"mode": "REGISTRY_ONLY"},
                              "defaultConfig": {"concurrency": 2, "proxyMetadata": {"A": "b"},
                                                "tracing": {"sampling": 10, "zipkin": {}}},
                              "trustDomainAliases": ["old"]})
    assert [p for p, _ in ignored_fields(mesh)] == [
        "defaultConfig.proxyMetadata", "defaultConfig.tracing.zipkin", "outboundTrafficPolicy"]


def test_validate_prints_unknown_and_ignored_fields_once_as_warnings(tmp_path: Path) -> None:
    mesh = tmp_path / "mesh.yaml"
    mesh.write_text((FIXTURES / "demo.yaml").read_text() + "futureField: 1\n")
    out = subprocess.run([sys.executable, "-m", "istiod_lite.cli.main", "validate", "--config",
                          str(REPO / "examples" / "bookinfo"), "--mesh-config", str(mesh)],
                         capture_output=True, text=True, timeout=120, cwd=REPO)
    assert out.returncode == 0, out.stderr
    lines = [ln for ln in out.stderr.splitlines() if ln.startswith("warning: meshconfig: ")]
    assert "warning: meshconfig: futureField: unknown field (ignored)" in lines
    for path in IGNORED_BY_PROFILE["demo"]:
        assert sum(ln.startswith(f"warning: meshconfig: {path}: ignored: ") for ln in lines) == 1, path
    assert len(lines) == len(IGNORED_BY_PROFILE["demo"]) + 1


def test_validate_fails_on_a_wrong_type(tmp_path: Path) -> None:
    mesh = tmp_path / "mesh.yaml"
    mesh.write_text("defaultConfig:\n  drainDuration: forever\n")
    out = subprocess.run([sys.executable, "-m", "istiod_lite.cli.main", "validate", "--config",
                          str(REPO / "examples" / "bookinfo"), "--mesh-config", str(mesh)],
                         capture_output=True, text=True, timeout=120, cwd=REPO)
    assert out.returncode != 0
    assert "defaultConfig.drainDuration" in out.stderr + out.stdout


def test_builtin_providers() -> None:
    mesh = MeshConfig()
    prom, sd, envoy = mesh.provider("prometheus"), mesh.provider("stackdriver"), mesh.provider("envoy")
    assert prom is not None and prom.prometheus is not None
    assert sd is not None and sd.stackdriver is not None
    assert envoy is not None and envoy.envoy_file_access_log is not None
    redefined = parse_mesh_config({"extensionProviders": [{"name": "prometheus", "envoyFileAccessLog": {}}]})
    p = redefined.provider("prometheus")
    assert p is not None and p.envoy_file_access_log is not None


def test_trust_domain_flag_and_mesh_config_agree() -> None:
    from istiod_lite.cli.main import _trust_domain

    mesh = parse_mesh_config({"trustDomain": "new.example"})
    assert _trust_domain(None, mesh) == "new.example"
    assert _trust_domain("new.example", mesh) == "new.example"
    assert _trust_domain("other", parse_mesh_config({})) == "other"
    assert _trust_domain(None, None) == "cluster.local"
    with pytest.raises(SystemExit, match="differs"):
        _trust_domain("other", mesh)


def test_serve_logs_unknown_and_ignored_fields_once_at_start(caplog: pytest.LogCaptureFixture) -> None:
    import logging

    from istiod_lite.cli.main import _mesh

    with caplog.at_level(logging.WARNING, logger="istiod_lite"):
        mesh = _mesh(str(FIXTURES / "ambient.yaml"), log=True)
    assert mesh is not None
    lines = [r.getMessage() for r in caplog.records]
    for path in IGNORED_BY_PROFILE["ambient"]:
        assert sum(f": {path}: ignored: " in ln for ln in lines) == 1, (path, lines)
    assert len(lines) == len(IGNORED_BY_PROFILE["ambient"])


def test_default_config_shapes_the_rendered_waypoint_agent() -> None:
    """drainDuration, terminationDrainDuration and concurrency reach the agent's flags in the
    Deployments the waypoint controller renders (as Istio's injection uses ProxyConfig)."""
    from istiod_lite.controlplane.manifests import waypoint_args
    from istiod_lite.model.gateway import Gateway

    gw = Gateway.model_validate({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
        "metadata": {"name": "waypoint", "namespace": "shop"},
        "spec": {"gatewayClassName": "istio-waypoint", "listeners": [{"name": "mesh", "port": 15008,
                                                                       "protocol": "HBONE"}]}})
    default = waypoint_args(gw, istiod_address="istiod", trust_domain="td")
    assert default[default.index("--drain-duration") + 1] == "45s"
    assert "--concurrency" not in default
    proxy = parse_mesh_config({"defaultConfig": {"drainDuration": "7s", "terminationDrainDuration": "3s",
                                                 "concurrency": 4}}).default_config
    args = waypoint_args(gw, istiod_address="istiod", trust_domain="td", proxy=proxy)
    assert args[args.index("--drain-duration") + 1] == "7s"
    assert args[args.index("--termination-drain-duration") + 1] == "3s"
    assert args[args.index("--concurrency") + 1] == "4"
    import argparse

    from istiod_lite.cli.agent_cmd import add_run_parser  # the agent accepts exactly these flags

    parser = argparse.ArgumentParser()
    add_run_parser(parser.add_subparsers(dest="c"))
    ns = parser.parse_args(["run", *[a.replace("$(INSTANCE_IP)", "127.0.0.1") for a in args[2:]]])
    assert ns.concurrency == 4
