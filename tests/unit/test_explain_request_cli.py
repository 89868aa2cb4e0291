"""``istiod-lite explain request`` as a command: the cluster mode (``--kubeconfig``, against the fake
API server) gives the same explanation as the directory mode, and bad questions are clear errors."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest
import yaml

from istiod_lite.cli.main import main
from tests.support.fakekube import FakeKubeApiServer

CASE = Path(__file__).resolve().parents[1] / "golden" / "vs-weighted-subsets" / "input"
ARGS = ["--waypoint", "app/waypoint", "--from", "app/client", "--to", "echo:80", "--path", "/split/x", "-o", "json"]


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(["--log-level", "ERROR", "explain", "request", *argv])
    return rc, out.getvalue(), err.getvalue()


def test_cluster_mode_explains_as_directory_mode(tmp_path: Path) -> None:
    rc, from_dir, _ = run("--config", str(CASE), *ARGS)
    assert rc == 0
    with FakeKubeApiServer() as kube:
        for f in sorted(CASE.glob("*.yaml")):
            for doc in yaml.safe_load_all(f.read_text()):
                if doc:
                    kube.apply(doc)
        rc, from_cluster, err = run("--kubeconfig", str(kube.write_kubeconfig(tmp_path / "kubeconfig")), *ARGS)
    assert rc == 0, err
    assert from_cluster == from_dir
    assert '"name": "split"' in from_cluster


@pytest.mark.parametrize(("args", "message"), [
    (["--waypoint", "app/nope"], "no waypoint Gateway app/nope"),
    (["--from", "not-an-identity"], "--from must be a SPIFFE ID or NAMESPACE/SERVICEACCOUNT"),
    (["--to", "echo"], "--to must be HOST:PORT"),
    (["-H", "no-colon"], "-H must be 'name: value'"),
    (["--path", "relative"], "--path must start with '/'"),
])
def test_bad_questions_are_clear_errors(args: list[str], message: str) -> None:
    base = dict(zip(ARGS[0:-2:2], ARGS[1:-2:2], strict=True))
    argv = ["--config", str(CASE)]
    extra = dict(zip(args[0::2], args[1::2], strict=True))
    for k, v in {**base, **extra}.items():
        argv += [k, v]
    rc, out, err = run(*argv)
    assert rc == 2 and out == ""
    assert message in err
