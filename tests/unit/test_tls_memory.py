"""BIO renewal: a TLS connection frees its memory BIOs' burst room once quiet."""

from __future__ import annotations

from typing import Any

import pytest
from OpenSSL import SSL
from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.test.iosim import connectedServerAndClient

from studios_gateway.wire import tls, tls_lean, tls_memory
from studios_gateway.wire.tls_guard import GuardedTLSFactory, HandshakeLimits

ADDR = IPv4Address("TCP", "127.0.0.1", 40000)


class Sink(Protocol):
    def __init__(self) -> None:
        self.received = bytearray()

    def dataReceived(self, data: bytes) -> None:
        self.received += data


class Pair:
    """The gateway's guarded TLS server and the connect client's TLS, over iosim."""

    def __init__(self, tmp_path: Any) -> None:
        self.clock = Clock()
        cert, key = tls.ensure_self_signed(tmp_path / "tls", ["localhost"])
        self.server_apps: list[Sink] = []
        apps = Factory.forProtocol(lambda: self._server_app())
        server = GuardedTLSFactory(tls.server_options(cert, key), apps, clock=self.clock,
                                   limits=HandshakeLimits())
        self.client_app = Sink()
        client = tls_memory._RenewingTLSFactory(
            tls.PinnedClientTLS(tls.fingerprint_pem(cert.read_bytes())), True,
            Factory.forProtocol(lambda: self.client_app), clock=self.clock)
        self.client, self.server, self._pump = connectedServerAndClient(
            lambda: server.buildProtocol(ADDR), lambda: client.buildProtocol(ADDR),
            greet=False)

    def _server_app(self) -> Sink:
        app = Sink()
        self.server_apps.append(app)
        return app

    def pump(self) -> None:
        for _ in range(6):  # TLS writes are gathered until the clock turns
            self.clock.advance(0)
            self._pump.flush()

    @staticmethod
    def bios(proto: Any) -> tuple[Any, Any]:
        conn = proto._tlsConnection
        return conn._into_ssl, conn._from_ssl


@pytest.fixture
def renewals(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The connections whose BIOs were renewed, in order."""
    done: list[Any] = []
    real = tls_memory.renew_bios

    def spy(conn: SSL.Connection) -> bool:
        renewed = real(conn)
        if renewed:
            done.append(conn)
        return renewed

    monkeypatch.setattr(tls_lean, "renew_bios", spy)  # what the TLS layer's read path calls
    return done


def test_both_ends_renew_their_bios_once_after_the_handshake(tmp_path, renewals) -> None:
    pair = Pair(tmp_path)
    pair.pump()
    pair.client_app.transport.write(b"bind line\n")
    pair.pump()
    pair.server_apps[0].transport.write(b"bound\n")
    pair.pump()
    assert bytes(pair.server_apps[0].received) == b"bind line\n"
    assert bytes(pair.client_app.received) == b"bound\n"
    assert sorted(map(id, renewals)) == sorted(
        [id(pair.server._tlsConnection), id(pair.client._tlsConnection)])
    assert not pair.server._bios_grown and not pair.client._bios_grown


def test_a_quiet_read_after_a_burst_renews_and_small_traffic_does_not(tmp_path, renewals,
                                                                      monkeypatch) -> None:
    # A burst through the memory BIOs (the direct BIOs of wire/_records.c leave them as
    # they were: test_tls_direct.py).
    monkeypatch.setattr(tls_lean, "_DIRECT", False)
    pair = Pair(tmp_path)
    pair.pump()
    pair.client_app.transport.write(b"hello")
    pair.pump()
    app, server_conn = pair.server_apps[0], pair.server._tlsConnection
    after_handshake = len(renewals)
    for i in range(20):  # small pieces both ways: the same BIOs all along
        app.transport.write(b"ping %d" % i)
        pair.client_app.transport.write(b"pong %d" % i)
        pair.pump()
    assert len(renewals) == after_handshake
    payload = bytes(range(256)) * 2048  # 512 KiB down, every byte arrives in order
    app.transport.write(payload)
    pair.pump()
    assert bytes(pair.client_app.received).endswith(payload)
    assert pair.server._bios_grown
    pair.client_app.transport.write(b"window update")
    pair.pump()
    assert renewals[-1] is server_conn and not pair.server._bios_grown
    app.transport.write(b"after")  # the renewed connection carries on
    pair.client_app.transport.write(b"and back")
    pair.pump()
    assert bytes(pair.client_app.received).endswith(b"after")
    assert bytes(app.received).endswith(b"and back")


def test_bios_holding_bytes_are_kept(tmp_path) -> None:
    pair = Pair(tmp_path)
    pair.pump()
    conn: SSL.Connection = pair.server._tlsConnection
    conn.bio_write(b"\x17\x03\x03")  # the start of a record, not read by OpenSSL yet
    before = pair.bios(pair.server)
    assert not tls_memory.renew_bios(conn)
    assert pair.bios(pair.server) == before


def test_a_connection_that_is_not_memory_bio_is_left_alone() -> None:
    class Plain:
        _ssl = object()

    assert not tls_memory.renew_bios(Plain())  # type: ignore[arg-type]


def test_the_connect_client_makes_one_tls_context_per_gateway() -> None:
    pin = tls.PIN_PREFIX + "ab" * 32
    first = tls.client_options("gw.example", pin)
    assert tls.client_options("gw.example", pin) is first  # every attempt shares it
    assert tls.client_options("gw.example", tls.PIN_PREFIX + "cd" * 32) is not first
    assert isinstance(first, tls.PinnedClientTLS)
