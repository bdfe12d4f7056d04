"""The embedded registry's sessions on disk at a cost proportional to the changes.

``sessions.json`` (:mod:`~studios_gateway.registry.sessions_file`) is the
snapshot; ``sessions.journal`` beside it (mode 0600) holds the changes made since,
one JSON line each (``{"put": <record>}`` or ``{"delete": "<id>"}``). A change is
appended and fsynced before it is acknowledged, as the whole-file save did, so an
acknowledged change outlasts a crash (SIGKILL, power loss) and a change that
cannot be written is refused.

The journal is folded into the snapshot (*compacted*: snapshot written whole and
renamed over the old one, then the journal replaced by an empty file) when a store
is opened, when it is closed (a clean stop leaves ``sessions.json`` alone holding
everything) and when the journal holds as many changes as the snapshot has records
(at least :data:`COMPACT_AFTER`): each change then costs one appended line plus, on
average, at most one record rewritten. A crash between the two steps of a
compaction replays a journal the snapshot already holds: puts and deletes are
idempotent, so nothing changes.

A crash mid-append can leave a torn last line: that change was never
acknowledged, and it is skipped with a warning. Any other line that does not read
is an error at start naming the file and line (nothing is dropped silently).
"""

from __future__ import annotations

import json
import os
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

from twisted.logger import Logger

from studios_gateway.private_files import StorageError, write_temp
from studios_gateway.registry.base import MalformedRecord, SessionRecord
from studios_gateway.registry.sessions_file import load_sessions, save_sessions

__all__ = ["COMPACT_AFTER", "JOURNAL_NAME", "SessionsJournal"]

JOURNAL_NAME = "sessions.journal"
COMPACT_AFTER = 1000  # changes in the journal before a compaction, at the least

_log = Logger()


