"""The embedded registry keeps its sessions in CONNECT_STORAGE_ROOT/sessions.json."""

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
from studios_gateway.config import load_config
from studios_gateway.private_files import StorageError
from studios_gateway.registry.base import StoreUnavailable
from studios_gateway.registry.memory import MemoryStore
from studios_gateway.registry.sessions_file import load_sessions, sessions_path
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
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    again = MemoryStore(Clock(), sessions_file=path)
    assert result(again.get("a1")) == record("a1")
    assert result(again.get("b2")).allowed_users == ("carol",)
    assert result(again.get("c3")) is None
    assert sorted(r.id for r in result(again.list_sessions())) == ["a1", "b2"]


def test_a_crash_before_the_rename_leaves_the_old_store_readable(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "sessions.json"
    store = MemoryStore(Clock(), sessions_file=path)
    assert result(store.create(record("a1"))) is None
    calls: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        calls.append("fsync")
        real_fsync(fd)

    def crash(src: Any, dst: Any) -> None:
        calls.append("replace")
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", crash)
    failed = result(store.create(record("b2")))
    assert failed.check(StoreUnavailable) and "could not be saved" in str(failed.value)
    assert calls == ["fsync", "replace"]  # the new bytes were on disk before the rename
    # The refused change is undone here, and the file still holds the old document.
    assert result(store.get("b2")) is None
    assert list(load_sessions(path)) == ["a1"]
    monkeypatch.setattr(os, "replace", real_replace)
    calls.clear()
    # A torn temporary file from the crash is not read; the next save succeeds.
    (tmp_path / ".tmp-torn").write_bytes(b'{"version": 1, "sess')
    assert result(store.update(replace(record("a1"), tool="rstudio"))) is None
    assert calls == ["fsync", "fsync"]  # the file, then its directory (the rename)
    assert load_sessions(path)["a1"].tool == "rstudio"


def test_a_failed_delete_keeps_the_session(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    store = MemoryStore(Clock(), sessions_file=tmp_path / "sessions.json")
    assert result(store.create(record("a1"))) is None
    monkeypatch.setattr(os, "replace", lambda *a: (_ for _ in ()).throw(OSError(28, "full")))
    assert result(store.delete("a1")).check(StoreUnavailable)
    assert result(store.get("a1")) == record("a1")


@pytest.mark.parametrize("text, why", [
    ("{not json", "cannot read"),
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
    assert json.loads((tmp_path / "sessions.json").read_text())["sessions"][0]["id"] == "a1"
    assert result(build_store(config, Clock()).get("a1")) == record("a1")


def test_the_registry_imports_on_its_own() -> None:
    # The registry depends on no part of the gateway above it (auth imports the registry).
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", "import studios_gateway.registry.memory"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-1000:]
