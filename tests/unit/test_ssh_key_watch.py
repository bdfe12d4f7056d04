"""KeyWatch: live SSH connections end when their key is removed, and only then."""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial import unittest

from studios_gateway.registry.memory import MemoryStore
from studios_gateway.ssh.key_watch import KeyWatch
from studios_gateway.ssh.keys import KeysUnavailable
from tests.support.stores import FlakyStore

# Key blobs as SSH encodes them (a length first), so the lines pass the registry's checks.
A, B, C = b"\x00\x00\x00\x06blob-a", b"\x00\x00\x00\x06blob-b", b"\x00\x00\x00\x06blob-c"


def line(blob: bytes) -> str:
    return "ssh-ed25519 " + base64.b64encode(blob).decode() + " comment"


def set_keys(store: FlakyStore, user: str, blobs: list[bytes]) -> None:
    """The user's keys change, and every node hears of it."""
    assert unittest.TestCase().successResultOf(
        store.set_user_keys(user, [line(b) for b in blobs])) is None


def quietly(store: FlakyStore, **keys: list[bytes]) -> None:
    """Keys change, and no node hears of it (a lost event)."""
    store.deaf = True
    for user, blobs in keys.items():
        set_keys(store, user, blobs)
    store.deaf = False


class FakePlatform:
    def __init__(self) -> None:
        self.keys_of: dict[str, frozenset[bytes]] = {}
        self.down = False
        self.max_ages: list[float | None] = []

    def keys(self, user: str, *, max_age: float | None = None) -> defer.Deferred[Any]:
        self.max_ages.append(max_age)
        if self.down:
            return defer.fail(KeysUnavailable("the Platform answered HTTP 503"))
        return defer.succeed(self.keys_of.get(user, frozenset()))


def watch(platform: Any = None) -> tuple[KeyWatch, FlakyStore, Clock, dict[str, list[str]]]:
    clock = Clock()
    store = FlakyStore(MemoryStore(clock), reason="redis is down")
    w = KeyWatch(store, platform, clock=clock, ttl=10.0)
    w.start()
    closed: dict[str, list[str]] = {}
    return w, store, clock, closed


def conn(w: KeyWatch, closed: dict[str, list[str]], name: str, user: str,
         blob: bytes) -> Callable[[], None]:
    return w.track(user, blob, lambda why: closed.setdefault(name, []).append(why))


def test_removing_a_key_closes_only_its_connections_at_once() -> None:
    w, store, _, closed = watch()
    quietly(store, alice=[A, B], bob=[A])
    conn(w, closed, "alice-a", "alice", A)
    conn(w, closed, "alice-b", "alice", B)
    conn(w, closed, "bob-a", "bob", A)
    set_keys(store, "alice", [B])
    assert list(closed) == ["alice-a"]
    assert "your SSH key was removed" in closed["alice-a"][0]
    assert w.live_count == 2
    set_keys(store, "alice", [B])  # a later event does not close it twice
    assert len(closed["alice-a"]) == 1


def test_untracked_connection_is_left_alone() -> None:
    w, store, _, closed = watch()
    quietly(store, alice=[A])
    untrack = conn(w, closed, "a", "alice", A)
    untrack()
    set_keys(store, "alice", [])
    assert closed == {} and w.live_count == 0


def test_a_key_the_platform_still_lists_keeps_the_connection() -> None:
    platform = FakePlatform()
    w, store, clock, closed = watch(platform)
    quietly(store, alice=[A])
    platform.keys_of = {"alice": frozenset({B})}
    conn(w, closed, "a", "alice", A)
    conn(w, closed, "b", "alice", B)
    set_keys(store, "alice", [])
    assert list(closed) == ["a"]
    # The Platform drops B: the sweep (every half TTL, answers at most that old) notices.
    platform.keys_of = {"alice": frozenset()}
    clock.advance(5.0)
    assert list(closed) == ["a", "b"]
    assert platform.max_ages[-1] == 5.0


def test_when_a_source_cannot_answer_the_connection_is_kept() -> None:
    platform = FakePlatform()
    w, store, clock, closed = watch(platform)
    quietly(store, alice=[A])
    conn(w, closed, "a", "alice", A)
    platform.down = True
    set_keys(store, "alice", [])
    assert closed == {}
    store.up = False
    platform.down = False
    clock.advance(5.0)
    assert closed == {}
    store.up = True
    clock.advance(5.0)
    assert list(closed) == ["a"]


def test_events_may_have_been_missed_rechecks_everyone() -> None:
    w, store, _, closed = watch()
    quietly(store, alice=[A], bob=[B])
    conn(w, closed, "a", "alice", A)
    conn(w, closed, "b", "bob", B)
    quietly(store, alice=[], bob=[B])
    store.announce("subscribe_user_keys", None)
    assert list(closed) == ["a"]


def test_stop_unsubscribes_and_stops_the_sweep() -> None:
    w, store, clock, closed = watch()
    quietly(store, alice=[A])
    conn(w, closed, "a", "alice", A)
    w.stop()
    assert store.subscribers("subscribe_user_keys") == 0
    quietly(store, alice=[])
    clock.advance(20.0)
    assert closed == {}
