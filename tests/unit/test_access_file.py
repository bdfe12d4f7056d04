"""The access log written straight to the log's files: the same lines as the per-event
path, a batch per interval, size and signal rotation of twistd's log file (fake clock)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.task import Clock
from twisted.logger import (
    Logger,
    LogLevel,
    LogPublisher,
    jsonFileLogObserver,
    textFileLogObserver,
)
from twisted.python.logfile import LogFile

from studios_gateway import logs
from studios_gateway.traffic.access_file import (
    FIELDS_SIZE,
    INTERVAL,
    LIMIT,
    LineBuffer,
    TextTarget,
)
from studios_gateway.traffic.access_log import NAMESPACE, AccessLog, json_line, text_line
from studios_gateway.traffic.facts import field_values
from tests.unit.test_traffic import T0, facts


class CountingFile(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, s: str) -> int:
        self.writes += 1
        return super().write(s)


def as_event(line: str, when: float) -> dict[str, Any]:
    """The event the per-event path logs for `line` at `when`."""
    return {"log_time": when, "log_namespace": NAMESPACE, "log_level": LogLevel.info,
            "log_format": "{access_line}", "access_line": line, "log_source": None}


def test_a_target_writes_what_the_observer_would_have_written() -> None:
    via_event, direct = io.StringIO(), io.StringIO()
    textFileLogObserver(via_event)(as_event("a line", T0))
    textFileLogObserver(via_event)(as_event("another", T0 + 1.5))
    textFileLogObserver(via_event)(as_event("a third", T0 + 1.7))  # the same second
    textFileLogObserver(via_event)(as_event("a fourth", T0 + 3.2))
    target = TextTarget.of(textFileLogObserver(direct), NAMESPACE)
    assert target is not None  # twistd's observer still keeps its file where we look
    target.write([(T0, ["a line"]), (T0 + 1.5, ["another", "a third"]),
                  (T0 + 3.2, ["a fourth"])])
    assert direct.getvalue() == via_event.getvalue()
    assert f"[{NAMESPACE}#info] a line\n" in direct.getvalue()


def test_observers_that_are_not_text_files_are_not_targets() -> None:
    assert TextTarget.of(jsonFileLogObserver(io.StringIO()), NAMESPACE) is None
    assert TextTarget.of(lambda event: None, NAMESPACE) is None


def test_lines_wait_for_the_interval_and_go_in_one_write() -> None:
    out, clock = CountingFile(), Clock()
    target = TextTarget.of(textFileLogObserver(out), NAMESPACE)
    assert target is not None
    buffer = LineBuffer(clock, [target])
    for i in range(50):
        buffer.add(T0, f"request {i}")
    assert out.getvalue() == ""
    clock.advance(INTERVAL)
    assert out.writes == 1
    assert [line.rsplit(" ", 1)[1] for line in out.getvalue().splitlines()] == [
        str(i) for i in range(50)]
    assert not clock.getDelayedCalls()  # nothing waits, no timer


def test_a_batch_across_seconds_gives_each_line_its_own_second_s_prefix() -> None:
    # The buffer keeps runs of one second; the clock may also step back between lines.
    via_event, out, clock = io.StringIO(), CountingFile(), Clock()
    target = TextTarget.of(textFileLogObserver(out), NAMESPACE)
    assert target is not None
    buffer = LineBuffer(clock, [target])
    times = [T0, T0 + 0.1, T0 + 1.0, T0 + 1.1, T0 - 5.0, T0 + 1.2, T0 + 2.5]
    for i, when in enumerate(times):
        buffer.add(when, f"line {i}")
        textFileLogObserver(via_event)(as_event(f"line {i}", when))
    clock.advance(INTERVAL)
    assert out.writes == 1 and out.getvalue() == via_event.getvalue()
    buffer.add(T0 + 2.6, "after a flush")  # the same second as the last run: a new batch
    textFileLogObserver(via_event)(as_event("after a flush", T0 + 2.6))
    buffer.close()
    assert out.writes == 2 and out.getvalue() == via_event.getvalue()
    assert [line.split("+0000 [")[0][-2:] for line in out.getvalue().splitlines()] == [
        "20", "20", "21", "21", "15", "21", "22", "22"]  # (T0 is 00:53:20.25)


def test_a_full_buffer_and_close_write_at_once() -> None:
    out, clock = CountingFile(), Clock()
    target = TextTarget.of(textFileLogObserver(out), NAMESPACE)
    assert target is not None
    buffer = LineBuffer(clock, [target])
    line = "x" * 1000
    for _ in range(LIMIT // len(line) + 1):
        buffer.add(T0, line)
    assert out.writes == 1 and not clock.getDelayedCalls()
    buffer.add(T0, "waits")
    buffer.close()
    assert out.getvalue().endswith("waits\n")
    buffer.add(T0, "after close")
    assert out.getvalue().endswith("after close\n") and not clock.getDelayedCalls()


def test_a_write_that_fails_is_said_once_and_does_not_raise(monkeypatch: Any) -> None:
    class Broken(io.StringIO):
        def write(self, s: str) -> int:
            raise OSError(28, "No space left on device")

    said: list[dict[str, Any]] = []
    clock = Clock()
    target = TextTarget.of(textFileLogObserver(Broken()), NAMESPACE)
    assert target is not None
    monkeypatch.setattr(LineBuffer, "_log", Logger(observer=said.append))
    buffer = LineBuffer(clock, [target])
    for _ in range(2):
        buffer.add(T0, "lost")
        clock.advance(INTERVAL)
    assert len(said) == 1 and "No space left" in str(said[0]["e"])


def test_twistd_log_file_rotates_by_size_and_by_signal(tmp_path: Path) -> None:
    log_file = LogFile("twistd.log", str(tmp_path), rotateLength=4000)
    clock = Clock()
    target = TextTarget.of(textFileLogObserver(log_file), NAMESPACE)
    assert target is not None
    buffer = LineBuffer(clock, [target])
    for batch in range(4):
        for i in range(20):
            buffer.add(T0, f"batch {batch} line {i}")
        clock.advance(INTERVAL)
    assert (tmp_path / "twistd.log.1").exists()  # rotated by size between batches
    log_file.rotate()  # what twistd does on SIGUSR1
    buffer.add(T0, "after the signal")
    clock.advance(INTERVAL)
    assert (tmp_path / "twistd.log").read_text().endswith("after the signal\n")
    every = "".join(p.read_text() for p in tmp_path.iterdir())
    assert every.count(f"[{NAMESPACE}#info] batch") == 80


def test_the_access_log_buffers_only_when_every_observer_is_a_text_file() -> None:
    out = io.StringIO()
    publisher = LogPublisher(textFileLogObserver(out))
    assert logs.observers(publisher) is None  # not behind set_level's filter: unknown
    logs.set_level("info", publisher)
    clock = Clock()
    access = AccessLog("text", "gw")
    access.start(clock, publisher)
    assert access.buffered
    access(facts())
    assert out.getvalue() == ""
    clock.advance(INTERVAL)
    [line] = out.getvalue().splitlines()
    assert line.endswith(f"[{NAMESPACE}#info] {text_line(facts(), 'gw')}")

    events: list[dict[str, Any]] = []
    publisher.addObserver(events.append)  # an observer that is not a file: every event
    assert logs.observers(publisher) is None
    per_event = AccessLog("text", "gw", logger=None)
    per_event.start(clock, publisher)
    assert not per_event.buffered


def test_lines_given_as_fields_are_made_only_when_their_batch_is_written() -> None:
    via_event, out, clock = io.StringIO(), CountingFile(), Clock()
    target = TextTarget.of(textFileLogObserver(out), NAMESPACE)
    assert target is not None
    rendered: list[tuple[Any, ...]] = []

    def render(fields: tuple[Any, ...]) -> str:
        rendered.append(fields)
        return "fields " + " ".join(map(str, fields))

    buffer = LineBuffer(clock, [target], render)
    times = [T0, T0 + 0.1, T0 + 1.0, T0 - 5.0, T0 + 1.2]
    for i, when in enumerate(times):  # fields and text mixed, across seconds
        if i % 2:
            buffer.add(when, f"text {i}")
            textFileLogObserver(via_event)(as_event(f"text {i}", when))
        else:
            buffer.add_fields(when, (i, "x"))
            textFileLogObserver(via_event)(as_event(f"fields {i} x", when))
    assert rendered == [] and out.getvalue() == ""
    clock.advance(INTERVAL)
    assert rendered == [(0, "x"), (2, "x"), (4, "x")]
    assert out.writes == 1 and out.getvalue() == via_event.getvalue()
    buffer.close()
    buffer.add_fields(T0, (5, "y"))  # after close: written at once
    assert out.getvalue().endswith("fields 5 y\n") and out.writes == 2


def test_fields_count_towards_the_limit_and_a_bad_one_is_left_out(monkeypatch: Any) -> None:
    out, clock = CountingFile(), Clock()
    target = TextTarget.of(textFileLogObserver(out), NAMESPACE)
    assert target is not None
    said: list[dict[str, Any]] = []
    monkeypatch.setattr(LineBuffer, "_log", Logger(observer=said.append))

    def render(fields: tuple[Any, ...]) -> str:
        if fields == ("bad",):
            raise ValueError("not a line")
        return f"line {fields[0]}"

    buffer = LineBuffer(clock, [target], render)
    limit = LIMIT // FIELDS_SIZE
    for i in range(limit - 1):
        buffer.add_fields(T0, (i,) if i not in (3, 7) else ("bad",))
    assert out.writes == 0 and clock.getDelayedCalls()
    buffer.add_fields(T0, (limit - 1,))  # the limit: written at once, no timer left
    assert out.writes == 1 and not clock.getDelayedCalls()
    lines = out.getvalue().splitlines()
    assert len(lines) == limit - 2 and lines[-1].endswith(f"line {limit - 1}")
    assert len(said) == 1 and "not a line" in str(said[0]["e"])
    buffer.add_fields(T0, ("bad",))  # said once
    clock.advance(INTERVAL)
    assert len(said) == 1
    with pytest.raises(TypeError):
        LineBuffer(clock, [target]).add_fields(T0, (1,))


@pytest.mark.parametrize("mode", ["text", "json"])
def test_the_buffered_access_log_writes_the_lines_of_the_per_event_path(mode: str) -> None:
    out, clock = io.StringIO(), Clock()
    publisher = LogPublisher(textFileLogObserver(out))
    logs.set_level("info", publisher)
    access = AccessLog(mode, "gw")
    access.start(clock, publisher)
    assert access.buffered
    cases = [facts(), facts(status=None, reason='said "no"', path="/a b"),
             facts(started=T0 + 1.5, kind="ssh", method="", path="")]
    for f in cases[:2]:
        access(f)
    access.fields(*field_values(cases[2]))
    assert out.getvalue() == ""
    clock.advance(INTERVAL)
    line = text_line if mode == "text" else json_line
    got = [text.split(f"[{NAMESPACE}#info] ", 1)[1] for text in out.getvalue().splitlines()]
    assert got == [line(f, "gw") for f in cases]
