"""A modelled long path for unit tests of flow control: what is put in comes out a
fixed number of ticks later (a one-way delay), and the steady rate of what arrived."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from typing import Generic, TypeVar

__all__ = ["DelayLine", "per_round_trip"]

T = TypeVar("T")


class DelayLine(Generic[T]):
    """One direction of a path: an item put in at tick ``now`` is due at ``now + delay``."""

    def __init__(self, delay: int):
        self.delay = delay
        self._items: deque[tuple[int, T]] = deque()

    def put(self, now: int, item: T) -> None:
        self._items.append((now + self.delay, item))

    def due(self, now: int) -> Iterator[T]:
        """The items whose time has come, oldest first (taken out as they are read)."""
        items = self._items
        while items and items[0][0] <= now:
            yield items.popleft()[1]


def per_round_trip(got: list[int], delay: int, window: int) -> float:
    """``got[t]``: bytes delivered by tick t. Bytes per round trip (two delays) over the
    second half of the ticks (the steady state), in windows."""
    half = len(got) // 2
    return (got[-1] - got[half]) / (len(got) - 1 - half) * 2 * delay / window
