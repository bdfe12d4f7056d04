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

import socket
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

    def createInternetSocket(self) -> socket.socket:
        s = super().createInternetSocket()
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return s

    def _connectDone(self) -> None:
        super()._connectDone()
        dial = self.connector.factory
        if isinstance(dial, _Dial):
            dial.connected(self.protocol)


class _Connector(tcp.Connector):
    def _makeTransport(self) -> ToolConnection:
        return ToolConnection(self.host, self.port, self.bindAddress, self, self.reactor)


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
