"""Which reactor turn it is: a counter that the reactor's loop advances.

The tunnel's multiplexer sends the first frame of a reactor turn at once and holds
the turn's later small frames for one send at its end (docs/decisions/
tunnel-scheduling.md). To know that a frame is not the turn's first, it used to set
an end-of-turn timer at every first frame, even when nothing followed: at one
request at a time, a DelayedCall per request at each end of the tunnel for nothing.
With the turn's number it needs a timer only once a second frame is actually held.

The counter is advanced by the lean poll itself where the reactor has it
(reactor_loop.py's hooks), and otherwise by wrapping the reactor's ``doIteration`` (one
poll and the events it returns) once per reactor. A clock without ``doIteration`` (a
fake ``task.Clock`` in tests) has no counter: :func:`turns_of` returns None and the
multiplexer sets its end-of-turn timer at each first frame, as before.
"""

from __future__ import annotations

from typing import Any

from studios_gateway import reactor_loop

__all__ = ["Turns", "turns_of"]


class Turns:
    """``n`` is the number of the reactor iteration in progress (it only grows).

    ``more``: while the lean poll hands out the events of one poll, how many of them
    come after the one being handled (0 at the last one, and on a reactor without the
    lean poll). A frame written while ``more`` is not 0 can wait for the poll's later
    events to add theirs (docs/decisions/tunnel-scheduling.md)."""

    __slots__ = ("n", "more", "wrapper")

    def __init__(self) -> None:
        self.n = 0
        self.more = 0
        self.wrapper: Any = None


def turns_of(clock: Any) -> Turns | None:
    """The turn counter of ``clock``'s reactor, installed on first use; None without one.

    Someone else restoring the reactor's ``doIteration`` (metrics' uninstrument, say)
    drops the wrapper; the next call wraps again, on the same counter. While it is
    dropped the counter stands still, which only makes every frame after the first
    wait for the end of its turn (correct, one timer more)."""
    do_iteration = getattr(clock, "doIteration", None)
    if do_iteration is None:
        return None
    turns: Turns | None = getattr(clock, "_studios_turns", None)
    if turns is None:
        turns = Turns()
        clock._studios_turns = turns
    hooks = reactor_loop.hooks_of(clock)
    if hooks is not None:
        hooks.turns = turns
        return turns
    if do_iteration is turns.wrapper:
        return turns
    inner = do_iteration

    def counted(timeout: float | None) -> None:
        turns.n += 1
        inner(timeout)

    turns.wrapper = counted
    clock.doIteration = counted
    return turns
