"""Limits (connections, channels, handshake timeout) and channel flow control, on a fake
clock and in-memory transports."""

from __future__ import annotations

import socket
import struct
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.conch.ssh import common, connection
from twisted.conch.ssh.keys import Key
from twisted.internet.abstract import FileDescriptor
from twisted.internet.defer import Deferred
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import LogLevel, globalLogPublisher
from twisted.python.failure import Failure

from studios_gateway.registry.memory import MemoryStore
from studios_gateway.ssh.channels import FlowChannel, FlowConnection
from studios_gateway.ssh.policy import MaxStartups, StartupLimiter
from studios_gateway.ssh.relay import Relay as ServerRelay
from studios_gateway.ssh.relay import (
    RelayChannel,
    UpstreamConnection,
    UserConnection,
    _pair,
)
from studios_gateway.ssh.server import GatewaySSHFactory, SSHSettings
from studios_gateway.wire.closing import CLOSE_GRACE
from tests.support.stuck_socket import StuckSocket


class _NoKeys:
    """Nobody has a registered key (these tests never get as far as a login)."""

    async def accepts(self, user: str, key: Key) -> bool:
        return False


def _factory(clock: MemoryReactorClock, **settings: Any) -> GatewaySSHFactory:
    from cryptography.hazmat.primitives.asymmetric import ed25519

    key = Key(ed25519.Ed25519PrivateKey.generate())
    f = GatewaySSHFactory(host_key=key, user_keys=_NoKeys(), store=MemoryStore(clock),
                          dial=lambda sid, proto: False, settings=SSHSettings(**settings),
                          clock=clock)
    f.doStart()
    return f


def _connect(f: GatewaySSHFactory) -> tuple[Any, StringTransport]:
    proto = f.buildProtocol(None)
    t = StringTransport()
    proto.makeConnection(t)
    return proto, t


def test_handshake_timeout() -> None:
    clock = MemoryReactorClock()
    f = _factory(clock, handshake_timeout=5.0)
    proto, t = _connect(f)
    clock.advance(4.9)
    assert not t.disconnecting
    clock.advance(0.2)
    assert t.disconnecting
    assert b"login timed out (the gateway allows 5s)" in t.value()
    proto.connectionLost(Failure(ConnectionError()))
    assert f.live_connections == 0


def test_a_client_that_reads_nothing_is_reset_after_the_disconnect() -> None:
    """A disconnect (here at the login timeout) closed the connection once the client took
    what was buffered for it: a client that never reads held the socket for good. It is
    reset CLOSE_GRACE after the disconnect."""
    clock = MemoryReactorClock()
    f = _factory(clock, handshake_timeout=5.0)
    sock = StuckSocket(clock)
    proto = sock.connect(f.buildProtocol(None))
    clock.advance(5.1)
    assert sock.disconnecting and sock.unsent() and not sock.disconnected
    clock.advance(CLOSE_GRACE)
    assert sock.aborted
    assert f.live_connections == 0 and proto.transport is not None


def test_only_logged_in_connections_count_toward_max_connections() -> None:
    clock = MemoryReactorClock()
    f = _factory(clock, max_connections=2)
    conns = [_connect(f) for _ in range(5)]  # five not logged in: no slot taken
    assert f.live_connections == 0 and f.startups.live == 5
    (p1, _), (p2, _), (p3, _) = conns[:3]
    assert p1.logged_in() and p2.logged_in()
    assert f.live_connections == 2 and f.startups.live == 3
    assert not p3.logged_in()  # the login refuses it with "too many SSH connections"
    assert f.limiter.refused == 1 and f.startups.live == 2
    p3.connectionLost(Failure(ConnectionError()))
    assert f.live_connections == 2
    p1.connectionLost(Failure(ConnectionError()))
    p4, _ = conns[3]
    assert p4.logged_in() and f.live_connections == 2
    for p, _ in (conns[1], conns[3], conns[4]):
        p.connectionLost(Failure(ConnectionError()))
    assert f.live_connections == 0 and f.startups.live == 0


