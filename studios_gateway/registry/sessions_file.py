"""The embedded registry's sessions on disk, so a restart of a single node keeps its studios.

One JSON document (``sessions.json`` under CONNECT_STORAGE_ROOT, mode 0600)
holds every session record as of its last compaction; the changes since are in a
journal beside it (:mod:`~studios_gateway.registry.sessions_journal`). The document
is replaced whole: written to a temporary file beside it, fsynced, renamed over the
old one, and the directory fsynced (:func:`~studios_gateway.auth.files.write_private_json`).
A crash at any moment leaves either the old document or the new one, never a torn
one. Tunnel claims are not kept: studios bind again after a restart.

A document that cannot be read, or a record in it that does not check out, is
an error at start naming the file: nothing in it is dropped silently.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from studios_gateway.private_files import DamagedFile, StorageError, read_json, write_private_json
from studios_gateway.registry.base import MalformedRecord, SessionRecord

__all__ = ["FILE_NAME", "VERSION", "load_sessions", "save_sessions", "sessions_path"]

FILE_NAME = "sessions.json"
VERSION = 1


def sessions_path(storage_root: str) -> Path:
    return Path(storage_root) / FILE_NAME


def load_sessions(path: Path) -> dict[str, SessionRecord]:
    """The records saved at `path` (none when there is no file yet); StorageError when
    the document or one of its records is malformed."""
    try:
        data: Any = read_json(path)
    except DamagedFile as e:
        raise StorageError(f"{e}; restore it from a backup, or move it aside to start "
                           "without its sessions") from None
    if data is None:
        return {}
    if not isinstance(data, dict) or data.get("version") != VERSION \
            or not isinstance(data.get("sessions"), list):
        raise StorageError(f"{path} is not a sessions document (version {VERSION}); "
                           "move it aside to start without its sessions")
    out: dict[str, SessionRecord] = {}
    for i, item in enumerate(data["sessions"]):
        try:
            if not isinstance(item, dict):
                raise MalformedRecord("not an object")
            record = SessionRecord.from_dict(item)
        except MalformedRecord as e:
            raise StorageError(f"{path}: session {i + 1} is malformed ({e}); fix or remove "
                               "it to start") from None
        out[record.id] = record
    return out


def save_sessions(path: Path, records: Iterable[SessionRecord]) -> None:
    """Replace the document at `path` with `records` (durably; StorageError on failure)."""
    write_private_json(path, {"version": VERSION,
                              "sessions": [r.to_dict() for r in records]})
