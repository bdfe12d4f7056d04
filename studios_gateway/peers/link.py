"""Connections between gateway nodes: one multiplexed, authenticated link per pair.

The accepting side (:class:`PeerServerFactory`, on CONNECT_LISTENER_PORT) runs
the handshake and then a yamux :class:`Multiplexer` whose incoming streams are
:class:`PeerRequest` s. The dialing side (:class:`PeerPool`) keeps at most one
link per peer address: opened on first use, pinged while it lives (a dead peer
is noticed within the ping timeout), and dialed again on the next use after it
is lost. A peer that could not be reached is not dialed again for
`retry_after` seconds, so a dead node costs one failed connect, not one per
request.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer, endpoints
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from studios_gateway.peers.handshake import (
    MAX_LINE,
    ClientHandshake,
    HandshakeError,
    PeerAuth,
    ServerHandshake,
)
from studios_gateway.peers.streams import PeerRequest, PeerStream, open_remote
from studios_gateway.wire.bind import BindError, LineBuffer
from studios_gateway.wire.closing import close_within
from studios_gateway.wire.mux import Multiplexer, TunnelUnavailable, broke, facing
from studios_gateway.wire.sockopts import TUNNEL_BUFFER, bulk_buffers, no_delay, unsent_bound
from studios_gateway.wire.tls_memory import wrap_client_tls

#: The multiplexer of this end: a silent path is "nothing heard from the other node".
NODE_MUX = facing("the other node")


class PeerUnavailable(Exception):
    """No link to that node (cannot connect, refused the handshake, lost)."""

    def __init__(self, address: str, reason: str):
        super().__init__(f"peer {address}: {reason}")
        self.address = address
        self.reason = reason


@dataclass(frozen=True)
class PeerSettings:
    window_size: int = 6 * 1024 * 1024
    ping_interval: float = 10.0
    ping_timeout: float = 20.0
    handshake_timeout: float = 10.0
    connect_timeout: float = 5.0
    answer_timeout: float = 10.0
    retry_after: float = 1.0
    max_streams: int = 4096


def _make_mux(settings: PeerSettings, clock: Any, is_client: bool,
              on_stream: Callable[[Any], Any] | None) -> Multiplexer:
    return NODE_MUX(is_client=is_client, clock=clock, window_size=settings.window_size,
                    max_streams=settings.max_streams, ping_interval=settings.ping_interval,
                    ping_timeout=settings.ping_timeout, on_stream=on_stream)


class _HandshakeProtocol(Protocol):
    """Line-based handshake, then everything goes to a multiplexer."""

    # Set by makeConnection before any other event: a TCP or mutual-TLS connection between nodes.
    transport: Any

    _log = Logger()

    def __init__(self, settings: PeerSettings, clock: Any):
        self.settings = settings
        self.clock = clock
        self.mux: Multiplexer | None = None
        self._lines: LineBuffer | None = LineBuffer(MAX_LINE)
        self._timer: Any = None
        self.closed_waiters: list[Deferred[None]] = []

    def connectionMade(self) -> None:
        # A peer link is a tunnel between nodes: same socket treatment as the studio's.
        no_delay(self.transport)
        unsent_bound(self.transport)
        bulk_buffers(self.transport, TUNNEL_BUFFER)
        self._timer = self.clock.callLater(self.settings.handshake_timeout, self._timed_out)

    def _timed_out(self) -> None:
        self._timer = None
        self.handshake_failed(HandshakeError("no peer handshake within "
                                             f"{self.settings.handshake_timeout:g}s"))
        if self.transport is not None:
            self.transport.abortConnection()  # it may not even speak TLS: do not wait

    def dataReceived(self, data: bytes) -> None:
        if self.mux is not None:
            self.mux.dataReceived(data)
            return
        if self._lines is None:
            return
        try:
            got = self._lines.feed(data)
        except BindError:
            self.handshake_failed(HandshakeError("peer handshake line too long"))
            return
        while got is not None and self._lines is not None and self.mux is None:
            line, rest = got
            self._lines = LineBuffer(MAX_LINE)
            try:
                self.line_received(line)
            except HandshakeError as e:
                self.handshake_failed(e)
                return
            if self.mux is not None:
                if rest:
                    self.mux.dataReceived(rest)
                return
            got = self._lines.feed(rest) if rest else None

    def start_mux(self, mux: Multiplexer) -> None:
        self._cancel_timer()
        self._lines = None
        self.mux = mux
        mux.makeConnection(self.transport)

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def line_received(self, line: bytes) -> None:
        raise NotImplementedError

    def handshake_failed(self, err: HandshakeError) -> None:
        self._cancel_timer()
        self._lines = None
        if self.transport is not None:
            close_within(self.transport, self.clock, "peer link (its handshake failed)")

    def connectionLost(self, reason: Failure | None = None) -> None:
        self._cancel_timer()
        self._lines = None
        if self.mux is not None:
            self.mux.connectionLost(reason)
        waiters, self.closed_waiters = self.closed_waiters, []
        for d in waiters:
            d.callback(None)

    def close(self) -> Deferred[None]:
        """Close the connection; fires once it is gone."""
        if self.transport is None or not self.transport.connected:
            return defer.succeed(None)
        d: Deferred[None] = Deferred()
        self.closed_waiters.append(d)
        if self.mux is not None and not self.mux.closed:
            self.mux.close()  # (within wire.closing's grace, as here)
        else:
            close_within(self.transport, self.clock, "peer link")
        return d


# Accepting ---------------------------------------------------------------------------


class PeerServerProtocol(_HandshakeProtocol):
    def __init__(self, factory: PeerServerFactory):
        super().__init__(factory.settings, factory.clock)
        self.factory = factory
        self.handshake = ServerHandshake(factory.auth)

    def connectionMade(self) -> None:
        super().connectionMade()
        self.factory.connections.add(self)
        self.transport.write(self.handshake.hello())

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.factory.connections.discard(self)
        super().connectionLost(reason)
        if self.mux is not None:
            self._log.info("peer {node} disconnected ({why})", node=self.handshake.peer_node,
                           why=broke(self.mux.ended_by(reason)) or "closed")

    def line_received(self, line: bytes) -> None:
        reply = self.handshake.answer(line)
        self.transport.write(reply)
        self._log.info("peer {node} connected from {addr}", node=self.handshake.peer_node,
                       addr=getattr(self.transport.getPeer(), "host", "?"))
        table, outcome = self.factory.table, self.factory.on_outcome
        self.start_mux(_make_mux(self.settings, self.clock, False,
                                 lambda stream: PeerRequest(table, outcome)))

    def handshake_failed(self, err: HandshakeError) -> None:
        peer = self.transport.getPeer() if self.transport else None
        addr = getattr(peer, "host", "?")
        claimed = self.handshake.claimed_node
        self._log.warn("peer connection from {who} refused: {reason}",
                       who=f"node {claimed} at {addr}" if claimed else addr, reason=err.reason)
        if self.transport is not None:
            self.transport.write(ServerHandshake.refusal(err))
        super().handshake_failed(err)


class PeerServerFactory(Factory):
    def __init__(self, table: Any, auth: PeerAuth, settings: PeerSettings, clock: Any,
                 on_outcome: Callable[[str], None] | None = None):
        self.table = table
        self.auth = auth
        self.settings = settings
        self.clock = clock
        self.on_outcome = on_outcome
        self.connections: set[PeerServerProtocol] = set()

    def buildProtocol(self, addr: Any) -> Protocol:
        return PeerServerProtocol(self)

    def close(self) -> Deferred[Any]:
        """Close every accepted peer connection; fires once they are gone."""
        return defer.DeferredList([p.close() for p in list(self.connections)])


# Dialing -----------------------------------------------------------------------------


class PeerClientProtocol(_HandshakeProtocol):
    def __init__(self, link: _Link):
        super().__init__(link.pool.settings, link.pool.clock)
        self.link = link
        self.handshake = ClientHandshake(link.pool.auth, link.pool.node_id)
        self._greeted = False

    def line_received(self, line: bytes) -> None:
        if not self._greeted:
            self._greeted = True
            self.transport.write(self.handshake.greet(line))
            return
        self.handshake.finish(line)
        mux = _make_mux(self.settings, self.clock, True, None)  # peers open no streams to us
        self.start_mux(mux)
        self.link.up(self, mux)

    def handshake_failed(self, err: HandshakeError) -> None:
        self.link.failed(err.reason)
        super().handshake_failed(err)

    def connectionLost(self, reason: Failure | None = None) -> None:
        super().connectionLost(reason)
        self.link.down(self, reason)


def split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"not a host:port peer address: {address!r}")
    return host, int(port)


class _Link:
    """The link to one peer address: connecting, up, or down (and since when)."""

    _log = Logger()

    def __init__(self, pool: PeerPool, address: str):
        self.pool = pool
        self.address = address
        self.mux: Multiplexer | None = None
        self.protocol: PeerClientProtocol | None = None
        self.waiters: list[Deferred[Multiplexer]] = []
        self.connecting = False
        self.failed_at: float | None = None
        self.last_error = ""
        #: The node the registry last named at this address (for the log), if told.
        self.node_id = ""

    def get(self) -> Deferred[Multiplexer]:
        mux = self.mux
        if mux is not None and not mux.closed and mux.remote_go_away is None:
            return defer.succeed(mux)
        now = self.pool.clock.seconds()
        if (not self.connecting and self.failed_at is not None
                and now - self.failed_at < self.pool.settings.retry_after):
            return defer.fail(PeerUnavailable(self.address, self.last_error))
        d: Deferred[Multiplexer] = Deferred()
        self.waiters.append(d)
        if not self.connecting:
            self._connect()
        return d

    def _connect(self) -> None:
        self.connecting = True
        pool = self.pool
        try:
            host, port = split_address(self.address)
        except ValueError as e:
            self.failed(str(e))
            return
        endpoint: Any = endpoints.HostnameEndpoint(pool.reactor, host, port,
                                                   timeout=pool.settings.connect_timeout)
        if pool.tls is not None:
            # wrapClientTLS's connection with wire/tls_lean.py's record path and BIOs
            # renewed once quiet (wire/tls_memory.py); writes still gathered per turn.
            endpoint = wrap_client_tls(pool.tls, endpoint)
        factory = Factory.forProtocol(lambda: PeerClientProtocol(self))
        factory.noisy = False  # no "Starting factory <...Factory object at 0x...>" per dial
        endpoint.connect(factory).addErrback(
            lambda f: self.failed(f.getErrorMessage() or f.type.__name__, connecting=True))

    def up(self, protocol: PeerClientProtocol, mux: Multiplexer) -> None:
        self.connecting = False
        self.failed_at = None
        self.protocol, self.mux = protocol, mux
        self._log.info("peer link to {address} is up", address=self.address)
        waiters, self.waiters = self.waiters, []
        for d in waiters:
            d.callback(mux)

    def failed(self, reason: str, connecting: bool = False) -> None:
        """The link could not be made: `connecting`, no connection at all (refused, no
        route, timed out), else the handshake failed (and `reason` says why)."""
        if not self.connecting:
            return
        self.connecting = False
        self.failed_at = self.pool.clock.seconds()
        self.last_error = reason
        who = f"node {self.node_id} at {self.address}" if self.node_id else self.address
        # Its address is the node's own word (CONNECT_ADVERTISE_ADDRESS, or what it comes
        # from): the line named only the address, and no setting, for a node that runs.
        hint = (" (the address it advertises: if that node is running, check its "
                "CONNECT_ADVERTISE_ADDRESS and CONNECT_LISTENER_PORT, and that the nodes "
                "may connect to each other there)") if connecting else ""
        if "CONNECT_PEER_SECRET" in reason:
            hint = (f" (compare CONNECT_PEER_SECRET on this node ({self.pool.node_id}) and "
                    f"on {who}: every node needs the same one)")
        self._log.warn("cannot reach peer {who}: {reason}{hint}", who=who, reason=reason,
                       hint=hint)
        waiters, self.waiters = self.waiters, []
        for d in waiters:
            d.errback(PeerUnavailable(self.address, reason))

    def down(self, protocol: PeerClientProtocol, reason: Failure | None) -> None:
        if self.connecting and protocol.mux is None:
            self.failed(f"connection closed during the handshake "
                        f"({reason.getErrorMessage() if reason else 'closed'})")
            return
        if protocol is self.protocol:
            self.protocol, self.mux = None, None
            ended = protocol.mux.ended_by(reason) if protocol.mux is not None else reason
            self._log.info("peer link to {address} lost ({why}); it is dialed again when "
                           "needed", address=self.address, why=broke(ended) or "closed")

    def close(self) -> Deferred[None]:
        if self.protocol is not None:
            return self.protocol.close()
        return defer.succeed(None)


class PeerPool:
    """The dialing side: a stream to a session held by the node at `address`."""

    def __init__(self, reactor: Any, auth: PeerAuth, node_id: str, settings: PeerSettings,
                 tls: Any = None):
        self.reactor = reactor
        self.clock = reactor
        self.auth = auth
        self.node_id = node_id
        self.settings = settings
        self.tls = tls
        self.links: dict[str, _Link] = {}

    def _link(self, address: str, node_id: str) -> _Link:
        link = self.links.get(address)
        if link is None:
            link = self.links[address] = _Link(self, address)
        if node_id:
            link.node_id = node_id
        return link

    def connect(self, address: str, node_id: str) -> Deferred[Multiplexer]:
        """The link to the node at `address` (made now if there is none): fires once it
        is up, fails with PeerUnavailable (logged, with `node_id` and what to check)."""
        return self._link(address, node_id).get()

    def is_up(self, address: str) -> bool:
        """Whether the link to `address` is up now."""
        link = self.links.get(address)
        return link is not None and link.mux is not None and not link.mux.closed

    def open(self, address: str, session_id: str, kind: bytes,
             node_id: str = "") -> Deferred[PeerStream]:
        """A stream to `session_id` through the node at `address` (`node_id`, as the
        registry names it, for the log); fails with PeerUnavailable (no link) or
        PeerRefused (the node does not hold it)."""
        link = self._link(address, node_id)

        def opened(mux: Multiplexer) -> Deferred[PeerStream]:
            try:
                return open_remote(mux, session_id, kind, self.clock,
                                   self.settings.answer_timeout)
            except TunnelUnavailable as e:
                raise PeerUnavailable(address, str(e)) from None

        return link.get().addCallback(opened)

    def close(self) -> Deferred[Any]:
        """Close every link; fires once they are gone."""
        return defer.DeferredList([link.close() for link in self.links.values()])
