"""The forwarding HTTP/1.1 proxy in front of the studios' tools: the I/O side.

One :class:`ProxyProtocol` per client connection, one :class:`UpstreamConnection`
per connection to a tool (through :class:`~studios_gateway.http.upstream.Upstream`).
The HTTP itself (heads, framing, refusals, what goes to whom) is in
:mod:`studios_gateway.http.exchange`, without transports; this module feeds it
bytes, writes what it returns, runs the timers and the dispatch:

    client bytes -> HeadReader (refusals) -> Exchange -> routing
    -> local routes (login) -> authorize -> lookup -> pool or Upstream.connect
    -> request head + body to the tool -> response head (+ path-mode rewrites)
    + body to the client -> the upstream connection back to the pool

Flow control: while a request body streams, the tool's transport has the
client's reads registered as its producer (its buffer full pauses the client);
while a response streams, the client's transport has the tool's reads as its
producer. After a 101 both stay registered and bytes are spliced as they come.
Nothing is buffered beyond one read on either side.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from studios_gateway.auth.authorizer import SESSION_ENDED
from studios_gateway.auth.settings import PREFIX
from studios_gateway.away import Away
from studios_gateway.config import default_of
from studios_gateway.http import lane, loop, pages
from studios_gateway.http.audience import shows_page
from studios_gateway.http.deadline import Deadline
from studios_gateway.http.exchange import (
    BROKEN,
    CLOSED,
    COMPLETE,
    REFUSED,
    SWITCH,
    Exchange,
    HeadReader,
    HeadRefused,
    Limits,
    NotForwardable,
    Step,
    ToolCodec,
    raw_response,
)
from studios_gateway.http.flow import Gate, GateProducer, Pacer
from studios_gateway.http.headers import client_address, is_trusted
from studios_gateway.http.origin import cross_origin, posted_from_elsewhere
from studios_gateway.http.relayed import Relayed
from studios_gateway.http.request import RequestInfo
from studios_gateway.http.routing import Redirect, Refusal, Route, Router
from studios_gateway.http.toolroute import tool_route
from studios_gateway.http.upstream import (
    Authorize,
    FastPath,
    IdlePool,
    Lookup,
    SessionInfo,
    StudioNotConnected,
    ToolNotAnswering,
    Track,
    Upstream,
)
from studios_gateway.http.wsframes import (
    GOING_AWAY,
    INTERNAL_ERROR,
    POLICY_VIOLATION,
    SERVICE_RESTART,
    FrameTracker,
    close_frame,
    is_websocket,
)
from studios_gateway.repeats import Repeats
from studios_gateway.traffic.facts import HTTP, WEBSOCKET, Finished, path_only
from studios_gateway.waiters import EmptyWaiters
from studios_gateway.wire.carrier import (
    TUNNEL_PATH,
    WebSocketServer,
    accept_head,
    websocket_refusal,
)
from studios_gateway.wire.closing import close_within
from studios_gateway.wire.mux import broke, going_away
from studios_gateway.wire.mux import tunnel_lost as stream_tunnel_lost
from studios_gateway.wire.sockopts import (
    TUNNEL_BUFFER,
    bulk_reads,
    bytes_waiting,
    no_delay,
    write_through,
)

__all__ = ["Anonymous", "Limits", "ProxyFactory", "ProxyProtocol", "UpstreamConnection",
           "allow_anonymous"]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
#: Methods a page of another origin may have a browser send to a studio with its cookie.
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
#: A WebSocket a quota stops mid-frame gets its close frame once the tool's frame ends,
#: if at most this many of its bytes are still to come ...
_END_WAIT_BYTES = 64 * 1024
#: ... within this many seconds; else it closes without one, as a browser reports with 1006.
_END_WAIT = 2.0
#: A drain leaves a connection whose request is on its way (just accepted, a head partly
#: read, bytes in its socket) this long at most (or the head timeout, if shorter) for its
#: head to come; that request is answered, then the connection closes.
_DRAIN_HEAD_GRACE = 1.0


@dataclass(frozen=True)
class Anonymous:
    subject: str = "anonymous"


def allow_anonymous(request: RequestInfo, session_id: str) -> Deferred[Anonymous]:
    """The default authorize hook: everyone is "anonymous" and allowed."""
    return defer.succeed(Anonymous())


#: The close reason of a WebSocket whose studio's tunnel goes away on purpose (its node or
#: the studio draining, the studio moved to another node): the page reconnects (1012).
_TUNNEL_GOING = "the studio's connection is going away; reconnect"
#: ... and of one open when this node drains, or upgraded while it drains.
_SHUTTING_DOWN = "this gateway node is shutting down; reconnect"


class UpstreamConnection(Protocol):
    """One connection to a tool. Belongs to a client connection while an exchange
    runs, to the pool while idle."""

    # Set by makeConnection: a tunnel stream (or, in tests, a TCP connection), which is
    # both the consumer of the request and the producer of the tool's answer.
    transport: Any
    _log = Logger()

    def __init__(self, session_id: str, pool: IdlePool, max_head: int, epoch: int):
        self.session_id = session_id
        self.pool = pool
        self.pool_epoch = epoch
        self.codec = ToolCodec(max_head)
        self.owner: ProxyProtocol | None = None
        #: The client whose producers stay wired to this connection while it is idle in
        #: the pool (ProxyProtocol._park), so that client's next request skips the wiring.
        self.paired: ProxyProtocol | None = None
        self.pool_entry: Any = None  # IdlePool's, while idle in it
        self.gate: Gate | None = None
        self.lost = False
        self.has_producer = False
        self.lost_reason: Failure | None = None
        self._pacer: Pacer | None = None

    def connectionMade(self) -> None:
        self.gate = Gate(self.transport)
        #: Registered on each client's transport this connection serves (made once: the
        #: same for every exchange on it).
        self.client_full = GateProducer(self.gate, "client-full")

    def pacer(self, clock: Any) -> Pacer:
        """This connection's bandwidth pacer (made when a cap first needs it)."""
        if self._pacer is None:
            assert self.gate is not None
            self._pacer = Pacer(self.gate, clock)
        return self._pacer

    def dataReceived(self, data: bytes) -> None:
        if self.owner is None:
            self.close()  # an idle connection has nothing to say
            return
        self.owner.upstream_data(self, data)

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.lost = True
        self.lost_reason = reason
        if self._pacer is not None:
            self._pacer.cancel()
        paired = self.paired
        if paired is not None:
            paired._unpair()
        owner, self.owner = self.owner, None
        if owner is not None:
            owner.upstream_lost(self)
        else:
            self.pool.discard(self.session_id, self)

    def close(self) -> None:
        if not self.lost and self.transport is not None:
            self.transport.loseConnection()

    def broken(self) -> str:
        """Why the connection to the tool broke (its tunnel lost, its stream reset), or ""
        when it was closed (or is open)."""
        return broke(self.lost_reason)

    def refused(self) -> bool:
        """The tool would not take this connection: the upstream ended it with
        ToolNotAnswering (TunnelUpstream's guard does so only before the tool's first byte)."""
        return self.lost_reason is not None and self.lost_reason.check(ToolNotAnswering) is not None

    def tunnel_lost(self) -> bool:
        """The studio's tunnel ended under this connection before the tool answered its
        request: on a new connection TunnelUpstream's guard reports it as
        StudioNotConnected; on a pooled one (whose guard stepped aside at its first
        answer) the stream's own end says it."""
        reason = self.lost_reason
        return reason is not None and (reason.check(StudioNotConnected) is not None
                                       or stream_tunnel_lost(reason, self.transport))

    def reusable(self) -> bool:
        return not self.lost and self.codec.idle()

    def going_away(self) -> bool:
        """The tunnel under this connection's stream is going away on purpose: a GoAway
        either way (this node or the studio draining, the tunnel moving), or it was
        closed cleanly (the studio stopped, closing it; this node replaced it)."""
        return going_away(self.transport)

    def fit_for_reuse(self) -> bool:
        """Kept idle in the pool: still open, and its stream's tunnel still takes new
        work (not retired since: the studio may have moved to another node)."""
        return not self.lost and not getattr(self.transport, "retiring", False)


