"""Reading and parsing one YAML config file, defensively.

The file source serves whatever an operator (or a script) drops into a directory, so every step
that could hang, blow up memory or crash the control plane is guarded here, once:

* files are ``stat``-ed before they are opened: FIFOs, sockets and devices are refused without
  ``open`` (opening a FIFO blocks until a writer appears), and so are files over the size cap;
  the open itself uses ``O_NONBLOCK`` and re-checks with ``fstat`` in case the path was swapped;
* YAML aliases are refused (the "billion laughs" bomb expands a few hundred bytes into gigabytes
  once anything walks the result).  A document can only contain an alias if the text contains an
  anchor, and an anchor needs ``&``, so the event scan only runs when that byte is present;
* a YAML syntax error, a read error or non-UTF-8 text makes the whole file *fatal*: the caller
  keeps everything the file defined before (a typo must never delete a DENY policy);
* a document that fails validation is reported together with the key it tried to define, when
  kind and name are readable, so the caller can keep that resource's last-known-good version.

Nothing here raises on bad input; everything becomes a ``ConfigError``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from istiod_lite.gcpause import gc_paused
from istiod_lite.model import ConfigError, Resource, ResourceInvalid, ResourceKey, parse_object
from istiod_lite.model.registry import KindIgnored, kind_class
from istiod_lite.sources.yamlevents import load_documents

__all__ = ["ParsedFile", "SourceReadError", "digest_of", "parse_bytes", "parse_file", "read_source"]

_YAML_ERRORS = (yaml.YAMLError, ValueError, TypeError, RecursionError)


class SourceReadError(Exception):
    """The file cannot be read as config at all (wrong file type, too big, unreadable)."""


@dataclass(frozen=True)
class ParsedFile:
    """What one file yields: valid resources and errors, each tied to its 0-based document index."""

    resources: tuple[tuple[int, Resource], ...] = ()
    errors: tuple[ConfigError, ...] = ()
    #: Documents that failed but name a resource: the caller keeps that resource's last good version.
    failed: tuple[tuple[int, ResourceKey], ...] = ()
    #: The file as a whole could not be read or parsed; the caller keeps everything it defined before.
    fatal: bool = False
    #: Documents of kinds waypoints have no use for (``model/ignored_kinds.py``): notices, not errors.
    ignored: tuple[ConfigError, ...] = ()

    @classmethod
    def failure(cls, message: str, source: str) -> ParsedFile:
        return cls(errors=(ConfigError(message, source=source),), fatal=True)


def digest_of(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=16).digest()


def read_source(path: Path, *, max_bytes: int) -> bytes:
    """Read a regular file of at most ``max_bytes``.  Never opens FIFOs, sockets or devices."""
    try:
        st = os.stat(path)  # follows symlinks; a symlink loop fails with ELOOP instead of hanging
    except OSError as exc:
        raise SourceReadError(f"cannot stat file: {exc.strerror or exc}") from None
    _check_stat(st, max_bytes)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOCTTY", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise SourceReadError(f"cannot open file: {exc.strerror or exc}") from None
    try:
        _check_stat(os.fstat(fd), max_bytes)  # the path may have been replaced since the stat
        chunks: list[bytes] = []
        total = 0
        while True:
            chunk = os.read(fd, min(1 << 20, max_bytes + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > max_bytes:
                raise SourceReadError(f"file is larger than the {max_bytes} byte limit")
        return b"".join(chunks)
    except OSError as exc:
        raise SourceReadError(f"cannot read file: {exc.strerror or exc}") from None
    finally:
        os.close(fd)


def _check_stat(st: os.stat_result, max_bytes: int) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise SourceReadError(f"not a regular file ({file_type(st.st_mode)}); skipped without reading")
    if st.st_size > max_bytes:
        raise SourceReadError(f"file is {st.st_size} bytes, larger than the {max_bytes} byte limit")


def file_type(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "FIFO"), (stat.S_ISSOCK, "socket"), (stat.S_ISCHR, "character device"),
                       (stat.S_ISBLK, "block device"), (stat.S_ISDIR, "directory")):
        if test(mode):
            return name
    return "special file"


def parse_file(path: Path, *, max_bytes: int, source: str | None = None) -> ParsedFile:
    """Read and parse ``path``; ``source`` (default: the path) names it in errors."""
    src = str(path) if source is None else source
    try:
        data = read_source(path, max_bytes=max_bytes)
    except SourceReadError as exc:
        return ParsedFile.failure(str(exc), src)
    return parse_bytes(data, src)


def parse_bytes(data: bytes, source: str) -> ParsedFile:
    """Parse one file's documents and models, with the cyclic GC paused (``gcpause``): parsing
    allocates hundreds of thousands of acyclic objects, and the collector's repeated passes over
    them cost about a third of a large directory's load time (bench/bench_model_parse.py)."""
    with gc_paused():
        return _parse_bytes(data, source)


