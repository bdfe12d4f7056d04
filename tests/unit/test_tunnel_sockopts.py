import errno
import hashlib
import inspect
import os
import socket
from typing import Any

from twisted.internet import defer, endpoints, main, tcp
from twisted.internet.protocol import Protocol

from studios_gateway.wire.sockopts import (
    SMALL_READ,
    TCP_RTO_MAX_MS,
    TUNNEL_RTO_MAX_MS,
    TUNNEL_UNSENT,
    bulk_buffers,
    bulk_reads,
    bytes_waiting,
    host_silence_limit,
    no_delay,
    retransmit_cap,
    unsent_bound,
)


class TCPish:
    def __init__(self) -> None:
        self.calls: list[bool] = []

    def setTcpNoDelay(self, enabled: bool) -> None:  # noqa: N802 - Twisted's name
        self.calls.append(enabled)


class Wrapper:
    """Like TLSMemoryBIOProtocol: forwards unknown attributes, holds the real transport."""

    def __init__(self, transport: Any):
        self.transport = transport

    def __getattr__(self, name: str) -> Any:
        return getattr(self.transport, name)


class Refusing(TCPish):
    def setTcpNoDelay(self, enabled: bool) -> None:  # noqa: N802
        raise OSError("not a TCP socket")


def test_reaches_the_tcp_socket_through_wrappers() -> None:
    tcp = TCPish()
    no_delay(Wrapper(Wrapper(tcp)))
    assert tcp.calls == [True]


def test_transports_without_the_option_are_left_alone() -> None:
    no_delay(None)
    no_delay(object())
    no_delay(Wrapper(Refusing()))


def test_the_unsent_bound_is_set_through_wrappers_and_skipped_where_it_cannot_be() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener, \
            socket.create_connection(listener.getsockname()) as a:
        tcp = TCPish()
        tcp.socket = a  # type: ignore[attr-defined]
        unsent_bound(Wrapper(Wrapper(tcp)))
        assert a.getsockopt(socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT) == TUNNEL_UNSENT
    unix_a, unix_b = socket.socketpair()  # not TCP: the option is refused, nothing raised
    with unix_a, unix_b:
        not_tcp = TCPish()
        not_tcp.socket = unix_a  # type: ignore[attr-defined]
        unsent_bound(not_tcp)
    unsent_bound(None)
    unsent_bound(object())
    unsent_bound(TCPish())  # no socket (a test transport)


def test_a_host_silence_limit_is_set_and_taken_off_again() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener, \
            socket.create_connection(listener.getsockname()) as a:
        tcp = TCPish()
        tcp.socket = a  # type: ignore[attr-defined]
        host_silence_limit(Wrapper(tcp), (20, 5, 3))
        assert a.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        assert [a.getsockopt(socket.IPPROTO_TCP, o) for o in (
            socket.TCP_KEEPIDLE, socket.TCP_KEEPINTVL, socket.TCP_KEEPCNT,
            socket.TCP_USER_TIMEOUT)] == [20, 5, 3, 35_000]
        host_silence_limit(Wrapper(tcp), None)
        assert (a.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
                a.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT)) == (0, 0)
    host_silence_limit(None, (20, 5, 3))
    host_silence_limit(TCPish(), None)


def test_retransmissions_are_capped_at_two_seconds_through_wrappers() -> None:
    """After a short outage the next retransmission is at most 2 s away, not TCP's
    doubled wait (~9 s after a 10 s cut): Linux 6.15's TCP_RTO_MAX_MS, this machine's."""
    with socket.create_server(("127.0.0.1", 0)) as listener, \
            socket.create_connection(listener.getsockname()) as a:
        assert a.getsockopt(socket.IPPROTO_TCP, TCP_RTO_MAX_MS) == 120_000  # the kernel's
        tcp = TCPish()
        tcp.socket = a  # type: ignore[attr-defined]
        retransmit_cap(Wrapper(tcp))
        assert a.getsockopt(socket.IPPROTO_TCP, TCP_RTO_MAX_MS) == TUNNEL_RTO_MAX_MS == 2000
    retransmit_cap(None)
    retransmit_cap(TCPish())


