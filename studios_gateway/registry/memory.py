"""The embedded registry: one node, in memory, tunnel TTLs kept with the given clock;
users' SSH keys and the login state (spent single-use ids, logouts) too.

The login state must outlast a restart (a used login link stays used):
:meth:`MemoryStore.keep_login_journals` backs it by two append-only journal
files under the storage root (auth/ does this when there is no Redis). Given a
``sessions_file``, the session records outlast a restart too: loaded when the store
is made, every change appended to a journal and fsynced before it is acknowledged,
the journal folded into ``sessions.json`` now and then and at stop
(:mod:`~studios_gateway.registry.sessions_journal`); a change that cannot be saved
is refused and undone."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from studios_gateway.private_files import StorageError
from studios_gateway.registry.base import (
    MAX_USER_KEYS,
    BadUserKeys,
    Invalidation,
    Refresh,
    Seen,
    SessionExists,
    SessionNotFound,
    SessionRecord,
    StoreUnavailable,
    TunnelHolder,
    check_single_use_id,
    check_user_keys,
    key_blob,
    unique_keys,
)
from studios_gateway.registry.sessions_journal import COMPACT_AFTER, SessionsJournal
from studios_gateway.registry.spent import SpentSet
from studios_gateway.registry.subscribers import Subscribers

_log = Logger()


class MemoryStore:
    """A SessionStore in this process's memory: the single-node default."""

    def __init__(self, clock: IReactorTime, sessions_file: Path | None = None,
                 compact_after: int = COMPACT_AFTER):
        self._clock = clock
        self.journal = (None if sessions_file is None
                        else SessionsJournal(sessions_file, compact_after))
        # StorageError (a clear message naming the file) when it cannot be read.
        self._records: dict[str, SessionRecord] = (
            self.journal.open() if self.journal is not None else {})
        self._tunnels: dict[str, tuple[TunnelHolder, float]] = {}
        # When each session's studio was last connected: only sessions made since this
        # store was (a loaded session has none: unknown), dropped with the session.
        self._seen: dict[str, Seen] = {}
        self._user_keys: dict[str, list[str]] = {}
        self._subscribers = Subscribers()
        self._key_subscribers = Subscribers()
        self._spent = SpentSet(clock)
        self._logouts = SpentSet(clock)
        self._logout_subscribers = Subscribers()
        self._transfer: dict[tuple[str, int], tuple[int, float]] = {}  # -> (bytes, until)

    def __repr__(self) -> str:
        return f"MemoryStore(sessions={len(self._records)})"

    def start(self) -> None:
        pass

    def stop(self) -> Deferred[None]:
        if self.journal is not None:
            self.journal.close(self._records.values())
        self._spent.close()
        self._logouts.close()
        return defer.succeed(None)

    def ping(self) -> Deferred[None]:
        return defer.succeed(None)

    def subscribe(self, callback: Invalidation) -> Callable[[], None]:
        return self._subscribers.add(callback)

    # Sessions ----------------------------------------------------------------

    def create(self, record: SessionRecord) -> Deferred[None]:
        if record.id in self._records:
            return defer.fail(SessionExists(f"session {record.id} exists already"))
        self._records[record.id] = record
        failed = self._saved(record, None)
        if failed is not None:
            return failed
        self._seen[record.id] = Seen()
        self._subscribers.notify(record.id)
        return defer.succeed(None)

    def get(self, session_id: str) -> Deferred[SessionRecord | None]:
        return defer.succeed(self._records.get(session_id))

    def list_sessions(self) -> Deferred[list[SessionRecord]]:
        return defer.succeed(list(self._records.values()))

    def update(self, record: SessionRecord) -> Deferred[None]:
        if record.id not in self._records:
            return defer.fail(SessionNotFound(f"no session {record.id}"))
        before, self._records[record.id] = self._records[record.id], record
        failed = self._saved(record, before)
        if failed is not None:
            return failed
        self._subscribers.notify(record.id)
        return defer.succeed(None)

    def delete(self, session_id: str) -> Deferred[bool]:
        before = self._records.pop(session_id, None)
        existed = before is not None
        if existed:
            failed = self._saved(session_id, before)
            if failed is not None:
                return failed
        had_tunnel = self._tunnels.pop(session_id, None) is not None
        self._seen.pop(session_id, None)
        if existed or had_tunnel:
            self._subscribers.notify(session_id)
        return defer.succeed(existed)

    def _saved(self, change: SessionRecord | str,
               before: SessionRecord | None) -> Deferred[Any] | None:
        """Make a change durable: `change` is the record put, or the id deleted. When
        that fails, undo the change (`before` was its record) and return the failure
        (StoreUnavailable)."""
        if self.journal is None:
            return None
        session_id = change if isinstance(change, str) else change.id
        try:
            if isinstance(change, str):
                self.journal.delete(change, self._records.values())
            else:
                self.journal.put(change, self._records.values())
        except StorageError as e:
            if before is None:
                self._records.pop(session_id, None)
            else:
                self._records[session_id] = before
            return defer.fail(StoreUnavailable(f"the session could not be saved: {e}"))
        return None

    # Tunnels -----------------------------------------------------------------

    def _current(self, session_id: str) -> TunnelHolder | None:
        entry = self._tunnels.get(session_id)
        if entry is None:
            return None
        holder, expires = entry
        if self._clock.seconds() >= expires:
            del self._tunnels[session_id]
            return None
        return holder

    def claim_tunnel(self, holder: TunnelHolder, ttl: float) -> Deferred[TunnelHolder | None]:
        try:
            seconds = _ttl(ttl)
        except ValueError as e:
            return defer.fail(e)
        if holder.session_id not in self._records:
            return defer.fail(SessionNotFound(f"no session {holder.session_id}"))
        previous = self._current(holder.session_id)
        self._tunnels[holder.session_id] = (holder, self._clock.seconds() + seconds)
        self._seen[holder.session_id] = Seen(holder.bound_at, None)
        self._subscribers.notify(holder.session_id)
        return defer.succeed(previous)

    def refresh_tunnel(self, holder: TunnelHolder, ttl: float) -> Deferred[bool]:
        try:
            seconds = _ttl(ttl)
        except ValueError as e:
            return defer.fail(e)
        return defer.succeed(self._refresh(holder, seconds) is Refresh.OURS)

    def refresh_tunnels(self, holders: Sequence[TunnelHolder],
                        ttl: float) -> Deferred[list[Refresh]]:
        try:
            seconds = _ttl(ttl)
        except ValueError as e:
            return defer.fail(e)
        return defer.succeed([self._refresh(holder, seconds) for holder in holders])

    def _refresh(self, holder: TunnelHolder, seconds: float) -> Refresh:
        current = self._current(holder.session_id)
        exists = holder.session_id in self._records
        if current is None and exists:
            # The claim expired (this node was too busy to refresh it?): claim it again.
            self._tunnels[holder.session_id] = (holder, self._clock.seconds() + seconds)
            self._subscribers.notify(holder.session_id)
            return Refresh.OURS
        if current is None or not _same(current, holder):
            return Refresh.HELD_ELSEWHERE if exists else Refresh.GONE
        self._tunnels[holder.session_id] = (current, self._clock.seconds() + seconds)
        return Refresh.OURS

    def release_tunnel(self, holder: TunnelHolder) -> Deferred[bool]:
        current = self._current(holder.session_id)
        if current is None or not _same(current, holder):
            return defer.succeed(False)
        del self._tunnels[holder.session_id]
        if holder.session_id in self._records:
            self._seen[holder.session_id] = Seen(current.bound_at, self._clock.seconds())
        self._subscribers.notify(holder.session_id)
        return defer.succeed(True)

    def last_connected(self, session_id: str) -> Deferred[Seen | None]:
        return defer.succeed(self._seen.get(session_id))

    def get_tunnel(self, session_id: str) -> Deferred[TunnelHolder | None]:
        return defer.succeed(self._current(session_id))

    # Users' SSH keys -----------------------------------------------------------

    def subscribe_user_keys(self, callback: Invalidation) -> Callable[[], None]:
        return self._key_subscribers.add(callback)

    def get_user_keys(self, user: str) -> Deferred[list[str]]:
        return defer.succeed(list(self._user_keys.get(user, [])))

    def all_user_keys(self) -> dict[str, list[str]]:
        """Every user's keys, now (for saving them to a file)."""
        return {user: list(lines) for user, lines in self._user_keys.items()}

    def _store_keys(self, user: str, lines: list[str]) -> None:
        if lines:
            self._user_keys[user] = list(lines)
        else:
            self._user_keys.pop(user, None)
        self._key_subscribers.notify(user)

    def set_user_keys(self, user: str, lines: list[str]) -> Deferred[None]:
        try:
            check_user_keys(user, lines)
        except BadUserKeys as e:
            return defer.fail(e)
        self._store_keys(user, lines)
        return defer.succeed(None)

    def add_user_keys(self, user: str, lines: list[str]) -> Deferred[list[str]]:
        have = self._user_keys.get(user, [])
        merged = unique_keys(have + lines)
        try:
            if len(merged) > MAX_USER_KEYS:
                raise BadUserKeys(f"at most {MAX_USER_KEYS} keys per user ({user} has "
                                  f"{len(have)}, {len(merged) - len(have)} new)")
            check_user_keys(user, merged)
        except BadUserKeys as e:
            return defer.fail(e)
        if len(merged) != len(have):
            self._store_keys(user, merged)
        return defer.succeed(merged)

    def remove_user_keys(self, user: str, blobs: list[str] | None = None) -> Deferred[int]:
        have = self._user_keys.get(user, [])
        drop = None if blobs is None else set(blobs)
        keep = [] if drop is None else [line for line in have if key_blob(line) not in drop]
        if len(keep) != len(have):
            self._store_keys(user, keep)
        return defer.succeed(len(have) - len(keep))

    # Login state ------------------------------------------------------------------

    def keep_login_journals(self, spent: Any, logouts: Any) -> None:
        """Back spent ids and logouts by journals (:class:`~studios_gateway.auth.files.Journal`):
        what they hold now is loaded, every later change appended."""
        self._spent.close()
        self._logouts.close()
        self._spent = SpentSet(self._clock, journal=spent)
        self._logouts = SpentSet(self._clock, journal=logouts)

    def add_transfer(self, counts: dict[str, int], bucket: int, ttl: float) -> Deferred[None]:
        now = self._clock.seconds()
        for key, n in counts.items():
            value, _ = self._transfer.get((key, bucket), (0, 0.0))
            self._transfer[(key, bucket)] = (value + n, now + ttl)
        return defer.succeed(None)

    def get_transfer(self, keys: list[str], buckets: list[int]
                     ) -> Deferred[dict[str, list[int]]]:
        now = self._clock.seconds()
        for k in [k for k, (_, until) in self._transfer.items() if until <= now]:
            del self._transfer[k]
        return defer.succeed({key: [self._transfer.get((key, b), (0, 0.0))[0] for b in buckets]
                              for key in keys})

    def reset_transfer(self, key: str, buckets: list[int]) -> Deferred[None]:
        for b in buckets:
            self._transfer.pop((key, b), None)
        return defer.succeed(None)

    def spend_once(self, key: str, ttl: float) -> Deferred[bool]:
        try:
            seconds = check_single_use_id(key, ttl)
        except ValueError as e:
            return defer.fail(e)
        try:
            return defer.succeed(self._spent.spend(key, self._clock.seconds() + seconds))
        except StorageError as e:
            # (not spent: whether it was used would not outlast a restart)
            return defer.fail(StoreUnavailable(f"a used link or code cannot be recorded: {e}"))

    def is_spent(self, key: str) -> Deferred[bool]:
        return defer.succeed(key in self._spent)

    def log_out(self, login_id: str, ttl: float) -> Deferred[None]:
        try:
            seconds = check_single_use_id(login_id, ttl)
        except ValueError as e:
            return defer.fail(e)
        until = self._clock.seconds() + seconds
        try:
            ended = self._logouts.spend(login_id, until)
        except StorageError as e:
            # A logout holds all the same, in this process: a restart forgets it.
            _log.warn("a logout could not be saved ({error}): it holds until the gateway "
                      "stops", error=str(e))
            ended = self._logouts.spend(login_id, until, saved=False)
        if ended:
            self._logout_subscribers.notify(login_id)
        return defer.succeed(None)

    def logged_out(self) -> Deferred[dict[str, float]]:
        return defer.succeed(self._logouts.live())

    def subscribe_logouts(self, callback: Invalidation) -> Callable[[], None]:
        return self._logout_subscribers.add(callback)


def _same(a: TunnelHolder, b: TunnelHolder) -> bool:
    """Whether two holders are the same claim: same tunnel on the same node."""
    return a.tunnel_id == b.tunnel_id and a.node_id == b.node_id


def _ttl(ttl: Any) -> float:
    if not isinstance(ttl, int | float) or isinstance(ttl, bool) or not ttl > 0:
        raise ValueError(f"a tunnel TTL must be a positive number of seconds, not {ttl!r}")
    return float(ttl)
