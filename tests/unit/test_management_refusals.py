"""Management requests refused for the key: logged, but never more than a few lines a
minute, and never with the key that was sent."""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.logger import formatEvent, globalLogPublisher

from studios_gateway.management.endpoints import RefusalLog


def _lines(run: Any) -> list[str]:
    lines: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        if event.get("log_namespace", "").endswith("RefusalLog"):
            lines.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    try:
        run()
    finally:
        globalLogPublisher.removeObserver(observe)
    return lines


def test_a_flood_is_counted_not_logged_line_by_line() -> None:
    clock = Clock()
    log = RefusalLog(clock, per_window=3, window=60.0)

    def run() -> None:
        for i in range(10):
            log.refused(b"GET", b"/metrics?try=%d" % i, "192.0.2.7")
        clock.advance(59)
        log.refused(b"POST", b"/shutdown", "192.0.2.7")  # same window: counted
        clock.advance(1)
        log.refused(b"GET", b"/ready", "192.0.2.8")  # a new window: the count, then it

    assert _lines(run) == [
        "management request refused (missing or wrong bearer token): GET /metrics?try=0 "
        "from 192.0.2.7",
        "management request refused (missing or wrong bearer token): GET /metrics?try=1 "
        "from 192.0.2.7",
        "management request refused (missing or wrong bearer token): GET /metrics?try=2 "
        "from 192.0.2.7",
        "8 more management requests refused (missing or wrong bearer token) in the last "
        "60 s, not logged one by one",
        "management request refused (missing or wrong bearer token): GET /ready "
        "from 192.0.2.8",
    ]


def test_odd_bytes_in_the_target_are_escaped_and_cut() -> None:
    log = RefusalLog(Clock())
    [line] = _lines(lambda: log.refused(b"GET", b"/\xff\x1b[2J" + b"a" * 500, "192.0.2.7"))
    assert "\\xff" in line and "\x1b" not in line
    assert len(line) < 320


def test_the_count_is_logged_when_the_window_ends_even_if_the_flood_stopped() -> None:
    clock = Clock()
    log = RefusalLog(clock, per_window=1, window=60.0)

    def run() -> None:
        for _ in range(5):
            log.refused(b"GET", b"/ready", "192.0.2.7")
        clock.advance(60)

    lines = _lines(run)
    assert len(lines) == 2 and lines[1].startswith("4 more management requests refused")
    assert not clock.getDelayedCalls()