class SessionsJournal:
    """The session records at `snapshot` plus the journal beside it.

    :meth:`open` loads them (and compacts); :meth:`put` / :meth:`delete` make one
    change durable (StorageError when they cannot: the caller refuses the change);
    :meth:`close` compacts and closes. `records` passed in is the store's view after
    the change: what a compaction writes.
    """

    def __init__(self, snapshot: Path, compact_after: int = COMPACT_AFTER):
        self.snapshot = snapshot
        self.path = snapshot.with_name(JOURNAL_NAME)
        self.compact_after = compact_after
        self._fd: int | None = None
        self._size = 0  # bytes in the journal that are whole lines
        self.entries = 0  # changes in the journal
        self._next_compaction = compact_after
        self.compactions = 0  # how many were written (tests, bench)
        self._closed = False

    def __repr__(self) -> str:
        return f"SessionsJournal({self.path}, entries={self.entries})"

    # Opening and closing -------------------------------------------------------

    def open(self) -> dict[str, SessionRecord]:
        """Every saved record (snapshot, then the journal's changes); the journal is
        folded into the snapshot when it held any. StorageError names the file."""
        records = load_sessions(self.snapshot)
        held, whole = self._replay(records)
        if held:
            try:
                self.compact(records.values())
                return records
            except StorageError as e:
                # A full or read-only disk: start all the same, appending to the journal
                # after its last whole line (the next compaction folds it in).
                _log.warn("the sessions journal could not be compacted at start: {error}",
                          error=str(e))
        self._open_fd()
        assert self._fd is not None
        if self._size != whole:
            try:
                os.ftruncate(self._fd, whole)
            except OSError as e:
                self._close_fd()
                raise StorageError(f"cannot cut the torn end of {self.path}: {e.strerror}"
                                   ) from None
            self._size = whole
        self.entries = held
        return records

    def read(self) -> dict[str, SessionRecord]:
        """What :meth:`open` would load, writing nothing (check-config); StorageError, in
        open's words, when it would fail."""
        records = load_sessions(self.snapshot)
        self._replay(records)
        return records

    def close(self, records: Collection[SessionRecord]) -> None:
        """Fold the journal into the snapshot (a clean stop), then close it."""
        if self._closed:
            return
        self._closed = True
        if self.entries or self._fd is None:
            try:
                self.compact(records)
            except StorageError as e:
                # Every change is in the journal already: the next start folds it in.
                _log.warn("the sessions journal could not be compacted at stop: {error}",
                          error=str(e))
        self._close_fd()

    # Changes -------------------------------------------------------------------

    def put(self, record: SessionRecord, records: Collection[SessionRecord]) -> None:
        self._append({"put": record.to_dict()}, records)

    def delete(self, session_id: str, records: Collection[SessionRecord]) -> None:
        self._append({"delete": session_id}, records)

    def _append(self, change: dict[str, Any], records: Collection[SessionRecord]) -> None:
        if self._fd is None:
            # A failed append that could not be cut back left the journal closed: write
            # everything whole instead (that also starts a fresh, empty journal).
            self.compact(records)
            return
        line = (json.dumps(change, separators=(",", ":"), sort_keys=True) + "\n").encode()
        try:
            written = os.write(self._fd, line)
            if written != len(line):
                # (a regular file takes fewer bytes than given when its disk is full)
                raise OSError(28, f"short write ({written} of {len(line)} bytes): the disk "
                                  "or the gateway user's quota is full")
            os.fsync(self._fd)
        except OSError as e:
            self._cut_back()
            raise StorageError(f"cannot write {self.path}: {e.strerror}") from None
        self._size += len(line)
        self.entries += 1
        if self.entries >= max(self._next_compaction, len(records)):
            try:
                self.compact(records)
            except StorageError as e:
                # The change is durable in the journal; try again a while later.
                self._next_compaction = self.entries + self.compact_after
                _log.warn("the sessions journal could not be compacted: {error}",
                          error=str(e))

    def _cut_back(self) -> None:
        """After a failed append: drop its partial line, or stop appending."""
        assert self._fd is not None
        try:
            os.ftruncate(self._fd, self._size)
        except OSError:
            self._close_fd()

    # Compaction ----------------------------------------------------------------

    def compact(self, records: Collection[SessionRecord]) -> None:
        """Write `records` as the snapshot, then start an empty journal."""
        save_sessions(self.snapshot, records)
        self.compactions += 1
        try:
            os.replace(write_temp(self.path.parent, b""), self.path)
        except OSError as e:
            self._close_fd()
            raise StorageError(f"cannot write {self.path}: {e.strerror}") from None
        self._close_fd()
        self._open_fd()
        self.entries = 0
        self._next_compaction = self.compact_after

    def _open_fd(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                               0o600)
            self._size = os.fstat(self._fd).st_size
            # The journal's directory entry is durable once the snapshot's rename was.
            dir_fd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as e:
            self._close_fd()
            raise StorageError(f"cannot open {self.path}: {e.strerror}") from None

    def _close_fd(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                os.close(fd)
            except OSError:
                pass

    # Replay --------------------------------------------------------------------

    def _replay(self, records: dict[str, SessionRecord]) -> tuple[int, int]:
        """Apply the journal's changes to `records`: how many lines it held (a torn one
        too) and where its last whole line ends."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return 0, 0
        except OSError as e:
            raise StorageError(f"cannot read {self.path}: {e.strerror}") from None
        # Every change is written with its newline in one write: text after the last
        # newline is a torn append.
        *lines, tail = data.split(b"\n")
        last = max((i for i, raw in enumerate(lines) if raw.strip()), default=-1)
        held = whole = offset = 0
        for i, raw in enumerate(lines):
            offset += len(raw) + 1
            if not raw.strip():
                continue
            held += 1
            try:
                _apply(json.loads(raw), records)
            except (ValueError, MalformedRecord) as e:
                if i == last and not tail.strip():
                    self._torn()
                    continue
                raise StorageError(f"{self.path}: line {i + 1} is malformed ({e}); move the "
                                   "file aside to start without the changes it holds"
                                   ) from None
            whole = offset
        if tail.strip():
            held += 1
            self._torn()
        return held, whole

    def _torn(self) -> None:
        _log.warn("{path}: its last line is torn (a change cut short by a crash, never "
                  "acknowledged): skipped", path=str(self.path))


def _apply(change: Any, records: dict[str, SessionRecord]) -> None:
    if not isinstance(change, Mapping) or len(change) != 1:
        raise MalformedRecord("not a change")
    if "put" in change:
        if not isinstance(change["put"], dict):
            raise MalformedRecord("put: not an object")
        record = SessionRecord.from_dict(change["put"])
        records[record.id] = record
    elif "delete" in change and isinstance(change["delete"], str):
        records.pop(change["delete"], None)
    else:
        raise MalformedRecord("neither put nor delete")