class _UpstreamFactory(Factory):
    def __init__(self, session_id: str, pool: IdlePool, max_head: int):
        self.session_id = session_id
        self.pool = pool
        self.max_head = max_head
        # (now, before the holder is looked up: a drop from here on may concern it)
        self.epoch = pool.epoch

    def buildProtocol(self, addr: Any) -> UpstreamConnection:
        return UpstreamConnection(self.session_id, self.pool, self.max_head, self.epoch)


class ProxyFactory(Factory):
    """Builds a :class:`ProxyProtocol` per client connection.

    ``router``: which studio a request is for. ``upstream``: how to reach a
    studio's tool. ``lookup(session_id) -> Deferred[SessionInfo | None]``.
    ``authorize(request, session_id) -> Deferred[identity | refusal]`` (an
    identity has ``.subject``; a refusal has ``.status``, ``.headers``, ``.body``),
    by default :func:`allow_anonymous`. ``local_routes(request) ->
    Deferred[refusal-like | None]`` answers the gateway's own routes (the login's
    ``Auth.handle``) before any studio routing. ``fast(request, session_id) ->
    (identity, SessionInfo) | None`` answers the same three questions at once, without
    waiting, when every answer is known already (None: ask the hooks above).
    ``reactor`` supplies time and timers.
    """

    _log = Logger()

    def __init__(self, *, router: Router, upstream: Upstream, lookup: Lookup, reactor: Any,
                 authorize: Authorize | None = None,
                 local_routes: Callable[[RequestInfo], Deferred[Any]] | None = None,
                 fast: FastPath | None = None,
                 away: Callable[[str], Deferred[Away | None]] | None = None,
                 track: Track | None = None, observer: Any = None,
                 relayed: Relayed | None = None,
                 trusted_proxy_cidrs: Sequence[Network] = (), scheme: str = "http",
                 https_outside: bool = False,
                 max_idle_per_session: int = default_of("http_pool_size"),
                 upstream_idle_timeout: float = default_of("http_pool_idle_timeout"),
                 max_request_line: int = Limits.max_request_line,
                 max_header_bytes: int = Limits.max_header_bytes,
                 max_header_count: int = Limits.max_header_count,
                 header_timeout: float = Limits.header_timeout,
                 idle_timeout: float = Limits.idle_timeout,
                 max_connections: int = Limits.max_connections,
                 max_body: int | None = Limits.max_body,
                 connect_timeout: float = Limits.connect_timeout,
                 response_timeout: float = Limits.response_timeout,
                 compiled_lane: bool = default_of("compiled_lane"),
                 marks: loop.Marks | None = None):
        self.router = router
        self.upstream = upstream
        self.lookup = lookup
        self.reactor = reactor
        self.authorize: Authorize = authorize or allow_anonymous
        self.local_routes = local_routes
        self.fast = fast
        #: away(session_id): which not-connected case it is (studios_gateway.away), asked
        #: only when the not-connected page is about to be sent; never fails, bounded.
        self.away = away
        self.track = track
        #: Upgraded connections relayed to another node's tunnel, ended when their studio
        #: moves (None: not kept, as without peers).
        self.relayed = relayed
        #: Told of every finished exchange (studios_gateway.traffic.observer.Traffic).
        self.observer = observer
        #: The tunnel listener's factory: a WebSocket to /_connect/tunnel carries a tunnel.
        self.carry: Any = None
        self.draining = False
        self._drained = EmptyWaiters()
        self.trusted_proxy_cidrs = tuple(trusted_proxy_cidrs)
        self.scheme = scheme
        #: Browsers reach this listener over HTTPS though it speaks plain HTTP (a TLS
        #: terminator before it, CONNECT_PROXY_URL on https://): tool cookies get Secure.
        self.https_outside = https_outside
        self.limits = Limits(max_request_line, max_header_bytes, max_header_count,
                             header_timeout, idle_timeout, max_connections, max_body,
                             connect_timeout, response_timeout)
        self.pool = IdlePool(reactor, max_idle=max_idle_per_session,
                             idle_timeout=upstream_idle_timeout)
        self.active: set[ProxyProtocol] = set()
        #: Log lines anyone can cause again and again, at most one a minute of each kind.
        self.repeats = Repeats(reactor)
        #: The compiled lane's way back (studios_gateway.http.lane), None: the Python way.
        self.answer = lane.load(compiled_lane)
        #: What marks the requests sent to tools (http.loop); by default a key of this
        #: process alone.
        self.marks = marks if marks is not None else loop.Marks()

    def buildProtocol(self, addr: Any) -> ProxyProtocol:  # type: ignore[override]
        p = ProxyProtocol()
        p.factory = self
        return p

    def upstream_factory(self, session_id: str) -> _UpstreamFactory:
        return _UpstreamFactory(session_id, self.pool, self.limits.max_header_bytes + 1024)

    def stop(self) -> None:
        """Close idle upstream connections (live ones end with their clients)."""
        self.pool.close_all()

    def drain(self) -> Deferred[None]:
        """Stop keeping connections alive: idle ones close now, upgraded ones (WebSockets,
        which browsers reopen) close now, the rest after their current response. Fires
        when no client connection is left."""
        self.draining = True
        self.pool.close_all()
        for p in list(self.active):
            p.drain()
        return self._when_empty()

    def _when_empty(self) -> Deferred[None]:
        return self._drained.wait(not self.active)

    def forget(self, p: ProxyProtocol) -> None:
        self.active.discard(p)
        if not self.active:
            self._drained.fire()


