"""Typed memo declarations: values derived from a snapshot, and values derived from one object.

Why: translating a waypoint asks the same questions of a snapshot many times ("which pods does
this Service select?"), and re-derives the same pieces of unchanged config objects after every
change.  Each such value is a pure function of its input, so it is computed once and kept for
exactly as long as its input lives:

* ``Derived[T]``: computed from a whole snapshot, kept in the snapshot (``ConfigSnapshot.derived``).
  With ``reads`` (the only kinds it depends on), a snapshot built from a previous one inherits
  the value while those kinds are unchanged.
* ``PerObject[Obj, T]``: computed from one config object, kept while that object lives (by
  identity, held weakly).  Sources keep the same object for an unchanged resource, so a table
  rebuilt after an edit re-uses what it derived from the objects that did not change.

Every declaration lives in ``translator/core/tables.py`` (one list, typed); the module that owns the
computation binds it there with ``@TABLE.computed_by``.  Thread-safe in the sense a memo needs: a
race at worst computes a value twice, and every caller gets an equal value.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable
from typing import Any, Generic, TypeVar, cast

from istiod_lite.model import ConfigSnapshot

T = TypeVar("T")
Obj = TypeVar("Obj")
F = TypeVar("F", bound=Callable[..., Any])


class Unbound(RuntimeError):
    """A declaration was used before the module that computes it bound its builder."""


class _Declaration(Generic[F]):
    __slots__ = ("_build", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        self._build: F | None = None

    def computed_by(self, build: F) -> F:
        """Bind the function that computes the value (once; usable as a decorator)."""
        if self._build is not None and self._build is not build:
            raise RuntimeError(f"{self!r} is already computed by {self._build!r}")
        self._build = build
        return build

    @property
    def bound(self) -> bool:
        return self._build is not None

    def _builder(self) -> F:
        if self._build is None:
            raise Unbound(f"{self!r} has no builder: import the module that computes it")
        return self._build

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


class Derived(_Declaration[Callable[[ConfigSnapshot], T]]):
    """A value computed from one snapshot, once per snapshot object, kept in the snapshot."""

    __slots__ = ("reads",)

    def __init__(self, name: str, reads: Iterable[str] | None = None) -> None:
        super().__init__(name)
        #: The only kinds the value depends on (a snapshot built from a previous one inherits the
        #: value while their mappings are the same objects); None: the snapshot at large.
        self.reads: frozenset[str] | None = None if reads is None else frozenset(reads)

    def of(self, snapshot: ConfigSnapshot) -> T:
        memo = snapshot.derived
        try:
            return cast(T, memo[self])
        except KeyError:
            pass
        value = self._builder()(snapshot)
        return cast(T, memo.setdefault(self, value))


class PerObject(_Declaration[Callable[[Obj], T]]):
    """A value computed from one config object, once per object, kept while the object lives.

    A value that refers to its object (a view naming its source) keeps that object alive, so
    the weak reference alone would never let go: at most ``max_entries`` are kept, the oldest
    computed going first (it is recomputed if asked for again).
    """

    __slots__ = ("_memo", "max_entries")

    def __init__(self, name: str, max_entries: int = 100_000) -> None:
        super().__init__(name)
        self.max_entries = max_entries
        #: id(obj) -> (weak reference to obj, value); an entry goes when its object does.
        self._memo: dict[int, tuple[weakref.ref[Obj], T]] = {}

    def of(self, obj: Obj) -> T:
        key = id(obj)
        hit = self._memo.get(key)
        if hit is not None and hit[0]() is obj:
            return hit[1]
        value = self._builder()(obj)
        ref = weakref.ref(obj, lambda r, k=key: self._forget(k, r))  # type: ignore[misc]
        memo = self._memo
        memo.pop(key, None)  # a dead object's entry under a re-used id: the new one goes last
        memo[key] = (ref, value)
        if len(memo) > self.max_entries:
            memo.pop(next(iter(memo)), None)
        return value

    def _forget(self, key: int, ref: weakref.ref[Obj]) -> None:
        held = self._memo.get(key)
        if held is not None and held[0] is ref:  # not a newer object that re-used the id
            self._memo.pop(key, None)

    def __len__(self) -> int:
        return len(self._memo)

    def clear(self) -> None:
        """Forget every value (benchmarks measuring a cold start)."""
        self._memo.clear()
