"""The tunnel table's claims across a store outage longer than their TTL (fake clock)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from studios_gateway.registry.base import Refresh, SessionRecord, hash_token
from studios_gateway.registry.memory import MemoryStore
from studios_gateway.tunnel.server import (
    Tunnel,
    TunnelServerFactory,
    TunnelSettings,
    TunnelTable,
)
from studios_gateway.wire.bind import BindRequest
from tests.support.stores import FlakyStore

TOKEN = "t" * 20
TTL = 30.0


def bound(**settings: float) -> tuple[Clock, FlakyStore, TunnelTable, StringTransport, Any]:
    """A table with session s1's tunnel bound; `settings` change its TunnelSettings."""
    clock = Clock()
    store = FlakyStore(MemoryStore(clock))
    store.create(SessionRecord(id="s1", workspace_id=None, tool="generic", owner="alice",
                               allowed_users=(), ssh_enabled=False,
                               token_hash=hash_token(TOKEN), created_at=0.0))
    table = TunnelTable(store, node_id="n1", node_address="a:1", clock=clock,
                        settings=TunnelSettings(**{"holder_ttl": TTL, "ping_interval": 1000,
                                                   "ping_timeout": 2000,  # no pongs here
                                                   **settings}))
    table.start()
    protocol = TunnelServerFactory(table).buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    protocol.dataReceived(BindRequest("s1", TOKEN, "0.12.0", "generic", 8080).encode())
    tunnel = table.get("s1")
    assert tunnel is not None
    return clock, store, table, transport, tunnel


def outage(clock: Clock, store: FlakyStore, seconds: float) -> None:
    store.up = False
    for _ in range(int(seconds)):
        clock.advance(1)
    store.up = True


def test_a_claim_expired_in_an_outage_is_claimed_again_and_the_tunnel_stays() -> None:
    clock, store, table, transport, tunnel = bound()
    outage(clock, store, TTL + 5)
    assert store.inner.get_tunnel("s1").result is None  # expired while the store was away
    clock.advance(TTL / 3)  # the next refresh round
    assert table.get("s1") is tunnel and not transport.disconnecting
    assert store.inner.get_tunnel("s1").result == tunnel.holder


def test_a_claim_found_expired_when_redis_is_back_is_claimed_again_at_once() -> None:
    """The holder looked its tunnels up when its subscriber came back (events were lost),
    found the expired claim gone and left it to the next refresh round, up to a third of
    the TTL later (10 s by default): all that time the other nodes, whose caches Redis's
    return had emptied too, found no holder and answered "not connected" (measured with
    two twistd nodes: 502s through the other node for 0.4 s with a 9 s TTL). Now it is
    claimed again at once, and every node hears of it."""
    clock, store, table, transport, tunnel = bound()
    outage(clock, store, TTL + 5)
    assert store.inner.get_tunnel("s1").result is None
    heard: list[str | None] = []
    store.inner.subscribe(heard.append)
    store.announce("subscribe", None)  # the subscriber is back: anything may have changed
    clock.advance(0)
    assert store.inner.get_tunnel("s1").result == tunnel.holder
    assert heard == ["s1"] and table.get("s1") is tunnel and not transport.disconnecting
    calls = store.calls["refresh_tunnels"]
    store.announce("subscribe", None)  # found in place: nothing more to do
    clock.advance(0)
    assert store.calls["refresh_tunnels"] == calls


def second(table: TunnelTable, store: FlakyStore, sid: str, paced: bool = False
           ) -> tuple[StringTransport, Any]:
    """Another session bound on `table`, with its own connection (`paced`: by a client
    that rebinds soon after a GoAway)."""
    store.create(SessionRecord(id=sid, workspace_id=None, tool="generic", owner="alice",
                               allowed_users=(), ssh_enabled=False,
                               token_hash=hash_token(TOKEN), created_at=0.0))
    protocol = TunnelServerFactory(table).buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    protocol.dataReceived(BindRequest(sid, TOKEN, "0.12.0", "generic", 8080,
                                      paced_go_away=paced).encode())
    assert table.get(sid) is not None
    return transport, table.get(sid)


