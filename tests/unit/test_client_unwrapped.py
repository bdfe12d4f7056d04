"""studio.client.Unwrapped: an endpoint's wrapping protocol out of the read path."""

from __future__ import annotations

from typing import Any

from twisted.internet import endpoints
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from zope.interface import implementer

from studios_gateway.studio.client import Unwrapped


@implementer(IHalfCloseableProtocol)
class App(Protocol):
    def __init__(self) -> None:
        self.got: list[bytes] = []

    def dataReceived(self, data: bytes) -> None:
        self.got.append(data)

    def readConnectionLost(self) -> None:
        self.got.append(b"EOF")

    def writeConnectionLost(self) -> None:
        pass


def test_once_connected_the_transport_reads_into_the_protocol_itself() -> None:
    reactor = MemoryReactorClock()
    d = Unwrapped(endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", 1)).connect(
        Factory.forProtocol(App))
    got: list[Any] = []
    d.addCallback(got.append)
    factory = reactor.tcpClients[0][2]
    wrapper = factory.buildProtocol(None)
    transport = StringTransport()
    transport.protocol = wrapper  # what a TCP transport holds: the endpoint's wrapper
    wrapper.makeConnection(transport)
    (app,) = got
    assert isinstance(app, App) and app.transport is transport
    assert transport.protocol is app  # nothing left between them
    transport.protocol.dataReceived(b"x")
    assert app.got == [b"x"]


def test_a_protocol_without_a_wrapper_is_left_as_it_is() -> None:
    class Endpoint:
        def connect(self, factory: Any) -> Any:
            from twisted.internet import defer

            p = factory.buildProtocol(None)
            t = StringTransport()
            t.protocol = other = Protocol()
            p.makeConnection(t)
            self.other = other
            return defer.succeed(p)

    e = Endpoint()
    got: list[Any] = []
    Unwrapped(e).connect(Factory.forProtocol(App)).addCallback(got.append)
    assert got[0].transport.protocol is e.other