def test_max_startups_closes_new_sockets_at_accept_before_our_version_line() -> None:
    clock = MemoryReactorClock()
    draws = iter([0.99, 0.0])  # the first draw keeps, the second drops
    f = _factory(clock, max_startups=MaxStartups(2, 50, 4))
    f.startups = StartupLimiter(f.settings.max_startups, lambda: next(draws))
    _connect(f), _connect(f)  # below start: always in, no draw
    assert f.buildProtocol(None) is not None  # 50% chance of a drop: kept (0.99)
    assert f.buildProtocol(None) is None  # 75%: dropped (0.0); Twisted closes the socket
    assert f.startups.live == 3 and f.startups.refused == 1


def test_a_silent_socket_is_closed_at_the_kex_timeout() -> None:
    clock = MemoryReactorClock()
    f = _factory(clock, kex_timeout=3.0, handshake_timeout=60.0)
    proto, t = _connect(f)
    clock.advance(2.9)
    assert not t.disconnecting
    clock.advance(0.2)
    assert t.disconnecting and b"key exchange timed out" in t.value()
    proto.connectionLost(Failure(ConnectionError()))
    assert f.startups.live == 0 and not [c for c in clock.getDelayedCalls() if c.active()]


class _QuickAckRecorder(StringTransport):
    """A transport whose socket records the options set on it."""

    def __init__(self) -> None:
        super().__init__()
        self.options: list[tuple[int, int, int]] = []

    def getHandle(self) -> Any:  # noqa: N802 - Twisted's name
        return self

    def setsockopt(self, level: int, option: int, value: int) -> None:
        self.options.append((level, option, value))


@pytest.mark.skipif(not hasattr(socket, "TCP_QUICKACK"), reason="Linux's TCP_QUICKACK")
def test_what_the_client_sends_during_the_key_exchange_is_acknowledged_at_once() -> None:
    """OpenSSH's ssh writes its KEXINIT and then its key exchange message with Nagle on:
    the second waited for the gateway's delayed ACK, 40 ms in a third of logins."""
    f = _factory(MemoryReactorClock())
    proto = f.buildProtocol(None)
    t = _QuickAckRecorder()
    proto.makeConnection(t)
    proto.dataReceived(b"SSH-2.0-OpenSSH_9.2p1\r\n")
    assert t.options == [(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)]
    proto.connectionLost(Failure(ConnectionError()))


@given(st.integers(1, 50), st.integers(0, 100), st.integers(0, 60), st.integers(0, 200))
def test_max_startups_drop_chance(start: int, rate: int, extra: int, pending: int) -> None:
    policy = MaxStartups(start, rate, start + extra)
    chance = policy.drop_chance(pending)
    assert 0.0 <= chance <= 1.0
    if pending < start:
        assert chance == 0.0
    elif pending >= start + extra:
        assert chance == 1.0
    else:
        assert chance >= rate / 100 and policy.drop_chance(pending + 1) >= chance
    assert MaxStartups.parse(str(policy)) == policy


def test_max_startups_parse() -> None:
    import pytest

    assert MaxStartups.parse("10:30:100") == MaxStartups(10, 30, 100)
    assert MaxStartups.parse(" 7 ") == MaxStartups(7, 100, 7)
    for bad in ("", "0", "10:30", "10:101:20", "20:30:10", "a:b:c", "1:2:3:4"):
        with pytest.raises(ValueError):
            MaxStartups.parse(bad)


def test_health_check_is_quiet() -> None:
    seen: list[dict[str, Any]] = []

    def observer(event: dict[str, Any]) -> None:
        if event.get("log_level", LogLevel.info) >= LogLevel.warn:
            seen.append(event)

    globalLogPublisher.addObserver(observer)
    try:
        clock = MemoryReactorClock()
        f = _factory(clock)
        proto, _ = _connect(f)
        proto.connectionLost(Failure(ConnectionError("closed")))
    finally:
        globalLogPublisher.removeObserver(observer)
    assert seen == []
    assert f.live_connections == 0 and not [c for c in clock.getDelayedCalls() if c.active()]


