"""The values ``explain service`` answers with (plain frozen dataclasses, JSON by ``to_dict``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Entry:
    """One config object that applies to a service, or names it and does not apply."""

    kind: str
    namespace: str
    name: str
    #: Applied: what it does for the service and why it is picked.  Not applied: why not.
    reason: str
    #: A stable identifier of the reason, for tools (e.g. ``wrong-namespace``, ``selector``).
    code: str = ""
    #: Settings the waypoint ignores or enforces differently (the diagnostics messages about it).
    notes: tuple[str, ...] = ()

    @property
    def ref(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "namespace": self.namespace, "name": self.name,
                               "reason": self.reason}
        if self.code:
            out["code"] = self.code
        if self.notes:
            out["notes"] = list(self.notes)
        return out


@dataclass(frozen=True)
class WaypointChoice:
    """Which waypoint serves the service (``waypoint`` empty: none) and why."""

    waypoint: str
    #: ``Bound`` or why not (``NoLabel``, ``OptedOut``, ``WaypointNotFound``, ``UnsupportedTrafficType``,
    #: ``AttachmentDenied``, or a serving problem such as ``NotServable``).
    outcome: str
    reason: str
    #: The object carrying the deciding label ("" when none) and the label(s) as written.
    label_on: str = ""
    labels: tuple[tuple[str, str], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"waypoint": self.waypoint or None, "outcome": self.outcome, "reason": self.reason}
        if self.label_on:
            out["labelOn"] = self.label_on
            out["labels"] = dict(self.labels)
        return out


@dataclass(frozen=True)
class ServiceExplanation:
    """Everything about one service host: its waypoint, what applies (in order) and what does not."""

    kind: str
    namespace: str
    name: str
    host: str
    choice: WaypointChoice
    applied: tuple[Entry, ...] = ()
    not_applied: tuple[Entry, ...] = ()
    #: Facts about the service itself a reader needs (ports a waypoint does not serve, ...).
    notes: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "namespace": self.namespace, "name": self.name, "host": self.host,
                "waypoint": self.choice.to_dict(), "applied": [e.to_dict() for e in self.applied],
                "notApplied": [e.to_dict() for e in self.not_applied], "notes": list(self.notes)}
