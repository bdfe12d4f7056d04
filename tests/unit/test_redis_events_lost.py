"""What a node does when its Redis subscriber comes back waits for its command connection.

The subscriber connection often comes up before the command connection (after an outage,
at a start). It tells the node's parts that events were lost, and each then asks Redis
(the tunnel table looks up every tunnel it holds and claims again those whose claim
expired meanwhile; the nodes' settings are compared; logouts are read). Asked before the
command connection was up, every one of those failed and waited for its next round:
measured with two nodes and Redis stopped 28 s, the studio held by one node answered 502
"studio not connected" through the other for 6 s after Redis was back.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.task import Clock

from studios_gateway.registry.redis import RedisStore


class Conn:
    """A connection of a link, as far as the link and the store's subscribe use it."""

    connected = True

    def subscribe(self, channel: str) -> defer.Deferred[Any]:
        return defer.succeed(None)


def test_lost_events_are_told_again_once_the_command_connection_is_up() -> None:
    store = RedisStore("127.0.0.1:6379", clock=Clock(), node_id="gw-1")
    heard: list[str | None] = []
    store.subscribe(heard.append)
    store._events.connected(Conn())  # the subscriber first: nothing can be asked yet
    assert heard == [None]
    store._events.lost(store._events.conn)  # and it flaps: told, not queued twice
    store._events.connected(Conn())
    assert heard == [None, None, None]
    store._commands.connected(Conn())  # now the look-ups can work: told again, once
    assert heard == [None, None, None, None]
    del heard[:]
    store._events.lost(store._events.conn)  # with the commands up, a subscriber back
    store._events.connected(Conn())  # tells at once, and only then
    assert heard == [None, None]
    store._commands.lost(store._commands.conn)
    store._commands.connected(Conn())
    assert heard == [None, None]


def test_when_connected_fires_after_the_second_telling() -> None:
    """A wait for both connections begun before the subscriber came up fired before the
    store told its subscribers again (the command connection's waiters ran in the order
    they came): a subscriber added then heard an "events lost" from before it (ci51f)."""
    store = RedisStore("127.0.0.1:6379", clock=Clock(), node_id="gw-1")
    heard: list[str | None] = []
    store.subscribe(heard.append)
    both = store.when_connected()  # (before either is up: at a node's start)
    late: list[str | None] = []
    told_first: list[int] = []

    def connected(_: Any) -> None:
        told_first.append(len(heard))
        store.subscribe(late.append)  # as a node's part does once Redis is up

    both.addCallback(connected)
    store._events.connected(Conn())
    assert heard == [None]
    store._commands.connected(Conn())
    assert told_first == [2]  # after the second "events lost", not before it
    assert heard == [None, None] and late == []


def test_when_connected_with_commands_first_does_not_wait() -> None:
    store = RedisStore("127.0.0.1:6379", clock=Clock(), node_id="gw-1")
    both = store.when_connected()
    store._commands.connected(Conn())
    heard: list[str | None] = []
    store.subscribe(heard.append)
    fired: list[int] = []
    both.addCallback(lambda _: fired.append(len(heard)))
    store._events.connected(Conn())
    assert heard == [None] and fired == [1]  # told once, and the wait is over
