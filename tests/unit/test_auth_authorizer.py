"""The authorizer: owner, allow-list, Platform, workspaces, caching, revocation."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial import unittest

from studios_gateway.auth.authorizer import Authorizer, PlatformUnavailable, Revocation
from studios_gateway.config_loading import load_config
from studios_gateway.registry.base import SessionRecord
from studios_gateway.registry.memory import MemoryStore
from tests.support.stores import FlakyStore


def record(sid: str = "abc", owner: str = "alice", users: tuple[str, ...] = ("bob",),
           workspace: str | None = "12345") -> SessionRecord:
    return SessionRecord(id=sid, workspace_id=workspace, tool="jupyter", owner=owner,
                         allowed_users=users, ssh_enabled=False, token_hash="sha256:x",
                         created_at=0.0)


def store_with(*records: SessionRecord) -> FlakyStore:
    """The shared store fake (the real MemoryStore that can go away) holding `records`."""
    store = FlakyStore(MemoryStore(Clock()), reason="redis is down")
    for r in records:
        assert unittest.TestCase().successResultOf(store.inner.create(r)) is None
    return store


def change(store: FlakyStore, rec: SessionRecord, *, heard: bool = True) -> None:
    """Another node changes a session; every node hears of it unless `heard` is False."""
    store.deaf = not heard
    assert unittest.TestCase().successResultOf(store.update(rec)) is None
    store.deaf = False


class FakePlatform:
    def __init__(self) -> None:
        self.answers: dict[tuple[str, str], bool] = {}
        self.calls = 0
        self.fail = False
        self.pending: defer.Deferred[bool] | None = None

    def check(self, sid: str, user: str) -> defer.Deferred[bool]:
        self.calls += 1
        if self.pending is not None:
            return self.pending
        if self.fail:
            return defer.fail(PlatformUnavailable("the Platform's access call failed"))
        return defer.succeed(self.answers.get((sid, user), False))


def decide(a: Authorizer, sid: str, user: str) -> Any:
    out: list[Any] = []
    a.check(sid, user).addCallback(out.append)
    assert out, "the decision did not fire"
    return out[0]


def make(store: FlakyStore, *, workspaces: str | None = None, platform: Any = None,
         ttl: float = 120.0) -> tuple[Authorizer, Clock]:
    env = {} if workspaces is None else {"TOWER_DATA_STUDIO_ALLOWED_WORKSPACES": workspaces}
    config = load_config(environ=env)
    clock = Clock()
    a = Authorizer(store, clock=clock, ttl=ttl, workspace_allowed=config.workspace_allowed,
                   platform=platform)
    return a, clock


def test_owner_allow_list_and_others():
    a, _ = make(store_with(record()))
    assert decide(a, "abc", "alice").reason == "owner"
    assert decide(a, "abc", "bob").reason == "allow-list"
    no = decide(a, "abc", "mallory")
    assert (no.allowed, no.status) == (False, 403)
    missing = decide(a, "nope", "alice")
    assert (missing.allowed, missing.status) == (False, 404)


@pytest.mark.parametrize(("workspaces", "inside", "outside", "none_ws"), [
    (None, True, True, True),     # unset: every workspace
    ("", False, False, False),    # empty: none
    ("12345,67890", True, False, False),  # a list: only those
])
def test_workspace_allow_list(workspaces, inside, outside, none_ws):
    store = store_with(record("in", workspace="12345"), record("out", workspace="99999"),
                      record("nows", workspace=None))
    a, _ = make(store, workspaces=workspaces)
    assert decide(a, "in", "alice").allowed is inside
    assert decide(a, "out", "alice").allowed is outside
    assert decide(a, "nows", "alice").allowed is none_ws
    if not outside:
        d = decide(a, "out", "alice")
        assert d.status == 403 and "workspace" in d.reason


def test_platform_says_yes_or_no_and_errors_deny():
    platform = FakePlatform()
    platform.answers[("abc", "carol")] = True
    a, clock = make(store_with(record()), platform=platform)
    assert decide(a, "abc", "carol").reason == "platform"
    assert decide(a, "abc", "dave").allowed is False
    assert decide(a, "abc", "alice").reason == "owner"
    assert platform.calls == 2  # owner needs no call
    platform.fail = True
    clock.advance(121)
    err = decide(a, "abc", "carol")
    assert (err.allowed, err.status) == (False, 503)
    platform.fail = False
    clock.advance(5)  # errors are not trusted long
    assert decide(a, "abc", "carol").allowed is True


def test_store_unavailable_denies_with_503():
    store = store_with(record())
    store.up = False
    a, _ = make(store)
    d = decide(a, "abc", "alice")
    assert (d.allowed, d.status) == (False, 503)


def test_decisions_cached_for_the_ttl():
    store = store_with(record())
    a, clock = make(store, ttl=120)
    decide(a, "abc", "alice")
    clock.advance(119)
    decide(a, "abc", "alice")
    assert store.calls["get"] == 1
    clock.advance(1)
    decide(a, "abc", "alice")
    assert store.calls["get"] == 2


def test_concurrent_checks_share_one_lookup():
    platform = FakePlatform()
    platform.pending = defer.Deferred()
    a, _ = make(store_with(record()), platform=platform)
    got: list[Any] = []
    a.check("abc", "carol").addCallback(got.append)
    a.check("abc", "carol").addCallback(got.append)
    assert platform.calls == 1 and got == []
    platform.pending.callback(True)
    assert [d.allowed for d in got] == [True, True]


def test_revoke_user_notifies_and_closes_tracked():
    store = store_with(record())
    a, _ = make(store)
    seen: list[Revocation] = []
    a.subscribe(seen.append)
    closed: list[str] = []
    decide(a, "abc", "bob")
    a.track("abc", "bob", closed.append, login_id="l1")
    a.track("abc", "alice", closed.append, login_id="l2")
    change(store, record(users=()), heard=False)  # taken off the allow-list, unheard
    a.revoke_user("abc", "bob")
    assert seen == [Revocation("user", session_id="abc", user="bob")]
    assert closed == ["no longer allowed on session abc"] and a.live_count == 1
    assert decide(a, "abc", "bob").allowed is False  # the cache was dropped


def test_logout_closes_that_login_only():
    a, _ = make(store_with(record()))
    closed: list[str] = []
    a.track("abc", "alice", lambda r: closed.append("l1"), login_id="l1")
    a.track("abc", "alice", lambda r: closed.append("l2"), login_id="l2")
    a.logout("l1")
    assert closed == ["l1"]
    assert a.is_logged_out("l1") and not a.is_logged_out("l2")


def test_logged_out_forgotten_after_login_ttl():
    a, clock = make(store_with(record()))
    a.logout("l1")
    clock.advance(12 * 3600)
    assert not a.is_logged_out("l1")


def test_session_ended_closes_everything_on_it():
    a, _ = make(store_with(record(), record("xyz")))
    closed: list[str] = []
    a.track("abc", "alice", lambda r: closed.append("abc"))
    a.track("xyz", "alice", lambda r: closed.append("xyz"))
    a.session_ended("abc")
    assert closed == ["abc"]


def test_untrack():
    a, _ = make(store_with(record()))
    closed: list[str] = []
    untrack = a.track("abc", "alice", closed.append)
    untrack()
    a.session_ended("abc")
    assert closed == [] and a.live_count == 0


def test_registry_change_rechecks_live_connections():
    store = store_with(record())
    a, _ = make(store)
    a.start()
    closed: list[str] = []
    decide(a, "abc", "bob")
    a.track("abc", "bob", closed.append)
    a.track("abc", "alice", closed.append)
    change(store, record(users=()))  # another node took bob off the allow-list
    assert closed == ["no longer allowed on session abc"]  # as on the node that did it
    a.stop()


def test_periodic_sweep_closes_within_the_ttl():
    platform = FakePlatform()
    platform.answers[("abc", "carol")] = True
    a, clock = make(store_with(record()), platform=platform, ttl=60)
    a.start()
    closed: list[str] = []
    clock.advance(1)  # out of step with the sweep: the decision is cached until 61
    assert decide(a, "abc", "carol").allowed
    a.track("abc", "carol", closed.append)
    platform.answers[("abc", "carol")] = False  # the Platform changed its mind
    clock.advance(29)
    assert closed == [] and platform.calls == 1  # a sweep that trusts a fresh decision
    clock.advance(30)  # the sweep at 60 asks again: within the TTL of the decision
    assert len(closed) == 1 and platform.calls == 2
    a.stop()


def test_sweep_keeps_connections_when_the_store_is_down():
    store = store_with(record())
    a, clock = make(store, ttl=60)
    a.start()
    closed: list[str] = []
    a.track("abc", "alice", closed.append)
    store.up = False
    clock.advance(60)
    assert closed == []  # degrade: never cut people off because Redis blinked
    a.stop()


def test_revocation_during_a_lookup_is_not_cached_over():
    platform = FakePlatform()
    platform.pending = defer.Deferred()
    a, _ = make(store_with(record()), platform=platform)
    first: list[Any] = []
    a.check("abc", "carol").addCallback(first.append)
    a.revoke_user("abc", "carol")
    platform.pending.callback(True)
    platform.pending = None
    assert first[0].allowed  # the old question gets its answer ...
    assert decide(a, "abc", "carol").allowed is False  # ... but it was not cached
