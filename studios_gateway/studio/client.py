"""The connect client's tunnel: dial out, bind, serve streams, reconnect forever.

States, each logged once when entered: waiting-for-tool, connecting, bound,
backing-off, stopped. A refusal the gateway marks as final (bad token,
incompatible version) stops the client with the gateway's reason; anything else
is retried (``Backoff``: one quick retry, one full-jitter wait, then a steady
period on the phase that wait gave). ``unknown_session`` is
final only after it has been heard for ``unknown_session_wait`` seconds without
a bind in between (CONNECT_UNKNOWN_SESSION_WAIT): a gateway that restarts loads
its sessions again, and its studios must still be there when it does.
"""

from __future__ import annotations

import random
import secrets
from collections.abc import Callable
from typing import Any

from twisted.application.service import Service
from twisted.internet import defer, endpoints, error
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import ClientFactory, Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from studios_gateway import reactor_loop
from studios_gateway.repeats import Repeats
from studios_gateway.studio.segments import SMALL_MSS, ClampedTCP, SegmentSize
from studios_gateway.studio.settings import ClientSettings, Gateway
from studios_gateway.studio.tool_link import ToolConnection, ToolEndpoint
from studios_gateway.wire.bind import BindError, BindReply, BindRequest, LineBuffer, parse_reply
from studios_gateway.wire.carrier import (
    CarrierEndpoint,
    CarrierStalled,
    ProxyConnect,
    WebSocketClient,
    proxy_setting_for,
)
from studios_gateway.wire.closing import close_within
from studios_gateway.wire.frames import GO_AWAY_NORMAL, GO_AWAY_REPLACED
from studios_gateway.wire.kinds import STREAM_SSH, STREAM_TOOL
from studios_gateway.wire.mux import Multiplexer, TunnelSilent, broke, facing, words
from studios_gateway.wire.sockopts import (
    TOOL_BUFFER,
    TUNNEL_BUFFER,
    TUNNEL_UNACKED_MARGIN,
    bulk_buffers,
    host_silence_limit,
    no_delay,
    retransmit_cap,
    unacked_limit,
    unsent_bound,
    write_through,
)
from studios_gateway.wire.splice import SpliceEnd, join
from studios_gateway.wire.tls import PinMismatch, client_options, handshake_failure
from studios_gateway.wire.tls_memory import wrap_client_tls

# Retries after a tunnel is lost (docs/decisions/reconnect-backoff.md): the first one
# within 0..BACKOFF_BASE (a blip heals at once); the second after a full-jitter wait of
# 0..BACKOFF_MAX, which gives each studio a random phase; then one every BACKOFF_MAX
# (less up to STEADY_JITTER of it) on that phase. However long a gateway was away, the
# attempts of its studios are then spread evenly over BACKOFF_MAX, so every studio is
# back within ~8 s of the gateway being ready and none of those seconds gets more than
# its share. (A ceiling doubling from 0.5 s, each wait full jitter under it, bunched a
# restarted node's studios into its first two seconds: 5-6x the mean per 100 ms.)
BACKOFF_BASE = 0.5
BACKOFF_MAX = 8.0
STEADY_JITTER = 0.1
# After a GoAway (the gateway drains) the client rebinds after a delay drawn
# uniformly from 0..GOAWAY_SPREAD, then as above on that phase: a draining node's
# studios neither dial at the same instant nor crowd a node that restarts quickly.
# The old tunnel keeps serving meanwhile. A gateway that spaces out its drain's GoAways
# itself says so at the bind (rebind_within): the client then rebinds within that, and
# should the attempt fail, goes on as after a lost tunnel's first retry. A gateway that
# says a retry period at the bind (CONNECT_TUNNEL_RETRY_PERIOD, for a small install) has
# it take BACKOFF_MAX's place, and GOAWAY_SPREAD's.
GOAWAY_SPREAD = BACKOFF_MAX
# After the next bind, a tunnel told to go away is closed (once idle) this much later: its
# node hears of the move first and stops sending new streams into it.
RETIRED_LINGER = 2.0
# After a GoAway saying that a newer bind of the session took the tunnel over
# (GO_AWAY_REPLACED: another studios-connect with this connect string, say a second
# container of the studio, or the studio's own restart), the client asks to bind only
# while the session is free (if_free; a gateway that knows it refuses "held" while the
# newer one holds it), on its usual retry period: the newer process keeps the studio, and
# this one takes it once that one has stopped. (It bound again at once, taking the
# session back: two processes took the tunnel from each other several times a second.)
# The times it was taken over within REPLACED_MEMORY are said at its binds.
REPLACED_MEMORY = 600.0
TOOL_POLL = 0.5
# While a gateway stays unreachable (or refuses, or fails its check), the same failure is
# said at its level once, then again at most once per REPEAT_EVERY with the count of
# attempts (the others at debug): an hour away costs a studio's log ~120 lines, not three
# per attempt (~1,350).
REPEAT_EVERY = 60.0
CONNECT_TIMEOUT = 10  # seconds for the TCP connection to a gateway (or its HTTPS proxy)
# Until its bind is answered, a connection to a gateway (or its HTTPS proxy) is ended
# once the gateway's host has answered nothing for ~35 s (wire/sockopts.py
# host_silence_limit): keepalive probes after 20 s with nothing received, every 5 s, 3
# of them. Once bound, the multiplexer's pings do that at the gateway's timeout.
SILENT_HOST = (20, 5, 3)
TOOL_START_WAIT = 120.0  # how long a stream waits for a preset's tool to become ready
#: A tool that has not opened its port for this long is said to be late, once.
TOOL_SLOW_NOTICE = 30.0

