"""The embedded registry keeps its sessions in CONNECT_STORAGE_ROOT/sessions.json and the
changes since in sessions.journal beside it."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.task import Clock

from studios_gateway.component import StartError
from studios_gateway.config_loading import load_config
from studios_gateway.private_files import StorageError
from studios_gateway.registry.base import StoreUnavailable
from studios_gateway.registry.memory import MemoryStore
from studios_gateway.registry.sessions_file import load_sessions, sessions_path
from studios_gateway.registry.sessions_journal import JOURNAL_NAME
from studios_gateway.service import build_store
from tests.unit import test_registry_memory as contract
from tests.unit.test_registry_memory import record


class FileBackedMemoryStoreTests(contract.MemoryStoreTests):
    """The whole store contract holds with the file behind it."""

    def setUp(self) -> None:
        self.clock = Clock()
        root = tempfile.mkdtemp(prefix="sessions-file-")  # not trial's mktemp: not in the cwd
        self.addCleanup(shutil.rmtree, root, True)
        self.store = self.other = MemoryStore(
            self.clock, sessions_file=Path(root) / "sessions.json")


def result(d: Any) -> Any:
    out: list[Any] = []
    d.addBoth(out.append)
    return out[0]


def test_a_new_store_on_the_same_file_has_the_same_sessions(tmp_path: Path) -> None:
    path = tmp_path / "root" / "sessions.json"
    first = MemoryStore(Clock(), sessions_file=path)
    for sid in ("a1", "b2", "c3"):
        assert result(first.create(record(sid))) is None
    assert result(first.update(replace(record("b2"), allowed_users=("carol",)))) is None
    assert result(first.delete("c3")) is True
    journal = path.with_name(JOURNAL_NAME)
    assert oct(journal.stat().st_mode & 0o777) == "0o600"

    def check(again: MemoryStore) -> None:
        assert result(again.get("a1")) == record("a1")
        assert result(again.get("b2")).allowed_users == ("carol",)
        assert result(again.get("c3")) is None
        assert sorted(r.id for r in result(again.list_sessions())) == ["a1", "b2"]

    # Without a stop (a crash): every acknowledged change is in the journal.
    assert not path.exists() and len(journal.read_bytes().splitlines()) == 5
    check(MemoryStore(Clock(), sessions_file=path))
    # Opening folded the journal into the snapshot; a clean stop leaves it so.
    assert sorted(load_sessions(path)) == ["a1", "b2"] and journal.read_bytes() == b""
    again = MemoryStore(Clock(), sessions_file=path)
    assert result(again.create(record("d4"))) is None
    result(again.stop())
    result(again.stop())
    assert sorted(load_sessions(path)) == ["a1", "b2", "d4"] and journal.read_bytes() == b""
    assert oct(path.stat().st_mode & 0o777) == "0o600"


def test_a_change_that_cannot_be_written_is_refused_and_cut_from_the_journal(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "sessions.json"
    store = MemoryStore(Clock(), sessions_file=path)
    assert result(store.create(record("a1"))) is None
    journal = path.with_name(JOURNAL_NAME)
    size = journal.stat().st_size
    real_write = os.write

    def torn_write(fd: int, data: bytes) -> int:
        return real_write(fd, data[:10])  # a disk that filled up mid-line

    monkeypatch.setattr(os, "write", torn_write)
    failed = result(store.create(record("b2")))
    assert failed.check(StoreUnavailable) and "could not be saved" in str(failed.value)
    assert result(store.get("b2")) is None
    assert journal.stat().st_size == size  # the partial line is gone
    monkeypatch.setattr(os, "write", real_write)
    monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(5, "I/O error")))
    assert result(store.update(replace(record("a1"), tool="rstudio"))).check(StoreUnavailable)
    assert result(store.get("a1")) == record("a1")  # undone
    monkeypatch.undo()
    assert result(store.create(record("c3"))) is None
    again = MemoryStore(Clock(), sessions_file=path)
    assert sorted(r.id for r in result(again.list_sessions())) == ["a1", "c3"]
    assert result(again.get("a1")) == record("a1")


def test_a_journal_that_cannot_be_cut_back_gives_way_to_a_whole_save(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "sessions.json"
    store = MemoryStore(Clock(), sessions_file=path)
    assert result(store.create(record("a1"))) is None
    real_write = os.write
    monkeypatch.setattr(os, "write", lambda fd, data: real_write(fd, data[:10]))
    monkeypatch.setattr(os, "ftruncate", lambda fd, n: (_ for _ in ()).throw(OSError(5, "EIO")))
    assert result(store.create(record("b2"))).check(StoreUnavailable)
    monkeypatch.undo()
    # A crash now: the torn last line was never acknowledged; it is skipped.
    assert sorted(r.id for r in result(
        MemoryStore(Clock(), sessions_file=path).list_sessions())) == ["a1"]
    # The store goes on: the next change is written whole (and starts a new journal).
    assert result(store.create(record("c3"))) is None
    assert sorted(load_sessions(path)) == ["a1", "c3"]
    assert path.with_name(JOURNAL_NAME).read_bytes() == b""
    assert result(store.delete("a1")) is True
    assert sorted(r.id for r in result(
        MemoryStore(Clock(), sessions_file=path).list_sessions())) == ["c3"]


def test_a_crash_in_a_compaction_loses_nothing(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "sessions.json"
    store = MemoryStore(Clock(), sessions_file=path, compact_after=3)
    assert result(store.create(record("a1"))) is None
    calls: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        calls.append("fsync")
        real_fsync(fd)

    def crash(src: Any, dst: Any) -> None:
        calls.append("replace")
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", crash)
    assert result(store.create(record("b2"))) is None
    # The third change is journaled (fsync), then the compaction's snapshot fails at
    # its rename (its bytes were on disk before): the change stands all the same.
    assert result(store.create(record("c3"))) is None
    assert calls == ["fsync", "fsync", "fsync", "replace"]
    assert not path.exists()
    (tmp_path / ".tmp-torn").write_bytes(b'{"version": 1, "sess')  # the crash's leftover
    assert sorted(r.id for r in result(
        MemoryStore(Clock(), sessions_file=path).list_sessions())) == ["a1", "b2", "c3"]
    # Between the snapshot's rename and the journal's: the journal is replayed on the
    # snapshot that holds it already; nothing changes.
    monkeypatch.undo()
    journal = path.with_name(JOURNAL_NAME)
    kept = journal.read_bytes()
    result(store.stop())
    journal.write_bytes(kept)
    reopened = MemoryStore(Clock(), sessions_file=path)
    assert sorted(r.id for r in result(reopened.list_sessions())) == ["a1", "b2", "c3"]


def test_a_failed_delete_keeps_the_session(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    store = MemoryStore(Clock(), sessions_file=tmp_path / "sessions.json")
    assert result(store.create(record("a1"))) is None
    monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(28, "full")))
    assert result(store.delete("a1")).check(StoreUnavailable)
    assert result(store.get("a1")) == record("a1")


def test_creating_n_sessions_writes_o_n_records(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The whole-file save rewrote every record per change (N creates: N^2 / 2 records
    written); now each change appends one line, and a compaction (all records) comes
    only once the journal holds as many changes as there are records."""
    from studios_gateway.registry import sessions_journal

    written: list[int] = []
    real_save = sessions_journal.save_sessions

    def counted(path: Path, records: Any) -> None:
        records = list(records)
        written.append(len(records))
        real_save(path, records)

    monkeypatch.setattr(sessions_journal, "save_sessions", counted)
    monkeypatch.setattr(os, "fsync", lambda fd: None)  # the disk's time is not the point
    path = tmp_path / "sessions.json"
    store = MemoryStore(Clock(), sessions_file=path, compact_after=50)
    n = 1600
    for i in range(n):
        assert result(store.create(record(f"s{i:05d}"))) is None
    assert sum(written) <= n and len(written) <= 2, written
    # Updates and deletes of a store of N records: one whole write per ~N changes.
    written.clear()
    for i in range(n):
        assert result(store.update(replace(record(f"s{i:05d}"), tool="rstudio"))) is None
    assert len(written) == 1, written
    result(store.stop())
    assert len(load_sessions(path)) == n