def _parse_bytes(data: bytes, source: str) -> ParsedFile:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        return ParsedFile.failure(f"file is not valid UTF-8 (byte offset {exc.start})", source)
    try:
        loaded = load_documents(text)
        aliased = frozenset(i for i, (_, uses_alias) in enumerate(loaded) if uses_alias)
        docs = [doc for doc, _ in loaded]
    except _YAML_ERRORS as exc:
        return ParsedFile.failure(f"invalid YAML: {_yaml_message(exc)}", source)

    resources: list[tuple[int, Resource]] = []
    errors: list[ConfigError] = []
    failed: list[tuple[int, ResourceKey]] = []
    ignored: list[ConfigError] = []
    for index, doc in enumerate(docs):
        if doc is None:
            continue
        if index in aliased:
            errors.append(ConfigError("YAML aliases (*name) are not allowed", source=source, doc_index=index))
            failed.extend((index, k) for k in _keys_in(doc))
            continue
        list_items = _list_items(doc)
        items = [("", doc)] if list_items is None else [(f"items[{i}]", it) for i, it in enumerate(list_items)]
        for prefix, obj in items:
            try:
                resources.append((index, parse_object(obj, source=source, doc_index=index)))
            except KindIgnored as exc:
                ignored.append(_prefixed(exc.notice, prefix))
                continue
            except ResourceInvalid as exc:
                errors.extend(_prefixed(e, prefix) for e in exc.errors)
            except Exception as exc:  # validators are code too: contain anything, never crash the source
                errors.append(_prefixed(ConfigError(f"validation failed: {exc!r}", source=source, doc_index=index),
                                        prefix))
            else:
                continue
            key = key_of(obj)
            if key is not None:
                failed.append((index, key))
    return ParsedFile(tuple(resources), tuple(errors), tuple(failed), ignored=tuple(ignored))


def _keys_in(doc: Any) -> list[ResourceKey]:
    items = _list_items(doc)
    return [k for k in map(key_of, [doc] if items is None else items) if k is not None]


def _list_items(doc: Any) -> list[Any] | None:
    """The items of a ``kind: List`` document (what ``kubectl get -o yaml`` prints), else None."""
    if isinstance(doc, dict) and doc.get("kind") == "List" and isinstance(doc.get("items"), list):
        return doc["items"]  # type: ignore[no-any-return]
    return None


def key_of(obj: Any) -> ResourceKey | None:
    """The key a (possibly invalid) document tries to define, if kind and name are readable."""
    if not isinstance(obj, dict):
        return None
    kind, meta = obj.get("kind"), obj.get("metadata")
    if not isinstance(kind, str) or not kind or not isinstance(meta, dict):
        return None
    name, namespace = meta.get("name"), meta.get("namespace", "")
    if not isinstance(name, str) or not name:
        return None
    namespace = namespace if isinstance(namespace, str) else ""
    cls = kind_class(kind)
    if not namespace and cls is not None and cls.NAMESPACED:
        namespace = "default"
    return ResourceKey(kind, namespace, name)


def _prefixed(err: ConfigError, prefix: str) -> ConfigError:
    if not prefix:
        return err
    path = f"{prefix}.{err.field_path}" if err.field_path else prefix
    return dataclasses.replace(err, field_path=path)


def _yaml_message(exc: BaseException) -> str:
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        what = " ".join(p for p in (exc.context, exc.problem) if p) or str(exc)
        return where + what
    text = str(exc)
    return text.splitlines()[0] if text else type(exc).__name__