#: The multiplexer of this end: a silent path is "nothing heard from the gateway".
GATEWAY_MUX = facing("the gateway")


def quiet_factory(make: Callable[[], Protocol]) -> Factory[Protocol]:
    """A factory that does not log 'Starting factory' for every tool connection."""
    factory = Factory.forProtocol(make)
    factory.noisy = False
    return factory


class Backoff:
    """When to try again: 0..base, then 0..cap (full jitter), then every cap (less up to
    ``steady`` of it) on the phase that draw gave; reset after a successful bind. The
    gateway may say another period at the bind (its CONNECT_TUNNEL_RETRY_PERIOD):
    :meth:`use_period`."""

    def __init__(self, base: float = BACKOFF_BASE, cap: float = BACKOFF_MAX,
                 rng: Callable[[], float] = random.random, steady: float = STEADY_JITTER):
        self.base, self.cap, self.steady, self._rng = base, cap, steady, rng
        self._own_cap = cap
        self.attempt = 0

    def use_period(self, seconds: float) -> None:
        """The period the gateway said at the bind (0: none said, this client's own)."""
        self.cap = seconds or self._own_cap

    def next_delay(self) -> float:
        self.attempt += 1
        if self.attempt == 1:
            return self.base * self._rng()
        if self.attempt == 2:
            return self.cap * self._rng()
        return self.cap * (1 - self.steady * self._rng())

    def spread(self, width: float) -> float:
        """A delay uniform in 0..width (after a GoAway); attempts after it keep its phase."""
        self.attempt = 2
        return width * self._rng()

    def soon(self, width: float) -> float:
        """A delay uniform in 0..width (after a paced GoAway: the gateway spread them);
        should that attempt fail, the next draws a phase of its own (full jitter)."""
        self.attempt = 1
        return width * self._rng()

    def reset(self) -> None:
        self.attempt = 0


class ToolSide(SpliceEnd):
    """The tool end of a stream's splice: a TCP connection to 127.0.0.1:tool_port (a
    ToolConnection, which reads and writes as the fitting below asks by itself)."""

    direct = True  # a read of the tool's answer: straight to the stream's write

    def __init__(self, stream_end: StreamSide):
        super().__init__()
        self._stream_end = stream_end

    def connectionMade(self) -> None:
        if not isinstance(self.transport, ToolConnection):
            no_delay(self.transport)
            bulk_buffers(self.transport, TOOL_BUFFER)
            write_through(self.transport)
        join(self._stream_end, self)


class StreamSide(SpliceEnd):
    """The stream end: reads the one-byte target, connects it, then splices."""

    _log = Logger()
    direct = True  # once spliced, a request goes straight to the target's write

    def __init__(self, client: ConnectClient):
        super().__init__()
        self._client = client
        self._kind: bytes | None = None

    def dataReceived(self, data: bytes) -> None:
        # Once spliced, join has bound the target transport's write in this method's
        # place: only the stream's first bytes (and any before the target is up) come here.
        if self._kind is None:
            self._kind, data = data[:1], data[1:]
            self._open_target()
            if not data:
                return
        super().dataReceived(data)

    def _open_target(self) -> None:
        self.transport.pauseProducing()
        if self._kind == STREAM_TOOL:
            self._client.connect_tool(lambda: ToolSide(self)).addErrback(self._target_failed)
        elif self._kind == STREAM_SSH and self._client.ssh_target is not None:
            self._client.ssh_target(self)
        else:
            self._log.warn("stream for an unknown target {kind!r}; resetting", kind=self._kind)
            self.transport.abortConnection()

    def _target_failed(self, f: Failure) -> None:
        self._client.tool_not_answering(f.getErrorMessage())
        if self.transport is not None:
            self.transport.abortConnection()


