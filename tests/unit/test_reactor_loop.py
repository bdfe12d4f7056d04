"""reactor_loop: the lean epoll poll keeps Twisted's per-event behaviour, and the Twisted
code it stands in for is the code it was written against (a Twisted upgrade that changes
it fails here first)."""

from __future__ import annotations

import errno
import hashlib
import inspect
import os
import select
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from twisted.internet import base, epollreactor, error, main, posixbase, task
from twisted.internet.abstract import FileDescriptor
from twisted.internet.interfaces import IHalfCloseableDescriptor
from twisted.python import context, log
from zope.interface import implementer

from studios_gateway import reactor_loop
from studios_gateway.reactor_loop import install


def _digest(obj: Any) -> str:
    return hashlib.sha256(inspect.getsource(obj).encode()).hexdigest()[:16]


def test_the_twisted_code_stood_in_for_is_unchanged() -> None:
    """If this fails, Twisted changed what reactor_loop replaces or relies on: compare
    _lean_poll with the new code (EPollReactor.doPoll, log.callWithLogger and
    callWithContext, the context stack), adapt it, then update these digests."""
    assert {
        "doPoll": _digest(epollreactor.EPollReactor.doPoll),
        "callWithLogger": _digest(log.callWithLogger),
        "callWithContext": _digest(log.callWithContext),
        "ContextTracker.callWithContext": _digest(context.ContextTracker.callWithContext),
        "ThreadedContextTracker.currentContext":
            _digest(context.ThreadedContextTracker.currentContext),
        "_doReadOrWrite": _digest(posixbase._PollLikeMixin._doReadOrWrite),
        "mainLoop": _digest(base.ReactorBase.mainLoop),
        "runUntilCurrent": _digest(base.ReactorBase.runUntilCurrent),
        "timeout": _digest(base.ReactorBase.timeout),
        "_insertNewDelayedCalls": _digest(base.ReactorBase._insertNewDelayedCalls),
    } == {
        "doPoll": "09b62ae68ef01b4b",
        "callWithLogger": "802f8564bca3531f",
        "callWithContext": "c44b5124f288e82f",
        "ContextTracker.callWithContext": "c17a3f4bb097dffb",
        "ThreadedContextTracker.currentContext": "1499c99f80346a41",
        "mainLoop": "769125a86d0cd7e9",
        "runUntilCurrent": "b9fbbdb8e8414792",
        "timeout": "347720436ca8713c",
        "_insertNewDelayedCalls": "793e23d07f8fb7da",
        "_doReadOrWrite": "5ffee55b79492b00",
    }


@pytest.fixture
def reactor() -> Iterator[epollreactor.EPollReactor]:
    r = epollreactor.EPollReactor()
    yield r
    for reader in list(r._internalReaders):  # the waker's pipe (the tests' sockets are
        reader.connectionLost(None)          # closed by their own fixture)
    r._poller.close()


class Reader(FileDescriptor):
    """Reads one end of a socket pair; what it does on a read is up to the test."""

    def __init__(self, reactor: Any, sock: socket.socket, prefix: str, on_read: Any):
        super().__init__(reactor)
        self.sock = sock
        self.prefix = prefix
        self.on_read = on_read
        self.lost: Any = None

    def fileno(self) -> int:
        return self.sock.fileno()

    def logPrefix(self) -> str:
        return self.prefix

    def doRead(self) -> Any:
        self.sock.recv(100)
        return self.on_read()

    def connectionLost(self, reason: Any) -> None:
        self.lost = reason


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    a.setblocking(False)
    yield a, b
    a.close()
    b.close()


def _events() -> tuple[list[dict[str, Any]], Any]:
    seen: list[dict[str, Any]] = []
    log.addObserver(seen.append)
    return seen, lambda: log.removeObserver(seen.append)


