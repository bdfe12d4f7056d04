"""Relayed: upgraded connections relayed to another node's tunnel are ended once the
registry names another holder for their studio, and kept otherwise."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from twisted.internet import defer

from studios_gateway.http.relayed import Relayed
from studios_gateway.registry.base import StoreUnavailable


def holder(node: str, tunnel: str = "t1") -> Any:
    return SimpleNamespace(node_id=node, node_address=f"10.0.0.{node[-1]}:7071",
                           tunnel_id=tunnel)


class Registry:
    def __init__(self) -> None:
        self.holders: dict[str, Any] = {}
        self.away = False
        self.asked: list[str] = []

    def get_tunnel(self, sid: str) -> defer.Deferred[Any]:
        self.asked.append(sid)
        if self.away:
            return defer.fail(StoreUnavailable("connection refused"))
        return defer.succeed(self.holders.get(sid))


def test_a_connection_to_a_moved_studio_is_ended_once_and_others_are_kept() -> None:
    reg = Registry()
    reg.holders = {"s1": holder("node-a"), "s2": holder("node-a")}
    relayed = Relayed(reg.get_tunnel)
    ended: list[str] = []
    relayed.add("s1", holder("node-a"), lambda: ended.append("s1 first"))
    relayed.add("s1", holder("node-a"), lambda: ended.append("s1 second"))
    relayed.add("s2", holder("node-a"), lambda: ended.append("s2"))
    assert ended == [] and len(relayed) == 3
    relayed.changed("s1")  # a refresh of the same claim: nothing moved
    assert ended == []
    reg.holders["s1"] = holder("node-b")
    relayed.changed("s1")
    assert ended == ["s1 first", "s1 second"] and len(relayed) == 1
    relayed.changed("s1")  # heard again: each is ended once
    assert ended == ["s1 first", "s1 second"]


def test_a_new_tunnel_on_the_same_node_is_a_move_too() -> None:
    reg = Registry()
    reg.holders = {"s1": holder("node-a", "t2")}  # the studio reconnected to node A
    ended: list[str] = []
    Relayed(reg.get_tunnel).add("s1", holder("node-a", "t1"), lambda: ended.append("s1"))
    assert ended == ["s1"]  # checked at once: the move was heard before the upgrade


def test_between_two_binds_or_without_the_registry_connections_are_kept() -> None:
    reg = Registry()
    reg.holders = {"s1": holder("node-a")}
    relayed = Relayed(reg.get_tunnel)
    ended: list[str] = []
    release = relayed.add("s1", holder("node-a"), lambda: ended.append("s1"))
    del reg.holders["s1"]  # no holder: the old tunnel may still serve it
    relayed.changed("s1")
    reg.away = True
    reg.holders["s1"] = holder("node-b")
    relayed.changed("s1")
    assert ended == [] and len(relayed) == 1
    reg.away = False
    relayed.changed(None)  # "anything may have changed": every kept session is asked
    assert ended == ["s1"]
    release()  # (after its end: nothing left to forget)
    assert len(relayed) == 0


def test_a_released_connection_is_not_ended_and_unknown_sessions_are_not_asked() -> None:
    reg = Registry()
    reg.holders = {"s1": holder("node-a")}
    relayed = Relayed(reg.get_tunnel)
    ended: list[str] = []
    release = relayed.add("s1", holder("node-a"), lambda: ended.append("s1"))
    release()
    reg.holders["s1"] = holder("node-b")
    reg.asked.clear()
    relayed.changed("s1")
    relayed.changed("other")
    relayed.changed(None)
    assert ended == [] and reg.asked == [] and len(relayed) == 0


def test_a_connection_whose_end_fails_does_not_keep_the_others_open() -> None:
    """Each connection is forgotten before it is ended: one whose end raised left the
    others after it forgotten but open (on the old tunnel, holding its node's drain),
    and the error unhandled in the look-up's Deferred."""
    from twisted.logger import globalLogPublisher

    reg = Registry()
    reg.holders = {"s1": holder("node-a")}
    relayed = Relayed(reg.get_tunnel)
    ended: list[str] = []

    def broken() -> None:
        raise RuntimeError("transport gone")

    relayed.add("s1", holder("node-a"), broken)
    relayed.add("s1", holder("node-a"), lambda: ended.append("second"))
    reg.holders["s1"] = holder("node-b")
    logged: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(logged.append)
    try:
        relayed.changed("s1")
    finally:
        globalLogPublisher.removeObserver(logged.append)
    assert ended == ["second"] and len(relayed) == 0
    assert any(e.get("log_failure") is not None for e in logged)


def test_at_most_so_many_look_ups_at_once() -> None:
    """"Anything may have changed" asks for every kept session, a few at a time."""
    from studios_gateway.http.relayed import LOOKUPS_IN_FLIGHT

    pending: list[defer.Deferred[Any]] = []
    relayed = Relayed(lambda sid: pending.append(d := defer.Deferred()) or d)
    for i in range(LOOKUPS_IN_FLIGHT * 2):
        relayed.add(f"s{i}", holder("node-a"), lambda: None)
    assert len(pending) == LOOKUPS_IN_FLIGHT  # the adds' own checks, the rest waiting
    for d in list(pending):
        d.callback(holder("node-a"))
    assert len(pending) == LOOKUPS_IN_FLIGHT * 2
