"""CONNECT_STORAGE_ROOT: the directory the gateway keeps its state in.

The start needs it to be a directory this user can write, creating it (and
missing parents) when it does not exist yet. :func:`prepare` does that at the
start; :func:`check` asks the same of the file system for check-config without
leaving anything behind (a missing directory is not created: the nearest
existing parent must let this user create it). Both fail with the same
ConfigError, so check-config and the start say the same words.
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

from studios_gateway.config import ConfigError

VARIABLE = "CONNECT_STORAGE_ROOT"


def _refused(root: str, reason: str) -> ConfigError:
    return ConfigError(VARIABLE, root, f"a writable directory ({reason})")


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check(root: str) -> None:
    """Raise ConfigError unless :func:`prepare` would succeed for `root`; create nothing
    that outlives the call (a probe file or directory is made and removed at once)."""
    path = Path(root).absolute()
    if path.exists() and not path.is_dir():
        raise _refused(root, os.strerror(errno.ENOTDIR))
    base = _nearest_existing(path)
    if not base.is_dir():
        raise _refused(root, os.strerror(errno.ENOTDIR))
    try:
        if base == path:  # as the start probes it: a file written and removed
            fd, probe = tempfile.mkstemp(prefix=".write-test", dir=path)
            os.close(fd)
            os.unlink(probe)
        else:  # the start would create the missing part here
            os.rmdir(tempfile.mkdtemp(prefix=".write-test", dir=base))
    except OSError as e:
        raise _refused(root, e.strerror or str(e)) from None


def prepare(root: str) -> Path:
    """Create `root` when missing and prove it writable; raise ConfigError (as
    :func:`check` does) when it cannot be used."""
    path = Path(root)
    if path.exists() and not path.is_dir():
        raise _refused(root, os.strerror(errno.ENOTDIR))
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise _refused(root, e.strerror or str(e)) from None
    return path
