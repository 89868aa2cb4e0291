"""The YAML directory source: parsing, last-known-good, safety limits, change sets and watching."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import threading
import time
from pathlib import Path

import pytest

from istiod_lite.model import ResourceKey
from istiod_lite.sources import DirectorySource, SourceUpdate
from istiod_lite.sources.yamlfile import parse_file


def svc(name: str, port: int = 80, ns: str = "default", extra: str = "") -> str:
    return (
        f"apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: {ns}\n{extra}"
        f"spec:\n  ports:\n  - port: {port}\n"
    )


def sa(name: str, ns: str = "default") -> str:
    return f"apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: {name}\n  namespace: {ns}\n"


def docs(*parts: str) -> str:
    return "---\n".join(parts)


def key(name: str, kind: str = "Service", ns: str = "default") -> ResourceKey:
    return ResourceKey(kind, ns, name)


def port_of(update: SourceUpdate, name: str) -> int:
    res = update.snapshot.get_key(key(name))
    assert res is not None, f"Service {name} missing"
    return int(res.spec.ports[0].port)  # type: ignore[attr-defined]


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_load_multi_document_and_nested(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", docs("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n", "", svc("web")))
    write(tmp_path / "sub" / "b.yml", docs(sa("api", "shop"), "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n"))
    write(tmp_path / "ignored.txt", svc("nope"))
    write(tmp_path / ".hidden" / "c.yaml", svc("hidden"))
    write(tmp_path / ".dot.yaml", svc("dot"))
    up = DirectorySource(tmp_path).load()
    assert up.errors == ()
    assert up.revision == 1
    expected = {ResourceKey("Namespace", "", "shop"), key("web"), key("api", "ServiceAccount", "shop"), key("p", "Pod")}
    assert set(up.snapshot.keys()) == expected
    assert up.changed == frozenset(expected)


def test_kind_list_items(tmp_path: Path) -> None:
    items = "".join("- " + sa(n).replace("\n", "\n  ").rstrip() + "\n" for n in ("a", "b"))
    write(tmp_path / "l.yaml", f"apiVersion: v1\nkind: List\nitems:\n{items}")
    up = DirectorySource(tmp_path).load()
    assert up.errors == ()
    assert {k.name for k in set(up.snapshot.keys())} == {"a", "b"}


def test_one_bad_three_good(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", docs(svc("a"), svc("bad", 70000), svc("b"), sa("c")))
    up = DirectorySource(tmp_path).load()
    assert len(up.snapshot) == 3
    assert len(up.errors) == 1
    err = up.errors[0]
    assert (err.source, err.doc_index, err.field_path, err.name) == ("a.yaml", 1, "spec.ports[0].port", "bad")
    assert str(err).startswith("a.yaml#1: Service default/bad: spec.ports[0].port: ")


def test_last_known_good_on_invalid_edit(tmp_path: Path) -> None:
    f = tmp_path / "a.yaml"
    write(f, docs(svc("a", 80), svc("b", 81)))
    src = DirectorySource(tmp_path)
    first = src.load()
    write(f, docs(svc("a", 70000), svc("b", 82)))
    up = src.load()
    assert port_of(up, "a") == 80  # kept from the previous load
    assert port_of(up, "b") == 82
    assert up.changed == {key("b")}
    assert [e.name for e in up.errors] == ["a"]
    assert up.revision == first.revision + 1
    write(f, docs(svc("a", 90), svc("b", 82)))  # fixed: the new version wins, the error clears
    up = src.load()
    assert port_of(up, "a") == 90 and up.errors == () and up.changed == {key("a")}


def test_invalid_on_first_load_is_not_served(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", svc("a", 70000))
    up = DirectorySource(tmp_path).load()
    assert len(up.snapshot) == 0 and len(up.errors) == 1


def test_removing_document_or_file_removes_resources(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", docs(svc("a"), svc("b")))
    write(tmp_path / "c.yaml", svc("c"))
    src = DirectorySource(tmp_path)
    src.load()
    write(tmp_path / "a.yaml", svc("a"))
    up = src.load()
    assert up.changed == {key("b")} and up.snapshot.get_key(key("b")) is None
    (tmp_path / "c.yaml").unlink()
    up = src.load()
    assert up.changed == {key("c")} and set(up.snapshot.keys()) == {key("a")}


def test_renamed_invalid_document_drops_old_name(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", svc("a"))
    src = DirectorySource(tmp_path)
    src.load()
    write(tmp_path / "a.yaml", svc("renamed", 70000))
    up = src.load()
    assert len(up.snapshot) == 0 and up.changed == {key("a")} and len(up.errors) == 1


def test_yaml_syntax_error_keeps_previous_resources(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", docs(svc("a"), svc("b")))
    src = DirectorySource(tmp_path)
    src.load()
    write(tmp_path / "a.yaml", docs(svc("a"), "kind: [unclosed\n"))
    up = src.load()
    assert set(up.snapshot.keys()) == {key("a"), key("b")}
    assert up.changed == frozenset()
    assert len(up.errors) == 1 and up.errors[0].source == "a.yaml" and "invalid YAML" in up.errors[0].message
    assert "line " in up.errors[0].message
    up = src.load()  # still broken on the next scan: still kept
    assert len(up.snapshot) == 2


def test_alias_bomb_refused_quickly(tmp_path: Path) -> None:
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for prev, cur in zip("abcdefgh", "bcdefghi", strict=True):
        lines.append(f"{cur}: &{cur} [" + ",".join([f"*{prev}"] * 9) + "]")
    bomb = "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: boom\n" + "\n".join(lines) + "\n"
    write(tmp_path / "a.yaml", docs(sa("ok"), bomb, svc("amp", extra="  annotations:\n    q: a&b\n")))
    start = time.monotonic()
    up = DirectorySource(tmp_path).load()
    assert time.monotonic() - start < 2
    assert {k.name for k in set(up.snapshot.keys())} == {"ok", "amp"}  # "&" in a plain string is harmless
    assert len(up.errors) == 1 and up.errors[0].doc_index == 1 and "alias" in up.errors[0].message


def test_fifo_skipped_without_opening(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", svc("a"))
    os.mkfifo(tmp_path / "pipe.yaml")
    result: list[SourceUpdate] = []
    t = threading.Thread(target=lambda: result.append(DirectorySource(tmp_path).load()), daemon=True)
    t.start()
    t.join(5)
    if not result:  # unblock the hung reader so the test process can exit, then fail
        fd = os.open(tmp_path / "pipe.yaml", os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)
        pytest.fail("load() hung on a FIFO")
    up = result[0]
    assert set(up.snapshot.keys()) == {key("a")}
    assert [e.source for e in up.errors] == ["pipe.yaml"] and "FIFO" in up.errors[0].message


def test_symlinks_and_loops(tmp_path: Path) -> None:
    write(tmp_path / "real" / "a.yaml", svc("a"))
    (tmp_path / "link.yaml").symlink_to(tmp_path / "real" / "a.yaml")
    (tmp_path / "real" / "loop").symlink_to(tmp_path)  # directory loop
    (tmp_path / "x.yaml").symlink_to(tmp_path / "y.yaml")
    (tmp_path / "y.yaml").symlink_to(tmp_path / "x.yaml")  # file loop
    up = DirectorySource(tmp_path).load()
    assert set(up.snapshot.keys()) == {key("a")}
    sources = sorted(e.source for e in up.errors)
    assert sources == ["real/a.yaml", "x.yaml", "y.yaml"]  # duplicate of link.yaml + two ELOOPs


def test_oversized_file_keeps_last_known_good(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", svc("a"))
    src = DirectorySource(tmp_path, max_file_bytes=1000)
    src.load()
    write(tmp_path / "a.yaml", svc("a", 81) + "# " + "x" * 2000 + "\n")
    up = src.load()
    assert port_of(up, "a") == 80
    assert len(up.errors) == 1 and "limit" in up.errors[0].message


def test_non_utf8_and_unreadable(tmp_path: Path) -> None:
    (tmp_path / "bin.yaml").write_bytes(b"kind: \xff\xfe\n")
    up = DirectorySource(tmp_path).load()
    assert len(up.errors) == 1 and "UTF-8" in up.errors[0].message
    if os.geteuid() != 0:
        write(tmp_path / "secret.yaml", svc("s"))
        (tmp_path / "secret.yaml").chmod(0)
        up = DirectorySource(tmp_path).load()
        assert any(e.source == "secret.yaml" and "cannot open" in e.message for e in up.errors)


def test_duplicates_first_by_sorted_path_wins(tmp_path: Path) -> None:
    write(tmp_path / "b.yaml", svc("dup", 82))
    write(tmp_path / "a" / "z.yaml", svc("dup", 81))
    up = DirectorySource(tmp_path).load()
    assert port_of(up, "dup") == 81
    assert len(up.errors) == 1
    err = up.errors[0]
    assert err.source == "b.yaml" and err.doc_index == 0 and "a/z.yaml#0" in err.message


def test_changed_set_is_exact(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", docs(svc("a"), svc("b")))
    write(tmp_path / "c.yaml", svc("c"))
    src = DirectorySource(tmp_path)
    first = src.load()
    write(tmp_path / "a.yaml", "\n\n" + docs(svc("a"), svc("b")).replace("port: 80", "port:    80"))
    up = src.load()
    assert up.changed == frozenset() and up.revision == first.revision
    assert up.snapshot is first.snapshot
    write(tmp_path / "a.yaml", docs(svc("a", 81), svc("b")))
    up = src.load()
    assert up.changed == {key("a")} and up.revision == first.revision + 1
    assert up.snapshot.get_key(key("c")) is first.snapshot.get_key(key("c"))  # unchanged: same object


def test_errors_logged_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    write(tmp_path / "a.yaml", svc("a", 70000))
    src = DirectorySource(tmp_path)
    with caplog.at_level(logging.INFO, logger="istiod_lite.sources"):
        src.load()
        src.load()
        (tmp_path / "a.yaml").write_text(svc("a"))
        src.load()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "spec.ports[0].port" in warnings[0].getMessage()
    assert any("resolved" in r.getMessage() for r in caplog.records)


def test_parse_file_reports_failed_keys(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", docs(svc("a"), svc("bad", 70000), "- not a mapping\n"))
    parsed = parse_file(tmp_path / "a.yaml", max_bytes=1 << 20, source="a.yaml")
    assert [(i, r.name) for i, r in parsed.resources] == [(0, "a")]
    assert parsed.failed == ((1, key("bad")),)
    assert [e.doc_index for e in parsed.errors] == [1, 2] and not parsed.fatal


# -- run(): watching ---------------------------------------------------------------------------------


class Recorder:
    def __init__(self) -> None:
        self.updates: list[SourceUpdate] = []
        self.event = asyncio.Event()

    async def __call__(self, update: SourceUpdate) -> None:
        self.updates.append(update)
        self.event.set()

    async def next(self, timeout: float = 3.0) -> SourceUpdate:
        await asyncio.wait_for(self.event.wait(), timeout)
        self.event.clear()
        return self.updates[-1]


async def watching(tmp_path: Path, debounce: float = 0.05) -> tuple[Recorder, asyncio.Task[None]]:
    src = DirectorySource(tmp_path, poll_interval=0.02, debounce=debounce)
    src.load()
    rec = Recorder()
    return rec, asyncio.create_task(src.run(rec))


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_run_without_load_reports_initial(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", svc("a"))
    rec = Recorder()
    task = asyncio.create_task(DirectorySource(tmp_path, poll_interval=0.02, debounce=0.05).run(rec))
    up = await rec.next()
    assert up.revision == 1 and up.changed == {key("a")} and not up.settled
    await stop(task)


async def test_run_debounces_quick_writes(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", svc("a", 80))
    rec, task = await watching(tmp_path, debounce=0.2)  # writes 10 ms apart: ample margin on a busy machine
    for port in range(81, 86):
        write(tmp_path / "a.yaml", svc("a", port))
        await asyncio.sleep(0.01)
    up = await rec.next()
    await asyncio.sleep(0.3)
    await stop(task)
    assert len(rec.updates) == 1
    assert port_of(up, "a") == 85 and up.changed == {key("a")} and up.revision == 2
    assert up.settled  # it waited for the quiet period: the control plane adds no second one


async def test_run_no_update_on_noop_change(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", svc("a"))
    rec, task = await watching(tmp_path)
    write(tmp_path / "a.yaml", "# comment\n" + svc("a"))
    os.utime(tmp_path / "a.yaml")
    await asyncio.sleep(0.4)
    assert rec.updates == []
    write(tmp_path / "a.yaml", svc("a", 81))  # a real change afterwards is still seen
    assert port_of(await rec.next(), "a") == 81
    await stop(task)


async def test_run_reports_error_only_changes(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", svc("a"))
    rec, task = await watching(tmp_path)
    write(tmp_path / "b.yaml", svc("x", 70000))
    up = await rec.next()
    assert up.changed == frozenset() and len(up.errors) == 1 and up.revision == 2
    await stop(task)


async def test_run_root_removed_then_restored(tmp_path: Path) -> None:
    root = tmp_path / "config"
    write(root / "a.yaml", svc("a"))
    write(root / "b.yaml", svc("b"))
    rec, task = await watching(root)
    shutil.move(root, tmp_path / "moved")
    up = await rec.next()
    assert set(up.snapshot.keys()) == {key("a"), key("b")}  # everything kept
    assert len(up.errors) == 1 and "not usable" in up.errors[0].message
    root.mkdir()
    write(root / "a.yaml", svc("a", 81))
    up = await rec.next()
    assert up.errors == () and set(up.snapshot.keys()) == {key("a")} and port_of(up, "a") == 81
    assert up.changed == {key("a"), key("b")}
    await stop(task)


async def test_run_survives_handler_errors(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", svc("a"))
    src = DirectorySource(tmp_path, poll_interval=0.02, debounce=0.02)
    src.load()
    calls: list[int] = []

    async def boom(update: SourceUpdate) -> None:
        calls.append(update.revision)
        raise RuntimeError("handler bug")

    task = asyncio.create_task(src.run(boom))
    write(tmp_path / "a.yaml", svc("a", 81))
    await asyncio.sleep(0.3)
    write(tmp_path / "a.yaml", svc("a", 82))
    for _ in range(100):
        if len(calls) >= 2:
            break
        await asyncio.sleep(0.02)
    await stop(task)
    assert calls == [2, 3]


async def test_a_save_caught_half_way_is_never_published(tmp_path: Path) -> None:
    """Editors and ``write_text`` truncate, then write.  A poll that reads the file in between
    (here: 3 ms between the two, a poll every 5 ms) must not publish the empty file: the
    resource would vanish for a moment and, if the finished save is invalid, its last good
    version would be lost.  Every update published while saving 12 times keeps the Service."""
    path = tmp_path / "a.yaml"
    write(path, svc("a", 80))
    src = DirectorySource(tmp_path, poll_interval=0.005, debounce=0.05)
    src.load()
    rec = Recorder()
    task = asyncio.create_task(src.run(rec))
    try:
        for i in range(12):
            with path.open("w") as f:  # truncate ...
                f.flush()
                await asyncio.sleep(0.003)
                f.write(svc("a", 81 + i))  # ... then write
            await asyncio.sleep(0.12)
        await asyncio.sleep(0.2)
    finally:
        await stop(task)
    assert rec.updates, "no update at all"
    for up in rec.updates:
        assert up.snapshot.get_key(key("a")) is not None, f"revision {up.revision} lost the Service"
    assert port_of(rec.updates[-1], "a") == 92
