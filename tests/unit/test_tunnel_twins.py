"""Two studios-connect on one session (the same connect string twice): each bind ends the
other's tunnel, and they take turns for as long as both run. The gateway says so, once a
minute, with both addresses; a studio that reconnects now and then is no such case."""

from __future__ import annotations

import re

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from studios_gateway.registry.base import SessionRecord, hash_token
from studios_gateway.registry.memory import MemoryStore
from studios_gateway.tunnel.server import TunnelServerFactory, TunnelSettings, TunnelTable
from studios_gateway.tunnel.twins import TIMES, WINDOW
from studios_gateway.wire.bind import BindRequest
from tests.unit.test_node_settings import Logged

TOKEN = "t" * 20


def table() -> tuple[Clock, TunnelTable]:
    clock = Clock()
    store = MemoryStore(clock)
    store.create(SessionRecord(id="s1", workspace_id=None, tool="generic", owner="alice",
                               allowed_users=(), ssh_enabled=False,
                               token_hash=hash_token(TOKEN), created_at=0.0))
    t = TunnelTable(store, node_id="n1", node_address="a:1", clock=clock,
                    settings=TunnelSettings(holder_ttl=30, ping_interval=1000,
                                            ping_timeout=2000))
    t.start()
    return clock, t


def bind_from(t: TunnelTable, host: str) -> StringTransport:
    protocol = TunnelServerFactory(t).buildProtocol(None)
    transport = StringTransport(peerAddress=IPv4Address("TCP", host, 40000))
    protocol.makeConnection(transport)
    protocol.dataReceived(BindRequest("s1", TOKEN, "0.12.0", "generic", 8080).encode())
    assert t.get("s1") is not None and t.get("s1").protocol is protocol
    return transport


def test_two_studios_taking_turns_are_named_once_a_minute() -> None:
    clock, t = table()
    with Logged("warn") as warn:
        bind_from(t, "10.0.0.7")
        for turn in range(4 * TIMES):  # each told GoAway binds again within moments
            bind_from(t, "10.0.0.8" if turn % 2 == 0 else "10.0.0.7")
            clock.advance(0.2)
    assert len(warn.lines) == 1, warn.lines
    assert warn.lines[0].startswith(f"session s1: its tunnel was replaced {TIMES} times in ")
    assert re.search(r"\(from 10\.0\.0\.[78] and 10\.0\.0\.[78]\)", warn.lines[0])
    assert "two studios-connect run with this session's connect string" in warn.lines[0]
    with Logged("warn") as warn:  # still at it a minute on: one more line, with a count
        for turn in range(int(WINDOW / 0.2)):
            bind_from(t, "10.0.0.8" if turn % 2 == 0 else "10.0.0.7")
            clock.advance(0.2)
    assert len(warn.lines) == 1, warn.lines
    assert re.search(r"\(and \d+ more like it in the last 60s\)$", warn.lines[0]), warn.lines


def test_a_studio_that_reconnects_now_and_then_is_not_two() -> None:
    clock, t = table()
    with Logged("warn") as warn:
        for _ in range(3 * TIMES):  # its old connection not yet found dead each time
            bind_from(t, "10.0.0.7")
            clock.advance(10)  # as often as a studio finds its tunnel dead and binds again
    assert warn.lines == []


def test_a_clock_set_back_does_not_make_rare_rebinds_two_studios() -> None:
    """The reactor's clock is the wall clock: set back an hour, the rebinds before the
    step stayed 'within the last minute' for that hour, and a studio rebinding every few
    minutes was called two, 'replaced 10 times in -3500s'."""
    clock, t = table()
    clock.advance(10_000)
    with Logged("warn") as warn:
        for _ in range(TIMES):  # a first bind, then rebinds a second apart
            bind_from(t, "10.0.0.7")
            clock.advance(1)
        clock.rightNow -= 3600
        for _ in range(TIMES):
            bind_from(t, "10.0.0.7")
            clock.advance(300)  # a rebind every five minutes: one studio
    assert warn.lines == [], warn.lines


def go_away_codes(transport: StringTransport) -> list[int]:
    """The GoAway codes written on a tunnel's connection (after the bind's reply line)."""
    from studios_gateway.wire.frames import GO_AWAY, FrameDecoder

    frames = FrameDecoder(1 << 20).feed(transport.value().split(b"\n", 1)[1])
    return [f.length for f in frames if f.type == GO_AWAY]


def bind_knowing(t: TunnelTable, host: str, replaced: int = 0) -> StringTransport:
    protocol = TunnelServerFactory(t).buildProtocol(None)
    transport = StringTransport(peerAddress=IPv4Address("TCP", host, 40000))
    protocol.makeConnection(transport)
    protocol.dataReceived(BindRequest("s1", TOKEN, "0.12.0", "generic", 8080,
                                      replaced_go_away=True, replaced=replaced).encode())
    return transport


