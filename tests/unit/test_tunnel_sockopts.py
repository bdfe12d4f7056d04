from typing import Any

from studios_gateway.wire.sockopts import bulk_buffers, no_delay


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
    """The two class attributes of a Twisted TCP transport that bulk_buffers sets."""

    bufferSize = 64 * 1024  # noqa: N815 - Twisted's name
    SEND_LIMIT = 128 * 1024


def test_bulk_buffers_sets_the_tcp_transport_not_a_wrapper() -> None:
    tcp = TCPBuffers()
    wrapper = Wrapper(Wrapper(tcp))
    bulk_buffers(wrapper, 512 * 1024)
    assert (tcp.bufferSize, tcp.SEND_LIMIT) == (512 * 1024, 512 * 1024)
    assert "bufferSize" not in vars(wrapper)
    assert TCPBuffers.bufferSize == 64 * 1024  # the instance, not every connection


def test_bulk_buffers_leaves_other_transports_alone() -> None:
    bulk_buffers(None, 1)
    bulk_buffers(object(), 1)
