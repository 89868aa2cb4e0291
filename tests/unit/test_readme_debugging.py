"""The README's "Debugging a waypoint" section shows real output: each ``$ istiod-lite ...`` line in
its console blocks is run, and its stdout must be exactly the lines shown under it."""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
from pathlib import Path

from istiod_lite.cli.main import main

REPO = Path(__file__).resolve().parents[2]


def _section() -> str:
    text = (REPO / "README.md").read_text()
    start = text.index("## Debugging a waypoint")
    return text[start:text.index("\n## ", start + 1)]


def test_readme_debugging_output_is_what_the_commands_print() -> None:
    blocks = re.findall(r"```console\n(.*?)```", _section(), re.DOTALL)
    assert len(blocks) == 2
    old = Path.cwd()
    os.chdir(REPO)
    try:
        for block in blocks:
            command, _, shown = block.partition("\n")
            argv = shlex.split(command.removeprefix("$ "))
            assert argv[0] == "istiod-lite"
            out, err = io.StringIO(), io.StringIO()
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                rc = main(["--log-level", "ERROR", *argv[1:]])
            assert out.getvalue() == shown, command
            assert rc == (79 if argv[1] == "analyze" else 0)
    finally:
        os.chdir(old)


def test_readme_still_starts_with_the_two_setup_commands() -> None:
    head = (REPO / "README.md").read_text().split("\n")[:6]
    assert head[2:6] == ["```bash", "python -m pip install -e . && istiod-lite demo",
                         "python -m pip install -q -e '.[test]' && python -m pytest -q", "```"]
