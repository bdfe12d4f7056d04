"""LeanTLSProtocol: the tunnel's TLS both ways, over memory, with the lean path in use.

The gateway's guarded server (write at once) and the connect client's TLS, each a
LeanTLSProtocol, exchange bytes over an in-memory wire that a test can cut into any
TCP reads it likes; closing and failures go through iosim, as the guard's tests do.
"""

from __future__ import annotations

import gc
import importlib
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from OpenSSL import SSL
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.test.iosim import connectedServerAndClient

from studios_gateway.wire import frames, openssl_private, tls, tls_lean, tls_memory
from studios_gateway.wire.tls_guard import GuardedTLSFactory, HandshakeLimits

ADDR = IPv4Address("TCP", "127.0.0.1", 40000)


class App(Protocol):
    def __init__(self) -> None:
        self.received = bytearray()
        self.reads: list[bytes] = []
        self.lost: Failure | None = None

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        self.reads.append(data)

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.lost = reason


class Wire:
    """A TCP transport that keeps what is written for the test to deliver."""

    disconnecting = False
    connected = True

    def __init__(self) -> None:
        self.out = bytearray()

    def write(self, data: bytes) -> None:
        self.out += data

    def writeSequence(self, seq: list[bytes]) -> None:
        self.out += b"".join(seq)

    def getPeer(self) -> IPv4Address:
        return ADDR

    getHost = getPeer

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        pass

    def unregisterProducer(self) -> None:
        pass

    def loseConnection(self) -> None:
        self.disconnecting = True

    abortConnection = loseConnection


#: The ways records are moved: in C (wire/_records.c) for bulk reads and writes as
#: configured (through the direct BIOs), in C through the memory BIOs, in C for every
#: read too, and the Python loop alone (no C build).
WAYS = ("c", "c-memory-bios", "c-every-read", "python")


@pytest.fixture(params=WAYS, autouse=True)
def way(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "python":
        monkeypatch.setattr(tls_lean, "_seal", None)
        monkeypatch.setattr(tls_lean, "_open", None)
        monkeypatch.setattr(tls_lean, "_DIRECT", False)
    else:
        assert tls_lean._seal is not None and tls_lean._open is not None, \
            "wire/_records.c is not built: python setup.py build_ext --inplace"
        assert tls_lean._DIRECT, f"no direct BIOs: {openssl_private.DIRECT_MISSING}"
        if request.param == "c-memory-bios":
            monkeypatch.setattr(tls_lean, "_DIRECT", False)
        if request.param == "c-every-read":
            monkeypatch.setattr(tls_lean, "OPEN_MIN", 0)
    return str(request.param)


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any]:
    return tls.ensure_self_signed(tmp_path_factory.mktemp("tls"), ["localhost"])


def _factories(certificate: tuple[Any, Any], clock: Clock, server_app: App,
               client_app: App) -> tuple[Any, Any]:
    cert, key = certificate
    server = GuardedTLSFactory(tls.server_options(cert, key),
                               Factory.forProtocol(lambda: server_app), clock=clock,
                               limits=HandshakeLimits(), write_at_once=True)
    client = tls_memory._RenewingAtOnceFactory(
        tls.PinnedClientTLS(tls.fingerprint_pem(cert.read_bytes())), True,
        Factory.forProtocol(lambda: client_app), clock=clock)
    return server, client


class Pair:
    def __init__(self, certificate: tuple[Any, Any]) -> None:
        self.clock = Clock()
        self.server_app, self.client_app = App(), App()
        server, client = _factories(certificate, self.clock, self.server_app,
                                    self.client_app)
        self.server, self.client = server.buildProtocol(ADDR), client.buildProtocol(ADDR)
        self.server_wire, self.client_wire = Wire(), Wire()
        self.server.makeConnection(self.server_wire)
        self.client.makeConnection(self.client_wire)
        self.move()
        assert self.server._handshakeDone and self.client._handshakeDone

    def move(self, cut: int = 0) -> None:
        """Deliver what both sides wrote, in TCP reads of at most ``cut`` bytes (0: whole)."""
        while self.server_wire.out or self.client_wire.out:
            for wire, to in ((self.client_wire, self.server), (self.server_wire, self.client)):
                data, wire.out = bytes(wire.out), bytearray()
                step = cut or len(data) or 1
                for at in range(0, len(data), step):
                    to.dataReceived(data[at:at + step])


