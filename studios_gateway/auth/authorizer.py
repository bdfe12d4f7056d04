"""Who may use which session: the per-request decision, its cache and revocation.

A user may use a session when the session's workspace passes
TOWER_DATA_STUDIO_ALLOWED_WORKSPACES and the user is its owner, is on its
allow-list, or the Platform answers yes to the access call (see
docs/login.md). Decisions are cached for LOCAL_CACHE_TTL on the given clock;
failures are not trusted for more than a few seconds and always deny.

Revocation: :meth:`Authorizer.revoke_user`, :meth:`Authorizer.logout` and
:meth:`Authorizer.session_ended` drop cached decisions and tell subscribers
(:meth:`Authorizer.subscribe`) so the HTTP proxy and the SSH server can close
live WebSockets and channels. Connections registered with
:meth:`Authorizer.track` are closed by the authorizer itself: at once on a
revocation, and otherwise when a re-check (on a registry change, and every
half TTL) no longer allows them. That sweep trusts no decision older than
half a TTL, so a change nobody tells the gateway about (the Platform's
answer) closes connections within one TTL.

Logouts are cluster-wide: :meth:`Authorizer.logout` records the login in the
store (`login_state`: Redis shared by every node, or this node's memory store),
which tells every node's authorizer; each keeps the ended logins it knows in
memory, so the per-request check (:meth:`Authorizer.is_logged_out`) asks
nobody. It reads them all again at start and whenever store events may have
been missed, and writes a logout the store could not take again later.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

from twisted.internet import defer, task
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from studios_gateway.auth.platform_http import PlatformCallFailed, PlatformHTTP
from studios_gateway.registry.base import SessionRecord
from studios_gateway.registry.memory import MemoryStore
from studios_gateway.registry.spent import SpentSet
from studios_gateway.tracked import Tracked

__all__ = ["LOGGED_OUT", "NOT_ALLOWED", "SESSION_ENDED", "WORKSPACE_REFUSED", "Authorizer",
           "Decision", "PlatformAccess", "PlatformUnavailable", "Revocation"]

#: How long a failure (store or Platform unreachable) is remembered, at most.
ERROR_TTL = 5.0
#: Seconds between attempts to write or read logouts while the store is unavailable.
LOGOUT_RETRY = 2.0
#: The decision's reason for a user with no claim on the session.
NOT_ALLOWED = "not allowed on this session"
#: The decision's reason when TOWER_DATA_STUDIO_ALLOWED_WORKSPACES leaves the session out.
WORKSPACE_REFUSED = "the session's workspace may not use studios"
#: Why a live connection closes when its session is deleted (an SSH user reads it).
SESSION_ENDED = "the session was ended"
#: Why a live connection closes when its login was logged out (here or on another node).
LOGGED_OUT = "logged out"


def no_longer_allowed(session_id: str) -> str:
    """Why an open connection closes when its user lost access (taken off the
    allow-list, or the Platform now says no): the same words on the node that made the
    change and on every other one."""
    return f"no longer allowed on session {session_id}"


class PlatformUnavailable(Exception):
    """The Platform's access call failed; the message is safe to log."""


@dataclass(frozen=True)
class Decision:
    """The answer for (session, user). `status` is the HTTP status to show when denied."""

    allowed: bool
    reason: str
    status: int = 200
    record: SessionRecord | None = None


@dataclass(frozen=True)
class Revocation:
    """Something that ends access. Fields left None match anything."""

    kind: str  # "user", "login", "session" or "recheck"
    session_id: str | None = None
    user: str | None = None
    login_id: str | None = None

    def matches(self, session_id: str, user: str, login_id: str | None = None) -> bool:
        if self.kind == "login":
            return login_id is not None and login_id == self.login_id
        return ((self.session_id is None or self.session_id == session_id)
                and (self.user is None or self.user == user))


