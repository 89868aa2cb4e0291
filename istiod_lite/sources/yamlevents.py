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

from collections.abc import Callable
from typing import Any

import yaml
from yaml._yaml import CParser
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


#: Marks "no key read yet" in the mapping being filled (never a YAML value).
_NO_KEY: Any = object()


def load_documents(text: str) -> list[tuple[Any, bool]]:
    """Every document of ``text`` as ``(value, uses_alias)``.

    In a document that uses an alias each alias is built as None: the caller refuses the document
    but can still read its kind and name (to keep serving that resource's last good version).

    Raises ``yaml.YAMLError`` subclasses for malformed YAML, as ``yaml.load_all`` would.

    Why it is written as one flat loop: a 10,000-service directory is 2.5 million events, so every
    Python call per event counts.  The parser is driven with ``get_event`` directly (``yaml.parse``
    adds a generator and a ``check_event`` call per event), the container being filled and its
    pending key live in locals (saved on ``stack`` while a nested container is open), and the
    plain-scalar cache is a dict lookup in line.
    """
    docs: list[tuple[Any, bool]] = []
    plain = _PlainCache()
    cached = plain.values
    stack: list[tuple[Any, Any]] = []  # (container, pending key) of every enclosing container
    top: Any = None  # the container being filled (None: at document level)
    key: Any = _NO_KEY  # its pending key when it is a mapping
    root: Any = None
    aliased = False
    scalar_ev, map_start, map_end = yaml.ScalarEvent, yaml.MappingStartEvent, yaml.MappingEndEvent
    seq_start, seq_end, alias_ev = yaml.SequenceStartEvent, yaml.SequenceEndEvent, yaml.AliasEvent
    doc_start, doc_end, stream_end = yaml.DocumentStartEvent, yaml.DocumentEndEvent, yaml.StreamEndEvent
    get_event: Callable[[], Any] = CParser(text).get_event
    while True:
        event = get_event()
        cls = type(event)
        if cls is scalar_ev:
            tag = event.tag
            if tag is None:
                raw = event.value
                if event.implicit[0]:
                    value = cached.get(raw, _NO_KEY)
                    if value is _NO_KEY:
                        value = plain.get(raw, event.start_mark)
                else:
                    value = raw
            elif tag == "!":
                value = event.value
            else:
                value = _construct(tag, event.value, event.start_mark)
        elif cls is map_start or cls is seq_start:
            tag = event.tag
            if tag is not None and tag != "!" and tag != (_MAP if cls is map_start else _SEQ):
                what = "mapping" if cls is map_start else "sequence"
                raise ConstructorError(None, None, f"unsupported {what} tag {tag!r}", event.start_mark)
            container: Any = {} if cls is map_start else []
            if top is None:
                root = container
            elif type(top) is list:
                top.append(container)
            elif key is _NO_KEY:
                raise ConstructorError("while constructing a mapping", None, "found unhashable key", None)
            else:
                top[key] = container
            stack.append((top, key))
            top, key = container, _NO_KEY
            continue
        elif cls is map_end or cls is seq_end:
            if cls is map_end and MERGE_KEY in top:
                _apply_merge(top)
            top, key = stack.pop()
            if type(top) is dict:
                key = _NO_KEY  # the finished container was this mapping's value
            continue
        elif cls is alias_ev:
            aliased = True
            value = None
        elif cls is doc_start:
            root, aliased = None, False
            continue
        elif cls is doc_end:
            docs.append((root, aliased))
            continue
        elif cls is stream_end:
            return docs
        else:
            continue
        # A scalar or an alias: the document's root, a list item, a mapping's key or its value.
        if top is None:
            root = value
        elif type(top) is list:
            top.append(value)
        elif key is _NO_KEY:
            key = value
        else:
            top[key] = value
            key = _NO_KEY