# Channels -------------------------------------------------------------------------------


class FakeTransport:
    def __init__(self) -> None:
        self.packets: list[tuple[int, bytes]] = []

    def sendPacket(self, kind: int, payload: bytes) -> None:
        self.packets.append((kind, payload))

    def kinds(self) -> list[int]:
        return [k for k, _ in self.packets]


class Conn(FlowConnection):
    def open_channel(self, channel_type: bytes, window: int, max_packet: int,
                     data: bytes) -> FlowChannel:
        return FlowChannel(window=1024, max_packet=256)


def _open(conn: FlowConnection, sender: int, window: int = 10_000, maxp: int = 100) -> None:
    conn.ssh_CHANNEL_OPEN(common.NS(b"session") + struct.pack(">3L", sender, window, maxp))


def test_channel_limit() -> None:
    conn = Conn()
    conn.transport = FakeTransport()
    conn.max_channels = 2
    for i in range(3):
        _open(conn, i)
    kinds = conn.transport.kinds()
    assert kinds[:2] == [connection.MSG_CHANNEL_OPEN_CONFIRMATION] * 2
    assert kinds[2] == connection.MSG_CHANNEL_OPEN_FAILURE
    payload = conn.transport.packets[2][1]
    assert struct.unpack(">2L", payload[:8]) == (2, connection.OPEN_RESOURCE_SHORTAGE)
    assert b"too many channels on this connection (limit 2)" in payload
    # closing one frees a slot
    conn.channels[0].loseConnection()
    conn.ssh_CHANNEL_CLOSE(struct.pack(">L", 0))
    _open(conn, 3)
    assert conn.transport.kinds()[-1] == connection.MSG_CHANNEL_OPEN_CONFIRMATION


class Relay:
    window = 1024

    def __init__(self) -> None:
        self.closing_at_studio: set[RelayChannel] = set()

    def user_side(self, channel: Any) -> bool:
        return False

    def count(self, channel: Any, n: int) -> None:
        pass

    def channel_count(self, delta: int) -> None:
        pass


def _relay_pair(remote_window: int) -> tuple[RelayChannel, RelayChannel, Conn, Conn]:
    """a: receives from its peer (big window); b: sends to a peer whose window is small."""
    ca, cb = Conn(), Conn()
    ca.transport, cb.transport = FakeTransport(), FakeTransport()
    a, b = RelayChannel(Relay()), RelayChannel(Relay())  # type: ignore[arg-type]
    for conn, ch, window, sender in ((ca, a, 1 << 20, 7), (cb, b, remote_window, 9)):
        ch.conn = conn
        ch.id = 0
        conn.channels[0] = ch
        conn.channelsToRemoteChannel[ch] = sender
        conn.localToRemoteChannel[0] = sender
        ch.remoteWindowLeft, ch.remoteMaxPacket = window, 100
        ch.channelOpen(b"")
    _pair(a, b)
    return a, b, ca, cb


def _data(n: int) -> bytes:
    return struct.pack(">2L", 0, n) + b"x" * n


def _adjusts(conn: Conn) -> int:
    return sum(struct.unpack(">2L", p[:8])[1] for k, p in conn.transport.packets
               if k == connection.MSG_CHANNEL_WINDOW_ADJUST)


@given(st.lists(st.integers(1, 100), min_size=1, max_size=60), st.integers(0, 600))
def test_relay_credit_only_for_forwarded_bytes(chunks: list[int], remote: int) -> None:
    a, b, ca, cb = _relay_pair(remote)
    received = 0
    for n in chunks:
        if n > a.localWindowLeft:
            break
        ca.ssh_CHANNEL_DATA(_data(n))
        received += n
        forwarded = sum(len(p) - 8 for k, p in cb.transport.packets
                        if k == connection.MSG_CHANNEL_DATA)
        # never more than the far window; whatever waits is at most what a's window let in
        assert forwarded <= remote
        assert b.queued_bytes == received - forwarded <= a.localWindowSize
        assert a.localWindowLeft >= 0
        # the user is credited only for what went on
        assert _adjusts(ca) <= forwarded
    # the far side opens its window: the queue drains and credit follows
    cb.ssh_CHANNEL_WINDOW_ADJUST(struct.pack(">2L", 0, 1 << 20))
    assert b.queued_bytes == 0
    assert a.localWindowLeft + a._unacked == a.localWindowSize


