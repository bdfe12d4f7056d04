"""GuardedTLSFactory: the handshake's deadline and cap, the application connected after it."""

from __future__ import annotations

from typing import Any

from twisted.internet import ssl
from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.test.iosim import connectedServerAndClient

from studios_gateway.wire import tls, tls_memory
from studios_gateway.wire.tls_guard import GuardedTLSFactory, HandshakeLimits
from tests.unit.test_openssl_peer_key import audited

ADDR = IPv4Address("TCP", "127.0.0.1", 40000)


class App(Protocol):
    def __init__(self) -> None:
        self.received = b""
        self.made = False

    def connectionMade(self) -> None:
        self.made = True

    def dataReceived(self, data: bytes) -> None:
        self.received += data


class AppFactory(Factory):
    def __init__(self) -> None:
        self.built: list[App] = []

    def buildProtocol(self, addr: object) -> App:
        app = App()
        self.built.append(app)
        return app


def server_options(tmp_path) -> ssl.CertificateOptions:
    cert, key = tls.ensure_self_signed(tmp_path / "tls", ["localhost"])
    return tls.server_options(cert, key)


def guarded(tmp_path, clock: Clock, **limits: float) -> tuple[GuardedTLSFactory, AppFactory,
                                                                 list[str]]:
    app, outcomes = AppFactory(), []
    factory = GuardedTLSFactory(server_options(tmp_path), app, clock=clock,
                                limits=HandshakeLimits(**limits), on_outcome=outcomes.append)
    return factory, app, outcomes


def test_a_silent_connection_is_reset_at_the_deadline_without_an_application(tmp_path) -> None:
    clock = Clock()
    factory, app, outcomes = guarded(tmp_path, clock, timeout=5, max_pending=10)
    proto = factory.buildProtocol(ADDR)
    transport = StringTransport()
    proto.makeConnection(transport)
    assert app.built == [] and factory.pending == 1
    clock.advance(4.9)
    assert not transport.disconnecting
    clock.advance(0.2)
    assert transport.disconnecting  # aborted: StringTransport records both as disconnecting
    proto.connectionLost(None)
    assert factory.pending == 0 and outcomes == ["timeout"] and app.built == []
    assert clock.getDelayedCalls() == []


def test_past_the_cap_a_socket_is_closed_at_accept(tmp_path) -> None:
    clock = Clock()
    factory, _, outcomes = guarded(tmp_path, clock, timeout=5, max_pending=2)
    first, second = factory.buildProtocol(ADDR), factory.buildProtocol(ADDR)
    for p in (first, second):
        p.makeConnection(StringTransport())
    assert factory.buildProtocol(ADDR) is None
    assert outcomes == ["full"]
    first.connectionLost(None)  # one leaves: room for the next
    assert factory.pending == 1 and outcomes == ["full", "failed"]
    assert factory.buildProtocol(ADDR) is not None


class ListeningPort:
    """What GuardedTLSFactory uses of twisted.internet.tcp.Port: a readable event accepts
    up to ``numberAccepts`` of the sockets waiting in the listen queue and hands each to
    the factory (closing it when the factory returns None), whatever the factory says."""

    def __init__(self, factory: GuardedTLSFactory, waiting: int):
        self.factory, self.waiting = factory, waiting
        self.numberAccepts = 100
        self.reading, self.connected, self.disconnecting = True, True, False
        self.accepted: list[Protocol] = []
        self.closed_at_accept = 0

    def doRead(self) -> None:
        for _ in range(min(self.numberAccepts, self.waiting)):
            self.waiting -= 1
            protocol = self.factory.buildProtocol(ADDR)
            if protocol is None:
                self.closed_at_accept += 1
                continue
            protocol.makeConnection(StringTransport())
            self.accepted.append(protocol)

    def stopReading(self) -> None:
        self.reading = False

    def startReading(self) -> None:
        self.reading = True


