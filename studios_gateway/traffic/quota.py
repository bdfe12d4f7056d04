"""Transfer quotas: bytes per user and per session over a rolling window, counted by every
node in the shared store (Redis; memory on a single node).

Each node adds what its connections moved (both directions) to the current time bucket
once a second (:meth:`Quota.flush`, from the traffic tick); a scope's use is the sum of
the buckets of the last `window`. Over the quota, new HTTP requests get a 429 page with
Retry-After (:func:`admitting`), and WebSockets and SSH connections are stopped with a
message (the traffic tick asks :meth:`Quota.over` for each open one).

When the store cannot be reached the quota lets traffic through (and says so once): a
Redis outage must not lock every user out.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from studios_gateway.durations import format_duration
from studios_gateway.http import pages
from studios_gateway.registry.base import TransferCounts

__all__ = ["Over", "Quota", "QuotaSettings", "admitting", "format_bytes"]

#: How long a node trusts the counts it read for a scope before reading them again.
FRESH = 1.0


@dataclass(frozen=True)
class QuotaSettings:
    window: float = 86400.0
    user_bytes: int | None = None
    session_bytes: int | None = None
    buckets: int = 12  # the window is counted in this many slices

    @property
    def enabled(self) -> bool:
        return self.user_bytes is not None or self.session_bytes is not None

    @property
    def bucket_seconds(self) -> float:
        return self.window / self.buckets


@dataclass(frozen=True)
class Over:
    scope: str  # "user" or "session"
    name: str  # the user or the session id
    used: int
    limit: int
    retry_after: float  # seconds until enough of the window has passed

    @property
    def wait(self) -> int:
        """`retry_after` in whole seconds, at least 1: what people and Retry-After see."""
        return max(1, round(self.retry_after))

    @property
    def message(self) -> str:
        return (f"transfer quota reached: {self.scope} {self.name} moved "
                f"{format_bytes(self.used)} of {format_bytes(self.limit)} allowed per "
                f"window; try again in {format_duration(self.wait)}")


def page_text(over: Over, window: float) -> str:
    """What the 429 page says, to the person: whose quota (theirs or the studio's), how
    much of how much in what time, and when the studio works again (the page reloads
    itself then). The log, the WebSocket close and SSH keep :attr:`Over.message`."""
    who = ("This studio has" if over.scope == "session"
           else f"You ({over.name}) have")
    return (f"{who} moved {format_bytes(over.used)} of the {format_bytes(over.limit)} "
            f"allowed in {format_duration(window)}, so the gateway holds the studio until "
            f"some of that time has passed. It works again in about "
            f"{format_duration(over.wait)}.")


def format_bytes(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


class Quota:
    _log = Logger()

    def __init__(self, settings: QuotaSettings, store: TransferCounts, clock: Any):
        self.settings = settings
        self.store = store
        self.clock = clock
        self._pending: dict[str, int] = {}  # scope key -> bytes not yet added to the store
        self._known: dict[str, tuple[int, list[int], float]] = {}  # key -> (first, counts, at)
        self._watched: dict[str, float] = {}  # key -> last asked about
        self._store_down = False

    # Keys and buckets -------------------------------------------------------------------------

    def _keys(self, session_id: str, user: str) -> list[tuple[str, str, str, int]]:
        """(key, scope, name, limit) of every quota that applies."""
        s = self.settings
        out = []
        if s.session_bytes is not None and session_id:
            out.append((f"session:{session_id}", "session", session_id, s.session_bytes))
        if s.user_bytes is not None and user:
            out.append((f"user:{user}", "user", user, s.user_bytes))
        return out

    def _buckets(self) -> list[int]:
        current = int(self.clock.seconds() // self.settings.bucket_seconds)
        return list(range(current - self.settings.buckets + 1, current + 1))

    # Counting ---------------------------------------------------------------------------------

    def add(self, session_id: str, user: str, n: int) -> None:
        if n <= 0:
            return
        for key, *_ in self._keys(session_id, user):
            self._pending[key] = self._pending.get(key, 0) + n
            self._watched[key] = self.clock.seconds()

    def flush(self) -> Deferred[None]:
        """Add what this node counted to the store, then read the watched scopes again."""
        pending, self._pending = self._pending, {}
        buckets = self._buckets()
        d: Deferred[Any] = defer.succeed(None)
        if pending:
            d = defer.maybeDeferred(self.store.add_transfer, pending, buckets[-1],
                                    self.settings.window + self.settings.bucket_seconds)
            d.addErrback(self._store_failed, "count transfers")
        now = self.clock.seconds()
        for key in [k for k, at in self._watched.items() if now - at > self.settings.window]:
            del self._watched[key]
            self._known.pop(key, None)
        watched = list(self._watched)
        if watched:
            d.addCallback(lambda _: self._read(watched, buckets))
        return d.addCallback(lambda _: None)

    def _read(self, keys: list[str], buckets: list[int]) -> Deferred[None]:
        d = defer.maybeDeferred(self.store.get_transfer, keys, buckets)

        def got(counts: dict[str, list[int]]) -> None:
            self._store_down = False
            now = self.clock.seconds()
            for key, values in counts.items():
                self._known[key] = (buckets[0], values, now)

        return d.addCallbacks(got, self._store_failed, errbackArgs=("read transfer counts",))

    def _store_failed(self, f: Failure, what: str) -> None:
        if not self._store_down:
            self._store_down = True
            self._log.warn("transfer quota: cannot {what} ({why}); traffic is let through "
                           "until the store answers", what=what, why=f.getErrorMessage())

    # Deciding ---------------------------------------------------------------------------------

    def _over(self, key: str, scope: str, name: str, limit: int) -> Over | None:
        known = self._known.get(key)
        pending = self._pending.get(key, 0)
        first, counts = (known[0], list(known[1])) if known else (self._buckets()[-1], [0])
        counts[-1] += pending
        used = sum(counts)
        if used < limit:
            return None
        s = self.settings
        remaining = used
        retry = s.window
        for i, c in enumerate(counts):
            remaining -= c
            if remaining < limit:
                # bucket first+i leaves the window once `buckets` slices have begun after it
                retry = (first + i + s.buckets) * s.bucket_seconds - self.clock.seconds()
                break
        return Over(scope, name, used, limit, max(1.0, retry))

    def over(self, session_id: str, user: str) -> Over | None:
        """The first quota of the session or the user that is used up, from what this node
        knows now (read at most a second ago)."""
        for key, scope, name, limit in self._keys(session_id, user):
            self._watched[key] = self.clock.seconds()
            over = self._over(key, scope, name, limit)
            if over is not None:
                return over
        return None

    def clear_now(self, session_id: str, user: str) -> bool:
        """True when counts read within the last second show no quota used up (the HTTP
        proxy's fast path may go on); False sends the request through :meth:`check`."""
        now = self.clock.seconds()
        for key, *_ in self._keys(session_id, user):
            self._watched[key] = now
            if now - self._known.get(key, (0, [], -FRESH))[2] >= FRESH:
                return False
        return self.over(session_id, user) is None

    def check(self, session_id: str, user: str) -> Deferred[Over | None]:
        """Like :meth:`over`, reading the counts first when they are not fresh (a request
        may be the first this node sees of a user who used the quota elsewhere)."""
        keys = self._keys(session_id, user)
        now = self.clock.seconds()
        stale = [k for k, *_ in keys if now - self._known.get(k, (0, [], -FRESH))[2] >= FRESH]
        for key, *_ in keys:
            self._watched[key] = now
        if not stale:
            return defer.succeed(self.over(session_id, user))
        d = self._read(stale, self._buckets())
        return d.addCallback(lambda _: self.over(session_id, user))

    # The admin API ----------------------------------------------------------------------------

    def usage(self, scope: str, name: str) -> Deferred[dict[str, Any]]:
        """Bytes used in the window by one session or user, with its limit."""
        key = f"{scope}:{name}"
        limit = self.settings.session_bytes if scope == "session" else self.settings.user_bytes
        buckets = self._buckets()
        d = defer.maybeDeferred(self.store.get_transfer, [key], buckets)

        def shape(counts: dict[str, list[int]]) -> dict[str, Any]:
            used = sum(counts.get(key, [])) + self._pending.get(key, 0)
            over = self._over(key, scope, name, limit) if limit is not None else None
            return {scope: name, "used_bytes": used, "limit_bytes": limit,
                    "window_seconds": self.settings.window,
                    "over": over is not None,
                    "retry_after": round(over.retry_after) if over else None}

        return d.addCallback(shape)

    def reset(self, scope: str, name: str) -> Deferred[None]:
        key = f"{scope}:{name}"
        self._pending.pop(key, None)
        self._known.pop(key, None)
        return defer.maybeDeferred(self.store.reset_transfer, key, self._buckets())


def admitting(authorize: Callable[[Any, str], Deferred[Any]], quota: Quota,
              refused: Callable[[Over], None]) -> Callable[[Any, str], Deferred[Any]]:
    """`authorize` for the HTTP proxy, then the quota: a 429 page with Retry-After for a
    user or session over its quota (`refused` is told)."""

    def check(request: Any, session_id: str) -> Deferred[Any]:
        def authorized(who: Any) -> Any:
            if not hasattr(who, "subject"):
                return who  # a refusal of the authorizer's own

            def decided(over: Over | None) -> Any:
                if over is None:
                    return who
                refused(over)
                wait = over.wait
                page = pages.page(429, "Transfer quota reached",
                                  page_text(over, quota.settings.window),
                                  session_id=session_id, refresh=wait,
                                  extra=((b"Retry-After", b"%d" % wait),))
                # The access line names the user and which quota (not "too many requests").
                return replace(page, user=who.subject, why=over.message)

            return quota.check(session_id, who.subject).addCallback(decided)

        return defer.maybeDeferred(authorize, request, session_id).addCallback(authorized)

    return check