def test_eof_and_exit_status_wait_behind_data() -> None:
    a, b, ca, cb = _relay_pair(50)
    ca.ssh_CHANNEL_DATA(_data(80))
    a.handle_request(b"exit-status", struct.pack(">L", 3), False)
    ca.ssh_CHANNEL_EOF(struct.pack(">L", 0))
    assert cb.transport.kinds() == [connection.MSG_CHANNEL_DATA]
    cb.ssh_CHANNEL_WINDOW_ADJUST(struct.pack(">2L", 0, 100))
    assert cb.transport.kinds()[1:] == [connection.MSG_CHANNEL_DATA,
                                        connection.MSG_CHANNEL_REQUEST,
                                        connection.MSG_CHANNEL_EOF]


def test_a_full_socket_holds_data_and_credit_whatever_window_the_peer_gave() -> None:
    """A peer with a huge window that does not read its socket: data waited in the
    socket's buffer, and the feeder was credited for it, without bound."""
    a, b, ca, cb = _relay_pair(1 << 30)  # b's peer: the largest window it likes
    ca.ssh_CHANNEL_DATA(_data(100))
    assert b.queued_bytes == 0  # out at once
    credit = _adjusts(ca)
    cb.pauseProducing()  # cb's socket is full
    for _ in range(10):
        ca.ssh_CHANNEL_DATA(_data(100))
    assert cb.transport.kinds().count(connection.MSG_CHANNEL_DATA) == 1
    assert b.queued_bytes == 1000 and _adjusts(ca) == credit  # no credit for held data
    cb.resumeProducing()  # drained: the queue goes, and the feeder's credit follows
    assert b.queued_bytes == 0
    assert cb.transport.kinds().count(connection.MSG_CHANNEL_DATA) == 11
    assert a.localWindowLeft + a._unacked == a.localWindowSize


class _Socket(FileDescriptor):
    """Twisted's own socket write path (buffer, producer, loseConnection), over a
    kernel that takes `accept` bytes at a time."""

    def __init__(self) -> None:
        super().__init__(reactor=MemoryReactorClock())
        self.connected = 1
        self.bufferSize = 1000
        self.accept = 0
        self.closed = False

    def writeSomeData(self, data: Any) -> int:
        n = min(len(data), self.accept)
        self.accept -= n
        return n

    def _postLoseConnection(self) -> Any:
        self.closed = True
        return super()._postLoseConnection()

    def drain(self) -> None:
        """The peer reads everything: the reactor calls doWrite while writing is wanted."""
        self.accept = 1 << 30
        while self in self.reactor.getWriters() and not self.closed:
            self.doWrite()


def test_a_connection_closed_while_its_socket_was_full_closes_once_it_drains() -> None:
    """Twisted closes a socket with a paused producer only once that producer is
    unregistered: it resumes the producer instead. A disconnect sent while the user's
    socket was full (the session ended during a download, say) left the socket open for
    ever once drained: reading stopped, no close, the connection's slot never freed."""
    a, b, ca, cb = _relay_pair(1 << 30)
    socket = _Socket()
    cb.transport.transport = socket  # type: ignore[attr-defined]
    socket.registerProducer(cb, True)
    socket.write(b"x" * 2000)  # more than the socket's buffer: the connection is paused
    assert cb.writes_held
    socket.loseConnection()  # the gateway's disconnect
    socket.drain()
    assert socket.closed
    assert socket.producer is None