def test_a_session_ended_through_another_node_closes_its_tunnel_at_once() -> None:
    """Its delete (on another node) removed the claim too; the holder found none and left
    the tunnel to the next refresh round, which logged it as "moved (its claim could not
    be refreshed)" up to a third of the TTL later. Now it closes at once, as ended."""
    from tests.unit.test_node_settings import Logged

    clock, store, table, transport, tunnel = bound()
    t2, _ = second(table, store, "s2")
    # Its connections are told it ended before its tunnel closes (an ssh user read "the
    # connection to the studio broke: tunnel lost: tunnel closed locally").
    told: list[tuple[str, bool]] = []
    table.on_gone = lambda sid: told.append((sid, transport.disconnecting))
    with Logged("info") as info, Logged("warn") as warn:
        store.inner.delete("s1")  # (the event every node hears)
        clock.advance(0)
        assert transport.disconnecting and told == [("s1", False)]
        assert not t2.disconnecting and table.get("s2") is not None
        clock.advance(TTL)
    assert any("session s1 ended" in line for line in info.lines), info.lines
    assert not any("moved" in line for line in info.lines) and warn.lines == [], warn.lines


@pytest.mark.parametrize("event_first", [True, False])
def test_a_session_ended_through_this_node_is_ended_once(event_first: bool) -> None:
    """The admin API's delete on the holder: its own end (service's on_end) and the
    look-up of the registry's event each told the connections and closed the tunnel, so
    every session ended on a single node logged "session ... ended: closing its tunnel"
    twice (and its connections were told twice), whichever came first."""
    from tests.unit.test_node_settings import Logged

    clock, store, table, transport, tunnel = bound()
    told: list[str] = []
    table.on_gone = told.append
    with Logged("info") as info:
        if not event_first:
            table.session_ended("s1")  # (the API's end, before its event is looked up)
        store.inner.delete("s1")
        clock.advance(0)
        if event_first:
            table.session_ended("s1")
        clock.advance(TTL)
    assert told == ["s1"] and transport.disconnecting
    assert [line for line in info.lines if "session s1 ended" in line] == \
        ["session s1 ended: closing its tunnel"], info.lines


def test_a_session_ended_here_without_its_tunnel_still_tells_its_connections() -> None:
    clock, store, table, transport, tunnel = bound()
    told: list[str] = []
    table.on_gone = told.append
    table.session_ended("s9")  # held by another node, or by none
    assert told == ["s9"] and not transport.disconnecting


def test_sessions_redis_lost_close_their_tunnels_with_one_warning() -> None:
    """Redis back without its data: every tunnel was retired as "moved (its claim could
    not be refreshed)", which told the operator nothing of what happened."""
    from tests.unit.test_node_settings import Logged

    clock, store, table, transport, tunnel = bound()
    t2, _ = second(table, store, "s2")
    with Logged("info") as info, Logged("warn") as warn:
        store.inner._records.clear()  # (as a restart without its data, no event)
        store.inner._tunnels.clear()
        store.announce("subscribe", None)  # the subscriber is back: events were lost
        clock.advance(0)
        assert transport.disconnecting and t2.disconnecting
        clock.advance(1)
    assert len(warn.lines) == 1, warn.lines
    assert "2 session(s)" in warn.lines[0] and "no longer in the registry" in warn.lines[0]
    assert "Redis must persist" in warn.lines[0]
    assert "FLUSHALL" in warn.lines[0]  # emptied while connected: the same line
    assert not any("moved" in line for line in info.lines)


def test_a_refresh_round_tells_a_lost_session_from_a_moved_one_without_a_lookup() -> None:
    """A claim the refresh round could not renew was looked up again (one GET each) to
    tell "session gone" from "held elsewhere": after a Redis restart that lost its data,
    N GETs for N tunnels, when the refresh script had just checked that already. Now its
    answer says which; both outcomes are as before: the lost session's tunnel closes as
    ended (its connections told, one warning), the moved one is retired."""
    from tests.unit.test_node_settings import Logged

    clock, store, table, transport, tunnel = bound()
    _, moved = second(table, store, "s2")
    told: list[str] = []
    table.on_gone = told.append
    store.deaf = True  # no event tells the table of either change
    del store.inner._records["s1"]  # (as a restart without its data)
    del store.inner._tunnels["s1"]
    store.inner.claim_tunnel(replace(moved.holder, node_id="n2", tunnel_id="theirs"), TTL)
    gets = store.calls["get"]
    with Logged("info") as info, Logged("warn") as warn:
        clock.advance(TTL / 3)  # the refresh round
        assert store.calls["get"] == gets and store.calls["get_tunnel"] == 0
        assert transport.disconnecting and told == ["s1"]
        assert table.get("s2") is None  # retired (no streams open: closed)
        clock.advance(1)
    assert "session s2 moved (its claim could not be refreshed)" in " ".join(info.lines)
    assert len(warn.lines) == 1 and "1 session(s)" in warn.lines[0], warn.lines
    assert "(s1)" in warn.lines[0] and "Redis must persist" in warn.lines[0]


