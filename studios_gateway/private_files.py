"""Small private files (mode 0600) replaced atomically and durably.

A document is written to a temporary file beside its target, fsynced, renamed
over the target, and the directory fsynced: a crash at any moment leaves the
old document or the new one, never a torn one. Used by the login state
(:mod:`studios_gateway.auth.files`) and the embedded registry's sessions.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["DamagedFile", "StorageError", "read_json", "write_private_json", "write_temp"]


class StorageError(Exception):
    """A file under the storage root cannot be read or written; the message says which."""


class DamagedFile(StorageError):
    """A file was read, but what it holds is not what was written (a restore cut short, a
    full disk when it was written, an edit by hand)."""


def write_temp(directory: Path, data: bytes) -> str:
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        os.unlink(tmp)
        raise
    return tmp


def _fsync_directory(directory: Path) -> None:
    """Make a rename in `directory` durable (the entry, not only the file's bytes)."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_private_json(path: str | Path, data: Any) -> None:
    """Replace `path` atomically and durably with `data` as JSON, mode 0600: a crash
    leaves the old document or the new one."""
    p = Path(path)
    try:
        p.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = write_temp(p.parent, json.dumps(data, indent=1, sort_keys=True).encode())
        os.replace(tmp, p)
        _fsync_directory(p.parent)
    except OSError as e:
        raise StorageError(f"cannot write {p}: {e.strerror}") from None


def read_json(path: str | Path) -> Any | None:
    """The JSON document at `path`, or None when there is no such file."""
    p = Path(path)
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except OSError as e:
        raise StorageError(f"cannot read {p}: {e.strerror}") from None
    except ValueError as e:  # (UnicodeDecodeError too)
        raise DamagedFile(f"{p} is not JSON ({e})") from None
