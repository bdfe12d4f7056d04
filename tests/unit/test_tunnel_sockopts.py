from typing import Any

from studios_gateway.wire.sockopts import SMALL_READ, bulk_buffers, no_delay


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


class TCPBuffers:
    """The two class attributes of a Twisted TCP transport that bulk_buffers sets, and
    the method its doRead hands each read to."""

    bufferSize = 64 * 1024  # noqa: N815 - Twisted's name
    SEND_LIMIT = 128 * 1024

    def __init__(self) -> None:
        self.delivered: list[bytes | None] = []

    def _dataReceived(self, data: bytes | None) -> None:
        self.delivered.append(data)


def test_bulk_buffers_sets_the_tcp_transport_not_a_wrapper() -> None:
    tcp = TCPBuffers()
    wrapper = Wrapper(Wrapper(tcp))
    bulk_buffers(wrapper, 512 * 1024)
    assert (tcp.bufferSize, tcp.SEND_LIMIT) == (SMALL_READ, 512 * 1024)
    assert "bufferSize" not in vars(wrapper)
    assert TCPBuffers.bufferSize == 64 * 1024  # the instance, not every connection


def test_reads_grow_to_the_bulk_size_while_they_fill_and_shrink_after_a_small_one() -> None:
    tcp = TCPBuffers()
    bulk_buffers(tcp, 512 * 1024)
    read = tcp._dataReceived
    read(b"x" * 38)  # a WebSocket message: the next read stays small (heap, no mmap)
    assert tcp.bufferSize == SMALL_READ
    read(b"x" * SMALL_READ)  # filled its buffer: bulk is coming
    assert tcp.bufferSize == 512 * 1024
    read(b"x" * (200 * 1024))  # a partial bulk read: still bulk
    assert tcp.bufferSize == 512 * 1024
    read(b"x" * 100)
    assert tcp.bufferSize == SMALL_READ
    read(None)  # the end (Twisted passes what recv gave)
    assert [len(d) if d is not None else None for d in tcp.delivered] == [
        38, SMALL_READ, 200 * 1024, 100, None]
    bulk_buffers(tcp, 512 * 1024)  # again (a second call): not wrapped twice
    tcp._dataReceived(b"x" * SMALL_READ)
    assert len(tcp.delivered) == 6


def test_a_small_bulk_size_is_a_fixed_read_size() -> None:
    tcp = TCPBuffers()
    bulk_buffers(tcp, 32 * 1024)
    assert tcp.bufferSize == 32 * 1024 and "_dataReceived" not in vars(tcp)


def test_bulk_buffers_leaves_other_transports_alone() -> None:
    bulk_buffers(None, 1)
    bulk_buffers(object(), 1)


class Port:
    """Like Twisted's tcp.Port: makes each accepted connection with its ``transport`` class."""

    transport: type = TCPBuffers


class Accepted(TCPBuffers):
    """A connection a Port accepted (Twisted's tcp.Server keeps its port as ``server``)."""

    def __init__(self, port: Port) -> None:
        super().__init__()
        self.server = port


def test_a_listeners_next_connections_are_made_with_bulk_buffers() -> None:
    port = Port()
    port.transport = Accepted
    first = Accepted(port)
    bulk_buffers(first, 512 * 1024)
    assert "_dataReceived" in vars(first)  # this one: set on the instance, as before
    made = port.transport
    assert issubclass(made, Accepted) and made is not Accepted
    later = made(port)
    assert sorted(vars(later)) == ["bufferSize", "delivered", "server"]  # all from birth
    bulk_buffers(later, 512 * 1024)
    assert sorted(vars(later)) == ["bufferSize", "delivered", "server"]  # nothing added
    assert (later.bufferSize, later.SEND_LIMIT) == (SMALL_READ, 512 * 1024)
    later._dataReceived(b"x" * SMALL_READ)
    assert later.bufferSize == 512 * 1024
    later._dataReceived(b"x" * 10)
    assert later.bufferSize == SMALL_READ and [len(d or b"") for d in later.delivered] == [
        SMALL_READ, 10]
    assert TCPBuffers.bufferSize == Accepted.bufferSize == 64 * 1024  # Twisted's unchanged
    # Another size on a fitted connection (no caller does it): that connection's own.
    bulk_buffers(later, 1024 * 1024)
    assert later.SEND_LIMIT == 1024 * 1024 and made.SEND_LIMIT == 512 * 1024
    # The port is fitted once; a second port of the same class gets the same class.
    bulk_buffers(made(port), 512 * 1024)
    assert port.transport is made
    other = Port()
    other.transport = Accepted
    bulk_buffers(Accepted(other), 512 * 1024)
    assert other.transport is made


def test_a_port_that_is_not_twisteds_is_left_alone() -> None:
    class Odd(TCPBuffers):
        server = object()  # no transport class

    bulk_buffers(Odd(), 512 * 1024)
    port = Port()  # makes TCPBuffers, not what this connection is
    conn = Accepted(port)
    bulk_buffers(conn, 512 * 1024)
    assert port.transport is TCPBuffers