def test_stopping_the_table_cancels_its_pending_warning_and_claims() -> None:
    """The warning about sessions gone unheard (due in 1 s) and the claims made again at
    once were timers nobody cancelled when the table stopped."""
    clock, store, table, transport, tunnel = bound()
    store.inner._records.clear()
    store.inner._tunnels.clear()
    store.announce("subscribe", None)
    clock.advance(0)
    assert any(c.getTime() == clock.seconds() + 1.0 for c in clock.getDelayedCalls())
    table.stop()
    assert [c for c in clock.getDelayedCalls() if c.getTime() <= clock.seconds() + 1.0] == []


def test_a_claim_another_node_took_closes_the_tunnel() -> None:
    clock, store, table, transport, tunnel = bound()
    outage(clock, store, TTL + 5)
    store.inner.claim_tunnel(replace(tunnel.holder, node_id="n2", tunnel_id="other"), TTL)
    clock.advance(TTL / 3)
    assert transport.disconnecting


def test_a_replaced_connect_token_closes_the_tunnel_bound_with_the_old_one() -> None:
    # POST /api/sessions/{id}/token after a leak: the tunnel bound with the leaked token
    # went on serving the studio's users until it dropped by itself.
    clock, store, table, transport, tunnel = bound()
    record = store.inner.get("s1").result
    store.inner.update(replace(record, allowed_users=("bob",)))  # another change: kept
    assert table.get("s1") is tunnel and not transport.disconnecting
    store.inner.update(replace(record, token_hash=hash_token("n" * 20)))
    assert transport.disconnecting
    # The old token binds no more.
    again = TunnelServerFactory(table).buildProtocol(None)
    t2 = StringTransport()
    again.makeConnection(t2)
    again.dataReceived(BindRequest("s1", TOKEN, "0.12.0", "generic", 8080).encode())
    assert b"bad_token" in t2.value()


def test_a_tunnel_lost_while_its_refresh_is_out_leaves_no_claim_behind() -> None:
    clock, store, table, transport, tunnel = bound()
    outage(clock, store, TTL + 5)
    # The refresh is on its way (the store is slow) when the tunnel goes away.
    from twisted.internet import defer

    answers: list[defer.Deferred[list[Refresh]]] = []
    real = store.inner.refresh_tunnels
    store.inner.refresh_tunnels = lambda hs, ttl: answers.append(defer.Deferred()) or answers[-1]
    clock.advance(TTL / 3)
    assert len(answers) == 1
    table.lost(tunnel)
    answers[0].callback(real([tunnel.holder], TTL).result)  # the late refresh claimed again
    assert store.inner.get_tunnel("s1").result is None


def test_a_refresh_round_renews_claims_in_batches_a_few_at_a_time_and_every_claim(
        monkeypatch) -> None:
    """Not one registry command per claim (a round of 10,000 claims on Redis cost ~1.5 s
    of CPU on a slow machine), not one command after another, nor all at once:
    REFRESH_BATCH claims per command, REFRESHES_IN_FLIGHT commands at once."""
    from twisted.internet import defer

    from studios_gateway.tunnel import server

    monkeypatch.setattr(server, "REFRESH_BATCH", 5)
    clock, store, table, transport, tunnel = bound()
    for n in range(40):  # 40 more tunnels held (the table's bookkeeping only)
        table._tunnels[f"x{n}"] = tunnel
    batches: list[tuple[list, defer.Deferred[list[Refresh]]]] = []
    store.inner.refresh_tunnels = \
        lambda hs, ttl: batches.append((list(hs), defer.Deferred())) or batches[-1][1]
    clock.advance(TTL / 3)
    assert len(batches) == server.REFRESHES_IN_FLIGHT
    while any(not d.called for _, d in batches):
        holders, d = next((h, d) for h, d in batches if not d.called)
        d.callback([Refresh.OURS] * len(holders))
        assert sum(not d.called for _, d in batches) <= server.REFRESHES_IN_FLIGHT
    assert [len(h) for h, _ in batches] == [5] * 8 + [1]
    assert table.get("s1") is tunnel and not transport.disconnecting
    for n in range(40):
        del table._tunnels[f"x{n}"]


