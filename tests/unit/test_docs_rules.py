"""The xDS rule numbers the code cites are documented in the repository (issue 12).

Comments and docstrings in ``istiod_lite/`` cite protocol rules as ``R<n>``; each must have an entry
(a ``### R<n>`` heading) in docs/xds-rules.md, and no file may point at the reference that used to
live outside the repository.
"""

from __future__ import annotations

import io
import re
import subprocess
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RULES_DOC = ROOT / "docs" / "xds-rules.md"
#: ``R`` + one or two digits as a word of its own: R7, R43 (not SECP256R1 or R101).
RULE_RE = re.compile(r"\bR(\d{1,2})\b")
HEADING_RE = re.compile(r"^#{2,4}\s+R(\d{1,2})\b", re.MULTILINE)
#: Built from parts so that this file does not match itself.
OUTSIDE_REFERENCE = "shared" + "/reference"
_TEXT_TOKENS = {tokenize.COMMENT, tokenize.STRING}


def _cited_in(source: str) -> set[int]:
    """Rule numbers in the comments and string literals (docstrings included) of one module."""
    cited: set[int] = set()
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type in _TEXT_TOKENS:
            cited.update(int(n) for n in RULE_RE.findall(tok.string))
    return cited


def _cited_rules() -> dict[int, list[str]]:
    where: dict[int, list[str]] = {}
    for path in sorted((ROOT / "istiod_lite").rglob("*.py")):
        if "_generated" in path.parts:
            continue
        for n in _cited_in(path.read_text(encoding="utf-8")):
            where.setdefault(n, []).append(str(path.relative_to(ROOT)))
    return where


def _documented_rules() -> set[int]:
    return {int(n) for n in HEADING_RE.findall(RULES_DOC.read_text(encoding="utf-8"))}


def test_rule_pattern_skips_names_that_contain_r_digits() -> None:
    assert _cited_in('"""curve SECP256R1, see R7 and (R43)."""\n# R101 is not a rule, R2 is\n') == {7, 43, 2}


def test_rules_doc_numbers_every_rule_once() -> None:
    headings = HEADING_RE.findall(RULES_DOC.read_text(encoding="utf-8"))
    assert sorted(int(n) for n in headings) == list(range(1, 51))


def test_every_cited_rule_is_documented() -> None:
    cited = _cited_rules()
    assert cited, "no rule citations found: the scan is broken"
    missing = {n: files for n, files in cited.items() if n not in _documented_rules()}
    assert not missing, f"rules cited but missing from docs/xds-rules.md: {missing}"


def test_cited_rules_are_not_marked_unused() -> None:
    text = RULES_DOC.read_text(encoding="utf-8")
    unused = {int(n) for n in re.findall(r"^#{2,4}\s+R(\d{1,2})\b.*not used by the code", text, re.MULTILINE)}
    assert not unused & set(_cited_rules())


def _repo_files() -> list[Path]:
    """The repository's files (tracked or new, not ignored); every file if git is unavailable."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT, capture_output=True, text=True, check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return [p for p in ROOT.rglob("*") if ".git" not in p.parts]
    return [ROOT / line for line in out.splitlines() if line]


def test_no_file_cites_the_outside_reference() -> None:
    offenders = []
    for path in _repo_files():
        if not path.is_file():
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue  # binary
        if OUTSIDE_REFERENCE in text:
            offenders.append(str(path.relative_to(ROOT)))
    assert not offenders, f"cite docs/ instead of the outside reference: {offenders}"