def test_a_journal_line_that_does_not_read_stops_the_start(tmp_path: Path) -> None:
    path = tmp_path / "sessions.json"
    store = MemoryStore(Clock(), sessions_file=path)
    for sid in ("a1", "b2"):
        assert result(store.create(record(sid))) is None
    journal = path.with_name(JOURNAL_NAME)
    lines = journal.read_bytes().splitlines(keepends=True)
    journal.write_bytes(lines[0] + b'{"put": {"id": "x"}}\n' + lines[1])
    with pytest.raises(StorageError, match=r"sessions.journal: line 2 is malformed"):
        MemoryStore(Clock(), sessions_file=path)
    journal.write_bytes(lines[0] + b'{"delete": 7}\n' + lines[1])
    with pytest.raises(StorageError, match=r"line 2 is malformed \(neither put nor delete"):
        MemoryStore(Clock(), sessions_file=path)
    # As the last line, the same is a torn, never acknowledged change: skipped.
    journal.write_bytes(lines[0] + lines[1] + b'{"put": {"id": "c3", "work')
    again = MemoryStore(Clock(), sessions_file=path)
    assert sorted(r.id for r in result(again.list_sessions())) == ["a1", "b2"]
    assert result(again.create(record("c3"))) is None
    assert sorted(r.id for r in result(
        MemoryStore(Clock(), sessions_file=path).list_sessions())) == ["a1", "b2", "c3"]


