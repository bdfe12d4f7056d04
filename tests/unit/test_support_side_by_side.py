"""tests/support/side_by_side.py: set-ups entered at once, and every one left whatever failed."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from tests.support.side_by_side import side_by_side


class Made:
    """Context managers that record their entries and exits; `meet` makes each entry wait
    for the others' (a start that only one thread at a time ran would never pass it)."""

    def __init__(self, meet: int = 1) -> None:
        self.barrier = threading.Barrier(meet, timeout=10)
        self.left: list[str] = []

    @contextmanager
    def one(self, name: str, fail_start: bool = False, fail_stop: bool = False
            ) -> Iterator[str]:
        self.barrier.wait()
        if fail_start:
            raise RuntimeError(f"{name} did not start")
        try:
            yield name.upper()
        finally:
            self.left.append(name)
            if fail_stop:
                raise RuntimeError(f"{name} did not stop")


def test_every_one_is_entered_at_once_and_left_at_the_end() -> None:
    made = Made(meet=2)
    with side_by_side({"a": lambda: made.one("a"), "b": lambda: made.one("b")}) as got:
        assert got == {"a": "A", "b": "B"}
        assert made.left == []
    assert sorted(made.left) == ["a", "b"]


def test_a_start_that_fails_is_raised_and_the_others_are_left() -> None:
    made = Made(meet=2)
    with pytest.raises(RuntimeError, match="b did not start"), \
            side_by_side({"a": lambda: made.one("a"), "b": lambda: made.one("b", fail_start=True)}):
        raise AssertionError("not reached")
    assert made.left == ["a"]


def test_a_stop_that_fails_is_raised_once_the_others_are_left() -> None:
    made = Made()
    with pytest.raises(RuntimeError, match="a did not stop"), \
            side_by_side({"a": lambda: made.one("a", fail_stop=True),
                          "b": lambda: made.one("b")}):
        pass
    assert sorted(made.left) == ["a", "b"]


def test_the_tests_own_failure_is_the_one_raised() -> None:
    made = Made()
    with pytest.raises(ValueError, match="the test's"), \
            side_by_side({"a": lambda: made.one("a", fail_stop=True)}):
        raise ValueError("the test's")
    assert made.left == ["a"]
