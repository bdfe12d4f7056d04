"""studio.tool_link: the connect client's TCP connections to its tool, on real sockets."""

from __future__ import annotations

import socket
from typing import Any

import pytest
from twisted.internet import defer, error, reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import TestCase
from zope.interface import implementer

from studios_gateway.studio.tool_link import ToolConnection, ToolEndpoint
from studios_gateway.wire.sockopts import TOOL_BUFFER

# Real sockets on 127.0.0.1 in this process: the integration layer, not the fast one.
pytestmark = pytest.mark.slow


class Tool(Protocol):
    """Reads until EOF, then answers with the byte count and ``extra`` bytes, and closes."""

    extra = 0

    def connectionMade(self) -> None:
        self.n = 0

    def dataReceived(self, data: bytes) -> None:
        self.n += len(data)

    def readConnectionLost(self) -> None:
        self.transport.write(b"%d\n" % self.n + b"x" * self.extra)
        self.transport.loseConnection()


implementer(IHalfCloseableProtocol)(Tool)


@implementer(IHalfCloseableProtocol)
class Client(Protocol):
    """Collects what the tool says until its EOF; records the events in order."""

    def __init__(self) -> None:
        self.events: list[str] = []
        self.data = bytearray()
        self.eof: defer.Deferred[None] = defer.Deferred()

    def connectionMade(self) -> None:
        self.events.append("made")

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def readConnectionLost(self) -> None:
        self.events.append("eof")
        self.eof.callback(None)

    def writeConnectionLost(self) -> None:
        self.events.append("write closed")


class ToolLinkTests(TestCase):
    timeout = 20

    @defer.inlineCallbacks
    def listen(self, extra: int = 0) -> Any:
        factory = Factory.forProtocol(type("T", (Tool,), {"extra": extra}))
        port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
        self.addCleanup(port.stopListening)
        return port.getHost().port

    @defer.inlineCallbacks
    def test_connects_without_a_wrapper_and_half_close_goes_both_ways(self) -> Any:
        port = yield self.listen(extra=3 * TOOL_BUFFER)
        client = Client()
        got = yield ToolEndpoint(reactor, "127.0.0.1", port, timeout=5).connect(
            Factory.forProtocol(lambda: client))
        self.assertIs(got, client)
        self.assertEqual(client.events, ["made"])  # connectionMade ran before it fired
        transport = client.transport
        self.assertIsInstance(transport, ToolConnection)
        self.assertIs(transport.protocol, client)  # nothing between transport and protocol
        self.assertTrue(transport.getHandle().getsockopt(socket.IPPROTO_TCP,
                                                         socket.TCP_NODELAY))
        transport.write(b"a" * 1000)
        transport.loseWriteConnection()  # the tool answers at our EOF
        yield client.eof
        head, _, rest = bytes(client.data).partition(b"\n")
        self.assertEqual((head, len(rest)), (b"1000", 3 * TOOL_BUFFER))
        self.assertEqual(client.events[:2], ["made", "write closed"])

    @defer.inlineCallbacks
    def test_a_loopback_connect_is_done_in_the_call_that_asks_for_it(self) -> Any:
        port = yield self.listen()
        got: list[Any] = []
        ToolEndpoint(reactor, "127.0.0.1", port, timeout=5).connect(
            Factory.forProtocol(Client)).addBoth(got.append)
        self.assertEqual(len(got), 1)  # connected, connectionMade run: no reactor turn
        self.assertIsInstance(got[0], Client)
        self.assertEqual(got[0].events, ["made"])
        self.assertFalse([c for c in reactor.getDelayedCalls()
                          if getattr(c.func, "__name__", "") == "failIfNotConnected"])
        got[0].transport.loseConnection()

    @defer.inlineCallbacks
    def test_a_tool_host_by_name_is_resolved_and_connected_twisteds_way(self) -> Any:
        port = yield self.listen()
        d = ToolEndpoint(reactor, "localhost", port, timeout=5).connect(
            Factory.forProtocol(Client))
        self.assertFalse(d.called)  # resolved first, a turn later
        client = yield d
        self.assertEqual(client.events, ["made"])
        self.assertIsInstance(client.transport, ToolConnection)
        client.transport.loseConnection()

    def test_a_refusing_tool_fails_the_connect_at_once_with_a_connect_error(self) -> None:
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()  # nobody listens there now
        got: list[Any] = []
        ToolEndpoint(reactor, "127.0.0.1", port, timeout=5).connect(
            Factory.forProtocol(Client)).addBoth(got.append)
        self.assertEqual(len(got), 1)
        got[0].trap(error.ConnectionRefusedError)

    def full_listener(self) -> int:
        """A port whose accept queue is full: a connect to it waits (Linux drops the SYN)."""
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        filler = socket.socket()
        filler.connect(listener.getsockname())
        self.addCleanup(listener.close)
        self.addCleanup(filler.close)
        return listener.getsockname()[1]

    @defer.inlineCallbacks
    def test_a_connect_that_waits_can_be_cancelled_and_never_makes_the_protocol(self) -> Any:
        made: list[Client] = []
        d = ToolEndpoint(reactor, "127.0.0.1", self.full_listener(), timeout=5).connect(
            Factory.forProtocol(lambda: made.append(Client()) or made[-1]))
        self.assertFalse(d.called)  # waiting for the socket, as Twisted's connect does
        d.cancel()
        yield self.assertFailure(d, error.ConnectingCancelledError)
        self.assertEqual(made, [])

    @defer.inlineCallbacks
    def test_a_connect_that_waits_times_out(self) -> Any:
        d = ToolEndpoint(reactor, "127.0.0.1", self.full_listener(), timeout=0.2).connect(
            Factory.forProtocol(Client))
        yield self.assertFailure(d, error.TimeoutError)

    @defer.inlineCallbacks
    def test_a_connect_that_waits_is_made_once_the_tool_accepts(self) -> Any:
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        self.addCleanup(listener.close)
        filler = socket.socket()
        filler.connect(listener.getsockname())
        self.addCleanup(filler.close)
        d = ToolEndpoint(reactor, "127.0.0.1", listener.getsockname()[1], timeout=10).connect(
            Factory.forProtocol(Client))
        self.assertFalse(d.called)
        accepted, _ = listener.accept()  # room in the queue: the SYN's retry gets in
        self.addCleanup(accepted.close)
        client = yield d
        self.assertEqual(client.events, ["made"])
        client.transport.loseConnection()
