"""The studio's end of a forwarded socket (`ssh -L`, the agent): closed once both
directions are done, so that the channel's CLOSE follows its EOF."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.testing import StringTransport

from studios_gateway.studio.sshd import _SocketSide


class _Channel:
    """Records what the socket's side tells its channel."""

    def __init__(self) -> None:
        self.said: list[str] = []
        self.sock: Any = None

    def write(self, data: bytes) -> None:
        self.said.append("data")

    def send_eof(self) -> None:
        self.said.append("eof")

    def loseConnection(self) -> None:  # noqa: N802
        self.said.append("close")


@pytest.mark.parametrize("tool_first", [True, False])
def test_a_socket_done_both_ways_is_closed(tool_first: bool) -> None:
    """The client's EOF shut our direction down; the tool's FIN ended the other (in
    either order). Twisted closes such a socket only when told: it stayed open, and the
    channel sent no CLOSE, until the client's CLOSE came (never, from some clients)."""
    channel = _Channel()
    side = _SocketSide(channel)  # type: ignore[arg-type]
    transport = StringTransport()
    side.makeConnection(transport)
    first, second = ((side.readConnectionLost, side.writeConnectionLost) if tool_first
                     else (side.writeConnectionLost, side.readConnectionLost))
    first()
    assert not transport.disconnecting  # one direction still carries data
    second()
    assert transport.disconnecting
    assert channel.said == ["eof"]  # the close follows once the socket has gone
    side.connectionLost(None)
    assert channel.said == ["eof", "close"]
