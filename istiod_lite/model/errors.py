"""One error type for every bad input, carrying where it came from and which field is wrong.

The message shape is fixed because users grep for it and tests assert on it::

    examples/bad.yaml#2: VirtualService default/reviews: spec.http[0].route[1].weight: must be between 0 and 100
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from pydantic import ValidationError


@dataclass(frozen=True, slots=True)
class ConfigError:
    """A rejected resource (or document).  ``doc_index`` is 0-based within its file."""

    message: str
    source: str = ""
    doc_index: int | None = None
    kind: str = ""
    namespace: str = ""
    name: str = ""
    field_path: str = ""

    @property
    def object_ref(self) -> str:
        if not self.name:
            return ""
        return f"{self.namespace}/{self.name}" if self.namespace else self.name

    def __str__(self) -> str:
        parts: list[str] = []
        if self.source:
            parts.append(self.source if self.doc_index is None else f"{self.source}#{self.doc_index}")
        if self.kind or self.name:
            parts.append(" ".join(p for p in (self.kind, self.object_ref) if p))
        if self.field_path:
            parts.append(self.field_path)
        parts.append(self.message)
        return ": ".join(parts)


def format_loc(loc: Sequence[int | str]) -> str:
    """``("spec", "http", 0, "route", 1, "weight")`` -> ``spec.http[0].route[1].weight``.

    pydantic inserts validator and union-member tags into ``loc`` (``function-after[...]``,
    ``tagged-union[...]``); they are not field names and are dropped.
    """
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
            continue
        if "[" in part and ("function-" in part or "union" in part or part.startswith(("constrained-", "lax-"))):
            continue
        out += f".{part}" if out else part
    return out


_GENERIC = {
    "extra_forbidden": "unknown field",
    "missing": "required field is missing",
}


def errors_from_validation(
    exc: ValidationError,
    *,
    source: str = "",
    doc_index: int | None = None,
    kind: str = "",
    namespace: str = "",
    name: str = "",
    prefix: Sequence[int | str] = (),
) -> list[ConfigError]:
    out: list[ConfigError] = []
    seen: set[tuple[str, str]] = set()
    for err in exc.errors(include_url=False):
        path = format_loc((*prefix, *err["loc"]))
        msg = _GENERIC.get(err["type"], err["msg"])
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        if (path, msg) in seen:
            continue
        seen.add((path, msg))
        out.append(
            ConfigError(
                message=msg, source=source, doc_index=doc_index, kind=kind,
                namespace=namespace, name=name, field_path=path,
            )
        )
    return out


def first_lines(errors: Iterable[ConfigError]) -> str:
    return "\n".join(str(e) for e in errors)
