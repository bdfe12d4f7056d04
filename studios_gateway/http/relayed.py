"""Upgraded connections this node relays to another node's tunnel, ended when their
studio moves.

A WebSocket whose studio's tunnel another node holds runs over a peer stream into that
node's tunnel. When the studio moves (its node drains, or it reconnects to another
node), the old holder keeps serving the streams it has until they end or its
``CONNECT_SHUTDOWN_GRACE`` runs out: such a WebSocket would stay on the old tunnel, hold
that node's drain for the whole grace, and then be closed a second time. So the proxy
keeps, per session, the upgraded connections it relays with the holder their stream was
opened to; when the registry says the session changed, the holder is asked again, and
each connection whose holder is no longer the session's is ended (the proxy closes a
WebSocket with 1012: the page reconnects, to the new holder). No holder at all (the
studio between two binds) keeps them: they may still be served by the old tunnel.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

__all__ = ["Relayed"]

#: Registry look-ups in flight at once (as the tunnel table's CHECKS_IN_FLIGHT).
LOOKUPS_IN_FLIGHT = 16
#: (the holder's node address, its tunnel id): one tunnel of one node.
_Key = tuple[str, str]


def _key(holder: Any) -> _Key:
    return (holder.node_address, holder.tunnel_id)


class Relayed:
    """The upgraded connections relayed to other nodes, by session.

    ``holder_of(session_id) -> Deferred[TunnelHolder | None]`` is the registry's (cached)
    ``get_tunnel``; :meth:`changed` is its ``subscribe`` callback, called after the
    cache dropped the session's entry."""

    _log = Logger()

    def __init__(self, holder_of: Callable[[str], Deferred[Any]]):
        self._holder_of = holder_of
        # At most this many look-ups at once: "anything may have changed" (the registry's
        # events lost) asks for every session kept, which may be thousands.
        self._in_flight = defer.DeferredSemaphore(LOOKUPS_IN_FLIGHT)
        self._by_session: dict[str, dict[object, tuple[_Key, Callable[[], None]]]] = {}

    def __len__(self) -> int:
        return sum(len(conns) for conns in self._by_session.values())

    def add(self, session_id: str, holder: Any, end: Callable[[], None]) -> Callable[[], None]:
        """Keep an upgraded connection of `session_id` relayed to `holder` (the registry's
        TunnelHolder its stream was opened to); `end()` ends it once the studio moved.
        Returns the function that forgets it (call it when the connection ends). The
        session is checked at once too: a move heard between the stream's opening and
        its upgrade would otherwise go unnoticed."""
        token = object()
        self._by_session.setdefault(session_id, {})[token] = (_key(holder), end)

        def release() -> None:
            conns = self._by_session.get(session_id)
            if conns is not None:
                conns.pop(token, None)
                if not conns:
                    del self._by_session[session_id]

        self._check(session_id)
        return release

    def changed(self, session_id: str | None) -> None:
        """The registry heard a change of `session_id` (None: any session may have
        changed, changes may have been missed)."""
        if session_id is None:
            for sid in list(self._by_session):
                self._check(sid)
        elif session_id in self._by_session:
            self._check(session_id)

    def _check(self, session_id: str) -> None:
        d = self._in_flight.run(self._holder_of, session_id)
        d.addCallbacks(self._heard, self._unknown, callbackArgs=(session_id,),
                       errbackArgs=(session_id,))

    def _unknown(self, failure: Failure, session_id: str) -> None:
        # The registry is away: keep them (the old tunnel may well serve them still); the
        # next change heard asks again.
        self._log.debug("studio {sid}: its holder is not known now ({why}); relayed "
                        "connections kept", sid=session_id, why=failure.getErrorMessage())

    def _heard(self, holder: Any, session_id: str) -> None:
        conns = self._by_session.get(session_id)
        if holder is None or not conns:
            return
        now = _key(holder)
        moved = [(token, old, end) for token, (old, end) in conns.items() if old != now]
        if not moved:
            return
        for token, _, _ in moved:
            conns.pop(token, None)
        if not conns:
            del self._by_session[session_id]
        self._log.info("studio {sid} moved to node {node}: closing {n} WebSocket(s) "
                       "relayed to its old tunnel (pages reconnect to the new one)",
                       sid=session_id, node=holder.node_id, n=len(moved))
        for _, _, end in moved:
            try:
                end()
            except Exception:  # (the others are ended still; they are forgotten already)
                self._log.failure("closing a WebSocket of studio {sid} relayed to its old "
                                  "tunnel", sid=session_id)