def _one_turn(reactor: Any, sender: socket.socket) -> list[dict[str, Any]]:
    """Send a byte to the reader's socket and run one reactor turn; the log events."""
    seen, stop = _events()
    try:
        sender.send(b"x")
        reactor.doIteration(1)
    finally:
        stop()
    return seen


def test_only_twisteds_own_epoll_reactor_is_changed(reactor: Any) -> None:
    assert install(task.Clock()) is False
    assert install(reactor) is True
    assert install(reactor) is False  # once
    assert reactor_loop.installed(reactor)
    other = epollreactor.EPollReactor()
    try:
        other.doIteration = lambda timeout: None  # wrapped by someone already
        assert install(other) is False
    finally:
        other._poller.close()


def test_the_turn_counter_and_the_tick_metric_are_hooks_not_wrappers(reactor: Any,
                                                                     pair: Any) -> None:
    from studios_gateway.metrics import Metrics
    from studios_gateway.wire.turns import turns_of

    install(reactor)
    poll = reactor.doIteration
    metrics = Metrics()
    metrics.instrument_reactor(reactor)
    turns = turns_of(reactor)
    assert turns is not None and turns_of(reactor) is turns
    assert reactor.doIteration is poll  # nothing wrapped around the lean poll
    a, b = pair
    took: list[float] = []
    reader = Reader(reactor, a, "Slow", lambda: took.append(time.perf_counter()))
    reactor.addReader(reader)
    before = turns.n
    _one_turn(reactor, b)
    reactor.doIteration(0)  # the next poll observes the tick the read ran in
    assert turns.n == before + 2
    text = metrics.render().decode()
    assert "studios_gateway_reactor_ticks_total 2.0" in text
    assert 'studios_gateway_reactor_tick_seconds_bucket{le="+Inf"} 2.0' in text
    total = [line for line in text.splitlines()
             if line.startswith("studios_gateway_reactor_tick_seconds_sum ")]
    assert len(total) == 1 and 0 < float(total[0].split()[1]) < 10
    metrics.uninstrument_reactor()
    reactor.doIteration(0)
    assert turns.n == before + 3
    assert "studios_gateway_reactor_ticks_total 2.0" in metrics.render().decode()
    assert took


def test_the_turn_counter_says_how_many_events_of_the_poll_come_after_this_one(
        reactor: Any) -> None:
    from studios_gateway.wire.turns import turns_of

    install(reactor)
    turns = turns_of(reactor)
    assert turns is not None
    seen: list[int] = []
    pairs = [socket.socketpair() for _ in range(3)]
    readers = [Reader(reactor, a, f"R{n}", lambda: seen.append(turns.more))
               for n, (a, _) in enumerate(pairs)]
    try:
        for reader, (a, b) in zip(readers, pairs, strict=True):
            a.setblocking(False)
            reactor.addReader(reader)
            b.send(b"x")
        reactor.doIteration(1)  # one poll, three readable sockets
        assert seen == [2, 1, 0] and turns.more == 0
    finally:
        for reader, (a, b) in zip(readers, pairs, strict=True):
            reactor.removeReader(reader)
            a.close()
            b.close()


def test_a_legacy_log_line_in_an_event_names_its_connection(reactor: Any, pair: Any) -> None:
    install(reactor)
    a, b = pair
    systems: list[str] = []
    reader = Reader(reactor, a, "Proto,7,127.0.0.1",
                    lambda: (log.msg("hello"), systems.append(
                        context.get(log.ILogContext)["system"]))[0] and None)
    reactor.addReader(reader)
    seen = _one_turn(reactor, b)
    assert systems == ["Proto,7,127.0.0.1"]
    assert [e["system"] for e in seen if e.get("message") == ("hello",)] == ["Proto,7,127.0.0.1"]
    assert context.get(log.ILogContext)["system"] == "-"  # popped after the event


