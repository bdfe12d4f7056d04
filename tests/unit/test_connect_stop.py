"""studios-connect stopping: the gateway is told the end is on purpose."""

from __future__ import annotations

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from studios_gateway.studio.client import ConnectClient
from studios_gateway.studio.settings import load_client_settings
from studios_gateway.wire.frames import GO_AWAY, GO_AWAY_NORMAL
from studios_gateway.wire.mux import Multiplexer
from tests.unit.test_connect_unknown_session import ENV


def test_stopping_sends_goaway_before_closing_the_tunnel() -> None:
    # Without it the gateway could not tell a studio stopping from one crashing (its TLS
    # end is often not clean): the browser's WebSockets got 1011 instead of 1001.
    clock = Clock()
    client = ConnectClient(load_client_settings(ENV), clock)
    client.running = True
    t = StringTransport()
    mux = Multiplexer(is_client=True, clock=clock, ping_interval=0)
    mux.makeConnection(t)
    t.clear()

    class Bound:
        transport = t
        closed: defer.Deferred[None] = defer.succeed(None)

    bound = Bound()
    bound.mux = mux  # type: ignore[attr-defined]
    client._protocol = bound  # type: ignore[assignment]
    client.stopService()
    sent = t.value()
    assert len(sent) == 12 and sent[1] == GO_AWAY
    assert int.from_bytes(sent[8:12], "big") == GO_AWAY_NORMAL
    assert t.disconnecting and mux.closed