def test_the_lean_path_is_the_one_in_use(certificate) -> None:
    pair = Pair(certificate)
    for proto in (pair.server, pair.client):
        assert isinstance(proto, tls_lean.LeanTLSProtocol)
    assert tls_lean.LEAN


def test_small_writes_are_sent_at_once_and_records_of_one_read_arrive_together(
        certificate) -> None:
    pair = Pair(certificate)
    for word in (b"one", b"two", b"three"):
        pair.client_app.transport.write(word)
    assert pair.client_wire.out.count(b"\x17\x03\x03") == 3  # three records, not sent later
    pair.move()
    assert pair.server_app.reads == [b"onetwothree"]  # one TCP read: one delivery


CHUNK = tls_lean.WRITE_CHUNK


@pytest.mark.parametrize(("size", "sends"), [
    (12 + 64 * 1024, 1),  # a tunnel frame of 64 KiB: one send, not a second for 12 bytes
    (8 * (12 + 64 * 1024), 2),  # eight frames (a 512 KiB read from a browser): two sends
    (CHUNK + tls_lean.WRITE_TAIL, 1),
    (CHUNK + tls_lean.WRITE_TAIL + 1, 2),  # a longer rest: its own send
    (3 * CHUNK + 100, 3),
])
def test_a_large_write_goes_out_a_chunk_at_a_time_with_a_short_rest_in_the_last(
        certificate, monkeypatch, size, sends) -> None:
    pair = Pair(certificate)
    writes: list[int] = []
    real = pair.client_wire.write
    monkeypatch.setattr(pair.client_wire, "write", lambda data: (writes.append(len(data)),
                                                                 real(data)))
    data = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    pair.client_app.transport.write(data)
    assert len(writes) == sends
    assert max(writes) <= tls_lean._OUT_ROOM  # each taken out of the shared buffer
    pair.move()
    assert bytes(pair.server_app.received) == data


@pytest.mark.parametrize("way", ["c"], indirect=True)  # (it sets both ways itself)
@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(writes=st.lists(st.integers(0, 300_000), min_size=1, max_size=6),
       cut=st.sampled_from([0, 7, 16_389, 100_000, 600_000]))
def test_c_and_python_cut_deliver_and_send_alike(certificate, monkeypatch, way, writes,
                                                  cut) -> None:
    """The same writes through a pair moving records in C and a pair using the Python
    loop: the same transport writes (their lengths), the same deliveries."""
    seen = []
    for c in (True, False):
        monkeypatch.setattr(tls_lean, "_seal", tls_lean._records.seal if c else None)
        monkeypatch.setattr(tls_lean, "_open", tls_lean._records.open if c else None)
        monkeypatch.setattr(tls_lean, "_DIRECT", c and way != "c-memory-bios")
        pair = Pair(certificate)
        sends: list[int] = []
        real = pair.client_wire.write
        monkeypatch.setattr(pair.client_wire, "write",
                            lambda data, real=real, sends=sends: (sends.append(len(data)),
                                                                real(data)))
        for n, size in enumerate(writes):
            pair.client_app.transport.write(bytes([n % 251]) * size)
        pair.move(cut)
        seen.append((sends, [len(r) for r in pair.server_app.reads]))
        assert bytes(pair.server_app.received) == b"".join(
            bytes([n % 251]) * size for n, size in enumerate(writes))
    assert seen[0] == seen[1]


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(size=st.integers(1, 600_000),
       # 32,750: the second record ends 6 bytes into the next frame's header
       step=st.sampled_from([1, 100, 16_372, 16_384, 32_750, 65_536]),
       sid=st.sampled_from([1, 2, 0x01020304, 0xFFFFFFFF]),
       cut=st.sampled_from([0, 5, 16_389, 100_000]))
