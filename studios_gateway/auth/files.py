"""Private files under CONNECT_STORAGE_ROOT: a signing key made once, small JSON documents.

Both are written with mode 0600 and replaced atomically (write a temporary
file beside the target, then link or rename it), so a crash or a second
process starting at the same moment never leaves a half-written key.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

from studios_gateway.private_files import StorageError, read_json, write_private_json, write_temp

__all__ = ["KEY_BYTES", "Journal", "StorageError", "load_or_create_key", "read_json",
           "read_key", "write_private_json"]

KEY_BYTES = 32


def load_or_create_key(path: str | Path, size: int = KEY_BYTES) -> bytes:
    """The secret key at `path`; made (random, 0600) the first time.

    When two processes race, exactly one key wins (os.link refuses to replace an
    existing file) and both return it.
    """
    p = Path(path)
    try:
        p.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not p.exists():
            tmp = write_temp(p.parent, secrets.token_bytes(size))
            try:
                os.link(tmp, p)
            except FileExistsError:
                pass
            finally:
                os.unlink(tmp)
    except OSError as e:
        raise StorageError(f"cannot create the key file {p}: {e.strerror}") from None
    key = read_key(p, size)
    if key is None:  # (removed in the meantime)
        raise StorageError(f"the key file {p} was removed as it was made; start again")
    return key


def read_key(path: str | Path, size: int = KEY_BYTES) -> bytes | None:
    """The secret key at `path`, None when there is none yet (the start makes one);
    StorageError saying what to do when it cannot be read or is damaged. Writes nothing:
    check-config asks it what the start would find."""
    p = Path(path)
    try:
        key = p.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise StorageError(f"cannot read the key file {p}: {e.strerror}; it must be a file "
                           "the gateway's user may read (mode 0600), or absent to have a new "
                           "one made (every login is then signed out)") from None
    if len(key) < size:
        raise StorageError(f"the key file {p} is shorter than {size} bytes; remove it to make "
                           "a new one (every login is then signed out)")
    return key


class Journal:
    """An append-only file of ``<key> <until>`` lines (mode 0600) that survives a restart.

    ``load`` returns the entries still valid at `now` and rewrites the file with only
    those (so it never grows past what is live); ``append`` adds one line and flushes.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._file: Any = None
        #: The bytes the file holds when every line was whole (what a failed append's
        #: part is cut back to); None: unknown, the next line starts on a line of its own.
        self._whole: int | None = 0
        #: The file could not be opened again after a failed append (None below is not
        #: "no journal"): each append tries again, and fails while it cannot.
        self._lost = False

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
            os.replace(write_temp(self.path.parent, data), self.path)
            self._file = open(self.path, "a", encoding="ascii")  # noqa: SIM115 - kept open
        except OSError as e:
            raise StorageError(f"cannot write {self.path}: {e.strerror}") from None
        self._whole = len(data)
        return live

    def append(self, key: str, until: float) -> None:
        """Add one line; StorageError when it cannot be written (a full disk)."""
        if not key or any(c.isspace() for c in key):
            return
        if self._file is None:
            if not self._lost:
                return  # (not loaded: in memory only)
            self._open_again()
            if self._file is None:
                raise StorageError(f"cannot open {self.path} again after a failed write")
        line = f"{key} {until:.0f}\n"
        if self._whole is None:  # (after a part of a line that could not be cut back)
            line = "\n" + line
        try:
            self._file.write(line)
            self._file.flush()
        except OSError as e:
            # A full disk takes part of a line (what fits in the file's last block): it
            # is cut back, or the next line would be written on after it, and read back
            # as one bogus line. The next append opens the file again.
            self._reopen()
            raise StorageError(f"cannot write {self.path}: {e.strerror}") from None
        if self._whole is not None:  # (else it stays unknown: blank lines, which load skips)
            self._whole += len(line)

    def _reopen(self) -> None:
        file, self._file = self._file, None
        try:
            file.close()
        except OSError:
            pass
        try:
            if self._whole is None:
                raise OSError("the file's whole length is unknown")
            os.truncate(self.path, self._whole)
        except OSError:
            self._whole = None
        self._lost = True
        self._open_again()

    def _open_again(self) -> None:
        try:
            self._file = open(self.path, "a", encoding="ascii")  # noqa: SIM115 - kept open
        except OSError:
            return  # (the next append tries again, and fails while it cannot)
        self._lost = False

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