class TunnelClientProtocol(Protocol):
    """Sends the bind, reads the answer, then runs the multiplexer."""

    # Set by makeConnection before any other event: the TLS (or WebSocket-carried)
    # connection to the gateway.
    transport: Any

    _log = Logger()

    def __init__(self, client: ConnectClient, gateway: Gateway):
        self.client = client
        self.gateway = gateway
        self._lines: LineBuffer | None = LineBuffer()
        self.mux: Multiplexer | None = None
        self.refusal: BindReply | None = None
        self.reply: BindReply | None = None  # the gateway's ok
        self.closed: Deferred[None] = Deferred()  # fires once the connection is gone

    def connectionMade(self) -> None:
        no_delay(self.transport)
        unsent_bound(self.transport)
        retransmit_cap(self.transport)
        bulk_buffers(self.transport, TUNNEL_BUFFER)
        write_through(self.transport)
        s = self.client.settings
        self.transport.write(BindRequest(s.session_id, s.token, s.connect_version, s.tool,
                                         s.tool_port, s.tool_version, paced_go_away=True,
                                         replaced_go_away=True,
                                         replaced=self.client.replaced_lately(),
                                         if_free=self.client.waiting_for_free,
                                         instance=self.client.instance).encode())

    def dataReceived(self, data: bytes) -> None:
        if self.mux is not None:
            self.mux.dataReceived(data)
            return
        assert self._lines is not None
        try:
            got = self._lines.feed(data)
        except BindError:
            self.transport.abortConnection()
            return
        if got is None:
            return
        line, rest = got
        try:
            reply = parse_reply(line)
        except BindError:
            self.transport.abortConnection()
            return
        if not reply.ok:
            self.refusal = reply
            # (a gateway that reads nothing would hold it, and the retry, for good)
            close_within(self.transport, self.client.clock, "tunnel connection (bind refused)")
            return
        self.reply = reply
        # Bound: the multiplexer's pings find a silent gateway now, at the timeout the
        # gateway set (which the kernel's limit must not cut short).
        host_silence_limit(self.transport, None)
        s = dict(self.client.tunnel_settings)
        if reply.ping_interval and reply.ping_timeout:
            # The gateway's keepalive: both ends find a silent path within its timeout.
            s.update(ping_interval=reply.ping_interval, ping_timeout=reply.ping_timeout)
        if s.get("ping_timeout"):  # (not cut short under the retransmission cap either)
            unacked_limit(self.transport, s["ping_timeout"] + TUNNEL_UNACKED_MARGIN)
        self.mux = GATEWAY_MUX(is_client=True, clock=self.client.clock, on_stream=self._stream,
                               on_go_away=self._go_away, gather=True, **s)
        self.mux.makeConnection(self.transport)
        deliver_to = getattr(self.transport, "deliver_to", None)
        if deliver_to is not None:
            deliver_to(self.mux)  # the tunnel's TLS reads go to the mux without this hop
        self.client.bound(self)
        if rest:
            self.mux.dataReceived(rest)

    def _stream(self, stream: Any) -> None:
        stream.attach(StreamSide(self.client))

    def _go_away(self, code: int) -> None:
        if code != GO_AWAY_REPLACED:  # (said by going_away, with what to do)
            self._log.info("gateway {gw} is draining (GoAway {code}); reconnecting",
                           gw=str(self.gateway), code=code)
        self.client.going_away(self, code)

    def connectionLost(self, reason: Failure | None = None) -> None:
        if self.mux is not None:
            self.mux.connectionLost(reason)
        self.client.lost(self, reason)
        self.closed.callback(None)


