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


class _RoomFor:
    """A journal's file on a disk with room for `room` more bytes: a write past it puts
    what fits and fails, as a regular file's does (ENOSPC after a short write)."""

    def __init__(self, file: object, room: int) -> None:
        self._file, self._room = file, room

    def write(self, text: str) -> int:
        import errno

        put, self._room = text[:self._room], max(0, self._room - len(text))
        self._file.write(put)  # type: ignore[attr-defined]
        self._file.flush()  # type: ignore[attr-defined]
        if len(put) < len(text):
            raise OSError(errno.ENOSPC, "No space left on device")
        return len(text)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self._file.close()  # type: ignore[attr-defined]


def test_a_line_cut_by_a_full_disk_costs_no_later_line(tmp_path: Path) -> None:
    """The disk fills as a line is written (part of it lands): that id is not spent, and
    the next, once there is space, must survive a restart. It was written on after the
    cut line's part, and read back as one bogus line: a login link used after the disk
    freed could be used once more after a restart."""
    import pytest

    from studios_gateway.private_files import StorageError

    path = tmp_path / "spent.log"
    clock = Clock()
    spent = SpentSet(clock, journal=Journal(path))
    assert spent.spend("link-1", until=100)
    journal = spent._journal
    journal._file = _RoomFor(journal._file, room=7)
    with pytest.raises(StorageError):
        spent.spend("link-2", until=100)
    assert "link-2" not in spent
    assert spent.spend("link-3", until=100)  # space again (the file was opened again)
    spent.close()
    again = SpentSet(clock, journal=Journal(path))
    assert "link-1" in again and "link-3" in again, path.read_text()
    assert "link-2" not in again
    again.close()


def test_a_journal_that_cannot_be_opened_again_refuses_until_it_can(tmp_path: Path,
                                                                    monkeypatch) -> None:
    """After a failed append the file is opened again; when that failed too (no file
    descriptor left, the directory gone), every later id was spent in memory alone and
    said nothing: used again after a restart. Now each append tries to open it, and
    fails (the link refused for now) while it cannot."""
    import errno

    import pytest

    from studios_gateway.auth import files
    from studios_gateway.private_files import StorageError

    path = tmp_path / "spent.log"
    spent = SpentSet(Clock(), journal=Journal(path))
    journal = spent._journal
    journal._file = _RoomFor(journal._file, room=0)

    def no_file(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(files, "open", no_file, raising=False)
    with pytest.raises(StorageError):
        spent.spend("link-1", until=100)
    with pytest.raises(StorageError, match="cannot open .* again"):
        spent.spend("link-2", until=100)
    assert "link-2" not in spent
    monkeypatch.undo()
    assert spent.spend("link-2", until=100)
    spent.close()
    assert "link-2" in SpentSet(Clock(), journal=Journal(path))
