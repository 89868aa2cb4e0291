"""Human text for explanations (JSON is ``to_dict``); one layout, so golden files pin it."""

from __future__ import annotations

from collections.abc import Sequence

from istiod_lite.explain.model import Entry, ServiceExplanation


def _entry_lines(e: Entry, bullet: str) -> list[str]:
    lines = [f"  {bullet} {e.ref}: {e.reason}"]
    lines += [f"      note: {n}" for n in e.notes]
    return lines


def service_text(explanations: Sequence[ServiceExplanation]) -> str:
    """Each service host: its waypoint and why, what applies (numbered, in order), what does not."""
    out: list[str] = []
    for x in explanations:
        if out:
            out.append("")
        out.append(f"{x.kind} {x.namespace}/{x.name} ({x.host})")
        c = x.choice
        if c.outcome == "Bound":
            out.append(f"  waypoint: {c.waypoint}")
        else:
            out.append(f"  waypoint: none ({c.outcome})")
        out.append(f"    why: {c.reason}")
        out += [f"  note: {n}" for n in x.notes]
        if x.applied:
            out.append("applies, in order:")
            for i, e in enumerate(x.applied, 1):
                out += _entry_lines(e, f"{i}.")
        else:
            out.append("applies: nothing")
        if x.not_applied:
            out.append("does not apply:")
            for e in x.not_applied:
                out += _entry_lines(e, "-")
    return "\n".join(out) + "\n"
