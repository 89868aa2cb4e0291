"""The immutable, indexed view of all config that translation reads.

A source produces a new ``ConfigSnapshot`` plus the set of ``ResourceKey``s that changed; the
translator never sees half-applied state and never mutates what it reads.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, NamedTuple, Protocol, TypeVar

from istiod_lite.model.base import Resource

T = TypeVar("T", bound=Resource)


class ResourceKey(NamedTuple):
    kind: str
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}" if self.namespace else f"{self.kind} {self.name}"

    @classmethod
    def of(cls, res: Resource) -> ResourceKey:
        return cls(res.kind, res.namespace, res.name)


class Derivation(Protocol):
    """The key of a value its readers derived from a snapshot (``ConfigSnapshot.derived``)."""

    @property
    def reads(self) -> frozenset[str] | None:
        """The only kinds the value depends on; None: the snapshot at large."""


@dataclass(frozen=True)
class ConfigSnapshot:
    """All resources, grouped by kind then (namespace, name).  Treat as read-only."""

    by_kind: Mapping[str, Mapping[tuple[str, str], Resource]] = field(default_factory=dict)
    #: Monotonic counter of the source that produced it (for logs and debug only).
    revision: int = 0
    #: Values derived from this snapshot by its readers (the translator's tables,
    #: ``translator/core/tables.py``), by declaration: they live and die with the snapshot, and are not
    #: part of its value.  ``build(previous=...)`` hands on those that read only unchanged kinds.
    derived: dict[Derivation, Any] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def build(
        cls, resources: Iterable[Resource], revision: int = 0, *,
        previous: ConfigSnapshot | None = None, changed: Iterable[ResourceKey] | None = None,
    ) -> ConfigSnapshot:
        """Group ``resources`` by kind.  With ``previous`` and the ``changed`` keys, every kind
        without a change keeps ``previous``'s mapping object: tables derived from one kind (pods
        by label, bindings) are memoised on that identity and survive unrelated changes."""
        reuse: set[str] = set()
        if previous is not None and changed is not None:
            touched = {k.kind for k in changed}
            reuse = {k for k in previous.by_kind if k not in touched}
        grouped: dict[str, dict[tuple[str, str], Resource]] = {}
        for res in resources:
            if res.kind not in reuse:
                grouped.setdefault(res.kind, {})[(res.namespace, res.name)] = res
        frozen: dict[str, Mapping[tuple[str, str], Resource]] = {
            k: MappingProxyType(dict(sorted(v.items()))) for k, v in grouped.items()}
        if previous is not None:
            for k in reuse:
                frozen[k] = previous.by_kind[k]
        snapshot = cls(by_kind=MappingProxyType(dict(sorted(frozen.items()))), revision=revision)
        if previous is not None and changed is not None:
            snapshot.derived.update(_inherited(previous, snapshot))
        return snapshot

    def of_kind(self, cls: type[T]) -> list[T]:
        """Every resource of ``cls``'s kind, sorted by (namespace, name)."""
        return list(self.by_kind.get(cls.KIND, {}).values())  # type: ignore[arg-type]

    def get(self, cls: type[T], namespace: str, name: str) -> T | None:
        return self.by_kind.get(cls.KIND, {}).get((namespace, name))  # type: ignore[return-value]

    def get_key(self, key: ResourceKey) -> Resource | None:
        return self.by_kind.get(key.kind, {}).get((key.namespace, key.name))

    def keys(self) -> Iterator[ResourceKey]:
        for kind, items in self.by_kind.items():
            for ns, name in items:
                yield ResourceKey(kind, ns, name)

    def __len__(self) -> int:
        return sum(len(v) for v in self.by_kind.values())

    def changed_keys(self, other: ConfigSnapshot) -> set[ResourceKey]:
        """Keys whose resource differs between ``self`` and ``other`` (added, removed or changed)."""
        changed: set[ResourceKey] = set()
        for kind in set(self.by_kind) | set(other.by_kind):
            a, b = self.by_kind.get(kind, {}), other.by_kind.get(kind, {})
            for k in set(a) | set(b):
                if a.get(k) != b.get(k):
                    changed.add(ResourceKey(kind, *k))
        return changed


def _inherited(previous: ConfigSnapshot, current: ConfigSnapshot) -> dict[Derivation, Any]:
    """``previous``'s derived values that read only kinds whose mapping ``current`` kept (the same
    objects, or absent from both): a VirtualService edit does not rebuild pods-by-label."""
    out: dict[Derivation, Any] = {}
    # A copy (atomic for a dict): a reader may be adding to ``previous`` in another thread.
    for key, value in dict(previous.derived).items():
        reads = key.reads
        if reads is not None and all(current.by_kind.get(k) is previous.by_kind.get(k) for k in reads):
            out[key] = value
    return out
