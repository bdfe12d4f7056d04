"""A studio that binds on another node: this node stops routing to its tunnel at the
registry's change event, not at the next claim refresh (issue 16)."""

from __future__ import annotations

from dataclasses import replace

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from studios_gateway.registry.memory import MemoryStore
from studios_gateway.tunnel.server import TunnelServerFactory, TunnelTable
from studios_gateway.wire import frames
from studios_gateway.wire.bind import BindRequest
from studios_gateway.wire.frames import GO_AWAY, FrameDecoder
from tests.support.tables import TOKEN, memory_table


def setup() -> tuple[Clock, MemoryStore, TunnelTable, StringTransport, object]:
    clock = Clock()
    store, table = memory_table(clock)
    table.start()
    protocol = TunnelServerFactory(table).buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    protocol.dataReceived(BindRequest("s1", TOKEN, "0.12.0", "generic", 8080).encode())
    assert table.get("s1") is not None
    return clock, store, table, transport, protocol


def frames_after_bind(transport: StringTransport) -> list[frames.Frame]:
    return FrameDecoder(2**32 - 1).feed(transport.value().split(b"\n", 1)[1])


def test_a_claim_by_another_node_takes_the_tunnel_out_of_the_table_at_once() -> None:
    clock, store, table, transport, protocol = setup()
    ours = table.get("s1")
    assert ours is not None
    idle = ours.open_stream(b"T")  # say, an idle upstream connection the proxy keeps
    assert not idle.retiring
    clock.advance(0)  # its SYN went out at the end of the turn (nothing else was sent)
    transport.clear()
    elsewhere = replace(ours.holder, node_id="n2", node_address="b:1", tunnel_id="other")
    store.claim_tunnel(elsewhere, 30)  # the store tells every node at once
    assert table.get("s1") is None  # requests now go to the new holder
    assert [f.type for f in FrameDecoder(2**32 - 1).feed(transport.value())] == [GO_AWAY]
    assert idle.retiring  # so the proxy lets it go instead of reusing it
    idle.abortConnection()
    assert not table.wait_empty().called  # its streams in flight may finish...
    clock.advance(table.settings.holder_ttl / 3)  # ...for a claim-refresh period at most
    assert transport.disconnecting
    protocol.connectionLost(None)
    assert table.wait_empty().called
    holder = store.get_tunnel("s1").result
    assert holder.tunnel_id == "other"  # the old tunnel's end did not release the new claim
    table.stop()


def test_our_own_claims_and_unrelated_changes_leave_the_tunnel_alone() -> None:
    clock, store, table, transport, protocol = setup()
    ours = table.get("s1")
    assert ours is not None
    store.refresh_tunnel(ours.holder, 30)
    table._changed("s1")
    table._changed(None)
    table._changed("s2")
    assert table.get("s1") is ours and frames_after_bind(transport) == []
    table.stop()


def test_lost_events_look_every_tunnel_up_a_few_at_a_time() -> None:
    """Events lost (None): every tunnel is looked up, CHECKS_IN_FLIGHT at once, so the
    registry's link is not flooded; repeated changes of one session coalesce."""
    from twisted.internet.defer import Deferred

    from studios_gateway.tunnel.server import CHECKS_IN_FLIGHT

    clock, store, table, transport, protocol = setup()
    ours = table.get("s1")
    assert ours is not None
    for n in range(40):  # 40 more tunnels held (the table's own bookkeeping only)
        table._tunnels[f"x{n}"] = ours
    asked: list[Deferred[object]] = []
    store.get_tunnel = lambda sid: asked.append(Deferred()) or asked[-1]  # type: ignore
    table._changed(None)
    table._changed("x39")  # already queued: not asked twice
    assert len(asked) == CHECKS_IN_FLIGHT
    while any(not d.called for d in asked):
        next(d for d in asked if not d.called).callback(None)
        assert sum(not d.called for d in asked) <= CHECKS_IN_FLIGHT
    assert len(asked) == 41 and table._checking == 0
    for n in range(40):
        del table._tunnels[f"x{n}"]
    table.stop()


