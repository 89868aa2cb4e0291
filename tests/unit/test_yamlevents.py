"""The event-driven YAML builder gives what ``yaml.safe_load_all`` gives (except the documented
differences: timestamps stay strings, alias documents are flagged)."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from istiod_lite.sources.yamlevents import load_documents

REPO = Path(__file__).resolve().parents[2]

SCALARS = """\
a: yes
b: off
c: 0x1F
d: 1_000
e: 1.5e3
f: ~
g: ''
h: '123'
i: .inf
j: -.5
k: 0777
l: !!str 12
m: [1, 2, {x: null}]
n: |
  block
o: -12
p: 1:30
q:
r: NULL
s: True
t: "quoted: yes"
u: !!float 3
v: 6.8523015e+5
w: 0b101
x: .NaN
"""


def _stringify_timestamps(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _stringify_timestamps(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_stringify_timestamps(x) for x in v]
    return v


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and a != a and b != b:
        return True  # NaN
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


CORPUS = [SCALARS, "---\na: 1\n---\n---\n- x\n- y\n...\n", "m:\n  <<: {a: 1, b: 9}\n  b: 2\n",
          "m:\n  b: 2\n  <<: [{a: 1, b: 9}, {c: 3, a: 7}]\n", "[]", "{}", "plain", "- - - deep\n"]
CORPUS += [p.read_text() for p in sorted((REPO / "examples").rglob("*.yaml"))]


@pytest.mark.parametrize("text", CORPUS)
def test_matches_safe_load(text: str) -> None:
    want = list(yaml.load_all(text, Loader=yaml.CSafeLoader))
    got = load_documents(text)
    assert all(not aliased for _, aliased in got)
    assert _same([doc for doc, _ in got], want)


def test_timestamps_stay_strings() -> None:
    (doc, _), = load_documents("t: 2001-12-14t21:59:43.10-05:00\n")
    assert doc == {"t": "2001-12-14t21:59:43.10-05:00"}
    assert isinstance(yaml.safe_load("t: 2001-12-14t21:59:43.10-05:00")["t"], datetime.datetime)


def test_alias_documents_are_flagged_and_keep_their_key() -> None:
    docs = load_documents("kind: Service\nmetadata: &m {name: a}\nspec: *m\n---\nok: 1\n")
    assert docs[0] == ({"kind": "Service", "metadata": {"name": "a"}, "spec": None}, True)
    assert docs[1] == ({"ok": 1}, False)


@pytest.mark.parametrize("text", ["{[1]: 2}", "a: !!python/name:os.system x\n", "a: !custom 1\n", "a: [\n"])
def test_errors_are_yaml_errors(text: str) -> None:
    with pytest.raises(yaml.YAMLError):
        load_documents(text)
