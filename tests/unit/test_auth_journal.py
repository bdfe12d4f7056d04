"""What was spent survives a restart: used login links, logouts (auth.files.Journal)."""

from __future__ import annotations

from pathlib import Path

from twisted.internet.task import Clock

from studios_gateway.auth.files import Journal
from studios_gateway.registry.spent import SpentSet


def test_spent_ids_survive_a_restart_until_they_expire(tmp_path: Path) -> None:
    path = tmp_path / "spent.log"
    clock = Clock()
    first = SpentSet(clock, journal=Journal(path))
    assert first.spend("link-1", until=100)
    assert first.spend("login-2", until=10)
    first.close()
    assert path.stat().st_mode & 0o777 == 0o600
    clock.advance(20)  # login-2 has expired meanwhile
    again = SpentSet(clock, journal=Journal(path))
    assert "link-1" in again and "login-2" not in again
    assert not again.spend("link-1", until=100)  # still used
    assert path.read_text() == "link-1 100\n"  # rewritten with only what is live
    again.close()


def test_expired_malformed_and_blank_lines_are_skipped(tmp_path: Path) -> None:
    path = tmp_path / "spent.log"
    path.write_text("a 50\nnonsense\nb x\n\nc 60\nd 7")
    live = Journal(path).load(now=8)
    assert live == {"a": 50.0, "c": 60.0}


def test_keys_with_spaces_are_not_written(tmp_path: Path) -> None:
    j = Journal(tmp_path / "spent.log")
    j.load(now=0)
    j.append("two words", 10)
    j.append("ok", 10)
    j.close()
    assert (tmp_path / "spent.log").read_text() == "ok 10\n"