def test_a_claim_a_batch_finds_taken_closes_only_its_tunnel() -> None:
    clock, store, table, transport, tunnel = bound()
    other = Tunnel(tunnel.tool, replace(tunnel.holder, session_id="s2"), tunnel.mux,
                   tunnel.protocol)  # s2: its session claimed by another node
    store.inner.create(replace(store.inner.get("s1").result, id="s2"))
    store.inner.claim_tunnel(replace(other.holder, node_id="n2", tunnel_id="theirs"), TTL)
    table._tunnels["s2"] = other
    closed: list[str] = []
    table._held_elsewhere = lambda t, why: closed.append(t.session_id)
    clock.advance(TTL / 3)
    assert closed == ["s2"] and not transport.disconnecting
    del table._tunnels["s2"]


def test_a_bound_tunnel_keeps_the_tool_not_the_sessions_record() -> None:
    """A store on Redis hands each bind a record of its own (~0.6 KiB, decoded from
    JSON): a tunnel, which lives as long as the studio is connected, keeps only the
    tool of it (for its log lines), as slots."""
    import gc

    clock, store, table, transport, tunnel = bound()
    assert tunnel.tool == "generic"
    assert not hasattr(tunnel, "__dict__")
    assert not any(isinstance(ref, SessionRecord) for ref in gc.get_referents(tunnel))


def test_tunnels_share_one_copy_of_the_versions_their_binds_name() -> None:
    clock, store, table, transport, first = bound()
    store.create(SessionRecord(id="s2", workspace_id=None, tool="generic", owner="bob",
                               allowed_users=(), ssh_enabled=False,
                               token_hash=hash_token(TOKEN), created_at=0.0))
    protocol = TunnelServerFactory(table).buildProtocol(None)
    protocol.makeConnection(StringTransport())
    protocol.dataReceived(BindRequest("s2", TOKEN, "0.12.0", "generic", 8080).encode())
    second = table.get("s2")
    assert second is not None and second.holder.client_version == "0.12.0"
    assert second.holder.client_version is first.holder.client_version


def _moved_with_a_stream_open(drain: bool) -> tuple[Clock, StringTransport, Any]:
    """The studio rebinds elsewhere (another node's claim) while a stream (an SSH session,
    a download) is open on this node's tunnel; `drain`: this node is shutting down."""
    from studios_gateway.wire.kinds import STREAM_TOOL

    clock, store, table, transport, tunnel = bound()
    stream = tunnel.open_stream(STREAM_TOOL)
    stream.write(b"GET / HTTP/1.1\r\n\r\n")
    if drain:
        table.drain()
    # (the store's change event: this node sees the other claim at once)
    store.inner.claim_tunnel(replace(tunnel.holder, node_id="n2", tunnel_id="other"), TTL)
    assert table.get("s1") is None and not transport.disconnecting
    return clock, transport, stream


def test_a_moved_tunnel_is_closed_after_a_refresh_period_even_with_a_stream_open() -> None:
    clock, transport, _ = _moved_with_a_stream_open(drain=False)
    clock.advance(TTL / 3)
    assert transport.disconnecting


def test_while_draining_a_moved_tunnel_lives_until_its_streams_end() -> None:
    """Draining, the studio moved because this node said GoAway: its SSH sessions and
    downloads in flight (from other nodes too, over the peer link) keep their tunnel
    until they end, within the drain's grace, not a refresh period."""
    clock, transport, stream = _moved_with_a_stream_open(drain=True)
    clock.advance(TTL)
    assert not transport.disconnecting
    stream.abortConnection()  # the last stream ends: the tunnel closes
    assert transport.disconnecting


def test_binds_refused_for_want_of_redis_are_logged_once_a_minute() -> None:
    """Every studio without a tunnel retries every ~8 s while Redis is away, and each
    refusal was its own log line (10,000 studios: 1,250 lines a second); other refusals
    are still one line each."""
    from tests.unit.test_node_settings import Logged

    clock, store, table, transport, tunnel = bound()
    store.up = False

    def bind(sid: str = "s1", token: str = TOKEN) -> bytes:
        protocol = TunnelServerFactory(table).buildProtocol(None)
        t = StringTransport()
        protocol.makeConnection(t)
        protocol.dataReceived(BindRequest(sid, token, "0.12.0", "generic", 8080).encode())
        return t.value()

    with Logged("info") as info:
        for _ in range(30):
            assert b"store_unavailable" in bind()
            clock.advance(1)
        clock.advance(30)
        assert b"store_unavailable" in bind()
    refused = [line for line in info.lines if "bind refused" in line]
    assert len(refused) == 2, refused
    assert "store_unavailable" in refused[0] and "more like it" not in refused[0]
    assert "(and 29 more like it in the last 60s)" in refused[1]
    store.up = True
    with Logged("info") as info:
        for _ in range(2):
            assert b"bad_token" in bind(token="x" * 20)
    assert len([line for line in info.lines if "bad_token" in line]) == 2


