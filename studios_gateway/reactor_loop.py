"""The epoll reactor's per-event work made lean.

A proxy's reactor wakes up for one or two socket events per small request. At one
connection at a time every request is such a wake-up, so what Twisted does around
each event, not the request's own work, is a large part of a process's CPU.
``EPollReactor.doPoll`` hands every event to ``log.callWithLogger``, which asks the
selectable for its ``logPrefix()``, copies the logging context and pushes it through
three layers of ``twisted.python.context`` (about ten Python calls per event).
:func:`install` replaces the installed reactor's ``doIteration`` with a poll that
pushes the same context (``system`` is the selectable's ``logPrefix()``, so legacy
``log.msg``/``log.err`` from a protocol, Conch's for one, still name their
connection) straight onto the context stack, and logs an exception escaping an event
with that ``system`` as ``callWithLogger`` does. The pushed frame is kept per prefix
(at most :data:`_FRAMES`), and an event that is only a read is read in the poll, as
Twisted's ``_doReadOrWrite`` would (every other event still goes there).

Around the poll, ``ReactorBase.mainLoop`` calls ``runUntilCurrent`` and ``timeout``
(each calling ``_insertNewDelayedCalls``) and enters and leaves its failure handler on
every iteration, about six Python calls with no timer due. The lean loop
(:func:`_lean_main_loop`) calls ``runUntilCurrent`` only when it has work (a timed call
due, new timed calls, calls from threads, a stop, cancelled calls to sweep) and
computes the poll's timeout in place, with the same failure handler on an exception.

The two things that used to wrap ``doIteration`` on every iteration, the multiplexer's
turn counter (wire/turns.py) and the reactor-tick metric (metrics.py), are hooks of the
lean poll instead (:func:`hooks_of`): the poll counts the turn and times the tick
itself, and counts the tick into the metric's histogram in place (:class:`TickCounts`),
with no Python call per wake-up. ``doIteration`` is still looked up on every
iteration, so any other wrapper keeps working.

Only Twisted's own epoll reactor is changed (not a subclass with its own poll, nor a
reactor whose ``doIteration`` something wrapped already: install first);
``tests/unit/test_reactor_loop.py`` fails when the Twisted code this module stands in
for changes. Anything else keeps Twisted's loop. See docs/decisions/reactor-loop.md.
"""

from __future__ import annotations

import errno
import sys
from bisect import bisect_left
from collections.abc import Callable
from time import perf_counter
from typing import Any

from twisted.python import context, log
from twisted.python.log import ILogContext

__all__ = ["Hooks", "TickCounts", "hooks_of", "install", "installed"]

#: Set on a reactor that has the lean poll: its :class:`Hooks`.
_INSTALLED = "_studios_lean_poll"


class Hooks:
    """What the lean poll does besides polling, on every iteration.

    ``turns``: an object whose ``n`` the poll adds one to before it polls (the
    multiplexer's turn counter, wire/turns.py). ``ticks``: the :class:`TickCounts` the
    poll counts the seconds from the end of the previous poll to the start of this one
    in (the callbacks of the events that poll returned, and the timed calls run since),
    the reactor-tick metric's."""

    __slots__ = ("turns", "ticks", "started")

    def __init__(self) -> None:
        self.turns: Any = None
        self.ticks: TickCounts | None = None
        self.started = perf_counter()


class TickCounts:
    """A histogram of tick times in plain numbers, counted in place by the lean poll (no
    call per iteration): ``counts[i]`` ticks took at most ``bounds[i]`` seconds and more
    than the bound before (the last: above every bound), ``total`` seconds in all."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...], counts: list[int]) -> None:
        assert len(counts) == len(bounds) + 1 and list(bounds) == sorted(bounds)
        self.bounds = bounds
        self.counts = counts
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        """Count one tick (what the lean poll does in place)."""
        self.counts[bisect_left(self.bounds, seconds)] += 1
        self.total += seconds


def installed(reactor: Any) -> bool:
    return hooks_of(reactor) is not None


def hooks_of(reactor: Any) -> Hooks | None:
    """The lean poll's hooks on ``reactor``; None when it does not have the lean poll."""
    hooks = getattr(reactor, _INSTALLED, None)
    return hooks if isinstance(hooks, Hooks) else None


def supported(reactor: Any) -> bool:
    """``reactor`` is Twisted's epoll reactor with the ``doPoll`` this module replaces."""
    try:
        from twisted.internet.epollreactor import EPollReactor
    except ImportError:  # not Linux
        return False
    return (isinstance(reactor, EPollReactor)
            and type(reactor).doPoll is EPollReactor.doPoll
            and type(reactor).doIteration is EPollReactor.doPoll
            and "doIteration" not in vars(reactor))


def install(reactor: Any) -> bool:
    """Give ``reactor`` the lean poll and main loop; False (nothing changed) when it is
    not the epoll reactor this module knows, or it has them already. The main loop takes
    effect when the reactor starts running (install before ``reactor.run()``); the poll
    at once."""
    if installed(reactor) or not supported(reactor) or "mainLoop" in vars(reactor):
        return False
    hooks = Hooks()
    setattr(reactor, _INSTALLED, hooks)
    reactor.doIteration = _lean_poll(reactor, hooks)
    reactor.mainLoop = _lean_main_loop(reactor)
    return True