@example(size=70_000, step=32_750, sid=3, cut=0)
@example(size=600_000, step=1, sid=0xFFFFFFFF, cut=16_389)  # (capped: see below)
def test_frames_sealed_without_a_join_are_the_joined_frames(certificate, monkeypatch, size,
                                                            step, sid, cut) -> None:
    """write_frames(sid, data, step) sends what write(data_frames(sid, data, step)) sends:
    the same transport writes (their lengths) and, decrypted, the same bytes."""
    # One-byte frames are 13 bytes each: 25,000 of them (325,000 bytes) already span 20
    # records and two of the writes' chunks; 600,000 took seconds an example to frame.
    size = min(size, 25_000 * step)
    data = bytes((i * 7 + 3) & 255 for i in range(min(size, 4096))) * (size // 4096 + 1)
    data = data[:size]
    seen = []
    for framed in (True, False):
        pair = Pair(certificate)
        sends: list[int] = []
        real = pair.client_wire.write
        monkeypatch.setattr(pair.client_wire, "write",
                            lambda d, real=real, sends=sends: (sends.append(len(d)), real(d)))
        if framed:
            pair.client.write_frames(sid, data, step)
        else:
            pair.client_app.transport.write(frames.data_frames(sid, data, step))
        pair.move(cut)
        seen.append(sends)
        assert bytes(pair.server_app.received) == frames.data_frames(sid, data, step)
    assert seen[0] == seen[1]


def test_frames_after_lose_connection_are_dropped_as_writes_are(certificate) -> None:
    pair = Pair(certificate)
    pair.client.loseConnection()
    before = len(pair.client_wire.out)
    pair.client.write_frames(1, b"x" * 100_000, 65_536)
    assert len(pair.client_wire.out) == before


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(writes=st.lists(st.tuples(st.booleans(), st.integers(0, 70_000)), max_size=12),
       cut=st.sampled_from([0, 1, 5, 333, 16_389, 100_000]))
def test_every_byte_arrives_in_order_however_tcp_cuts_the_records(certificate, writes,
                                                                 cut) -> None:
    pair = Pair(certificate)
    sent: dict[bool, bytearray] = {True: bytearray(), False: bytearray()}
    for n, (from_client, size) in enumerate(writes):
        data = bytes([n % 251]) * size
        sent[from_client] += data
        (pair.client_app if from_client else pair.server_app).transport.write(data)
        if n % 3 == 0:
            pair.move(cut)
    pair.move(cut)
    assert bytes(pair.server_app.received) == bytes(sent[True])
    assert bytes(pair.client_app.received) == bytes(sent[False])
    assert max(map(len, pair.server_app.reads + pair.client_app.reads), default=0) <= \
        tls_lean.DELIVER


def test_a_small_write_whose_records_overflow_the_shared_buffer_goes_out_whole(
        certificate, monkeypatch) -> None:
    """A one-record write is taken out of the write BIO with one read of the shared
    buffer's size; what does not fit (nothing does at 84 KiB) follows it, in order."""
    pair = Pair(certificate)
    monkeypatch.setattr(tls_lean, "_OUT_ROOM", 16)
    pair.client_app.transport.write(b"more than sixteen bytes of cleartext")
    assert len(pair.client_wire.out) > 16
    pair.move()
    assert bytes(pair.server_app.received) == b"more than sixteen bytes of cleartext"


def test_a_write_of_a_buffer_that_is_not_bytes_goes_through(certificate) -> None:
    pair = Pair(certificate)
    pair.client_app.transport.write(bytearray(b"array "))
    pair.client_app.transport.write(memoryview(b"view"))
    pair.move()
    assert bytes(pair.server_app.received) == b"array view"


def test_an_application_that_aborts_gets_nothing_more(certificate) -> None:
    pair = Pair(certificate)

    class Aborting(App):
        def dataReceived(self, data: bytes) -> None:
            super().dataReceived(data)
            self.transport.abortConnection()

    aborting = Aborting()
    pair.server.wrappedProtocol = aborting
    aborting.transport = pair.server
    big = b"x" * (tls_lean.DELIVER + 10)  # two deliveries' worth in one read
    pair.client_app.transport.write(big)
    pair.move()
    assert len(aborting.reads) == 1 and pair.server_wire.disconnecting


@pytest.mark.parametrize("good", [b"good", b"good" * 30_000])
def test_a_damaged_record_ends_the_connection_with_the_tls_error(certificate, good) -> None:
    pair = Pair(certificate)
    pair.client_app.transport.write(good)
    pair.client_app.transport.write(b"then bad")
    data = bytearray(pair.client_wire.out)
    data[-3] ^= 0xFF  # the last record's tag no longer matches
    pair.client_wire.out = bytearray()
    pair.server.dataReceived(bytes(data))
    assert bytes(pair.server_app.received) == good  # what came before is delivered
    assert pair.server._lostTLSConnection and pair.server_wire.disconnecting
    pair.server.connectionLost(Failure(ConnectionDone()))
    assert pair.server_app.lost is not None and pair.server_app.lost.check(SSL.Error)
    assert pair.server_wire.out  # the alert that says why (TLS 1.3: an encrypted record)


def _iosim_pair(certificate: tuple[Any, Any]) -> tuple[Clock, App, App, Any, Any, Any]:
    clock = Clock()
    server_app, client_app = App(), App()
    server, client = _factories(certificate, clock, server_app, client_app)
    client_proto, server_proto, pump = connectedServerAndClient(
        lambda: server.buildProtocol(ADDR), lambda: client.buildProtocol(ADDR), greet=False)
    pump.flush()
    return clock, server_app, client_app, server_proto, client_proto, pump


@pytest.mark.parametrize("words", [b"last words", b"bulk " * 60_000])
def test_close_notify_comes_after_the_data_and_is_answered(certificate, words) -> None:
    clock, server_app, client_app, server_proto, client_proto, pump = _iosim_pair(certificate)
    client_app.transport.write(words)
    client_app.transport.loseConnection()
    pump.flush()
    assert bytes(server_app.received) == words
    assert server_app.lost is not None and server_app.lost.check(ConnectionDone)
    assert client_app.lost is not None and client_app.lost.check(ConnectionDone)
    assert server_proto.getHandle() is None and client_proto.getHandle() is None


def test_without_the_private_api_the_class_is_twisteds(monkeypatch) -> None:
    monkeypatch.setattr(openssl_private, "AVAILABLE", False)
    try:
        public = importlib.reload(tls_lean)
        assert not public.LEAN
        assert "dataReceived" not in vars(public.LeanTLSProtocol)
        assert "_write" not in vars(public.LeanTLSProtocol)
    finally:
        monkeypatch.undo()
        importlib.reload(tls_lean)


def test_tls_inside_tls_shares_the_buffers_safely(certificate) -> None:
    """The connect client's wss carrier runs the tunnel's TLS inside another TLS
    connection: both layers are LeanTLSProtocol and use the same module buffers, the
    inner one from inside the outer one's delivery."""
    cert, key = certificate
    clock = Clock()
    server_app, client_app = App(), App()
    creator = tls.PinnedClientTLS(tls.fingerprint_pem(cert.read_bytes()))

    def guarded(wrapped: Any) -> GuardedTLSFactory:
        return GuardedTLSFactory(tls.server_options(cert, key), wrapped, clock=clock,
                                 limits=HandshakeLimits(), write_at_once=True)

    def client(wrapped: Any) -> Any:
        return tls_memory._RenewingAtOnceFactory(creator, True, wrapped, clock=clock)

    server = guarded(guarded(Factory.forProtocol(lambda: server_app))).buildProtocol(ADDR)
    outer_client = client(client(Factory.forProtocol(lambda: client_app))).buildProtocol(ADDR)
    server_wire, client_wire = Wire(), Wire()
    server.makeConnection(server_wire)
    outer_client.makeConnection(client_wire)

    def move() -> None:
        while server_wire.out or client_wire.out:
            for wire, to in ((client_wire, server), (server_wire, outer_client)):
                data, wire.out = bytes(wire.out), bytearray()
                if data:
                    to.dataReceived(data)

    move()
    assert server_app.transport is not None and client_app.transport is not None
    up = bytes(range(256)) * (tls_lean.DELIVER // 128)  # two deliveries' worth and more
    down = bytes(reversed(range(256))) * (tls_lean.DELIVER // 100)
    client_app.transport.write(up)
    server_app.transport.write(down)
    server_app.transport.write(b"and a small one")
    move()
    assert bytes(server_app.received) == up
    assert bytes(client_app.received) == down + b"and a small one"


def test_a_wrong_pin_still_fails_the_handshake_with_pin_mismatch(certificate) -> None:
    cert, key = certificate
    clock = Clock()
    server_app, client_app = App(), App()
    server = GuardedTLSFactory(tls.server_options(cert, key),
                               Factory.forProtocol(lambda: server_app), clock=clock,
                               limits=HandshakeLimits(), write_at_once=True)
    client = tls_memory._RenewingAtOnceFactory(
        tls.PinnedClientTLS(tls.PIN_PREFIX + "00" * 32), True,
        Factory.forProtocol(lambda: client_app), clock=clock)
    _, _, pump = connectedServerAndClient(
        lambda: server.buildProtocol(ADDR), lambda: client.buildProtocol(ADDR), greet=False)
    pump.flush()
    assert client_app.lost is not None and client_app.lost.check(tls.PinMismatch)
    assert server_app.transport is None  # the gateway's application never saw it


def test_deliver_to_hands_reads_to_another_protocol_and_the_end_to_the_application(
        certificate) -> None:
    """The tunnel's bind protocols hand the connection to their multiplexer this way:
    its reads skip the application, its end (connectionLost) does not."""
    clock, server_app, client_app, server_proto, client_proto, pump = _iosim_pair(certificate)
    mux = App()
    client_app.transport.write(b"bind")
    pump.flush()
    server_proto.deliver_to(mux)
    client_app.transport.write(b"frames")
    pump.flush()
    assert bytes(server_app.received) == b"bind" and bytes(mux.received) == b"frames"
    client_app.transport.loseConnection()
    pump.flush()
    assert server_app.lost is not None and mux.lost is None


def test_a_tls_errors_failure_keeps_no_frames(certificate) -> None:
    """The error's Failure keeps its traceback as text only. With the frames, the read
    loop's frame (which holds the Failure and the TLS protocol) made a cycle, and the
    whole connection outlived its end until a full collection (stop 30: 10,000
    studios dropping at once, one 300 ms pause)."""
    pair = Pair(certificate)
    pair.client_app.transport.write(b"then bad")
    data = bytearray(pair.client_wire.out)
    data[-3] ^= 0xFF
    pair.server.dataReceived(bytes(data))
    pair.server.connectionLost(Failure(ConnectionDone()))
    lost = pair.server_app.lost
    assert lost is not None and lost.check(SSL.Error)
    assert lost.tb is None and lost.value.__traceback__ is None
    assert not [r for r in gc.get_referents(lost.__dict__) if type(r).__name__ == "frame"]
    assert "OpenSSL.SSL.Error" in lost.getTraceback()  # what is printed stays


def test_the_end_lets_go_of_the_receiver_and_the_producer(certificate) -> None:
    """A multiplexer is the TLS layer's receiver and producer and has the layer as its
    transport; the layer lets go of it at the end, so neither waits for a full
    collection."""
    pair = Pair(certificate)
    receiver = App()
    pair.server.deliver_to(receiver)
    pair.server.registerProducer(receiver, True)
    assert pair.server._receiver is receiver and pair.server._producer is not None
    pair.server.connectionLost(Failure(ConnectionDone()))
    assert pair.server._receiver is None and pair.server._producer is None
    assert pair.server_app.lost is not None  # the end still reached the application
