"""The connect client's side of liveness: the gateway's ping settings, GoAway spread."""

from __future__ import annotations

from typing import Any

from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from studios_gateway.studio.client import (
    BACKOFF_MAX,
    GOAWAY_SPREAD,
    RETIRED_LINGER,
    Backoff,
    ConnectClient,
    TunnelClientProtocol,
)
from studios_gateway.studio.settings import Gateway, load_client_settings
from studios_gateway.wire.bind import BindReply, parse_request

CONNECT = "studios-connect://s1:" + "t" * 32 + "@127.0.0.1:7070/"


def make_client(clock: Clock, draw: float = 0.5) -> ConnectClient:
    settings = load_client_settings({"CONNECT_STRING": CONNECT, "CONNECT_TOOL_PORT": "8888"})
    client = ConnectClient(settings, clock, backoff=Backoff(rng=lambda: draw))
    client.running = True  # not started: no tool polling, no dialling
    return client


def bound_protocol(client: ConnectClient, reply: BindReply) -> TunnelClientProtocol:
    protocol = TunnelClientProtocol(client, Gateway("127.0.0.1", 7070))
    protocol.makeConnection(StringTransport())
    protocol.dataReceived(reply.encode())
    assert protocol.mux is not None
    return protocol


def test_the_client_keeps_the_gateways_ping_settings() -> None:
    clock = Clock()
    client = make_client(clock)
    protocol = bound_protocol(client, BindReply(ok=True, tunnel_id="t", ping_interval=2,
                                                ping_timeout=5))
    mux: Any = protocol.mux
    assert (mux.ping_interval, mux.keepalive.timeout) == (2.0, 5.0)
    clock.advance(4.9)
    assert not mux.closed
    clock.advance(0.1)  # nothing heard from the gateway for 5 s: dead, on our side too
    assert mux.closed and protocol.transport.disconnecting


def test_an_older_gateway_leaves_the_clients_defaults() -> None:
    client = make_client(Clock())
    protocol = bound_protocol(client, BindReply(ok=True, tunnel_id="t"))
    mux: Any = protocol.mux
    assert (mux.ping_interval, mux.keepalive.timeout) == (10.0, 20.0)


def test_go_away_rebinds_after_a_jittered_delay() -> None:
    clock = Clock()
    client = make_client(clock, draw=0.25)
    protocol = bound_protocol(client, BindReply(ok=True, tunnel_id="t"))
    client._protocol = protocol
    dialled: list[float] = []
    client._connect = lambda: dialled.append(clock.seconds())  # type: ignore[method-assign]
    client.going_away(protocol)
    assert dialled == [] and client.state == "backing-off"
    clock.advance(GOAWAY_SPREAD * 0.25)
    assert dialled == [GOAWAY_SPREAD * 0.25]


def told_to_go_away_then_bound(client: ConnectClient, clock: Clock
                               ) -> tuple[TunnelClientProtocol, TunnelClientProtocol]:
    """The client's tunnel told to go away, then its next bind: (old, new); the old one
    still open."""
    old = bound_protocol(client, BindReply(ok=True, tunnel_id="t"))
    client._protocol = old
    client._connect = lambda: None  # type: ignore[method-assign]
    client.going_away(old)
    clock.advance(GOAWAY_SPREAD)
    assert old.mux is not None and not old.mux.closed and not old.transport.disconnecting
    new = bound_protocol(client, BindReply(ok=True, tunnel_id="t2"))  # the next bind
    client._protocol = new
    return old, new


def test_the_tunnel_told_to_go_away_stays_open_until_the_next_bind() -> None:
    """Make before break: a draining node in a cluster keeps serving the studio through
    its old tunnel (requests relayed by other nodes) until the studio has bound
    elsewhere; the client closed it at once when idle, and the studio was "not
    connected" for the 0-8 s until its next bind. It now closes it after that bind (once
    its streams end), and when the client stops."""
    clock = Clock()
    client = make_client(clock)
    old, new = told_to_go_away_then_bound(client, clock)
    old_mux: Any = old.mux
    clock.advance(RETIRED_LINGER - 0.1)  # its node has not heard of the move yet, maybe
    assert not old_mux.closed
    clock.advance(0.1)
    assert old_mux.closed and old.transport.disconnecting
    # A tunnel that is no longer the client's current one closes once idle, at once.
    client.going_away(old := bound_protocol(client, BindReply(ok=True, tunnel_id="t3")))
    assert old.mux is not None and old.mux.closed
    # Stopping closes a tunnel still kept.
    client.going_away(new)
    assert new.mux is not None and not new.mux.closed
    client.stopService()
    assert new.mux.closed


