"""What a person is told when their studio is not connected: still starting, failed to
start, or stopped (or lost) after it was connected, and what to do next.

The facts come from the registry (:class:`~studios_gateway.registry.base.Seen`, written
at bind and unbind, and the session's creation time), fetched only when such an answer
is about to be given (the HTTP page, the SSH refusal, the admin API), never per request;
:func:`fetch_away` bounds the wait and gives None when the facts are unknown or late,
and the caller then says what it said before (starting or stopped, it cannot tell).
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from studios_gateway.registry.base import RegistryError, Seen

__all__ = ["BACK_WITHIN", "STARTING_FOR", "Away", "Case", "clock_time", "describe", "fetch_away",
           "last_seen", "restart_where", "state_words"]

_log = Logger()

#: A studio that has not connected this long after its session was made is said to
#: have perhaps failed to start (one that starts connects within about a minute).
STARTING_FOR = 5 * 60.0
#: An unbind this recent may be a tunnel that broke (a network cut, a ping timeout, its
#: gateway node stopped), not a studio that was stopped: studios-connect binds again by
#: itself, within seconds (docs/operators.md, "Reconnects are spread out"). The page then
#: says both and reloads as often as for a studio starting.
BACK_WITHIN = 60.0
#: How long the not-connected answer waits for the registry's facts before it says
#: what it says without them.
FETCH_TIMEOUT = 1.0


class Case(enum.Enum):
    """Which of the not-connected cases it is (the admin API shows the value)."""

    STARTING = "starting"  # never connected, session made recently
    NEVER_CONNECTED = "never connected"  # never connected, for longer than STARTING_FOR
    STOPPED = "stopped"  # its tunnel was released (the studio ended or was stopped)
    LOST = "lost"  # it connected, and the claim expired with no unbind (its node ended)


@dataclass(frozen=True)
class Away:
    """A not-connected studio's case and the sentence for a person; `since` is when it
    was last connected (the unbind; for LOST the bind; None when it never was)."""

    case: Case
    text: str
    since: float | None
    #: The studio may well connect within seconds (starting, or its tunnel just broke):
    #: the page reloads often.
    soon: bool = False


def state_words(away: dict[str, Any] | None, now: float) -> str:
    """A session's state in a few words, from the admin API's "away" (a dict, None when
    the gateway cannot tell): for `studios-gateway sessions`."""
    if not isinstance(away, dict):
        return "not connected"
    case, since = away.get("case"), away.get("since")
    when = clock_time(since, now) if isinstance(since, int | float) else ""
    if case == Case.STOPPED.value and when:
        return f"not connected (was connected until {when})"
    if case == Case.LOST.value and when:
        return f"not connected (connection lost, connected at {when})"
    if case == Case.STARTING.value:
        return "not connected (not yet: starting)"
    if case == Case.NEVER_CONNECTED.value:
        return "not connected (never connected: failed to start?)"
    return "not connected"


def restart_where(platform_url: str | None) -> str:
    """Where a person starts a studio again: the Platform, by its address when known."""
    where = "the Studios tab of its workspace in Seqera Platform"
    return f"{where} ({platform_url})" if platform_url else where


def _ago(seconds: float) -> str:
    seconds = max(0.0, seconds)
    minutes = int(seconds // 60)
    if minutes < 1:
        return "less than a minute"
    if minutes < 120:
        return f"{minutes} minute{'s' if minutes != 1 else ''}"
    hours = minutes // 60
    if hours < 48:
        return f"{hours} hours"
    return f"{hours // 24} days"


def clock_time(when: float, now: float) -> str:
    """HH:MM UTC, with the date when it is not today's (UTC)."""
    t, today = time.gmtime(when), time.gmtime(now)
    if t[:3] == today[:3]:
        return time.strftime("%H:%M UTC", t)
    return time.strftime("%Y-%m-%d %H:%M UTC", t)