def test_what_holds_a_drain_is_said_with_its_tunnels_streams_and_sessions() -> None:
    """The drain's warning when the grace runs out names what kept it (an operator saw
    only "still in use: tunnels" at every node of a rolling restart)."""
    clock, store, table, transport, tunnel = bound()
    # Kept with no stream (a drain with other nodes live): its studio has not moved yet.
    assert table.in_use() == "1 tunnel with no open stream, kept for its studio to bind " \
        "to another node, of session s1"
    tunnel.open_stream(b"t")
    table.drain()  # GoAway: the tunnel stays while its stream is open
    assert table.in_use().startswith("1 tunnel with 1 open stream (")
    empty = TunnelTable(store, node_id="n2", node_address="b:1", clock=clock,
                        settings=TunnelSettings())
    assert empty.in_use() == ""  # (nothing to say: the drain names the part alone)


def test_a_drain_with_other_nodes_keeps_an_idle_tunnel_until_its_studio_moved() -> None:
    """An idle tunnel closed at once at a drain, and requests through other nodes were
    answered "not connected" for the 0-8 s its studio took to bind elsewhere. With other
    live nodes it is told to go away and kept, serving, until the studio has moved."""
    from twisted.internet import defer

    from studios_gateway.tunnel.server import MOVE_WAIT

    clock, store, table, transport, tunnel = bound()
    table.other_nodes = lambda: defer.succeed(1)
    table.drain()
    assert tunnel.mux.local_go_away and not transport.disconnecting
    assert table.get("s1") is tunnel  # still the holder: other nodes relay to it
    table.open_stream("s1").abortConnection()  # it takes streams still
    clock.advance(MOVE_WAIT - 1)
    assert not transport.disconnecting
    store.inner.claim_tunnel(replace(tunnel.holder, node_id="n2", tunnel_id="other"), TTL)
    assert table.get("s1") is None and transport.disconnecting  # moved, and idle: closed


@pytest.mark.parametrize("others", ["none", "failed", "no answer"])
def test_a_drain_with_no_other_node_known_closes_idle_tunnels(others: str) -> None:
    """A node on its own (or whose registry does not say within OTHER_NODES_WAIT) closes
    an idle tunnel as before: no studio can move, and a restart must not wait its grace."""
    from twisted.internet import defer

    from studios_gateway.tunnel.server import OTHER_NODES_WAIT

    clock, store, table, transport, tunnel = bound()
    answer: defer.Deferred[int] = defer.Deferred()
    table.other_nodes = lambda: answer
    table.drain()
    assert tunnel.mux.local_go_away and not transport.disconnecting
    if others == "none":
        answer.callback(0)
    elif others == "failed":
        answer.errback(RuntimeError("redis away"))
    else:
        clock.advance(OTHER_NODES_WAIT)
    assert transport.disconnecting


def test_a_drain_keeps_an_idle_tunnel_for_its_studio_to_move_for_a_while_only() -> None:
    """A studio not bound elsewhere within MOVE_WAIT cannot move (every node of the
    cluster stops, the other node's record outlived its killed process): its idle tunnel
    closes then, as on a node alone. It kept the drain for the whole grace, and a
    cluster stopped node after node took CONNECT_SHUTDOWN_GRACE to stop."""
    from twisted.internet import defer

    from studios_gateway.tunnel.server import MOVE_WAIT

    clock, store, table, transport, tunnel = bound()
    table.other_nodes = lambda: defer.succeed(1)
    drained = table.drain()
    busy = table.open_stream("s1")  # a download, say: it finishes first
    clock.advance(MOVE_WAIT)
    assert not transport.disconnecting and not drained.called
    busy.abortConnection()
    assert transport.disconnecting
    table.lost(tunnel)
    assert drained.called
    assert table._keep_call is None


def test_a_short_shutdown_grace_keeps_a_studio_that_cannot_move_for_a_third_of_it() -> None:
    """The keep was MOVE_WAIT (10 s) whatever the grace: under a grace of 10 s or less it
    lasted as long as the grace or longer, so the drain was cut at the grace's end. It is
    a third of a grace shorter than 30 s (the default's third: MOVE_WAIT)."""
    from twisted.internet import defer

    from studios_gateway.tunnel.server import MOVE_WAIT, move_wait_within

    assert move_wait_within(30) == move_wait_within(120) == MOVE_WAIT
    clock, store, table, transport, tunnel = bound(move_wait=move_wait_within(6))
    table.other_nodes = lambda: defer.succeed(1)
    drained = table.drain()
    clock.advance(1.9)
    assert not transport.disconnecting  # kept for the studio to move
    clock.advance(0.1)  # 2 s: a third of the grace
    assert transport.disconnecting
    table.lost(tunnel)
    assert drained.called


