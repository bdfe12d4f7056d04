"""auth/onetime.py: single use, expiry and the bounds (entries, bytes), on a Clock."""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock

from studios_gateway.auth.onetime import OneTimeTable


def test_one_time_table() -> None:
    clock = Clock()
    t: OneTimeTable[int] = OneTimeTable(clock, ttl=10, max_entries=2)
    a = t.put(1)
    assert t.take(a) == 1 and t.take(a) is None
    b, c, d = t.put(2), t.put(3), t.put(4)
    assert t.take(b) is None and len(t) == 2  # the oldest was evicted
    clock.advance(10)
    assert t.take(c) is None and t.take(d) is None
    assert t.take("") is None


def test_the_bytes_bound_evicts_the_oldest_and_says_which() -> None:
    clock = Clock()
    evicted: list[list[str]] = []
    t: OneTimeTable[str] = OneTimeTable(clock, ttl=10, max_bytes=100,
                                        on_evict=evicted.append)
    t.put("a", "a", size=40)
    clock.advance(1)
    t.put("b", "b", size=40)
    assert t.kept_bytes == 80 and evicted == []
    t.put("c", "c", size=90)  # over by 50: both older ones go, in one call
    assert evicted == [["a", "b"]] and t.kept_bytes == 90
    assert "a" not in t and "b" not in t and t.take("c") == "c"
    assert t.kept_bytes == 0  # a taken entry's bytes are freed


def test_expired_entries_free_their_bytes_and_are_not_called_evicted() -> None:
    clock = Clock()
    evicted: list[list[str]] = []
    t: OneTimeTable[None] = OneTimeTable(clock, ttl=10, max_bytes=100,
                                         on_evict=evicted.append)
    t.put(None, "old", size=60)
    clock.advance(10)
    assert t.kept_bytes == 0
    t.put(None, "new", size=60)
    assert evicted == [] and t.kept_bytes == 60 and len(t) == 1


def test_the_entries_bound_reports_its_evictions_too() -> None:
    evicted: list[list[str]] = []
    t: OneTimeTable[int] = OneTimeTable(Clock(), ttl=10, max_entries=2,
                                        on_evict=evicted.append)
    keys = [t.put(i) for i in range(3)]
    assert evicted == [keys[:1]] and len(t) == 2


def test_a_key_put_again_counts_once() -> None:
    t: OneTimeTable[int] = OneTimeTable(Clock(), ttl=10, max_bytes=100)
    t.put(1, "k", size=70)
    t.put(2, "k", size=70)  # replaces: not 140 bytes, nothing evicted
    assert t.kept_bytes == 70 and t.take("k") == 2


def test_an_entry_over_the_bytes_bound_is_refused_and_changes_nothing() -> None:
    evicted: list[list[str]] = []
    t: OneTimeTable[int] = OneTimeTable(Clock(), ttl=10, max_bytes=100,
                                        on_evict=evicted.append)
    t.put(1, "kept", size=50)
    with pytest.raises(ValueError, match=r"^an entry of 101 bytes is over the table's "
                                         r"bound of 100 bytes$"):
        t.put(2, size=101)
    assert evicted == [] and t.kept_bytes == 50 and t.take("kept") == 1


def test_bounds_must_be_positive() -> None:
    message = "^ttl, max_entries and max_bytes must be positive$"
    for refused in (lambda: OneTimeTable(Clock(), ttl=0),
                    lambda: OneTimeTable(Clock(), ttl=10, max_entries=0),
                    lambda: OneTimeTable(Clock(), ttl=10, max_bytes=0)):
        with pytest.raises(ValueError, match=message):
            refused()