def test_data_held_at_a_disconnect_is_not_sent_after_it() -> None:
    """Once the socket is closing, what the channels held stays held (the client has
    been told goodbye); only what the socket already buffered goes."""
    a, b, ca, cb = _relay_pair(1 << 30)
    socket = _Socket()
    cb.transport.transport = socket  # type: ignore[attr-defined]
    socket.registerProducer(cb, True)
    socket.write(b"x" * 2000)
    ca.ssh_CHANNEL_DATA(_data(100))  # held: the socket is full
    socket.loseConnection()
    socket.drain()
    assert socket.closed
    assert cb.transport.kinds().count(connection.MSG_CHANNEL_DATA) == 0


class _Wired(FakeTransport):
    """The SSH transport, writing each packet to `socket`."""

    def __init__(self, socket: _Socket) -> None:
        super().__init__()
        self.transport = socket

    def sendPacket(self, kind: int, payload: bytes) -> None:
        super().sendPacket(kind, payload)
        self.transport.write(bytes(payload))


def test_a_streaming_channel_does_not_starve_the_others_while_the_socket_is_full() -> None:
    """Each time the socket drained, the held channels were flushed in the same order:
    the first one, kept full by its studio (a download), refilled the socket every time,
    and a second channel (a shell's prompt, over one ControlMaster connection or VS
    Code's) waited as long as the first streamed."""
    a1, b1, ca, cb = _relay_pair(1 << 30)
    a2, b2 = RelayChannel(Relay()), RelayChannel(Relay())  # type: ignore[arg-type]
    for conn, ch, sender in ((ca, a2, 8), (cb, b2, 10)):
        ch.conn = conn
        ch.id = 1
        conn.channels[1] = ch
        conn.channelsToRemoteChannel[ch] = sender
        conn.localToRemoteChannel[1] = sender
        ch.remoteWindowLeft, ch.remoteMaxPacket = 1 << 30, 100
        ch.channelOpen(b"")
    _pair(a2, b2)
    socket = _Socket()
    cb.transport = _Wired(socket)
    socket.registerProducer(cb, True)

    def stream() -> None:  # the studio sends the first channel all its window allows
        while a1.localWindowLeft >= 100:
            ca.ssh_CHANNEL_DATA(_data(100))

    stream()
    assert cb.writes_held and b1.queued_bytes > 0
    ca.ssh_CHANNEL_DATA(struct.pack(">2L", 1, 7) + b"$ ready")  # the second channel's
    assert b2.queued_bytes == 7
    for _ in range(10):  # the client reads all the socket holds, and the studio refills
        socket.accept = 1 << 20
        socket.doWrite()
        stream()
    assert b2.queued_bytes == 0


class UserRelay(Relay):
    """The fake relay, with its user on the small-window side (``b`` of _relay_pair)."""

    def __init__(self, user: Any = None) -> None:
        super().__init__()
        self.user = user

    def user_side(self, channel: Any) -> bool:
        return channel.conn is self.user


def _user_relay_pair(user_window: int) -> tuple[RelayChannel, RelayChannel, Conn, Conn]:
    """a: the studio's half; b: the user's half, the user's window ``user_window``."""
    a, b, ca, cb = _relay_pair(user_window)
    a.relay = b.relay = UserRelay(cb)  # type: ignore[assignment]
    return a, b, ca, cb


def test_an_sftp_clients_eof_lets_the_studios_close_past_replies_it_never_reads() -> None:
    """The state of the flaky scp test (a dump of the gateway and the studio showed it):
    scp's ssh wrote the sftp replies to a dead scp, dropped the ones it held without
    re-opening its window (it says eow@openssh.com only to OpenSSH servers), sent EOF and
    waited for the close; the studio's close waited behind replies the user's window
    never let through, and ssh, the SSH connection and its tunnel stream lived for ever."""
    a, b, ca, cb = _user_relay_pair(50)
    b.handle_request(b"subsystem", common.NS(b"sftp"), True)
    ca.ssh_CHANNEL_DATA(_data(100))  # replies: 50 go out, 50 wait for the user's window
    assert b.queued_bytes == 50 and b.remoteWindowLeft == 0
    assert a.localWindowLeft + a._unacked == a.localWindowSize - 50  # the studio waits

    cb.ssh_CHANNEL_EOF(struct.pack(">L", 0))  # the user: no more requests, nor reads

    assert b.queued_bytes == 0  # dropped, and credited to the studio
    assert a.localWindowLeft + a._unacked == a.localWindowSize
    assert ca.transport.kinds()[-1] == connection.MSG_CHANNEL_EOF  # passed on
    # what the studio sends until its close is dropped as well; its exit status, EOF
    # and close reach the user at once, with no window from the user
    sent = len(cb.transport.packets)
    ca.ssh_CHANNEL_DATA(_data(80))
    a.handle_request(b"exit-status", struct.pack(">L", 0), False)
    ca.ssh_CHANNEL_EOF(struct.pack(">L", 0))
    ca.ssh_CHANNEL_CLOSE(struct.pack(">L", 0))
    assert cb.transport.kinds()[sent:] == [connection.MSG_CHANNEL_REQUEST,
                                           connection.MSG_CHANNEL_EOF,
                                           connection.MSG_CHANNEL_CLOSE]
    assert b.queued_bytes == 0