class Collect(Protocol):
    def __init__(self) -> None:
        self.delivered: list[bytes] = []

    def dataReceived(self, data: bytes) -> None:
        self.delivered.append(data)


class TCPBuffers(tcp.Connection):
    """A Twisted TCP transport on one end of a socketpair, outside any reactor, whose
    reads a test makes by sending from the other end and calling doRead."""

    def __init__(self, sock: socket.socket | None = None) -> None:
        if sock is None:
            sock, self.peer = socket.socketpair()
            for s in (sock, self.peer):
                s.setblocking(False)
        super().__init__(sock, Collect(), self)
        self.sizes: list[int] = []

    @property
    def delivered(self) -> list[bytes]:
        return self.protocol.delivered  # type: ignore[no-any-return]

    def read(self, data: bytes) -> Any:
        """``data`` arrives; the reactor calls doRead (the read size it used is noted)."""
        self.sizes.append(self.bufferSize)
        self.peer.sendall(data)
        return self.doRead()

    def close(self) -> None:
        self.socket.close()
        self.peer.close()


def test_a_connection_an_endpoint_made_reads_into_the_wrapped_protocol() -> None:
    """Twisted's client endpoints put a _WrappingProtocol between the connection and its
    protocol; once connected it only passes calls on, so reads skip it."""
    tcp_ = TCPBuffers()
    inner = Collect()
    connected: defer.Deferred[Any] = defer.Deferred()
    tcp_.protocol = endpoints._WrappingProtocol(connected, inner)
    tcp_.connected = True
    tcp_.protocol.makeConnection(tcp_)
    assert connected.called and inner.transport is tcp_
    bulk_buffers(tcp_, 512 * 1024)
    assert tcp_.protocol is inner
    tcp_.read(b"hello")
    assert inner.delivered == [b"hello"]
    tcp_.close()
    not_yet = TCPBuffers()  # not connected yet: left as it is
    not_yet.protocol = wrapping = endpoints._WrappingProtocol(defer.Deferred(), Collect())
    bulk_buffers(not_yet, 512 * 1024)
    assert not_yet.protocol is wrapping
    not_yet.close()


def test_the_twisted_endpoint_wrapper_skipped_only_passes_calls_on() -> None:
    """If this fails, Twisted changed what its endpoints' _WrappingProtocol does once
    connected (sockopts._unwrap_endpoint_protocol skips it for reads and the end):
    compare, adapt, update the digests."""
    def digest(obj: Any) -> str:
        return hashlib.sha256(inspect.getsource(obj).encode()).hexdigest()[:16]

    wrapping = endpoints._WrappingProtocol
    assert {name: digest(getattr(wrapping, name)) for name in (
        "__init__", "dataReceived", "connectionLost", "readConnectionLost",
        "writeConnectionLost", "fileDescriptorReceived")} == {
        "__init__": "01967dd52a2b33bc", "dataReceived": "3ea65a2452146f7a",
        "connectionLost": "1a165d78105a05cf", "readConnectionLost": "5e199373d30d2204",
        "writeConnectionLost": "fb11b3f87071dcec", "fileDescriptorReceived": "db5ecf0529fe75a1"}


def test_bulk_buffers_sets_the_tcp_transport_not_a_wrapper() -> None:
    tcp_ = TCPBuffers()
    wrapper = Wrapper(Wrapper(tcp_))
    bulk_buffers(wrapper, 512 * 1024)
    assert (tcp_.bufferSize, tcp_.SEND_LIMIT) == (SMALL_READ, 512 * 1024)
    assert "bufferSize" not in vars(wrapper)
    assert TCPBuffers.bufferSize == 64 * 1024  # the instance, not every connection
    tcp_.close()