def test_an_exception_escaping_an_event_is_logged_with_its_system(reactor: Any,
                                                                  pair: Any) -> None:
    install(reactor)
    a, b = pair
    reader = Reader(reactor, a, "Broken,1,127.0.0.1", lambda: None)
    reactor.addWriter(reader)  # a write event: Twisted's _doReadOrWrite handles it
    depth = len(context.theContextTracker.currentContext().contexts)

    def boom(selectable: Any, fd: int, event: int) -> None:
        raise RuntimeError("boom")

    install_handle(reactor, boom)
    seen = _one_turn(reactor, b)
    errors = [e for e in seen if e.get("isError")]
    assert len(errors) == 1 and errors[0]["system"] == "Broken,1,127.0.0.1"
    assert "boom" in str(errors[0]["failure"].value)
    assert len(context.theContextTracker.currentContext().contexts) == depth


def install_handle(reactor: Any, handle: Any) -> None:
    """Re-make the lean poll around another per-event handler (a test double)."""
    reactor._doReadOrWrite = handle
    reactor.doIteration = reactor_loop._lean_poll(reactor, reactor_loop.Hooks())


def test_a_failing_read_disconnects_as_twisted_does(reactor: Any, pair: Any) -> None:
    install(reactor)
    a, b = pair

    def fail() -> None:
        raise ValueError("bad bytes")

    reader = Reader(reactor, a, "R", fail)
    reactor.addReader(reader)
    seen = _one_turn(reactor, b)
    assert reader.lost is not None and reader.lost.check(ValueError)
    assert any(e.get("isError") and e["system"] == "R" for e in seen)


def test_an_interrupted_poll_returns_quietly(reactor: Any) -> None:
    install(reactor)

    class Interrupted:
        def poll(self, timeout: float, n: int) -> Any:
            raise OSError(errno.EINTR, os.strerror(errno.EINTR))

    real, reactor._poller = reactor._poller, Interrupted()
    try:
        reactor_loop._lean_poll(reactor, reactor_loop.Hooks())(0)
    finally:
        reactor._poller = real


def _run(reactor: Any, guard: float = 10.0) -> None:
    """Run ``reactor`` (lean loop installed) until it stops; ended from another thread
    after ``guard`` seconds (the loop's condition made false, the poll woken: nothing of
    the loop's own timer or thread-call handling) so a broken loop fails the test
    instead of hanging it."""
    assert install(reactor)
    finished = threading.Event()

    def guard_thread() -> None:
        if not finished.wait(guard):
            reactor._started = False
            reactor.wakeUp()

    threading.Thread(target=guard_thread, daemon=True).start()
    try:
        reactor.run(installSignalHandlers=False)
    finally:
        finished.set()


@contextmanager
def one_instant(reactor: Any) -> Iterator[float]:
    """The reactor's clock held at one instant (given) while a test places its timers:
    their order is then the one their delays say, however long the process is
    descheduled between two of its lines (a loaded machine)."""
    now = reactor.seconds()
    reactor.seconds = lambda: now
    try:
        yield now
    finally:
        del reactor.seconds