def test_stopping_closes_a_tunnel_whose_close_lingers_and_leaves_no_timer() -> None:
    """A tunnel told to go away waits RETIRED_LINGER after the next bind; a stop in that
    time closes it at once and cancels the wait (it was left to fire after the stop)."""
    clock = Clock()
    client = make_client(clock)
    old, _ = told_to_go_away_then_bound(client, clock)
    client.stopService()
    assert old.mux is not None and old.mux.closed
    assert [c for c in clock.getDelayedCalls() if c.func.__name__ == "close"] == []


def paced(clock: Clock) -> tuple[ConnectClient, TunnelClientProtocol, list[float]]:
    """A client bound to a gateway that paces its GoAways (rebind_within 0.25 s), its
    random draws 0.5, and the times it dials (nothing dialled for real)."""
    client = make_client(clock, draw=0.5)
    protocol = bound_protocol(client, BindReply(ok=True, tunnel_id="t", rebind_within=0.25))
    client._protocol = protocol
    dialled: list[float] = []
    client._connect = lambda: dialled.append(clock.seconds())  # type: ignore[method-assign]
    return client, protocol, dialled


def test_a_paced_goaway_rebinds_within_the_gateways_bound_then_as_after_a_lost_tunnel(
        ) -> None:
    """A gateway that paces its drain's GoAways says so at the bind (rebind_within): the
    client rebinds after a random part of that, not of its own 0-8 s spread; should that
    attempt fail (the node it dials cannot be reached), the next one draws a phase of its own
    over BACKOFF_MAX (full jitter), as the second retry after a lost tunnel does, so a
    restarted node's studios do not all come back at the same moment."""
    clock = Clock()
    client, protocol, dialled = paced(clock)
    client.going_away(protocol)
    clock.advance(0.125)
    assert dialled == [0.125]
    assert client.backoff.next_delay() == BACKOFF_MAX * 0.5  # full jitter next
    # The client says at every bind that it rebinds so.
    sent = protocol.transport.value().split(b"\n", 1)[0]
    assert parse_request(sent).paced_go_away


def test_a_goaway_from_a_node_alone_is_spread_by_the_client_itself() -> None:
    """A gateway that stops with no other node to take its studios says so in its GoAway
    (GO_AWAY_ALONE): the client spreads its rebind over GOAWAY_SPREAD, whatever
    rebind_within its bind said, so a restarted node's studios come back evenly."""
    from studios_gateway.wire.frames import GO_AWAY_ALONE, encode_go_away

    clock = Clock()
    client, protocol, dialled = paced(clock)
    assert protocol.mux is not None
    protocol.mux.dataReceived(encode_go_away(GO_AWAY_ALONE))  # through the multiplexer
    assert not protocol.mux.closed  # a normal GoAway: its streams may finish
    clock.advance(GOAWAY_SPREAD * 0.5 - 0.01)
    assert dialled == []
    clock.advance(0.01)
    assert dialled == [GOAWAY_SPREAD * 0.5]


