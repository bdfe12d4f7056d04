"""The login's fast path remembers its answer per Cookie line and studio: a keep-alive
browser's next request skips the cookie's scan and the look-ups, but a logout, an expiry
(cookie or decision) and a changed or revoked decision count from the very next request,
as without the memo."""

from __future__ import annotations

from typing import Any

import pytest

from studios_gateway.auth import login as login_module
from studios_gateway.auth.login import Auth
from studios_gateway.http.component import make_fast_path
from studios_gateway.http.upstream import SessionInfo
from tests.support.auth_browser import LoginDriver, request
from tests.unit.test_auth_authorizer import change, record
from tests.unit.test_auth_login import idp_login, make, run, studio
from tests.unit.test_http_proxy import OK, Harness, parse_responses


class Here:
    def is_local(self, session_id: str) -> bool:
        return True


def logged_in() -> tuple[Auth, Any, LoginDriver]:
    auth, clock, rp = make()
    b = LoginDriver(auth, external=idp_login(rp))
    run(b.open(studio("abc")))  # logs in; the decision is now cached
    return auth, clock, b


def scans(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How often the whole way (the Cookie value's scan) is taken."""
    n = [0]
    real = login_module.cookie_values

    def counting(*a: Any) -> Any:
        n[0] += 1
        return real(*a)

    monkeypatch.setattr(login_module, "cookie_values", counting)
    return n


def test_the_same_cookie_line_is_answered_from_the_memo(
        monkeypatch: pytest.MonkeyPatch) -> None:
    auth, _, b = logged_in()
    n = scans(monkeypatch)
    first = auth.authorized_now(request(studio("abc"), b.jar), "abc")
    again = auth.authorized_now(request(studio("abc", "/other"), b.jar), "abc")
    assert first is not None and again == first and n == [1]
    assert auth.authorized_now(request(studio("abc"), b.jar), "xyz") is None  # other studio
    assert n == [2]


def test_a_logout_counts_from_the_next_request(monkeypatch: pytest.MonkeyPatch) -> None:
    auth, _, b = logged_in()
    who, _ = auth.authorized_now(request(studio("abc"), b.jar), "abc")
    auth.authorizer.logout(who.login_id)
    assert auth.authorized_now(request(studio("abc"), b.jar), "abc") is None
    full = run(auth.authorize_request(request(studio("abc"), b.jar), "abc"))
    assert not hasattr(full, "subject")  # the whole way refuses it too


def test_the_cookies_expiry_counts_to_the_second() -> None:
    auth, clock, b = logged_in()
    who, _ = auth.authorized_now(request(studio("abc"), b.jar), "abc")
    # Keep the decision fresh past the cookie's end: only the cookie's time is left.
    auth.authorizer.ttl = 10 * (who.expires_at - clock.seconds())
    clock.advance(who.expires_at - clock.seconds() - 1)
    run(auth.authorizer.check("abc", "alice", max_age=0))
    assert auth.authorized_now(request(studio("abc"), b.jar), "abc") is not None
    clock.advance(1)  # now == expires_at: CookieCodec.verify refuses it
    assert auth.authorized_now(request(studio("abc"), b.jar), "abc") is None


def test_the_decisions_lifetime_counts() -> None:
    auth, clock, b = logged_in()
    assert auth.authorized_now(request(studio("abc"), b.jar), "abc") is not None
    clock.advance(119.9)
    assert auth.authorized_now(request(studio("abc"), b.jar), "abc") is not None
    clock.advance(0.1)  # the authorizer's 120 s TTL is over: ask the whole way
    assert auth.authorized_now(request(studio("abc"), b.jar), "abc") is None


def test_a_changed_or_revoked_decision_counts_from_the_next_request() -> None:
    auth, _, b = logged_in()
    assert auth.authorized_now(request(studio("abc"), b.jar), "abc") is not None
    # Decided again (the live sweep's max_age) after a change this node did not hear of.
    change(auth.authorizer._store, record("abc", owner="carol", users=()), heard=False)
    assert not run(auth.authorizer.check("abc", "alice", max_age=0)).allowed
    assert auth.authorized_now(request(studio("abc"), b.jar), "abc") is None

    auth, _, b = logged_in()
    assert auth.authorized_now(request(studio("abc"), b.jar), "abc") is not None
    auth.authorizer.revoke_user("abc", "alice")
    assert auth.authorized_now(request(studio("abc"), b.jar), "abc") is None


def test_another_users_decision_leaves_the_answer_remembered(
        monkeypatch: pytest.MonkeyPatch) -> None:
    auth, _, b = logged_in()
    n = scans(monkeypatch)
    first = auth.authorized_now(request(studio("abc"), b.jar), "abc")
    assert first is not None and n == [1]
    # Other users' decisions are made (remembered) meanwhile, allowed or not.
    assert not run(auth.authorizer.check("abc", "mallory", max_age=0)).allowed
    assert run(auth.authorizer.check("abc", "alice", max_age=0)).allowed  # alice's again
    assert auth.authorized_now(request(studio("abc"), b.jar), "abc") == first
    assert n == [2]  # alice's own decision made again: asked the whole way once
    assert run(auth.authorizer.check("abc", "bob", max_age=0)).allowed  # bob is allowed
    assert auth.authorized_now(request(studio("abc"), b.jar), "abc") == first
    assert n == [2]  # bob's: the memo still holds


def test_a_decision_pushed_out_of_the_cache_is_not_answered_from_the_memo() -> None:
    auth, _, b = logged_in()
    assert auth.authorized_now(request(studio("abc"), b.jar), "abc") is not None
    auth.authorizer._max = 1  # room for one decision: the next one pushes alice's out
    run(auth.authorizer.check("abc", "mallory", max_age=0))
    assert auth.authorizer.cached("abc", "alice") is None
    assert auth.authorized_now(request(studio("abc"), b.jar), "abc") is None


def test_several_studio_cookies_are_never_remembered(monkeypatch: pytest.MonkeyPatch) -> None:
    auth, _, b = logged_in()
    name, value = b.jar.header("abc.connect.example.test", "/lab")
    two = request(studio("abc"), headers=((name, b"x=1"), (name, value)))
    n = scans(monkeypatch)
    assert auth.authorized_now(two, "abc") is not None
    assert auth.authorized_now(two, "abc") is not None and n == [2]


def test_one_line_with_two_studio_cookies_is_never_remembered(
        monkeypatch: pytest.MonkeyPatch) -> None:
    auth, _, b = logged_in()
    value = next(f"{n}={v}" for (h, _, n), v in b.jar.cookies.items()
                 if h == "abc.connect.example.test" and n.endswith("connect_session")).encode()
    cookie_name = value.partition(b"=")[0]
    one_line = request(studio("abc"), headers=((b"Cookie", cookie_name + b"=x; " + value),))
    n = scans(monkeypatch)
    assert auth.authorized_now(one_line, "abc") is not None
    assert auth.authorized_now(one_line, "abc") is not None and n == [2]


def test_a_clock_stepped_back_past_the_cookies_issue_is_not_answered_from_the_memo() -> None:
    auth, clock, b = logged_in()
    assert auth.authorized_now(request(studio("abc"), b.jar), "abc") is not None
    clock.rightNow -= 61  # the cookie now looks issued more than SKEW (60 s) ahead
    assert auth.authorized_now(request(studio("abc"), b.jar), "abc") is None


def test_one_keep_alive_connection_is_refused_mid_way_after_a_logout() -> None:
    auth, _, b = logged_in()
    h = Harness(fast=make_fast_path(auth, Here()), local_routes=auth.handle,
                authorize=auth.authorize_request)
    h.sessions["abc"] = SessionInfo("abc", "jupyter", True)
    _, cookie = b.jar.header("abc.connect.example.test", "/lab")
    get = b"GET /lab HTTP/1.1\r\nHost: abc.studios.test\r\nCookie: " + cookie + b"\r\n\r\n"
    p, t = h.client()
    for _ in range(2):
        p.dataReceived(get)
        h.up()[0].dataReceived(OK)
    who, _ = auth.authorized_now(request(studio("abc"), b.jar), "abc")
    auth.authorizer.logout(who.login_id)
    p.dataReceived(get)
    statuses = [r[0] for r in parse_responses(t.value())]
    assert statuses == [200, 200, 302] and len(h.upstream.conns) == 1


def test_answers_past_their_time_are_let_go() -> None:
    # Each answer stayed until FAST_MEMO_MAX newer ones pushed it out, also when its Cookie
    # line never came again (a browser that logged out, a login link's one visit): soak53.
    auth, clock, b = logged_in()
    (name, line), = [h for h in request(studio("abc"), b.jar).headers
                     if h[0].lower() == b"cookie"]
    for n in range(50):
        extra = ((name, line + b"; other=%d" % n),)
        assert auth.authorized_now(request(studio("abc"), headers=extra), "abc") is not None
    assert len(auth._fast_memo) == 50
    clock.advance(120)  # the decisions' TTL is over: so are the answers
    run(auth.authorizer.check("abc", "alice", max_age=0))
    assert auth.authorized_now(request(studio("abc"), b.jar), "abc") is not None
    assert len(auth._fast_memo) == 1