class PlatformAccess(PlatformHTTP):
    """``GET {platform}/api/studios/{id}/access?user={user}`` with the gateway's client
    credentials (HTTP Basic); the answer is JSON ``{"allowed": true|false}``. 200 with
    allowed true means yes; 403 or 404 means no; anything else (no whole answer within
    the timeout, more than MAX_BODY bytes) is an error."""

    call_name = "the Platform's access calls"
    metric_label = "access"

    def url(self, session_id: str, user: str) -> str:
        return (f"{self._base}/api/studios/{quote(session_id, safe='')}/access?"
                + urlencode({"user": user}))

    def check(self, session_id: str, user: str) -> Deferred[bool]:
        return Deferred.fromCoroutine(self._check(session_id, user))

    async def _check(self, session_id: str, user: str) -> bool:
        try:
            yes = await self._ask(session_id, user)
        except PlatformUnavailable as e:
            self.failed(str(e), kind=str(e).replace(f" for {user} on {session_id}", "", 1))
            raise
        self.answered()
        return yes

    async def _ask(self, session_id: str, user: str) -> bool:
        what = f"the Platform's access call for {user} on {session_id}"
        try:
            code, raw = await self.fetch(self.url(session_id, user), what)
        except PlatformCallFailed as e:
            raise PlatformUnavailable(str(e)) from None
        if code in (403, 404):
            return False
        if code != 200:
            hint = "" if code != 401 else (
                ": check the gateway's OIDC client (its id and secret)"
                if self._credentials() is not None else
                ": the gateway has no OIDC client secret to send (the issuer has not "
                "answered since the start, or the client has none)")
            raise PlatformUnavailable(f"{what} answered HTTP {code}{hint}")
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        if not isinstance(body, dict) or not isinstance(body.get("allowed"), bool):
            raise PlatformUnavailable(f'{what} answered HTTP 200 without {{"allowed": '
                                      "true|false}")
        return bool(body["allowed"])


@dataclass
class _Live:
    session_id: str
    user: str
    login_id: str | None
    close: Callable[[str], Any]


