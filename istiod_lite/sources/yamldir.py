"""A directory of YAML files as the config source: full scans, polling, debounce, last-known-good.

Why polling: ``os.scandir``/``stat`` signatures work on every filesystem and in every container
(no inotify limits, no missed events on bind mounts, ConfigMap symlink swaps included), and a
poll of a config directory costs microseconds.

Semantics, deliberately stricter than Istio's file source (which deletes whatever no longer
parses, so a typo in the document holding a DENY policy removes the policy):

* **Per-resource last-known-good.**  A document that fails validation but names resource K keeps
  K's previously served version (and reports the error).  A file that cannot be read or parsed
  as YAML at all keeps every resource it contributed.  The config root disappearing keeps
  everything.  Only removing a document or file, or renaming what it defines, removes resources.
* **Duplicates.**  The first definition in sorted path order wins; the later one is an error that
  names both places.  Fresh valid definitions take precedence over last-known-good ones.
* **Exact change sets.**  Files are re-read only when their stat signature changed, re-parsed only
  when their content hash changed, and ``changed`` holds only keys whose resource differs, so a
  whitespace-only edit produces no update at all.
* **Debounce.**  After a change is seen, the directory is re-scanned every ``min(poll, debounce/4)``
  until nothing has changed for ``debounce`` seconds, but never longer than ``10 * debounce`` in
  total (a file rewritten forever must still be picked up), then rebuilt once.
* **Racy files.**  A file modified within ``_RACY_NS`` of being read could change again without
  changing its signature on coarse-timestamp filesystems; such files are re-read (and hashed) on
  every poll until they are old enough.  ``load()`` always re-reads every file.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import stat
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from istiod_lite.gcpause import gc_paused
from istiod_lite.model import ConfigError, Resource, ResourceKey
from istiod_lite.sources.contract import SourceUpdate, UpdateHandler
from istiod_lite.sources.publisher import Publisher
from istiod_lite.sources.yamlfile import ParsedFile, SourceReadError, digest_of, file_type, parse_bytes, read_source

log = logging.getLogger(__name__)

_RACY_NS = 2_000_000_000  # 2 s: covers 1 s / 2 s timestamp granularity (ext3, HFS+, FAT, some NFS)
_SUFFIXES = (".yaml", ".yml")
#: (mtime_ns, size, inode, device, ctime_ns, mode): ctime catches chmod that makes a file readable.
_Sig = tuple[int, int, int, int, int, int]


@dataclass(frozen=True)
class _Entry:
    path: Path
    sig: _Sig | None = None
    error: str | None = None  # stat failed or not a regular file: reported, never opened


@dataclass(frozen=True)
class _Scan:
    root_ok: bool
    files: dict[str, _Entry] = field(default_factory=dict)
    errors: tuple[ConfigError, ...] = ()
    unlisted: tuple[str, ...] = ()  # directories that could not be listed: their files keep their state


@dataclass
class _FileState:
    sig: _Sig | None
    digest: bytes | None
    racy: bool
    parsed: ParsedFile
    contrib: dict[ResourceKey, Resource]  # what the file served after the last build (for fatal LKG)


def _sig(st: os.stat_result) -> _Sig:
    return (st.st_mtime_ns, st.st_size, st.st_ino, st.st_dev, st.st_ctime_ns, st.st_mode)


def _scan_tree(root: Path) -> _Scan:
    """List every ``*.yaml``/``*.yml`` under ``root`` (sorted, hidden entries skipped), stat only."""
    try:
        root_st = os.stat(root)
    except OSError as exc:
        return _root_unusable(root, exc.strerror or str(exc))
    if not stat.S_ISDIR(root_st.st_mode):
        return _root_unusable(root, f"not a directory but a {file_type(root_st.st_mode)}")
    files: dict[str, _Entry] = {}
    errors: list[ConfigError] = []
    unlisted: list[str] = []
    seen_dirs = {(root_st.st_dev, root_st.st_ino)}  # each directory once: symlink loops end here
    stack: list[tuple[Path, str]] = [(root, "")]
    while stack:
        directory, rel = stack.pop()
        try:
            with os.scandir(directory) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            if not rel:
                return _root_unusable(root, exc.strerror or str(exc))
            errors.append(ConfigError(f"cannot list directory: {exc.strerror or exc}", source=rel.rstrip("/")))
            unlisted.append(rel)
            continue
        subdirs: list[tuple[Path, str]] = []
        for entry in entries:
            if entry.name.startswith("."):
                continue
            erel, path = rel + entry.name, Path(entry.path)
            try:
                st = entry.stat()  # follows symlinks; ELOOP / dangling link raise instead of hanging
            except OSError as exc:
                if entry.name.lower().endswith(_SUFFIXES):
                    files[erel] = _Entry(path, error=f"cannot stat file: {exc.strerror or exc}")
                continue
            if stat.S_ISDIR(st.st_mode):
                if (st.st_dev, st.st_ino) not in seen_dirs:
                    seen_dirs.add((st.st_dev, st.st_ino))
                    subdirs.append((path, erel + "/"))
            elif not entry.name.lower().endswith(_SUFFIXES):
                continue
            elif stat.S_ISREG(st.st_mode):
                files[erel] = _Entry(path, sig=_sig(st))
            else:
                msg = f"not a regular file ({file_type(st.st_mode)}); skipped without reading"
                files[erel] = _Entry(path, error=msg)
        stack.extend(reversed(subdirs))
    return _Scan(True, dict(sorted(files.items())), tuple(errors), tuple(unlisted))


def _root_unusable(root: Path, why: str) -> _Scan:
    msg = f"config directory {root} is not usable ({why}); keeping the last good config"
    return _Scan(False, errors=(ConfigError(msg, source="."),))


def _error_order(err: ConfigError) -> tuple[str, int, str]:
    return (err.source, -1 if err.doc_index is None else err.doc_index, str(err))


class DirectorySource:
    """Serves every resource defined under ``root``.  ``load`` scans once; ``run`` watches."""

    def __init__(
        self, root: Path, *, poll_interval: float = 0.5, debounce: float = 0.1, max_file_bytes: int = 10 * 1024 * 1024
    ) -> None:
        self.root = Path(root)
        self.poll_interval = poll_interval
        self.debounce = debounce
        self.max_file_bytes = max_file_bytes
        self._lock = threading.Lock()  # load() may run in a worker thread while run() polls
        self._files: dict[str, _FileState] = {}
        self._scan: _Scan | None = None
        self._publisher = Publisher(log, "config", _error_order)

    @property
    def current(self) -> SourceUpdate | None:
        return self._publisher.current

    def load(self) -> SourceUpdate:
        """Scan and re-read everything now (only content that changed is re-parsed)."""
        return self._rebuild(force=True)

    async def run(self, on_update: UpdateHandler) -> None:
        """Poll until cancelled.  Loads first (and reports that) if ``load`` was never called."""
        if self.current is None:
            await self._publisher.hand_over(on_update, await asyncio.to_thread(self.load))
        while True:
            await asyncio.sleep(self.poll_interval)
            try:
                update = await self._poll()
            except Exception:
                log.exception("scanning %s failed; keeping the current config and retrying", self.root)
                continue
            if update is not None:
                # The directory has been quiet for ``debounce``: that is this change's debounce,
                # the control plane adds none.
                await self._publisher.hand_over(on_update, update, settled=True)

    # -- watching ----------------------------------------------------------------------------------
    async def _poll(self) -> SourceUpdate | None:
        scan = await asyncio.to_thread(_scan_tree, self.root)
        if scan == self._scan:
            if not any(st.racy for st in self._files.values()):
                return None
            # A file written within the timestamp granularity can change under an unchanged stat
            # signature: compare its content.  Unchanged: nothing to do.  Changed: settle like
            # any other change (the bytes read may be a save caught half-way).
            digests = await asyncio.to_thread(self._racy_digests)
            if all(self._files[rel].digest == d for rel, d in digests.items() if rel in self._files):
                self._unracy()
                return None
        await self._settle(scan)
        before = self.current
        update = await asyncio.to_thread(self._rebuild, force=False)
        return None if before is not None and update.revision == before.revision else update

    def _racy_digests(self) -> dict[str, bytes | None]:
        """Content digests of the files whose stat signature cannot be trusted yet."""
        scan = self._scan
        out: dict[str, bytes | None] = {}
        for rel, st in list(self._files.items()):
            entry = scan.files.get(rel) if scan is not None else None
            if st.racy and entry is not None:
                try:
                    out[rel] = digest_of(read_source(entry.path, max_bytes=self.max_file_bytes))
                except SourceReadError:
                    out[rel] = None
        return out

    def _unracy(self) -> None:
        """Files whose timestamps are now old enough to be trusted stop being re-read."""
        now = time.time_ns()
        with self._lock:
            for rel, st in list(self._files.items()):
                if st.racy and st.sig is not None and not 0 <= now - st.sig[0] < _RACY_NS:
                    self._files[rel] = dataclasses.replace(st, racy=False)

    def _fingerprint(self) -> tuple[_Scan, dict[str, bytes | None]]:
        return _scan_tree(self.root), self._racy_digests()

    async def _settle(self, scan: _Scan) -> None:
        """Wait until the directory has been quiet for ``debounce`` (at most ``10 * debounce``):
        no stat change and no content change of a file too recent for its stat to be trusted."""
        loop = asyncio.get_running_loop()
        start = quiet_since = loop.time()
        step = max(0.005, min(self.poll_interval, self.debounce / 4))
        last = (scan, await asyncio.to_thread(self._racy_digests))
        while True:
            now = loop.time()
            remaining = self.debounce - (now - quiet_since)
            if remaining <= 0 or now - start >= 10 * self.debounce:
                return
            await asyncio.sleep(min(step, remaining))
            current = await asyncio.to_thread(self._fingerprint)
            if current != last:
                last, quiet_since = current, loop.time()

    # -- building ----------------------------------------------------------------------------------
    def _rebuild(self, *, force: bool) -> SourceUpdate:
        # The collector stays paused for the whole rebuild, not per file: between files it would
        # traverse everything parsed so far, and the snapshot build allocates as much again.
        with self._lock, gc_paused():
            scan = _scan_tree(self.root)
            if scan.root_ok:
                self._files = self._refresh(scan, force)
            self._scan = scan
            resources, owners, errors = self._serve()
            notices = tuple(n for st in self._files.values() for n in st.parsed.ignored)
            update = self._publisher.publish(resources, errors, notices=notices)
            self._record_contributions(resources, owners)
            return update

    def _refresh(self, scan: _Scan, force: bool) -> dict[str, _FileState]:
        files = {rel: self._refresh_one(rel, entry, self._files.get(rel), force) for rel, entry in scan.files.items()}
        if scan.unlisted:
            for rel, old in self._files.items():
                if rel not in files and rel.startswith(scan.unlisted):
                    files[rel] = old
        return dict(sorted(files.items()))

    def _refresh_one(self, rel: str, entry: _Entry, old: _FileState | None, force: bool) -> _FileState:
        keep = old.contrib if old is not None else {}
        if entry.error is not None or entry.sig is None:
            return _FileState(None, None, False, ParsedFile.failure(entry.error or "cannot stat file", rel), keep)
        if old is not None and not force and not old.racy and old.sig == entry.sig:
            return old
        now = time.time_ns()
        try:
            data = read_source(entry.path, max_bytes=self.max_file_bytes)
        except SourceReadError as exc:
            return _FileState(None, None, False, ParsedFile.failure(str(exc), rel), keep)
        digest = digest_of(data)
        racy = 0 <= now - entry.sig[0] < _RACY_NS
        if old is not None and old.digest == digest:
            return dataclasses.replace(old, sig=entry.sig, racy=racy)
        return _FileState(entry.sig, digest, racy, parse_bytes(data, rel), keep)

    def _serve(self) -> tuple[dict[ResourceKey, Resource], dict[ResourceKey, str], tuple[ConfigError, ...]]:
        """What the directory serves now, which file each resource comes from, and every current
        error (the publisher does the rest).

        Fresh valid definitions first (sorted path order; later duplicates are errors), then
        last-known-good for what nothing fresh defines: everything a file that cannot be read or
        parsed contributed before, and the served version of each document that fails validation.
        """
        scan = self._scan
        winners: dict[ResourceKey, tuple[Resource, str]] = {}
        places: dict[ResourceKey, str] = {}
        errors: list[ConfigError] = list(scan.errors) if scan is not None else []
        for rel, st in self._files.items():
            errors.extend(st.parsed.errors)
            if st.parsed.fatal:
                continue
            for doc, res in st.parsed.resources:
                key = ResourceKey.of(res)
                if key in winners:
                    errors.append(ConfigError(
                        f"duplicate definition: already defined at {places[key]}, which is kept",
                        source=rel, doc_index=doc, kind=key.kind, namespace=key.namespace, name=key.name,
                    ))
                    continue
                winners[key], places[key] = (res, rel), f"{rel}#{doc}"
        last_good = self._publisher.last_good
        for rel, st in self._files.items():  # last-known-good fills only what nothing fresh defines
            lkg = st.contrib.items() if st.parsed.fatal else ((k, last_good(k)) for _, k in st.parsed.failed)
            for key, old_res in lkg:
                if old_res is not None and key not in winners:
                    winners[key] = (old_res, rel)
        resources = {key: res for key, (res, _) in winners.items()}
        owners = {key: rel for key, (_, rel) in winners.items()}
        return resources, owners, tuple(sorted(set(errors), key=_error_order))

    def _record_contributions(self, resources: dict[ResourceKey, Resource], owners: dict[ResourceKey, str]) -> None:
        """Remember what each readable file serves: its last-known-good if it later stops parsing.

        ``resources`` is the dict the publisher published, where an unchanged resource was swapped
        for the previous object: the contributions keep that identity.
        """
        for st in self._files.values():
            if not st.parsed.fatal:
                st.contrib = {}
        for key, rel in owners.items():
            st = self._files[rel]
            if not st.parsed.fatal:
                st.contrib[key] = resources[key]
