"""tests.support.sources: the copy a building test builds in, not the project itself."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.support.sources import copy_sources


def _tree(root: Path) -> None:
    for name in ("setup.py", "pkg/mod.py", "build/lib/pkg/mod.py", "pkg.egg-info/SOURCES.txt",
                 "pkg/_fast.so", "untracked.txt"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(name)


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def test_a_git_work_tree_is_copied_as_git_tracks_it(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    _tree(repo)
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    subprocess.run(["git", "-C", str(repo), "add", "setup.py", "pkg/mod.py"], check=True)
    copy = copy_sources(tmp_path / "copy", repo)
    assert _files(copy) == {"setup.py", "pkg/mod.py"}
    assert (copy / "pkg" / "mod.py").read_text() == "pkg/mod.py"


def test_another_tree_is_copied_without_what_builds_make(tmp_path: Path) -> None:
    repo = tmp_path / "release"
    _tree(repo)
    copy = copy_sources(tmp_path / "copy", repo)
    assert _files(copy) == {"setup.py", "pkg/mod.py", "untracked.txt"}