def test_a_shell_users_eof_still_gets_all_the_output() -> None:
    """``ssh host cat big </dev/null | slow``: EOF at once, then output read slowly."""
    a, b, ca, cb = _user_relay_pair(50)
    b.handle_request(b"exec", common.NS(b"cat big"), True)
    ca.ssh_CHANNEL_DATA(_data(100))
    cb.ssh_CHANNEL_EOF(struct.pack(">L", 0))
    ca.ssh_CHANNEL_CLOSE(struct.pack(">L", 0))
    assert b.queued_bytes == 50  # still waits for the user's window, the close behind it
    assert cb.transport.kinds()[-1] == connection.MSG_CHANNEL_DATA
    cb.ssh_CHANNEL_WINDOW_ADJUST(struct.pack(">2L", 0, 100))
    assert cb.transport.kinds()[-2:] == [connection.MSG_CHANNEL_DATA,
                                         connection.MSG_CHANNEL_CLOSE]


def test_sftp_asked_by_the_studio_drops_nothing() -> None:
    """Only the user's half drops what its reader no longer reads."""
    a, b, ca, cb = _user_relay_pair(1 << 20)
    a.remoteWindowLeft = 0  # the studio reads nothing for now
    a.handle_request(b"subsystem", common.NS(b"sftp"), True)  # (no studio does this)
    cb.ssh_CHANNEL_DATA(_data(100))
    ca.ssh_CHANNEL_EOF(struct.pack(">L", 0))
    assert a.queued_bytes == 100


# The channel limit through the relay: what a client has finished with -----------------------


class _Slots:
    """A user connection (limit `max_channels`) relayed to a studio, both in memory; the
    client's and the studio's messages are played by hand, ids as each side sees them."""

    def __init__(self, max_channels: int):
        self.relay = ServerRelay(window=1024)
        self.user = UserConnection()
        self.user.transport = FakeTransport()
        self.user.max_channels = max_channels
        self.user.relay = self.relay
        self.studio = UpstreamConnection(self.relay, Deferred())
        self.studio.transport = FakeTransport()
        self.relay.user, self.relay.studio = self.user, self.studio

    def open(self, confirm: bool = True, window: int = 10_000) -> tuple[int, int] | str:
        """The client opens a -L channel: (its id at the gateway's user side, at the
        studio side), or the refusal the client reads."""
        packets = self.user.transport.packets
        before = len(packets)
        self.user.ssh_CHANNEL_OPEN(common.NS(b"direct-tcpip") + struct.pack(
            ">3L", before + 100, 10_000, 100) + common.NS(b"127.0.0.1")
            + struct.pack(">L", 80) + common.NS(b"127.0.0.1") + struct.pack(">L", 5000))
        if len(packets) > before and packets[-1][0] == connection.MSG_CHANNEL_OPEN_FAILURE:
            return common.getNS(packets[-1][1][8:])[0].decode()
        studio_id = self.studio.localChannelID - 1
        if confirm:
            self.confirm(studio_id, window)
        return self.user.localChannelID - 1, studio_id

    def confirm(self, studio_id: int, window: int = 10_000) -> None:
        self.studio.ssh_CHANNEL_OPEN_CONFIRMATION(struct.pack(">4L", studio_id, studio_id,
                                                              window, 100))

    def held(self) -> tuple[int, int]:
        return self.user.channels_held()