def test_a_client_that_knows_is_told_its_tunnel_was_taken_over_and_twins_are_said_at_once(
        ) -> None:
    """A newer bind's GoAway to a client that said it knows GO_AWAY_REPLACED carries that
    code (it binds again 30-60 s later, not at once: too seldom for TIMES in WINDOW), and
    such a client binding again says how often it was replaced lately: the gateway names
    two studios at that bind. An older client still gets the normal code."""
    from studios_gateway.wire.frames import GO_AWAY_NORMAL, GO_AWAY_REPLACED

    clock, t = table()
    with Logged("warn") as warn:
        first = bind_knowing(t, "10.0.0.7")
        bind_knowing(t, "10.0.0.8")  # a second container of the studio
        assert go_away_codes(first) == [GO_AWAY_REPLACED]
        assert warn.lines == []  # (one replacement: a studio that reconnected, maybe)
        clock.advance(30)
        bind_knowing(t, "10.0.0.7", replaced=1)  # the first, back after its wait
    assert len(warn.lines) == 1, warn.lines
    assert warn.lines[0].startswith(
        "session s1: its tunnel was taken back by a studios-connect whose tunnel another "
        "bind had taken 1 time lately, each bind ending the other's (from 10.0.0.8 and "
        "10.0.0.7): two studios-connect run"), warn.lines[0]
    older = bind_from(t, "10.0.0.9")  # an older studios-connect: says nothing of it
    bind_knowing(t, "10.0.0.7")
    assert go_away_codes(older) == [GO_AWAY_NORMAL]


def test_a_studio_taken_over_binds_only_once_the_session_is_free() -> None:
    """A studios-connect taken over asks to bind only while the session is free
    (if_free): refused "held" while the newer one holds it here or through another node
    (the registry's claim), the two named once; the newer one keeps its tunnel. Once
    that one has stopped, the bind goes through."""
    from studios_gateway.registry.base import TunnelHolder

    clock, t = table()
    newer = bind_knowing(t, "10.0.0.8")
    held = t.get("s1")
    with Logged("warn") as warn:
        for _ in range(3):
            refused = bind_if_free(t, "10.0.0.7")
            assert b'"code": "held"' in refused.value().split(b"\n", 1)[0], refused.value()
    assert t.get("s1") is held and go_away_codes(newer) == []
    assert len(warn.lines) == 1 and warn.lines[0].startswith(
        "session s1: a studios-connect from 10.0.0.7 waits for the one bound from 10.0.0.8 "
        "to stop"), warn.lines
    held.protocol.connectionLost(None)  # the newer one stops
    assert t.get("s1") is None
    bind_if_free(t, "10.0.0.7")
    assert t.get("s1") is not None and t.get("s1").holder.session_id == "s1"
    # Claimed through another node: refused as well.
    t.get("s1").protocol.connectionLost(None)
    other = TunnelHolder("s1", "node-b", "10.0.0.2:7777", "t9", "0.12.0", 8080, 1.0)
    t.store.claim_tunnel(other, 30)
    refused = bind_if_free(t, "10.0.0.7")
    assert b"(bound through node node-b)" in refused.value()


def bind_if_free(t: TunnelTable, host: str) -> StringTransport:
    protocol = TunnelServerFactory(t).buildProtocol(None)
    transport = StringTransport(peerAddress=IPv4Address("TCP", host, 40000))
    protocol.makeConnection(transport)
    protocol.dataReceived(BindRequest("s1", TOKEN, "0.12.0", "generic", 8080,
                                      replaced_go_away=True, replaced=1,
                                      if_free=True).encode())
    return transport


def bind_as(t: TunnelTable, host: str, instance: str, replaced: int = 0,
            if_free: bool = False) -> StringTransport:
    """A bind from a studios-connect that names its process (wire.bind, instance)."""
    protocol = TunnelServerFactory(t).buildProtocol(None)
    transport = StringTransport(peerAddress=IPv4Address("TCP", host, 40000))
    protocol.makeConnection(transport)
    protocol.dataReceived(BindRequest("s1", TOKEN, "0.12.0", "generic", 8080,
                                      replaced_go_away=True, replaced=replaced,
                                      if_free=if_free, instance=instance).encode())
    return transport


def test_a_studio_back_before_its_old_tunnel_was_found_dead_is_not_two() -> None:
    """The same studios-connect process binding again while its old tunnel is still held
    (a blip its old connection has not been found dead from) replaces it without a word of
    twins, however often and whatever it was told before, and its old tunnel gets the
    normal GoAway (not 'taken over'); a waiting one's own old tunnel does not hold it. Two
    processes still are two."""
    from studios_gateway.wire.frames import GO_AWAY_NORMAL, GO_AWAY_REPLACED

    clock, t = table()
    with Logged("warn") as warn:
        olds = [bind_as(t, "10.0.0.7", "a" * 16, replaced=1)]
        for _ in range(TIMES + 2):  # (more than twins' TIMES within WINDOW)
            clock.advance(1)
            olds.append(bind_as(t, "10.0.0.7", "a" * 16, replaced=1))
        assert warn.lines == []
        assert all(go_away_codes(old) == [GO_AWAY_NORMAL] for old in olds[:-1])
        again = bind_as(t, "10.0.0.7", "a" * 16, replaced=1, if_free=True)
        assert t.get("s1").protocol.transport is again  # (not refused "held")
        other = bind_as(t, "10.0.0.8", "b" * 16)
        assert go_away_codes(again) == [GO_AWAY_REPLACED]
        bind_as(t, "10.0.0.7", "a" * 16, replaced=1)  # the first, back: two studios
    assert len(warn.lines) == 1 and "two studios-connect run" in warn.lines[0], warn.lines
    assert go_away_codes(other) == [GO_AWAY_REPLACED]