def test_at_the_cap_the_port_stops_accepting_and_starts_again_when_one_finishes(tmp_path
                                                                               ) -> None:
    clock = Clock()
    factory, _, outcomes = guarded(tmp_path, clock, timeout=5, max_pending=3)
    pauses: list[None] = []
    factory._on_pause = lambda: pauses.append(None)
    port = ListeningPort(factory, waiting=10)
    factory.listening_on(port)
    port.doRead()  # ten wait; only three are accepted, the rest stay in the queue
    assert len(port.accepted) == 3 and port.waiting == 7 and port.closed_at_accept == 0
    assert not port.reading and factory.paused and len(pauses) == 1
    port.doRead()  # a readable event the reactor had already collected: nothing accepted
    assert len(port.accepted) == 3 and port.closed_at_accept == 0
    port.accepted[0].connectionLost(None)  # one leaves: accepting again, for one
    assert port.reading and not factory.paused
    port.doRead()
    assert len(port.accepted) == 4 and port.waiting == 6 and not port.reading
    assert len(pauses) == 2 and "full" not in outcomes


def test_a_port_that_stopped_listening_is_not_started_again(tmp_path) -> None:
    clock = Clock()
    factory, _, _ = guarded(tmp_path, clock, timeout=5, max_pending=1)
    port = ListeningPort(factory, waiting=2)
    factory.listening_on(port)
    port.doRead()
    assert not port.reading
    port.connected = False  # stopListening
    port.accepted[0].connectionLost(None)
    assert not port.reading and not factory.paused


def handshake(factory: GuardedTLSFactory, clock: Clock,
              client: type[Protocol] = Protocol) -> tuple[Any, Any]:
    """A client's TLS handshake with ``factory``, pumped to its end: (server side, pump).
    TLS writes are gathered until the clock turns, then pumped across."""
    client_tls = TLSMemoryBIOFactory(ssl.CertificateOptions(), True,
                                     Factory.forProtocol(client), clock=clock)
    _, server_proto, pump = connectedServerAndClient(
        lambda: factory.buildProtocol(ADDR), lambda: client_tls.buildProtocol(ADDR),
        greet=False)
    for _ in range(5):
        clock.advance(0)
        pump.flush()
    return server_proto, pump


def test_the_application_is_connected_after_the_handshake_and_gets_every_byte(tmp_path
                                                                             ) -> None:
    clock = Clock()
    factory, app, outcomes = guarded(tmp_path, clock, timeout=5, max_pending=10)

    class Hello(Protocol):
        def connectionMade(self) -> None:
            self.transport.write(b"bind line\n")

    server_proto, _ = handshake(factory, clock, Hello)
    assert outcomes == ["ok"] and factory.pending == 0
    assert len(app.built) == 1 and app.built[0].made
    assert app.built[0].received == b"bind line\n"
    assert app.built[0].transport is server_proto
    clock.advance(60)  # the deadline was cancelled: nothing resets the connection
    assert not server_proto.disconnecting


def test_held_until_setup_a_connection_keeps_its_place_after_the_handshake(tmp_path) -> None:
    clock = Clock()
    factory, app, outcomes = guarded(tmp_path, clock, timeout=5, max_pending=2)
    factory.hold_until_setup = True
    first, _ = handshake(factory, clock)
    second, _ = handshake(factory, clock)
    assert outcomes == ["ok", "ok"] and len(app.built) == 2
    assert factory.pending == 2  # both set up by the application still: no room
    assert factory.buildProtocol(ADDR) is None
    app.built[0].transport.setup_done()  # the application: the first is set up
    app.built[0].transport.setup_done()  # (said twice: frees one place once)
    assert factory.pending == 1
    second.connectionLost(None)  # closed before it was set up: its place is free too
    assert factory.pending == 0
    first.connectionLost(None)
    assert factory.pending == 0


def test_limits_must_be_positive() -> None:
    import pytest

    with pytest.raises(ValueError):
        HandshakeLimits(timeout=0)
    with pytest.raises(ValueError):
        HandshakeLimits(max_pending=0)


