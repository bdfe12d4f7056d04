"""A tunnel whose path went silent is reported by the end that found it, naming the tunnel:
the gateway's line names the session, the studio's the gateway, a peer link's the peer,
and the gateway counts it apart (``studios_gateway_tunnel_losses_total{reason="silent"}``).

Before, the multiplexer logged ``nothing heard from the peer for 20s: the tunnel is dead``
with no session in it, and the gateway's next line said only ``session s1: tunnel
closed``: with many studios behind one NAT, nothing said which line was whose, and the
counter put a silent path with a broken connection under ``lost``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from twisted.internet import error
from twisted.internet.main import CONNECTION_DONE
from twisted.internet.protocol import Protocol
from twisted.internet.testing import StringTransport
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python.failure import Failure

from studios_gateway.studio.client import TunnelClientProtocol
from studios_gateway.studio.settings import Gateway
from studios_gateway.tunnel.server import TunnelMetrics, TunnelServerFactory
from studios_gateway.wire.bind import BindReply, BindRequest, parse_reply
from studios_gateway.wire.frames import encode_go_away
from studios_gateway.wire.mux import LOST_UNCLEANLY, broke
from tests.support.tables import TOKEN, memory_table
from tests.unit.test_connect_liveness import make_client
from tests.unit.test_deadline import ReactorClock

BIND = BindRequest("s1", TOKEN, "0.12.0", "generic", 8080).encode()
BROKEN = Failure(error.ConnectionLost())


@pytest.fixture
def lines() -> Iterator[list[tuple[str, str]]]:
    """(level, text) of every log event while the test runs."""
    seen: list[tuple[str, str]] = []

    def observe(event: dict[str, Any]) -> None:
        level = event.get("log_level")
        seen.append((level.name if level is not None else "", formatEvent(event)))

    globalLogPublisher.addObserver(observe)
    yield seen
    globalLogPublisher.removeObserver(observe)


def bound_gateway_end() -> tuple[Any, StringTransport, ReactorClock, CollectorRegistry]:
    clock = ReactorClock()
    registry = CollectorRegistry()
    _, table = memory_table(clock, metrics=TunnelMetrics(registry))
    protocol: Any = TunnelServerFactory(table).buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    protocol.dataReceived(BIND)
    clock.advance(0)
    assert parse_reply(transport.value().split(b"\n")[0]).ok
    return protocol, transport, clock, registry


def losses(registry: CollectorRegistry, reason: str) -> float:
    return registry.get_sample_value("studios_gateway_tunnel_losses_total",
                                     {"reason": reason}) or 0.0


class Ended(Protocol):
    def connectionLost(self, reason: Failure = CONNECTION_DONE) -> None:
        self.reason = reason


def test_the_gateway_names_the_session_whose_path_went_silent(
        lines: list[tuple[str, str]]) -> None:
    protocol, transport, clock, registry = bound_gateway_end()
    stream = protocol.table.open_stream("s1")  # a WebSocket's, an SSH session's
    ended = Ended()
    stream.attach(ended)
    del lines[:]
    clock.advance(20)  # CONNECT_TUNNEL_PING_TIMEOUT's default, nothing from the studio
    # What the browser's access line and the ssh user read (http/proxy.py, ssh/server.py):
    # the mux's words, without Twisted's "User timeout caused connection failure: ... ."
    assert broke(ended.reason) == "tunnel lost: nothing heard from the studio for 20s"
    assert transport.disconnecting  # aborted: no FIN waits on a silent path
    protocol.connectionLost(BROKEN)  # what the aborted TCP connection then reports
    said = [(level, text) for level, text in lines if "nothing heard" in text
            or "tunnel" in text]
    assert said == [("warn", "session s1: tunnel lost: nothing heard from the studio for "
                             "20s (CONNECT_TUNNEL_PING_TIMEOUT); it is routed nowhere until "
                             "the studio binds again")]
    assert (losses(registry, "silent"), losses(registry, "lost")) == (1, 0)


@pytest.mark.parametrize(("reason", "line", "counted"), [
    (None, "session s1: tunnel closed", "closed"),
    (Failure(error.ConnectionDone()), "session s1: tunnel closed", "closed"),
    (BROKEN, "session s1: tunnel lost: the connection ended without a clean close "
             "(reset, or the other end gone)", "lost"),
    (Failure(error.ConnectionLost("Connection lost.")),  # what a reset TLS connection says
     "session s1: tunnel lost: the connection ended without a clean close (reset, or the "
     "other end gone)", "lost"),
    (Failure(error.ConnectionLost("the peer sent garbage")),  # a text of its own: kept
     "session s1: tunnel lost: the peer sent garbage", "lost"),
])
def test_a_closed_or_broken_tunnel_says_so_once(lines: list[tuple[str, str]], reason: Any,
                                                 line: str, counted: str) -> None:
    protocol, _, _, registry = bound_gateway_end()
    del lines[:]
    protocol.connectionLost(reason)
    assert [text for _, text in lines if "tunnel" in text] == [line]
    assert losses(registry, counted) == 1 and losses(registry, "silent") == 0


@pytest.mark.parametrize(("reason", "line", "counted"), [
    (BROKEN, "session s1: tunnel closed (the studio stopped: it said it was going away, "
             "then its connection ended)", "closed"),
    (Failure(error.ConnectionLost("Connection lost.")),
     "session s1: tunnel closed (the studio stopped: it said it was going away, then its "
     "connection ended)", "closed"),
    (Failure(error.ConnectionDone()), "session s1: tunnel closed", "closed"),
    (Failure(error.ConnectionLost("the peer sent garbage")),  # a break of its own words
     "session s1: tunnel lost: the peer sent garbage", "lost"),
    # Another failure whose words read the same: decided by the failure's kind (it was
    # by its rendered words, LOST_UNCLEANLY, and so taken for a stop).
    (Failure(OSError(LOST_UNCLEANLY)), f"session s1: tunnel lost: {LOST_UNCLEANLY}", "lost"),
])
def test_a_studio_that_said_goaway_then_went_is_closed_not_lost(
        lines: list[tuple[str, str]], reason: Any, line: str, counted: str) -> None:
    """studios-connect stopping (SIGTERM, its tool exited) says GoAway, then closes; its TLS
    end often arrives as a ConnectionLost (measured: every SIGTERM of a studio on a two-node
    cluster). That was logged "tunnel lost: the connection ended without a clean close" and
    counted under reason="lost", the series an operator alerts on for broken paths."""
    protocol, _, _, registry = bound_gateway_end()
    protocol.dataReceived(encode_go_away())
    del lines[:]
    protocol.connectionLost(reason)
    assert [text for _, text in lines if "tunnel" in text] == [line]
    assert losses(registry, counted) == 1
    assert losses(registry, "lost" if counted == "closed" else "closed") == 0


def test_a_studio_going_away_is_said_once_with_its_session(
        lines: list[tuple[str, str]]) -> None:
    """The multiplexer said 'the studio is going away: no new streams on this tunnel',
    naming no session, beside the tunnel's own lines that name it."""
    protocol, _, _, _ = bound_gateway_end()
    del lines[:]
    protocol.dataReceived(encode_go_away())
    assert [(level, text) for level, text in lines
            if "going away" in text and level != "debug"] == [
        ("info", "session s1: the studio is going away: no new streams on its tunnel")]


