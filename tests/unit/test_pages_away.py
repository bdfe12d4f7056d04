"""The not-connected answer says which case it is: still starting, failed to start, or
stopped (or lost) after it was connected, with the next step; and it falls back to
"cannot tell" when the registry recorded nothing, fails, or is slow."""

from __future__ import annotations

import calendar
from typing import Any

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport

from studios_gateway.away import (
    BACK_WITHIN,
    FETCH_TIMEOUT,
    Case,
    describe,
    fetch_away,
    restart_where,
    state_words,
)
from studios_gateway.http import pages
from studios_gateway.http.proxy import ProxyFactory
from studios_gateway.http.routing import Router
from studios_gateway.http.upstream import SessionInfo, StudioNotConnected
from studios_gateway.registry.base import Seen, StoreUnavailable
from studios_gateway.registry.memory import MemoryStore
from tests.unit.test_http_proxy import FakeUpstream, parse_responses
from tests.unit.test_registry_memory import holder, record

NOW = calendar.timegm((2026, 12, 6, 12, 40, 0))
WHERE = restart_where("https://platform.example")
OLD_TEXT = b"A studio that is starting connects within about a minute"


def text(seen: Seen | None, made_ago: float = 120.0) -> str:
    away = describe(seen, NOW - made_ago, NOW, WHERE)
    assert away is not None
    return away.text


def test_never_connected_and_made_recently_is_still_starting() -> None:
    away = describe(Seen(), NOW - 150, NOW, WHERE)
    assert away is not None and away.case is Case.STARTING
    assert away.text == ("The studio has not connected yet (its session was made 2 minutes "
                         "ago): it is probably still starting.")
    assert "less than a minute ago" in text(Seen(), made_ago=20)


def test_never_connected_for_long_may_have_failed_to_start() -> None:
    away = describe(Seen(), NOW - 12 * 60, NOW, WHERE)
    assert away is not None and away.case is Case.NEVER_CONNECTED
    assert away.text == (
        "The studio has not connected in the 12 minutes since its session was made: it "
        "may have failed to start. Restart it from the Studios tab of its workspace in "
        "Seqera Platform (https://platform.example).")


def test_connected_then_stopped_says_until_when_and_what_to_do() -> None:
    until = NOW - 37 * 60
    away = describe(Seen(NOW - 3600 * 5, until), NOW - 86400, NOW, WHERE)
    assert away is not None and away.case is Case.STOPPED and away.since == until
    assert away.text == (
        "The studio was connected until 12:03 UTC (37 minutes ago) and has not come back: "
        "if you did not stop it, restart it from the Studios tab of its workspace in "
        "Seqera Platform (https://platform.example).")
    # Another day: the date too; long ago: hours, days.
    assert "until 2026-12-04 09:00 UTC (2 days ago)" in text(
        Seen(NOW - 86400 * 3, calendar.timegm((2026, 12, 4, 9, 0, 0))))
    assert "(3 hours ago)" in text(Seen(NOW - 86400, NOW - 3 * 3600))


def test_an_unbind_just_now_may_be_a_broken_tunnel_coming_back() -> None:
    # A tunnel that broke (a network cut, a ping timeout, its node stopped) is unbound
    # like a studio that was stopped, and studios-connect binds again within seconds: the
    # page said "has not come back: restart it" and reloaded only every 15 s, so a studio
    # back after 1 s stayed hidden for up to 15 s and people restarted running studios.
    away = describe(Seen(NOW - 3600, NOW - 20), NOW - 86400, NOW, WHERE)
    assert away is not None and away.case is Case.STOPPED and away.since == NOW - 20
    page = pages.not_connected("abc", away)
    assert dict(page.headers)[b"Retry-After"] == b"5"
    assert away.text == (
        "The studio was connected until 12:39 UTC (less than a minute ago): if only its "
        "connection broke, it comes back by itself within seconds; if it was stopped, "
        "restart it from the Studios tab of its workspace in Seqera Platform "
        "(https://platform.example).")
    assert away.soon and away.case is not Case.STARTING
    # A minute on it has not come back: what it says of a stopped studio, less often.
    later = describe(Seen(NOW - 3600, NOW - BACK_WITHIN), NOW - 86400, NOW, WHERE)
    assert later is not None and not later.soon and "has not come back" in later.text
    assert dict(pages.not_connected("abc", later).headers)[b"Retry-After"] == b"15"


def test_connected_and_lost_without_an_unbind() -> None:
    # Its node ended without releasing the claim: when it connected is all that is known.
    away = describe(Seen(NOW - 600, None), NOW - 3600, NOW, WHERE)
    assert away is not None and away.case is Case.LOST
    assert away.text.startswith("The studio connected at 12:30 UTC (10 minutes ago), then "
                                "its connection was lost and it has not come back")
    # An unbind older than the last bind is an earlier tunnel's: lost as well.
    again = describe(Seen(NOW - 600, NOW - 900), NOW - 3600, NOW, WHERE)
    assert again is not None and again.case is Case.LOST