def test_the_lean_loop_runs_timers_thread_calls_and_stops(reactor: Any) -> None:
    """Only the orders the loop owes are asserted, not how independent events fell: on a
    loaded machine (1 run in ~25 at a load of 12) the loop started after several of the
    timers were due, and the thread's call or the moved timer came between two steps of
    the chain; the process descheduled between two lines of the set-up put the timer that
    cancels another after it (the timers are now placed from one instant)."""
    done: list[str] = []
    moved_at: list[float] = []

    def chain(n: int) -> None:
        ended(f"zero{n}")
        if n < 3:
            reactor.callLater(0, chain, n + 1)

    def ended(what: str) -> None:  # the loop stops once the chain, the last timer and
        done.append(what)          # the thread's call have all run, in whatever order
        if {"zero3", "last", "thread"} <= set(done):
            reactor.stop()

    with one_instant(reactor) as start:
        moved = reactor.callLater(0.01, lambda: (done.append("moved"),
                                                 moved_at.append(reactor.seconds())))
        moved.reset(0.05)  # later: Twisted re-queues it when its old time comes
        cancelled = reactor.callLater(0.02, done.append, "cancelled")
        reactor.callLater(0.005, cancelled.cancel)
        reactor.callLater(0, chain, 0)
        reactor.callLater(0.03, lambda: threading.Thread(
            target=reactor.callFromThread, args=(ended, "thread")).start())
        reactor.callLater(0.2, ended, "last")
    reactor.addSystemEventTrigger("before", "shutdown", done.append, "shutdown")
    seen, stop = _events()
    try:
        _run(reactor)
    finally:
        stop()
    assert [e for e in done if e.startswith("zero")] == ["zero0", "zero1", "zero2", "zero3"]
    others = [e for e in done if not e.startswith("zero")]
    assert sorted(others[:3]) == ["last", "moved", "thread"] and others[3:] == ["shutdown"]
    assert others.index("moved") < others.index("last")
    assert moved_at[0] >= start + 0.05  # at its new time, not its first
    assert any(e.get("log_format") == "Main loop terminated." for e in seen)


def test_a_timer_that_sleeps_through_its_time_is_not_waited_for(reactor: Any) -> None:
    times: list[float] = []
    started = time.monotonic()  # (before the timer is placed: never after its time)
    reactor.callLater(0.05, lambda: times.append(time.monotonic()))
    reactor.callLater(0.06, reactor.stop)
    _run(reactor)
    assert len(times) == 1 and 0.04 <= times[0] - started < 1.0


def test_failures_in_the_loop_are_logged_and_the_loop_goes_on(reactor: Any) -> None:
    done: list[str] = []

    def bad_timer() -> None:
        raise RuntimeError("timer broke")

    inner: list[Any] = []

    def bad_iteration(timeout: Any) -> None:
        reactor.doIteration = inner[0]  # once
        raise RuntimeError("iteration broke")

    def break_next_iteration() -> None:
        inner.append(reactor.doIteration)
        reactor.doIteration = bad_iteration

    reactor.callLater(0, bad_timer)
    reactor.callLater(0.01, break_next_iteration)
    reactor.callLater(0.05, done.append, "after")
    reactor.callLater(0.06, reactor.stop)
    seen, stop = _events()
    try:
        _run(reactor)
    finally:
        stop()
    assert done == ["after"]
    errors = [str(e["failure"].value) for e in seen if e.get("isError")]
    assert "timer broke" in errors and "iteration broke" in errors


# The fast branch for a read-only event -------------------------------------------------


@implementer(IHalfCloseableDescriptor)
class HalfCloseable(Reader):
    """A reader that is told of its peer's half-close (readConnectionLost)."""

    def readConnectionLost(self, reason: Any) -> None:
        self.lost = ("read", reason)


class Gone(Reader):
    """A reader whose descriptor went away (Twisted's historical fileno() == -1)."""

    read = False

    def fileno(self) -> int:
        return -1 if self.read else self.sock.fileno()

    def doRead(self) -> Any:
        raise AssertionError("not read: its descriptor is gone")


def _outcome(lean: bool, make: Any, on_read: Any) -> tuple[Any, ...]:
    """One readable event for a reader made by ``make`` (its doRead does ``on_read``) on a
    reactor with or without the lean poll: what the reader was told, the errors logged
    (system, exception type) and whether it is still read."""
    r = epollreactor.EPollReactor()
    a, b = socket.socketpair()
    a.setblocking(False)
    try:
        if lean:
            assert install(r)
        reader = make(r, a, "Case,3,127.0.0.1", on_read)
        r.addReader(reader)
        if isinstance(reader, Gone):
            reader.read = True
        seen = _one_turn(r, b)
        lost = reader.lost
        told = (lost[0], type(lost[1].value)) if isinstance(lost, tuple) else \
            (None if lost is None else ("lost", type(lost.value)))
        errors = [(e["system"], type(e["failure"].value)) for e in seen if e.get("isError")]
        return told, errors, reader in r.getReaders()
    finally:
        for reader in list(r._internalReaders):
            reader.connectionLost(None)
        r._poller.close()
        a.close()
        b.close()