def describe(seen: Seen | None, created_at: float | None, now: float,
             where: str, studio: str = "The studio", claimed: bool = False) -> Away | None:
    """The case and its words (one line: fits an SSH refusal), the subject `studio`;
    None when the registry recorded nothing (`seen` None), so the caller keeps its words
    for "cannot tell". `claimed`: the registry still has the studio's claim, refreshed
    within its TTL, though the studio could not be reached (its tunnel just broke, or its
    node stopped): lost moments ago, whenever it connected."""
    if seen is None:
        return None
    if claimed:
        when = "" if seen.bound_at is None else \
            f" (connected at {clock_time(seen.bound_at, now)})"
        return Away(Case.LOST,
                    f"{studio} lost its connection to the gateway moments ago{when}: it comes "
                    f"back by itself within seconds; if it does not, restart it from "
                    f"{where}.", seen.bound_at, soon=True)
    if seen.bound_at is None:
        if created_at is None:
            return None
        age = now - created_at
        if age <= STARTING_FOR:
            return Away(Case.STARTING,
                        f"{studio} has not connected yet (its session was made "
                        f"{_ago(age)} ago): it is probably still starting.", None, soon=True)
        return Away(Case.NEVER_CONNECTED,
                    f"{studio} has not connected in the {_ago(age)} since its session "
                    f"was made: it may have failed to start. Restart it from {where}.", None)
    if seen.unbound_at is not None and seen.unbound_at >= seen.bound_at:
        until = seen.unbound_at
        if now - until < BACK_WITHIN:
            return Away(Case.STOPPED,
                        f"{studio} was connected until {clock_time(until, now)} "
                        f"({_ago(now - until)} ago): if only its connection broke, it comes "
                        f"back by itself within seconds; if it was stopped, restart it from "
                        f"{where}.", until, soon=True)
        return Away(Case.STOPPED,
                    f"{studio} was connected until {clock_time(until, now)} "
                    f"({_ago(now - until)} ago) and has not come back: if you did not stop "
                    f"it, restart it from {where}.", until)
    bound = seen.bound_at
    return Away(Case.LOST,
                f"{studio} connected at {clock_time(bound, now)} ({_ago(now - bound)} "
                f"ago), then its connection was lost and it has not come back: if you did "
                f"not stop it, restart it from {where}.", bound)


def last_seen(store: Any, session_id: str) -> Deferred[Seen | None]:
    """What `store` recorded of when the session's studio was last connected (its
    ``last_connected``); None when it recorded nothing, has no such method (an older
    store) or cannot say now (a RegistryError)."""
    reader = _seen_reader(store)
    return defer.succeed(None) if reader is None else _read_seen(reader, session_id)


def _seen_reader(store: Any) -> Callable[[str], Deferred[Seen | None]] | None:
    """The store's ``last_connected``; None for an older store without it."""
    return getattr(store, "last_connected", None)


def _read_seen(reader: Callable[[str], Deferred[Seen | None]],
               session_id: str) -> Deferred[Seen | None]:
    def cannot_say(f: Failure) -> None:
        f.trap(RegistryError)
        return None

    return defer.maybeDeferred(reader, session_id).addErrback(cannot_say)


def fetch_away(store: Any, session_id: str, clock: IReactorTime, where: str,
               timeout: float = FETCH_TIMEOUT, studio: str = "The studio"
               ) -> Deferred[Away | None]:
    """The session's :class:`Away` from `store` (its ``get``, ``last_connected`` and, when
    it has one, ``get_tunnel``: a claim still there is a studio lost moments ago), within
    `timeout` seconds; None, never a failure, when the store has no such method (an older
    one), does not answer in time, fails, or recorded nothing."""
    reader = _seen_reader(store)
    if reader is None:
        return defer.succeed(None)
    get_tunnel = getattr(store, "get_tunnel", None)
    claim: Deferred[Any] = (defer.succeed(None) if get_tunnel is None else
                            defer.maybeDeferred(get_tunnel, session_id))
    claim.addErrback(lambda _: None)  # (not known to be claimed: what the record says)
    both = defer.gatherResults([defer.maybeDeferred(store.get, session_id),
                                _read_seen(reader, session_id), claim],
                               consumeErrors=True)
    both.addTimeout(timeout, clock)

    def worded(found: list[Any]) -> Away | None:
        record, seen, holder = found
        if record is None:
            return None
        return describe(seen, record.created_at, clock.seconds(), where, studio,
                        claimed=holder is not None)

    def unknown(f: Failure) -> None:
        _log.debug("not saying why studio {sid} is not connected: {why}", sid=session_id,
                   why=f.getErrorMessage())
        return None

    return both.addCallback(worded).addErrback(unknown)