def test_the_studio_says_which_gateway_went_silent(lines: list[tuple[str, str]]) -> None:
    clock = ReactorClock()
    client = make_client(clock)  # type: ignore[arg-type]
    protocol = TunnelClientProtocol(client, Gateway("gw.example", 7070))
    protocol.makeConnection(StringTransport())
    protocol.dataReceived(BindReply(ok=True, tunnel_id="t", ping_interval=2,
                                    ping_timeout=5).encode())
    client._protocol = protocol
    del lines[:]
    clock.advance(5)
    protocol.connectionLost(BROKEN)
    said = [(level, text) for level, text in lines if "nothing heard" in text
            or " lost" in text]
    assert said == [("warn", "tunnel to gw.example:7070 lost: nothing heard from the "
                             "gateway for 5s")]
    assert client.state == "backing-off"


def test_a_peer_link_that_went_silent_says_so_on_the_listening_node(
        lines: list[tuple[str, str]]) -> None:
    from studios_gateway.peers.handshake import ClientHandshake, PeerAuth
    from studios_gateway.peers.link import PeerServerFactory, PeerSettings

    clock = ReactorClock()
    auth = PeerAuth(secret="s" * 24)
    factory = PeerServerFactory(None, auth, PeerSettings(), clock)
    protocol: Any = factory.buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    client = ClientHandshake(auth, "node-a")
    protocol.dataReceived(client.greet(transport.value().split(b"\n")[0] + b"\n"))
    assert protocol.mux is not None
    del lines[:]
    clock.advance(20)  # nothing from node-a for the peers' ping timeout
    protocol.connectionLost(BROKEN)
    assert [text for _, text in lines if "peer" in text] == [
        "peer node-a disconnected (nothing heard from the other node for 20s)"]
