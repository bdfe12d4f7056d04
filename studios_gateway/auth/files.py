"""Private files under CONNECT_STORAGE_ROOT: a signing key made once, small JSON documents.

Both are written with mode 0600 and replaced atomically (write a temporary
file beside the target, then link or rename it), so a crash or a second
process starting at the same moment never leaves a half-written key.
"""

from __future__ import annotations

import json
import os
import secrets
import tempfile
from pathlib import Path
from typing import Any

KEY_BYTES = 32


class StorageError(Exception):
    """A file under the storage root cannot be read or written; the message says which."""


def _write_temp(directory: Path, data: bytes) -> str:
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


def load_or_create_key(path: str | Path, size: int = KEY_BYTES) -> bytes:
    """The secret key at `path`; made (random, 0600) the first time.

    When two processes race, exactly one key wins (os.link refuses to replace an
    existing file) and both return it.
    """
    p = Path(path)
    try:
        p.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not p.exists():
            tmp = _write_temp(p.parent, secrets.token_bytes(size))
            try:
                os.link(tmp, p)
            except FileExistsError:
                pass
            finally:
                os.unlink(tmp)
        key = p.read_bytes()
    except OSError as e:
        raise StorageError(f"cannot read or create the key file {p}: {e.strerror}") from None
    if len(key) < size:
        raise StorageError(f"the key file {p} is shorter than {size} bytes; remove it to make "
                           "a new one (every login is then signed out)")
    return key


def write_private_json(path: str | Path, data: Any) -> None:
    """Replace `path` atomically with `data` as JSON, mode 0600."""
    p = Path(path)
    try:
        p.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = _write_temp(p.parent, json.dumps(data, indent=1, sort_keys=True).encode())
        os.replace(tmp, p)
    except OSError as e:
        raise StorageError(f"cannot write {p}: {e.strerror}") from None


def read_json(path: str | Path) -> Any | None:
    """The JSON document at `path`, or None when there is no such file."""
    p = Path(path)
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise StorageError(f"cannot read {p}: {e}") from None


class Journal:
    """An append-only file of ``<key> <until>`` lines (mode 0600) that survives a restart.

    ``load`` returns the entries still valid at `now` and rewrites the file with only
    those (so it never grows past what is live); ``append`` adds one line and flushes.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._file: Any = None

    def load(self, now: float) -> dict[str, float]:
        live: dict[str, float] = {}
        try:
            text = self.path.read_text(encoding="ascii", errors="replace")
        except FileNotFoundError:
            text = ""
        except OSError as e:
            raise StorageError(f"cannot read {self.path}: {e.strerror}") from None
        for line in text.splitlines():
            key, _, until = line.partition(" ")
            try:
                t = float(until)
            except ValueError:
                continue  # a torn last line after a crash
            if key and t > now:
                live[key] = max(t, live.get(key, t))
        data = "".join(f"{k} {t:.0f}\n" for k, t in live.items()).encode()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.replace(_write_temp(self.path.parent, data), self.path)
            self._file = open(self.path, "a", encoding="ascii")  # noqa: SIM115 - kept open
        except OSError as e:
            raise StorageError(f"cannot write {self.path}: {e.strerror}") from None
        return live

    def append(self, key: str, until: float) -> None:
        if self._file is None or not key or any(c.isspace() for c in key):
            return
        self._file.write(f"{key} {until:.0f}\n")
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