class ConnectClient(Service):
    """Keeps one tunnel to a gateway up for as long as the service runs."""

    _log = Logger()
    #: The protocol each connection to a gateway speaks (bench/storm.py records its binds).
    protocol_class: type[TunnelClientProtocol] = TunnelClientProtocol

    def __init__(self, settings: ClientSettings, reactor: Any, *,
                 tunnel_settings: dict[str, Any] | None = None,
                 on_fatal: Callable[[str], None] | None = None,
                 ssh_target: Callable[[StreamSide], None] | None = None,
                 on_bind: Callable[[BindReply], None] | None = None,
                 backoff: Backoff | None = None,
                 tool_ready: Deferred[None] | None = None, bind_first: bool = False):
        self.settings = settings
        self.reactor = reactor
        self.clock = reactor
        self.tunnel_settings = tunnel_settings or {}
        self.on_fatal = on_fatal
        self.ssh_target = ssh_target
        self.on_bind = on_bind  # sees each ok (the gateway's SSH key fingerprint)
        self.backoff = backoff or Backoff()
        # Small TCP segments after an attempt that stalled before its bind (segments.py).
        self.segments = SegmentSize(reactor)
        self._tcp = ClampedTCP(reactor, self.segments)
        # A preset's readiness probe: the first bind waits for it (or, with bind_first,
        # the bind comes first so the tool can learn its prefix) and streams wait for it.
        # None: the tool is ready when its port accepts.
        self.tool_ready = tool_ready
        self.bind_first = bind_first
        self.state = "new"
        self.ready: Deferred[None] = Deferred()  # fires at the first successful bind
        self._gateway_index = 0
        self._pending: Any = None
        self._protocol: TunnelClientProtocol | None = None
        self._connecting: Deferred[Any] | None = None
        self._bound_waiters: list[Deferred[TunnelClientProtocol]] = []
        #: Tunnels the gateway told to go away (GoAway) while they were this client's: kept
        #: open until the next bind, so the old node still serves the studio meanwhile
        #: (make before break), then closed once their streams have finished.
        self._retired: list[TunnelClientProtocol] = []
        #: When a newer bind of the session took the tunnel over (GO_AWAY_REPLACED), within
        #: REPLACED_MEMORY.
        self._replaced_at: list[float] = []
        #: Taken over and not bound since: binds ask to bind only while the session is
        #: free (if_free), so this one does not take it back from the newer studio.
        self.waiting_for_free = False
        #: This process's name at its binds (wire.bind, "instance"): the gateway tells this
        #: studio reconnecting from a second studio on its session.
        self.instance = secrets.token_hex(8)
        #: Retired tunnels whose close waits RETIRED_LINGER after a bind, with that call.
        self._lingering: dict[TunnelClientProtocol, IDelayedCall] = {}
        self._tool_down_since: float | None = None  # when the tool began refusing
        self._unknown_since: float | None = None  # when unknown_session was first heard
        # Failed attempts since the last bind (the first of them at _missing_since), and
        # the last failure said at its level (see _say_again); _loud: the current
        # attempt's lines are said at info.
        self._attempts = 0
        self._missing_since = 0.0
        self._said: str | None = None
        self._said_at = 0.0
        self._loud = True
        # Streams the tool did not take (see tool_not_answering): said once per REPEAT_EVERY
        self._unanswered = Repeats(self.clock, REPEAT_EVERY)
        self._watching: Any = None  # _poll_tool's next look at the tool's port

    def _set_state(self, state: str, log_format: str, *, quiet: bool = False,
                   **kw: Any) -> None:
        """Enter `state`, saying so (at debug when `quiet`: a retry nobody needs to read)."""
        if state != self.state:
            self.state = state
            (self._log.debug if quiet else self._log.info)(log_format, **kw)

    def _say_again(self, key: str) -> bool:
        """Whether a retry's failure (named by `key`) is worth a line now: the first time,
        when it changes, then once per REPEAT_EVERY. Otherwise it goes to debug, and so does
        the reconnecting line after it (the connecting line is said for the first attempt
        only): an unreachable gateway wrote three lines every few seconds, for as long as
        it was away."""
        self._attempts += 1
        now = self.clock.seconds()
        if self._attempts == 1:
            self._missing_since = now
        self._loud = key != self._said or now - self._said_at >= REPEAT_EVERY
        if self._loud:
            self._said, self._said_at = key, now
        return self._loud

    def _failure(self, level: str, key: str, log_format: str, *, every_time: bool = False,
                 **kw: Any) -> None:
        """A failed attempt: said at `level` (with the attempts so far when it repeats), or
        at debug (see _say_again). `every_time`: said at every attempt all the same (a
        certificate that names another host: a person must act, and may be reading only
        errors)."""
        if not self._say_again(key) and not every_time:
            self._log.debug(log_format, **kw)
            return
        if self._attempts > 1:
            log_format += " ({attempts} attempts in {since:.0f}s; still trying)"
            kw["attempts"] = self._attempts
            kw["since"] = self.clock.seconds() - self._missing_since
        getattr(self._log, level)(log_format, **kw)

    # Lifecycle ---------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        reactor_loop.install(self.clock)  # the lean epoll poll (the real reactor only)
        if self.bind_first:
            self._connect()
        elif self.tool_ready is not None:
            self._set_state("waiting-for-tool", "waiting for the tool to be ready")
            self._after_ready(self._connect)
        else:
            self._wait_for_tool()

    def _after_ready(self, then: Callable[[], Any], timeout: float | None = None) -> None:
        """Call ``then`` once the tool is ready (or after ``timeout`` seconds, if given)."""
        gate = self.tool_ready
        if gate is None or gate.called:
            then()
            return
        fired: list[bool] = []

        def go(_: Any = None) -> Any:
            if not fired:
                fired.append(True)
                if timer is not None and timer.active():
                    timer.cancel()
                then()
            return _

        timer = self.clock.callLater(timeout, go) if timeout is not None else None
        gate.addCallback(go)

    def stopService(self) -> Deferred[None]:
        """Stop reconnecting and close the tunnel; fires once its connection is gone."""
        super().stopService()
        self._set_state("stopped", "stopped")
        for call in (self._pending, self._watching):
            if call is not None and call.active():
                call.cancel()
        if self._connecting is not None:
            self._connecting.cancel()
        retired, self._retired = self._retired, []
        lingering, self._lingering = self._lingering, {}
        for call in lingering.values():
            if call.active():
                call.cancel()
        for old in [*retired, *lingering]:  # (told to go away: GoAway was the gateway's)
            if old.mux is not None:
                old.mux.close()
        protocol, self._protocol = self._protocol, None
        if protocol is not None and protocol.transport is not None:
            if protocol.mux is not None:
                # GoAway first: the gateway then knows the end is on purpose (a browser's
                # WebSockets to the tool get "going away", not "the connection broke").
                protocol.mux.go_away()
                protocol.mux.close()
            else:
                # Not bound: nothing to finish; a clean TLS close would wait for a
                # handshake that a silent gateway never completes, holding the stop.
                protocol.transport.abortConnection()
            return protocol.closed
        return defer.succeed(None)

    # The tool ----------------------------------------------------------------

    def tool_endpoint(self) -> Any:
        return ToolEndpoint(self.reactor, self.settings.tool_host, self.settings.tool_port,
                            timeout=5)

    def tool_endpoint_on_ipv6_loopback(self) -> Any:
        """The tool's port on ::1: asked only to say why a tool is not reached."""
        return endpoints.TCP6ClientEndpoint(self.reactor, "::1", self.settings.tool_port,
                                            timeout=5)

    def connect_tool(self, make: Callable[[], Protocol]) -> Deferred[Any]:
        """Connect to the tool, retrying for a while if it is (re)starting.

        A tool that has refused connections for longer than the retry window is
        down, not restarting: then one attempt, so the browser gets its 504 page
        at once instead of after another wait.
        """
        if self.tool_ready is not None and not self.tool_ready.called:
            waited: Deferred[Any] = Deferred()
            self._after_ready(lambda: self._connect_tool(make).chainDeferred(waited),
                              timeout=TOOL_START_WAIT)
            return waited
        return self._connect_tool(make)

    def _connect_tool(self, make: Callable[[], Protocol]) -> Deferred[Any]:
        now = self.clock.seconds()
        down_since = self._tool_down_since
        window = self.settings.tool_restart_wait  # CONNECT_TOOL_RESTART_WAIT
        if down_since is not None and now - down_since >= window:
            deadline = now
        else:
            deadline = now + window

        def attempt() -> Deferred[Any]:
            d = self.tool_endpoint().connect(quiet_factory(make))

            def up(protocol: Any) -> Any:
                self._tool_down_since = None
                self._unanswered.clear()  # back: the next stream it does not take is news
                return protocol

            def retry(f: Failure) -> Any:
                if f.check(error.ConnectError):
                    if self._tool_down_since is None:
                        self._tool_down_since = self.clock.seconds()
                    if self.clock.seconds() < deadline:
                        return defer.Deferred.fromCoroutine(_later())
                return f

            return d.addCallbacks(up, retry)

        async def _later() -> Any:
            await _sleep(self.clock, TOOL_POLL)
            return await attempt()

        return attempt()

    def _wait_for_tool(self) -> None:
        """Before the dial: poll the tool's port, and dial once it accepts."""
        if not self.running:
            return
        self._set_state("waiting-for-tool", "waiting for the tool to accept connections on "
                        "port {port}", port=self.settings.tool_port)

        def accepting(_: float) -> None:
            self._log.info("tool is accepting connections on port {port}",
                           port=self.settings.tool_port)
            self._connect()

        self._poll_tool(accepting)

    def watch_tool(self, on_accepting: Callable[[], Any] | None = None) -> None:
        """Watch the port of a tool started after the dial (a command started at the bind,
        which nothing waits for): say when it first accepts connections, and once, after
        TOOL_SLOW_NOTICE, that it does not yet, naming the port it must use, as the wait
        before a dial does. Without this, a tool on its own default port showed browsers
        the 504 page for ever while the log said only that streams were reset."""

        def accepting(waited: float) -> None:
            self._log.info("tool is accepting connections on port {port} ({secs:.0f}s after "
                           "it started)", port=self.settings.tool_port, secs=waited)
            if on_accepting is not None:
                on_accepting()

        self._poll_tool(accepting)

    def _poll_tool(self, on_accepting: Callable[[float], Any]) -> None:
        """Try the tool's port now and every TOOL_POLL until it accepts, then call
        ``on_accepting`` with the seconds since this began. Once, after TOOL_SLOW_NOTICE
        without, say so (a person reading the container's log learns it is stuck, and why
        it usually is: a tool on its own default port, or not started at all). The next
        look is ``_watching``, which a stop cancels."""
        since = self.clock.seconds()
        noticed = False

        def look() -> None:
            self._watching = None
            if self.running:
                self.tool_endpoint().connect(quiet_factory(Protocol)).addCallbacks(up, down)

        def up(p: Any) -> None:
            if p.transport is not None:
                p.transport.loseConnection()
            on_accepting(self.clock.seconds() - since)

        def down(f: Failure) -> None:
            nonlocal noticed
            waited = self.clock.seconds() - since
            if not noticed and waited >= TOOL_SLOW_NOTICE:
                noticed = True
                self._say_tool_not_listening(waited, f)
            if self.running:
                self._watching = self.clock.callLater(TOOL_POLL, look)

        look()

    def _say_tool_not_listening(self, waited: float, f: Failure) -> None:
        """The warning; it says so when the port is open on ::1 alone (a tool told to listen
        on "localhost" that took IPv6's loopback, or one given --bind ::1), which the
        warning's advice (127.0.0.1 or all interfaces) did not tell from a tool on another
        port."""
        said = dict(port=self.settings.tool_port, secs=waited, why=f.getErrorMessage())

        def on_ipv6_alone(p: Any) -> None:
            if p.transport is not None:
                p.transport.loseConnection()
            self._log.warn("the tool is not accepting connections on 127.0.0.1:{port} after "
                           "{secs:.0f}s ({why}), but [::1]:{port} accepts them: the tool "
                           "listens on IPv6's loopback only; still waiting. Make it listen "
                           "on 127.0.0.1 or all interfaces (0.0.0.0)", **said)

        def not_there(_: Failure) -> None:
            self._log.warn("the tool is not accepting connections on 127.0.0.1:{port} after "
                           "{secs:.0f}s ({why}); still waiting. The tool must listen on "
                           "CONNECT_TOOL_PORT ({port}), on 127.0.0.1 or all interfaces",
                           **said)

        if self.settings.tool_host != "127.0.0.1":
            not_there(f)
            return
        try:
            asked = self.tool_endpoint_on_ipv6_loopback().connect(quiet_factory(Protocol))
        except Exception:  # (no IPv6 here: the usual words)
            not_there(f)
            return
        asked.addCallbacks(on_ipv6_alone, not_there)

    def tool_not_answering(self, why: str) -> None:
        """A stream the tool did not take (the browser gets the 504 page): said at once,
        then at most once per REPEAT_EVERY with the count, at debug in between. It was a
        warning for every stream: every request of a page, and the 504 page reloading
        itself, for as long as the tool was away."""
        unsaid = self._unanswered.due("not answering")
        if unsaid is None:
            self._log.debug("tool on port {port} is not answering ({why}); resetting the "
                            "stream", port=self.settings.tool_port, why=why)
            return
        self._log.warn("tool on port {port} is not answering ({why}); resetting the "
                       "stream{more}", port=self.settings.tool_port, why=why,
                       more=self._unanswered.more(unsaid))

    # The gateway -------------------------------------------------------------

    def gateway_endpoint(self, gateway: Gateway) -> Any:
        """The TLS endpoint of one gateway (pinned or verified by name), over its carrier."""
        return wrap_client_tls(client_options(gateway.host, gateway.pin), self._carrier(gateway),
                               write_at_once=True)

    def _connect(self) -> None:
        if not self.running:
            return
        gateway = self.settings.gateways[self._gateway_index % len(self.settings.gateways)]
        self._set_state("connecting", "connecting to gateway {gw}", gw=str(gateway),
                        quiet=self._attempts > 0)  # said for the first attempt of a run
        self._state_gateway = gateway
        self.segments.toward(gateway)  # (its TCP connection's segment size)
        factory = ClientFactory.forProtocol(lambda: self.protocol_class(self, gateway))
        factory.noisy = False
        self._connecting = self.gateway_endpoint(gateway).connect(factory)

        def connected(p: TunnelClientProtocol) -> None:
            self._connecting = None
            self._protocol = p

        def failed(f: Failure) -> None:
            self._connecting = None
            # Cancelled: the client is stopping (HostnameEndpoint reports that as
            # ConnectingCancelledError): nothing to say, nothing to retry.
            if self.running and not f.check(defer.CancelledError,
                                            error.ConnectingCancelledError):
                why = handshake_failure(f)  # a wss carrier's TLS fails here
                if why is not None and f.check(PinMismatch):
                    self._stop_for(f"cannot verify gateway {gateway}: {why}")
                    return
                if why is not None:
                    self._failure("error", f"verify {gateway} {why}",
                                  "cannot verify gateway {gw}: {why}; trying again",
                                  every_time=True, gw=str(gateway), why=why)
                else:
                    if f.check(error.ConnectionLost, error.ConnectionDone, CarrierStalled):
                        # Connected, then ended in a carrier's handshake (a wss gateway's
                        # TLS, an https:// proxy's): a stall, as in lost() for the tunnel's
                        # own TLS; a path that drops big packets: the other size next.
                        self.segments.stalled(gateway)
                    self._unreachable(gateway, f)
                self._gateway_index += 1  # the next attempt tries the next gateway listed
                self._retry()

        self._connecting.addCallbacks(connected, failed)

    def _carrier(self, gateway: Gateway) -> Any:
        """The endpoint under the tunnel's TLS: TCP to the gateway, through the HTTPS_PROXY
        (CONNECT) when one applies, and for ws(s):// a WebSocket (in TLS for wss)."""
        setting = proxy_setting_for(gateway.host, dict(self.settings.proxy_environ))
        if setting is None or setting.address is None:
            endpoint: Any = Unwrapped(endpoints.HostnameEndpoint(
                self._tcp, gateway.host, gateway.port, timeout=CONNECT_TIMEOUT))
        else:
            proxy_host, proxy_port = setting.address
            to_proxy: Any = Unwrapped(endpoints.HostnameEndpoint(
                self._tcp, proxy_host, proxy_port, timeout=CONNECT_TIMEOUT))
            if setting.tls:  # an https:// proxy: TLS to it, the CONNECT inside
                to_proxy = wrap_client_tls(client_options(proxy_host, None), to_proxy)
            endpoint = CarrierEndpoint(
                to_proxy, lambda inner: ProxyConnect(inner, gateway.host, gateway.port,
                                                     setting.authorization,
                                                     over_tls=setting.tls), self.reactor)
        if gateway.carrier == "tls":
            return endpoint
        if gateway.carrier == "wss":
            endpoint = wrap_client_tls(client_options(gateway.host, gateway.pin),
                                               endpoint)
        default = 443 if gateway.carrier == "wss" else 80
        host = gateway.host if gateway.port == default else f"{gateway.host}:{gateway.port}"
        return CarrierEndpoint(endpoint, lambda inner: WebSocketClient(inner, host, gateway.path),
                               self.reactor)

    def _unreachable(self, gateway: Gateway, f: Failure | None, why: str = "") -> None:
        """An attempt that got no bind answered (no connection, or one that ended first;
        ``why`` when given says it), in plain words, said as :meth:`_failure` says."""
        if not why and f is not None and f.check(error.TimeoutError):
            why = f"no answer within {CONNECT_TIMEOUT:g}s"  # Twisted: "User timeout ..."
        elif not why:
            why = f.getErrorMessage() if f is not None else "closed"
        self._failure("info", f"reach {gateway} {why}", "cannot reach gateway {gw}: {why}",
                      gw=str(gateway), why=why)

    def bound(self, protocol: TunnelClientProtocol) -> None:
        self.backoff.reset()
        self.waiting_for_free = False
        small_binds = self.segments.bound(protocol.gateway)
        if small_binds == 1:
            self._log.warn("bound to gateway {gw} with {mss}-byte TCP segments after an "
                           "attempt with full-size ones got no answer: the path to it may "
                           "drop large packets without a word (an MTU black hole: ICMP "
                           "'fragmentation needed' filtered), or the gateway was too busy "
                           "to answer; this tunnel keeps small segments, the next one "
                           "tries full-size ones again", gw=str(protocol.gateway),
                           mss=SMALL_MSS)
        elif small_binds is not None:
            self._log.warn("bound to gateway {gw} with {mss}-byte TCP segments after "
                           "full-size ones got no answer {n} times in a row: the path to "
                           "it drops large packets without a word (an MTU black hole: "
                           "ICMP 'fragmentation needed' filtered); studios-connect keeps "
                           "small segments toward it for the next hour (docs/operators.md "
                           "says how to fix the path)", gw=str(protocol.gateway), mss=SMALL_MSS,
                           n=small_binds)
        if protocol.reply is not None:
            self.backoff.use_period(protocol.reply.retry_period)
        self._attempts, self._said, self._loud = 0, None, True
        self._unknown_since = None
        if self.on_bind is not None and protocol.reply is not None:
            self.on_bind(protocol.reply)
        reply = protocol.reply
        seen = (f" (routing {reply.routing}, browsers open {reply.public_url})"
                if reply is not None and reply.routing else "")
        # A tool started at the first bind is not up yet: say so, not that it is served.
        serving = ("starting the tool, on port {port}" if self.bind_first and not self.ready.called
                   else "serving the tool on port {port}")
        self._set_state("bound", "session {sid} bound to gateway {gw}{seen}; " + serving,
                        sid=self.settings.session_id, gw=str(protocol.gateway), seen=seen,
                        port=self.settings.tool_port)
        if not self.ready.called:
            self.ready.callback(None)
        self._close_retired()
        waiters, self._bound_waiters = self._bound_waiters, []
        for d in waiters:
            d.callback(protocol)

    def next_bind(self) -> Deferred[TunnelClientProtocol]:
        """Fires at the next successful bind (for tests and status reporting)."""
        d: Deferred[TunnelClientProtocol] = Deferred()
        self._bound_waiters.append(d)
        return d

    @property
    def protocol(self) -> TunnelClientProtocol | None:
        return self._protocol

    def going_away(self, protocol: TunnelClientProtocol, code: int = GO_AWAY_NORMAL) -> None:
        # Rebind (elsewhere if we know other gateways) after a random part of
        # GOAWAY_SPREAD so a draining node's studios do not all dial at once. The old
        # tunnel stays open until that bind (a draining node in a cluster keeps serving
        # the studio through it, for other nodes too, until it has moved; a node on its
        # own closes it at once), then closes once its streams have finished. A tunnel
        # that was not this client's current one closes so now.
        if code == GO_AWAY_REPLACED:
            self._replaced(protocol)
            return
        self._gateway_index += 1
        if protocol.mux is not None:
            if protocol is self._protocol and self.running:
                self._retired.append(protocol)
            else:
                protocol.mux.when_idle(protocol.mux.close)
        if protocol is self._protocol and self.running:
            self._protocol = None
            # (GO_AWAY_ALONE: the gateway stops with no node to take the studio over)
            within = (protocol.reply.rebind_within if protocol.reply is not None
                      and code == GO_AWAY_NORMAL else 0.0)
            delay = (self.backoff.soon(within) if within  # (cap: GOAWAY_SPREAD unless
                     else self.backoff.spread(self.backoff.cap))  # the gateway said another)
            self._set_state("backing-off", "rebinding in {delay:.1f}s", delay=delay)
            self._pending = self.clock.callLater(delay, self._connect)

    def _replaced(self, protocol: TunnelClientProtocol) -> None:
        """A newer bind of this session took the tunnel over at `protocol`'s gateway: close
        it once its streams have finished, and from now on bind only while the session is
        free (if_free), tried over the retry period (held: again, as after a failure)."""
        if protocol.mux is not None:
            protocol.mux.when_idle(protocol.mux.close)
        if protocol is not self._protocol or not self.running:
            return  # (an older connection of this client's own: nothing to say)
        self._protocol = None
        again = self.replaced_lately() > 0
        self._replaced_at.append(self.clock.seconds())
        self.waiting_for_free = True
        delay = self.backoff.spread(self.backoff.cap)
        self._log.warn(
            "gateway {gw}: another connection of session {sid} took this studio's tunnel "
            "over{again} (another studios-connect with the same connect string, such as a "
            "second container of this studio still running, or this studio started again); "
            "browsers and ssh reach that one now; this one binds again once that one has "
            "stopped (asking every ~{period:.0f}s)",
            gw=str(protocol.gateway), sid=self.settings.session_id,
            again=" again" if again else "", period=self.backoff.cap)
        self._set_state("backing-off", "replaced; asking again in {delay:.1f}s", quiet=True,
                        delay=delay)
        self._pending = self.clock.callLater(delay, self._connect)

    def replaced_lately(self) -> int:
        """How many times a newer bind took the tunnel over within REPLACED_MEMORY (the
        bind says it: the gateway names two studios on one session)."""
        now = self.clock.seconds()
        # (0 <=: a wall clock set back forgets, as tunnel.twins does)
        self._replaced_at = [t for t in self._replaced_at if 0 <= now - t < REPLACED_MEMORY]
        return len(self._replaced_at)

    def _close_retired(self) -> None:
        """Close each tunnel told to go away once its streams have finished, RETIRED_LINGER
        after the new bind: the old node goes on opening streams on it until it hears of
        the move (the registry's event, moments later; then it closes it itself), and a
        stream it opened as this end closed it would fail as "not connected"."""
        retired, self._retired = self._retired, []

        def close(old: TunnelClientProtocol) -> None:
            del self._lingering[old]
            if old.mux is not None:
                old.mux.when_idle(old.mux.close)

        for old in retired:
            self._lingering[old] = self.clock.callLater(RETIRED_LINGER, close, old)

    def lost(self, protocol: TunnelClientProtocol, reason: Failure | None) -> None:
        if protocol is not self._protocol and protocol.refusal is None:
            return
        self._protocol = None
        refusal = protocol.refusal
        if refusal is not None and refusal.code == "unknown_session" \
                and self._still_waiting_for_session():
            self._log.warn("the gateway does not know session {sid} ({reason}); trying "
                           "again for up to {left:.0f}s more (CONNECT_UNKNOWN_SESSION_WAIT)",
                           sid=self.settings.session_id, reason=refusal.reason,
                           left=self._unknown_left())
            self._gateway_index += 1
            self._retry()
            return
        if refusal is not None and not refusal.retry:
            message = f"the gateway refused the bind: {refusal.code}: {refusal.reason}"
            if refusal.code == "unknown_session" and self.settings.unknown_session_wait > 0:
                message += (f" (for {self.settings.unknown_session_wait:.0f}s, "
                            "CONNECT_UNKNOWN_SESSION_WAIT); giving up")
            self._stop_for(message)
            return
        why = handshake_failure(reason) if refusal is None and protocol.reply is None else None
        if why is not None and reason is not None and reason.check(PinMismatch):
            self._stop_for(f"cannot verify gateway {protocol.gateway}: {why}")
            return
        if why is not None:
            self._failure("error", f"verify {protocol.gateway} {why}",
                          "cannot verify gateway {gw}: {why}; trying again",
                          every_time=True, gw=str(protocol.gateway), why=why)
        elif refusal is not None:
            # (held: taken over, waiting for the newer studio to stop: expected, not a fault)
            self._failure("info" if refusal.code == "held" else "warn",
                          f"refused {refusal.code} {refusal.reason}",
                          "the gateway refused the bind for now: {code}: {reason}",
                          code=refusal.code, reason=refusal.reason)
        elif protocol.reply is None:  # connected, then nothing: a silent host, a reset
            # or a path that drops big packets: the other size next, toward that gateway
            self.segments.stalled(protocol.gateway)
            self._unreachable(protocol.gateway, reason, "the connection ended before the "
                              f"bind was answered ({broke(reason) or 'closed'})")
        elif self.state == "bound":
            ended = protocol.mux.ended_by(reason) if protocol.mux is not None else reason
            if ended is not None and ended.check(TunnelSilent):
                # The multiplexer's words ("nothing heard from the gateway for 5s").
                self._log.warn("tunnel to {gw} lost: {why}", gw=str(protocol.gateway),
                               why=words(ended))
            else:
                self._log.info("tunnel to {gw} lost: {why}", gw=str(protocol.gateway),
                               why=broke(ended) or "closed")
        self._gateway_index += 1
        self._retry()

    def _stop_for(self, message: str) -> None:
        """A final failure: say why, stop retrying, tell the owner (studios-connect exits)."""
        self._log.error("{message}; not retrying", message=message)
        self._set_state("refused", "stopped: {message}", message=message)
        if self.on_fatal is not None:
            self.on_fatal(message)

    def _still_waiting_for_session(self) -> bool:
        """unknown_session heard now: whether the wait for the session still runs."""
        if self._unknown_since is None:
            self._unknown_since = self.clock.seconds()
        return self._unknown_left() > 0

    def _unknown_left(self) -> float:
        since = self._unknown_since if self._unknown_since is not None else self.clock.seconds()
        return since + self.settings.unknown_session_wait - self.clock.seconds()

    def _retry(self) -> None:
        if not self.running:
            return
        delay = self.backoff.next_delay()
        self._set_state("backing-off", "reconnecting in {delay:.1f}s", delay=delay,
                        quiet=not self._loud)
        self._log.debug("next attempt in {delay:.2f}s", delay=delay)
        self._pending = self.clock.callLater(delay, self._connect)