def test_a_close_does_not_wait_for_the_peers_close_notify(tmp_path) -> None:
    clock = Clock()
    factory, app, _ = guarded(tmp_path, clock, timeout=5, max_pending=10)
    server_proto, _ = handshake(factory, clock)
    app.built[0].transport.write(b"refused: bye\n")
    app.built[0].transport.loseConnection()
    # The peer has not answered (nothing pumped): TCP closes anyway, after the reply.
    assert server_proto.transport.disconnecting
    assert server_proto.transport.stream  # the reply and the close_notify, queued for TCP



class _Endpoint:
    """Records the factory a client endpoint connects with."""

    def connect(self, factory: Factory) -> object:
        from twisted.internet import defer

        self.factory = factory
        return defer.succeed(factory.buildProtocol(ADDR))


def _handshaken(tmp_path, write_at_once: bool) -> tuple[Clock, App, App, object]:
    """A guarded server and the tunnel client's TLS (write_at_once, pinned), handshaken:
    (clock, the client's application, the server's, the pump)."""
    clock = Clock()
    app = AppFactory()
    cert, key = tls.ensure_self_signed(tmp_path / "tls", ["localhost"])
    factory = GuardedTLSFactory(tls.server_options(cert, key), app, clock=clock,
                                limits=HandshakeLimits(), write_at_once=write_at_once)
    client_app = App()
    inner = _Endpoint()
    connected: list[Protocol] = []
    pin = tls.fingerprint_pem(cert.read_bytes())
    tls_memory.wrap_client_tls(tls.PinnedClientTLS(pin), inner, write_at_once=True).connect(
        Factory.forProtocol(lambda: client_app)).addCallback(connected.append)
    assert connected == [client_app]  # the application's protocol, as wrapClientTLS gives it
    _, _, pump = connectedServerAndClient(
        lambda: factory.buildProtocol(ADDR), lambda: inner.factory.buildProtocol(ADDR),
        greet=False)
    for _ in range(5):
        clock.advance(0)
        pump.flush()
    assert len(app.built) == 1
    return clock, client_app, app.built[0], pump


def test_write_at_once_sends_each_write_in_the_same_turn_both_ways(tmp_path) -> None:
    clock, client_app, server_app, pump = _handshaken(tmp_path, write_at_once=True)
    server_app.transport.write(b"echo")
    client_app.transport.write(b"ohce")
    pump.flush()  # no clock.advance: nothing waits for the end of the turn
    assert client_app.received == b"echo" and server_app.received == b"ohce"


def test_by_default_the_guarded_server_sends_writes_at_the_end_of_the_turn(tmp_path) -> None:
    clock, client_app, server_app, pump = _handshaken(tmp_path, write_at_once=False)
    server_app.transport.write(b"echo")
    pump.flush()
    assert client_app.received == b""
    clock.advance(0)
    pump.flush()
    assert client_app.received == b"echo"


@audited
def test_a_guarded_server_connection_lets_the_clients_key_share_go(tmp_path) -> None:
    """OpenSSL keeps the client's key share (~6.8 KiB with the hybrid key exchange) as
    long as a connection lives; the guard drops it once the handshake is done
    (wire/openssl_peer_key.py), and the connection carries data both ways after."""
    from studios_gateway.wire import openssl_peer_key
    from tests.unit.test_openssl_peer_key import peer_key

    clock, client_app, server_app, pump = _handshaken(tmp_path, write_at_once=True)
    server_tls = server_app.transport
    conn = server_tls._tlsConnection
    assert openssl_peer_key.status() == (True, "")
    assert peer_key(conn) is None
    assert server_tls._addr is None  # handed to the application; not kept
    server_app.transport.write(b"echo")
    client_app.transport.write(b"ohce" * 1000)
    pump.flush()
    assert client_app.received == b"echo" and server_app.received == b"ohce" * 1000