def test_a_drain_with_no_tunnel_does_not_ask_for_other_nodes() -> None:
    """Nothing to keep: the registry is not asked (its answer, or its failure when Redis
    went first at a stop, came after "drained; stopping" in the log)."""
    clock = Clock()
    table = TunnelTable(FlakyStore(MemoryStore(clock)), node_id="n1", node_address="a:1",
                        clock=clock, settings=TunnelSettings())
    asked: list[int] = []

    def other_nodes() -> Any:
        asked.append(1)
        return Deferred()

    table.other_nodes = other_nodes
    assert table.drain().called and asked == []


def test_a_drain_paces_the_goaways_of_clients_that_rebind_soon() -> None:
    """A client that says it rebinds soon after a GoAway is told at bind to do so within
    REBIND_WITHIN, and a drain with other live nodes sends those GoAways GOAWAY_RATE a
    second: a large node's studios do not all bind to the others at once, and a small
    node's move in one batch (the clients' own 0-8 s spread kept every drain up to 8 s).
    An older client's GoAway goes at once (it spreads its rebind itself). MOVE_WAIT
    counts from the last batch."""
    from twisted.internet import defer

    from studios_gateway.tunnel.server import GOAWAY_RATE, GOAWAY_TICK, MOVE_WAIT, REBIND_WITHIN
    from studios_gateway.wire.bind import parse_reply

    clock, store, table, transport, old = bound()  # an older client
    batch = int(GOAWAY_RATE * GOAWAY_TICK)
    paced = [second(table, store, f"p{i}", paced=True) for i in range(2 * batch + 5)]
    reply = parse_reply(paced[0][0].value().split(b"\n", 1)[0])
    assert reply.ok and reply.rebind_within == REBIND_WITHIN
    assert reply.retry_period == 8.0  # CONNECT_TUNNEL_RETRY_PERIOD's default, told
    assert parse_reply(transport.value().split(b"\n", 1)[0]).rebind_within == 0  # older
    table.other_nodes = lambda: defer.succeed(1)
    table.drain()

    def told() -> int:
        return sum(bool(t.mux.local_go_away) for _, t in paced)

    assert old.mux.local_go_away
    assert told() == batch
    clock.advance(GOAWAY_TICK)
    assert told() == 2 * batch
    table.lost(paced[-1][1])  # a studio gone meanwhile needs none
    clock.advance(GOAWAY_TICK)
    assert told() == len(paced) - 1
    assert not any(t.disconnecting for t, _ in paced[:-1])
    clock.advance(MOVE_WAIT - 0.01)  # from the last batch
    assert not any(t.disconnecting for t, _ in paced[:-1])
    clock.advance(0.01)
    assert all(t.disconnecting for t, _ in paced[:-1]) and transport.disconnecting
    assert table._keep_call is None


@pytest.mark.parametrize("cluster", [False, True])
def test_a_drain_with_no_other_node_tells_every_client_at_once(cluster: bool) -> None:
    """On a node alone (no registry cluster, or no other node live) no studio can move
    now: every GoAway goes at once, and a paced client's says GO_AWAY_ALONE, so that it
    spreads its rebind itself as an older client does (with "rebind within 0.25 s" a
    restarted node's 10,000 studios all dialled within moments, into the listen queue of
    a socket-activated port); an older client's is the normal code, which it knows."""
    from twisted.internet import defer

    from studios_gateway.wire.frames import GO_AWAY_ALONE, GO_AWAY_NORMAL, encode_go_away

    clock, store, table, transport, old = bound()
    paced = [second(table, store, f"p{i}", paced=True) for i in range(200)]
    if cluster:
        table.other_nodes = lambda: defer.succeed(0)
    table.drain()
    assert all(t.mux.local_go_away for _, t in paced)
    assert all(t.disconnecting for t, _ in paced)  # idle: closed
    assert all(encode_go_away(GO_AWAY_ALONE) in t.value() for t, _ in paced)
    assert encode_go_away(GO_AWAY_NORMAL) in transport.value()
    assert encode_go_away(GO_AWAY_ALONE) not in transport.value()