class ProxyProtocol(Protocol):
    """One client connection: reads request heads, runs exchanges one at a time."""

    # Set by makeConnection before any other event reaches the protocol: a TCP (or TLS)
    # connection, which is also the producer the proxy pauses and resumes.
    transport: Any

    _log = Logger()
    factory: ProxyFactory

    def __init__(self) -> None:
        self._reader: HeadReader | None = None
        self._ex: Exchange | None = None
        self._tunnel: UpstreamConnection | None = None
        self._timer: Deadline | None = None  # idle and head timeouts
        self._response_timer: Deadline | None = None  # the tool's response head
        self._closing = False
        self._peer: str | None = None
        self._peer_port = 0
        self._trusted = False  # the peer is a trusted proxy (decided once per connection)
        self._has_producer = False
        # A pooled tool connection left wired to this client between its requests.
        self._paired: UpstreamConnection | None = None
        self._idle = False  # waiting for the next request on a kept-alive connection
        self._release: Callable[[], Any] | None = None  # untrack an upgraded connection
        self._unrelay: Callable[[], None] | None = None  # forget a relayed one (Relayed)
        # For the access log and metrics: bytes each way on this connection, and at the
        # start of the current exchange; when it started; why the gateway refused it.
        self._bytes_in = self._bytes_out = self._mark_in = self._mark_out = 0
        self._started = 0.0
        self._why = ""
        self._meter: Any = None  # an upgraded connection's byte counts
        self._carrier: WebSocketServer | None = None  # a tunnel carried in a WebSocket
        self._carried: Finished | None = None  # ... and its facts at the upgrade
        self._upgraded: Finished | None = None  # ... and its facts so far
        #: A WebSocket's frames from the tool (where a close frame of ours may go).
        self._frames: FrameTracker | None = None
        #: A close frame waiting for the end of the tool's current frame: its code, its
        #: words and the deadline (_END_WAIT) after which the connection just closes.
        self._ending: tuple[int, str, Any] | None = None

    # Connection lifecycle ------------------------------------------------------------------

    def connectionMade(self) -> None:
        no_delay(self.transport)  # small writes (WebSocket frames, heads) go out at once
        write_through(self.transport)  # ... in this turn when nothing waits before them
        # An upload is read in up to 512 KiB once it comes in bulk: its frames go to the
        # tunnel in one write (Stream.write), fewer trips through here per byte.
        bulk_reads(self.transport, TUNNEL_BUFFER)
        self.gate = Gate(self.transport)
        # Registered on each tool connection while it serves this client (made once).
        self._upstream_full = GateProducer(self.gate, "upstream-full")
        f = self.factory
        self._client_pacer = Pacer(self.gate, f.reactor)
        self._reader = HeadReader(f.limits)
        self._timer = Deadline(f.reactor)
        self._response_timer = Deadline(f.reactor)
        peer = self.transport.getPeer()
        self._peer = getattr(peer, "host", None)
        self._peer_port = getattr(peer, "port", 0)
        self._trusted = is_trusted(self._peer, f.trusted_proxy_cidrs)
        if len(f.active) >= f.limits.max_connections:
            self._log.warn("refusing a connection: {n} open", n=len(f.active))
            self._refuse_raw(pages.overloaded(), "too many connections")
            return
        f.active.add(self)
        self._set_timer(f.limits.header_timeout, self._head_timed_out)

    def drain(self) -> None:
        """The gateway is shutting down: close now unless a request is in flight or on
        its way. On its way: a connection accepted but with no request read yet (a client
        connects to send one: closed now, it got a reset or an empty answer, at every
        restart), a head partly read, or a kept-alive connection with bytes in its socket
        that this process has not read yet. That request is answered (its head says
        Connection: close, as does the answer of one in flight) and the connection then
        closes (the factory is draining); if no head comes within _DRAIN_HEAD_GRACE, it
        closes with a 408 (logged once a byte of a head came)."""
        if self._ex is not None:
            self._ex.framer.keep_alive = False  # its answer says Connection: close
            return
        if self._closing or self._carrier is not None:
            return  # (a carried tunnel is drained by the tunnel table: GoAway)
        if self._tunnel is None and (not self._idle or bytes_waiting(self.transport)):
            self._idle = False
            grace = min(self.factory.limits.header_timeout, _DRAIN_HEAD_GRACE)
            self._set_timer(grace, self._head_timed_out)
            return
        self._end_upgraded(SERVICE_RESTART, _SHUTTING_DOWN)

    def connectionLost(self, reason: Failure | None = None) -> None:
        self._closing = True
        self.factory.forget(self)
        if self._paired is not None:
            self._unpair()
        for timer in (self._timer, self._response_timer):
            if timer is not None:
                timer.stop()
        self._client_pacer.cancel()
        self._stop_waiting()
        release, self._release = self._release, None
        if release is not None:
            release()
        unrelay, self._unrelay = self._unrelay, None
        if unrelay is not None:
            unrelay()
        carrier, self._carrier = self._carrier, None
        if carrier is not None:
            carrier.connectionLost(reason)
            self._carried_ended(carrier)
        meter, self._meter = self._meter, None
        if meter is not None and self._upgraded is not None:
            up = self._upgraded
            self.factory.observer.close(meter, replace(
                up, duration=self.factory.reactor.seconds() - up.started))
        tunnel, self._tunnel = self._tunnel, None
        if tunnel is not None:
            tunnel.owner = None
            tunnel.close()
        ex, self._ex = self._ex, None
        if ex is not None:
            self._abandon(ex)
            self._report(ex, "connection closed before the response ended")

    def _abandon(self, ex: Exchange) -> None:
        self._cancel_response_timer()
        if ex.pending is not None:
            ex.pending.cancel()
        up, ex.up = ex.up, None
        if up is not None:
            self._detach(up)
            up.close()

    def _close(self) -> None:
        if self._paired is not None:  # unwired before the transport closes
            self._unpair()
        if self._tunnel is not None:
            # An upgraded connection's wiring too: a TLS transport sends its close_notify,
            # and closes, only once no producer is registered (over HTTPS a revoked
            # WebSocket stayed open until the browser closed it).
            self._unwire(self._tunnel)
        self._closing = True
        self._cancel_timer()
        # A browser that reads nothing would keep the connection for good (the close
        # waits behind what is buffered for it): reset after a grace.
        close_within(self.transport, self.factory.reactor, "HTTP connection")

    def _refuse_raw(self, page: pages.Page, why: str, method: str = "", path: str = ""
                    ) -> None:
        """Answer `page` and close, before a request was read whole; `why` for the access
        log (nothing is logged without it), with the request's `method` and `path` when
        its request line was read."""
        if self._paired is not None:
            self._unpair()
        self._closing = True
        self._cancel_timer()
        data = raw_response(page)
        f = self.factory
        self.transport.write(data)
        close_within(self.transport, f.reactor, "HTTP connection")
        if f.observer is not None and why:
            f.observer.http_done(Finished(
                HTTP, started=f.reactor.seconds(), duration=0.0, client=self._peer or "",
                method=method, path=path, status=page.status, bytes_in=self._bytes_in,
                bytes_out=len(data), reason=why))

    # Timers ---------------------------------------------------------------------------------

    def _set_timer(self, seconds: float, fn: Callable[[], None]) -> None:
        assert self._timer is not None
        self._timer.arm(seconds, fn)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.disarm()

    def _head_timed_out(self) -> None:
        # A connection that never sent a byte (a browser's preconnect) is not logged: a
        # line each would be one per page load per person.
        if self._bytes_in:
            self._log.info("request head timeout from {peer}", peer=self._peer)
        self._refuse_raw(pages.status_page(408, "The request took too long to arrive."),
                         "request head timeout" if self._bytes_in else "")

    def _idle_timed_out(self) -> None:
        self._close()

    # Bytes from the client -------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self._closing:
            return
        if self._carrier is not None:
            self._bytes_in += len(data)
            self._carrier.dataReceived(data)
            return
        self._bytes_in += len(data)
        if self._tunnel is not None:
            if self._meter is not None:
                self._meter.inbound(len(data))
                self._pace(self._client_pacer, self._meter.session_id, len(data))
            self._tunnel.transport.write(data)
            return
        ex = self._ex
        if ex is not None and ex.route is not None:
            self._pace(self._client_pacer, ex.session_id, len(data))
        if ex is None:
            self._read_head(data)
            return
        if ex.client_data(data):
            self.gate.pause("pipeline")
        elif not ex.client_done and ex.up is not None:
            self._pump_request(ex)

    def _read_head(self, data: bytes | None = None) -> None:
        """The next request head from what the reader holds and `data` (a new read)."""
        reader = self._reader
        assert reader is not None
        got = reader.take() if data is None else reader.take_read(data)
        if self._idle and (got is not None or reader.buf):
            self._idle = False
            if got is None:  # a complete head disarms the idle timer below instead
                self._set_timer(self.factory.limits.header_timeout, self._head_timed_out)
        if got is None:
            return
        if isinstance(got, HeadRefused):
            self._refuse_head(got)
            return
        timer = self._timer
        if timer is not None:  # (_cancel_timer, one call less per request)
            timer.disarm()
        self._start(got)

    def _refuse_head(self, got: HeadRefused) -> None:
        status, why = got.status, got.why
        self._log.info("refused a request from {peer}: {status} {why}", peer=self._peer,
                       status=status, why=why)
        self._refuse_raw(pages.status_page(status, f"The request was refused: {why}."),
                         why, got.method, got.path)

    # Dispatch ---------------------------------------------------------------------------------

    def _start(self, ex: Exchange) -> None:
        self._ex = ex
        f = self.factory
        self._started = f.reactor.seconds()
        self._why = ""
        if f.draining:  # (answered, then closed: the client is told so in its head)
            ex.framer.keep_alive = False
        refused = ex.begin(f.scheme, self._peer, self._peer_port)
        if f.https_outside:
            ex.https_outside = True
        if refused is not None:
            self._respond(ex, refused.page, close=refused.close)
            return
        assert ex.info is not None
        if ex.upgrade_asked and f.carry is not None and ex.info.path == TUNNEL_PATH:
            self._carry(ex)  # (says why an upgrade that is not a WebSocket's is refused)
            return
        if ex.upgrade:
            why = cross_origin(ex.info.header(b"origin"), ex.info.host)
            if why is not None:  # a page of another studio (or site) as this browser's user
                self._refuse_from_elsewhere(ex, "WebSocket", "WebSocket", why,
                                            f"WebSocket refused: {why}")
                return
        # (the gateway's own routes under PREFIX judge their posts: auth/routes.py)
        elif ex.info.method not in _SAFE_METHODS \
                and not ex.info.path.startswith(PREFIX):
            why = posted_from_elsewhere(ex.info.header(b"sec-fetch-site"),
                                        ex.info.header(b"origin"), ex.info.host)
            if why is not None:  # another studio's page (the same site) as this user
                method = ex.info.method
                self._refuse_from_elsewhere(ex, method, f"{method} request", why,
                                            f"{method} from elsewhere refused: {why}")
                return
        if f.fast is not None and self._fast(ex):
            return
        d: Deferred[Any] = (defer.maybeDeferred(f.local_routes, ex.info)
                            if f.local_routes is not None else defer.succeed(None))
        ex.pending = d
        d.addCallback(self._after_local, ex)
        d.addErrback(self._dispatch_failed, ex)
        # Most requests (cached login, pooled connection) reach the tool or an answer
        # before this line; pause the client's reads only when something is awaited.
        if ex is self._ex and ex.up is None and not self._closing:
            self.gate.pause("dispatch")

    def _fast(self, ex: Exchange) -> bool:
        """Everything known already (not a gateway route, a studio route, the login and
        the decision cached, the tunnel here): on to the tool in this turn, no Deferred
        until a new stream is needed. False: the full dispatch decides (the same way)."""
        f = self.factory
        assert f.fast is not None and ex.info is not None
        route = f.router.route(ex.host, ex.target)
        if not isinstance(route, Route):
            return False
        known = f.fast(ex.info, route.session_id)
        if known is None:
            return False
        who, info = known
        tool = tool_route(route, info.tool)
        if tool.unavailable is not None or not info.connected \
                or tool.is_logout(ex.info.method, ex.info.path):
            return False
        ex.route, ex.tool, ex.subject, ex.identity = route, tool, who.subject, who
        self._connect(ex)
        if ex is self._ex and ex.up is None and not self._closing:
            self.gate.pause("dispatch")
        return True

    def _carry(self, ex: Exchange) -> None:
        """A studio's tunnel in a WebSocket (HTTP-only egress): accept the upgrade and hand
        the connection to the tunnel listener's protocol (its TLS, bind and yamux). A
        malformed upgrade gets 400 saying why; each attempt has a log line, and an access
        line (kind websocket) when the connection ends."""
        why = websocket_refusal(ex.request.headers)
        if why is not None:
            self._log.info("refused a WebSocket tunnel from {peer}: {why}", peer=self._peer,
                           why=why)
            self._respond(ex, pages.bad_request(f"The WebSocket upgrade was refused: {why}."),
                          close=True, why=f"WebSocket upgrade refused: {why}")
            return
        head = accept_head(ex.request.headers)
        assert head is not None
        self._log.info("carrying a tunnel in a WebSocket from {peer}", peer=self._peer)
        ex.status = 101
        self._bytes_out += len(head)
        self._carried = self._facts(ex, WEBSOCKET, "")
        self._ex = None
        self._cancel_timer()
        if self._paired is not None:  # the carried tunnel writes to this transport now
            self._unpair()
        rest = ex.body.leftover() if ex.body.done else b""
        self.transport.write(head)
        inner = self.factory.carry.buildProtocol(self.transport.getPeer())
        self._carrier = WebSocketServer(inner)
        self._carrier.clock = self.factory.reactor
        self._carrier.makeConnection(self.transport)
        if rest:
            self._carrier.dataReceived(rest)

    def _carried_ended(self, carrier: WebSocketServer) -> None:
        """The access line of a tunnel carried in a WebSocket: from the upgrade to the
        end, the bytes both ways, and why the gateway ended it (a malformed frame)."""
        facts, self._carried = self._carried, None
        observer = self.factory.observer
        if facts is None or observer is None:
            return
        observer.carried(replace(
            facts, duration=self.factory.reactor.seconds() - facts.started,
            bytes_in=self._bytes_in - self._mark_in,
            bytes_out=facts.bytes_out + carrier.sent, reason=carrier.ended))

    def _after_local(self, answer: Any, ex: Exchange) -> Any:
        if ex is not self._ex:
            return None
        if answer is not None:
            self._respond(ex, answer)
            return None
        route = self.factory.router.route(ex.host, ex.target)
        if isinstance(route, Redirect):
            self._respond(ex, pages.redirect(route.location, route.status))
            return None
        if isinstance(route, Refusal):
            if route.status == 404:
                page = pages.not_found(route.session_id, route.detail)
            else:
                page = pages.status_page(route.status, route.detail, route.session_id)
            self._respond(ex, page, close=route.status == 400)
            return None
        ex.route = route
        assert ex.info is not None
        d = self.factory.authorize(ex.info, route.session_id)
        ex.pending = d
        return d.addCallback(self._authorized, ex)

    def _authorized(self, who: Any, ex: Exchange) -> Any:
        if ex is not self._ex:
            return None
        if not hasattr(who, "subject"):
            self._respond(ex, who)  # the authorizer's refusal, sent as it is
            return None
        ex.subject = who.subject
        ex.identity = who
        d = self.factory.lookup(ex.session_id)
        ex.pending = d
        return d.addCallback(self._looked_up, ex)

    def _looked_up(self, info: SessionInfo | None, ex: Exchange) -> None:
        if ex is not self._ex:
            return
        route = ex.route
        assert route is not None
        if info is None:
            # Allowed a moment ago (a cached decision), so most likely ended meanwhile.
            self._respond(ex, pages.session_gone(route.session_id), why="no such session")
            return
        ex.tool = tool_route(route, info.tool)
        if ex.tool.unavailable is not None:
            self._respond(ex, pages.tool_unavailable(route.session_id, ex.tool.spec.title,
                                                     route.mode.value, ex.tool.unavailable),
                          why="tool unavailable in this routing mode")
        elif ex.info is not None and ex.tool.is_logout(ex.info.method, ex.info.path):
            # The tool's login is off behind the gateway ("Cannot log out. Jupyter Server
            # authentication is disabled."): its Log Out is meant for the gateway's.
            self._respond(ex, pages.redirect(f"{PREFIX}logout", 303),
                          why="the tool's logout is the gateway's")
        elif not info.connected:
            self._not_connected(ex)
        else:
            self._connect(ex)

    def _dispatch_failed(self, failure: Failure, ex: Exchange) -> None:
        if ex is not self._ex:
            return
        self._log.failure("dispatching a request failed", failure)
        self._respond(ex, pages.page(500, "Gateway error", "The gateway failed to handle "
                                     "this request; try again."), close=True)

    # The tool's side --------------------------------------------------------------------------

    def _connect(self, ex: Exchange) -> None:
        f = self.factory
        sid = ex.session_id
        conn = None if ex.retried else f.pool.take(sid, self._paired)
        if conn is not None:
            assert isinstance(conn, UpstreamConnection)
            ex.reused = True
            self._attach(ex, conn)
            return
        d = f.upstream.connect(sid, f.upstream_factory(sid))
        d.addTimeout(f.limits.connect_timeout, f.reactor)
        ex.pending = d
        d.addCallbacks(self._connected, self._connect_failed, callbackArgs=(ex,),
                       errbackArgs=(ex,))

    def _connected(self, conn: UpstreamConnection, ex: Exchange) -> None:
        ex.pending = None
        if ex is not self._ex:
            conn.close()
            return
        self._attach(ex, conn)

    def _connect_failed(self, failure: Failure, ex: Exchange) -> None:
        if ex is not self._ex:
            return
        ex.pending = None
        sid = ex.session_id
        if failure.check(StudioNotConnected):
            self._not_connected(ex, detail=getattr(failure.value, "detail", ""))
            return
        if failure.check(ToolNotAnswering, defer.TimeoutError, defer.CancelledError):
            page, why = pages.tool_not_answering(sid), "tool not answering"
        else:
            self._log.failure("connecting to studio {sid} failed", failure, sid=sid)
            page, why = pages.bad_gateway(sid), "cannot reach the studio"
        self._respond(ex, page, why=why)

    def _not_connected(self, ex: Exchange, close: bool = False, detail: str = "") -> None:
        """Answer the not-connected page, saying which case it is when the registry can
        tell (factory.away, asked now and only now); its words for "cannot tell" when it
        cannot, or not in time. `close`: the client's connection ends after it (the
        request was cut short under way). `detail`: why, for the access line only (it
        may name nodes and addresses)."""
        away = self.factory.away
        if away is None:
            self._told_away(None, ex, close, detail)
            return
        d = defer.maybeDeferred(away, ex.session_id)
        ex.pending = d
        d.addErrback(lambda _: None)  # (its words for "cannot tell")
        d.addCallback(self._told_away, ex, close, detail)

    def _told_away(self, away: Away | None, ex: Exchange, close: bool = False,
                   detail: str = "") -> None:
        if ex is not self._ex:
            return
        ex.pending = None
        why = f"studio not connected ({detail})" if detail else "studio not connected"
        self._respond(ex, pages.not_connected(ex.session_id, away), close=close, why=why)

    def _attach(self, ex: Exchange, conn: UpstreamConnection) -> None:
        f = self.factory
        ex.up = conn
        conn.owner = self
        try:
            head = ex.tool_head(conn.codec, self._peer, self._trusted, f.scheme, f.marks)
        except NotForwardable as e:
            self._log.info("request not forwardable: {e}", e=e)
            self._detach(conn)
            ex.up = None
            conn.close()
            self._respond(ex, pages.bad_request("The request could not be forwarded."),
                          close=True)
            return
        # The head and what the client sent of the body so far: one write, one frame.
        if ex.client_done:  # a retry: the (empty) body was read already
            data, step = ex.end_request(conn.codec), COMPLETE
        else:
            data, step = ex.pump_request(conn.codec)
        conn.transport.write(head + data if data else head)
        if self._paired is conn:  # this client's own previous one: still wired to it
            self._paired = conn.paired = None
        else:
            self._wire(conn)
        if "dispatch" in self.gate.held:  # (paused only when the dispatch waited)
            self.gate.resume("dispatch")
        if step is COMPLETE:  # (the usual: a request without a body)
            self._request_sent(ex)
        else:
            self._request_step(ex, step)

    def _wire(self, conn: UpstreamConnection) -> None:
        """Each side's back-pressure pauses the other: this client's gate is the tool
        stream's producer, `conn`'s gate the client transport's."""
        other = conn.paired
        if other is not None:  # idle and wired to another client: taken by this one
            other._unpair()
        if self._paired is not None:
            self._unpair()
        conn.transport.registerProducer(self._upstream_full, True)
        conn.has_producer = True
        self.transport.registerProducer(conn.client_full, True)
        self._has_producer = True

    def _park(self, conn: UpstreamConnection) -> None:
        """`conn` went back to the pool after this client's exchange: its wiring stays
        (the client's next request most likely takes it again, see IdlePool.take's
        prefer) unless either side is held back by the other right now."""
        gate = conn.gate
        if (self._closing or (gate is not None and "client-full" in gate.held)
                or "upstream-full" in self.gate.held):
            self._unwire(conn)
            return
        self._paired = conn
        conn.paired = self

    def _unpair(self) -> None:
        """Undo the wiring of the connection parked with this client (it is taken by
        another client, lost, or this client takes another or closes)."""
        conn, self._paired = self._paired, None
        if conn is not None:
            conn.paired = None
            self._unwire(conn)

    def _detach(self, conn: UpstreamConnection) -> None:
        """Undo _attach's producer wiring between this client and `conn`."""
        conn.owner = None
        self._unwire(conn)

    def _unwire(self, conn: UpstreamConnection) -> None:
        if conn.has_producer:
            conn.has_producer = False
            if not conn.lost:
                conn.transport.unregisterProducer()
        if conn.gate is not None:
            conn.gate.resume("client-full")
        if self._has_producer:
            self._has_producer = False
            if not self._closing:
                self.transport.unregisterProducer()
        self.gate.resume("upstream-full")

    @staticmethod
    def _to_tool(conn: UpstreamConnection, data: bytes) -> None:
        if data:
            conn.transport.write(data)

    def _pump_request(self, ex: Exchange) -> None:
        up = ex.up
        assert up is not None
        data, step = ex.pump_request(up.codec)
        self._to_tool(up, data)
        self._request_step(ex, step)

    def _request_step(self, ex: Exchange, step: Step) -> None:
        if step is COMPLETE:
            self._request_sent(ex)
        elif step is REFUSED:
            assert ex.problem is not None
            self._body_refused(ex, ex.problem)
        elif step is CLOSED:
            self._close()

    def _request_sent(self, ex: Exchange) -> None:
        assert self._response_timer is not None
        self._response_timer.arm(self.factory.limits.response_timeout,
                                 self._response_timed_out, ex)

    def _body_refused(self, ex: Exchange, problem: HeadRefused) -> None:
        """The request body is malformed or too large: a page saying why (unless the
        response began) and the connection closed; one log line naming the client."""
        status, why = problem.status, problem.why
        self._log.info("refused a request body from {peer}: {status} {why}",
                       peer=self._peer, status=status, why=why)
        up, ex.up = ex.up, None
        if up is not None:
            self._detach(up)
            up.close()
        if ex.response_started:
            self._why = why
            self._close()
        else:
            self._respond(ex, pages.status_page(status, f"The request was refused: {why}."),
                          close=True, why=why)

    def _response_timed_out(self, ex: Exchange) -> None:
        if ex is not self._ex or ex.response_started:
            return
        up, ex.up = ex.up, None
        if up is not None:
            self._detach(up)
            up.close()
        self._respond(ex, pages.tool_not_answering(ex.session_id), close=True,
                      why="no response from the tool in time")

    def upstream_data(self, conn: UpstreamConnection, data: bytes) -> None:
        if self._tunnel is conn:
            if self._closing:  # (a close frame of ours may have gone out: nothing after it)
                return
            frames = self._frames
            if frames is not None:
                if self._ending is not None:
                    self._end_of_frame(frames, data)
                    return
                frames.feed(data)
            if self._meter is not None:
                self._meter.outbound(len(data))
                self._pace(conn.pacer(self.factory.reactor), self._meter.session_id, len(data))
            self.transport.write(data)
            return
        ex = self._ex
        if ex is None or ex.up is not conn:
            conn.close()
            return
        f = self.factory
        obs = f.observer
        if obs is not None and obs.throttles is not None:
            self._pace(conn.pacer(f.reactor), ex.session_id, len(data))
        if ex.lane_rest:  # the rest of a body the compiled lane answers: as it comes
            out, done = ex.lane_more(conn.codec, data)
            self._bytes_out += len(out)
            self.transport.write(out)
            if done:
                self._response_done(ex, conn)
            return
        answer = f.answer
        if answer is not None:  # the compiled lane: an answer's head (and body) in one call
            began = ex.lane_answer(conn.codec, data, answer)
            if began is not None:
                self._bytes_out += len(began)
                self.transport.write(began)
                if ex.lane_rest:
                    self._cancel_response_timer()  # (the response started)
                else:
                    self._response_done(ex, conn)
                return
        conn.codec.receive(data)
        self._pump_response(ex, conn)

    def _pump_response(self, ex: Exchange, conn: UpstreamConnection) -> None:
        # What one read of the tool's bytes yields (often head, body and end) goes to
        # the client in one write; it is written before anything that ends or
        # switches the exchange.
        started = ex.response_started
        data, step, event = ex.pump_response(conn.codec)
        if ex.response_started and not started and self._response_timer is not None:
            self._response_timer.disarm()
        if data:
            self._bytes_out += len(data)
            self.transport.write(data)
        if step is COMPLETE:
            self._response_done(ex, conn)
        elif step is SWITCH:
            self._switch(ex, conn, event)
        elif step is BROKEN:
            assert ex.problem is not None
            self._upstream_broken(ex, conn, ex.problem.why)

    def _cancel_response_timer(self) -> None:
        if self._response_timer is not None:
            self._response_timer.disarm()

    def _response_done(self, ex: Exchange, conn: UpstreamConnection) -> None:
        # (the response timer: disarmed when the response started, or by _finish)
        ex.up = None
        conn.owner = None
        if not conn.lost and ex.reusable(conn.codec):
            conn.codec.next_cycle()
            if self.factory.pool.put(ex.session_id, conn):
                self._park(conn)
            else:
                self._unwire(conn)
                conn.close()
        else:
            self._unwire(conn)
            conn.close()
        self._finish(ex)

    def _switch(self, ex: Exchange, conn: UpstreamConnection, event: Any) -> None:
        """A 101: from here on, bytes are spliced both ways."""
        self._cancel_response_timer()
        switched = ex.switch(conn.codec, event)
        if switched is None:
            assert ex.problem is not None
            self._upstream_broken(ex, conn, ex.problem.why)
            return
        head, up_rest, client_rest = switched
        self._ex = None
        self._tunnel = conn
        f = self.factory
        if is_websocket(event.headers):
            self._frames = FrameTracker()
        if f.track is not None and ex.route is not None:
            self._release = f.track(ex.route.session_id, ex.identity, self._revoked)
        self._bytes_out += len(head)
        if f.observer is not None:
            self._upgraded = self._facts(ex, WEBSOCKET, "")
            self._meter = f.observer.open(WEBSOCKET, ex.session_id, ex.subject,
                                          self._stop_upgraded)
            self._meter.inbound(self._upgraded.bytes_in)
            self._meter.outbound(self._upgraded.bytes_out)
        self.transport.write(head)
        if up_rest:
            if self._frames is not None:
                self._frames.feed(up_rest)
            self.transport.write(up_rest)
        if client_rest:
            conn.transport.write(client_rest)
        self.gate.resume("pipeline")
        holder = getattr(conn.transport, "holder", None)  # a stream to another node's tunnel
        if holder is not None and f.relayed is not None:  # (last: add may end it at once)
            self._unrelay = f.relayed.add(ex.session_id, holder, self._studio_moved)
        if f.draining:
            # Asked for as the drain began (in flight, or on its way: drain): it is closed
            # as the drain closes those open before, or it held the drain to its grace.
            self._end_upgraded(SERVICE_RESTART, _SHUTTING_DOWN)

    def _refuse_from_elsewhere(self, ex: Exchange, what: str, asked: str, why: str,
                               reason: str) -> None:
        """403 for `what` (a WebSocket, a POST) that a page of another origin had this
        browser send to a studio with its cookie: logged, and the page says `why`."""
        self._log.info("refused a {what} from {peer} to {host}: {why}",
                       what=what, peer=self._peer, host=ex.host, why=why)
        self._respond(ex, pages.forbidden(message=(
            f"A {asked} to a studio must come from that studio's own pages "
            f"(here: {why}).")), close=True, why=reason)

    def _pace(self, pacer: Pacer, session_id: str, n: int) -> None:
        """The session's bandwidth cap: stop reading from this side for a while."""
        obs = self.factory.observer
        if obs is not None and obs.throttles is not None and session_id:
            pacer.hold(obs.throttles.delay(session_id, n))

    def _stop_upgraded(self, why: str) -> None:
        """Stop an upgraded connection (a transfer quota): a WebSocket close frame (1008,
        policy violation) with `why` to the client, then the connection closes."""
        self._end_upgraded(POLICY_VIOLATION, why, wait=True)

    def _studio_moved(self) -> None:
        """The studio of an upgraded connection relayed to another node's tunnel is bound
        elsewhere now (Relayed): end it as its tunnel going away would, so that the page
        reconnects to the new holder instead of staying on the old tunnel."""
        self._unrelay = None
        self._end_upgraded(SERVICE_RESTART, _TUNNEL_GOING)

    def _revoked(self, why: str) -> None:
        """The user's access to an upgraded connection's studio ended (the session ended:
        1001; logged out, no longer allowed: 1008)."""
        self._end_upgraded(GOING_AWAY if why == SESSION_ENDED else POLICY_VIOLATION, why)

    def _end_upgraded(self, code: int, why: str, logged: bool = True,
                      wait: bool = False) -> None:
        """Close an upgraded connection, a WebSocket with a close frame of `code` and `why`
        (words for the user) first when one may go now: between two whole frames of the
        tool's, none of them its own close frame. Mid-frame (or not a WebSocket) the
        connection just closes, as a browser reports with 1006; with `wait` (a quota: the
        tool's bytes still come) the close frame instead follows the end of the tool's frame
        when at most _END_WAIT_BYTES of it are still to come within _END_WAIT seconds
        (nothing more is read from the client meanwhile). `logged`: `why` is the access
        line's reason (unless it has one)."""
        if self._closing:  # (a TLS close_notify may be under way: nothing more to write)
            return
        if self._ending is not None and wait:
            return  # (a close frame waits already for the frame's end)
        up = self._upgraded
        if logged and up is not None and not up.reason:
            self._upgraded = replace(up, reason=why)
        frames = self._frames
        if frames is not None and frames.at_boundary and not frames.closed:
            frames.closed = True
            data = close_frame(code, why)
            self._bytes_out += len(data)
            self.transport.write(data)
        elif frames is not None and not frames.closed:
            rest = frames.remaining
            if wait and self._tunnel is not None and rest is not None \
                    and rest <= _END_WAIT_BYTES:
                self.gate.pause("ending")
                self._ending = (code, why, self.factory.reactor.callLater(
                    _END_WAIT, self._end_now))
                return
            self._log.debug("closing a WebSocket mid-frame without a close frame: {why}",
                            why=why)
        self._stop_waiting()
        self._close()

    def _end_of_frame(self, frames: FrameTracker, data: bytes) -> None:
        """A read of the tool's while a close frame waits for the end of its frame: the
        frame's bytes go on to the client, then the close frame; what follows is not sent."""
        rest = frames.remaining
        assert self._ending is not None and rest is not None  # (payload bytes only since)
        part = data[:rest] if len(data) > rest else data
        frames.feed(part)
        if self._meter is not None:
            self._meter.outbound(len(part))
        self.transport.write(part)
        if frames.at_boundary:
            code, why, _ = self._ending
            self._stop_waiting()
            self._end_upgraded(code, why, logged=False)

    def _end_now(self) -> None:
        """The tool's frame did not end within _END_WAIT: close without a close frame."""
        ending, self._ending = self._ending, None
        if ending is not None:
            self._end_upgraded(ending[0], ending[1], logged=False)

    def _stop_waiting(self) -> None:
        ending, self._ending = self._ending, None
        if ending is not None and ending[2].active():
            ending[2].cancel()

    def _upstream_broken(self, ex: Exchange, conn: UpstreamConnection, why: str) -> None:
        self._log.info("{why}", why=why)
        ex.up = None
        self._detach(conn)
        conn.close()
        if ex.response_started:
            self._close()
        else:
            self._respond(ex, pages.bad_gateway(ex.session_id), close=True)

    def upstream_lost(self, conn: UpstreamConnection) -> None:
        if self._tunnel is conn:
            self._unwire(conn)  # before the close, which a TLS transport holds until then
            self._tunnel = None
            why = conn.broken()
            going = conn.going_away()  # a GoAway came first: an end on purpose
            # The access line says it, unless it has its reason already: a session ended
            # closes the WebSocket ("the session was ended"), then its tunnel.
            if why and self._upgraded is not None and not self._upgraded.reason:
                said = ("the studio's connection went away" if going
                        else "the connection to the studio broke")
                self._upgraded = replace(self._upgraded, reason=f"{said}: {why}")
            # (the words of `why` may name addresses: the browser gets fewer)
            if going:
                self._end_upgraded(SERVICE_RESTART, _TUNNEL_GOING)
            elif why:
                self._end_upgraded(INTERNAL_ERROR, "the connection to the studio broke")
            else:
                # The tool closed its end without a close frame of its own (or after it):
                # its end goes on as it came, with no close frame of the gateway's, which
                # the browser reports as 1006, as connected directly. A frame of ours
                # would make it final for a page (JupyterLab takes 1001 so: its kernel,
                # gone with a stopped jupyter-server, was never asked for again).
                self._stop_waiting()
                if not self._closing:
                    self._close()
            return
        ex = self._ex
        if ex is None or ex.up is not conn:
            return
        if ex.response_started:  # a response delimited by the close ends here
            conn.codec.closed()
            self._pump_response(ex, conn)
            if ex is not self._ex or ex.up is not conn:
                return
        self._cancel_response_timer()
        ex.up = None
        self._detach(conn)
        if ex.response_started:
            self._close()
        elif conn.tunnel_lost():
            # The tunnel ended under the request, before the tool said anything: which
            # case it is, as for a dial that finds no tunnel (asked now and only now).
            # Never tried again, pooled connection or not: the request may have reached
            # the tool before the tunnel went (a studio back at once got it twice).
            self.gate.pause("dispatch")  # (nothing more of the body while it is asked)
            self._not_connected(ex, close=True)
        elif ex.reused and not ex.body_started and not ex.retried:
            # An idle connection the tool closed as we took it: one fresh try.
            ex.retried = True
            ex.request_done = False
            self._log.debug("retrying on a fresh connection to {sid}", sid=ex.session_id)
            self.gate.pause("dispatch")
            self._connect(ex)
        else:
            sid = ex.session_id
            if conn.refused():
                self._respond(ex, pages.tool_not_answering(sid), close=True,
                              why="the tool refused the connection (nothing listening on its "
                                  "port)")
            else:
                self._respond(ex, pages.bad_gateway(sid), close=True,
                              why="the tool's connection ended before its answer")

    # Answering and finishing ------------------------------------------------------------------

    def _respond(self, ex: Exchange, answer: Any, close: bool = False, why: str = "") -> None:
        """Send a response made here (a page, a redirect, the login's answer); `why` the
        gateway refused the request (the access log's reason; by default the status's)."""
        if ex is not self._ex or self._closing:
            return
        routed_to = ex.route.session_id if ex.route is not None else None
        looped = loop.came_back(ex.request.headers, routed_to, self.factory.marks)
        if looped is not None:  # (not the login's redirect, again and again)
            answer, why, close = self._came_back(looped, routed_to is not None), \
                "the studio's tool port is the gateway's own", False
        if answer.status >= 400 and getattr(answer, "message", "") \
                and not shows_page(ex.request.headers):
            answer = pages.for_script(answer)  # its words in JSON, for a program
        # A page of the login or the authorizer may say for the access line who was
        # refused and why (pages.Page's user and why).
        user = getattr(answer, "user", "")
        if user:
            ex.subject = user
        self._why = why or getattr(answer, "why", "") or (
            pages.reason_phrase(answer.status).decode().lower() if answer.status >= 400
            else "")
        data, close = ex.answer(answer, close)
        if data is None:
            self._log.warn("could not send a {status}: {e}", status=answer.status,
                           e=ex.problem.why if ex.problem else "")
            self._close()
            return
        self._bytes_out += len(data)
        self.transport.write(data)
        self._finish(ex, close=close)

    def _came_back(self, session_id: str, routed: bool) -> pages.Page:
        """A request of the gateway's to `session_id`'s tool came back (http.loop): the
        page, and the log's line (once a minute per studio: each page load sends many).
        One for none of the studios (`routed` False) names a session only its headers
        name (a tool knows its own session's mark, and may send it with no studio's
        address): those share one line a minute."""
        if self.factory.repeats.due(f"loop {session_id}" if routed
                                    else "loop (no studio)") is not None:
            port = getattr(self.transport.getHost(), "port", "?")
            self._log.warn("{line}", line=loop.log_line(session_id, port))
        return loop.page(session_id)

    def _facts(self, ex: Exchange, kind: str, why: str, to: Callable[..., Any] = Finished
               ) -> Any:
        """What the access log and the metrics take of `ex` (never a header or query):
        `to` called with a :class:`Finished`'s fields in their order (kind, started,
        duration, session_id, tool, subject, client, method, path, status, bytes_in,
        bytes_out, reason); by default the Finished."""
        started = self._started
        info = ex.info
        tool = ex.tool
        return to(
            kind, started, self.factory.reactor.seconds() - started, ex.session_id,
            tool.spec.name if tool else "", ex.subject,
            # (a trusted proxy's X-Forwarded-For is looked for only when the head has one)
            (client_address(ex.request.headers, self._peer, True)
             if self._trusted and ex.request.forwarded else self._peer or ""),
            info.method if info else ex.request.method.decode("ascii", "replace"),
            path_only(info.path if info else ex.request.target.decode("latin-1")),
            ex.status, self._bytes_in - self._mark_in, self._bytes_out - self._mark_out, why)

    def _report(self, ex: Exchange, why: str = "") -> None:
        """`ex` ended: tell the observer (its fields given straight to Traffic.http, no
        Finished made), and start the next exchange's counts here."""
        observer = self.factory.observer
        if observer is not None:
            self._facts(ex, HTTP, self._why or why, observer.http)
        self._mark_in, self._mark_out = self._bytes_in, self._bytes_out

    def _finish(self, ex: Exchange, close: bool = False) -> None:
        self._ex = None
        response_timer = self._response_timer
        if response_timer is not None:
            response_timer.disarm()
        self._report(ex)
        if ex.pending is not None:
            ex.pending = None
        rest = None if close or self.factory.draining else ex.leftover()
        if rest is None:
            self._close()
            return
        reader = self._reader
        assert reader is not None
        if rest or reader.buf:  # (else it is as a taken head left it: nothing to forget)
            reader.reset(rest)
        gate = self.gate
        if gate.held:
            gate.resume("pipeline")
            gate.resume("dispatch")
            gate.resume("upstream-full")
        lim = self.factory.limits
        if reader.buf:
            self._set_timer(lim.header_timeout, self._head_timed_out)
            self._read_head()
        else:
            self._idle = True
            assert self._timer is not None
            self._timer.arm(lim.idle_timeout, self._idle_timed_out)