def _raise() -> None:
    raise ValueError("bad bytes")


def _raise_done() -> None:
    raise error.ConnectionDone()


@pytest.mark.parametrize("make,on_read", [
    (Reader, lambda: None),
    (Reader, lambda: main.CONNECTION_DONE),
    (HalfCloseable, lambda: main.CONNECTION_DONE),
    (HalfCloseable, lambda: main.CONNECTION_LOST),
    (Reader, lambda: main.CONNECTION_LOST),
    (Reader, _raise),
    (HalfCloseable, _raise),
    (HalfCloseable, _raise_done),
    (Reader, lambda: error.ConnectionRefusedError()),
    (Gone, lambda: None),
], ids=["nothing", "done", "half-close", "half-lost", "lost", "raises", "half-raises",
        "half-raises-done", "other-reason", "fileno-gone"])
def test_a_read_event_ends_as_with_twisteds_own_handler(make: Any, on_read: Any) -> None:
    """The lean poll's branch for an event that is only a read stands in for
    _doReadOrWrite: every way a read can end (nothing, done, a half-close, lost, another
    reason, an exception, a descriptor gone) tells the reader the same, logs the same
    errors with the same system, and leaves it read or not, as Twisted's does."""
    twisted_way = _outcome(False, make, on_read)
    assert _outcome(True, make, on_read) == twisted_way
    if on_read is _raise:
        assert twisted_way[1] == [("Case,3,127.0.0.1", ValueError)]


def test_a_read_event_is_read_directly_and_other_events_by_twisteds_handler(
        reactor: Any, pair: Any) -> None:
    install(reactor)
    handled: list[int] = []
    real = reactor._doReadOrWrite

    def spy(selectable: Any, fd: int, event: int) -> None:
        handled.append(event)
        real(selectable, fd, event)

    install_handle(reactor, spy)
    a, b = pair
    reads: list[int] = []
    reader = Reader(reactor, a, "R", lambda: reads.append(1))
    reader.doWrite = lambda: reactor.removeWriter(reader)  # type: ignore[method-assign]
    reactor.addReader(reader)
    _one_turn(reactor, b)
    assert reads == [1] and handled == []  # EPOLLIN only: doRead straight away
    reactor.addWriter(reader)
    _one_turn(reactor, b)
    assert reads == [1, 1] and handled == [select.EPOLLIN | select.EPOLLOUT]
    reactor.removeReader(reader)
    b.close()  # the peer gone: a hang-up with nothing to read is Twisted's to handle
    reactor.addReader(reader)
    reactor.doIteration(1)
    assert len(handled) == 2 and handled[1] & select.EPOLLIN


def test_an_exception_escaping_a_read_events_disconnect_is_logged_with_its_system(
        reactor: Any, pair: Any) -> None:
    install(reactor)
    a, b = pair
    depth = len(context.theContextTracker.currentContext().contexts)

    class LoseBadly(Reader):
        def connectionLost(self, reason: Any) -> None:
            raise RuntimeError("connectionLost broke")

    reader = LoseBadly(reactor, a, "Bad,2,127.0.0.1", lambda: main.CONNECTION_LOST)
    reactor.addReader(reader)
    seen = _one_turn(reactor, b)
    errors = [(e["system"], str(e["failure"].value)) for e in seen if e.get("isError")]
    assert errors == [("Bad,2,127.0.0.1", "connectionLost broke")]
    assert len(context.theContextTracker.currentContext().contexts) == depth


