"""The frame scheduler: interactive streams first, bulk ones round-robin."""

from __future__ import annotations

from studios_gateway.wire.schedule import FrameScheduler


def drain(s: FrameScheduler[str], requeue: dict[str, int]) -> list[str]:
    """Take turns until empty; an item in `requeue` comes back that many more times."""
    out = []
    while (item := s.next()) is not None:
        out.append(item)
        if requeue.get(item, 0) > 0:
            requeue[item] -= 1
            s.ready(item, 64 * 1024)
    return out


def test_bulk_items_take_turns_whatever_order_they_came_in() -> None:
    s: FrameScheduler[str] = FrameScheduler(small=100)
    for name in ("a", "b", "c"):
        s.ready(name, 1000)
    assert drain(s, {"a": 2, "b": 2, "c": 2}) == ["a", "b", "c"] * 3


def test_small_writes_go_before_bulk_and_in_arrival_order() -> None:
    s: FrameScheduler[str] = FrameScheduler(small=100)
    s.ready("bulk", 1000)
    s.ready("key1", 1)
    s.ready("key2", 100)
    assert drain(s, {}) == ["key1", "key2", "bulk"]


def test_an_item_is_queued_once_until_its_turn() -> None:
    s: FrameScheduler[str] = FrameScheduler(small=100)
    s.ready("a", 1000)
    s.ready("a", 1)
    assert len(s) == 1 and s.next() == "a" and s.next() is None
    s.ready("a", 5)
    s.clear()
    assert len(s) == 0 and not s.queued and s.next() is None