def test_a_channel_the_client_has_finished_with_leaves_its_slot_to_a_new_one() -> None:
    """`ssh -L` whose local connection ended: OpenSSH sends EOF, and its CLOSE only once
    the studio's end has answered (a round trip through the studio). A browser's next
    request opens its channel meanwhile; it was refused at the limit."""
    slots = _Slots(max_channels=2)
    first = slots.open()
    assert isinstance(first, tuple) and isinstance(slots.open(), tuple)
    assert slots.open() == "too many channels on this connection (limit 2)"
    slots.user.ssh_CHANNEL_EOF(struct.pack(">L", first[0]))  # the local connection ended
    assert isinstance(slots.open(), tuple)  # the next request gets its channel
    assert slots.held() == (2, 1)
    assert slots.open() == "too many channels on this connection (limit 2)"


def test_opens_not_yet_answered_by_the_studio_are_in_use() -> None:
    slots = _Slots(max_channels=2)
    slots.open(confirm=False)
    slots.open(confirm=False)
    assert slots.held() == (2, 0)
    assert slots.open() == "too many channels on this connection (limit 2)"


def test_channels_still_closing_at_the_studio_are_bounded_too() -> None:
    """A client that opens channels and sends EOF at once, over and over: each holds a
    socket in the studio until the tool closes it. All held: at most twice the limit."""
    slots = _Slots(max_channels=2)
    opened = []
    for _ in range(4):
        got = slots.open()
        assert isinstance(got, tuple), got
        opened.append(got)
        slots.user.ssh_CHANNEL_EOF(struct.pack(">L", got[0]))
    assert slots.held() == (0, 4)
    assert slots.open() == ("too many channels on this connection, counting 4 still "
                            "closing at the studio (limit 4)")
    # The studio's end closes the first: the gateway closes it towards the client, and
    # its slot is free once the client has answered that close.
    user_id, studio_id = opened[0]
    slots.studio.ssh_CHANNEL_EOF(struct.pack(">L", studio_id))
    slots.studio.ssh_CHANNEL_CLOSE(struct.pack(">L", studio_id))
    assert slots.user.transport.kinds()[-2:] == [connection.MSG_CHANNEL_EOF,
                                                 connection.MSG_CHANNEL_CLOSE]
    assert slots.held() == (0, 4)
    slots.user.ssh_CHANNEL_CLOSE(struct.pack(">L", user_id))
    assert slots.held() == (0, 3)
    assert isinstance(slots.open(), tuple)


def test_a_channel_the_client_closed_counts_until_the_studio_has_closed_it() -> None:
    """The client's CLOSE frees its side at once, but the data it sent before still waits
    here for the studio's window, and the close behind it: still held, as closing."""
    slots = _Slots(max_channels=1)
    got = slots.open(window=0)  # the studio's tool reads nothing for now
    assert isinstance(got, tuple)
    user_id, studio_id = got
    slots.user.ssh_CHANNEL_DATA(struct.pack(">2L", user_id, 50) + b"x" * 50)
    slots.user.ssh_CHANNEL_CLOSE(struct.pack(">L", user_id))
    assert user_id not in slots.user.channels  # closed on the client's side
    assert slots.held() == (0, 1)
    second = slots.open()
    assert isinstance(second, tuple)
    slots.user.ssh_CHANNEL_EOF(struct.pack(">L", second[0]))
    assert slots.open() == ("too many channels on this connection, counting 2 still "
                            "closing at the studio (limit 2)")
    # The tool reads: the data goes, then the close; the studio answers it.
    slots.studio.ssh_CHANNEL_WINDOW_ADJUST(struct.pack(">2L", studio_id, 1000))
    assert slots.studio.transport.kinds()[-2:] == [connection.MSG_CHANNEL_DATA,
                                                   connection.MSG_CHANNEL_CLOSE]
    slots.studio.ssh_CHANNEL_CLOSE(struct.pack(">L", studio_id))
    assert slots.held() == (0, 1)
    assert isinstance(slots.open(), tuple)