@pytest.mark.parametrize("text, why", [
    ("{not json", "is not JSON .*; restore it from a backup, or move it aside"),
    ('{"version": 9, "sessions": []}', "not a sessions document"),
    ('{"version": 1, "sessions": [{"id": "a1"}]}', "session 1 is malformed"),
    ('{"version": 1, "sessions": [7]}', "session 1 is malformed"),
])
def test_a_damaged_store_stops_the_start_with_its_name(tmp_path: Path, text: str,
                                                      why: str) -> None:
    path = sessions_path(str(tmp_path))
    path.write_text(text)
    with pytest.raises(StorageError, match=why):
        MemoryStore(Clock(), sessions_file=path)
    config = load_config(environ={"CONNECT_STORAGE_ROOT": str(tmp_path)})
    with pytest.raises(StartError, match=f"saved sessions cannot be loaded: .*{path}"):
        build_store(config, Clock())
    assert path.read_text() == text  # nothing dropped


def test_build_store_keeps_sessions_under_the_storage_root(tmp_path: Path) -> None:
    config = load_config(environ={"CONNECT_STORAGE_ROOT": str(tmp_path)})
    store = build_store(config, Clock())
    assert result(store.create(record("a1"))) is None
    result(store.stop())
    assert json.loads((tmp_path / "sessions.json").read_text())["sessions"][0]["id"] == "a1"
    assert result(build_store(config, Clock()).get("a1")) == record("a1")


def test_the_registry_imports_on_its_own() -> None:
    # The registry depends on no part of the gateway above it (auth imports the registry).
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", "import studios_gateway.registry.memory"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-1000:]


def test_a_session_loaded_from_the_file_has_no_last_connected(tmp_path: Path) -> None:
    # What happened before the restart is unknown: None (the page's "cannot tell"), not
    # "never connected" (which would say a long-running studio failed to start).
    path = tmp_path / "root" / "sessions.json"
    first = MemoryStore(Clock(), sessions_file=path)
    assert result(first.create(record("a1"))) is None
    assert result(first.last_connected("a1")) is not None
    result(first.stop())
    assert result(MemoryStore(Clock(), sessions_file=path).last_connected("a1")) is None
