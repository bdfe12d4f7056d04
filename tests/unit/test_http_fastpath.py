"""The proxy's synchronous path: cached login, decision and session, a pooled stream."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet import defer

from studios_gateway.http.upstream import SessionInfo
from tests.support.auth_browser import LoginDriver, request
from tests.unit.test_auth_login import idp_login, make, run, studio
from tests.unit.test_http_proxy import GET, OK, Harness, parse_responses


class Who:
    subject = "alice"


def fast_harness(known: Any) -> tuple[Harness, list[str]]:
    asked: list[str] = []

    def never(what: str) -> Any:
        def hook(*args: Any) -> Any:
            asked.append(what)
            return defer.succeed(None if what == "local" else Who() if what == "authorize"
                                 else SessionInfo("abc", "jupyter", True))
        return hook

    h = Harness(fast=lambda req, sid: known, local_routes=never("local"),
                authorize=never("authorize"))
    h.factory.lookup = never("lookup")
    return h, asked


def count_deferreds(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    made = [0]
    init = defer.Deferred.__init__

    def counting(self: Any, *a: Any, **kw: Any) -> None:
        made[0] += 1
        init(self, *a, **kw)

    monkeypatch.setattr(defer.Deferred, "__init__", counting)
    return made


def test_a_cached_request_reaches_a_pooled_stream_without_a_deferred(
        monkeypatch: pytest.MonkeyPatch) -> None:
    h, asked = fast_harness((Who(), SessionInfo("abc", "jupyter", True)))
    p, t = h.client()
    p.dataReceived(GET)  # the first one opens the stream (a Deferred for that)
    h.up()[0].dataReceived(OK)
    made = count_deferreds(monkeypatch)
    p.dataReceived(GET)
    up, ut = h.up(0)
    assert made == [0] and ut.value().count(b"GET /lab HTTP/1.1") == 2
    assert b"X-Connect-Sub: alice" in ut.value() and not p.gate.paused
    up.dataReceived(OK)
    assert [r[0] for r in parse_responses(t.value())] == [200, 200]
    assert asked == [] and len(h.upstream.conns) == 1


@pytest.mark.parametrize("known", [None, (Who(), SessionInfo("abc", "jupyter", False))])
def test_anything_not_known_goes_the_full_way(known: Any) -> None:
    h, asked = fast_harness(known)
    p, _ = h.client()
    p.dataReceived(GET)
    assert asked == ["local", "authorize", "lookup"]


def test_not_a_studio_route_goes_the_full_way() -> None:
    h, asked = fast_harness((Who(), SessionInfo("abc", "jupyter", True)))
    p, t = h.client()
    p.dataReceived(b"GET / HTTP/1.1\r\nHost: studios.test\r\n\r\n")
    assert asked == ["local"] and parse_responses(t.value())[0][0] == 404


def test_the_login_answers_at_once_only_what_it_would_allow() -> None:
    auth, clock, rp = make()
    b = LoginDriver(auth, external=idp_login(rp))
    assert auth.authorized_now(request(studio("abc"), b.jar), "abc") is None  # no cookie
    run(b.open(studio("abc")))  # logs in; the decision is now cached
    who, record = auth.authorized_now(request(studio("abc"), b.jar), "abc")
    assert (who.subject, who.session_id, record.id) == ("alice", "abc", "abc")
    full = run(auth.authorize_request(request(studio("abc"), b.jar), "abc"))
    assert (full.subject, full.login_id, full.reason) == (who.subject, who.login_id,
                                                         who.reason)
    assert auth.authorized_now(request(studio("abc", "/_connect/logout"), b.jar),
                               "abc") is None  # the gateway's own route
    assert auth.authorized_now(request(studio("xyz"), b.jar), "xyz") is None  # not yet decided
    clock.advance(121)  # the decision expired: ask again
    assert auth.authorized_now(request(studio("abc"), b.jar), "abc") is None


def test_head_and_a_small_body_reach_the_tool_in_one_write() -> None:
    h = Harness()
    p, _ = h.client()
    writes: list[bytes] = []
    real = h.upstream.connect

    def connect(sid: str, factory: Any) -> Any:
        d = real(sid, factory)
        ut = h.up()[1]
        original = ut.write
        ut.write = lambda data: (writes.append(data), original(data))  # type: ignore
        return d

    h.upstream.connect = connect  # type: ignore
    p.dataReceived(b"POST /api HTTP/1.1\r\nHost: abc.studios.test\r\nContent-Length: 5\r\n"
                   b"\r\nhello")
    assert len(writes) == 1 and writes[0].endswith(b"\r\n\r\nhello")
