"""Repeats: a kind of line said at once, then at most once per period with a count."""

from twisted.internet.task import Clock

from studios_gateway.repeats import Repeats


def said(repeats: Repeats, kind: str) -> str | None:
    unsaid = repeats.due(kind)
    return None if unsaid is None else "line" + repeats.more(unsaid)


def test_the_count_names_the_time_since_the_line_before_not_the_period() -> None:
    """The quiet ones came since the line before: 'in the last 60s' was said however long
    ago that was (events in the first seconds of a quiet hour, the next line an hour on)."""
    clock = Clock()
    repeats = Repeats(clock, every=60)
    assert said(repeats, "k") == "line"
    for _ in range(3):
        clock.advance(10)
        assert said(repeats, "k") is None
    clock.advance(30)  # 60 s after the first line
    assert said(repeats, "k") == "line (and 3 more like it in the last 60s)"
    clock.advance(5)
    assert said(repeats, "k") is None
    clock.advance(3600)
    assert said(repeats, "k") == "line (and 1 more like it in the last 3605s)"
    clock.advance(3600)
    assert said(repeats, "k") == "line"  # none quiet since: no count


def test_kinds_are_counted_apart_and_cleared() -> None:
    clock = Clock()
    repeats = Repeats(clock, every=60)
    assert said(repeats, "a") == "line" and said(repeats, "b") == "line"
    assert said(repeats, "a") is None
    clock.advance(90)
    assert said(repeats, "b") == "line"
    assert said(repeats, "a") == "line (and 1 more like it in the last 90s)"
    assert said(repeats, "a") is None
    repeats.clear()
    assert said(repeats, "a") == "line"


def test_a_clock_set_back_does_not_keep_a_kind_quiet_for_as_long() -> None:
    """The reactor's clock is the wall clock: set back an hour (NTP's step, an operator's
    date) after a line, the kind stayed quiet for that hour and a minute."""
    clock = Clock()
    clock.advance(10_000)
    repeats = Repeats(clock, every=60)
    assert said(repeats, "k") == "line"
    clock.advance(5)
    assert said(repeats, "k") is None
    clock.rightNow -= 3600
    assert said(repeats, "k") == "line (and 1 more like it in the last 60s)"
    assert said(repeats, "k") is None  # quiet again, from the clock as it is now
    clock.advance(60)
    assert said(repeats, "k") == "line (and 1 more like it in the last 60s)"
