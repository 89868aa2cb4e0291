"""``safe``: one line, no raw control character, bounded, ordinary text unchanged."""

from __future__ import annotations

from istiod_lite.safetext import safe


def test_ordinary_text_is_unchanged() -> None:
    node = "waypoint~10.0.0.1~waypoint-5d9f.ns1~ns1.svc.cluster.local"
    assert safe(node) is node or safe(node) == node


def test_control_and_invisible_characters_are_escaped() -> None:
    assert safe("a\nb\rc\td\x1b[31m\x00\x7f") == "a\\nb\\rc\\td\\x1b[31m\\x00\\x7f"
    assert safe("x\u2028y\u202ez\U000e0001") == "x\\u2028y\\u202ez\\U000e0001"


def test_a_backslash_cannot_pass_for_an_escape() -> None:
    assert safe("a\\nb") == "a\\\\nb"
    assert safe("a\\nb") != safe("a\nb")


def test_length_is_bounded_and_the_cut_counted() -> None:
    out = safe("x" * 1000, limit=10)
    assert out == "xxxxxxxxxx...(+990 chars)"
    assert len(safe("\x1b" * 1000)) < 4 * 256 + 20


def test_non_strings_are_rendered_with_str() -> None:
    assert safe(42) == "42"
    assert safe(ValueError("bad\nline")) == "bad\\nline"
