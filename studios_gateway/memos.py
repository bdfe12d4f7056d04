"""Making room in a bounded memory (a dict kept in insertion order) before an insert."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

__all__ = ["make_room"]

K = TypeVar("K")
V = TypeVar("V")


def make_room(memo: dict[K, V], limit: int, over: Callable[[V], bool]) -> None:
    """Drop `memo`'s oldest entries while there are `limit` or more, or while the oldest
    is `over` (its time has passed): what a client never asks for again goes within the
    inserts after its time, not only once `limit` newer ones have pushed it out. Entries
    whose times are not in insertion order go when they are the oldest."""
    while memo:
        oldest = next(iter(memo))
        if len(memo) < limit and not over(memo[oldest]):
            return
        del memo[oldest]
