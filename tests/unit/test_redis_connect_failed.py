"""A Redis that refuses connections (down, or a wrong CONNECT_REDIS_ADDRESS) is said in
the log, once, then once a minute with a count: the gateway retried in silence (the
library's and Twisted's own lines for each attempt are dropped), and a node started with
Redis away said nothing of it. /ready's store check says the same reason."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from twisted.internet import defer, error
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from studios_gateway.registry.redis import RedisStore
from studios_gateway.registry.redis_link import _Watched
from tests.unit.test_node_settings import Logged

SAID = "cannot connect: Connection was refused by other side: 111: Connection refused"


class Refusing:
    """An endpoint where nothing listens."""

    def __init__(self) -> None:
        self.attempts = 0

    def connect(self, factory: Any) -> defer.Deferred[Any]:
        self.attempts += 1
        return defer.fail(error.ConnectionRefusedError("111: Connection refused."))


def test_a_refused_connection_is_said_once_then_once_a_minute() -> None:
    clock = Clock()
    store = RedisStore("redis.internal:6379", clock=clock, timeout=2.0)
    link, endpoint = store._commands, Refusing()
    with Logged("warn") as warn:
        link.start(endpoint, None)  # type: ignore[arg-type]
        try:
            # The library's retries, a few seconds apart, through the endpoint it was given
            watched = _Watched(endpoint, link)
            for _ in range(5):
                clock.advance(5)
                watched.connect(None).addErrback(lambda f: None)
            clock.advance(61 - 25)
            watched.connect(None).addErrback(lambda f: None)
        finally:
            link.stop()
    assert endpoint.attempts == 7
    assert warn.lines == [
        f"Redis command connection to redis.internal:6379: {SAID}; will retry",
        f"Redis command connection to redis.internal:6379: {SAID}; will retry (and 5 more "
        "like it in the last 61s)"], warn.lines
    assert link.last_error == SAID  # what /ready's store check says, in its parentheses


class Waiting:
    """An endpoint whose attempt has not ended yet (Redis slow to accept)."""

    def __init__(self) -> None:
        self.attempts = 0

    def connect(self, factory: Any) -> defer.Deferred[Any]:
        self.attempts += 1
        return defer.Deferred()


def test_once_one_link_is_back_the_other_tries_at_once() -> None:
    """Redis back after an outage: the command connection is up, and the subscriber,
    waiting out its backoff (up to 5 s), tries again now. Before, the two came back
    seconds apart, and a node that heard a studio's new claim on one while the other was
    still down answered requests for it 503 (`session registry unavailable`)."""
    store = RedisStore("redis.internal:6379", clock=Clock(), timeout=2.0)
    commands, events = store._commands, store._events
    endpoint = Refusing()
    events.start(endpoint, None)  # type: ignore[arg-type]
    try:
        assert endpoint.attempts == 1 and events.backing_off
        commands.connected(type("Conn", (), {"connected": True})())
        assert commands.ready
        assert endpoint.attempts == 2  # at once, not at the end of its backoff
        # An attempt under way is left to finish.
        waiting = Waiting()
        events._endpoint = waiting  # type: ignore[assignment]
        events.try_now()
        assert waiting.attempts == 1
        events.try_now()
        commands.connected(type("Conn", (), {"connected": True})())
        assert waiting.attempts == 1
    finally:
        events.stop()
        commands.stop()


def test_a_set_up_that_redis_leaves_unanswered_is_dropped_and_said() -> None:
    """Redis accepts the connection and answers nothing (stopped with SIGSTOP, a proxy
    in front of it with no Redis behind): after connect_timeout the connection is dropped
    (and made again), and the log says why. Before, the link waited for ever with no line
    in the log, and /ready said `not connected yet`."""
    clock, link, conn, t = made()
    try:
        with Logged("warn") as warn:
            conn.makeConnection(t)  # it sends SELECT 0, which nothing answers
            clock.advance(4.9)
            assert not t.disconnecting and warn.lines == []
            clock.advance(0.1)
            clock.advance(0)  # (after the reactor's next poll)
            assert t.disconnecting
            conn.connectionLost(Failure(error.ConnectionAborted()))
        said = ("no answer: Redis at 10.0.0.9:6379 accepted the connection but answered "
                "nothing of its set-up within 5s")
        assert warn.lines == [f"Redis command connection: {said}; will retry"], warn.lines
        assert link.last_error == said  # what /ready's store check says
    finally:
        link.stop()


def test_a_ping_left_unanswered_is_said_in_words() -> None:
    """Redis stopped answering a connection that was up (SIGSTOP): the PING's timeout is
    said as such; it read `PING failed: (2.004, 'Deferred')`."""
    clock = Clock()
    store = RedisStore("10.0.0.9:6379", clock=clock, timeout=2.0)
    link = store._commands
    aborted: list[bool] = []
    conn = SimpleNamespace(connected=True, execute_command=lambda *a: defer.Deferred(),
                           transport=SimpleNamespace(abortConnection=lambda: aborted.append(True)))
    link.connected(conn)
    assert link.ready
    with Logged("warn") as warn:
        link._ping()
        clock.advance(2)
        clock.advance(0)
    assert aborted == [True]
    assert warn.lines == ["Redis command connection: PING failed: no answer within 2s; "
                          "dropping it"], warn.lines


def made(password: str | None = None) -> tuple[Clock, Any, Any, StringTransport]:
    """A command link started (connect_timeout 5 s), and its connection to Redis made
    (not yet: makeConnection sends the set-up): clock, link, protocol, transport."""
    clock = Clock()
    store = RedisStore("10.0.0.9:6379", password=password, clock=clock, timeout=2.0,
                       connect_timeout=5.0)
    link = store._commands
    link.start(Waiting(), password)  # type: ignore[arg-type]
    assert link.factory is not None
    return clock, link, link.factory.buildProtocol(None), StringTransport()


def test_a_set_up_that_redis_answers_step_by_step_is_not_dropped() -> None:
    """A healthy Redis answers AUTH, and its SELECT's answer is still on the way when the
    connect timeout is reached (a gateway busy with a storm of TLS handshakes reads a
    reply a turn of a second or two late; deadline.within's `heard` is for that): the
    set-up goes on while Redis has been heard from within connect_timeout. It was dropped
    5 s after the connection was made, answers or not, and made again, in the storm."""
    clock, link, conn, t = made(password="pw")
    try:
        conn.makeConnection(t)  # AUTH
        assert b"AUTH" in t.value()
        clock.advance(4.0)
        t.clear()
        conn.dataReceived(b"+OK\r\n")  # AUTH answered at 4 s; SELECT sent
        assert b"SELECT" in t.value()
        clock.advance(1.0)
        clock.advance(0)
        assert not t.disconnecting  # Redis answered 1 s ago
        with Logged("warn") as warn:
            clock.advance(4.0)
            clock.advance(0)
            assert t.disconnecting  # silent for 5 s since its last answer
            conn.connectionLost(Failure(error.ConnectionAborted()))
        assert warn.lines == [
            "Redis command connection: no answer: Redis at 10.0.0.9:6379 accepted the "
            "connection but answered part of its set-up, then nothing for 5s; will retry"],\
            warn.lines
    finally:
        link.stop()


def test_a_set_up_answered_ever_so_slowly_is_dropped_all_the_same() -> None:
    """Answers that keep coming, each 4 s after the last, put the drop off only up to
    SET_UP_LONGEST times connect_timeout (15 s) after the connection was made."""
    clock, link, conn, t = made()
    try:
        conn.makeConnection(t)  # SELECT 0, whose answer never comes; other bytes do
        for _ in range(3):
            clock.advance(4.0)
            link.heard = clock.seconds()  # (what _Heard does for any bytes read)
            clock.advance(0)
            assert not t.disconnecting
        clock.advance(3.0)
        clock.advance(0)
        assert t.disconnecting  # at 15 s
    finally:
        link.stop()


def test_a_set_up_refused_on_a_usable_connection_backs_off() -> None:
    """The subscriber's SUBSCRIBE refused (an ACL user without the events channel, as
    Redis 7 makes new users: `NOPERM`): txredisapi found the connection usable (AUTH and
    SELECT answered) and reset its backoff, so the link made a connection every 0.5 s
    for as long as the ACL stayed (measured 21 connections in 10 s against a real
    Redis 7; 5 now). The link's count of failures in a row sets the backoff, also
    across the new factory try_now makes."""
    store = RedisStore("10.0.0.9:6379", clock=Clock(), timeout=2.0)
    link = store._events
    link.on_ready = lambda conn: defer.fail(Exception("NOPERM this user has no "
                                                      "permissions to access one of "
                                                      "the channels"))
    link.start(Waiting(), None)  # type: ignore[arg-type]
    try:
        assert link.factory is not None
        link.factory.jitter = 0
        first = link.factory.retryDelay(1)
        with Logged("warn") as warn:
            for _ in range(3):
                link.connected(SimpleNamespace(connected=True, transport=StringTransport()))
        assert link.factory.retryDelay(1) == link.factory.retryDelay(3) > first
        # Said once (then once a minute with a count), and kept for /ready, as the
        # failures to connect and the refused handshakes are.
        assert warn.lines == ["Redis subscriber connection set-up failed: NOPERM this user "
                              "has no permissions to access one of the channels"], warn.lines
        assert link.last_error.startswith("NOPERM")
        link.backing_off = True
        link.try_now()  # (the command link came up)
        link.factory.jitter = 0
        assert link.factory.retryDelay(1) == link.factory.retryDelay(3) > first
        link.on_ready = None
        link.connected(SimpleNamespace(connected=True, transport=StringTransport()))
        assert link.ready and link.factory.retryDelay(1) == first
    finally:
        link.stop()


def test_a_stop_during_the_set_up_leaves_no_timer() -> None:
    """The store stopped while a connection's set-up is under way: the set-up deadline
    goes with it (it ran 5 s later, on a link stopped, and said `no answer`)."""
    clock, link, conn, t = made()
    conn.makeConnection(t)
    assert clock.getDelayedCalls()
    link.stop()
    assert [c for c in clock.getDelayedCalls() if c.active()] == []


def test_the_end_of_a_connection_try_now_left_behind_is_not_the_links() -> None:
    """try_now replaces the link's factory; a connection of the old one that closes a turn
    later must not cancel the new connection's set-up deadline nor name its error."""
    _, link, old, t = made()
    try:
        old.makeConnection(t)
        link.backing_off = True
        link.try_now()
        assert link.factory is not None and link.factory is not old.factory
        new = link.factory.buildProtocol(None)
        new.makeConnection(StringTransport())
        timer = link._set_up_timer
        assert timer is not None and timer.active()
        old.connectionLost(Failure(error.ConnectionLost("the old attempt's close")))
        assert link._set_up_timer is timer and timer.active()
        assert "old attempt" not in (link._transport_error or "")
    finally:
        link.stop()
