"""Two studios on one session: noticed, and said once a minute.

A bind replaces the session's tunnel on this node (a studio that reconnected before its
old connection was found dead), and the replaced one is told GoAway, which a connect
client answers by binding again at once. When two ``studios-connect`` run with the same
connect string (a copied container, an old one still running beside its successor),
each bind ends the other's tunnel: they took turns several times a second for as long as
both ran, requests went to either studio, and the log said only "a new tunnel replaces
the old one", eight times a second. A session whose tunnel is replaced
:data:`TIMES` times within :data:`WINDOW` seconds has two; one warning says so, with
both addresses, then at most one a minute.
"""

from __future__ import annotations

from typing import Any

from studios_gateway.repeats import Repeats

__all__ = ["TIMES", "WINDOW", "Twins", "peer_host"]

#: Replacements of one session's tunnel within WINDOW seconds that mean two studios
#: (one reconnect replaces once, and a studio on a bad path cannot find its tunnel dead
#: and bind again ten times a minute; two clients took turns eight times a second).
TIMES = 10
WINDOW = 60.0
#: Sessions whose recent replacements are remembered (the oldest are forgotten first).
MAX_SESSIONS = 1024


def peer_host(protocol: Any) -> str:
    """The address a tunnel's connection came from, as a log line names it."""
    transport = getattr(protocol, "transport", None)
    peer = transport.getPeer() if transport is not None else None
    host = getattr(peer, "host", None)
    return str(host) if host else "an unknown address"


class Twins:
    """Per session, the times its tunnel was replaced lately; `replaced` says when that
    is two studios taking turns."""

    def __init__(self, clock: Any) -> None:
        self._clock = clock
        self._times: dict[str, list[float]] = {}
        self._said = Repeats(clock, every=WINDOW, max_kinds=MAX_SESSIONS)

    def waiting(self, session_id: str, where: str, waiter_from: str) -> str | None:
        """The warning to log now that a studios-connect (from `waiter_from`) whose tunnel
        a newer bind took over waits for the one bound `where` ("from 10.0.0.8", "through
        node gw-2") to stop, or None (at most once a WINDOW per session, as `replaced`)."""
        unsaid = self._said.due(session_id)
        if unsaid is None:
            return None
        return (f"session {session_id}: a studios-connect from {waiter_from} waits for the "
                f"one bound {where} to stop (a newer bind took its tunnel over): "
                "two studios-connect run with this session's connect string (a copied "
                "container, or an old one still running; during an image update, until the "
                "old one has stopped). Stop one, or give it a session of its own "
                "(studios-gateway sessions create)" + self._said.more(unsaid))

    def replaced(self, session_id: str, old_from: str, new_from: str, told: int = 0
                 ) -> str | None:
        """The warning to log now that this session's tunnel (from `old_from`) was
        replaced by one from `new_from`, or None. `told`: how many times the binding
        client itself was told lately that a newer bind took its tunnel (GO_AWAY_REPLACED;
        a client that knows it waits 30-60 s before it binds again, too seldom for TIMES
        within WINDOW): one is two studios."""
        now = self._clock.seconds()
        # (0 <=: a wall clock set back would keep the times before the step, 'within'
        # the window for as long as the step, and count a studio's rare rebinds as two)
        times = [t for t in self._times.pop(session_id, ()) if 0 <= now - t < WINDOW]
        times = [*times, now][-TIMES:]
        self._times[session_id] = times
        while len(self._times) > MAX_SESSIONS:
            self._times.pop(next(iter(self._times)))
        if len(times) < TIMES and told < 1:
            return None
        unsaid = self._said.due(session_id)
        if unsaid is None:
            return None
        places = old_from if old_from == new_from else f"{old_from} and {new_from}"
        turns = (f"was replaced {len(times)} times in {now - times[0]:.0f}s"
                 if len(times) >= TIMES else
                 f"was taken back by a studios-connect whose tunnel another bind had taken "
                 f"{told} time{'s' if told > 1 else ''} lately")
        return (f"session {session_id}: its tunnel {turns}, each bind ending the other's "
                f"(from {places}): two studios-connect run with this session's connect "
                "string (a copied container, or an old one still running), and requests go "
                "to either. Stop one, or give it a session of its own (studios-gateway "
                "sessions create)" + self._said.more(unsaid))
