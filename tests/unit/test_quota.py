"""Transfer quotas on a fake clock, two "nodes" sharing one in-memory store."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.logger import Logger
from twisted.trial.unittest import TestCase

from studios_gateway.http.proxy import Anonymous
from studios_gateway.registry.memory import MemoryStore
from studios_gateway.traffic.access_log import AccessLog
from studios_gateway.traffic.facts import SSH, WEBSOCKET
from studios_gateway.traffic.metrics import TrafficMetrics
from studios_gateway.traffic.observer import Traffic
from studios_gateway.traffic.quota import Over, Quota, QuotaSettings, admitting, page_text

WINDOW = 120.0  # 12 buckets of 10 s


def result(d: defer.Deferred[Any]) -> Any:
    return TestCase().successResultOf(d)


def nodes(**limits: int) -> tuple[Quota, Quota, Clock]:
    clock = Clock()
    clock.advance(1000)
    store = MemoryStore(clock)
    settings = QuotaSettings(window=WINDOW, **limits)
    return Quota(settings, store, clock), Quota(settings, store, clock), clock


def test_a_session_over_its_quota_and_when_it_frees_up() -> None:
    a, _, clock = nodes(session_bytes=1000)
    a.add("s1", "alice", 600)
    result(a.flush())
    assert a.over("s1", "alice") is None
    clock.advance(25)
    a.add("s1", "alice", 500)  # counted before the flush too
    over = a.over("s1", "alice")
    assert over is not None and (over.scope, over.name, over.used, over.limit) == (
        "session", "s1", 1100, 1000)
    # The first 600 bytes (bucket of t=1000) leave the window at t=1000+120: 95 s from now.
    assert over.retry_after == 95
    assert "transfer quota reached: session s1 moved 1.1 KiB of 1000 B" in over.message
    result(a.flush())
    clock.advance(95)
    result(a.flush())
    assert a.over("s1", "alice") is None


def test_a_user_quota_counts_every_node_and_every_session() -> None:
    a, b, clock = nodes(user_bytes=1000)
    a.add("s1", "alice", 700)
    result(a.flush())
    b.add("s2", "alice", 200)
    result(b.flush())
    assert result(b.check("s3", "alice")) is None
    a.add("s1", "alice", 200)
    result(a.flush())
    clock.advance(1)  # b's counts are a second old: check reads them again
    over = result(b.check("s9", "alice"))
    assert over is not None and over.scope == "user" and over.used == 1100
    assert page_text(over, WINDOW).startswith(
        "You (alice) have moved 1.1 KiB of the 1000 B allowed in 2m,")
    assert result(b.check("s9", "bob")) is None
    usage = result(b.usage("user", "alice"))
    assert (usage["used_bytes"], usage["limit_bytes"], usage["over"]) == (1100, 1000, True)
    result(b.reset("user", "alice"))
    clock.advance(1)
    assert result(a.check("s1", "alice")) is None
    assert result(a.usage("user", "alice"))["used_bytes"] == 0


def test_admitting_answers_429_with_retry_after() -> None:
    a, _, _ = nodes(session_bytes=10)
    refused: list[Over] = []
    gate = admitting(lambda request, sid: defer.succeed(Anonymous()), a, refused.append)
    assert isinstance(result(gate(None, "s1")), Anonymous)
    a.add("s1", "anonymous", 11)
    page = result(gate(None, "s1"))
    assert page.status == 429 and dict(page.headers)[b"Retry-After"] == b"120"
    assert b"Transfer quota reached" in page.body and refused[0].scope == "session"
    # The page says it to the person (it repeated its title, then "session s1 moved 11 B
    # of 10 B allowed per window"), and reloads when the studio works again.
    assert b"This studio has moved 11 B of the 10 B allowed in 2m, so the gateway holds " \
        b"the studio until some of that time has passed. It works again in about 2m." \
        in page.body
    assert b"<meta http-equiv=refresh content=120>" in page.body
    assert b"per window" not in page.body
    # For the access line: who, and which quota (it said "- ... too many requests").
    assert page.user == "anonymous" and page.why == refused[0].message
    assert page.why.startswith("transfer quota reached: session s1 moved 11 B")
    # The authorizer's own refusal passes untouched.
    denied = object()
    gate = admitting(lambda request, sid: defer.succeed(denied), a, refused.append)
    assert result(gate(None, "s1")) is denied


def test_the_tick_stops_open_connections_over_quota() -> None:
    a, _, clock = nodes(user_bytes=1000)
    registry = CollectorRegistry()
    traffic = Traffic(metrics=TrafficMetrics(registry),
                      access_log=AccessLog("off", "gw", Logger()), clock=clock, quota=a)
    stopped: list[str] = []
    ws = traffic.open(WEBSOCKET, "s1", "alice", stopped.append)
    ssh = traffic.open(SSH, "s2", "bob", stopped.append)
    ws.outbound(900)
    ssh.outbound(5000)  # bob is over his own quota at once
    traffic.tick()
    assert len(stopped) == 1 and "user bob" in stopped[0]
    ws.inbound(200)
    traffic.tick()
    assert len(stopped) == 2 and "user alice" in stopped[1]
    traffic.tick()
    assert len(stopped) == 2  # once each
    assert registry.get_sample_value("studios_gateway_quota_refusals_total",
                                     {"kind": "websocket", "scope": "user"}) == 1
    assert registry.get_sample_value("studios_gateway_quota_refusals_total",
                                     {"kind": "ssh", "scope": "user"}) == 1


def test_a_store_that_fails_lets_traffic_through() -> None:
    a, _, _ = nodes(session_bytes=10)

    class Down:
        def add_transfer(self, *args: Any) -> defer.Deferred[None]:
            return defer.fail(ConnectionError("down"))

        def get_transfer(self, *args: Any) -> defer.Deferred[Any]:
            return defer.fail(ConnectionError("down"))

    a.store = Down()  # type: ignore[assignment]
    a.add("s1", "alice", 5)
    result(a.flush())
    assert result(a.check("s1", "alice")) is None


def test_clear_now_only_with_fresh_counts_under_the_quota() -> None:
    a, _, clock = nodes(session_bytes=100)
    assert not a.clear_now("s1", "alice")  # never read: the full check must read
    assert result(a.check("s1", "alice")) is None
    assert a.clear_now("s1", "alice")
    clock.advance(1.5)
    assert not a.clear_now("s1", "alice")  # stale
    result(a.flush())  # the tick reads the watched scope again
    assert a.clear_now("s1", "alice")
    a.add("s1", "alice", 200)
    assert not a.clear_now("s1", "alice")