class Authorizer:
    _log = Logger()

    def __init__(self, store: Any, *, clock: IReactorTime, ttl: float,
                 workspace_allowed: Callable[[str | None], bool],
                 platform: PlatformAccess | None = None, login_ttl: float = 12 * 3600,
                 max_entries: int = 100_000, login_state: Any = None):
        self._store = store
        self._clock = clock
        self.ttl = ttl
        self._workspace_allowed = workspace_allowed
        self._platform = platform
        self._max = max_entries
        #: (session, user) -> (expires at, decided at, decision); a decision made again
        #: is a new tuple, so a memo holding the tuple it rests on can tell, with one
        #: look-up and an identity test, that it still stands (Auth's fast path).
        self._cache: OrderedDict[tuple[str, str], tuple[float, float, Decision]] = OrderedDict()
        #: The same mapping, read-only for others (Auth's fast path).
        self.decisions: Mapping[tuple[str, str], tuple[float, float, Decision]] = self._cache
        self._inflight: dict[tuple[str, str], list[Deferred[Decision]]] = {}
        self._generation = 0
        #: Counts the revocations and the logouts (decisions forgotten, a login ended):
        #: a memo of answers (Auth's fast path) holds only while this has not moved and
        #: the decision it rests on is still the one in `decisions` (a decision made
        #: again or pushed out does not move this: it changes one answer, not all).
        self.changes = 0
        self._subscribers: list[Callable[[Revocation], Any]] = []
        self._live: Tracked[_Live] = Tracked()
        #: Where logouts and spent single-use ids are kept for every node: the store
        #: (or, for a store without them, this node's memory).
        self.login_state = login_state if login_state is not None else (
            store if hasattr(store, "spend_once") else MemoryStore(clock))
        #: The logins this node knows ended (its copy of the store's, for every request).
        self._logged_out = SpentSet(clock, max_entries)
        #: Logouts the store has not taken yet: login id -> until.
        self._unwritten: dict[str, float] = {}
        self._logout_sync: Any = None
        self._reading_failed = True  # quiet until the store has answered once (at start)
        self._unsubscribe_logouts: Callable[[], None] | None = None
        self._login_ttl = login_ttl
        self._unsubscribe_store: Callable[[], None] | None = None
        self._sweeper: task.LoopingCall | None = None

    @property
    def clock(self) -> IReactorTime:
        return self._clock

    @property
    def platform(self) -> PlatformAccess | None:
        """The Platform's access call, when PLATFORM_URL is set."""
        return self._platform

    # Lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        """Follow registry changes and re-check live connections every half TTL."""
        if hasattr(self._store, "subscribe") and self._unsubscribe_store is None:
            self._unsubscribe_store = self._store.subscribe(self._store_changed)
        if self._unsubscribe_logouts is None:
            self._unsubscribe_logouts = self.login_state.subscribe_logouts(self._logout_heard)
            self._sync_logouts()
        if self._sweeper is None and self.ttl > 0:
            half = self.ttl / 2
            self._sweeper = task.LoopingCall(lambda: self.recheck_live(max_age=half))
            self._sweeper.clock = self._clock
            self._sweeper.start(half, now=False).addErrback(
                lambda f: self._log.failure("the live-connection sweep failed", f))

    def stop(self) -> Deferred[None] | None:
        """Stop following the registry; closes the Platform client's connections."""
        if self._unsubscribe_store is not None:
            self._unsubscribe_store()
            self._unsubscribe_store = None
        if self._sweeper is not None and self._sweeper.running:
            self._sweeper.stop()
        self._sweeper = None
        if self._unsubscribe_logouts is not None:
            self._unsubscribe_logouts()
            self._unsubscribe_logouts = None
        if self._logout_sync is not None and self._logout_sync.active():
            self._logout_sync.cancel()
        self._logout_sync = None
        stop = getattr(self._platform, "stop", None)
        return stop() if stop is not None else None

    # The decision --------------------------------------------------------------------

    def check(self, session_id: str, user: str, *,
              max_age: float | None = None) -> Deferred[Decision]:
        """May `user` use `session_id` now? Never fails: errors deny (status 503).
        `max_age`: do not reuse a cached decision older than that (seconds)."""
        key = (session_id, user)
        now = self._clock.seconds()
        hit = self._cache.get(key)
        if hit is not None and hit[0] > now and (max_age is None or now - hit[1] < max_age):
            return defer.succeed(hit[2])
        waiting: Deferred[Decision] = Deferred()
        if key in self._inflight:
            self._inflight[key].append(waiting)
            return waiting
        self._inflight[key] = [waiting]
        generation = self._generation
        d = Deferred.fromCoroutine(self._decide(session_id, user))

        def done(result: Decision | Failure) -> None:
            if isinstance(result, Failure):
                self._log.failure("authorization of {user} on {session} failed", result,
                                  user=user, session=session_id)
                result = Decision(False, "authorization failed", 503)
            if generation == self._generation:  # nothing was revoked meanwhile
                ttl = self.ttl if result.status in (200, 403, 404) else min(self.ttl, ERROR_TTL)
                self._remember(key, result, ttl)
            for w in self._inflight.pop(key, []):
                w.callback(result)

        d.addBoth(done)
        return waiting

    def cached(self, session_id: str, user: str) -> Decision | None:
        """The decision `check` would give at once, if it has one (no Deferred)."""
        hit = self.cached_entry(session_id, user)
        return hit[2] if hit is not None else None

    def cached_entry(self, session_id: str, user: str
                     ) -> tuple[float, float, Decision] | None:
        """`cached`'s decision as `decisions` holds it, (expires at, decided at,
        decision): given while the clock reads less than its first field, unless
        `changes` moves or the entry is replaced first."""
        hit = self._cache.get((session_id, user))
        if hit is not None and hit[0] > self._clock.seconds():
            return hit
        return None

    def _remember(self, key: tuple[str, str], decision: Decision, ttl: float) -> None:
        if ttl <= 0:
            return
        now = self._clock.seconds()
        self._cache.pop(key, None)
        self._cache[key] = (now + ttl, now, decision)
        while len(self._cache) > self._max:
            self._cache.popitem(last=False)

    async def _decide(self, session_id: str, user: str) -> Decision:
        from studios_gateway.registry.base import StoreUnavailable

        try:
            record = await defer.maybeDeferred(self._store.get, session_id)
        except StoreUnavailable as e:
            return Decision(False, f"session registry unavailable: {e.reason}", 503)
        if record is None:
            return Decision(False, "no such session", 404)
        if not self._workspace_allowed(record.workspace_id):
            return Decision(False, WORKSPACE_REFUSED, 403, record)
        if user == record.owner:
            return Decision(True, "owner", 200, record)
        if user in record.allowed_users:
            return Decision(True, "allow-list", 200, record)
        if self._platform is not None:
            try:
                yes = await self._platform.check(session_id, user)
            except PlatformUnavailable:  # logged by the Platform client, not one line each
                return Decision(False, "the Platform could not be asked", 503, record)
            if yes:
                return Decision(True, "platform", 200, record)
        return Decision(False, NOT_ALLOWED, 403, record)

    # Revocation ------------------------------------------------------------------------

    def subscribe(self, callback: Callable[[Revocation], Any]) -> Callable[[], None]:
        """Call `callback(revocation)` on every revocation; returns an unsubscribe."""
        self._subscribers.append(callback)

        def unsubscribe() -> None:
            if callback in self._subscribers:
                self._subscribers.remove(callback)

        return unsubscribe

    def _forget(self, session_id: str | None = None, user: str | None = None) -> None:
        self._generation += 1
        self.changes += 1
        for key in [k for k in self._cache
                    if (session_id is None or k[0] == session_id)
                    and (user is None or k[1] == user)]:
            del self._cache[key]

    def _notify(self, revocation: Revocation) -> None:
        for cb in list(self._subscribers):
            try:
                cb(revocation)
            except Exception:
                self._log.failure("a revocation subscriber failed")
        for handle, live in list(self._live.items()):
            if revocation.kind != "recheck" and revocation.matches(
                    live.session_id, live.user, live.login_id):
                self._close(handle, SESSION_ENDED if revocation.kind == "session"
                            else LOGGED_OUT if revocation.kind == "login"
                            else no_longer_allowed(live.session_id))

    def revoke_user(self, session_id: str, user: str) -> None:
        """`user` lost access to `session_id` (e.g. taken off its allow-list)."""
        self._forget(session_id, user)
        self._notify(Revocation("user", session_id=session_id, user=user))

    def logout(self, login_id: str) -> None:
        """Every cookie of this login stops working and its live connections close, here
        at once and on every node that shares the store as soon as it hears."""
        until = self._clock.seconds() + self._login_ttl
        self._ended(login_id, until)
        self._write_logout(login_id, until)

    def is_logged_out(self, login_id: str) -> bool:
        return login_id in self._logged_out

    def _ended(self, login_id: str, until: float) -> None:
        """A login ended (here or on another node): refuse it, close its connections."""
        if login_id in self._logged_out:
            return
        self._logged_out.spend(login_id, until)
        self._generation += 1
        self.changes += 1
        self._notify(Revocation("login", login_id=login_id))

    def _logout_heard(self, login_id: str | None) -> None:
        if login_id is None:  # logouts may have been missed: read them all again
            self._sync_logouts()
        else:
            self._ended(login_id, self._clock.seconds() + self._login_ttl)

    def _write_logout(self, login_id: str, until: float) -> None:
        ttl = until - self._clock.seconds()
        if ttl <= 0:
            self._unwritten.pop(login_id, None)
            return

        def written(_: Any) -> None:
            self._unwritten.pop(login_id, None)

        def failed(f: Failure) -> None:
            if f.check(ValueError):  # not a login id the store takes: never will be
                self._log.warn("a logout was not shared: {why}", why=f.getErrorMessage())
                self._unwritten.pop(login_id, None)
                return
            if login_id not in self._unwritten:
                self._log.warn("a logout could not be shared with the other nodes "
                               "({why}); trying again", why=f.getErrorMessage())
            self._unwritten[login_id] = until
            while len(self._unwritten) > self._max:
                self._unwritten.pop(next(iter(self._unwritten)))
            self._retry_logouts()

        defer.maybeDeferred(self.login_state.log_out, login_id, ttl).addCallbacks(
            written, failed)

    def _retry_logouts(self) -> None:
        if self._unsubscribe_logouts is not None and (
                self._logout_sync is None or not self._logout_sync.active()):
            self._logout_sync = self._clock.callLater(LOGOUT_RETRY, self._sync_logouts)

    def _sync_logouts(self) -> None:
        """Write the logouts the store missed; learn every logout it has."""
        if self._logout_sync is not None and self._logout_sync.active():
            self._logout_sync.cancel()
        self._logout_sync = None
        for login_id, until in list(self._unwritten.items()):
            self._write_logout(login_id, until)

        def loaded(live: dict[str, float]) -> None:
            self._reading_failed = False
            now = self._clock.seconds()
            for login_id, ttl in live.items():
                self._ended(login_id, now + ttl)

        def failed(f: Failure) -> None:
            if not self._reading_failed:  # once per outage
                self._log.warn("cannot read the logouts of other nodes yet ({why}); "
                               "trying again", why=f.getErrorMessage())
            self._reading_failed = True
            self._retry_logouts()

        defer.maybeDeferred(self.login_state.logged_out).addCallbacks(loaded, failed)

    def session_ended(self, session_id: str) -> None:
        self._forget(session_id)
        self._notify(Revocation("session", session_id=session_id))

    def _store_changed(self, session_id: str | None) -> None:
        self._forget(session_id)
        self._notify(Revocation("recheck", session_id=session_id))
        self.recheck_live(session_id)

    # Live connections -------------------------------------------------------------------

    def track(self, session_id: str, user: str, close: Callable[[str], Any],
              login_id: str | None = None) -> Callable[[], None]:
        """Register a live WebSocket or SSH channel; `close(reason)` is called when access
        ends. Returns the function to call when the connection closes by itself."""
        return self._live.add(_Live(session_id, user, login_id, close))

    @property
    def live_count(self) -> int:
        return len(self._live)

    def _close(self, handle: int, reason: str) -> None:
        live = self._live.pop(handle, None)
        if live is None:
            return
        self._log.info("closing a connection of {user} to {session}: {reason}",
                       user=live.user, session=live.session_id, reason=reason)
        try:
            live.close(reason)
        except Exception:
            self._log.failure("closing a revoked connection failed")

    def recheck_live(self, session_id: str | None = None, *,
                     max_age: float | None = None) -> Deferred[None]:
        """Re-decide every tracked connection (of one session); close those now denied.
        `max_age` as for :meth:`check`."""
        checks = []
        for handle, live in list(self._live.items()):
            if session_id is not None and live.session_id != session_id:
                continue
            if live.login_id is not None and self.is_logged_out(live.login_id):
                self._close(handle, LOGGED_OUT)
                continue

            def decided(decision: Decision, handle: int = handle,
                        sid: str = live.session_id) -> None:
                if not decision.allowed and decision.status != 503:
                    # 404: the session was deleted while the connection was open.
                    self._close(handle, SESSION_ENDED if decision.status == 404
                                else no_longer_allowed(sid)
                                if decision.reason == NOT_ALLOWED else decision.reason)

            checks.append(self.check(live.session_id, live.user, max_age=max_age)
                          .addCallback(decided))
        return defer.gatherResults(checks).addCallback(lambda _: None)
