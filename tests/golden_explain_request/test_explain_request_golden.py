"""Golden outputs of ``istiod-lite explain request``: each directory's ``query.yaml`` names a golden
case's input (``tests/golden/<config>/input``, with its ``mesh.yaml`` if any) and the command's
arguments; ``expected.txt`` is stdout (text or JSON), then ``exit: N`` and any stderr.

    UPDATE_GOLDEN=1 python -m pytest tests/golden_explain_request   # rewrite expected files
"""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path

import pytest
import yaml

from istiod_lite.cli.main import main

HERE = Path(__file__).resolve().parent
GOLDEN = HERE.parent / "golden"
CASES = sorted(p.name for p in HERE.iterdir() if (p / "query.yaml").is_file())
UPDATE = os.environ.get("UPDATE_GOLDEN") == "1"


def _run(case: str) -> str:
    query = yaml.safe_load((HERE / case / "query.yaml").read_text())
    argv = ["explain", "request", "--config", str(GOLDEN / query["config"] / "input"), *query["args"]]
    mesh = GOLDEN / query["config"] / "mesh.yaml"
    if mesh.exists():
        argv += ["--mesh-config", str(mesh)]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(["--log-level", "ERROR", *argv])
    return out.getvalue() + f"exit: {rc}\n" + "".join(f"stderr: {line}\n" for line in err.getvalue().splitlines())


@pytest.mark.parametrize("case", CASES)
def test_explain_request_golden(case: str) -> None:
    got = _run(case)
    expected = HERE / case / "expected.txt"
    if UPDATE:
        expected.write_text(got)
    assert expected.exists(), f"{case}: no expected.txt (UPDATE_GOLDEN=1 to create)"
    assert got == expected.read_text(), f"{case} differs (UPDATE_GOLDEN=1 to accept, then review the diff)"
