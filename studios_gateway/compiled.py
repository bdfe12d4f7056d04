"""What the optional C extensions (setup.py) have in common: telling a build older than
its source.

Each extension carries the digest of the C file it was built from (its ``source``
attribute, set by setup.py). In a source tree after an edit the old build would still
win the import; the tests use :func:`stale` to fail then instead of testing old C.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from types import ModuleType

__all__ = ["stale"]


def stale(module: ModuleType | None, source: Path) -> bool:
    """`module` was built from another version of `source` than the one on disk (rebuild
    with ``python setup.py build_ext --inplace``). An install ships no C source, and a
    missing module has nothing to compare: never stale."""
    if module is None or not source.exists():
        return False
    return hashlib.sha256(source.read_bytes()).hexdigest()[:16] != module.source