def test_a_claim_still_there_is_a_studio_lost_moments_ago() -> None:
    # The dial failed (the tunnel just broke, its node stopped) while the registry still
    # has the claim (refreshed within its TTL): the page said "connected at 09:40 (3
    # hours ago), then its connection was lost and it has not come back: restart it",
    # reloading every 15 s, of a studio that rebinds within seconds.
    clock = Clock()
    clock.advance(NOW)
    store = MemoryStore(clock)
    store.create(record(created_at=NOW - 86400))
    store.claim_tunnel(holder(bound_at=NOW - 3 * 3600), 30)
    got: list[Any] = []
    fetch_away(store, "abc123", clock, WHERE).addCallback(got.append)
    [away] = got
    assert "has not come back" not in away.text
    assert dict(pages.not_connected("abc123", away).headers)[b"Retry-After"] == b"5"
    assert away.case is Case.LOST and away.soon and away.since == NOW - 3 * 3600
    assert away.text == (
        "The studio lost its connection to the gateway moments ago (connected at 09:40 "
        "UTC): it comes back by itself within seconds; if it does not, restart it from "
        "the Studios tab of its workspace in Seqera Platform (https://platform.example).")
    # The claim ran out with no unbind (its node ended): lost, and not back.
    clock.advance(31)
    fetch_away(store, "abc123", clock, WHERE).addCallback(got.append)
    assert got[-1].case is Case.LOST and not got[-1].soon
    assert "has not come back" in got[-1].text


def test_nothing_recorded_is_cannot_tell() -> None:
    assert describe(None, NOW - 60, NOW, WHERE) is None


def test_without_a_platform_address_the_place_is_named() -> None:
    assert restart_where(None) == "the Studios tab of its workspace in Seqera Platform"


def test_clock_skew_is_not_negative_minutes() -> None:
    assert "less than a minute ago" in text(Seen(NOW + 30, NOW + 20))


# The page ----------------------------------------------------------------------------


def test_the_page_says_the_case_and_reloads() -> None:
    starting = describe(Seen(), NOW - 60, NOW, WHERE)
    page = pages.not_connected("abc", starting)
    assert page.status == 503
    assert b"has not connected yet" in page.body and OLD_TEXT not in page.body
    assert b"This page reloads by itself." in page.body
    assert dict(page.headers)[b"Retry-After"] == b"5"
    stopped = describe(Seen(NOW - 900, NOW - 600), NOW - 3600, NOW, WHERE)
    page = pages.not_connected("abc", stopped)
    assert b"was connected until 12:30 UTC (10 minutes ago)" in page.body
    assert b"https://platform.example" in page.body
    # still reloads (a studio started again shows up), less often
    assert dict(page.headers)[b"Retry-After"] == b"15"
    assert b"This page reloads by itself." in page.body


def test_the_page_without_the_case_keeps_its_words() -> None:
    page = pages.not_connected("abc")
    assert OLD_TEXT in page.body and dict(page.headers)[b"Retry-After"] == b"5"


# Fetching the facts -------------------------------------------------------------------


def test_fetch_from_a_store_that_recorded_the_unbind() -> None:
    clock = Clock()
    clock.advance(NOW)
    store = MemoryStore(clock)
    store.create(record(created_at=NOW - 3600))
    store.claim_tunnel(holder(bound_at=NOW - 1200), 30)
    store.release_tunnel(holder())
    clock.advance(600)
    away: Any = []
    fetch_away(store, "abc123", clock, WHERE).addCallback(away.append)
    assert away[0].case is Case.STOPPED
    assert "was connected until 12:40 UTC (10 minutes ago)" in away[0].text


class _Store:
    def __init__(self, answer: Any) -> None:
        self.answer = answer

    def get(self, sid: str) -> defer.Deferred[Any]:
        return defer.succeed(record(sid, created_at=NOW - 60))

    def last_connected(self, sid: str) -> Any:
        return self.answer


def test_fetch_falls_back_when_the_store_fails_is_slow_or_is_older() -> None:
    clock = Clock()
    clock.advance(NOW)
    got: list[Any] = []
    fetch_away(_Store(defer.fail(StoreUnavailable("down"))), "abc123", clock,
               WHERE).addCallback(got.append)
    assert got == [None]
    slow = _Store(defer.Deferred())
    d = fetch_away(slow, "abc123", clock, WHERE)
    d.addCallback(got.append)
    assert got == [None]  # not yet
    clock.advance(FETCH_TIMEOUT)
    assert got == [None, None]
    fetch_away(object(), "abc123", clock, WHERE).addCallback(got.append)  # no such method
    assert got == [None] * 3
    fetch_away(_Store(defer.succeed(Seen())), "abc123", clock, WHERE).addCallback(got.append)
    assert got[-1].case is Case.STARTING