def test_the_studio_closing_first_frees_the_slot_at_the_clients_close() -> None:
    slots = _Slots(max_channels=1)
    got = slots.open()
    assert isinstance(got, tuple)
    user_id, studio_id = got
    slots.studio.ssh_CHANNEL_CLOSE(struct.pack(">L", studio_id))  # the tool went away
    assert slots.held() == (1, 0)  # the client has not answered yet: it may still send
    slots.user.ssh_CHANNEL_CLOSE(struct.pack(">L", user_id))
    assert slots.held() == (0, 0) and not slots.relay.closing_at_studio


def test_window_overrun_closes_channel() -> None:
    conn = Conn()
    conn.transport = FakeTransport()
    _open(conn, 1)
    conn.ssh_CHANNEL_DATA(_data(300))  # max packet 256
    assert conn.transport.kinds()[-1] == connection.MSG_CHANNEL_CLOSE


class _Probed:
    """Stands in for the user's ssh-connection: records the gateway's keepalive requests."""

    def __init__(self) -> None:
        self.transport = object()
        self.requests: list[tuple[bytes, int]] = []

    def sendGlobalRequest(self, request: bytes, data: bytes, wantReply: int = 0) -> None:  # noqa: N802
        self.requests.append((request, wantReply))


def test_a_silent_client_is_asked_then_closed_at_the_client_timeout() -> None:
    clock = MemoryReactorClock()
    f = _factory(clock, client_timeout=9.0)  # asked every 3 s (a third)
    proto, t = _connect(f)
    conn = _Probed()
    proto._user_conn = conn
    proto._cancel_timer()  # (the login's timers are not this test's)
    proto._watch_client()  # logged in at 0
    clock.advance(3.0)
    assert conn.requests == [(b"keepalive@openssh.com", 1)] and not t.disconnecting
    clock.advance(2.0)
    proto._heard_at = clock.seconds()  # the reply (any packet) came at 5
    clock.advance(1.0)  # 6: heard 1 s ago, nothing to ask
    assert len(conn.requests) == 1
    clock.pump([3.0, 3.0, 1.9])  # 13.9: silent for 8.9 s, asked at 9 and 12
    assert len(conn.requests) == 3 and not t.disconnecting
    clock.advance(0.2)  # 14.1: silent for 9 s
    assert t.disconnecting
    assert b"nothing heard from the client for 9s (CONNECT_SSH_CLIENT_TIMEOUT)" in t.value()
    proto.connectionLost(Failure(ConnectionError()))
    assert not [c for c in clock.getDelayedCalls() if c.active()]


def test_client_timeout_zero_never_asks_nor_closes() -> None:
    clock = MemoryReactorClock()
    f = _factory(clock, client_timeout=0.0)
    proto, t = _connect(f)
    proto._user_conn = conn = _Probed()
    proto._cancel_timer()  # (the login's timers are not this test's)
    proto._watch_client()
    clock.advance(3600.0)
    assert conn.requests == [] and not t.disconnecting


@pytest.mark.parametrize(("timeout", "noted"), [(9.0, True), (0.0, False)])
def test_reads_note_the_time_only_when_the_client_timeout_is_on(timeout: float,
                                                                 noted: bool) -> None:
    """With CONNECT_SSH_CLIENT_TIMEOUT=0 nothing reads _heard_at: no clock call per read."""
    clock = MemoryReactorClock()
    f = _factory(clock, client_timeout=timeout)
    proto, _ = _connect(f)
    clock.advance(1.0)
    calls = []
    seconds = clock.seconds
    clock.seconds = lambda: calls.append(1) or seconds()  # type: ignore[method-assign]
    proto.dataReceived(b"SSH-2.0-OpenSSH_9.6\r\n")
    assert (proto._heard_at == 1.0, len(calls)) == (noted, int(noted))
    proto.connectionLost(Failure(ConnectionError()))
