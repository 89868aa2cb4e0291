"""Offline commands, run as a user would (a subprocess of the installed console entry point)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "bookinfo"


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "istiod_lite.cli.main", *args], capture_output=True, text=True,
                          timeout=120, cwd=REPO)


GOOD = """\
apiVersion: v1
kind: Service
metadata: {name: a, namespace: ns}
spec: {clusterIP: 127.10.9.1, ports: [{port: 80}]}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: a, namespace: ns}
spec: {host: a, subsets: [{name: v1, labels: {version: v1}}]}
---
apiVersion: v1
kind: Namespace
metadata: {name: ns}
"""
BAD = """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: broken, namespace: ns}
spec:
  hosts: [a]
  http:
  - route:
    - destination: {host: a, subset: v1}
      weight: 50
    - destination: {host: a}
      weight: -5
"""


def test_validate_reports_exactly_the_bad_resource(tmp_path: Path) -> None:
    (tmp_path / "good.yaml").write_text(GOOD)
    (tmp_path / "bad.yaml").write_text(BAD)
    out = cli("validate", "--config", str(tmp_path))
    assert out.returncode == 1
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 1, out.stdout
    line = lines[0]
    assert line.startswith("bad.yaml#0: VirtualService ns/broken: spec.http[0].route[1].weight: "), line
    assert "3 resource(s) valid, 1 error(s)" in out.stderr


def test_validate_clean_directory_exits_zero() -> None:
    out = cli("validate", "--config", str(EXAMPLE))
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout == ""


def test_validate_warns_about_telemetry_the_waypoint_cannot_honour(tmp_path: Path) -> None:
    """Valid config that upstream Envoy cannot apply is a warning (exit 0), with the resource."""
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "t.yaml").write_text("""\
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: mesh-default, namespace: istio-system}
spec:
  metrics:
  - providers: [{name: prometheus}]
    overrides: [{match: {metric: REQUEST_COUNT}, tagOverrides: {size: {value: "request.size > 10 ? 'big' : 'small'"}}}]
""")
    mesh = tmp_path / "mesh.yaml"
    mesh.write_text("extensionProviders: [{name: prometheus, prometheus: {}}]\n")
    out = cli("validate", "--config", str(tmp_path / "cfg"), "--mesh-config", str(mesh))
    assert out.returncode == 0, out.stdout + out.stderr
    warnings = [line for line in out.stderr.splitlines() if line.startswith("warning: telemetry: ")]
    assert warnings and all("Telemetry istio-system/mesh-default" in w for w in warnings), out.stderr
    assert any("REQUEST_COUNT" in w for w in warnings), warnings
    assert not any("not in the mesh config" in w for w in warnings), warnings  # the provider is declared


def test_translate_is_deterministic_envoy_json(tmp_path: Path) -> None:
    first = cli("translate", "--config", str(EXAMPLE), "--waypoint", "bookinfo/waypoint")
    assert first.returncode == 0, first.stderr
    # Same input in another directory, files renamed: byte-identical output.
    copy = tmp_path / "copy"
    shutil.copytree(EXAMPLE, copy)
    for i, f in enumerate(sorted(copy.glob("*.yaml"))):
        f.rename(copy / f"z{9 - i}-{f.name}")
    second = cli("translate", "--config", str(copy), "--waypoint", "bookinfo/waypoint")
    assert second.stdout == first.stdout
    doc = json.loads(first.stdout)
    assert set(doc) >= {"listeners", "clusters", "endpoints"}
    cluster = doc["clusters"][0]
    assert cluster["@type"] == "type.googleapis.com/envoy.config.cluster.v3.Cluster"
    assert any(c["name"].startswith("inbound-vip|9080|http|reviews.bookinfo.svc.cluster.local")
               for c in doc["clusters"])
    yaml_out = cli("translate", "--config", str(EXAMPLE), "--waypoint", "bookinfo/waypoint", "-o", "yaml")
    assert yaml_out.returncode == 0
    assert "'@type': type.googleapis.com/envoy.config.listener.v3.Listener" in yaml_out.stdout


@pytest.mark.parametrize(("waypoint", "code"), [("bookinfo/nope", 1), ("no-slash", 2)])
def test_translate_unknown_waypoint(waypoint: str, code: int) -> None:
    out = cli("translate", "--config", str(EXAMPLE), "--waypoint", waypoint)
    assert out.returncode == code
    assert "error:" in out.stderr


def test_waypoint_bootstrap_carries_istio_node_identity() -> None:
    out = cli("waypoint", "bootstrap", "--name", "wp", "--namespace", "ns", "--service-account", "sa",
              "--ip", "127.0.1.7", "--xds-address", "127.0.0.1:15010")
    assert out.returncode == 0, out.stderr
    boot = json.loads(out.stdout)
    node = boot["node"]
    assert node["id"].startswith("waypoint~127.0.1.7~wp-") and node["id"].endswith(".ns~ns.svc.cluster.local")
    meta = node["metadata"]
    assert meta["NAMESPACE"] == "ns" and meta["SERVICE_ACCOUNT"] == "sa"
    assert meta["LABELS"]["gateway.networking.k8s.io/gateway-name"] == "wp"
    assert meta["INSTANCE_IPS"] == "127.0.1.7" and meta["CLUSTER_ID"]
