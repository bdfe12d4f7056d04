"""The session registry: the contract every store keeps (run here against MemoryStore and in
tests/integration/test_registry_redis.py against Redis), the local cache, record codecs."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial import unittest

from studios_gateway.registry.base import (
    MalformedRecord,
    Refresh,
    Seen,
    SessionExists,
    SessionNotFound,
    SessionRecord,
    StoreUnavailable,
    TunnelHolder,
    hash_token,
    new_token,
    token_matches,
)
from studios_gateway.registry.cache import CachingStore
from studios_gateway.registry.memory import MemoryStore
from tests.support.stores import FlakyStore


def record(sid: str = "abc123", **kw: Any) -> SessionRecord:
    fields: dict[str, Any] = dict(id=sid, workspace_id="42", tool="jupyterlab", owner="alice",
                                  allowed_users=("bob",), ssh_enabled=True,
                                  token_hash=hash_token("t" * 43), created_at=1000.0)
    fields.update(kw)
    return SessionRecord(**fields)


def holder(sid: str = "abc123", node: str = "node-a", tunnel: str = "t1",
           **kw: Any) -> TunnelHolder:
    fields: dict[str, Any] = dict(session_id=sid, node_id=node, node_address="10.0.0.1:7777",
                                  tunnel_id=tunnel, client_version="0.12.0", tool_port=8888,
                                  bound_at=1000.0)
    fields.update(kw)
    return TunnelHolder(**fields)


class Recorder:
    """Collects invalidations; `wait_for(sid, n)` fires once `sid` has been seen n times."""

    def __init__(self) -> None:
        self.seen: list[str | None] = []
        self._waiting: list[tuple[str | None, int, defer.Deferred[None]]] = []

    def __call__(self, session_id: str | None) -> None:
        self.seen.append(session_id)
        for item in list(self._waiting):
            if self.seen.count(item[0]) >= item[1]:
                self._waiting.remove(item)
                item[2].callback(None)

    def wait_for(self, session_id: str | None, count: int = 1) -> defer.Deferred[None]:
        if self.seen.count(session_id) >= count:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._waiting.append((session_id, count, d))
        return d


class StoreContract:
    """The semantics every SessionStore keeps. Subclasses (trial TestCases) provide
    `self.store`, `self.other` (a second node on the same backend), `check_expiry` and
    `expire` (let a claim's TTL run out now)."""

    store: Any
    other: Any

    def check_expiry(self, h: TunnelHolder, ttl: float) -> defer.Deferred[None]:
        raise NotImplementedError

    def expire(self, h: TunnelHolder, ttl: float) -> defer.Deferred[None]:
        raise NotImplementedError

    def lose_record(self, session_id: str) -> defer.Deferred[None]:
        """The session's record vanishes without a delete or an event, its tunnel's claim
        left as it was (as if the store lost part of its data)."""
        raise NotImplementedError

    @defer.inlineCallbacks
    def test_session_lifecycle(self) -> Any:
        r = record()
        assert (yield self.store.get(r.id)) is None
        assert (yield self.store.list_sessions()) == []
        yield self.store.create(r)
        assert (yield self.store.get(r.id)) == r
        assert (yield self.other.get(r.id)) == r
        r2 = replace(r, allowed_users=("bob", "carol"), token_hash=hash_token("x" * 43))
        yield self.store.update(r2)
        assert (yield self.other.get(r.id)) == r2
        yield self.store.create(record("def456"))
        ids = sorted(x.id for x in (yield self.other.list_sessions()))
        assert ids == ["abc123", "def456"]
        assert (yield self.store.delete(r.id)) is True
        assert (yield self.store.delete(r.id)) is False
        assert (yield self.other.get(r.id)) is None

    @defer.inlineCallbacks
    def test_create_twice_and_update_missing(self) -> Any:
        yield self.store.create(record())
        try:
            yield self.other.create(record(owner="mallory"))
        except SessionExists:
            pass
        else:
            raise AssertionError("second create succeeded")
        assert (yield self.store.get("abc123")).owner == "alice"
        try:
            yield self.store.update(record("nope"))
        except SessionNotFound:
            pass
        else:
            raise AssertionError("update of a missing session succeeded")
        assert (yield self.store.get("nope")) is None

    @defer.inlineCallbacks
    def test_claim_needs_a_session(self) -> Any:
        try:
            yield self.store.claim_tunnel(holder("ghost"), 30)
        except SessionNotFound:
            pass
        else:
            raise AssertionError("claimed a tunnel for a missing session")
        assert (yield self.store.get_tunnel("ghost")) is None

    @defer.inlineCallbacks
    def test_claim_replaces_atomically(self) -> Any:
        yield self.store.create(record())
        a = holder(node="node-a", tunnel="t1")
        b = holder(node="node-b", tunnel="t2")
        assert (yield self.store.claim_tunnel(a, 30)) is None
        assert (yield self.other.get_tunnel("abc123")) == a
        assert (yield self.other.claim_tunnel(b, 30)) == a
        assert (yield self.store.get_tunnel("abc123")) == b
        # The replaced node can neither refresh nor release what is now b's.
        assert (yield self.store.refresh_tunnel(a, 30)) is False
        assert (yield self.store.release_tunnel(a)) is False
        # Same tunnel id from another node is not ours either.
        assert (yield self.store.release_tunnel(replace(b, node_id="node-a"))) is False
        assert (yield self.store.get_tunnel("abc123")) == b
        assert (yield self.other.refresh_tunnel(b, 30)) is True
        assert (yield self.other.release_tunnel(b)) is True
        assert (yield self.store.get_tunnel("abc123")) is None
        assert (yield self.other.release_tunnel(b)) is False

    @defer.inlineCallbacks
    def test_rebind_same_node(self) -> Any:
        yield self.store.create(record())
        first = holder(tunnel="t1")
        second = holder(tunnel="t2", bound_at=1001.0)
        yield self.store.claim_tunnel(first, 30)
        assert (yield self.store.claim_tunnel(second, 30)) == first
        # The old tunnel closing late must not remove the new binding.
        assert (yield self.store.release_tunnel(first)) is False
        assert (yield self.store.get_tunnel("abc123")) == second

    @defer.inlineCallbacks
    def test_delete_drops_the_tunnel(self) -> Any:
        yield self.store.create(record())
        yield self.store.claim_tunnel(holder(), 30)
        assert (yield self.other.delete("abc123")) is True
        assert (yield self.store.get_tunnel("abc123")) is None

    @defer.inlineCallbacks
    def test_tunnel_expires(self) -> Any:
        yield self.store.create(record())
        h = holder()
        yield self.store.claim_tunnel(h, 5)
        yield self.check_expiry(h, 5)

    @defer.inlineCallbacks
    def test_refresh_claims_an_expired_claim_again_but_never_anothers(self) -> Any:
        """A store outage longer than the TTL: the holder's claim is gone when the store
        is back. Its refresh claims again (the tunnel stays); a claim another node made
        meanwhile is never taken over; a session that ended is not brought back."""
        yield self.store.create(record())
        a = holder(node="node-a", tunnel="t1")
        yield self.store.claim_tunnel(a, 5)
        seen = Recorder()
        unsubscribe = self.other.subscribe(seen)
        yield self.expire(a, 5)
        assert (yield self.store.get_tunnel("abc123")) is None
        assert (yield self.store.refresh_tunnel(a, 5)) is True
        assert (yield self.other.get_tunnel("abc123")) == a
        yield seen.wait_for("abc123")  # other nodes' caches hear of the new claim
        unsubscribe()
        b = holder(node="node-b", tunnel="t2")
        yield self.expire(a, 5)
        yield self.other.claim_tunnel(b, 5)
        assert (yield self.store.refresh_tunnel(a, 5)) is False
        assert (yield self.store.get_tunnel("abc123")) == b
        yield self.other.delete("abc123")
        assert (yield self.other.refresh_tunnel(b, 5)) is False
        assert (yield self.store.get_tunnel("abc123")) is None

    @defer.inlineCallbacks
    def test_a_batch_refresh_answers_each_claim_as_one_refresh_would(self) -> Any:
        """refresh_tunnels (a refresh round's command): ours extended, an expired one of
        ours claimed again, another node's left alone, an ended session's not brought
        back; the answers in the holders' order. A refused claim says which it is: held
        elsewhere, or the session gone (the tunnel table asked the store again, one GET
        per refused claim: N GETs after a Redis restart that lost N sessions)."""
        for sid in ("s1", "s2", "s3", "s4", "s5"):
            yield self.store.create(record(sid))
        ours, expired = holder("s1", tunnel="t1"), holder("s2", tunnel="t2")
        taken, ended = holder("s3", tunnel="t3"), holder("s4", tunnel="t4")
        lost = holder("s5", tunnel="t5")
        for h in (ours, expired, taken, ended, lost):
            yield self.store.claim_tunnel(h, 5)
        yield self.expire(expired, 5)
        theirs = holder("s3", node="node-b", tunnel="tb")
        yield self.other.claim_tunnel(theirs, 5)
        yield self.store.delete("s4")
        yield self.other.claim_tunnel(holder("s5", node="node-b", tunnel="tb"), 5)
        yield self.lose_record("s5")  # another node's claim, and no session any more
        answers = yield self.store.refresh_tunnels([ours, expired, taken, ended, lost], 5)
        assert answers == [Refresh.OURS, Refresh.OURS, Refresh.HELD_ELSEWHERE, Refresh.GONE,
                           Refresh.GONE]
        assert (yield self.other.get_tunnel("s1")) == ours
        assert (yield self.other.get_tunnel("s2")) == expired
        assert (yield self.other.get_tunnel("s3")) == theirs
        assert (yield self.other.get_tunnel("s4")) is None
        assert (yield self.store.refresh_tunnel(taken, 5)) is False  # one claim: a bool
        assert (yield self.store.refresh_tunnel(lost, 5)) is False
        assert (yield self.store.refresh_tunnels([], 5)) == []
        for ttl in (0, float("nan")):
            try:
                yield self.store.refresh_tunnels([ours], ttl)
            except ValueError:
                pass
            else:
                raise AssertionError(f"ttl {ttl} accepted")

    @defer.inlineCallbacks
    def test_bad_ttl_refused(self) -> Any:
        yield self.store.create(record())
        for ttl in (0, -1, float("nan")):
            try:
                yield self.store.claim_tunnel(holder(), ttl)
            except ValueError:
                pass
            else:
                raise AssertionError(f"ttl {ttl} accepted")

    @defer.inlineCallbacks
    def test_invalidation_reaches_other_nodes(self) -> Any:
        seen = Recorder()
        unsubscribe = self.other.subscribe(seen)
        yield self.store.create(record())
        yield seen.wait_for("abc123")
        seen.seen.clear()
        yield self.store.claim_tunnel(holder(), 30)
        yield seen.wait_for("abc123")
        seen.seen.clear()
        yield self.store.release_tunnel(holder())
        yield seen.wait_for("abc123")
        seen.seen.clear()
        yield self.store.update(record(owner="bob"))
        yield seen.wait_for("abc123")
        seen.seen.clear()
        yield self.store.delete("abc123")
        yield seen.wait_for("abc123")
        unsubscribe()

    @defer.inlineCallbacks
    def test_ping(self) -> Any:
        assert (yield self.store.ping()) is None

    @defer.inlineCallbacks
    def test_last_connected_is_written_at_bind_and_unbind_on_any_node(self) -> Any:
        # "Never connected" from the session's creation; the bind's time once bound; the
        # unbind's as well once released; read on the other node whichever node held it.
        assert (yield self.store.last_connected("abc123")) is None
        yield self.store.create(record())
        assert (yield self.other.last_connected("abc123")) == Seen(None, None)
        h = holder(node="node-b", bound_at=1500.0)
        yield self.other.claim_tunnel(h, 30)
        assert (yield self.store.last_connected("abc123")) == Seen(1500.0, None)
        # Released by a tunnel that no longer holds the session: nothing changes.
        assert (yield self.other.release_tunnel(holder(node="node-b", tunnel="t0"))) is False
        assert (yield self.store.last_connected("abc123")) == Seen(1500.0, None)
        assert (yield self.other.release_tunnel(h)) is True
        seen = yield self.store.last_connected("abc123")
        assert seen.bound_at == 1500.0 and seen.unbound_at is not None
        # Taken over (a reconnect on another node), the old tunnel's release is not ours:
        # the studio is connected, and says so.
        h2 = holder(node="node-a", tunnel="t2", bound_at=2000.0)
        yield self.store.claim_tunnel(h2, 30)
        h3 = holder(node="node-b", tunnel="t3", bound_at=2100.0)
        yield self.other.claim_tunnel(h3, 30)
        assert (yield self.store.release_tunnel(h2)) is False
        assert (yield self.store.last_connected("abc123")) == Seen(2100.0, None)
        # Gone with the session.
        assert (yield self.store.delete("abc123")) is True
        assert (yield self.other.last_connected("abc123")) is None
        assert (yield self.store.last_connected("not-a-session!")) is None

    @defer.inlineCallbacks
    def test_last_connected_of_a_claim_that_expired_keeps_the_bind(self) -> Any:
        # A node that ended without releasing: its claim runs out, the bind is known.
        yield self.store.create(record())
        h = holder(bound_at=1500.0)
        yield self.store.claim_tunnel(h, 1)
        yield self.expire(h, 1)
        assert (yield self.other.get_tunnel("abc123")) is None
        assert (yield self.other.last_connected("abc123")) == Seen(1500.0, None)


class MemoryStoreTests(StoreContract, unittest.TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.store = self.other = MemoryStore(self.clock)

    def expire(self, h: TunnelHolder, ttl: float) -> defer.Deferred[None]:
        self.clock.advance(ttl)
        return defer.succeed(None)

    def lose_record(self, session_id: str) -> defer.Deferred[None]:
        del self.store._records[session_id]
        return defer.succeed(None)

    def check_expiry(self, h: TunnelHolder, ttl: float) -> defer.Deferred[None]:
        self.clock.advance(ttl - 0.5)
        assert self.successResultOf(self.store.refresh_tunnel(h, ttl)) is True
        self.clock.advance(ttl - 0.5)
        assert self.successResultOf(self.store.get_tunnel(h.session_id)) == h
        self.clock.advance(1)
        assert self.successResultOf(self.store.get_tunnel(h.session_id)) is None
        assert self.successResultOf(self.store.release_tunnel(h)) is False
        # Expired: a new claim reports no previous holder.
        assert self.successResultOf(self.store.claim_tunnel(h, ttl)) is None
        return defer.succeed(None)


# The cache -----------------------------------------------------------------------------


class CachingStoreTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.backend = MemoryStore(self.clock)
        self.flaky = FlakyStore(self.backend)
        self.cache = CachingStore(self.flaky, 120, self.clock)

    def test_reads_are_cached_for_ttl(self) -> None:
        self.successResultOf(self.backend.create(record()))
        assert self.successResultOf(self.cache.get("abc123")) == record()
        calls = self.flaky.total_calls
        self.clock.advance(119)
        assert self.successResultOf(self.cache.get("abc123")) == record()
        assert self.flaky.total_calls == calls
        self.clock.advance(2)
        self.successResultOf(self.cache.get("abc123"))
        assert self.flaky.total_calls == calls + 1

    def test_invalidation_drops_entries_early(self) -> None:
        self.successResultOf(self.cache.create(record()))
        self.successResultOf(self.cache.get("abc123"))
        self.successResultOf(self.cache.get_tunnel("abc123"))
        # Another "node" writes to the backend directly; its notification reaches us.
        self.successResultOf(self.backend.update(record(owner="bob")))
        self.successResultOf(self.backend.claim_tunnel(holder(), 30))
        assert self.successResultOf(self.cache.get("abc123")).owner == "bob"
        assert self.successResultOf(self.cache.get_tunnel("abc123")) == holder()

    def test_last_connected_is_cached_and_follows_binds_and_unbinds(self) -> None:
        # Read for every request to a studio not connected (a stale tab's polling): it
        # cost one registry command each, where the claim's look-up is cached.
        self.successResultOf(self.backend.create(record()))
        assert self.successResultOf(self.cache.last_connected("abc123")) == Seen()
        calls = self.flaky.total_calls
        for _ in range(3):
            assert self.successResultOf(self.cache.last_connected("abc123")) == Seen()
        assert self.flaky.total_calls == calls
        # Another node's bind is heard; this node's own unbind is seen at once.
        self.successResultOf(self.backend.claim_tunnel(holder(bound_at=1500.0), 30))
        assert self.successResultOf(self.cache.last_connected("abc123")) == Seen(1500.0)
        self.clock.advance(5)
        self.successResultOf(self.cache.release_tunnel(holder()))
        assert self.successResultOf(self.cache.last_connected("abc123")) == Seen(1500.0, 5.0)
        self.successResultOf(self.backend.delete("abc123"))
        assert self.successResultOf(self.cache.last_connected("abc123")) is None

    def test_negative_answers_are_cached_until_invalidated(self) -> None:
        assert self.successResultOf(self.cache.get("abc123")) is None
        self.successResultOf(self.backend.create(record()))
        assert self.successResultOf(self.cache.get("abc123")) == record()

    def test_own_writes_are_seen_at_once(self) -> None:
        self.successResultOf(self.cache.create(record()))
        assert self.successResultOf(self.cache.get_tunnel("abc123")) is None
        self.successResultOf(self.cache.claim_tunnel(holder(), 30))
        assert self.successResultOf(self.cache.get_tunnel("abc123")) == holder()
        self.successResultOf(self.cache.release_tunnel(holder()))
        assert self.successResultOf(self.cache.get_tunnel("abc123")) is None

    def test_outage_serves_cached_even_expired(self) -> None:
        self.successResultOf(self.cache.create(record()))
        self.successResultOf(self.cache.claim_tunnel(holder(), 3600))
        assert self.successResultOf(self.cache.get("abc123")) == record()
        assert self.successResultOf(self.cache.get_tunnel("abc123")) == holder()
        self.clock.advance(1000)
        self.flaky.up = False
        assert self.successResultOf(self.cache.get("abc123")) == record()
        assert self.successResultOf(self.cache.get_tunnel("abc123")) == holder()
        assert self.cache.stale_served == 2
        # Never seen: nothing to fall back on.
        self.failureResultOf(self.cache.get("zzz"), StoreUnavailable)
        # Writes fail clearly, and do not lose the fallback.
        self.failureResultOf(self.cache.claim_tunnel(holder(tunnel="t9"), 30), StoreUnavailable)
        self.failureResultOf(self.cache.create(record("new1")), StoreUnavailable)
        assert self.successResultOf(self.cache.get_tunnel("abc123")) == holder()
        # A "changes may have been missed" invalidation keeps fallbacks, drops trust.
        self.cache.invalidate(None)
        assert self.successResultOf(self.cache.get("abc123")) == record()
        self.flaky.up = True
        self.successResultOf(self.backend.update(record(owner="carol")))
        assert self.successResultOf(self.cache.get("abc123")).owner == "carol"

    def test_specific_invalidation_removes_fallback(self) -> None:
        self.successResultOf(self.cache.create(record()))
        self.successResultOf(self.cache.get("abc123"))
        self.successResultOf(self.backend.delete("abc123"))
        self.flaky.up = False
        self.failureResultOf(self.cache.get("abc123"), StoreUnavailable)

    def test_reply_racing_an_invalidation_is_not_cached(self) -> None:
        slow: defer.Deferred[Any] = defer.Deferred()
        cache = CachingStore(_Slow(slow, self.backend), 120, self.clock)
        d = cache.get("abc123")
        cache.invalidate("abc123")
        slow.callback(record(owner="old"))
        assert self.successResultOf(d).owner == "old"
        self.successResultOf(self.backend.create(record(owner="new")))
        assert self.successResultOf(cache.get("abc123")).owner == "new"

    def test_bounded(self) -> None:
        cache = CachingStore(self.backend, 120, self.clock, max_entries=10)
        for i in range(100):
            self.successResultOf(cache.get(f"s{i}"))
        assert len(cache._records.entries) == 10

    def test_ended_and_unknown_sessions_leave_nothing_behind(self) -> None:
        # A deleted session's "none" answer (its studio still asking to bind, a tab still
        # open) stayed for the node's life, with a generation per table: soak53 saw one
        # more of each for every session it deleted.
        for i in range(20):
            self.successResultOf(self.cache.create(record(f"gone{i}")))
            self.successResultOf(self.cache.get(f"gone{i}"))
            self.successResultOf(self.backend.delete(f"gone{i}"))
            assert self.successResultOf(self.cache.get(f"gone{i}")) is None
            assert self.successResultOf(self.cache.get_tunnel(f"nosuch{i}")) is None
        self.successResultOf(self.cache.create(record("kept")))
        assert self.successResultOf(self.cache.get("kept")) is not None
        self.clock.advance(121)
        self.successResultOf(self.cache.get("other"))  # a miss: the sweep's turn
        tables = (self.cache._records, self.cache._tunnels, self.cache._seen)
        assert list(self.cache._records.entries) == ["kept", "other"]
        assert [len(t.entries) for t in tables[1:]] == [0, 0]
        assert [len(t.generation) <= len(t.entries) for t in tables] == [True] * 3
        # (the one that exists is kept, expired, as the outage fallback)
        self.flaky.up = False
        assert self.successResultOf(self.cache.get("kept")) == record("kept")

    def test_a_reply_from_before_a_sweep_is_not_cached(self) -> None:
        slow: defer.Deferred[Any] = defer.Deferred()
        cache = CachingStore(_Slow(slow, self.backend), 120, self.clock)
        d = cache.get("abc123")
        cache.invalidate("abc123")
        cache._records.sweep(self.clock.seconds(), 120)  # forgets abc123's generation
        slow.callback(record(owner="old"))
        assert self.successResultOf(d).owner == "old"
        self.successResultOf(self.backend.create(record(owner="new")))
        assert self.successResultOf(cache.get("abc123")).owner == "new"

    def test_subscribers_of_the_cache_hear_invalidations(self) -> None:
        seen = Recorder()
        self.cache.subscribe(seen)
        self.successResultOf(self.backend.create(record()))
        assert seen.seen == ["abc123"]


class _Slow:
    """First get() answers with the given Deferred, later ones from the backend."""

    def __init__(self, first: defer.Deferred[Any], backend: MemoryStore):
        self.first: defer.Deferred[Any] | None = first
        self.backend = backend

    def subscribe(self, cb: Any) -> Any:
        return self.backend.subscribe(cb)

    def get(self, sid: str) -> defer.Deferred[Any]:
        if self.first is not None:
            d, self.first = self.first, None
            return d
        return self.backend.get(sid)


# Codecs and tokens ---------------------------------------------------------------------

texts = st.text(min_size=1, max_size=20)
session_ids = st.from_regex(r"[a-z0-9][a-z0-9-]{0,20}", fullmatch=True)
records = st.builds(
    SessionRecord, id=session_ids, workspace_id=st.none() | texts, tool=texts, owner=texts,
    allowed_users=st.lists(texts, max_size=4).map(tuple), ssh_enabled=st.booleans(),
    token_hash=texts, created_at=st.floats(allow_nan=False, allow_infinity=False))
holders = st.builds(
    TunnelHolder, session_id=session_ids, node_id=texts, node_address=st.text(max_size=30),
    tunnel_id=texts, client_version=st.text(max_size=10), tool_port=st.integers(1, 65535),
    bound_at=st.floats(allow_nan=False, allow_infinity=False))


@given(records)
def test_record_json_round_trip(r: SessionRecord) -> None:
    assert SessionRecord.from_json(r.to_json()) == r
    assert SessionRecord.from_json(r.to_json().encode()) == r


@given(holders)
def test_holder_json_round_trip(h: TunnelHolder) -> None:
    assert TunnelHolder.from_json(h.to_json()) == h


@given(records, st.sampled_from(["id", "workspace_id", "tool", "owner", "allowed_users",
                                 "ssh_enabled", "token_hash", "created_at"]),
       st.sampled_from([None, 7, True, "", [1], {"a": 1}, "UPPER:case", float("inf")]),
       st.booleans())
def test_malformed_records_are_refused(r: SessionRecord, key: str, bad: Any,
                                       drop: bool) -> None:
    data = r.to_dict()
    if drop:
        del data[key]
    else:
        data[key] = bad
    try:
        parsed = SessionRecord.from_json(json.dumps(data))
    except MalformedRecord as e:
        assert key in str(e)
    else:
        # Only values that are valid for that field get through.
        assert not drop
        assert getattr(parsed, key) in (bad, tuple(bad) if isinstance(bad, list) else bad)


@given(st.binary(max_size=60) | st.text(max_size=60))
def test_junk_is_malformed(junk: bytes | str) -> None:
    try:
        SessionRecord.from_json(junk)
    except MalformedRecord:
        pass
    try:
        TunnelHolder.from_json(junk)
    except MalformedRecord:
        pass


def test_unknown_fields_are_ignored() -> None:
    data = record().to_dict() | {"added_by_a_newer_node": 1}
    assert SessionRecord.from_json(json.dumps(data)) == record()


def test_tokens() -> None:
    t = new_token()
    assert len(t) >= 43 and t != new_token()
    h = hash_token(t)
    assert t not in h
    assert token_matches(t, h)
    assert not token_matches(t + "x", h)
    assert not token_matches(t, "sha256:" + "0" * 64)
    assert "token_hash" not in repr(record())
