"""The proxy's re-armable timer on a fake clock."""

from __future__ import annotations

from twisted.internet.task import Clock

from studios_gateway.http.deadline import Deadline


def test_fires_once_at_the_last_armed_time_with_its_arguments() -> None:
    clock, fired = Clock(), []
    d = Deadline(clock)
    d.arm(10, fired.append, "a")
    clock.advance(5)
    d.arm(10, fired.append, "b")  # later: the same call, moved
    assert len(clock.getDelayedCalls()) == 1
    clock.advance(9)
    assert fired == []
    clock.advance(1)
    assert fired == ["b"] and not d.armed and clock.getDelayedCalls() == []


def test_sooner_replaces_the_call() -> None:
    clock, fired = Clock(), []
    d = Deadline(clock)
    d.arm(75, fired.append, "idle")
    d.arm(30, fired.append, "head")
    assert len(clock.getDelayedCalls()) == 1
    clock.advance(30)
    assert fired == ["head"]
    clock.advance(100)
    assert fired == ["head"]


def test_disarmed_fires_into_nothing_and_can_be_armed_again() -> None:
    clock, fired = Clock(), []
    d = Deadline(clock)
    d.arm(10, fired.append, 1)
    d.disarm()
    clock.advance(10)
    assert fired == []
    d.arm(10, fired.append, 2)
    clock.advance(10)
    assert fired == [2]


def test_stop_cancels() -> None:
    clock, fired = Clock(), []
    d = Deadline(clock)
    d.arm(10, fired.append, 1)
    d.stop()
    assert clock.getDelayedCalls() == [] and not d.armed
    clock.advance(20)
    assert fired == []


def test_arming_later_moves_no_call_until_the_old_time_comes() -> None:
    clock, fired = Clock(), []
    d = Deadline(clock)
    d.arm(10, fired.append, "a")
    (call,) = clock.getDelayedCalls()
    for _ in range(5):  # a request every second, each moving the idle timeout on
        clock.advance(1)
        d.arm(10, fired.append, "a")
    assert clock.getDelayedCalls() == [call] and call.getTime() == 10
    clock.advance(5)  # the old time (10): the call sees it is early, waits for 15
    assert fired == [] and clock.getDelayedCalls()[0].getTime() == 15
    clock.advance(5)
    assert fired == ["a"]
