"""Saying a kind of failure the first time, then at most once per period with a count:
for log lines that anyone (a client, an outage) can cause again and again."""

from __future__ import annotations

from typing import Any

__all__ = ["Repeats"]


class Repeats:
    """Per kind of event (a short text: "answered HTTP 500", "state is unknown"): the
    first is due at once, then at most one each `every` seconds; the others are counted
    and the count goes with the next line of that kind. At most `max_kinds` kinds are
    remembered (the oldest are forgotten first), so a client inventing kinds costs a
    bounded dictionary and, at worst, a line for each new kind."""

    def __init__(self, clock: Any, every: float = 60.0, max_kinds: int = 64):
        self._clock = clock
        self.every = every
        self._max = max_kinds
        self._kinds: dict[str, tuple[float, int]] = {}  # kind -> (quiet until, unsaid)
        self._span = every  # seconds since the line before the one due() last allowed

    def due(self, kind: str) -> int | None:
        """None: only counted. Otherwise say it now, with this many like it that were
        not said since the last line of its kind (0: none, or the first)."""
        now = self._clock.seconds()
        until, unsaid = self._kinds.get(kind, (0.0, 0))
        said_at = until - self.every
        # (A clock set back past the last line, which the reactor's wall clock can be,
        # ends the quiet: it kept the kind quiet for as long as the step was.)
        if said_at <= now < until:
            self._kinds[kind] = (until, unsaid + 1)
            return None
        self._kinds.pop(kind, None)
        self._kinds[kind] = (now + self.every, 0)
        # The quiet ones came since the line before this one (`every` or more ago).
        self._span = now - said_at if unsaid and now >= said_at else self.every
        while len(self._kinds) > self._max:
            self._kinds.pop(next(iter(self._kinds)))
        return unsaid

    def more(self, unsaid: int) -> str:
        """The words that go with the line `due` just allowed, said after `unsaid` quiet
        ones ("" for none). The seconds are the time since the line before it: the quiet
        ones came within that, which can be longer than `every` (29 events in a minute,
        then one 30 s later: "in the last 90s", not 60)."""
        return f" (and {unsaid} more like it in the last {self._span:.0f}s)" if unsaid else ""

    def clear(self) -> None:
        self._kinds.clear()
