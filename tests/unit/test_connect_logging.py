"""studios-connect's logging: the multiplexer's per-stream debug lines are made only when
the one observer would show them."""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import pytest
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel, globalLogPublisher

from studios_gateway.studio.main import start_logging
from studios_gateway.wire import frames, mux
from studios_gateway.wire.frames import INITIAL_WINDOW, SYN, WINDOW_UPDATE
from studios_gateway.wire.mux import Multiplexer


class Beginner:
    def __init__(self) -> None:
        self.observers: list[Any] = []

    def beginLoggingTo(self, observers: list[Any], redirectStandardIO: bool = True) -> None:  # noqa: N802,N803
        self.observers = observers


@pytest.fixture(autouse=True)
def _restore() -> Iterator[None]:
    before = mux.stream_debug
    yield
    mux.stream_debug = before


def _stream_lines() -> list[str]:
    """The debug lines a stream accepted and reset on a client multiplexer logs."""
    seen: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        if event.get("log_namespace", "").startswith("studios_gateway.wire.mux"):
            seen.append(event.get("log_format") or "")

    globalLogPublisher.addObserver(observe)
    try:
        m = Multiplexer(is_client=True, clock=Clock(), ping_interval=0,
                        on_stream=lambda s: None)
        m.makeConnection(StringTransport())
        stream = m.open_stream()
        stream.abortConnection()
        m.dataReceived(frames.encode_header(WINDOW_UPDATE, SYN, 2, INITIAL_WINDOW))
    finally:
        globalLogPublisher.removeObserver(observe)
    return seen


@pytest.mark.parametrize("level", ["info", "warn", "error"])
def test_above_debug_the_stream_lines_are_not_made_and_would_be_dropped(level: str) -> None:
    out, beginner = io.StringIO(), Beginner()
    start_logging(level, beginner, out)
    assert mux.stream_debug is False
    [observer] = beginner.observers
    observer({"log_level": LogLevel.debug,
              "log_namespace": "studios_gateway.wire.mux.Multiplexer",
              "log_format": "stream {sid} closed", "sid": 1, "log_time": 0})
    assert out.getvalue() == ""  # what the flag saves making was never shown
    lines = _stream_lines()
    assert "opened stream {sid}" not in lines and "stream {sid} closed" not in lines


def test_at_debug_the_stream_lines_are_made_and_shown() -> None:
    out, beginner = io.StringIO(), Beginner()
    start_logging("debug", beginner, out)
    assert mux.stream_debug is True
    lines = _stream_lines()
    assert "opened stream {sid}" in lines and "stream {sid} closed" in lines
    [observer] = beginner.observers
    observer({"log_level": LogLevel.debug,
              "log_namespace": "studios_gateway.wire.mux.Multiplexer",
              "log_format": "stream {sid} closed", "sid": 1, "log_time": 0})
    assert "stream 1 closed" in out.getvalue()


def test_shown_words_keeps_spaces_and_still_escapes_the_rest() -> None:
    """A refused login's reason is a sentence: its spaces stay spaces, while a client's
    line break, tab or undecodable byte inside it is still shown escaped."""
    from studios_gateway.shown import shown

    assert shown("state x\r\nSet-Cookie: a\tb", 100, words=True) == (
        "state x\\x0d\\x0aSet-Cookie: a\\x09b")
    assert shown(b"bad \xff byte", 100, words=True) == "bad \\xff byte"
    assert shown("a b", 100) == "a\\x20b"  # names and targets keep the stricter form
    assert shown("one two three", 7, words=True) == "one two..."
