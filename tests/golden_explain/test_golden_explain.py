"""Golden files for ``explain service`` and ``analyze``: each case's input YAML gives exactly the
expected text and JSON, through the real CLI entry points (``istiod_lite.cli.main.main``).

    UPDATE_GOLDEN=1 python -m pytest tests/golden_explain     # rewrite expected files, delete stale ones

Layout: ``<case>/input/*.yaml``; ``<case>/targets`` (one ``NS/NAME`` per line, explained in turn);
optional ``<case>/mesh.yaml``; ``<case>/expected/explain.<ns>.<name>.{txt,json}`` and
``<case>/expected/analyze.{log,json}`` plus ``analyze.rc`` (the exit code of the log format).
Every explain/analyze reason has a case here; ``test_every_reason_has_a_case`` keeps it so.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from pathlib import Path

import pytest

from istiod_lite.cli.main import main
from istiod_lite.explain import messages
from istiod_lite.explain import service as explain_service
from istiod_lite.translator.binding import waypoints

HERE = Path(__file__).resolve().parent
CASES = sorted(p.name for p in HERE.iterdir() if (p / "input").is_dir())
UPDATE = os.environ.get("UPDATE_GOLDEN") == "1"


def _run(argv: list[str], cwd: Path) -> tuple[int, str]:
    out = io.StringIO()
    err = io.StringIO()
    old = Path.cwd()
    os.chdir(cwd)  # paths in messages are relative to the case directory
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = main(["--log-level", "ERROR", *argv])
    finally:
        os.chdir(old)
    return rc, out.getvalue()


def _case_outputs(case: str) -> dict[str, str]:
    root = HERE / case
    mesh = ["--mesh-config", "mesh.yaml"] if (root / "mesh.yaml").exists() else []
    out: dict[str, str] = {}
    for target in (root / "targets").read_text().split():
        ns, name = target.split("/", 1)
        for fmt, ext in (("text", "txt"), ("json", "json")):
            rc, text = _run(["explain", "service", target, "--config", "input", *mesh, "-o", fmt], root)
            assert rc == 0, (target, text)
            out[f"explain.{ns}.{name}.{ext}"] = text
    rc, text = _run(["analyze", "--config", "input", *mesh], root)
    out["analyze.log"] = text
    out["analyze.rc"] = f"{rc}\n"
    rc_json, text = _run(["analyze", "--config", "input", *mesh, "-o", "json"], root)
    assert rc_json == 0, "istioctl sets the exit code only for the log format"
    out["analyze.json"] = text
    return out


@pytest.mark.parametrize("case", CASES)
def test_golden_explain(case: str) -> None:
    got = _case_outputs(case)
    expected_dir = HERE / case / "expected"
    if UPDATE:
        expected_dir.mkdir(exist_ok=True)
        for stale in {p.name for p in expected_dir.iterdir()} - set(got):
            (expected_dir / stale).unlink()
        for name, text in got.items():
            (expected_dir / name).write_text(text)
    want = {p.name: p.read_text() for p in sorted(expected_dir.iterdir())}
    assert sorted(got) == sorted(want), "outputs differ from the expected files (UPDATE_GOLDEN=1 to accept)"
    for name in want:
        assert got[name] == want[name], f"{case}/{name} differs (UPDATE_GOLDEN=1 to accept, then review the diff)"


def _expected_text() -> str:
    return "".join(p.read_text() for case in CASES for p in (HERE / case / "expected").iterdir())


def test_every_reason_has_a_case() -> None:
    """Each binding outcome, each not-applied code and each analysis message type appears in some
    expected output."""
    text = _expected_text()
    outcomes = [waypoints.BOUND, waypoints.UNLABELLED, waypoints.OPTED_OUT, waypoints.WAYPOINT_MISSING,
                waypoints.TRAFFIC_TYPE_MISMATCH, waypoints.NOT_ALLOWED, explain_service.NOT_SERVABLE]
    codes = [explain_service.NO_WAYPOINT, explain_service.NOT_MESH, explain_service.WRONG_NAMESPACE,
             explain_service.SHADOWED, explain_service.SELECTOR, explain_service.NAMESPACE_WIDE,
             explain_service.SUPERSEDED, explain_service.NOT_CONVERTED, explain_service.NOT_EXPORTED,
             explain_service.SERVICE_NOT_EXPORTED, explain_service.SHADOWED_BY_NAMESPACE,
             explain_service.SHADOWED_BY_HOST, explain_service.SELECTOR_FIRST, explain_service.DYNAMIC_DNS_HOST]
    # NOT_MATCHED is a defensive fallback: every DestinationRule of a searched namespace has an
    # exportTo/precedence outcome, so no config reaches it.
    missing = [o for o in outcomes if f'"outcome": "{o}"' not in text]
    missing += [c for c in codes if f'"code": "{c}"' not in text]
    missing += [t.code for t in messages.ALL if f"[{t.code}]" not in text]
    assert not missing, f"no golden case shows: {missing}"


def test_json_is_json() -> None:
    for case in CASES:
        for p in (HERE / case / "expected").glob("*.json"):
            json.loads(p.read_text())