# The proxy ----------------------------------------------------------------------------


def _one_page(away: Any, upstream_fails: bool = False) -> bytes:
    clock = MemoryReactorClock()
    up = FakeUpstream()
    connected = upstream_fails  # a lookup that says connected, a dial that finds none
    if upstream_fails:
        up.fail = StudioNotConnected("abc")
    factory = ProxyFactory(
        router=Router("studios.test", "studios.test", False), upstream=up,
        lookup=lambda sid: defer.succeed(SessionInfo(sid, "jupyter", connected)),
        reactor=clock, away=away)
    p = factory.buildProtocol(None)
    t = StringTransport()
    p.makeConnection(t)
    p.dataReceived(b"GET / HTTP/1.1\r\nHost: abc.studios.test\r\n\r\n")
    [(status, _, body)] = parse_responses(t.value())
    assert status == 503
    return body


def test_the_proxy_asks_only_when_the_page_is_due_and_says_the_case() -> None:
    asked: list[str] = []
    starting = describe(Seen(), NOW - 60, NOW, WHERE)

    def away(sid: str) -> defer.Deferred[Any]:
        asked.append(sid)
        return defer.succeed(starting)

    assert b"has not connected yet" in _one_page(away)
    assert b"has not connected yet" in _one_page(away, upstream_fails=True)
    assert asked == ["abc", "abc"]


def _still_claimed() -> tuple[Clock, MemoryStore]:
    """Studio abc (its session a day old) bound an hour ago, its claim still there."""
    clock = Clock()
    clock.advance(NOW)
    store = MemoryStore(clock)
    store.create(record("abc", created_at=NOW - 86400))
    store.claim_tunnel(holder("abc", bound_at=NOW - 3600), 30)
    return clock, store


def test_the_proxy_says_lost_moments_ago_when_the_dial_fails_under_a_claim() -> None:
    from studios_gateway.http.component import make_away

    clock, store = _still_claimed()
    body = _one_page(make_away(store, clock, "https://platform.example"),
                     upstream_fails=True)
    assert b"lost its connection to the gateway moments ago" in body


def test_a_tunnel_lost_under_a_request_says_the_case_too() -> None:
    # The request went to the tool; the studio's tunnel dropped (a network cut, a ping
    # timeout) before the tool answered. The page said the general words ("... one that
    # was stopped has to be started again") though the registry could tell: asked then,
    # and only then, it says lost moments ago, coming back by itself, reload in 5 s.
    from twisted.python.failure import Failure

    from studios_gateway.http.component import TunnelUpstream, make_away
    from studios_gateway.wire.mux import TunnelLost
    from tests.unit.test_http_component import FakeDialer

    clock, store = _still_claimed()
    asked: list[str] = []
    told = make_away(store, clock, "https://platform.example")

    def away(sid: str) -> defer.Deferred[Any]:
        asked.append(sid)
        return told(sid)

    dialer = FakeDialer()
    dialer.local.add("abc")
    factory = ProxyFactory(
        router=Router("studios.test", "studios.test", False), upstream=TunnelUpstream(dialer),
        lookup=lambda sid: defer.succeed(SessionInfo(sid, "jupyter", True)),
        reactor=MemoryReactorClock(), away=away)

    def lost_under(request: bytes) -> StringTransport:
        """`request` sent; its tunnel lost before the tool answered."""
        p = factory.buildProtocol(None)
        t = StringTransport()
        p.makeConnection(t)
        p.dataReceived(request)
        dialer.streams[-1].protocol.connectionLost(Failure(TunnelLost("tunnel lost")))
        return t

    got = b"GET /lab HTTP/1.1\r\nHost: abc.studios.test\r\n\r\n"
    assert asked == []  # (a request that reaches its tool: nothing asked)
    t = lost_under(got)
    [(status, headers, body)] = parse_responses(t.value())
    assert status == 503 and OLD_TEXT not in body, body
    assert b"lost its connection to the gateway moments ago" in body
    assert b"comes back by itself within seconds" in body
    assert headers[b"retry-after"] == b"5" and t.disconnecting
    assert asked == ["abc"]
    # Its unbind written already: connected until just now, may come back (5 s).
    store.release_tunnel(holder("abc"))
    clock.advance(3)
    t = lost_under(b"POST /lab HTTP/1.1\r\nHost: abc.studios.test\r\nContent-Length: 10"
                   b"\r\n\r\nhalf")  # the body cut short as well
    [(status, headers, body)] = parse_responses(t.value())
    assert status == 503 and b"if only its connection broke, it comes back" in body
    assert headers[b"retry-after"] == b"5" and t.disconnecting
    # The registry slow: its words for "cannot tell" after FETCH_TIMEOUT, not before.
    factory.away = lambda sid: defer.Deferred().addTimeout(FETCH_TIMEOUT, clock)
    t = lost_under(got)
    assert t.value() == b""
    clock.advance(FETCH_TIMEOUT)
    [(status, _, body)] = parse_responses(t.value())
    assert status == 503 and OLD_TEXT in body and t.disconnecting


