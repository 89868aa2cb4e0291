"""Golden files for node proxies: each case's config -> the Address and Authorization resources
ztunnel is served (protobuf JSON), plus the policy warnings.

    UPDATE=1 python -m pytest tests/golden_ztunnel     # rewrite expected files

Layout: ``tests/golden_ztunnel/<case>/input/*.yaml`` -> ``expected/addresses.json``,
``expected/authorizations.json`` (resource name -> message) and ``expected/warnings.txt``.
Every expected message is also parsed back and re-encoded, so the JSON is exactly what the compiled
protos carry.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format

from istiod_lite._generated.istio.security import authorization_pb2
from istiod_lite._generated.istio.workload import workload_pb2
from istiod_lite.sources import DirectorySource
from istiod_lite.translator.core.output import as_message
from istiod_lite.translator.ztunnel import ADDRESS, AUTHORIZATION, ZtunnelTranslator

HERE = Path(__file__).resolve().parent
CASES = sorted(p.name for p in HERE.iterdir() if (p / "input").is_dir())
UPDATE = os.environ.get("UPDATE") == "1" or os.environ.get("UPDATE_GOLDEN") == "1"


def _as_json(named: dict[str, Any]) -> str:
    doc = {n: json_format.MessageToDict(as_message(m), preserving_proto_field_name=True) for n, m in named.items()}
    return json.dumps(doc, indent=2, sort_keys=True) + "\n"


def translate_case(case: str) -> dict[str, str]:
    update = DirectorySource(HERE / case / "input").load()
    assert not update.errors, [str(e) for e in update.errors]
    result = ZtunnelTranslator().translate(update.snapshot)
    out = {"addresses.json": _as_json(result.resources.by_type[ADDRESS]),
           "authorizations.json": _as_json(result.resources.by_type[AUTHORIZATION])}
    if result.warnings:
        out["warnings.txt"] = "".join(f"{w}\n" for w in result.warnings)
    return out


@pytest.mark.parametrize("case", CASES)
def test_golden_ztunnel(case: str) -> None:
    got = translate_case(case)
    expected = HERE / case / "expected"
    if UPDATE:
        expected.mkdir(exist_ok=True)
        for stale in {p.name for p in expected.iterdir()} - set(got):
            (expected / stale).unlink()
        for name, text in got.items():
            (expected / name).write_text(text)
    want = {p.name: p.read_text() for p in sorted(expected.iterdir())}
    assert sorted(got) == sorted(want), "files differ from the expected ones (UPDATE=1 to accept)"
    for name, text in want.items():
        assert got[name] == text, f"{case}/{name} differs (UPDATE=1 to accept)"


@pytest.mark.parametrize("case", CASES)
def test_expected_json_parses_with_the_compiled_protos(case: str) -> None:
    """The expected JSON is valid for the workload API messages (unknown fields would fail)."""
    types = (("addresses.json", workload_pb2.Address), ("authorizations.json", authorization_pb2.Authorization))
    for name, cls in types:
        for doc in json.loads((HERE / case / "expected" / name).read_text()).values():
            msg = json_format.ParseDict(doc, cls())
            assert json_format.MessageToDict(msg, preserving_proto_field_name=True) == doc


def test_fresh_and_memoised_translators_agree() -> None:
    """The memo never changes the output: translating twice with one translator gives equal bytes."""
    update = DirectorySource(HERE / "sources" / "input").load()
    tr = ZtunnelTranslator()
    first = tr.translate(update.snapshot).resources
    second = tr.translate(update.snapshot).resources
    assert tr.last_built == 0
    for t in (ADDRESS, AUTHORIZATION):
        assert {n: as_message(m).SerializeToString(deterministic=True) for n, m in first.by_type[t].items()} == \
            {n: as_message(m).SerializeToString(deterministic=True) for n, m in second.by_type[t].items()}