def test_paced_goaways_in_a_cluster_say_the_normal_code() -> None:
    from twisted.internet import defer

    from studios_gateway.wire.frames import GO_AWAY_ALONE, GO_AWAY_NORMAL, encode_go_away

    clock, store, table, transport, old = bound()
    t, _ = second(table, store, "p1", paced=True)
    table.other_nodes = lambda: defer.succeed(1)
    table.drain()
    assert encode_go_away(GO_AWAY_NORMAL) in t.value()
    assert encode_go_away(GO_AWAY_ALONE) not in t.value()


def test_a_stop_while_the_drain_asks_for_other_nodes_leaves_no_paced_goaways() -> None:
    """A stop (a second SIGTERM) before the registry said whether other nodes are live:
    its answer after the stop started the paced GoAways and MOVE_WAIT on the closed
    tunnels, timers left running after the stop."""
    from twisted.internet import defer

    clock, store, table, transport, old = bound()
    paced = [second(table, store, f"p{i}", paced=True) for i in range(300)]
    asked: defer.Deferred[int] = defer.Deferred()
    table.other_nodes = lambda: asked
    table.drain()
    table.stop()
    assert asked.called  # cancelled
    assert clock.getDelayedCalls() == [] and table._keep_call is None
    assert all(t.disconnecting for t, _ in paced)


def test_a_tunnel_bound_as_the_drain_began_is_told_to_go_away() -> None:
    """A bind verified and claimed while the drain began is not among the tunnels the
    drain told: it was never told GoAway, and the drain waited out its grace for it."""
    from twisted.internet import defer

    clock, store, table, transport, old = bound()
    held: defer.Deferred[None] = defer.Deferred()
    claim = store.claim_tunnel
    store.claim_tunnel = lambda *a: held.addCallback(lambda _: claim(*a))  # type: ignore
    store.create(SessionRecord(id="s2", workspace_id=None, tool="generic", owner="alice",
                               allowed_users=(), ssh_enabled=False,
                               token_hash=hash_token(TOKEN), created_at=0.0))
    protocol = TunnelServerFactory(table).buildProtocol(None)
    late = StringTransport()
    protocol.makeConnection(late)
    protocol.dataReceived(BindRequest("s2", TOKEN, "0.12.0", "generic", 8080,
                                      paced_go_away=True).encode())
    drained = table.drain()
    held.callback(None)  # the claim made after the drain began
    tunnel = table.get("s2")
    assert tunnel is not None and tunnel.mux.local_go_away
    assert late.disconnecting  # idle: closed, as the others on a node alone
    table.lost(tunnel)
    table.lost(old)
    assert drained.called