def test_a_tunnel_another_bind_took_over_binds_again_only_once_the_session_is_free() -> None:
    """Two studios-connect on one session (a second container of the studio still
    running): each bind's GoAway made the other bind again at once, several times a
    second, each saying "gateway is draining". Told GO_AWAY_REPLACED, the client says
    what happened and from then on asks to bind only while the session is free (if_free,
    refused "held" meanwhile: said at info, not as a fault), over its retry period; the
    binds say how often it was taken over lately. A bind ends the waiting."""
    from studios_gateway.studio.client import REPLACED_MEMORY
    from studios_gateway.wire.frames import GO_AWAY_REPLACED, encode_go_away
    from tests.unit.test_node_settings import Logged

    clock = Clock()
    client = make_client(clock, draw=0.5)
    dialled: list[float] = []
    client._connect = lambda: dialled.append(clock.seconds())  # type: ignore[method-assign]
    first = bound_protocol(client, BindReply(ok=True, tunnel_id="t"))
    sent = parse_request(first.transport.value().split(b"\n", 1)[0])
    assert sent.replaced_go_away and sent.replaced == 0 and not sent.if_free
    client._protocol = first
    with Logged("warn") as warn, Logged("info") as info:
        assert first.mux is not None
        first.mux.dataReceived(encode_go_away(GO_AWAY_REPLACED))
    assert len(warn.lines) == 1 and "took this studio's tunnel over (another" in warn.lines[0]
    assert warn.lines[0].endswith("binds again once that one has stopped (asking every ~8s)")
    assert not any("draining" in line for line in info.lines)
    clock.advance(BACKOFF_MAX * 0.5 - 0.01)  # a draw over the retry period
    assert dialled == []
    clock.advance(0.01)
    assert dialled == [BACKOFF_MAX * 0.5]
    # The next attempt asks only for a free session, and is refused while it is held.
    asking = TunnelClientProtocol(client, Gateway("127.0.0.1", 7070))
    client._protocol = asking
    asking.makeConnection(StringTransport())
    sent = parse_request(asking.transport.value().split(b"\n", 1)[0])
    assert sent.if_free and sent.replaced == 1
    with Logged("warn") as warn, Logged("info") as info:
        asking.dataReceived(BindReply(ok=False, code="held", reason="session s1 is served "
                                      "by another studios-connect (10.0.0.8)",
                                      retry=True).encode())
        asking.connectionLost(Failure(ConnectionDone()))
    assert warn.lines == [] and any("held" in line for line in info.lines), info.lines
    assert client.state == "backing-off" and len(dialled) == 1
    clock.advance(BACKOFF_MAX)
    assert len(dialled) == 2  # asked again
    # It binds once the other has stopped: the waiting ends.
    second = bound_protocol(client, BindReply(ok=True, tunnel_id="t2"))
    assert parse_request(second.transport.value().split(b"\n", 1)[0]).if_free
    client._protocol = second
    client.bound(second)
    assert not client.waiting_for_free
    # An older connection of its own told so (the client bound anew before the gateway
    # had found the old one dead): closed, nothing said, nothing dialled.
    old = bound_protocol(client, BindReply(ok=True, tunnel_id="t0"))
    with Logged("warn") as warn:
        client.going_away(old, GO_AWAY_REPLACED)
    assert warn.lines == [] and old.mux is not None and old.mux.closed
    assert client._protocol is second and len(dialled) == 2 and not client.waiting_for_free
    clock.advance(REPLACED_MEMORY)
    assert client.replaced_lately() == 0  # forgotten after REPLACED_MEMORY


def test_the_gateways_retry_period_replaces_the_clients_own() -> None:
    """A gateway's CONNECT_TUNNEL_RETRY_PERIOD, said at the bind (retry_period), is the
    period of the client's retries and the spread of its rebind after a GoAway that no
    node takes over: a small install's studios come back within it. A gateway that says
    none (an older one) leaves the client's own GOAWAY_SPREAD and BACKOFF_MAX."""
    from studios_gateway.wire.frames import GO_AWAY_ALONE, encode_go_away

    clock = Clock()
    client = make_client(clock, draw=0.5)
    protocol = bound_protocol(client, BindReply(ok=True, tunnel_id="t", rebind_within=0.25,
                                                retry_period=2))
    client._protocol = protocol
    dialled: list[float] = []
    client._connect = lambda: dialled.append(clock.seconds())  # type: ignore[method-assign]
    assert protocol.mux is not None
    protocol.mux.dataReceived(encode_go_away(GO_AWAY_ALONE))
    clock.advance(1.0)
    assert dialled == [1.0]  # half of 2 s, not of GOAWAY_SPREAD
    assert client.backoff.next_delay() == 2 * (1 - 0.1 * 0.5)  # then on that period
    # An older gateway's bind leaves the client's own period.
    bound_protocol(client, BindReply(ok=True, tunnel_id="t2"))
    assert client.backoff.cap == GOAWAY_SPREAD == BACKOFF_MAX
