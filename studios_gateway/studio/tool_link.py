"""TCP connections from the connect client to its tool, made for splicing to a stream.

Every byte of a request and of its answer crosses one of these connections, so the
work per read and per write is kept to a call: :class:`ToolConnection` is a Twisted TCP
client transport with sockopts' adaptive reads and write-through in its class and Nagle
off from the start. :class:`ToolEndpoint` connects one without
Twisted's endpoint wrapper: its ``_WrappingProtocol`` stays between the transport and
the protocol for the connection's life, a call per read. A read of the tool's answer is
then ``doRead`` -> the stream's ``write`` (the splice binds it, ``wire/splice.py``), and a
request from the stream is the stream's delivery -> ``ToolConnection.write`` -> ``send``.
"""

from __future__ import annotations

import os
import socket
from errno import EALREADY, EINPROGRESS, EINVAL, EISCONN, EWOULDBLOCK
from typing import Any

from twisted.internet import error, tcp
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ClientFactory, Factory
from twisted.python.failure import Failure

from studios_gateway.wire.sockopts import SMALL_READ, TOOL_BUFFER, _AdaptiveReads, _WriteThrough


# (ignore: the mixins declare connected/disconnecting as bool, Twisted's FileDescriptor int)
class ToolConnection(_AdaptiveReads, _WriteThrough, tcp.Client):  # type: ignore[misc]
    """A connection to the tool: Nagle off, reads of :data:`SMALL_READ` growing to
    :data:`TOOL_BUFFER` while the tool sends in bulk, writes sent at once while nothing
    waits in the transport's buffer (a partial send, a full socket or an error leave the
    rest to Twisted's queue, which keeps its backpressure and error handling): what
    sockopts.bulk_buffers and write_through give a tunnel's transport, from birth."""

    # Twisted's read size and write threshold (bulk_buffers' meaning), and the size reads
    # grow to; bulk_buffers finds them here and has nothing left to do.
    bufferSize = SMALL_READ
    SEND_LIMIT = TOOL_BUFFER
    _bulk_size = TOOL_BUFFER
    # No shutdown(SHUT_RDWR) before close (Twisted's own comment calls it unneeded: the
    # socket is close-on-exec, so close ends the connection the same way); after the
    # splice's half-closes it only failed with ENOTCONN, a syscall per tool connection.
    _shouldShutdown = False

    def createInternetSocket(self) -> socket.socket:
        s = super().createInternetSocket()
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return s

    # Twisted's client starts its connect a reactor turn after it is made; this one when
    # its connector says (start), unless there is a name to resolve or no socket.
    _started = False

    def _finishInit(self, whenDone: Any, skt: Any, err: Any, reactor: Any) -> None:
        if whenDone is not None and not self._requiresResolution and len(self.addr) == 2:
            # What Twisted's does before it schedules the connect (no protocol yet).
            self._commonConnection.__init__(self, skt, None, reactor)  # type: ignore[arg-type]
        else:
            self._started = True  # Twisted's way: resolve (or fail) a turn later
            super()._finishInit(whenDone, skt, err, reactor)

    def start(self) -> None:
        """Connect now. On loopback the handshake is over by the time ``connect`` says
        EINPROGRESS, so a second ``connect`` tells at once whether it worked: then the
        protocol is connected (or the attempt failed) in this call, without a reactor
        turn, a wait for the socket to become writable and the poller changes around it.
        Otherwise Twisted's doConnect waits for the socket as usual."""
        if self._started:
            return
        self._started = True
        self.realAddress = address = self.addr
        sock = self.socket
        try:
            result = sock.connect_ex(address)
            if result == EINPROGRESS:
                result = sock.connect_ex(address)
        except OSError as e:
            result = e.errno or EINVAL
        if result in (0, EISCONN):
            self._connectDone()
        elif result in (EINPROGRESS, EALREADY, EWOULDBLOCK):
            self.doConnect()
        else:
            self.failIfNotConnected(error.getConnectError((result, os.strerror(result))))

    def loseWriteConnection(self) -> None:
        """Half-close now when nothing waits to be sent (writes go out at once, so nearly
        always): Twisted's waits for the socket to be writable first, a poll later."""
        if (self.connected and not self.disconnecting and not self._writeDisconnecting
                and not self._tempDataLen and self.offset == len(self.dataBuffer)):
            self._writeDisconnecting = True
            self._writeDisconnected = True
            self._closeWriteConnection()  # shutdown(SHUT_WR), then writeConnectionLost
        else:
            super().loseWriteConnection()

    def _connectDone(self) -> None:
        super()._connectDone()
        dial = self.connector.factory
        if isinstance(dial, _Dial):
            dial.connected(self.protocol)


class _Connector(tcp.Connector):
    """Twisted's TCP connector for a ToolConnection, whose attempt is made before the
    connect timeout is set: one that connects (or is refused) at once needs none."""

    def _makeTransport(self) -> ToolConnection:
        return ToolConnection(self.host, self.port, self.bindAddress, self, self.reactor)

    def connect(self) -> None:
        if self.state != "disconnected":
            raise RuntimeError("can't connect in this state")
        self.state = "connecting"
        if not self.factoryStarted:
            self.factory.doStart()
            self.factoryStarted = 1
        self.transport = transport = self._makeTransport()
        self.factory.startedConnecting(self)
        transport.start()
        if self.state == "connecting" and self.timeout is not None:
            self.timeoutID = self.reactor.callLater(self.timeout, transport.failIfNotConnected,
                                                    error.TimeoutError())


class _Dial(ClientFactory):
    """One connection attempt: the protocol from ``factory``, the outcome in ``done``
    (the protocol once connected and its connectionMade ran, or the connect failure)."""

    noisy = False

    def __init__(self, factory: Factory[Any], done: Deferred[Any]):
        self.factory = factory
        self.done = done

    def buildProtocol(self, addr: Any) -> Any:
        try:
            return self.factory.buildProtocol(addr)
        except BaseException:
            if not self.done.called:
                self.done.errback(Failure())
            return None

    def connected(self, protocol: Any) -> None:
        if not self.done.called:
            self.done.callback(protocol)

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        if not self.done.called:
            self.done.errback(reason)


class ToolEndpoint:
    """Connects a factory's protocol to ``host:port`` over a :class:`ToolConnection`;
    ``connect`` fires with the protocol (after its connectionMade) or the failure
    (``ConnectionRefusedError``, a ``TimeoutError`` after ``timeout`` seconds),
    as Twisted's TCP4ClientEndpoint does, minus its wrapping protocol."""

    def __init__(self, reactor: Any, host: str, port: int, timeout: float = 30):
        self.reactor, self.host, self.port, self.timeout = reactor, host, port, timeout

    def connect(self, factory: Factory[Any]) -> Deferred[Any]:
        connector: _Connector | None = None

        def cancel(d: Deferred[Any]) -> None:
            if connector is None:
                return
            d.errback(error.ConnectingCancelledError(connector.getDestination()))
            if connector.state == "connecting":
                connector.stopConnecting()  # its failure finds ``done`` called

        done: Deferred[Any] = Deferred(cancel)
        try:
            connector = _Connector(self.host, self.port, _Dial(factory, done), self.timeout,
                                   None, self.reactor)
            connector.connect()
        except BaseException:
            if not done.called:
                done.errback(Failure())
        return done
