from typing import Any

from studios_gateway.tunnel.sockopts import no_delay


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
