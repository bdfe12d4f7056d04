"""within(): a deadline that lets the reactor read what already arrived before it fails."""

from __future__ import annotations

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from studios_gateway.deadline import within


class ReactorClock(Clock):
    """A Clock that, like the reactor's runUntilCurrent, runs only the calls due when an
    iteration starts: one scheduled meanwhile waits for the next (after that poll)."""

    def advance(self, amount: float) -> None:
        self.rightNow += amount
        for call in [c for c in self.calls if c.getTime() <= self.seconds()]:
            self.calls.remove(call)
            call.called = 1
            call.func(*call.args, **call.kw)


def test_an_answer_read_in_the_poll_after_a_stall_still_counts() -> None:
    clock = ReactorClock()
    d: Deferred[str] = Deferred()
    got: list[object] = []
    within(d, 2.0, clock).addBoth(got.append)
    clock.advance(5)  # the process stalled past the deadline; the timer runs first
    assert got == []
    d.callback("PONG")  # the reply that waited in the socket, read in the next poll
    clock.advance(0)
    assert got == ["PONG"] and not clock.getDelayedCalls()


def test_no_answer_by_the_poll_after_the_deadline_is_a_timeout() -> None:
    clock = ReactorClock()
    cancelled: list[bool] = []
    d: Deferred[str] = Deferred(lambda _: cancelled.append(True))
    got: list[object] = []
    within(d, 2.0, clock).addBoth(got.append)
    clock.advance(1.9)
    assert got == []
    clock.advance(0.1)
    assert got == []  # one more poll first
    clock.advance(0)
    assert cancelled == [True]
    assert len(got) == 1 and got[0].check(defer.TimeoutError)  # type: ignore[attr-defined]


def test_an_answer_in_time_leaves_no_timer_and_failures_pass_through() -> None:
    clock = ReactorClock()
    d: Deferred[str] = Deferred()
    got: list[object] = []
    within(d, 2.0, clock).addBoth(got.append)
    d.callback("ok")
    assert got == ["ok"] and not clock.getDelayedCalls()
    e: Deferred[str] = Deferred()
    within(e, 2.0, clock).addErrback(lambda f: got.append(f.value))
    e.errback(ConnectionError("lost"))
    assert isinstance(got[-1], ConnectionError) and not clock.getDelayedCalls()


def test_a_source_still_sending_puts_the_deadline_off_until_it_falls_silent() -> None:
    clock = ReactorClock()
    heard = [0.0]
    cancelled: list[bool] = []
    d: Deferred[str] = Deferred(lambda _: cancelled.append(True))
    got: list[object] = []
    within(d, 2.0, clock, heard=lambda: heard[0]).addBoth(got.append)
    for _ in range(3):  # replies to earlier commands keep coming: 1.5 s after the call...
        clock.advance(1.5)
        heard[0] = clock.seconds()
    clock.advance(0.5)
    clock.advance(0)
    assert got == [] and not cancelled  # ...so 5 s in, it still waits
    d.callback("OK")  # the answer, behind the others
    assert got == ["OK"] and not clock.getDelayedCalls()

    e: Deferred[str] = Deferred(lambda _: cancelled.append(True))
    within(e, 2.0, clock, heard=lambda: heard[0]).addBoth(got.append)
    heard[0] = clock.seconds() + 1  # one more reply, then silence
    clock.advance(2)
    clock.advance(0)
    assert got[1:] == []  # heard 1 s ago: put off to 2 s after that
    clock.advance(0.9)
    assert got[1:] == []
    clock.advance(0.1)
    clock.advance(0)
    assert cancelled == [True]
    assert got[1].check(defer.TimeoutError)  # type: ignore[attr-defined]
    assert got[1].value.args[0] == 3.0  # type: ignore[attr-defined]


def test_a_source_that_never_falls_silent_fails_at_the_longest_wait() -> None:
    clock = ReactorClock()
    heard = [0.0]
    d: Deferred[str] = Deferred()
    got: list[object] = []
    within(d, 2.0, clock, heard=lambda: heard[0]).addBoth(got.append)
    while not got:
        clock.advance(0.5)
        heard[0] = clock.seconds()
        assert clock.seconds() <= 10.5
    assert got[0].check(defer.TimeoutError)  # type: ignore[attr-defined]
    assert 10.0 <= got[0].value.args[0] <= 10.5  # 5 x 2 s, then the poll after it  # type: ignore[attr-defined]
    assert not clock.getDelayedCalls()


def test_heard_before_the_call_and_not_since_is_silence() -> None:
    clock = ReactorClock()
    clock.advance(10)
    d: Deferred[str] = Deferred()
    got: list[object] = []
    within(d, 2.0, clock, heard=lambda: 9.5).addBoth(got.append)
    clock.advance(2)
    clock.advance(0)
    assert got[0].check(defer.TimeoutError)  # type: ignore[attr-defined]
