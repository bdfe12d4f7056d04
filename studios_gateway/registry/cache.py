"""A local read cache in front of a session store (LOCAL_CACHE_TTL).

`get` and `get_tunnel` answer from memory for `ttl` seconds; an invalidation
from the store (any node changed the session) drops the entry at once. When the
store is unavailable, the last known answer is served even if it has expired,
so routes that were working keep working through a Redis outage; sessions never
seen before fail with StoreUnavailable. Writes go straight through.

An invalidation of None ("anything may have changed", e.g. the pub/sub link
was lost) marks every entry expired but keeps it as the outage fallback.

A "no such session" answer is no route to keep working: once expired it goes (at
the next miss at most a TTL later), and with it what the table kept per key to tell
a racing reply. Both stayed for the node's life (up to `max_entries`), one of each
for every session ever ended here or on another node (soak53).

Users' SSH keys (`get_user_keys`) follow the same rules, keyed by user name and
invalidated by the store's user-key events.

The login state (spent single-use ids, logouts) is never cached: it goes
straight to the store, so "used once" holds on every node.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from studios_gateway.registry.base import (
    Invalidation,
    Refresh,
    Seen,
    SessionRecord,
    StoreUnavailable,
    TunnelHolder,
)
from studios_gateway.registry.subscribers import Subscribers

T = TypeVar("T")

#: Most entries kept per table; the least recently used go first.
MAX_ENTRIES = 50_000


@dataclass
class _Entry(Generic[T]):
    value: T
    expires: float


class _Table(Generic[T]):
    """One cached lookup (session id -> value), bounded, with per-key generations so a
    reply that raced an invalidation is not cached."""

    def __init__(self, max_entries: int) -> None:
        self.entries: OrderedDict[str, _Entry[T]] = OrderedDict()
        self.generation: dict[str, int] = {}
        self._epoch = 0
        self._max = max_entries
        self._swept_at = float("-inf")

    def token(self, key: str) -> tuple[int, int]:
        return (self._epoch, self.generation.get(key, 0))

    def fresh(self, key: str, now: float) -> _Entry[T] | None:
        entry = self.entries.get(key)
        if entry is None or entry.expires <= now:
            return None
        self.entries.move_to_end(key)
        return entry

    def put(self, key: str, value: T, expires: float, token: tuple[int, int]) -> None:
        if token != self.token(key):
            return
        self.entries[key] = _Entry(value, expires)
        self.entries.move_to_end(key)
        while len(self.entries) > self._max:
            old, _ = self.entries.popitem(last=False)
            self.generation.pop(old, None)

    def drop(self, key: str) -> None:
        self.entries.pop(key, None)
        self.generation[key] = self.generation.get(key, 0) + 1
        if len(self.generation) > 2 * self._max:
            self.generation = {k: v for k, v in self.generation.items() if k in self.entries}
            self._epoch += 1

    def expire(self, key: str) -> None:
        """Stop trusting one entry, but keep it as the outage fallback."""
        entry = self.entries.get(key)
        if entry is not None:
            entry.expires = float("-inf")
        self.generation[key] = self.generation.get(key, 0) + 1

    def expire_all(self) -> None:
        self._epoch += 1
        for entry in self.entries.values():
            entry.expires = float("-inf")

    def sweep(self, now: float, every: float) -> None:
        """At most once per `every` seconds: let expired "none" answers go, and the
        generations of keys no longer held (a new epoch, so that a reply in flight from
        before is still not cached)."""
        if now < self._swept_at + every:
            return
        self._swept_at = now
        for key in [k for k, e in self.entries.items() if e.value is None and e.expires <= now]:
            del self.entries[key]
        if len(self.generation) > len(self.entries):
            self.generation = {k: v for k, v in self.generation.items() if k in self.entries}
            self._epoch += 1


class CachingStore:
    """A SessionStore that caches reads of `inner` for `ttl` seconds."""

    _log = Logger()

    def __init__(self, inner: Any, ttl: float, clock: IReactorTime,
                 max_entries: int = MAX_ENTRIES):
        self.inner = inner
        self.ttl = float(ttl)
        self._clock = clock
        self._records: _Table[SessionRecord | None] = _Table(max_entries)
        self._tunnels: _Table[TunnelHolder | None] = _Table(max_entries)
        self._user_keys: _Table[list[str]] = _Table(max_entries)
        self._seen: _Table[Seen | None] = _Table(max_entries)
        self._tables = (self._records, self._tunnels, self._user_keys, self._seen)
        self._subscribers = Subscribers()
        self._key_subscribers = Subscribers()
        self.stale_served = 0
        inner.subscribe(self._invalidated)
        if hasattr(inner, "subscribe_user_keys"):
            inner.subscribe_user_keys(self._keys_invalidated)

    def __repr__(self) -> str:
        return f"CachingStore({self.inner!r}, ttl={self.ttl})"

    # Invalidation --------------------------------------------------------------

    def _invalidated(self, session_id: str | None) -> None:
        if session_id is None:
            self._records.expire_all()
            self._tunnels.expire_all()
            self._seen.expire_all()
        else:
            self._records.drop(session_id)
            self._tunnels.drop(session_id)
            self._seen.drop(session_id)
        self._subscribers.notify(session_id)

    def invalidate(self, session_id: str | None = None) -> None:
        """Forget what this node knows about one session (None: expire everything)."""
        self._invalidated(session_id)

    def subscribe(self, callback: Invalidation) -> Callable[[], None]:
        return self._subscribers.add(callback)

    def _keys_invalidated(self, user: str | None) -> None:
        if user is None:
            self._user_keys.expire_all()
        else:
            self._user_keys.drop(user)
        self._key_subscribers.notify(user)

    def subscribe_user_keys(self, callback: Invalidation) -> Callable[[], None]:
        return self._key_subscribers.add(callback)

    # Cached reads --------------------------------------------------------------

    def _cached(self, table: _Table[Any], key: str, fetch: Callable[[str], Deferred[Any]],
                what: str) -> Deferred[Any]:
        now = self._clock.seconds()
        entry = table.fresh(key, now)
        if entry is not None:
            return defer.succeed(entry.value)
        token = table.token(key)
        d = defer.maybeDeferred(fetch, key)

        def store(value: Any) -> Any:
            now = self._clock.seconds()
            table.put(key, value, now + self.ttl, token)
            for each in self._tables:
                each.sweep(now, self.ttl)
            return value

        def fallback(f: Failure) -> Any:
            f.trap(StoreUnavailable)
            stale = table.entries.get(key)
            if stale is None:
                return f
            self.stale_served += 1
            self._log.debug("session registry unavailable ({reason}); serving the cached "
                            "{what} of {session_id}", reason=f.getErrorMessage(), what=what,
                            session_id=key)
            return stale.value

        return d.addCallbacks(store, fallback)

    def get(self, session_id: str) -> Deferred[SessionRecord | None]:
        return self._cached(self._records, session_id, self.inner.get, "session")

    def get_tunnel(self, session_id: str) -> Deferred[TunnelHolder | None]:
        return self._cached(self._tunnels, session_id, self.inner.get_tunnel, "tunnel")

    def get_user_keys(self, user: str) -> Deferred[list[str]]:
        d = self._cached(self._user_keys, user, self.inner.get_user_keys, "SSH keys")
        return d.addCallback(list)  # callers get their own copy

    # Pass-through --------------------------------------------------------------

    @staticmethod
    def _through(tables: tuple[_Table[Any], ...], key: str, call: Callable[..., Deferred[Any]],
                 *args: Any) -> Deferred[Any]:
        """`call(*args)` on the store, then forget what `tables` hold under `key`."""
        d = defer.maybeDeferred(call, *args)

        def done(result: Any) -> Any:
            # Our own change: do not wait for the store's notification to forget it.
            for table in tables:
                table.drop(key)
            return result

        def failed(f: Failure) -> Failure:
            # The write may or may not have happened: stop trusting what we know,
            # but keep it to serve while the store is down.
            for table in tables:
                table.expire(key)
            return f

        return d.addCallbacks(done, failed)

    def _write(self, session_id: str, call: Callable[..., Deferred[Any]],
               *args: Any) -> Deferred[Any]:
        return self._through((self._records, self._tunnels, self._seen), session_id, call,
                             *args)

    def _write_keys(self, user: str, call: Callable[..., Deferred[Any]],
                    *args: Any) -> Deferred[Any]:
        return self._through((self._user_keys,), user, call, user, *args)

    def set_user_keys(self, user: str, lines: list[str]) -> Deferred[None]:
        return self._write_keys(user, self.inner.set_user_keys, lines)

    def add_user_keys(self, user: str, lines: list[str]) -> Deferred[list[str]]:
        return self._write_keys(user, self.inner.add_user_keys, lines)

    def remove_user_keys(self, user: str, blobs: list[str] | None = None) -> Deferred[int]:
        return self._write_keys(user, self.inner.remove_user_keys, blobs)

    def create(self, record: SessionRecord) -> Deferred[None]:
        return self._write(record.id, self.inner.create, record)

    def update(self, record: SessionRecord) -> Deferred[None]:
        return self._write(record.id, self.inner.update, record)

    def delete(self, session_id: str) -> Deferred[bool]:
        return self._write(session_id, self.inner.delete, session_id)

    def claim_tunnel(self, holder: TunnelHolder, ttl: float) -> Deferred[TunnelHolder | None]:
        return self._write(holder.session_id, self.inner.claim_tunnel, holder, ttl)

    def refresh_tunnel(self, holder: TunnelHolder, ttl: float) -> Deferred[bool]:
        return defer.maybeDeferred(self.inner.refresh_tunnel, holder, ttl)

    def refresh_tunnels(self, holders: Sequence[TunnelHolder],
                        ttl: float) -> Deferred[list[Refresh]]:
        return defer.maybeDeferred(self.inner.refresh_tunnels, holders, ttl)

    def release_tunnel(self, holder: TunnelHolder) -> Deferred[bool]:
        return self._write(holder.session_id, self.inner.release_tunnel, holder)

    def list_sessions(self) -> Deferred[list[SessionRecord]]:
        return defer.maybeDeferred(self.inner.list_sessions)

    def last_connected(self, session_id: str) -> Deferred[Seen | None]:
        # Cached as the claims are: every request to a studio that is not connected (an
        # open tab's polling, its reloads) reads it, and the bind or unbind that changes
        # it is a session change every node hears (or this node's own write).
        return self._cached(self._seen, session_id, self.inner.last_connected,
                            "last connected")

    def spend_once(self, key: str, ttl: float) -> Deferred[bool]:
        return defer.maybeDeferred(self.inner.spend_once, key, ttl)

    def add_transfer(self, counts: dict[str, int], bucket: int, ttl: float) -> Deferred[None]:
        return defer.maybeDeferred(self.inner.add_transfer, counts, bucket, ttl)

    def get_transfer(self, keys: list[str], buckets: list[int]
                     ) -> Deferred[dict[str, list[int]]]:
        return defer.maybeDeferred(self.inner.get_transfer, keys, buckets)

    def reset_transfer(self, key: str, buckets: list[int]) -> Deferred[None]:
        return defer.maybeDeferred(self.inner.reset_transfer, key, buckets)

    def is_spent(self, key: str) -> Deferred[bool]:
        return defer.maybeDeferred(self.inner.is_spent, key)

    def log_out(self, login_id: str, ttl: float) -> Deferred[None]:
        return defer.maybeDeferred(self.inner.log_out, login_id, ttl)

    def logged_out(self) -> Deferred[dict[str, float]]:
        return defer.maybeDeferred(self.inner.logged_out)

    def subscribe_logouts(self, callback: Invalidation) -> Callable[[], None]:
        return self.inner.subscribe_logouts(callback)

    def ping(self) -> Deferred[None]:
        return defer.maybeDeferred(self.inner.ping)

    def start(self) -> None:
        self.inner.start()

    def stop(self) -> Deferred[None]:
        return defer.maybeDeferred(self.inner.stop)