def test_a_large_nodes_paced_goaways_all_go_within_goaway_longest(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """At GOAWAY_RATE alone the GoAways of a node of 40,000 studios took 32 s, past the
    drain's grace (30 s): its batches grow so that the last goes within GOAWAY_LONGEST,
    as the clients' own spread did (here at 10 a second, 200 studios: 20 s before)."""
    from twisted.internet import defer

    from studios_gateway.tunnel import server

    monkeypatch.setattr(server, "GOAWAY_RATE", 10.0)
    clock, store, table, transport, old = bound()
    paced = [second(table, store, f"p{i}", paced=True) for i in range(200)]
    table.other_nodes = lambda: defer.succeed(1)
    table.drain()
    told = [sum(bool(t.mux.local_go_away) for _, t in paced)]
    while told[-1] < len(paced) and clock.seconds() < 30:
        clock.advance(server.GOAWAY_TICK)
        told.append(sum(bool(t.mux.local_go_away) for _, t in paced))
    assert told[-1] == len(paced) and clock.seconds() <= server.GOAWAY_LONGEST
    assert told[0] == 3 and told[1] == 6  # evenly: ceil(200 / 80) a tick


def test_the_paced_goaways_go_within_goaway_longest_of_the_drains_start(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The registry's answer (whether other nodes are live) may take up to 2 s: the pace
    counts from the drain's start, so that the last studio has bound elsewhere within the
    10 s a new ssh session waits for it (peers.remote.SSH_REBIND_WAIT); from the answer,
    the last GoAway went 9.9 s after the SIGTERM."""
    from twisted.internet import defer

    from studios_gateway.tunnel import server

    monkeypatch.setattr(server, "GOAWAY_RATE", 10.0)
    clock, store, table, transport, old = bound()
    paced = [second(table, store, f"p{i}", paced=True) for i in range(200)]
    answer: defer.Deferred[int] = defer.Deferred()
    table.other_nodes = lambda: answer
    table.drain()
    clock.advance(1.9)
    answer.callback(1)
    while not all(t.mux.local_go_away for _, t in paced) and clock.seconds() < 30:
        clock.advance(server.GOAWAY_TICK)
    assert clock.seconds() <= server.GOAWAY_LONGEST


def test_a_studio_started_as_another_tool_is_refused_with_a_warning() -> None:
    """A studio holding its session's token but started as another tool will not start
    until someone changes it: a warning (it was an info line among the strangers')."""
    from twisted.logger import LogLevel, globalLogPublisher

    clock, store, table, transport, tunnel = bound()
    store.inner.create(SessionRecord(id="s2", workspace_id=None, tool="jupyterlab",
                                     owner="alice", allowed_users=(), ssh_enabled=False,
                                     token_hash=hash_token(TOKEN), created_at=0.0))
    seen: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(seen.append)
    try:
        for sid, tool, token in (("s2", "vscode", TOKEN), ("s2", "jupyterlab", "x" * 20)):
            protocol = TunnelServerFactory(table).buildProtocol(None)
            protocol.makeConnection(StringTransport())
            protocol.dataReceived(BindRequest(sid, token, "0.12.0", tool, 8080).encode())
    finally:
        globalLogPublisher.removeObserver(seen.append)
    refusals = [(e["log_level"], e["code"]) for e in seen
                if e.get("log_format", "").startswith("bind refused")]
    assert refusals == [(LogLevel.warn, "tool_mismatch"), (LogLevel.info, "bad_token")]


def test_a_generic_session_whose_studio_runs_a_tool_is_bound_with_a_warning() -> None:
    """A session made from an image whose name names no tool (my-studio:3.1.3-0.12.0) is
    generic; its Xpra studio bound without a word, and was served as a generic web
    application (in path mode: its prefix passed, Xpra's page broken) (builder50)."""
    from twisted.logger import LogLevel, formatEvent, globalLogPublisher

    clock, store, table, transport, tunnel = bound()
    for sid in ("g1", "g2"):
        store.inner.create(SessionRecord(id=sid, workspace_id=None, tool="generic",
                                         owner="alice", allowed_users=(), ssh_enabled=False,
                                         token_hash=hash_token(TOKEN), created_at=0.0))
    seen: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(seen.append)
    try:
        for sid, tool in (("g1", "xpra"), ("g2", "generic")):
            protocol = TunnelServerFactory(table).buildProtocol(None)
            protocol.makeConnection(StringTransport())
            protocol.dataReceived(BindRequest(sid, TOKEN, "0.12.0", tool, 8080).encode())
    finally:
        globalLogPublisher.removeObserver(seen.append)
    assert table.get("g1") is not None and table.get("g2") is not None  # both bound
    warned = [formatEvent(e) for e in seen if e["log_level"] == LogLevel.warn]
    assert warned == ["session g1 is a generic studio but its studio runs Xpra "
                      "(studios-connect --tool xpra): it is served as a generic web "
                      "application; in path mode Xpra gets its prefix passed, not stripped as "
                      "it needs. Create its sessions with tool xpra (--tool), or from an image "
                      "whose repository name names the tool"]


def test_the_generic_session_warning_is_said_once_an_hour_not_at_every_bind() -> None:
    """Said at each bind, it was one line per GoAway's rebind, per reconnect, and for two
    studios on the session (tunnel.twins) one line each time they took turns: several a
    second, the flood tunnel.twins was made to stop. Once an hour per session, with the
    count of the binds in between."""
    from twisted.logger import LogLevel, formatEvent, globalLogPublisher

    clock, store, table, transport, tunnel = bound()
    store.inner.create(SessionRecord(id="g1", workspace_id=None, tool="generic",
                                     owner="alice", allowed_users=(), ssh_enabled=False,
                                     token_hash=hash_token(TOKEN), created_at=0.0))
    seen: list[dict[str, Any]] = []

    def binds(times: int) -> list[str]:
        seen.clear()
        globalLogPublisher.addObserver(seen.append)
        try:
            for _ in range(times):
                protocol = TunnelServerFactory(table).buildProtocol(None)
                protocol.makeConnection(StringTransport())
                protocol.dataReceived(BindRequest("g1", TOKEN, "0.12.0", "xpra", 8080).encode())
                clock.advance(0.1)
        finally:
            globalLogPublisher.removeObserver(seen.append)
        assert table.get("g1") is not None
        return [formatEvent(e) for e in seen
                if e["log_level"] == LogLevel.warn and "is a generic studio" in formatEvent(e)]

    said = binds(20)
    assert len(said) == 1 and "more like it" not in said[0]
    clock.advance(3600)
    said = binds(1)
    assert len(said) == 1 and said[0].endswith("(and 19 more like it in the last 3602s)")
