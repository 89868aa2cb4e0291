"""``explain service`` and ``analyze`` from the command line: exit codes and thresholds as istioctl,
output formats, bad targets, and the same answers from a cluster (fake API server) as from a directory."""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from istiod_lite.cli.main import main
from istiod_lite.sources import DirectorySource
from istiod_lite.translator.diagnostics import diagnose, findings
from tests.support.fakekube import FakeKubeApiServer

GOLDEN = Path(__file__).resolve().parents[1] / "golden_explain"
TRANSLATOR_GOLDEN = Path(__file__).resolve().parents[1] / "golden"


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(["--log-level", "ERROR", *argv])
    return rc, out.getvalue(), err.getvalue()


@pytest.mark.parametrize(("case", "threshold", "rc"), [
    ("missing-waypoint", "Error", 79),          # Error messages
    ("no-label", "Error", 0),                   # only Warnings
    ("no-label", "Warning", 79),
    ("dr-precedence", "Warning", 79),
    ("ap-selector", "Info", 79),
    ("service-label-and-opt-out", "Error", 0),
])
def test_analyze_exit_code_follows_the_failure_threshold(case: str, threshold: str, rc: int) -> None:
    got, out, _ = run("analyze", "--config", str(GOLDEN / case / "input"), "--failure-threshold", threshold)
    assert got == rc, out


def test_analyze_json_and_yaml_always_exit_0_like_istioctl() -> None:
    config = str(GOLDEN / "missing-waypoint" / "input")
    rc, out, _ = run("analyze", "--config", config, "-o", "json")
    assert rc == 0
    data = json.loads(out)
    assert {m["code"] for m in data} == {"ISTL0001"} and all(m["level"] == "Error" for m in data)
    rc, out, _ = run("analyze", "--config", config, "-o", "yaml")
    assert rc == 0 and yaml.safe_load(out) == data


def test_analyze_clean_config_says_so(tmp_path: Path) -> None:
    rc, out, err = run("analyze", "--config", str(Path(__file__).resolve().parents[2] / "examples" / "bookinfo"))
    assert (rc, out) == (0, "")
    assert "No validation issues found" in err


def test_explain_unknown_service_and_bad_input_are_clear_errors(tmp_path: Path) -> None:
    config = str(GOLDEN / "no-label" / "input")
    rc, out, err = run("explain", "service", "shop/nope", "--config", config)
    assert rc == 1 and out == "" and "no Service shop/nope" in err
    rc, _, err = run("explain", "service", "cart", "--config", config)
    assert rc == 1 and "NAMESPACE/NAME" in err
    rc, _, err = run("explain", "service", "shop/cart", "--config", str(tmp_path / "missing"))
    assert rc == 1 and "not a directory" in err
    rc, _, err = run("analyze")
    assert rc == 1 and "--config DIR, --kubeconfig FILE" in err


def test_explain_service_entry_by_name_gives_each_host() -> None:
    rc, out, _ = run("explain", "service", "shop/external-api", "--config", str(GOLDEN / "serviceentry" / "input"),
                     "-o", "json")
    assert rc == 0
    assert [s["host"] for s in json.loads(out)["services"]] == ["api.example.com"]


def test_every_diagnostics_message_of_the_translator_golden_cases_names_its_subject() -> None:
    """``Finding`` parses "Kind ns/name" from each message; explain and analyze attach messages to
    objects by it, so a message that loses its subject would silently vanish from explain."""
    unparsed = []
    for case in sorted(p for p in TRANSLATOR_GOLDEN.iterdir() if (p / "input").is_dir()):
        update = DirectorySource(case / "input").load()
        for f in findings(diagnose(update.snapshot)):
            if not f.kind and not f.message.startswith("CUSTOM AuthorizationPolicies name several providers"):
                unparsed.append(f.message)
            elif f.kind:
                assert update.snapshot.by_kind.get(f.kind) is not None or f.kind in ("Service", "Gateway"), f
    assert not unparsed


# -- the cluster -------------------------------------------------------------------------------------


@pytest.fixture
def kube() -> Iterator[FakeKubeApiServer]:
    with FakeKubeApiServer() as server:
        yield server


def _apply_dir(kube: FakeKubeApiServer, directory: Path) -> None:
    for path in sorted(directory.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                kube.apply(doc)


@pytest.mark.parametrize("case", ["vs-wrong-namespace", "ap-selector", "serviceentry"])
def test_cluster_gives_the_directory_answers(kube: FakeKubeApiServer, tmp_path: Path, case: str) -> None:
    _apply_dir(kube, GOLDEN / case / "input")
    kubeconfig = str(kube.write_kubeconfig(tmp_path / "kubeconfig"))
    for target in (GOLDEN / case / "targets").read_text().split():
        ns, name = target.split("/", 1)
        rc, out, _ = run("explain", "service", target, "--kubeconfig", kubeconfig, "-o", "json")
        assert rc == 0
        assert out == (GOLDEN / case / "expected" / f"explain.{ns}.{name}.json").read_text()
    rc, out, _ = run("analyze", "--kubeconfig", kubeconfig)
    assert out == (GOLDEN / case / "expected" / "analyze.log").read_text()
    # read only: explain and analyze never write to the cluster
    assert not [r for r in kube.requests if r.method not in ("GET",)]


def test_cluster_schema_errors_are_ist0106(kube: FakeKubeApiServer, tmp_path: Path) -> None:
    kube.apply({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
                "metadata": {"name": "broken", "namespace": "shop"},
                "spec": {"host": "cart", "trafficPolicy": {"loadBalancer": {"simple": "FASTEST"}}}})
    rc, out, _ = run("analyze", "--kubeconfig", str(kube.write_kubeconfig(tmp_path / "kubeconfig")))
    assert rc == 79
    assert out.startswith("Error [IST0106] (DestinationRule shop/broken cluster) Schema validation error: "
                          "spec.trafficPolicy.loadBalancer.simple:"), out


def test_unreachable_cluster_is_a_clear_error(tmp_path: Path) -> None:
    server = FakeKubeApiServer().start()
    kubeconfig = str(server.write_kubeconfig(tmp_path / "kubeconfig"))
    server.stop()
    rc, _, err = run("analyze", "--kubeconfig", kubeconfig, "--kube-timeout", "1")
    assert rc == 1 and "cluster" in err
