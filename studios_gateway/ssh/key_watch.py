"""Close live SSH connections whose key the user no longer has.

Every logged-in connection is registered with :meth:`KeyWatch.track` together
with the blob of the key it proved. A connection is kept while that key is
still registered for its user (the session registry) or, when a Platform is
configured, still listed by the Platform's key call; otherwise it is closed
with a reason the user reads ("your SSH key ... was removed").

When: at once when the registry says a user's keys changed (``keys:<user>``
events reach every node; ``None``, "events may have been missed", re-checks
everyone), and otherwise every half ``LOCAL_CACHE_TTL`` with no registry or
Platform answer older than that, so a removal nobody announces (the
Platform's) closes connections within one TTL. When the keys cannot be read
(registry or Platform unavailable) the connection is kept and the reason is
logged: a removal is never guessed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer, task
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from studios_gateway.registry.base import StoreUnavailable, UserKeyStore
from studios_gateway.ssh.keys import KeysUnavailable, key_blobs
from studios_gateway.tracked import Tracked

__all__ = ["KeyWatch"]

log = Logger(namespace="studios_gateway.ssh.key_watch")


@dataclass
class _Conn:
    user: str
    blob: bytes
    close: Callable[[str], Any]


class KeyWatch:
    """Tracks live connections by (user, key blob); closes those whose key is gone.

    `store` is the registry as the gateway reads it (cached); the periodic sweep
    reads `fresh` (the registry behind the cache; default: `store`); `platform`
    is a PlatformKeys (``keys(user, max_age=...)``) or None."""

    def __init__(self, store: UserKeyStore, platform: Any, *, clock: Any, ttl: float,
                 fresh: UserKeyStore | None = None):
        self.store = store
        self.fresh = fresh if fresh is not None else store
        self.platform = platform
        self.clock = clock
        self.ttl = ttl
        self._live: Tracked[_Conn] = Tracked()
        self._unsubscribe: Callable[[], None] | None = None
        self._sweeper: task.LoopingCall | None = None

    # Lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        if self._unsubscribe is None:
            self._unsubscribe = self.store.subscribe_user_keys(self._changed)
        if self._sweeper is None and self.ttl > 0:
            half = self.ttl / 2
            self._sweeper = task.LoopingCall(lambda: self.recheck(max_age=half))
            self._sweeper.clock = self.clock
            self._sweeper.start(half, now=False).addErrback(
                lambda f: log.failure("SSH: the key re-check failed", f))

    def stop(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        if self._sweeper is not None and self._sweeper.running:
            self._sweeper.stop()
        self._sweeper = None

    # Connections --------------------------------------------------------------------

    def track(self, user: str, blob: bytes, close: Callable[[str], Any]) -> Callable[[], None]:
        """Register a logged-in connection; returns the function to call when it ends."""
        return self._live.add(_Conn(user, blob, close))

    @property
    def live_count(self) -> int:
        return len(self._live)

    def _changed(self, user: str | None) -> None:
        self.recheck(user)

    # The decision -------------------------------------------------------------------

    def recheck(self, user: str | None = None, *,
                max_age: float | None = None) -> Deferred[None]:
        """Re-check the live connections (of one user); close those whose key is gone.
        With `max_age`, no registry or Platform answer older than that is used."""
        users = {c.user for c in self._live.values() if user is None or c.user == user}
        checks = [Deferred.fromCoroutine(self._recheck_user(u, max_age)) for u in sorted(users)]
        return defer.gatherResults(checks, consumeErrors=True).addCallback(lambda _: None)

    async def _recheck_user(self, user: str, max_age: float | None) -> None:
        conns = {h: c for h, c in self._live.items() if c.user == user}
        if not conns:
            return
        kept = await self.kept_keys(user, {c.blob for c in conns.values()}, max_age)
        if kept is None:
            return
        for handle, conn in conns.items():
            if conn.blob not in kept and self._live.pop(handle, None) is not None:
                log.info("SSH: closing a connection of {user}: its key is no longer "
                         "registered", user=user)
                try:
                    conn.close("your SSH key was removed from the gateway; log in again "
                               "with a key registered for " + user)
                except Exception:
                    log.failure("SSH: closing a connection whose key was removed failed")

    async def kept_keys(self, user: str, blobs: set[bytes],
                        max_age: float | None = None) -> set[bytes] | None:
        """Which of `blobs` `user` may still use; None when that cannot be said now
        (a source did not answer and some key is not known to the other)."""
        reader = self.fresh if max_age is not None else self.store
        problems = []
        kept: set[bytes] = set()
        try:
            kept = blobs & key_blobs(await reader.get_user_keys(user))
        except StoreUnavailable as e:
            problems.append(f"the key registry is unavailable ({e.reason})")
        if kept != blobs and self.platform is not None:
            try:
                kept |= blobs & await self.platform.keys(user, max_age=max_age)
            except KeysUnavailable as e:
                problems.append(str(e))
        if kept != blobs and problems:
            log.warn("SSH: cannot re-check the keys of {user}'s open connections; keeping "
                     "them for now: {why}", user=user, why="; ".join(problems))
            return None
        return kept
