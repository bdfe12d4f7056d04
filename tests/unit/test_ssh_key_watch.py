"""KeyWatch: live SSH connections end when their key is removed, and only then."""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.task import Clock

from studios_gateway.registry.base import StoreUnavailable
from studios_gateway.ssh.key_watch import KeyWatch
from studios_gateway.ssh.keys import KeysUnavailable

A, B, C = b"blob-a", b"blob-b", b"blob-c"


def line(blob: bytes) -> str:
    return "ssh-ed25519 " + base64.b64encode(blob).decode() + " comment"


class FakeStore:
    def __init__(self) -> None:
        self.keys: dict[str, list[bytes]] = {}
        self.down = False
        self.listeners: list[Callable[[str | None], Any]] = []

    def get_user_keys(self, user: str) -> defer.Deferred[list[str]]:
        if self.down:
            return defer.fail(StoreUnavailable("redis is down"))
        return defer.succeed([line(b) for b in self.keys.get(user, [])])

    def subscribe_user_keys(self, cb: Callable[[str | None], Any]) -> Callable[[], None]:
        self.listeners.append(cb)
        return lambda: self.listeners.remove(cb)

    def change(self, user: str, blobs: list[bytes]) -> None:
        self.keys[user] = blobs
        for cb in list(self.listeners):
            cb(user)


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


def watch(platform: Any = None) -> tuple[KeyWatch, FakeStore, Clock, dict[str, list[str]]]:
    store, clock = FakeStore(), Clock()
    w = KeyWatch(store, platform, clock=clock, ttl=10.0)
    w.start()
    closed: dict[str, list[str]] = {}
    return w, store, clock, closed


def conn(w: KeyWatch, closed: dict[str, list[str]], name: str, user: str,
         blob: bytes) -> Callable[[], None]:
    return w.track(user, blob, lambda why: closed.setdefault(name, []).append(why))


def test_removing_a_key_closes_only_its_connections_at_once() -> None:
    w, store, _, closed = watch()
    store.keys = {"alice": [A, B], "bob": [A]}
    conn(w, closed, "alice-a", "alice", A)
    conn(w, closed, "alice-b", "alice", B)
    conn(w, closed, "bob-a", "bob", A)
    store.change("alice", [B])
    assert list(closed) == ["alice-a"]
    assert "your SSH key was removed" in closed["alice-a"][0]
    assert w.live_count == 2
    store.change("alice", [B])  # a later event does not close it twice
    assert len(closed["alice-a"]) == 1


def test_untracked_connection_is_left_alone() -> None:
    w, store, _, closed = watch()
    store.keys = {"alice": [A]}
    untrack = conn(w, closed, "a", "alice", A)
    untrack()
    store.change("alice", [])
    assert closed == {} and w.live_count == 0


def test_a_key_the_platform_still_lists_keeps_the_connection() -> None:
    platform = FakePlatform()
    w, store, clock, closed = watch(platform)
    store.keys = {"alice": [A]}
    platform.keys_of = {"alice": frozenset({B})}
    conn(w, closed, "a", "alice", A)
    conn(w, closed, "b", "alice", B)
    store.change("alice", [])
    assert list(closed) == ["a"]
    # The Platform drops B: the sweep (every half TTL, answers at most that old) notices.
    platform.keys_of = {"alice": frozenset()}
    clock.advance(5.0)
    assert list(closed) == ["a", "b"]
    assert platform.max_ages[-1] == 5.0


def test_when_a_source_cannot_answer_the_connection_is_kept() -> None:
    platform = FakePlatform()
    w, store, clock, closed = watch(platform)
    store.keys = {"alice": [A]}
    conn(w, closed, "a", "alice", A)
    platform.down = True
    store.change("alice", [])
    assert closed == {}
    store.down = True
    platform.down = False
    clock.advance(5.0)
    assert closed == {}
    store.down = False
    clock.advance(5.0)
    assert list(closed) == ["a"]


def test_events_may_have_been_missed_rechecks_everyone() -> None:
    w, store, _, closed = watch()
    store.keys = {"alice": [A], "bob": [B]}
    conn(w, closed, "a", "alice", A)
    conn(w, closed, "b", "bob", B)
    store.keys = {"alice": [], "bob": [B]}
    for cb in store.listeners:
        cb(None)
    assert list(closed) == ["a"]


def test_stop_unsubscribes_and_stops_the_sweep() -> None:
    w, store, clock, closed = watch()
    store.keys = {"alice": [A]}
    conn(w, closed, "a", "alice", A)
    w.stop()
    assert store.listeners == []
    store.keys = {}
    clock.advance(20.0)
    assert closed == {}
