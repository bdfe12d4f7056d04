"""What the proxy needs from the rest of the gateway: a way to reach a studio's tool,
what is known about a session, and who the user is. Plus the idle connection pool.

``Upstream.connect(session_id, factory)`` works like
``IStreamClientEndpoint.connect``: it builds one protocol with
``factory.buildProtocol(addr)``, connects it to a byte stream that reaches the
tool of that session, and fires with the protocol once ``makeConnection`` has
been called. The stream's transport must be an ``IPushProducer`` and accept
``registerProducer`` (a TCP transport or a mux stream). It fails with
:class:`StudioNotConnected` when no tunnel is bound, :class:`ToolNotAnswering`
when the tool refuses or does not accept in time; anything else is a 502.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IProtocol, IProtocolFactory
from twisted.logger import Logger

__all__ = [
    "Authorize",
    "EndpointUpstream",
    "FastPath",
    "IdlePool",
    "Lookup",
    "SessionInfo",
    "StudioNotConnected",
    "ToolNotAnswering",
    "Track",
    "Upstream",
]


class StudioNotConnected(Exception):
    """No tunnel is bound for the session (the studio is starting or stopped), or none
    that this node can reach: `detail` says so for the access line ("node gw-3
    unreachable (...)": the studio may well be connected, to a node this one cannot
    reach)."""

    def __init__(self, *args: object, detail: str = ""):
        super().__init__(*args)
        self.detail = detail


class ToolNotAnswering(Exception):
    """The tunnel is up but the tool did not accept the connection."""


@dataclass(slots=True)
class SessionInfo:
    """Not frozen: the fast path makes one per request (a frozen dataclass sets each field
    through ``object.__setattr__``); none is changed once made."""

    id: str
    tool: str  # jupyter, rstudio, vscode, xpra, ...
    connected: bool  # a tunnel is bound somewhere


class Upstream(Protocol):
    def connect(self, session_id: str, factory: IProtocolFactory) -> Deferred[IProtocol]:
        ...


# lookup(session_id) -> Deferred[SessionInfo | None]
Lookup = Callable[[str], "Deferred[SessionInfo | None]"]
# authorize(request: auth.login.RequestInfo, session_id) -> Deferred[identity | refusal]:
# an identity has `.subject`; a refusal has `.status`, `.headers`, `.body` and is sent as is.
Authorize = Callable[[Any, str], "Deferred[Any]"]
# fast(request, session_id) -> (identity, SessionInfo) | None: not a gateway route, the
# login and the decision cached, the session known; None when any of it needs waiting.
FastPath = Callable[[Any, str], "tuple[Any, SessionInfo] | None"]
# track(session_id, identity, close(reason)) -> release(): an upgraded connection (a
# WebSocket) is registered while it lives, so that revoking access can close it.
Track = Callable[[str, Any, Callable[[str], Any]], Callable[[], Any]]


class EndpointUpstream:
    """An Upstream from ``endpoint_for(session_id) -> IStreamClientEndpoint | None``
    (None: not connected). Tests use TCP endpoints; connection refused maps to
    :class:`ToolNotAnswering`."""

    def __init__(self, endpoint_for: Callable[[str], Any]):
        self._endpoint_for = endpoint_for

    def connect(self, session_id: str, factory: IProtocolFactory) -> Deferred[IProtocol]:
        from twisted.internet.error import ConnectError

        endpoint = self._endpoint_for(session_id)
        if endpoint is None:
            d: Deferred[IProtocol] = Deferred()
            d.errback(StudioNotConnected(session_id))
            return d

        def refused(f: Any) -> Any:
            if f.check(ConnectError):
                raise ToolNotAnswering(str(f.value))
            return f

        return endpoint.connect(factory).addErrback(refused)


class Poolable(Protocol):
    #: The pool's entry while idle in it (set by IdlePool.put; take(prefer=) looks it up).
    pool_entry: Any
    #: IdlePool.epoch when the connection was asked for (before the holder was looked up).
    pool_epoch: int

    def close(self) -> None: ...

    def fit_for_reuse(self) -> bool: ...


class IdlePool:
    """Idle upstream connections, per session, most recently used first.

    At most ``max_idle`` per session; each is closed after ``idle_timeout``
    seconds unused (keep it below the tools' own keep-alive timeouts: Node's is
    5 s). A connection is put back only after a complete exchange that left it
    keep-alive; the caller decides that.

    Each connection keeps its deadline, not a timer: putting one back and taking
    it again (every keep-alive request) costs no DelayedCall. One timer per pool
    (at the earliest deadline, at most every ``idle_timeout / SWEEPS`` seconds)
    closes the expired ones; ``take`` never hands out one past its deadline, so a
    late sweep only keeps a connection open a little longer.
    """

    _log = Logger()
    #: At most this many sweeps per idle_timeout (each looks at every session's oldest).
    SWEEPS = 8
    #: Seconds a session's drop is remembered, for its connections that were busy then
    #: and come back later (one busy for longer is kept as before).
    REMEMBER_DROPS = 600.0

    def __init__(self, clock: Any, *, max_idle: int, idle_timeout: float):
        self._clock = clock
        self.max_idle = max_idle
        self.idle_timeout = idle_timeout
        self._idle: dict[str, deque[tuple[Poolable, float]]] = {}
        self._sweep_call: IDelayedCall | None = None
        #: Counts drops; a connection carries the count of when it was asked for.
        self.epoch = 0
        #: Each session's last drop: (epoch, when); and the last drop of every session.
        self._dropped: dict[str, tuple[int, float]] = {}
        self._dropped_all = 0
        self._pruned_at = clock.seconds()

    def take(self, session_id: str, prefer: Poolable | None = None) -> Poolable | None:
        """The most recently used idle connection still fit for reuse (those that no
        longer are, e.g. on a tunnel retired since or past their deadline, are closed
        on the way); `prefer` first if it is idle here, within its deadline and fit (a
        client's own previous connection, still wired to it)."""
        conns = self._idle.get(session_id)
        if not conns:
            return None
        now = self._clock.seconds()
        if prefer is not None:
            entry = prefer.pool_entry
            if (entry is not None and entry is not conns[-1] and entry[1] > now
                    and entry in conns and prefer.fit_for_reuse()):
                conns.remove(entry)  # (a C-level scan; identity matches first)
                prefer.pool_entry = None
                return prefer
        found: Poolable | None = None
        closing: list[Poolable] = []
        while conns:
            conn, deadline = conns.pop()
            if deadline <= now:  # and every older one too
                closing.append(conn)
                closing.extend(c for c, _ in conns)
                conns.clear()
            elif conn.fit_for_reuse():
                found = conn
                break
            else:
                closing.append(conn)
        if not conns:
            del self._idle[session_id]
        for conn in closing:  # (closing may call discard: the pool is consistent by now)
            conn.close()
        return found

    def put(self, session_id: str, conn: Poolable) -> bool:
        """Keep `conn` idle; False (and nothing kept) when the session's pool is full, or
        when its connections were let go (drop) since `conn` was asked for: busy then, it
        may lead to the old holder (a peer stream into a tunnel retired since, which would
        serve every request to the end of that node's drain)."""
        dropped = self._dropped.get(session_id)
        if conn.pool_epoch < self._dropped_all or (dropped and conn.pool_epoch < dropped[0]):
            return False
        conns = self._idle.get(session_id)
        if conns is None:
            if self.max_idle <= 0:
                return False
            conns = self._idle[session_id] = deque()
        elif len(conns) >= self.max_idle:
            return False
        deadline = self._clock.seconds() + self.idle_timeout
        conn.pool_entry = entry = (conn, deadline)
        conns.append(entry)
        if self._sweep_call is None:
            self._sweep_call = self._clock.callLater(self.idle_timeout, self._sweep)
        return True

    def discard(self, session_id: str, conn: Poolable) -> None:
        conns = self._idle.get(session_id)
        if not conns:
            return
        for entry in list(conns):
            if entry[0] is conn:
                conns.remove(entry)
        if not conns:
            del self._idle[session_id]

    def _sweep(self) -> None:
        """Close what is past its deadline; come back at the next one (not sooner than
        idle_timeout / SWEEPS) while anything is idle."""
        self._sweep_call = None
        now = self._clock.seconds()
        earliest: float | None = None
        expired: list[Poolable] = []
        for session_id, conns in list(self._idle.items()):
            while conns and conns[0][1] <= now:
                expired.append(conns.popleft()[0])
            if conns:
                if earliest is None or conns[0][1] < earliest:
                    earliest = conns[0][1]
            else:
                del self._idle[session_id]
        for conn in expired:
            conn.close()
        if earliest is not None and self._sweep_call is None:
            delay = max(earliest - now, self.idle_timeout / self.SWEEPS)
            self._sweep_call = self._clock.callLater(delay, self._sweep)

    def count(self, session_id: str | None = None) -> int:
        if session_id is not None:
            return len(self._idle.get(session_id, ()))
        return sum(len(c) for c in self._idle.values())

    def drop(self, session_id: str | None) -> None:
        """Close the idle connections of one session (None: of every session), e.g. when
        the registry says its tunnel moved: they may lead to the old holder. Those busy
        now are not kept when they come back (put)."""
        self.epoch += 1
        if session_id is None:
            self._dropped_all = self.epoch
            self._dropped.clear()
            self.close_all()
            return
        now = self._clock.seconds()
        self._dropped[session_id] = (self.epoch, now)
        if now - self._pruned_at >= self.REMEMBER_DROPS / 10:
            self._pruned_at = now
            self._dropped = {sid: d for sid, d in self._dropped.items()
                             if d[1] > now - self.REMEMBER_DROPS}
        for conn, _ in self._idle.pop(session_id, ()):
            conn.close()

    def close_all(self) -> None:
        if self._sweep_call is not None and self._sweep_call.active():
            self._sweep_call.cancel()
        self._sweep_call = None
        idle, self._idle = self._idle, {}
        for conns in idle.values():
            for conn, _ in conns:
                conn.close()