#: How many events' context frames the lean poll keeps (one per ``logPrefix()``, which
#: names a connection): past it they are dropped and made again as events come. A few
#: hundred small dicts for the whole process, nothing per connection.
_FRAMES = 256

#: The longest poll: epoll_wait's timeout is a C int of milliseconds (as Twisted's).
_LONGEST = 2147483


def _lean_main_loop(reactor: Any) -> Callable[[], None]:
    from twisted.internet.base import _log as base_log
    from twisted.internet.base import _topHandler

    seconds = reactor.seconds
    failed = _topHandler.__exit__

    def main_loop() -> None:
        r = reactor
        while r._started:
            try:
                due = r._pendingTimedCalls
                now = seconds() if due else 0.0  # one clock read when nothing is run
                if (r._newTimedCalls or r.threadCallQueue or r._justStopped
                        or r._cancellations > 50 or (due and due[0].time <= now)):
                    r.runUntilCurrent()
                    if r._newTimedCalls:
                        r._insertNewDelayedCalls()
                    due = r._pendingTimedCalls
                    now = seconds()
                timeout: float | None = None
                if due:
                    timeout = due[0].time - now
                    if timeout > _LONGEST:
                        timeout = _LONGEST
                    elif timeout < 0:
                        timeout = 0
                r.doIteration(timeout if r.running else 0)
            except BaseException:
                if not failed(*sys.exc_info()):
                    raise
        base_log.info("Main loop terminated.")

    return main_loop


def _lean_poll(reactor: Any, hooks: Hooks) -> Callable[[float | None], None]:
    from twisted.internet.posixbase import _NO_FILEDESC

    poller = reactor._poller
    selectables: dict[int, Any] = reactor._selectables
    handle = reactor._doReadOrWrite
    disconnect = reactor._disconnectSelectable
    readable = reactor._POLL_IN
    # The reactor's thread's context stack and the logging context at the loop (twistd's
    # default), found on the first event: the loop runs in one thread, at one depth.
    where: list[Any] = []
    # The context frame pushed for each event, by system (see _FRAMES).
    frames: dict[str, dict[Any, Any]] = {}

    def do_poll(timeout: float | None) -> None:
        turns = hooks.turns
        if turns is not None:
            turns.n += 1
        ticks = hooks.ticks
        if ticks is not None:  # TickCounts.observe, in place
            spent = perf_counter() - hooks.started
            ticks.counts[bisect_left(ticks.bounds, spent)] += 1
            ticks.total += spent
        try:
            events = poller.poll(-1 if timeout is None else timeout, len(selectables))
        except OSError as err:
            hooks.started = perf_counter()
            if err.errno == errno.EINTR:
                return
            raise
        if ticks is not None:
            hooks.started = perf_counter()
        if events:
            if not where or where[0] is not context.theContextTracker:
                where[:] = _context_stack()
                frames.clear()
            stack, base = where[1], where[2]
            left = len(events)
            for fd, event in events:
                left -= 1
                if turns is not None:
                    turns.more = left  # the events of this poll after this one
                selectable = selectables.get(fd)
                if selectable is None:
                    continue
                try:
                    system = selectable.logPrefix()
                except KeyboardInterrupt:
                    raise
                except BaseException:
                    system = "(buggy logPrefix method)"
                    log.err(system=system)
                try:
                    frame = frames[system]
                except KeyError:
                    if len(frames) >= _FRAMES:
                        frames.clear()
                    frame = frames[system] = {ILogContext: {**base, "system": system}}
                except TypeError:  # a prefix that is not a string (nor hashable)
                    frame = {ILogContext: {**base, "system": system}}
                stack.append(frame)
                try:
                    if event == readable:
                        # Twisted's _doReadOrWrite for an event that is only a read:
                        # the same calls, in the same order, with the same reasons.
                        in_read = False
                        why: Any
                        try:
                            if selectable.fileno() == -1:
                                why = _NO_FILEDESC
                            else:
                                why = selectable.doRead()
                                in_read = True
                        except BaseException:
                            why = sys.exc_info()[1]
                            log.err()
                        if why:
                            disconnect(selectable, why, in_read)
                    else:
                        handle(selectable, fd, event)
                except KeyboardInterrupt:
                    stack.pop()
                    raise
                except BaseException:
                    stack.pop()
                    log.err(system=system)
                else:
                    stack.pop()

    return do_poll


def _context_stack() -> tuple[Any, list[dict[Any, Any]], dict[str, Any]]:
    """The context tracker, this thread's context stack (what ``context.call`` pushes
    onto) and the logging context at its top."""
    tracker: Any = context.theContextTracker
    current = getattr(tracker, "currentContext", None)
    stack = (current() if current is not None else tracker).contexts
    return tracker, stack, context.get(ILogContext) or {}
