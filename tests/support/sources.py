"""A copy of the project's sources, for a test that builds the project (a wheel).

pip builds a project in its own directory: setuptools writes ``build/`` and the
``*.egg-info`` there and removes what it staged at the end. Two builds of one directory at
once (the two test runners, each building a wheel) took each other's files: one failed
("No such file or directory"), or made a wheel of 5 files without the package, 1 time in 3
here. A build of a copy of its own writes only in the copy.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from tests.support.gateway import REPO

#: Left out of a copy of a directory that is no git work tree: what builds and runs make.
NOT_SOURCES = (".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", "*.so",
               ".pytest_cache", ".ruff_cache", ".mypy_cache", ".hypothesis", "wheels")


def copy_sources(dest: Path, repo: Path = REPO) -> Path:
    """`dest` holding the project's sources: the files git tracks in `repo` (as
    packaging/build-deb takes them), or its tree without NOT_SOURCES where it is no git
    work tree (an unpacked release)."""
    listed = subprocess.run(["git", "-C", str(repo), "ls-files", "-z"], capture_output=True,
                            timeout=60)
    if listed.returncode != 0:
        shutil.copytree(repo, dest, ignore=shutil.ignore_patterns(*NOT_SOURCES))
        return dest
    for name in listed.stdout.decode().split("\0"):
        source = repo / name
        if name and source.is_file():  # (a file deleted but not yet committed is left out)
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    return dest