def test_the_proxy_pool_lets_go_of_idle_connections_on_a_retired_tunnel() -> None:
    from studios_gateway.http.upstream import IdlePool

    class Conn:
        def __init__(self, fit: bool) -> None:
            self.fit, self.closed = fit, False
            self.pool_epoch = 0

        def fit_for_reuse(self) -> bool:
            return self.fit

        def close(self) -> None:
            self.closed = True

    pool = IdlePool(Clock(), max_idle=4, idle_timeout=5)
    good, stale = Conn(True), Conn(False)
    pool.put("s1", good)
    pool.put("s1", stale)  # most recently used, but its tunnel retired since
    assert pool.take("s1") is good and stale.closed and not good.closed
    assert pool.take("s1") is None
    # The registry says the session changed: its idle connections go, others stay.
    kept, other = Conn(True), Conn(True)
    pool.put("s1", kept)
    pool.put("s2", other)
    pool.drop("s1")
    assert kept.closed and pool.take("s1") is None and pool.count("s2") == 1
    pool.drop(None)
    assert other.closed and pool.take("s2") is None


def test_a_studio_and_its_twin_through_another_node_taking_turns_are_said() -> None:
    """Two studios on s1, one here and one through node n2: each of n2's claims retires
    ours, and ours binds again; the tenth turn within a minute is said (tunnel/twins.py)."""
    from twisted.logger import LogEvent, formatEvent, globalLogPublisher

    from studios_gateway.tunnel.twins import TIMES

    said: list[str] = []

    def observe(event: LogEvent) -> None:
        if "replaced" in (event.get("log_format") or "") or "twins" in event:
            said.append(formatEvent(event))

    clock, store, table, transport, protocol = setup()
    globalLogPublisher.addObserver(observe)
    try:
        for turn in range(TIMES):
            ours = table.get("s1")
            assert ours is not None
            twin = replace(ours.holder, node_id="n2", node_address="b:1", tunnel_id=f"t{turn}")
            store.claim_tunnel(twin, 30)  # n2's bind: ours is retired
            assert table.get("s1") is None
            clock.advance(1)
            again = TunnelServerFactory(table).buildProtocol(None)  # ours binds again
            again.makeConnection(StringTransport())
            again.dataReceived(BindRequest("s1", TOKEN, "0.12.0", "generic", 8080).encode())
    finally:
        globalLogPublisher.removeObserver(observe)
    assert len(said) == 1, said
    assert f"replaced {TIMES} times" in said[0]
    assert "a studio bound through node n2" in said[0] and "two studios-connect" in said[0]
    table.stop()


def test_a_studio_moving_between_nodes_before_its_old_tunnel_was_found_dead_is_not_two(
        ) -> None:
    """The same studios-connect process (its instance in both claims) bound through n2 while
    its tunnel here was still held, again and again: it moved; no twins are said and its
    old tunnel here gets the normal GoAway. A waiting (if_free) bind of that process is not
    held by its own claim through n2."""
    from twisted.logger import LogEvent, formatEvent, globalLogPublisher

    from studios_gateway.tunnel.twins import TIMES
    from studios_gateway.wire.frames import GO_AWAY_NORMAL

    me = "0123456789abcdef"
    said: list[str] = []

    def observe(event: LogEvent) -> None:
        if "replaced" in (event.get("log_format") or "") or "twins" in event:
            said.append(formatEvent(event))

    clock = Clock()
    store, table = memory_table(clock)
    table.start()
    globalLogPublisher.addObserver(observe)
    try:
        for turn in range(TIMES + 1):
            here = StringTransport()
            proto = TunnelServerFactory(table).buildProtocol(None)
            proto.makeConnection(here)
            proto.dataReceived(BindRequest("s1", TOKEN, "0.12.0", "generic", 8080,
                                           replaced_go_away=True, instance=me).encode())
            ours = table.get("s1")
            assert ours is not None and ours.holder.instance == me
            there = replace(ours.holder, node_id="n2", node_address="b:1", tunnel_id=f"t{turn}")
            store.claim_tunnel(there, 30)  # the same process, bound through n2
            assert table.get("s1") is None
            assert [f.length for f in frames_after_bind(here) if f.type == GO_AWAY] == \
                [GO_AWAY_NORMAL]
            clock.advance(1)
        waiting = StringTransport()
        proto = TunnelServerFactory(table).buildProtocol(None)
        proto.makeConnection(waiting)
        proto.dataReceived(BindRequest("s1", TOKEN, "0.12.0", "generic", 8080,
                                       replaced_go_away=True, replaced=1, if_free=True,
                                       instance=me).encode())
        assert b'"ok": true' in waiting.value().split(b"\n", 1)[0], waiting.value()
    finally:
        globalLogPublisher.removeObserver(observe)
    assert said == [], said
    table.stop()
