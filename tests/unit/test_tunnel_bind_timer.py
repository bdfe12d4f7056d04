"""The gateway's bind timer waits for the bind message only, gives a message that waited
in the socket one more poll, and its refusal is one the studio retries."""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.testing import StringTransport

from studios_gateway.tunnel.server import TunnelServerFactory
from studios_gateway.wire.bind import BindRequest, parse_reply
from studios_gateway.wire.closing import CLOSE_GRACE
from tests.support.stuck_socket import StuckSocket
from tests.support.tables import TOKEN, memory_table
from tests.unit.test_deadline import ReactorClock

BIND = BindRequest("s1", TOKEN, "0.12.0", "generic", 8080).encode()


def connected(clock: ReactorClock) -> tuple[Any, StringTransport, Any]:
    store, table = memory_table(clock)
    protocol: Any = TunnelServerFactory(table).buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    return protocol, transport, store


def test_no_bind_message_is_refused_after_the_poll_after_the_timeout_and_may_be_retried(
        ) -> None:
    clock = ReactorClock()
    _, transport, _ = connected(clock)
    clock.advance(10)
    assert transport.value() == b"" and not transport.disconnecting  # one more poll first
    clock.advance(0)
    reply = parse_reply(transport.value().split(b"\n")[0])
    assert (reply.ok, reply.code, reply.retry) == (False, "bind_timeout", True)
    assert "no bind message within 10s" in reply.reason
    assert json.loads(transport.value())["retry"] is True  # what an older client reads
    assert transport.disconnecting


def test_a_refused_studio_that_reads_nothing_is_reset_after_the_grace() -> None:
    """The refusal's close waited for the studio to take it: one that reads nothing kept
    the connection for good. It is reset CLOSE_GRACE after the refusal."""
    clock = ReactorClock()
    _, table = memory_table(clock)
    sock = StuckSocket()
    sock.connect(TunnelServerFactory(table).buildProtocol(None))
    clock.advance(10)
    clock.advance(0)  # refused: bind_timeout
    assert sock.disconnecting and sock.unsent() and not sock.disconnected
    clock.advance(CLOSE_GRACE)
    assert sock.aborted and not clock.getDelayedCalls()


def test_a_message_read_in_the_poll_after_the_timeout_is_bound() -> None:
    clock = ReactorClock()
    protocol, transport, _ = connected(clock)
    clock.advance(12)  # the process was busy; the timer runs before the sockets are read
    protocol.dataReceived(BIND)  # the message that waited in the socket
    clock.advance(0)
    assert parse_reply(transport.value().split(b"\n")[0]).ok
    assert not clock.getDelayedCalls() or all(  # only the tunnel's own timers are left
        c.func.__name__ not in ("_bind_timed_out", "_no_bind_message")
        for c in clock.getDelayedCalls())
    protocol.connectionLost(None)


def test_a_slow_registry_is_not_a_missing_message() -> None:
    clock = ReactorClock()
    protocol, transport, store = connected(clock)
    answer: Deferred[Any] = Deferred()
    real_get = store.get
    store.get = lambda sid: answer  # the registry answers after the bind timer's 10 s
    protocol.dataReceived(BIND)
    clock.advance(15)
    clock.advance(0)
    assert transport.value() == b"" and not transport.disconnecting
    real_get("s1").chainDeferred(answer)
    assert parse_reply(transport.value().split(b"\n")[0]).ok
    protocol.connectionLost(None)
