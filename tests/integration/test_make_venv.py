"""scripts/make-venv: .venv on Debian's python3 (the .deb's interpreter), kept when it
already is, made anew when it runs on another, and a clear refusal of a Python that
cannot run the gateway (docs/decisions/interpreter.md)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DEBIAN = Path("/usr/bin/python3")


def _debian_ok() -> bool:
    if not DEBIAN.exists():
        return False
    probe = "import ensurepip, sys, venv; sys.exit(sys.version_info < (3, 11))"
    return subprocess.run([str(DEBIAN), "-c", probe], capture_output=True).returncode == 0


def _make(tree: Path, **env: str) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if k != "PYTHON"}
    full.update(env)
    return subprocess.run(["bash", str(tree / "scripts" / "make-venv")], cwd=tree, env=full,
                          capture_output=True, text=True, timeout=300)


def _base(python: Path) -> str:
    out = subprocess.run([str(python), "-c", "import os, sys; "
                          "print(os.path.realpath(sys._base_executable))"],
                         capture_output=True, text=True, check=True)
    return out.stdout.strip()


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    (tmp_path / "scripts").mkdir()
    shutil.copy(REPO / "scripts" / "make-venv", tmp_path / "scripts" / "make-venv")
    return tmp_path


def test_refuses_a_python_that_does_not_start(tree: Path) -> None:
    got = _make(tree, PYTHON=str(tree / "no-such-python"))
    assert got.returncode == 1
    assert "no-such-python is missing or older than Python 3.11" in got.stderr
    assert not (tree / ".venv").exists()


@pytest.mark.slow
@pytest.mark.skipif(not _debian_ok(), reason="Debian's python3 (3.11+, with venv) is needed")
def test_debian_python_first_kept_then_remade(tree: Path) -> None:
    # Default: Debian's python3, even when PATH starts with another one (a pyenv shim).
    shim = tree / "shim"
    shim.mkdir()
    (shim / "python3").symlink_to(shutil.which("python3") or "/usr/bin/python3")
    path = f"{shim}{os.pathsep}{os.environ.get('PATH', '')}"
    first = _make(tree, PATH=path)
    assert first.returncode == 0, first.stderr
    assert "creating .venv with /usr/bin/python3" in first.stdout
    assert _base(tree / ".venv" / "bin" / "python") == os.path.realpath(_base(DEBIAN))

    again = _make(tree, PATH=path)  # the right interpreter already: nothing to do
    assert again.returncode == 0 and again.stdout == ""

    # A .venv on another interpreter (its python says so): made anew on Debian's.
    fake = tree / ".venv" / "bin" / "python"
    fake.unlink()
    fake.write_text("#!/bin/sh\necho /opt/elsewhere/python3.11\n")
    fake.chmod(0o755)
    remade = _make(tree, PATH=path)
    assert remade.returncode == 0, remade.stderr
    assert ".venv runs on /opt/elsewhere/python3.11; making it anew on" in remade.stdout
    assert _base(tree / ".venv" / "bin" / "python") == os.path.realpath(_base(DEBIAN))