class Unwrapped:
    """A client endpoint whose connections read straight into their protocol.

    Twisted's client endpoints put a ``_WrappingProtocol`` between the transport and
    the protocol to learn when the connection is made, and leave it there: every read
    of the tunnel's TCP connection went through its ``dataReceived``. Once connected,
    the transport is given the protocol itself (which the wrapper only passed events
    to, and whose interfaces it mirrored)."""

    def __init__(self, endpoint: Any):
        self.endpoint = endpoint

    def connect(self, factory: Any) -> Deferred[Any]:
        return self.endpoint.connect(factory).addCallback(_unwrap)


def _unwrap(protocol: Any) -> Any:
    transport: Any = getattr(protocol, "transport", None)
    wrapper = getattr(transport, "protocol", None)
    if wrapper is not protocol and getattr(wrapper, "_wrappedProtocol", None) is protocol:
        transport.protocol = protocol
    # From the TCP connection on, before the TLS handshake: until the bind is answered
    # there are no pings, and a gateway host that went silent after accepting left the
    # client waiting for ever.
    host_silence_limit(transport, SILENT_HOST)
    return protocol


async def _sleep(clock: Any, seconds: float) -> None:
    d: Deferred[None] = Deferred()
    clock.callLater(seconds, d.callback, None)
    await d
