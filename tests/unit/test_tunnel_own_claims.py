"""This node's own claim is not looked up again when its change event comes: the
registry publishes one event per claim, in the order of the claims (as Redis does, on
another connection than the claim's answer), so the next event of a session after our
claim is ours or a change our claim overrides (tunnel/server.py, TunnelTable._own_claims)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from studios_gateway.registry.base import StoreUnavailable
from studios_gateway.registry.memory import MemoryStore
from studios_gateway.tunnel.server import TunnelServerFactory, TunnelTable
from studios_gateway.wire.bind import BindRequest
from tests.support.tables import TOKEN, memory_table


class Late:
    """The store's change events held back until delivered, as they come from Redis (a
    pub/sub connection apart from the commands'), and its tunnel look-ups counted."""

    def __init__(self, store: MemoryStore) -> None:
        self.events: list[str | None] = []
        self.lookups = 0
        notify = store._subscribers.notify
        self.deliver_to = notify
        store._subscribers.notify = lambda sid: self.events.append(sid)  # type: ignore[method-assign]
        get_tunnel = store.get_tunnel

        def counted(sid: str) -> Any:
            self.lookups += 1
            return get_tunnel(sid)

        store.get_tunnel = counted  # type: ignore[method-assign]

    def deliver(self) -> None:
        events, self.events = self.events, []
        for sid in events:
            self.deliver_to(sid)


def bind(table: TunnelTable) -> tuple[Any, StringTransport]:
    protocol = TunnelServerFactory(table).buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    protocol.dataReceived(BindRequest("s1", TOKEN, "0.12.0", "generic", 8080).encode())
    return protocol, transport


def bound(table: TunnelTable) -> Any:
    """Bind s1 here and return its tunnel."""
    bind(table)
    tunnel = table.get("s1")
    assert tunnel is not None
    return tunnel


def claimed_elsewhere(store: MemoryStore, tunnel: Any, late: Late) -> None:
    """Node n2 claims the session after us; the events are delivered."""
    store.claim_tunnel(replace(tunnel.holder, node_id="n2", tunnel_id="other"), 30)
    late.deliver()


def follows_a_claim_elsewhere(store: MemoryStore, table: TunnelTable, tunnel: Any,
                              late: Late) -> None:
    """No event is taken as ours any more: another node's next claim is seen at once."""
    assert table._own_claims == {}
    claimed_elsewhere(store, tunnel, late)
    assert table.get("s1") is None


def setup() -> tuple[MemoryStore, TunnelTable, Late]:
    clock = Clock()
    store, table = memory_table(clock)
    late = Late(store)
    table.start()
    return store, table, late


def test_our_claims_event_is_not_looked_up() -> None:
    store, table, late = setup()
    ours = bound(table)
    assert late.events == ["s1"]  # the event comes after the answer
    late.deliver()
    assert late.lookups == 0 and table.get("s1") is ours
    assert table._own_claims == {}
    table.stop()


def test_a_claim_made_after_ours_is_still_seen() -> None:
    store, table, late = setup()
    claimed_elsewhere(store, bound(table), late)  # ours, then theirs
    assert late.lookups == 1 and table.get("s1") is None  # routed to the new holder
    table.stop()


def test_a_claim_made_before_ours_is_overridden_by_ours() -> None:
    store, table, late = setup()
    first = bound(table)
    late.deliver()
    bind(table)  # the studio binds again here...
    # ...while another node's claim had been made just before ours: its event comes first
    late.events.insert(0, "s1")
    late.deliver()  # theirs (taken as ours: ours overrides it), then ours: looked up
    again = table.get("s1")
    assert again is not None and again is not first
    assert late.lookups == 1 and store.get_tunnel("s1").result.tunnel_id == \
        again.holder.tunnel_id
    table.stop()


def test_a_failed_claim_takes_no_event_as_ours_and_looks_the_held_tunnel_up() -> None:
    store, table, late = setup()
    held = bound(table)
    late.deliver()
    claim = store.claim_tunnel
    store.claim_tunnel = lambda *a: defer.fail(  # type: ignore[method-assign]
        StoreUnavailable("Redis did not answer claim within 2s"))
    bind(table)  # refused store_unavailable: its claim may or may not have been made
    store.claim_tunnel = claim  # type: ignore[method-assign]
    assert late.lookups == 1 and table.get("s1") is held  # the tunnel we hold: checked
    follows_a_claim_elsewhere(store, table, held, late)
    table.stop()


def test_lost_events_forget_our_claims() -> None:
    store, table, late = setup()
    ours = bound(table)
    late.events.clear()  # our claim's event was lost...
    late.deliver_to(None)  # ...and the registry says so
    follows_a_claim_elsewhere(store, table, ours, late)
    table.stop()


def test_a_bind_that_fails_after_its_claim_takes_no_event_as_ours() -> None:
    store, table, late = setup()
    held = bound(table)
    late.deliver()

    def broken() -> Any:
        raise RuntimeError("no multiplexer")

    failed: list[Any] = []
    table.bind(BindRequest("s1", TOKEN, "0.12.0", "generic", 8080), broken,
               None).addErrback(failed.append)  # type: ignore[arg-type]
    assert failed and failed[0].check(RuntimeError)
    # The registry names the tunnel that was never installed: the one held is looked up
    # and let go at once, as before (not at the next refresh)
    assert table._own_claims == {} and late.lookups == 1
    assert table.get("s1") is None and held in table._moved
    late.deliver()
    table.stop()


def test_a_stopped_table_forgets_its_pending_claims() -> None:
    store, table, late = setup()
    bound(table)
    assert table._own_claims == {"s1": 1}
    table.stop()
    assert table._own_claims == {}