def test_each_events_context_names_its_connection_when_frames_are_reused(
        reactor: Any, monkeypatch: Any) -> None:
    """The context frames kept per logPrefix: a connection's prefix that changes, more
    connections than are kept, and a prefix that is not a string all log their own."""
    monkeypatch.setattr(reactor_loop, "_FRAMES", 2)
    install(reactor)
    systems: list[Any] = []

    def note() -> None:
        systems.append(context.get(log.ILogContext)["system"])

    pairs = [socket.socketpair() for _ in range(3)]
    readers = [Reader(reactor, a, f"C,{n},127.0.0.1", note) for n, (a, _) in enumerate(pairs)]
    try:
        for reader, (a, _) in zip(readers, pairs, strict=True):
            a.setblocking(False)
            reactor.addReader(reader)
        poll = reactor.doIteration
        frames = dict(zip(poll.__code__.co_freevars, poll.__closure__, strict=True))["frames"]
        for _ in range(2):
            for n, (_, b) in enumerate(pairs):
                _one_turn(reactor, b)
                assert systems[-1] == f"C,{n},127.0.0.1"
                assert len(frames.cell_contents) <= 2  # the bound
        readers[0].prefix = "Upgraded,0,127.0.0.1"
        _one_turn(reactor, pairs[0][1])
        readers[1].prefix = ("not", ["hashable"])  # type: ignore[assignment]
        _one_turn(reactor, pairs[1][1])
        assert systems[-2:] == ["Upgraded,0,127.0.0.1", ("not", ["hashable"])]
        assert context.get(log.ILogContext)["system"] == "-"
    finally:
        for reader, (a, b) in zip(readers, pairs, strict=True):
            reactor.removeReader(reader)
            a.close()
            b.close()


def test_the_poll_counts_each_tick_in_its_bucket_as_observe_does(
        reactor: Any, monkeypatch: Any) -> None:
    """The tick histogram counted in place by the poll: each tick (from the end of one
    poll to the start of the next) in the bucket TickCounts.observe (and the metric's
    PlainHistogram) puts it in, a tick of exactly a bound in that bound's bucket."""
    from studios_gateway.plain_metrics import PlainHistogram

    bounds = (0.001, 0.01, 0.1)
    hist = PlainHistogram("t", "t", bounds)
    expected = reactor_loop.TickCounts(bounds, [0] * 4)
    install(reactor)
    hooks = reactor_loop.hooks_of(reactor)
    assert hooks is not None
    hooks.ticks = reactor_loop.TickCounts(bounds, [0] * 4)
    clock: list[float] = []
    monkeypatch.setattr(reactor_loop, "perf_counter", lambda: clock.pop(0))
    hooks.started = 0.0
    for spent in (0.0005, 0.001, 0.05, 0.1, 3.0):
        clock[:] = [spent, 0.0]  # the poll starts ``spent`` after the last one ended
        reactor.doIteration(0)
        assert clock == []
        expected.observe(spent)
        hist.observe((), spent)
    assert hooks.ticks.counts == expected.counts == hist.counts[()] == [2, 0, 2, 1]
    assert hooks.ticks.total == pytest.approx(3.1515) == hist.sums[()]


def test_the_polls_timeout_is_the_next_timers_time_within_epolls_range(reactor: Any) -> None:
    """The lean loop's timeout: the earliest timed call's time from now, at most epoll's
    longest (a far timer)."""
    far = reactor.callLater(10**10, lambda: None)
    timeouts: list[Any] = []
    near: list[Any] = []

    def run_iterations() -> None:
        inner = reactor.doIteration

        def spy(timeout: Any) -> None:
            timeouts.append(timeout)
            if len(timeouts) == 1:
                near.append(reactor.callLater(30, lambda: None))  # for the next poll
            elif len(timeouts) == 2:
                reactor.stop()
            inner(0)

        reactor.doIteration = spy

    reactor.callWhenRunning(run_iterations)
    _run(reactor)
    assert timeouts[0] == reactor_loop._LONGEST and 29 < timeouts[1] <= 30
    far.cancel()
    near[0].cancel()