def test_reads_grow_to_the_bulk_size_while_they_fill_and_shrink_after_a_small_one() -> None:
    tcp_ = TCPBuffers()
    bulk_buffers(tcp_, 512 * 1024)
    assert isinstance(tcp_, TCPBuffers) and "doRead" not in vars(tcp_)  # by its class
    tcp_.read(b"x" * 38)  # a WebSocket message: the next read stays small (heap, no mmap)
    assert tcp_.bufferSize == SMALL_READ
    tcp_.read(b"x" * SMALL_READ)  # filled its buffer: bulk is coming
    assert tcp_.bufferSize == 512 * 1024
    tcp_.read(b"x" * (200 * 1024))  # a partial bulk read: still bulk
    assert tcp_.bufferSize == 512 * 1024
    tcp_.read(b"x" * 100)
    assert tcp_.bufferSize == SMALL_READ
    assert tcp_.sizes == [SMALL_READ, SMALL_READ, 512 * 1024, 512 * 1024]
    assert [len(d) for d in tcp_.delivered] == [38, SMALL_READ, 200 * 1024, 100]
    fitted = type(tcp_)
    bulk_buffers(tcp_, 512 * 1024)  # again (a second call): not fitted twice
    assert type(tcp_) is fitted
    # What Twisted's doRead returns: nothing to read now, then the peer's close.
    assert tcp_.doRead() is None
    tcp_.peer.close()
    assert tcp_.doRead() is main.CONNECTION_DONE
    assert len(tcp_.delivered) == 4
    tcp_.socket.close()


def test_bulk_reads_grow_the_reads_and_keep_twisteds_write_buffer_bound() -> None:
    """A browser's connection: an upload read in up to 512 KiB, while what may wait for a
    slow browser is still Twisted's bound (a download is not buffered more per client)."""
    tcp_ = TCPBuffers()
    twisteds = TCPBuffers.SEND_LIMIT
    bulk_reads(Wrapper(tcp_), 512 * 1024)
    assert (tcp_.bufferSize, tcp_.SEND_LIMIT) == (SMALL_READ, twisteds)
    tcp_.read(b"x" * SMALL_READ)
    assert tcp_.bufferSize == 512 * 1024
    tcp_.read(b"x" * 10)
    assert tcp_.bufferSize == SMALL_READ and type(tcp_).SEND_LIMIT == twisteds
    tcp_.close()


def test_a_failed_read_is_a_lost_connection_as_with_twisteds_read() -> None:
    class Failing:
        def __init__(self, code: int) -> None:
            self.code = code

        def recv(self, n: int) -> bytes:
            raise OSError(self.code, os.strerror(self.code))

    tcp_ = TCPBuffers()
    bulk_buffers(tcp_, 512 * 1024)
    real, tcp_.socket = tcp_.socket, Failing(errno.ECONNRESET)
    assert tcp_.doRead() is main.CONNECTION_LOST
    tcp_.socket = Failing(errno.EAGAIN)
    assert tcp_.doRead() is None and not tcp_.delivered
    tcp_.socket = real
    tcp_.close()


def test_a_small_bulk_size_is_a_fixed_read_size() -> None:
    tcp_ = TCPBuffers()
    bulk_buffers(tcp_, 32 * 1024)
    assert tcp_.bufferSize == 32 * 1024
    tcp_.read(b"x" * 10)
    tcp_.read(b"x" * 32 * 1024)
    tcp_.read(b"x" * 10)
    assert tcp_.sizes == [32 * 1024] * 3 and tcp_.bufferSize == 32 * 1024
    tcp_.close()


def test_bulk_buffers_leaves_other_transports_alone() -> None:
    bulk_buffers(None, 1)
    bulk_buffers(object(), 1)


class Port:
    """Like Twisted's tcp.Port: makes each accepted connection with its ``transport`` class."""

    transport: type = TCPBuffers


class Accepted(TCPBuffers):
    """A connection a Port accepted (Twisted's tcp.Server keeps its port as ``server``)."""

    def __init__(self, port: Port) -> None:
        self.server = port
        super().__init__()


