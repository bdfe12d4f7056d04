"""CONNECT_STORAGE_ROOT: check-config refuses what the start would, in the same words."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from twisted.internet.testing import MemoryReactorClock

from studios_gateway import storage_root
from studios_gateway.component import StartError
from studios_gateway.config import ConfigError
from studios_gateway.config_loading import load_config
from studios_gateway.service import make_service

PROC = Path("/proc/self").exists()


def refusal(root: str) -> str:
    with pytest.raises(ConfigError) as checked:
        storage_root.check(root)
    with pytest.raises(ConfigError) as prepared:
        storage_root.prepare(root)
    assert str(checked.value) == str(prepared.value)
    assert str(checked.value).startswith(f"CONNECT_STORAGE_ROOT={root!r}: expected a writable")
    return str(checked.value)


def test_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("")
    assert refusal(str(tmp_path / "f")).endswith("(Not a directory)")
    assert refusal(str(tmp_path / "f" / "below")).endswith("(Not a directory)")


@pytest.mark.skipif(not PROC, reason="needs /proc")
def test_a_directory_that_cannot_be_created_is_refused() -> None:
    assert "/proc/nope" in refusal("/proc/nope")


def test_check_creates_nothing(tmp_path: Path) -> None:
    storage_root.check(str(tmp_path / "a" / "b"))
    storage_root.check(str(tmp_path))
    assert os.listdir(tmp_path) == []
    assert storage_root.prepare(str(tmp_path / "a" / "b")).is_dir()


def test_the_start_names_the_variable(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("")
    config = load_config(environ={"CONNECT_STORAGE_ROOT": str(tmp_path / "f")})
    with pytest.raises(StartError, match=r"^CONNECT_STORAGE_ROOT=.*\(Not a directory\)$"):
        make_service(config, MemoryReactorClock(), environ={})


def test_check_config_fails_as_the_start_does(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    from studios_gateway.cli import main

    for k in [k for k in os.environ if k.startswith(("CONNECT_", "TOWER_"))]:
        monkeypatch.delenv(k)
    (tmp_path / "f").write_text("")
    monkeypatch.setenv("CONNECT_STORAGE_ROOT", str(tmp_path / "f"))
    assert main(["check-config", "-q"]) == 2
    out = capsys.readouterr()
    assert out.err == f"studios-gateway: {refusal(str(tmp_path / 'f'))}\n"
    assert "configuration OK" not in out.out