def test_the_proxy_keeps_its_words_when_the_case_is_unknown_or_the_hook_breaks() -> None:
    assert OLD_TEXT in _one_page(lambda sid: defer.succeed(None))
    assert OLD_TEXT in _one_page(lambda sid: defer.fail(RuntimeError("broken")))
    assert OLD_TEXT in _one_page(None)


def test_the_admin_view_words() -> None:
    assert state_words(None, NOW) == "not connected"
    assert state_words({"case": "stopped", "since": NOW - 600}, NOW) == \
        "not connected (was connected until 12:30 UTC)"
    assert state_words({"case": "starting", "since": None}, NOW) == \
        "not connected (not yet: starting)"
    assert state_words({"case": "never connected"}, NOW).startswith("not connected (never")
    assert state_words({"case": "lost", "since": NOW - 600}, NOW) == \
        "not connected (connection lost, connected at 12:30 UTC)"


# SSH ----------------------------------------------------------------------------------


def test_the_ssh_refusal_says_the_same_in_one_line() -> None:
    from types import SimpleNamespace

    from studios_gateway.ssh.server import GatewayTransport, SSHSettings

    clock = Clock()
    clock.advance(NOW - 3600)
    store = MemoryStore(clock)
    store.create(record("abcd", created_at=clock.seconds()))
    settings = SSHSettings(platform_url="https://platform.example")
    me = SimpleNamespace(factory=SimpleNamespace(store=store, clock=clock, settings=settings))

    def refusal() -> str:
        got: list[str] = []
        defer.Deferred.fromCoroutine(
            GatewayTransport._not_connected(me, "abcd")).addCallback(got.append)  # type: ignore[arg-type]
        [line] = got
        assert "\n" not in line
        return line

    clock.advance(60)
    # The page reloads by itself while the studio may come within seconds; ssh does not,
    # and the refusal ended there ("it is probably still starting."), leaving the person
    # at a terminal with nothing to do: it says to try again.
    assert refusal() == ("the studio of session abcd has not connected yet (its session "
                         "was made 1 minute ago): it is probably still starting. Try ssh "
                         "again in a minute.")
    store.claim_tunnel(holder("abcd", bound_at=clock.seconds()), 30)
    clock.advance(10)
    store.release_tunnel(holder("abcd"))
    clock.advance(5)
    assert refusal().endswith("if only its connection broke, it comes back by itself "
                              "within seconds; if it was stopped, restart it from the Studios "
                              "tab of its workspace in Seqera Platform (https://platform."
                              "example). Try ssh again in a minute.")
    clock.advance(3600 - 75)
    assert refusal() == (
        "the studio of session abcd was connected until 11:41 UTC (58 minutes ago) and has "
        "not come back: if you did not stop it, restart it from the Studios tab of its "
        "workspace in Seqera Platform (https://platform.example).")
    # A store that cannot tell: the words it had.
    me.factory.store = object()
    assert refusal() == "the studio of session abcd is not connected (is it running?)"


def test_a_tunnel_lost_under_the_studio_ssh_login_says_the_case_too() -> None:
    # The stream to the studio's SSH server opened, then its tunnel was lost before that
    # server let the gateway in: the refusal said "did not accept the SSH connection
    # (tunnel lost: ...)", as of a studio whose SSH server refused, not that it comes back.
    from twisted.python.failure import Failure

    from studios_gateway.ssh.policy import Identity, LoginName, Refused
    from studios_gateway.wire.mux import TunnelLost
    from tests.unit.test_ssh_refusal_logs import _connect, _factory

    _, store = _still_claimed()
    f, _ = _factory(store)
    dialed: list[Any] = []
    f.dial = lambda sid, up: dialed.append(up) or True
    proto, _ = _connect(f)
    refused: list[Any] = []
    defer.Deferred.fromCoroutine(proto.connect_studio(
        Identity(LoginName("alice", "abc"), "SHA256:k"))).addErrback(refused.append)
    [upstream] = dialed
    upstream.connectionLost(Failure(TunnelLost("tunnel lost: nothing heard for 20s")))
    [failure] = refused
    assert failure.check(Refused) and failure.value.kind == "not_connected"
    said = failure.value.message
    assert said.startswith("the studio of session abc lost its connection to the gateway "
                           "moments ago"), said
    assert said.endswith("Try ssh again in a minute.")