def test_a_listeners_next_connections_are_made_with_bulk_buffers() -> None:
    port = Port()
    port.transport = Accepted
    first = Accepted(port)
    bulk_buffers(first, 512 * 1024)
    made = port.transport
    assert issubclass(made, Accepted) and made is not Accepted
    assert type(first) is made and "doRead" not in vars(first)  # this one: its class changed
    later = made(port)
    before = sorted(vars(later))
    assert not {"_bulk_size", "SEND_LIMIT", "doRead"} & set(before)  # all from its class
    bulk_buffers(later, 512 * 1024)
    assert sorted(vars(later)) == before  # nothing added
    assert (later.bufferSize, later.SEND_LIMIT) == (SMALL_READ, 512 * 1024)
    later.read(b"x" * SMALL_READ)
    assert later.bufferSize == 512 * 1024
    later.read(b"x" * 10)
    assert later.bufferSize == SMALL_READ and [len(d) for d in later.delivered] == [
        SMALL_READ, 10]
    assert TCPBuffers.bufferSize == Accepted.bufferSize == 64 * 1024  # Twisted's unchanged
    # Another size on a fitted connection (no caller does it): that connection's own.
    bulk_buffers(later, 1024 * 1024)
    assert later.SEND_LIMIT == 1024 * 1024 and made.SEND_LIMIT == 512 * 1024
    # The port is fitted once; a second port of the same class gets the same class.
    third = made(port)
    bulk_buffers(third, 512 * 1024)
    assert port.transport is made
    other = Port()
    other.transport = Accepted
    fourth = Accepted(other)
    bulk_buffers(fourth, 512 * 1024)
    assert other.transport is made
    for c in (first, later, third, fourth):
        c.close()


def test_a_port_that_is_not_twisteds_is_left_alone() -> None:
    class Odd(TCPBuffers):
        server = object()  # no transport class

    odd = Odd()
    bulk_buffers(odd, 512 * 1024)
    port = Port()  # makes TCPBuffers, not what this connection is
    conn = Accepted(port)
    bulk_buffers(conn, 512 * 1024)
    assert port.transport is TCPBuffers
    for c in (odd, conn):
        c.close()


def test_a_transport_that_reads_its_own_way_keeps_it() -> None:
    class OwnRead(TCPBuffers):
        def doRead(self) -> Any:  # noqa: N802 - Twisted's name
            return None

    conn = OwnRead()
    bulk_buffers(conn, 512 * 1024)
    assert type(conn) is OwnRead and (conn.bufferSize, conn.SEND_LIMIT) == (512 * 1024,) * 2
    conn.close()


def test_the_twisted_read_stood_in_for_is_unchanged() -> None:
    """If this fails, Twisted changed the TCP read that _AdaptiveReads.doRead does in its
    stead (tcp.Connection.doRead and _dataReceived): compare, adapt, update the digests."""
    def digest(obj: Any) -> str:
        return hashlib.sha256(inspect.getsource(obj).encode()).hexdigest()[:16]

    assert {"doRead": digest(tcp.Connection.doRead),
            "_dataReceived": digest(tcp.Connection._dataReceived)} == {
        "doRead": "20ac74ffecd6b7f2", "_dataReceived": "7ed147aeca0c7f8a"}


class SocketTCPish(TCPish):
    """A TCP transport's shape over a real socket."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__()
        self.sock = sock

    def fileno(self) -> int:
        return self.sock.fileno()


def test_bytes_waiting_tells_unread_bytes_in_the_socket_through_tls_wrappers() -> None:
    """A drain keeps a kept-alive connection whose next request is in its socket and not
    read yet (ProxyProtocol.drain): told by FIONREAD on the TCP socket under TLS."""
    a, b = socket.socketpair()
    try:
        transport = Wrapper(SocketTCPish(b))
        assert not bytes_waiting(transport)
        a.sendall(b"GET / HTTP/1.1\r\n")
        assert bytes_waiting(transport)
        b.recv(100)
        assert not bytes_waiting(transport)
        b.close()
        assert not bytes_waiting(transport)  # (closed: cannot be told)
        assert not bytes_waiting(object())  # (not a TCP transport)
    finally:
        a.close()
        b.close()
