"""Build YAML documents straight from libyaml's parser events.

Why not ``yaml.load_all``: with ``CSafeLoader`` the parser is C, but composing the node graph and
constructing objects run in Python and cost ~4x the parse itself (a 5,000-document directory:
0.9 s to load vs 0.24 s to parse).  Config files are plain trees of maps, lists and scalars, so
one pass over the events builds the same values PyYAML would, for a fraction of the cost, and
finds aliases in the same pass (aliases are refused: see ``yamlfile``).

Semantics match ``yaml.safe_load``: YAML 1.1 implicit resolution of plain scalars (bools such as
``yes``/``on``, ints in every base, floats, nulls, timestamps) using PyYAML's own resolver table
and constructors, so both give identical results; quoted scalars are strings; explicit standard
tags (``!!str``, ``!!int``, ...) are honoured; other tags are an error, as with ``safe_load``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import yaml
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.nodes import ScalarNode
from yaml.resolver import Resolver

_STR = "tag:yaml.org,2002:str"
_MAP = "tag:yaml.org,2002:map"
_SEQ = "tag:yaml.org,2002:seq"
_TIMESTAMP = "tag:yaml.org,2002:timestamp"
_MERGE = "tag:yaml.org,2002:merge"
_CONSTRUCTOR = SafeConstructor()
_SCALAR_CONSTRUCTORS = {
    tag: fn
    for tag, fn in SafeConstructor.yaml_constructors.items()
    if tag is not None and tag not in (_MAP, _SEQ, "tag:yaml.org,2002:omap", "tag:yaml.org,2002:pairs",
                                       "tag:yaml.org,2002:set")
}
_IMPLICIT = Resolver.yaml_implicit_resolvers
_MEMO_LIMIT = 65536


class _MergeKey:
    """The ``<<`` merge key: applied when its mapping ends (explicit keys win over merged ones)."""

    def __repr__(self) -> str:
        return "<<"


MERGE_KEY = _MergeKey()


def _apply_merge(d: dict[Any, Any]) -> None:
    merged = d.pop(MERGE_KEY)
    for source in merged if isinstance(merged, list) else [merged]:
        if not isinstance(source, dict):
            raise ConstructorError("while constructing a mapping", None,
                                   "expected a mapping or list of mappings for merging", None)
        for k, v in source.items():
            d.setdefault(k, v)


def _resolve_plain(value: str) -> str:
    """PyYAML's ``Resolver.resolve`` for a plain scalar: first-character table, then wildcards."""
    for tag, regexp in [*_IMPLICIT.get(value[0] if value else "", []), *_IMPLICIT.get(None, [])]:
        if regexp.match(value):
            return str(tag)
    return _STR


def _construct(tag: str, value: str, mark: Any) -> Any:
    # Timestamps stay strings, as Kubernetes' YAML-to-JSON conversion leaves them (creationTimestamp);
    # "<<" is the merge key marker, handled by the mapping builder.
    if tag in (_STR, _TIMESTAMP):
        return value
    if tag == _MERGE:
        return MERGE_KEY
    fn = _SCALAR_CONSTRUCTORS.get(tag)
    if fn is None:
        raise ConstructorError(None, None, f"could not determine a constructor for the tag {tag!r}", mark)
    return fn(_CONSTRUCTOR, ScalarNode(tag, value, mark, mark))


class _PlainCache:
    """Plain scalars repeat a lot in config (``v1``, ``http``, ``9080``): resolve each spelling once."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}

    def get(self, value: str, mark: Any) -> Any:
        try:
            return self.values[value]
        except KeyError:
            pass
        out = _construct(_resolve_plain(value), value, mark)
        if len(self.values) < _MEMO_LIMIT and not isinstance(out, (list, dict, set, bytes)):
            self.values[value] = out
        return out


def load_documents(text: str) -> list[tuple[Any, bool]]:
    """Every document of ``text`` as ``(value, uses_alias)``.

    In a document that uses an alias each alias is built as None: the caller refuses the document
    but can still read its kind and name (to keep serving that resource's last good version).

    Raises ``yaml.YAMLError`` subclasses for malformed YAML, as ``yaml.load_all`` would.
    """
    docs: list[tuple[Any, bool]] = []
    plain = _PlainCache()
    stack: list[Any] = []  # containers being filled; a dict is paired with its pending key below
    keys: list[Any] = []  # pending key per open mapping (a sentinel when none)
    root: Any = None
    aliased = False
    no_key = keys  # unique sentinel object

    def add(value: Any) -> None:
        nonlocal root
        if not stack:
            root = value
            return
        top = stack[-1]
        if type(top) is list:
            top.append(value)
            return
        key = keys[-1]
        if key is no_key:
            if isinstance(value, (dict, list)):
                raise ConstructorError("while constructing a mapping", None, "found unhashable key", None)
            keys[-1] = value
        else:
            top[key] = value
            keys[-1] = no_key

    events: Iterable[Any] = yaml.parse(text, Loader=yaml.CSafeLoader)
    for event in events:
        cls = type(event)
        if cls is yaml.ScalarEvent:
            tag = event.tag
            if tag is None or tag == "!":
                value = plain.get(event.value, event.start_mark) if event.implicit[0] and tag is None \
                    else event.value
            else:
                value = _construct(tag, event.value, event.start_mark)
            add(value)
        elif cls is yaml.MappingStartEvent:
            if event.tag not in (None, "!", _MAP):
                raise ConstructorError(None, None, f"unsupported mapping tag {event.tag!r}", event.start_mark)
            d: dict[Any, Any] = {}
            add(d)
            stack.append(d)
            keys.append(no_key)
        elif cls is yaml.MappingEndEvent:
            done = stack.pop()
            keys.pop()
            if MERGE_KEY in done:
                _apply_merge(done)
        elif cls is yaml.SequenceStartEvent:
            if event.tag not in (None, "!", _SEQ):
                raise ConstructorError(None, None, f"unsupported sequence tag {event.tag!r}", event.start_mark)
            lst: list[Any] = []
            add(lst)
            stack.append(lst)
            keys.append(no_key)
        elif cls is yaml.SequenceEndEvent:
            stack.pop()
            keys.pop()
        elif cls is yaml.AliasEvent:
            aliased = True
            add(None)
        elif cls is yaml.DocumentStartEvent:
            root, aliased = None, False
        elif cls is yaml.DocumentEndEvent:
            docs.append((root, aliased))
    return docs
