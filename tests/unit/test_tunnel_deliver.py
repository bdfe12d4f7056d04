"""Once bound, both ends of a tunnel have their TLS layer hand reads straight to the
multiplexer (LeanTLSProtocol.deliver_to), and a transport without it still works
through the bind protocol."""

from __future__ import annotations

import gc
import weakref
from typing import Any

from twisted.internet.error import ConnectionLost
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import Logger
from twisted.python.failure import Failure

from studios_gateway.studio.client import Backoff, ConnectClient, TunnelClientProtocol
from studios_gateway.studio.settings import Gateway, load_client_settings
from studios_gateway.tunnel.server import TunnelServerFactory, TunnelServerProtocol
from studios_gateway.wire import frames
from studios_gateway.wire.bind import BindReply, BindRequest
from tests.support.tables import TOKEN, memory_table

CONNECT = "studios-connect://s1:" + "t" * 32 + "@127.0.0.1:7070/"


class Delivering(StringTransport):
    """A TLS-layer stand-in that records where its reads would go."""

    def __init__(self) -> None:
        super().__init__()
        self.receiver: Any = None

    def deliver_to(self, receiver: Any) -> None:
        self.receiver = receiver


def test_the_gateways_tunnel_protocol_hands_reads_to_its_mux_once_bound() -> None:
    _, table = memory_table(Clock(), tool="vscode")
    protocol: Any = TunnelServerFactory(table).buildProtocol(None)
    transport = Delivering()
    protocol.makeConnection(transport)
    assert transport.receiver is None  # the bind line is the protocol's
    protocol.dataReceived(BindRequest("s1", TOKEN, "0.12.0", "code-server", 8080).encode())
    assert protocol._mux is not None and transport.receiver is protocol._mux
    protocol.connectionLost(None)


def test_the_connect_clients_tunnel_protocol_hands_reads_to_its_mux_once_bound() -> None:
    settings = load_client_settings({"CONNECT_STRING": CONNECT, "CONNECT_TOOL_PORT": "8888"})
    client = ConnectClient(settings, Clock(), backoff=Backoff(rng=lambda: 0.5))
    client.running = True  # not started: no tool polling, no dialling
    for transport in (Delivering(), StringTransport()):
        protocol = TunnelClientProtocol(client, Gateway("127.0.0.1", 7070))
        protocol.makeConnection(transport)
        protocol.dataReceived(BindReply(ok=True, tunnel_id="t").encode())
        mux = protocol.mux
        assert mux is not None
        if isinstance(transport, Delivering):
            assert transport.receiver is mux
        else:  # no deliver_to: frames still reach the mux through the protocol
            protocol.dataReceived(frames.encode_ping(7))
            assert frames.encode_ping(7, ack=True) in transport.value()


def test_a_bound_tunnels_protocol_is_freed_without_the_cycle_collector(
        monkeypatch: Any) -> None:
    """The tunnel and its protocol referred to each other (Tunnel.protocol and the
    protocol's tunnel), so every closed tunnel waited for a full collection."""
    # (Twisted keeps log events, and so their sources, until logging has begun.)
    monkeypatch.setattr(TunnelServerProtocol, "_log", Logger(observer=lambda event: None))
    _, table = memory_table(Clock(), tool="vscode")
    protocol: Any = TunnelServerFactory(table).buildProtocol(None)
    protocol.makeConnection(Delivering())
    protocol.dataReceived(BindRequest("s1", TOKEN, "0.12.0", "code-server", 8080).encode())
    assert protocol._mux is not None and table.get("s1") is not None
    gone = weakref.ref(protocol)
    gc.disable()
    try:
        protocol.connectionLost(Failure(ConnectionLost()))
        del protocol
        assert table.get("s1") is None and gone() is None
    finally:
        gc.enable()
