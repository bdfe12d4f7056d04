"""Login routes and per-request authentication, driven by a fake provider and a Clock."""

from __future__ import annotations

import html
import json
import secrets
from collections.abc import Sequence
from dataclasses import replace
from types import SimpleNamespace
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from studios_gateway.auth.authorizer import Authorizer
from studios_gateway.auth.login import (
    GATEWAY_COOKIES,
    Auth,
    Identity,
    Response,
    strip_auth_cookies,
)
from studios_gateway.auth.oidc import (
    ConfigurationError,
    LoginFailed,
    LoginResult,
    LoginUnavailable,
    OIDCError,
    StateUnknown,
    TokenSet,
    same_browser,
)
from studios_gateway.auth.settings import AuthSettings
from studios_gateway.config_loading import load_config
from tests.support.auth_browser import Jar, LoginDriver, request
from tests.unit.test_auth_authorizer import record, store_with

PROXY = "https://connect.example.test"
KEY = b"k" * 32


class FakeRP:
    """Stands in for RelyingParty: begin() and finish() with single-use states."""

    def __init__(self, clock: Clock):
        self.clock = clock
        self.pending: dict[str, tuple[str, str | None, Any]] = {}
        self.user = "alice"
        self.logins = 0
        self.tokens = TokenSet(None, None, None, None)
        self.refresh_result: Any = None
        #: The shared store of pending logins cannot be reached (as RelyingParty says).
        self.store_down = False
        #: Whether the issuer may be asked for prompt=login (RelyingParty.can_ask_again).
        self.can_ask_again = True
        #: As RelyingParty's: how long a begun login waits at the issuer.
        self.settings = SimpleNamespace(login_ttl=600.0)
        #: Each begin()'s ask_again.
        self.asked_again: list[bool] = []
        #: More claims of the ID tokens (auth_time, say).
        self.claims: dict[str, Any] = {}

    def begin(self, next_url: str, extra: Any = None, *,
              browser: str | None = None, ask_again: bool = False) -> Deferred[str]:
        if self.store_down:
            return defer.fail(LoginUnavailable("the login cannot be kept: Redis is down"))
        self.asked_again.append(ask_again)
        state = secrets.token_urlsafe(8)
        self.pending[state] = (next_url, browser, dict(extra or {}))
        prompt = "&prompt=login" if ask_again and self.can_ask_again else ""
        return defer.succeed(f"https://idp.example.org/authorize?state={state}{prompt}")

    def finish(self, params: dict[str, str],
               browsers: Sequence[str] = ()) -> Deferred[LoginResult]:
        if self.store_down:
            return defer.fail(LoginUnavailable("the login's state cannot be read: down"))
        pending = self.pending.pop(params.get("state", ""), None)
        if pending is None:
            return defer.fail(StateUnknown("the login's state is unknown, used "
                                                "already or expired"))
        next_url, browser, kept = pending
        if browser is not None and not same_browser(browser, browsers):  # as RelyingParty
            return defer.fail(LoginFailed("this login was begun in another browser"))
        if params.get("code") == "away":  # the issuer did not answer the code exchange
            away = LoginUnavailable("the identity provider could not be reached: refused")
            away.next_url, away.extra = next_url, kept  # as RelyingParty's
            return defer.fail(away)
        if params.get("code") != "good":
            refused = LoginFailed("the code exchange was refused")
            refused.next_url, refused.extra = next_url, kept  # as RelyingParty's
            return defer.fail(refused)
        self.logins += 1
        return defer.succeed(LoginResult(self.user, {"sub": self.user, **self.claims},
                                         self.tokens, next_url, kept))

    #: The issuer's host and its logout (None: it offers none), as RelyingParty's.
    issuer_host = "idp.example.org"
    end_session: str | None = "https://idp.example.org/logout"

    def logout_url(self, *, id_token: str | None = None, state: str | None = None
                   ) -> str | None:
        if self.end_session is None:
            return None
        given = {"id_token_hint": id_token, "state": state}
        return self.end_session + "?" + urlencode(
            {"client_id": "cid", **{k: v for k, v in given.items() if v}})

    def refresh(self, tokens: TokenSet) -> Deferred[TokenSet]:
        return self.refresh_result(tokens)

    def stop(self) -> None:
        return None


def idp_login(rp: FakeRP) -> Any:
    async def external(url: str) -> str:
        state = dict(parse_qsl(urlsplit(url).query))["state"]
        return f"{PROXY}/_connect/callback?state={state}&code=good"
    return external


def make(path_routing: bool = False, issuer: bool = True, environ: dict[str, str] | None = None,
         **kw: Any) -> tuple[Auth, Clock, Any]:
    clock = Clock()
    clock.advance(1_700_000_000)
    store = store_with(record("abc"), record("xyz", users=()), record("bobs", owner="bob",
                                                                      users=()))
    config = load_config(environ=environ or {})
    authorizer = Authorizer(store, clock=clock, ttl=120,
                            workspace_allowed=config.workspace_allowed)
    settings = AuthSettings(proxy_url=PROXY, studios_domain="connect.example.test",
                            path_routing=path_routing, storage_root="/nonexistent",
                            secure_cookies=True, issuer="https://idp.example.org" if issuer
                            else None, **kw)
    rp = FakeRP(clock) if issuer else None
    auth = Auth(settings, reactor=clock, authorizer=authorizer, rp=rp, key=KEY)  # type: ignore
    return auth, clock, rp


def run(d: Any) -> Any:
    """The result of a Deferred or coroutine that must have fired already."""
    if not isinstance(d, Deferred):
        d = Deferred.fromCoroutine(d)
    out: list[Any] = []
    d.addBoth(out.append)
    assert out, "did not fire synchronously"
    if hasattr(out[0], "raiseException"):
        out[0].raiseException()
    return out[0]


def studio(sid: str, path: str = "/lab") -> str:
    return f"https://{sid}.connect.example.test{path}"


# Subdomain mode -----------------------------------------------------------------------------


def test_subdomain_login_hands_off_to_the_studio_host():
    auth, _, rp = make()
    b = LoginDriver(auth, external=idp_login(rp))
    who, url = run(b.open(studio("abc", "/lab?x=1")))
    assert isinstance(who, Identity)
    assert (who.subject, who.session_id, who.reason) == ("alice", "abc", "owner")
    assert url == studio("abc", "/lab?x=1")
    assert who.header() == (b"X-Connect-Sub", b"alice")
    assert any("/_connect/handoff?code=" in v for v in b.visited)
    hosts = {(h, p, n) for (h, p, n) in b.jar.cookies}
    assert ("abc.connect.example.test", "/", "__Host-connect_session") in hosts
    # HTTPS: the login cookie is __Host- (Path=/, no Domain): no studio host can plant one.
    assert ("connect.example.test", "/", "__Host-connect_login") in hosts
    # A second studio: the proxy host's login is reused, the provider is not asked again.
    who2, _ = run(b.open(studio("xyz", "/")))
    assert isinstance(who2, Identity) and who2.session_id == "xyz"
    assert rp.logins == 1
    assert who2.login_id == who.login_id


def test_cookie_from_studio_a_opens_nothing_on_b():
    auth, _, rp = make()
    b = LoginDriver(auth, external=idp_login(rp))
    run(b.open(studio("abc")))
    value = b.jar.cookies[("abc.connect.example.test", "/", "__Host-connect_session")]
    stolen = Jar({("xyz.connect.example.test", "/", "__Host-connect_session"): value})
    resp = run(auth.authorize_request(request(studio("xyz"), stolen), "xyz"))
    assert isinstance(resp, Response) and resp.status == 302
    assert dict(resp.headers)[b"Location"].startswith(f"{PROXY}/_connect/login?next=".encode())


def test_tampered_and_expired_cookies_send_back_to_login():
    auth, clock, rp = make()
    b = LoginDriver(auth, external=idp_login(rp))
    run(b.open(studio("abc")))
    key = ("abc.connect.example.test", "/", "__Host-connect_session")
    good = b.jar.cookies[key]
    b.jar.cookies[key] = good[:-2] + ("AA" if good[-2:] != "AA" else "BB")
    resp = run(auth.authorize_request(request(studio("abc"), b.jar), "abc"))
    assert isinstance(resp, Response) and resp.status == 302
    b.jar.cookies[key] = good
    assert isinstance(run(auth.authorize_request(request(studio("abc"), b.jar), "abc")),
                      Identity)
    clock.advance(12 * 3600)
    resp = run(auth.authorize_request(request(studio("abc"), b.jar), "abc"))
    assert isinstance(resp, Response) and resp.status == 302


def test_second_user_gets_403():
    auth, _, rp = make()
    rp.user = "mallory"
    b = LoginDriver(auth, external=idp_login(rp))
    resp, _ = run(b.open(studio("abc")))
    assert isinstance(resp, Response) and resp.status == 403
    assert b"mallory" in resp.body and b"abc" in resp.body
    # For the access line (never sent): who was refused, and the authorizer's reason.
    assert (resp.user, resp.why) == ("mallory", "not allowed on this session")
    # The page says it in the person's words (it said "(not allowed on this session)")
    assert b"You are logged in as mallory, and studio abc is not shared with mallory. Ask " \
        b"its owner to share it with you, or log in as someone else." in resp.body
    assert b"session" not in resp.body


def switch_link(resp: Response) -> str:
    """The href of an "Access denied" page's "Log in as someone else"."""
    body = resp.body.decode()
    end = body.index('">Log in as someone else</a>')
    return html.unescape(body[body.rindex('<a autofocus href="', 0, end) + 19:end])


@pytest.mark.parametrize("path_routing", [False, True])
def test_log_in_as_someone_else_asks_the_issuer_again(path_routing: bool):
    """The 403's "Log in as someone else" ended the gateway's login only: the login after
    it went to the issuer, which (keeping its own login) answered at once with the same
    person. That login now asks for prompt=login; ordinary logins do not."""
    auth, _, rp = make(path_routing=path_routing)
    b = LoginDriver(auth, external=idp_login(rp))
    here = f"{PROXY}/_studio/bobs/lab" if path_routing else studio("bobs", "/lab")
    denied, _ = run(b.open(here))
    assert isinstance(denied, Response) and denied.status == 403
    assert rp.asked_again == [False]
    link = switch_link(denied)
    back = "/_studio/bobs/lab" if path_routing else here
    login = f"{PROXY}/_connect/login?" + urlencode({"next": back, "switch": "1"}, quote_via=quote)
    assert link == f"{PROXY}/_connect/logout?" + urlencode({"next": login, "switch": "1"},
                                                           quote_via=quote)
    # its "Log out" button, then the login, which asks the issuer again
    asked = run(auth.handle(request(link, b.jar)))
    assert asked.status == 200 and b'<form method="post"' in asked.body
    # It said only "Log out of the studios gateway?" to someone who asked to log in as
    # someone else: now it says why this logout comes first.
    assert b"To log in as someone else, first log out of the studios gateway: every " \
        b"studio opened with this login in this browser stops working until you log in " \
        b"again." in asked.body, asked.body
    out = run(auth.handle(request(link, b.jar, "POST")))
    # the login, naming (signed) who was just logged out
    after = dict(out.headers)[b"Location"].decode()
    assert out.status == 302 and after.startswith(login + "&was="), after
    b.jar.store("connect.example.test", out)
    rp.user = "bob"
    who, url = run(b.open(after))
    assert rp.asked_again == [False, True]
    assert any(v.endswith("&prompt=login") for v in b.visited)
    assert isinstance(who, Identity) and (who.subject, who.session_id) == ("bob", "bobs")
    assert url == here


def denied_then_switched(path_routing: bool = False) -> tuple[Auth, Clock, FakeRP, LoginDriver,
                                                              str, Any]:
    """alice logged in and refused bob's studio, then its "Log in as someone else" (the
    logout's button) up to the issuer, which answers as rp.user (set it first): the
    gateway, its clock, the issuer, the browser, the studio page, and the answer."""
    auth, clock, rp = make(path_routing=path_routing)
    rp.tokens = TokenSet("access", "alices-id-token", None, None)
    b = LoginDriver(auth, external=idp_login(rp))
    here = f"{PROXY}/_studio/bobs/lab" if path_routing else studio("bobs", "/lab")
    denied, _ = run(b.open(here))
    assert isinstance(denied, Response) and denied.status == 403
    return auth, clock, rp, b, here, switch_link(denied)


@pytest.mark.parametrize("path_routing", [False, True])
def test_a_switch_the_issuer_answers_from_its_own_login_says_so(path_routing: bool) -> None:
    """An issuer that ignores prompt=login while its own login is open answered "Log in as
    someone else" at once with the same person, who landed on the bare "Access denied"
    again with no word of why. The gateway now sees the person it just logged out for
    the switch and says the issuer kept its login: nobody is logged in, and the page
    offers the issuer's logout (with that login's ID token), whose page back leads to
    the studio's login, where bob logs in."""
    auth, _, rp, b, here, link = denied_then_switched(path_routing)
    kept, _ = run(b.open(link, method="POST"))  # the issuer answers as alice again
    assert isinstance(kept, Response) and kept.status == 403, kept
    assert rp.asked_again == [False, True]
    assert b"idp.example.org (the identity provider) did not ask who you are: it kept its " \
        b"earlier login in this browser and logged you in as alice again, and alice may " \
        b"not open studio bobs. You are not logged in to the studios gateway. To log in " \
        b"as someone else, also log out of idp.example.org" in kept.body, kept.body
    assert (kept.user, kept.why) == (
        "alice", "login as someone else answered from the issuer's earlier login")
    assert not any(n.endswith("connect_login") for (_, _, n) in b.jar.cookies)
    logout = dict(parse_qsl(urlsplit(issuer_logout_link(kept.body) or "").query))
    assert logout["id_token_hint"] == "alices-id-token"
    bob_logs_in_after_the_issuers_logout(b, rp, kept.body, here, path_routing)


def switch_login_called_back(code: str) -> tuple[Any, Any, str]:
    """A "Log in as someone else" from an "Access denied" page whose callback brings
    `code` (the fake issuer's "bad": refused, "away": not answered): the browser, the
    callback's answer, and its "Try again"."""
    auth, _, _, b, _, link = denied_then_switched()
    out = run(auth.handle(request(link, b.jar, "POST")))
    b.jar.store("connect.example.test", out)
    begun = run(auth.handle(request(dict(out.headers)[b"Location"].decode(), b.jar)))
    b.jar.store("connect.example.test", begun)
    state = dict(parse_qsl(urlsplit(dict(begun.headers)[b"Location"].decode()).query))["state"]
    answer = run(auth.handle(request(f"{PROXY}/_connect/callback?state={state}&code={code}",
                                     b.jar)))
    body = answer.body.decode()
    start = body.rindex('<a autofocus href="') + 19
    return b, answer, html.unescape(body[start:body.index('">Try again</a>')])


def test_a_failed_switch_logins_try_again_still_knows_who_was_logged_out() -> None:
    """The "Try again" of a failed "Log in as someone else" login kept switch=1 but not
    the logout's word of who it logged out: an issuer that then answered from its own
    login with that person gave the bare "Access denied" again."""
    b, refused, again = switch_login_called_back("bad")
    assert refused.status == 400, refused.body
    assert "switch=1&was=" in again, again
    kept, _ = run(b.open(again))  # the issuer answers as alice again
    assert kept.status == 403 and b"did not ask who you are" in kept.body, kept.body


def test_a_switch_login_with_the_issuer_away_at_its_callback_tries_again_as_a_switch(
        ) -> None:
    """The issuer away at the callback of a "Log in as someone else": its "Try again" was
    an ordinary login, which the issuer answered from its own login with the person just
    logged out (the bare "Access denied" again); it asks the issuer again, as a failed
    one's does."""
    b, away, again = switch_login_called_back("away")
    assert away.status == 503 and b"unavailable for a moment" in away.body, away.body
    assert "switch=1&was=" in again, again
    kept, _ = run(b.open(again))  # the issuer answers as alice again
    assert kept.status == 403 and b"did not ask who you are" in kept.body, kept.body


def test_a_switch_answered_from_the_issuers_own_login_without_its_logout() -> None:
    """The same, with an issuer that has no logout of its own: a private window, or
    closing the browser."""
    auth, _, rp, b, _, link = denied_then_switched()
    rp.end_session = None
    kept, _ = run(b.open(link, method="POST"))
    assert kept.status == 403 and b"To log in as someone else, open the studio link in a " \
        b"private window, or close the browser (every window of it)" in kept.body
    assert issuer_logout_link(kept.body) is None


def test_a_switch_answered_with_a_login_from_before_it_says_so() -> None:
    """Without the logout's word for who it was (a login address opened by hand, a name
    the issuer spells anew), an ID token whose auth_time is from before the switch
    (beyond a small skew) shows that the issuer did not ask either; a fresh one, or an
    ordinary login, is the plain "Access denied" of whoever logged in."""
    auth, clock, rp = make()
    rp.user = "carol"
    now = clock.seconds()
    login = f"{PROXY}/_connect/login?" + urlencode(
        {"next": studio("bobs"), "switch": "1", "was": "forged.value"})
    for auth_time, kept in ((now - 3600, True), (now - 31, True), (now - 29, False),
                            (now + 5, False), (None, False), ("old", False)):
        rp.claims = {} if auth_time is None else {"auth_time": auth_time}
        resp, _ = run(LoginDriver(auth, external=idp_login(rp)).open(login))
        assert isinstance(resp, Response) and resp.status == 403
        assert (b"did not ask who you are" in resp.body) is kept, (auth_time, resp.body)
        assert (b"Log in as someone else</a>" in resp.body) is not kept
    rp.claims = {"auth_time": now - 3600}
    plain, _ = run(LoginDriver(auth, external=idp_login(rp)).open(studio("bobs")))
    assert plain.status == 403 and b"did not ask who you are" not in plain.body


def test_a_switch_answered_from_the_issuers_own_login_locks_nobody_out() -> None:
    """The issuer's earlier login is no reason to refuse a person who may open the
    studio: alice's "Log in as someone else" on a studio of hers, answered as alice from
    the issuer's login, opens it as before. An expired word of who was logged out counts
    for nothing."""
    auth, clock, rp = make()
    b = LoginDriver(auth, external=idp_login(rp))
    who, _ = run(b.open(studio("abc")))
    assert isinstance(who, Identity) and who.subject == "alice"
    login = f"{PROXY}/_connect/login?" + urlencode({"next": studio("abc"), "switch": "1"})
    link = f"{PROXY}/_connect/logout?" + urlencode({"next": login, "switch": "1"})
    out = run(auth.handle(request(link, b.jar, "POST")))
    after = dict(out.headers)[b"Location"].decode()
    assert after.startswith(login + "&was=")
    b.jar.store("connect.example.test", out)
    rp.claims = {"auth_time": clock.seconds() - 3600}
    who, _ = run(b.open(after))
    assert isinstance(who, Identity) and (who.subject, who.session_id) == ("alice", "abc")
    # on bob's studio, that word of who it was (no auth_time) says it, for 10 minutes
    rp.claims = {}
    bobs = after.replace(quote(studio("abc"), safe=""), quote(studio("bobs"), safe=""))
    resp, _ = run(LoginDriver(auth, external=idp_login(rp)).open(bobs))
    assert b"did not ask who you are" in resp.body
    clock.advance(601)
    resp, _ = run(LoginDriver(auth, external=idp_login(rp)).open(bobs))
    assert resp.status == 403 and b"did not ask who you are" not in resp.body


def test_the_switch_marker_asks_nothing_more_of_a_live_login_or_a_fixed_value():
    """Anyone can link to the login with switch=1: where a login is on it goes on (the
    issuer is not asked), and only switch=1 asks; nothing of the query reaches the issuer."""
    auth, _, rp = make()
    b = LoginDriver(auth, external=idp_login(rp))
    run(b.open(studio("abc")))
    login = f"{PROXY}/_connect/login?" + urlencode({"next": studio("xyz"), "switch": "1"})
    who, _ = run(b.open(login))
    assert isinstance(who, Identity) and rp.asked_again == [False]
    for value in ("0", "true", "1 ", "login", "none"):
        fresh = LoginDriver(auth)
        resp, _ = run(fresh.open(f"{PROXY}/_connect/login?next=%2F&switch={quote(value)}"))
        assert resp is None and "prompt" not in fresh.visited[-1]
    assert rp.asked_again == [False] * 6


@pytest.mark.parametrize("path_routing", [False, True])
def test_log_in_as_someone_else_with_an_issuer_that_cannot_ask_again(path_routing: bool):
    """An issuer whose discovery document lists prompt values without "login" (some
    refuse a value they do not list): the link leads to the logout, whose page offers
    the issuer's own logout; the login is never sent prompt=login. That page said only
    "on a shared computer, log out there too" (nothing of logging in as someone else),
    and the page back from the issuer had no way on: the person had to find the studio's
    link again. Now the first page says the issuer's logout is the way to log in as
    someone else, and the page back from it links to the login for the studio."""
    auth, _, rp = make(path_routing=path_routing)
    rp.can_ask_again = False
    b = LoginDriver(auth, external=idp_login(rp))
    here = f"{PROXY}/_studio/bobs/lab" if path_routing else studio("bobs", "/lab")
    denied, _ = run(b.open(here))
    assert isinstance(denied, Response) and denied.status == 403
    link = switch_link(denied)
    back = "/_studio/bobs/lab" if path_routing else here
    assert link == f"{PROXY}/_connect/logout?" + urlencode({"back": back, "switch": "1"},
                                                           quote_via=quote)
    asked, _ = run(b.open(link))
    assert b"To log in as someone else, first log out of the studios gateway" in asked.body
    out, _ = run(b.open(link, method="POST"))
    assert out.status == 200 and b"Also log out of idp.example.org" in out.body
    assert b"To log in as someone else, also log out of idp.example.org (the identity " \
        b"provider)" in out.body
    bob_logs_in_after_the_issuers_logout(b, rp, out.body, here, path_routing)
    assert rp.asked_again == [False, False]


def bob_logs_in_after_the_issuers_logout(b: LoginDriver, rp: FakeRP, body: bytes, here: str,
                                         path_routing: bool) -> None:
    """The issuer's logout (the link on the page `body`) sends the browser back with the
    state; that page links to the login for the studio page `here`, where bob logs in."""
    state = dict(parse_qsl(urlsplit(issuer_logout_link(body) or "").query))["state"]
    returned, _ = run(b.open(f"{PROXY}/_connect/logged-out?state={quote(state)}"))
    assert b"logged out of the studios gateway and of idp.example.org" in returned.body
    back = "/_studio/bobs/lab" if path_routing else here
    login = f"{PROXY}/_connect/login?" + urlencode({"next": back}, quote_via=quote)
    assert f'<a autofocus href="{html.escape(login)}">Log in as someone else</a>'.encode() \
        in returned.body, returned.body
    rp.user = "bob"
    who, url = run(b.open(login))
    assert isinstance(who, Identity) and (who.subject, who.session_id) == ("bob", "bobs")
    assert url == here


def test_a_logout_with_an_issuer_without_an_end_session_says_to_close_the_browser():
    """The same issuer without a logout of its own: the page says how to log in as
    someone else (close the browser, then the studio link again)."""
    auth, _, rp = make()
    rp.can_ask_again = False
    rp.end_session = None
    b = LoginDriver(auth, external=idp_login(rp))
    denied, _ = run(b.open(studio("bobs")))
    out, _ = run(b.open(switch_link(denied), method="POST"))
    assert out.status == 200 and b"To log in as someone else, close the browser (every " \
        b"window of it) and open the studio link again" in out.body, out.body
    # A plain logout says what it said.
    plain = run(auth.handle(request(f"{PROXY}/_connect/logout")))
    assert b"may still be open, and this gateway cannot end it" in plain.body


def test_log_in_as_someone_else_with_login_links_leads_to_the_login_page():
    auth, _, _ = make(issuer=False)
    b = LoginDriver(auth)
    denied, _ = run(b.open(auth.mint_login_link("bobs", "alice"), method="POST"))
    assert isinstance(denied, Response) and denied.status == 403
    assert switch_link(denied) == f"{PROXY}/_connect/logout?" + urlencode(
        {"next": f"{PROXY}/_connect/login?next=" + quote(studio("bobs", "/"), safe=""),
         "switch": "1"}, quote_via=quote)
    asked, _ = run(b.open(switch_link(denied)))
    assert b"To log in as someone else, first log out" in asked.body
    # A plain logout, or one going on to another page, asks as before. So does one going
    # on to the login (a script's, a tool's link) or back to a page (both, without the
    # link's own switch=1, said "To log in as someone else" too), and links made before
    # the marker, which still log out and go on as they did.
    login = f"{PROXY}/_connect/login"
    for plain in (f"{PROXY}/_connect/logout", f"{PROXY}/_connect/logout?next=%2F",
                  f"{PROXY}/_connect/logout?next=" + quote(f"{PROXY}/_connect/loginx"),
                  f"{PROXY}/_connect/logout?next=" + quote(login, safe=""),
                  f"{PROXY}/_connect/logout?next=" + quote(f"{login}?next=%2F", safe=""),
                  f"{PROXY}/_connect/logout?" + urlencode(
                      {"next": f"{login}?next=%2F&switch=1"}),
                  f"{PROXY}/_connect/logout?" + urlencode({"back": studio("bobs", "/")}),
                  f"{PROXY}/_connect/logout?switch=yes"):
        asked, _ = run(b.open(plain))
        assert b"Log out of the studios gateway? Every studio opened with this login in " \
            b"this browser stops working until you log in again." in asked.body, asked.body


def test_a_studio_that_is_gone_says_what_may_have_happened():
    """A studio ended while its page was open: the next load said only "There is no
    studio abc.", as for a mistyped address. It is 410, not 404: the page's own
    requests get it too, and JupyterLab's file browser answered a 404 on its listing by
    asking again at once, hundreds of times a second (tests/integration/
    test_jupyterlab_ended.py)."""
    auth, _, rp = make()
    b = LoginDriver(auth, external=idp_login(rp))
    resp, _ = run(b.open(studio("gone")))
    assert isinstance(resp, Response) and resp.status == 410
    assert b"There is no studio gone. It may have been ended, or the address may be " \
        b"mistyped." in resp.body


def test_a_workspace_refusal_offers_no_other_login():
    # The studio's workspace is not in TOWER_DATA_STUDIO_ALLOWED_WORKSPACES: the page said
    # "alice may not use studio abc" and offered "Log in as someone else", which no one
    # could use to get in.
    auth, _, rp = make(environ={"TOWER_DATA_STUDIO_ALLOWED_WORKSPACES": "777"})
    resp, _ = run(LoginDriver(auth, external=idp_login(rp)).open(studio("abc")))
    assert isinstance(resp, Response) and resp.status == 403
    assert b"<title>Studio not available</title>" in resp.body
    assert (b"Studio abc belongs to a workspace that may not use studios on this gateway, "
            b"so nobody can open it.") in resp.body
    assert b"logout" not in resp.body
    assert (resp.user, resp.why) == ("alice", "the session's workspace may not use studios")


def test_handoff_code_is_single_use_and_bound_to_its_studio():
    auth, clock, rp = make()
    b = LoginDriver(auth, external=idp_login(rp))
    run(b.open(studio("abc")))
    handoff = [v for v in b.visited if "/_connect/handoff" in v][-1]  # the bound one
    resp = run(auth.handle(request(handoff, b.jar)))
    assert resp.status == 400  # replayed
    # The access line says whose and why (it said "- ... bad request").
    assert (resp.user, resp.why) == ("alice", "login hand-off used already")
    # A fresh code for abc presented on xyz's host.
    b2 = LoginDriver(auth, external=idp_login(rp))
    b2.jar = Jar({k: v for k, v in b.jar.cookies.items() if k[0] == "connect.example.test"})
    first = run(auth.handle(request(f"{PROXY}/_connect/login?next={studio('abc')}", b2.jar)))
    code_url = dict(first.headers)[b"Location"].decode()
    assert "/_connect/handoff?code=" in code_url
    moved = code_url.replace("abc.connect", "xyz.connect")
    elsewhere = run(auth.handle(request(moved)))
    assert (elsewhere.status, elsewhere.user) == (400, "alice")
    assert elsewhere.why == "login hand-off for another studio (abc)"
    # And an unused one expires.
    first = run(auth.handle(request(f"{PROXY}/_connect/login?next={studio('abc')}", b2.jar)))
    clock.advance(61)
    late = run(auth.handle(request(dict(first.headers)[b"Location"].decode())))
    assert (late.status, late.user, late.why) == (400, "alice", "login hand-off expired")


def begin_login(auth: Auth, next_url: str, jar: Jar) -> str:
    """/_connect/login in the browser of `jar`: the state it sends the issuer."""
    login = run(auth.handle(request(f"{PROXY}/_connect/login?next={next_url}", jar)))
    jar.store("connect.example.test", login)
    return dict(parse_qsl(urlsplit(dict(login.headers)[b"Location"].decode()).query))["state"]


def test_wrong_or_replayed_state_and_code_refused():
    auth, _, rp = make()
    jar = Jar()
    state = begin_login(auth, studio("abc"), jar)
    bad_code = run(auth.handle(request(f"{PROXY}/_connect/callback?state={state}&code=bad",
                                       jar)))
    assert bad_code.status == 400 and b"refused" in bad_code.body
    replay = run(auth.handle(request(f"{PROXY}/_connect/callback?state={state}&code=good",
                                     jar)))
    assert replay.status == 400 and b"finished already" in replay.body
    forged = run(auth.handle(request(f"{PROXY}/_connect/callback?state=forged&code=good")))
    assert forged.status == 400
    assert not any(k.lower() == b"set-cookie" for k, _ in forged.headers)


def test_a_handoff_made_from_someone_elses_login_logs_nobody_in() -> None:
    """Login CSRF through the hand-off: bob asks the proxy host for a hand-off to a studio
    he may use (his own login cookie) and has alice's browser open it (a link, a page's
    redirect): alice's browser got a cookie for that studio as bob, over her own. A code
    now completes only where the studio host's hand-off cookie is the one it names; an
    unbound code goes back to the proxy host once, which binds the next one to that
    cookie for the login *this* browser holds there."""
    auth, _, _ = make(issuer=False)
    alice = LoginDriver(auth)
    who, _ = run(alice.open(auth.mint_login_link("abc", "alice"), method="POST"))
    assert isinstance(who, Identity) and who.subject == "alice"
    hops = [v for v in alice.visited if "/_connect/" in v]
    assert any("bind=" in v for v in hops), hops  # the one trip back to the proxy host
    bob = LoginDriver(auth)
    run(bob.open(auth.mint_login_link("abc", "bob"), method="POST"))  # (on abc's list)
    bobs_login = {k: v for k, v in bob.jar.cookies.items() if k[0] == "connect.example.test"}
    # bob's code, bound or not, and one bound to a value of his choosing
    ask = f"{PROXY}/_connect/login?next={quote(studio('abc', '/lab'))}"
    unbound = dict(run(auth.handle(request(ask, Jar(dict(bobs_login))))).headers)[b"Location"]
    forged = "b" * 43
    bound = dict(run(auth.handle(request(f"{ask}&bind={forged}", Jar(dict(bobs_login)))))
                 .headers)[b"Location"]
    # opened in alice's browser: the unbound one goes back to the proxy host, where
    # alice's own login makes the code; the bound one is refused
    who, _ = run(alice.open(unbound.decode()))
    assert isinstance(who, Identity) and who.subject == "alice"
    refused = run(auth.handle(request(bound.decode(), alice.jar)))
    assert (refused.status, refused.user, refused.why) == (
        400, "bob", "login hand-off for another browser")
    # the page says it in a person's words (the access line keeps "hand-off")
    assert b"hand-off" not in refused.body and b"Log in again to open the studio." in \
        refused.body
    assert not any(k.lower() == b"set-cookie" for k, _ in refused.headers)
    who = run(auth.authorize_request(request(studio("abc"), alice.jar), "abc"))
    assert isinstance(who, Identity) and who.subject == "alice"
    # in a browser with no login on the proxy host, bob's code leads to the login
    stranger = LoginDriver(auth)
    page_, _ = run(stranger.open(unbound.decode()))
    assert isinstance(page_, Response) and page_.status == 401
    assert not any(n.endswith("connect_session") for (_, _, n) in stranger.jar.cookies)


def test_try_again_after_a_refused_login_leads_back_to_the_studio() -> None:
    """The "Try again" link of a refused login dropped the page it was for: users landed
    on "/" after logging in."""
    auth, _, _ = make()
    jar = Jar()
    state = begin_login(auth, studio("abc"), jar)
    refused = run(auth.handle(request(f"{PROXY}/_connect/callback?state={state}&code=bad",
                                      jar)))
    assert refused.status == 400 and b"refused" in refused.body
    again = f"{PROXY}/_connect/login?" + urlencode({"next": studio("abc")}, quote_via=quote)
    assert html.escape(again).encode() in refused.body, refused.body
    forged = run(auth.handle(request(f"{PROXY}/_connect/callback?state=x&code=y")))
    assert f'href="{PROXY}/_connect/login"'.encode() in forged.body  # its page is unknown


def test_try_again_after_a_refused_switch_login_asks_the_issuer_again() -> None:
    """A "Log in as someone else" login refused at its callback (the issuer's error, a
    code refused) or unable to begin (the shared store down): its "Try again" dropped
    switch=1, so the next try went through the issuer's own login without asking and
    back to "Access denied". It keeps it now, for such a login only (above: an ordinary
    login's "Try again" has none)."""
    auth, _, rp = make()
    jar = Jar()
    login = f"{PROXY}/_connect/login?" + urlencode({"next": studio("bobs"), "switch": "1"},
                                                   quote_via=quote)
    begun = run(auth.handle(request(login, jar)))
    jar.store("connect.example.test", begun)
    state = dict(parse_qsl(urlsplit(dict(begun.headers)[b"Location"].decode()).query))["state"]
    refused = run(auth.handle(request(f"{PROXY}/_connect/callback?state={state}&code=bad",
                                      jar)))
    assert refused.status == 400 and rp.asked_again == [True]
    assert f'<a autofocus href="{html.escape(login)}">Try again</a>'.encode() in refused.body, \
        refused.body
    rp.store_down = True
    down = run(auth.handle(request(login, jar)))
    assert down.status == 503
    assert f'<a autofocus href="{html.escape(login)}">Try again</a>'.encode() in down.body, \
        down.body


def test_a_failed_login_says_what_happened_and_what_to_do() -> None:
    """The "Login failed" page said only the reason, as the log does, from a lower-case
    letter: "the login's state is unknown, used already or expired" (measured in
    Chromium after Back into the callback). The common case is said in plain words; any
    other keeps its reason, for whoever the person asks."""
    auth, _, rp = make()
    jar = Jar()
    again = run(auth.handle(request(f"{PROXY}/_connect/callback?state=old&code=good", jar)))
    assert again.status == 400
    assert b"This login was finished already (the Back button or a reload brought you " \
        b"here again), or it waited too long. Try again." in again.body
    assert b"state is unknown" not in again.body and b">Try again</a>" in again.body
    state = begin_login(auth, studio("abc"), jar)
    refused = run(auth.handle(request(f"{PROXY}/_connect/callback?state={state}&code=bad",
                                      jar)))
    assert b"The login could not be completed: the code exchange was refused. Try again; " \
        b"if it fails again, tell your administrator what this page says." in refused.body
    # Back from the studio to the issuer's page, which sends a logged-in browser back
    # with the used state: its "Try again" led to the proxy host's "/" (Studio not found).
    b = LoginDriver(auth, external=idp_login(rp))
    who, _ = run(b.open(studio("abc")))
    assert isinstance(who, Identity)
    # (with the page its login was for, the browser is sent on there: test_login_callback_again;
    # here a login begun before that page was kept in a cookie)
    for key in [k for k in b.jar.cookies if k[2].endswith("connect_return")]:
        del b.jar.cookies[key]
    back = run(auth.handle(request(f"{PROXY}/_connect/callback?state=used&code=good", b.jar)))
    assert back.status == 200 and b"this browser is logged in as alice. Open your studio&#x27;s " \
        b"address again." in back.body


@pytest.mark.parametrize("path_routing", [False, True])
def test_a_logout_forgets_the_page_the_login_was_for(path_routing: bool) -> None:
    """connect_return (the page the browser's last login was for) outlived the logout, for
    CONNECT_LOGIN_TTL: the next person at that browser whose callback came again or late
    (the Back button to the issuer, a login left open at its form) got "Login took too
    long" with a "Log in again" to the previous person's page (the studio and the notebook
    named in its address), and after their own login was sent there. The logout clears
    it: such a callback then gets the plain "Login failed", as in a browser that never
    began a login here."""
    auth, _, rp = make(path_routing=path_routing)
    page_ = (f"{PROXY}/_studio/abc/lab/tree/pay-rises.ipynb" if path_routing
             else studio("abc", "/lab/tree/pay-rises.ipynb"))
    b = LoginDriver(auth, external=idp_login(rp))
    who, _ = run(b.open(page_))
    assert isinstance(who, Identity) and who.subject == "alice"
    assert [k for k in b.jar.cookies if k[2].endswith("connect_return")]
    late = run(auth.handle(request(f"{PROXY}/_connect/callback?state=old&code=good", b.jar)))
    assert late.status == 302  # logged in: on to that page (test_login_callback_again)
    run(b.open(f"{PROXY}/_connect/logout", method="POST"))
    assert not [k for k in b.jar.cookies if k[2].endswith("connect_return")]
    late = run(auth.handle(request(f"{PROXY}/_connect/callback?state=old&code=good", b.jar)))
    assert late.status == 400 and b"Login failed" in late.body, late.body
    assert b"pay-rises" not in late.body and b"abc" not in late.body


@pytest.mark.parametrize("path_routing", [False, True])
def test_a_callback_link_opened_in_another_browser_logs_nobody_in(path_routing: bool) -> None:
    """Login CSRF: someone began a login in their own browser, logged in at the issuer
    as themselves and sent the callback link (their state and code) to someone else,
    whose browser was then logged in as them (their studio looked like the victim's,
    what the victim typed went to it). The callback completes a login only in the
    browser that began it (a cookie set by /_connect/login)."""
    auth, _, rp = make(path_routing=path_routing)
    rp.user = "bob"
    attacker = Jar()
    bobs = f"{PROXY}/_studio/bobs/" if path_routing else studio("bobs")
    victim = Jar()
    victim_started = Jar()  # a victim that began a login of its own meanwhile
    begin_login(auth, studio("abc"), victim_started)
    for jar in (victim, victim_started):
        state = begin_login(auth, bobs, attacker)
        names = {n for (_, _, n) in attacker.cookies}
        # (and the page that login leads to, for a callback that comes after it is over)
        assert names == {"__Host-connect_browser", "__Host-connect_return"}, names
        callback = f"{PROXY}/_connect/callback?state={state}&code=good"
        refused = run(auth.handle(request(callback, jar)))
        assert refused.status == 400, refused
        assert b"begun in another browser" in refused.body
        assert not any(k.lower() == b"set-cookie" for k, _ in refused.headers)
        # "Try again" does not lead to the page the other person chose
        assert f'href="{PROXY}/_connect/login"'.encode() in refused.body
    assert rp.logins == 0
    # in the browser that began it the login completes (a new state: the first is spent)
    b = LoginDriver(auth, external=idp_login(rp), jar=attacker)
    who, _ = run(b.open(bobs))
    assert isinstance(who, Identity) and who.subject == "bob"


def test_logins_begun_in_two_tabs_both_complete() -> None:
    """The browser cookie is kept for the next login: two tabs' logins are one browser's."""
    auth, _, rp = make()
    jar = Jar()
    def browser_cookie() -> dict[Any, str]:
        return {k: v for k, v in jar.cookies.items() if k[2].endswith("connect_browser")}

    first = begin_login(auth, studio("abc"), jar)
    cookie = browser_cookie()
    second = begin_login(auth, studio("xyz"), jar)
    assert browser_cookie() == cookie and cookie  # the same value, renewed
    for state, sid in ((first, "abc"), (second, "xyz")):
        done = run(auth.handle(request(f"{PROXY}/_connect/callback?state={state}&code=good",
                                       jar)))
        assert done.status == 302, done
        assert f"https://{sid}.connect.example.test/_connect/handoff?code=" in \
            dict(done.headers)[b"Location"].decode()


def test_the_browser_cookie_never_reaches_a_tool() -> None:
    cookie = (b"Cookie", b"a=1; connect_browser=x; __Host-connect_browser=y; "
                         b"__Host-connect_return=z")
    assert strip_auth_cookies([cookie]) == [(b"Cookie", b"a=1")]


@pytest.mark.parametrize("subject, why", [
    ("a" * 257, b"has 257 characters (at most 256)"),
    ("alice\r\nX-Connect-Sub: root", b"has control characters"),
    (" alice", b"surrounding spaces"),
])
def test_an_unusable_user_claim_is_refused_at_the_callback(subject: str, why: bytes) -> None:
    """An issuer's user claim longer than a cookie names (256) got a login cookie that never
    opened anything: back to the issuer, which logged the person in again, for ever (a
    redirect loop, a code exchanged each time). One with a line break made every request
    fail where the tool's X-Connect-Sub header is built. Both are refused at once."""
    auth, _, rp = make()
    rp.user = subject
    b = LoginDriver(auth, external=idp_login(rp))
    refused, url = run(b.open(studio("abc")))
    assert isinstance(refused, Response) and refused.status == 400, refused
    assert url.startswith(f"{PROXY}/_connect/callback") and why in refused.body
    assert refused.why == "unusable sub claim"
    assert not any(n.endswith("connect_login") for (_, _, n) in b.jar.cookies)
    assert rp.logins == 1
    rp.user = "a" * 256  # the longest that works: logged in (not alice's studio: 403)
    denied, _ = run(b.open(studio("abc")))
    assert (denied.status, denied.user) == (403, "a" * 256)


def test_two_tabs_openid_logins_are_one_login_and_one_logout_ends_both() -> None:
    """One login per browser held for login links only: two OpenID logins begun in two
    tabs (before either finished) made two logins, the proxy host's cookie named the
    last, and a logout left the first tab's studio open. A callback in a browser whose
    login is on continues it (the same user) or ends it first (another user)."""
    auth, _, rp = make()
    jar = Jar()
    states = [begin_login(auth, studio(sid), jar) for sid in ("abc", "xyz")]
    b = LoginDriver(auth, jar=jar)
    who = []
    for state, sid in zip(states, ("abc", "xyz"), strict=True):
        got, _ = run(b.open(f"{PROXY}/_connect/callback?state={state}&code=good"))
        assert isinstance(got, Identity) and got.session_id == sid
        who.append(got)
    assert who[0].login_id == who[1].login_id
    run(b.open(f"{PROXY}/_connect/logout", method="POST"))
    for sid in ("abc", "xyz"):
        again = run(auth.authorize_request(request(studio(sid), jar), sid))
        assert isinstance(again, Response) and again.status == 302, sid
    # another user's callback in a browser whose login is on ends that login first
    shared = Jar()
    states = [begin_login(auth, studio(sid), shared) for sid in ("abc", "bobs")]
    alice = LoginDriver(auth, jar=shared)
    first, _ = run(alice.open(f"{PROXY}/_connect/callback?state={states[0]}&code=good"))
    assert isinstance(first, Identity) and first.subject == "alice"
    rp.user = "bob"
    second, _ = run(alice.open(f"{PROXY}/_connect/callback?state={states[1]}&code=good"))
    assert isinstance(second, Identity) and second.subject == "bob"
    assert auth.authorizer.is_logged_out(first.login_id)
    assert second.login_id != first.login_id


def test_forged_callbacks_are_a_warning_a_minute_not_one_each() -> None:
    """Anyone can ask for /_connect/callback?state=x: each was a warning of its own (the
    access log keeps a line per request all the same)."""
    from twisted.logger import LogLevel, capturedLogs, formatEvent

    auth, clock, _ = make()
    with capturedLogs() as events:
        for _ in range(5):
            forged = run(auth.handle(request(f"{PROXY}/_connect/callback?state=x&code=y")))
            assert forged.status == 400
        clock.advance(60)
        run(auth.handle(request(f"{PROXY}/_connect/callback?state=x&code=y")))
    said = [formatEvent(e) for e in events if e["log_level"] >= LogLevel.warn]
    assert len(said) == 2, said
    assert said[0].startswith("a login was refused: ") and "more like it" not in said[0]
    assert "\\x20" not in said[0] and "state is unknown" in said[0], said[0]  # read as words
    assert said[1].endswith(" (and 4 more like it in the last 60s)"), said[1]


def test_forged_callbacks_with_a_return_cookie_are_a_line_a_minute_too() -> None:
    """The return cookie (connect_return) is anyone's for a GET of /_connect/login, and
    with it a callback of a made-up state is "Login took too long": each such callback
    wrote an info line, past the line a minute the forged callbacks above are held to."""
    from twisted.logger import LogLevel, capturedLogs, formatEvent

    auth, clock, _ = make()
    jar = Jar()
    begin_login(auth, studio("abc"), jar)
    with capturedLogs() as events:
        for _ in range(5):
            forged = run(auth.handle(request(f"{PROXY}/_connect/callback?state=x&code=y",
                                             jar)))
            assert forged.status == 400 and b"Login took too long" in forged.body
        clock.advance(60)
        run(auth.handle(request(f"{PROXY}/_connect/callback?state=x&code=y", jar)))
    said = [formatEvent(e) for e in events if e["log_level"] >= LogLevel.info
            and "callback came" in formatEvent(e)]
    assert len(said) == 2, said
    assert said[1].endswith(" (and 4 more like it in the last 60s)"), said[1]


def test_non_get_and_websocket_without_cookie_get_401():
    auth, _, _ = make()
    post = run(auth.authorize_request(request(studio("abc"), method="POST"), "abc"))
    assert post.status == 401
    ws = run(auth.authorize_request(request(studio("abc"), headers=(
        (b"Upgrade", b"websocket"), (b"Connection", b"Upgrade"))), "abc"))
    assert ws.status == 401


def test_a_scripts_request_without_a_login_gets_401_not_the_login_redirect():
    """An open page whose login ended (expired, or logged out in another tab): its
    scripts' GETs were sent to the login, which a script cannot follow to any use
    (cross-origin in subdomain mode: JupyterLab said "Server Connection Error ... Check
    your network connection"). They get 401 now; a fetch's says what to do in JSON."""
    auth, _, rp = make()
    b = LoginDriver(auth, external=idp_login(rp))
    run(b.open(studio("abc")))
    run(b.open(f"{PROXY}/_connect/logout", method="POST"))

    def ask(*headers: tuple[bytes, bytes]) -> Any:
        return run(auth.authorize_request(request(studio("abc", "/api/contents"), b.jar,
                                                  headers=headers), "abc"))

    fetched = ask((b"Sec-Fetch-Mode", b"cors"), (b"Sec-Fetch-Dest", b"empty"))
    assert fetched.status == 401
    assert dict(fetched.headers)[b"Content-Type"] == b"application/json"
    said = json.loads(fetched.body)
    assert said["message"].startswith("Your login to studio abc has ended"), said
    assert "Reload the page to log in again" in said["message"]
    assert said["login"].startswith(f"{PROXY}/_connect/login?"), said
    image = ask((b"Sec-Fetch-Mode", b"no-cors"), (b"Sec-Fetch-Dest", b"image"))
    assert image.status == 401 and b"Login required" in image.body
    # A page load still goes to the login, with or without the browser's marks.
    assert ask((b"Sec-Fetch-Mode", b"navigate"), (b"Sec-Fetch-Dest", b"document")).status \
        == 302
    assert ask().status == 302


def test_a_frames_page_load_without_a_login_gets_words_it_can_show() -> None:
    """A page open whose login ended loads an iframe of the studio (VS Code's Markdown
    preview, any of its webviews): the redirect to the login, whose pages refuse every
    frame, left the frame blank with Chromium's "refused to connect". The frame gets 401
    with the words, which the studio's own pages (only they) may frame."""
    auth, _, rp = make()
    b = LoginDriver(auth, external=idp_login(rp))
    run(b.open(studio("abc")))
    run(b.open(f"{PROXY}/_connect/logout", method="POST"))

    def ask(dest: bytes) -> Any:
        return run(auth.authorize_request(request(
            studio("abc", "/static/webview/index.html"), b.jar,
            headers=((b"Sec-Fetch-Mode", b"navigate"), (b"Sec-Fetch-Dest", dest))), "abc"))

    for dest in (b"iframe", b"frame", b"embed", b"object"):
        framed = ask(dest)
        assert framed.status == 401, (dest, framed.status)
        headers = dict(framed.headers)
        assert headers[b"Content-Type"].startswith(b"text/html")
        assert headers[b"Content-Security-Policy"] == b"frame-ancestors 'self'"
        assert headers[b"X-Frame-Options"] == b"SAMEORIGIN"
        assert b"Your login to studio abc has ended" in framed.body, framed.body
        assert b"Reload the page to log in again" in framed.body
        assert b"<a " not in framed.body and b"<form" not in framed.body
        assert framed.why == "login required (a frame)"
    # The page itself still goes to the login.
    assert ask(b"document").status == 302


def test_logout_revokes_every_cookie_of_the_login():
    auth, _, rp = make()
    events: list[Any] = []
    auth.authorizer.subscribe(events.append)
    b = LoginDriver(auth, external=idp_login(rp))
    who, _ = run(b.open(studio("abc")))
    closed: list[str] = []
    auth.authorizer.track("abc", "alice", closed.append, login_id=who.login_id)
    resp, _ = run(b.open(f"{PROXY}/_connect/logout", method="POST"))
    assert resp.status == 200 and b"logged out" in resp.body
    assert closed and events[-1].kind == "login"
    # The studio cookie is still in the jar, but its login has ended.
    again = run(auth.authorize_request(request(studio("abc"), b.jar), "abc"))
    assert isinstance(again, Response) and again.status == 302


class SeenJar(Jar):
    """A jar that keeps every Set-Cookie it was given (their attributes too)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[bytes] = []

    def store(self, host: str, response: Response) -> None:
        self.seen += [v for k, v in response.headers if k.lower() == b"set-cookie"]
        super().store(host, response)


def test_a_logout_after_the_login_expired_still_closes_its_connections() -> None:
    """Expiry does not cut a WebSocket opened before it; a logout does, also once the
    login has expired: the browser keeps the login cookie a login TTL past the login's
    end (Max-Age), and the logout's post ends the login it names. That cookie opens
    nothing."""
    auth, clock, rp = make()
    jar = SeenJar()
    b = LoginDriver(auth, external=idp_login(rp), jar=jar)
    who, _ = run(b.open(studio("abc")))
    ttl = auth.settings.login_ttl
    [set_login] = [v for v in jar.seen if v.startswith(b"__Host-connect_login=")]
    assert f"; Max-Age={int(ttl) * 2};".encode() in set_login
    closed: list[str] = []
    auth.authorizer.track("abc", "alice", closed.append, login_id=who.login_id)
    clock.advance(ttl + 60)
    again = run(auth.authorize_request(request(studio("abc"), b.jar), "abc"))
    assert isinstance(again, Response) and again.status == 302  # expired: to the login
    assert not closed  # (expiry does not cut it)
    page, _ = run(b.open(f"{PROXY}/_connect/logout"))
    assert page.status == 200 and b'method="post"' in page.body and not closed
    done, _ = run(b.open(f"{PROXY}/_connect/logout", method="POST"))
    assert done.status == 200 and b"logged out" in done.body
    assert closed == ["logged out"] and auth.authorizer.is_logged_out(who.login_id)
    # A second logout finds nothing more to end: the page at once.
    out, _ = run(b.open(f"{PROXY}/_connect/logout"))
    assert out.status == 200 and b'method="post"' not in out.body


def test_a_login_cookie_kept_past_its_max_age_ends_nothing() -> None:
    """The browser keeps an expired login's cookie one login TTL (its Max-Age), for the
    logout; a copy of it sent later (this jar keeps cookies past their Max-Age, as a
    saved profile or a HAR file does) is no one's login: the logout ends nothing. It
    ended the login it named, which that user's next logins in the browser continue."""
    auth, clock, rp = make()
    b = LoginDriver(auth, external=idp_login(rp))
    who, _ = run(b.open(studio("abc")))
    closed: list[str] = []
    auth.authorizer.track("abc", "alice", closed.append, login_id=who.login_id)
    clock.advance(2 * auth.settings.login_ttl + 60)
    out, _ = run(b.open(f"{PROXY}/_connect/logout", method="POST"))
    assert out.status == 200 and b'method="post"' not in out.body
    assert not closed and not auth.authorizer.is_logged_out(who.login_id)


def test_the_next_login_in_the_browser_after_an_expiry_goes_on_with_it_or_ends_it() -> None:
    """One login per browser, an expired one too: the same user's next login continues
    it (its WebSockets still open end with that login's logout); someone else's ends it
    first, closing them (on a shared computer, the previous person's terminal)."""
    auth, clock, _ = make(issuer=False)
    b = LoginDriver(auth)
    who, _ = run(b.open(auth.mint_login_link("abc", "alice"), method="POST"))
    closed: list[str] = []
    auth.authorizer.track("abc", "alice", closed.append, login_id=who.login_id)
    clock.advance(auth.settings.login_ttl + 60)
    again, _ = run(b.open(auth.mint_login_link("abc", "alice"), method="POST"))
    assert again.login_id == who.login_id and not closed
    clock.advance(auth.settings.login_ttl + 60)
    bob, _ = run(b.open(auth.mint_login_link("bobs", "bob"), method="POST"))
    assert bob.subject == "bob" and bob.login_id != who.login_id
    assert closed == ["logged out"]


def test_a_studio_hosts_logout_is_the_proxy_hosts() -> None:
    """A studio host's /_connect/logout is its tool's origin: a post there from the tool's
    own script could not be told from the logout page's, and ended the visitor's login
    (every studio of it). It now only leads to the proxy host's logout, whose page and
    post are the gateway's alone."""
    auth, _, rp = make()
    b = LoginDriver(auth, external=idp_login(rp))
    who, _ = run(b.open(studio("abc")))
    for method in ("GET", "POST"):
        there = run(auth.handle(request(studio("abc", "/_connect/logout"), b.jar, method,
                                        ((b"Sec-Fetch-Site", b"same-origin"),))))
        assert there.status == 303
        assert dict(there.headers)[b"Location"] == f"{PROXY}/_connect/logout".encode()
        assert not auth.authorizer.is_logged_out(who.login_id)
    asked, _ = run(b.open(studio("abc", "/_connect/logout")))
    assert asked.status == 200 and b'<form method="post" action="/_connect/logout">' \
        in asked.body
    done, _ = run(b.open(f"{PROXY}/_connect/logout", method="POST"))
    assert done.status == 200 and b"You are logged out" in done.body
    assert auth.authorizer.is_logged_out(who.login_id)
    assert not any(n == "__Host-connect_login" for (_, _, n) in b.jar.cookies)


@pytest.mark.parametrize("path_routing", [False, True])
def test_a_page_elsewhere_cannot_log_anyone_out(path_routing: bool) -> None:
    """Logout CSRF: /_connect/logout was a plain GET, so any site's link or redirect, or an
    image on another studio's page (the same site in subdomain mode), ended the visitor's
    login and every studio of it; with login links (one use each) they then had to ask
    an administrator for a new one. A GET now only asks (a "Log out" button posting back),
    a post from another site is refused, and the links people have keep working."""
    auth, _, _ = make(path_routing=path_routing, issuer=False)
    b = LoginDriver(auth)
    who, _ = run(b.open(auth.mint_login_link("abc", "alice"), method="POST"))
    assert isinstance(who, Identity)
    here = f"{PROXY}/_studio/abc/" if path_routing else studio("abc", "/")
    switch = f"{PROXY}/_connect/logout?" + urlencode({"next": f"{PROXY}/_connect/login"})
    for url in (switch,):
        for site in (b"cross-site", b"same-site", None):
            hdrs = () if site is None else ((b"Sec-Fetch-Site", site),)
            asked = run(auth.handle(request(url, b.jar, headers=hdrs)))
            assert asked.status == 200 and asked.headers  # the question, nothing done
            assert not any(k.lower() == b"set-cookie" for k, _ in asked.headers)
            assert b'<form method="post"' in asked.body
        for hdrs in (((b"Sec-Fetch-Site", b"cross-site"),), ((b"Sec-Fetch-Site", b"same-site"),),
                     ((b"Origin", b"https://evil.example"),)):
            refused = run(auth.handle(request(url, b.jar, "POST", hdrs)))
            assert refused.status == 403 and b"posted from another site" in refused.body
            assert refused.why.startswith("logout posted from elsewhere")
        assert not auth.authorizer.is_logged_out(who.login_id)
        assert isinstance(run(auth.authorize_request(request(here, b.jar), "abc")), Identity)
    # The 403 page's "Log in as someone else" (a link to the logout with a next): its
    # button posts the same query, and the logout then leads to the login.
    asked = run(auth.handle(request(switch, b.jar)))
    assert html.escape(urlsplit(switch).path + "?" + urlsplit(switch).query).encode() \
        in asked.body
    done = run(auth.handle(request(switch, b.jar, "POST", ((b"Sec-Fetch-Site", b"same-origin"),))))
    assert done.status == 302 and dict(done.headers)[b"Location"] == \
        f"{PROXY}/_connect/login".encode()
    assert auth.authorizer.is_logged_out(who.login_id)


def test_refused_refresh_logs_out():
    auth, clock, rp = make()
    now = clock.seconds()
    rp.tokens = TokenSet("a", "i", "r", now + 300)
    rp.refresh_result = lambda t: defer.fail(LoginFailed("invalid_grant"))
    b = LoginDriver(auth, external=idp_login(rp))
    who, _ = run(b.open(studio("abc")))
    clock.advance(239)
    assert not auth.authorizer.is_logged_out(who.login_id)
    clock.advance(1)
    assert auth.authorizer.is_logged_out(who.login_id)


def test_refresh_keeps_refreshing_before_expiry():
    auth, clock, rp = make()
    calls: list[float] = []

    def refresh(t: TokenSet) -> Deferred[TokenSet]:
        calls.append(clock.seconds())
        return defer.succeed(TokenSet("a2", None, "r2", clock.seconds() + 300))

    rp.tokens = TokenSet("a", "i", "r", clock.seconds() + 300)
    rp.refresh_result = refresh
    run(LoginDriver(auth, external=idp_login(rp)).open(studio("abc")))
    clock.pump([60] * 20)
    assert len(calls) == 5  # every 240 s: 60 s before each expiry
    auth.stop()


def test_a_refresh_that_fails_otherwise_is_tried_again_in_30s_with_the_same_tokens():
    auth, clock, rp = make()
    given: list[tuple[float, TokenSet]] = []

    def refresh(t: TokenSet) -> Deferred[TokenSet]:
        given.append((clock.seconds(), t))
        if len(given) == 1:
            return defer.fail(OIDCError("the token refresh at http://idp/token timed out"))
        return defer.succeed(TokenSet("a2", None, "r2", clock.seconds() + 300))

    first = TokenSet("a", "i", "r", clock.seconds() + 300)
    rp.tokens = first
    rp.refresh_result = refresh
    who, _ = run(LoginDriver(auth, external=idp_login(rp)).open(studio("abc")))
    start = clock.seconds()
    clock.pump([1] * 300)
    (t1, _), (t2, tokens2) = given[:2]
    assert (t1 - start, t2 - t1) == (240, 30)
    assert (tokens2.access_token, tokens2.id_token, tokens2.refresh_token) == ("a", "i", "r")
    assert not auth.authorizer.is_logged_out(who.login_id)
    auth.stop()


def test_short_lived_tokens_are_refreshed_before_they_expire():
    auth, clock, rp = make()
    calls: list[float] = []

    def refresh(t: TokenSet) -> Deferred[TokenSet]:
        assert t.expires_at is not None and clock.seconds() < t.expires_at
        calls.append(clock.seconds())
        return defer.succeed(TokenSet("a2", None, "r2", clock.seconds() + 2))

    rp.tokens = TokenSet("a", "i", "r", clock.seconds() + 2)
    rp.refresh_result = refresh
    run(LoginDriver(auth, external=idp_login(rp)).open(studio("abc")))
    clock.pump([0.1] * 55)  # 5.5 s
    assert len(calls) == 3  # every 1.6 s: a fifth of the lifetime before expiry
    auth.stop()


# Path mode -------------------------------------------------------------------------------


def test_path_mode_sets_the_studio_prefix_cookie_directly():
    auth, _, rp = make(path_routing=True)
    b = LoginDriver(auth, external=idp_login(rp))
    who, url = run(b.open(f"{PROXY}/_studio/abc/lab/tree?x=1"))
    assert isinstance(who, Identity) and who.session_id == "abc"
    assert url == f"{PROXY}/_studio/abc/lab/tree?x=1"
    assert not any("handoff" in v for v in b.visited)
    assert ("connect.example.test", "/_studio/abc/", "connect_session") in b.jar.cookies
    # The cookie is not sent to another prefix, and is refused there if copied.
    value = b.jar.cookies[("connect.example.test", "/_studio/abc/", "connect_session")]
    copied = Jar({("connect.example.test", "/_studio/xyz/", "connect_session"): value})
    resp = run(auth.authorize_request(request(f"{PROXY}/_studio/xyz/", copied), "xyz"))
    assert isinstance(resp, Response) and resp.status == 302
    loc = dict(resp.headers)[b"Location"].decode()
    assert dict(parse_qsl(urlsplit(loc).query))["next"] == "/_studio/xyz/"


# Open redirects ----------------------------------------------------------------------------


@pytest.mark.parametrize("raw", [
    "/", "/_studio/abc/lab?x=1", studio("abc", "/x"), f"{PROXY}/somewhere",
])
def test_safe_next_accepts_our_places(raw):
    auth, _, _ = make()
    assert auth.settings.safe_next(raw) == raw


@pytest.mark.parametrize("raw", [
    "", "//evil.example", "/\\evil.example", "https://evil.example/", "http://abc.connect."
    "example.test/", "https://abc.connect.example.test.evil.example/",
    "https://user@abc.connect.example.test/", "https://abc.connect.example.test:8443/",
    "javascript:alert(1)", "https://a.b.connect.example.test/", "/x\r\nSet-Cookie: a=b",
    "https://ABC_.connect.example.test/", "data:text/html,hi", "https:/evil.example",
])
def test_safe_next_refuses_elsewhere(raw):
    auth, _, _ = make()
    assert auth.settings.safe_next(raw) is None


@given(st.text(max_size=80))
def test_safe_next_never_leaves_the_gateway(raw):
    auth, _, _ = make()
    got = auth.settings.safe_next(raw)
    if got is None:
        return
    if got.startswith("/"):
        assert not got.startswith("//") and "\\" not in got
    else:
        host = urlsplit(got).hostname or ""
        assert host == "connect.example.test" or host.endswith(".connect.example.test")


def test_login_with_foreign_next_lands_on_the_proxy_root():
    auth, _, rp = make()
    b = LoginDriver(auth, external=idp_login(rp))
    resp, url = run(b.open(f"{PROXY}/_connect/login?next=https://evil.example/"))
    assert url == f"{PROXY}/"


# Login links (no issuer) ------------------------------------------------------------------


def test_login_link_flow():
    auth, clock, _ = make(issuer=False)
    b = LoginDriver(auth)
    resp, _ = run(b.open(studio("abc")))
    assert resp.status == 401 and b"one-time links" in resp.body
    # Said to the person (after a logout, too): what to ask for, not the admin's command.
    assert b"ask the person who gave you the studio for a new login link" in resp.body
    assert b"studios-gateway" not in resp.body and b"&lt;session&gt;" not in resp.body
    link = auth.mint_login_link("abc", "alice")
    assert link.startswith(f"{PROXY}/_connect/link?token=")
    shown = run(auth.handle(request(link)))
    assert shown.status == 200 and b"<form method=\"post\"" in shown.body
    # Its button has the focus: Enter opens the studio (it was the page's body's, so a
    # person on the keyboard tabbed to it first). The logout's button too (below).
    assert b'<button type="submit" autofocus>Open studio abc</button>' in shown.body
    posted = run(auth.handle(request(auth.mint_login_link("abc", "alice"), method="POST")))
    assert posted.status == 302 and posted.user == "alice"
    # GET (a link preview) did not spend it; POST does.
    who, url = run(b.open(link, method="POST"))
    assert isinstance(who, Identity) and who.subject == "alice" and url == studio("abc", "/")
    asked = run(auth.handle(request(f"{PROXY}/_connect/logout", b.jar)))
    assert b'<button type="submit" autofocus>Log out</button>' in asked.body
    # Each refusal says in the access line whose link it was and why (it said "- ...
    # bad request"): "why could alice not log in?".
    again = run(auth.handle(request(link, method="POST")))
    assert (again.status, again.user, again.why) == (400, "alice",
                                                     "login link to abc used already")
    shown = run(auth.handle(request(link)))
    assert (shown.status, shown.user, shown.why) == (400, "alice",
                                                     "login link to abc used already")
    old = auth.mint_login_link("abc", "alice")
    clock.advance(24 * 3600)
    expired = run(auth.handle(request(old, method="POST")))
    assert (expired.status, expired.user, expired.why) == (400, "alice",
                                                           "login link to abc expired")
    forged = run(auth.handle(request(link[:-3] + "AAA", method="POST")))
    assert forged.status == 400 and forged.user == ""
    assert forged.why.startswith("login link not valid")
    # a link cut short in a mail or chat: the page names that too, and whom to ask
    # logged out, a person is told the used link will not do (links work once)
    out = run(auth.handle(request(f"{PROXY}/_connect/logout", method="POST")))
    assert b"ask the person who gave it to you for a new login link." in out.body
    cut = run(auth.handle(request(link[:60])))
    assert cut.status == 400 and b"not copied whole. Ask the person who gave it to you " \
        b"for a new one." in cut.body


def test_a_used_link_opened_again_where_it_logged_in_leads_to_the_studio():
    """The Back button from the studio (the link's page is no-store: asked again), a
    reload or a second click of the link said "Login link not valid ... Ask the person
    who gave it to you for a new one" to someone logged in with it (measured in
    Chromium). Where this browser's login is the link's user's, the page leads to the
    studio; elsewhere (no login, or someone else's) it is refused as before."""
    auth, _, _ = make(issuer=False)
    b = LoginDriver(auth)
    link = auth.mint_login_link("abc", "alice")
    who, _ = run(b.open(link, method="POST"))
    assert isinstance(who, Identity)
    for method in ("GET", "POST"):
        again = run(auth.handle(request(link, b.jar, method)))
        assert (again.status, again.user) == (200, "alice"), again.body
        assert b"still logged in as alice" in again.body
        assert f'<a autofocus href="{studio("abc", "/")}">Open studio abc</a>'.encode() \
            in again.body
        assert again.why == "login link to abc used already (still logged in)"
    assert run(auth.handle(request(link))).status == 400  # another browser
    other = LoginDriver(auth)
    run(other.open(auth.mint_login_link("abc", "bob"), method="POST"))
    refused = run(auth.handle(request(link, other.jar)))
    assert refused.status == 400 and b"Ask the person who gave it to you" in refused.body


def test_a_login_link_posted_from_another_site_is_refused_and_stays_unspent():
    """Login CSRF: a page of another site (or another studio, the same site in subdomain
    mode) auto-posting a link of its own would log the visitor in as someone else."""
    auth, _, _ = make(issuer=False)
    link = auth.mint_login_link("abc", "mallory")
    for origin in (b"https://evil.example", b"https://abc.connect.example.test", b"null"):
        refused = run(auth.handle(request(link, method="POST",
                                          headers=((b"Origin", origin),))))
        assert refused.status == 403 and b"posted from another site" in refused.body
        assert not any(k.lower() == b"set-cookie" for k, _ in refused.headers)
        assert refused.user == "mallory"
        assert refused.why.startswith("login link to abc posted from elsewhere: ")
    for site in (b"cross-site", b"same-site"):  # what a browser says of such a post
        refused = run(auth.handle(request(link, method="POST", headers=(
            (b"Origin", PROXY.encode()), (b"Sec-Fetch-Site", site)))))
        assert refused.status == 403
    # The gateway's own form: Chromium sends Origin: null (the page's Referrer-Policy is
    # no-referrer) and Sec-Fetch-Site: same-origin. Logged in; the link was unspent.
    ok = run(auth.handle(request(link, method="POST", headers=(
        (b"Origin", b"null"), (b"Sec-Fetch-Site", b"same-origin")))))
    assert ok.status == 302
    other = auth.mint_login_link("abc", "mallory")
    ok = run(auth.handle(request(other, method="POST",
                                 headers=((b"Origin", PROXY.encode()),))))
    assert ok.status == 302  # a browser without Sec-Fetch-Site: its Origin is the proxy's


@pytest.mark.parametrize("path_routing", [False, True], ids=["subdomain", "path"])
def test_a_second_login_link_continues_the_browsers_login_and_one_logout_ends_both(
        path_routing: bool) -> None:
    """Each link made a login of its own and the proxy host's login cookie named only the
    last: a logout (from any studio, or /_connect/logout) left the studios opened with
    earlier links open, their WebSockets too, while the page said "You are logged out"."""
    auth, _, _ = make(path_routing=path_routing, issuer=False)
    b = LoginDriver(auth)
    first, _ = run(b.open(auth.mint_login_link("abc", "alice"), method="POST"))
    second, _ = run(b.open(auth.mint_login_link("xyz", "alice"), method="POST"))
    assert isinstance(first, Identity) and isinstance(second, Identity)
    assert second.login_id == first.login_id
    closed: list[str] = []
    auth.authorizer.track("abc", "alice", closed.append, login_id=first.login_id)
    # Logging out from the second studio (path mode: the proxy host's logout, with it).
    run(b.open(f"{PROXY}/_connect/logout?next=/_studio/xyz/" if path_routing
               else f"{PROXY}/_connect/logout", method="POST"))
    assert closed, "the first studio's WebSocket stayed open"
    for sid in ("abc", "xyz"):
        url = f"{PROXY}/_studio/{sid}/" if path_routing else studio(sid)
        again = run(auth.authorize_request(request(url, b.jar), sid))
        assert isinstance(again, Response) and again.status in (302, 401), sid


def test_a_login_link_for_someone_else_ends_the_login_that_was_on() -> None:
    """alice's studio cookies stay in the browser after bob logs in there with his link:
    they must stop working (bob could otherwise open alice's studio)."""
    auth, _, _ = make(issuer=False)
    b = LoginDriver(auth)
    alice, _ = run(b.open(auth.mint_login_link("abc", "alice"), method="POST"))
    bob, _ = run(b.open(auth.mint_login_link("bobs", "bob"), method="POST"))
    assert isinstance(alice, Identity) and isinstance(bob, Identity) and bob.subject == "bob"
    assert auth.authorizer.is_logged_out(alice.login_id)
    assert not auth.authorizer.is_logged_out(bob.login_id)
    again = run(auth.authorize_request(request(studio("abc"), b.jar), "abc"))
    assert isinstance(again, Response) and again.status in (302, 401)


def test_a_link_for_someone_else_says_it_ends_the_login_before_the_click() -> None:
    """A link for another user (mallory sends alice one of his own) ends alice's login
    once clicked, and the studio then opens as mallory: the page said only "Log in to
    studio bobs as mallory"."""
    auth, _, _ = make(issuer=False)
    b = LoginDriver(auth)
    run(b.open(auth.mint_login_link("abc", "alice"), method="POST"))
    foreign = run(auth.handle(request(auth.mint_login_link("bobs", "mallory"), b.jar)))
    assert foreign.status == 200
    assert (b"You are logged in as alice in this browser: this ends that login, and the "
            b"studio opens as mallory.") in foreign.body
    own = run(auth.handle(request(auth.mint_login_link("xyz", "alice"), b.jar)))
    assert own.status == 200 and b"You are logged in" not in own.body


def test_no_issuer_no_callback():
    auth, _, _ = make(issuer=False)
    assert run(auth.handle(request(f"{PROXY}/_connect/callback?state=a&code=b"))).status == 404


def test_other_paths_are_not_ours():
    auth, _, _ = make()
    assert run(auth.handle(request(studio("abc", "/lab")))) is None
    assert run(auth.handle(request("https://elsewhere.test/_connect/login"))) is None
    assert run(auth.handle(request(f"{PROXY}/_connect/nope"))).status == 404


def test_strip_auth_cookies():
    headers = [(b"Host", b"x"), (b"Cookie", b"a=1; __Host-connect_session=s; connect_login=l; "
                                            b"__Host-connect_login=h"),
               (b"Cookie", b"connect_session=z")]
    assert strip_auth_cookies(headers) == [(b"Host", b"x"), (b"Cookie", b"a=1")]


def test_proxy_host_inside_the_studios_domain_is_still_the_proxy_host():
    auth, _, rp = make()
    settings = AuthSettings(proxy_url="https://connect.example.test",
                            studios_domain="example.test", path_routing=False,
                            storage_root="/nonexistent", secure_cookies=True,
                            issuer="https://idp.example.org")
    auth = Auth(settings, reactor=auth._reactor, authorizer=auth.authorizer, rp=rp, key=KEY)
    resp = run(auth.handle(request("https://connect.example.test/_connect/login?next=/")))
    assert resp.status == 302 and b"idp.example.org" in dict(resp.headers)[b"Location"]


class FlakyRP(FakeRP):
    """start() fails `failures` times as an unreachable issuer does, or with `error`."""

    def __init__(self, clock: Clock, failures: int, error: Exception | None = None):
        super().__init__(clock)
        self.failures = failures
        self.error = error or OIDCError("OpenID discovery at http://idp/x failed: "
                                        "ConnectionRefusedError")
        self.starts = 0

    def start(self) -> Deferred[None]:
        self.starts += 1
        if self.starts <= self.failures:
            return defer.fail(self.error)
        return defer.succeed(None)


def test_an_unreachable_issuer_at_start_is_asked_again_not_fatal():
    auth, clock, _ = make()
    auth.rp = rp = FlakyRP(clock, failures=3)
    started: list[Any] = []
    auth.start().addBoth(started.append)
    assert rp.starts == 1 and started == []
    clock.advance(1)
    assert rp.starts == 2
    clock.advance(2)  # backing off: 1, 2, 4 ...
    assert rp.starts == 3 and started == []
    clock.advance(4)
    assert rp.starts == 4 and started == [None]


def test_a_configuration_error_at_start_is_fatal():
    auth, clock, _ = make()
    auth.rp = FlakyRP(clock, failures=1, error=ConfigurationError("wrong token"))
    failed: list[Any] = []
    auth.start().addErrback(failed.append)
    assert failed and failed[0].check(ConfigurationError)


def test_stop_ends_the_start_retries():
    auth, clock, _ = make()
    auth.rp = rp = FlakyRP(clock, failures=100)
    auth.start()
    auth.stop()
    clock.advance(3600)
    assert rp.starts == 1


def test_a_login_while_the_issuer_is_down_says_so_and_asks_again_now():
    auth, clock, _ = make()
    auth.rp = rp = FlakyRP(clock, failures=2)
    auth.start()
    clock.advance(1)
    assert rp.starts == 2  # the next try is 2 s away ...
    clock.advance(1)
    resp = run(auth.handle(request(f"{PROXY}/_connect/login?next=/")))
    assert resp.status == 503 and b"cannot be reached" in resp.body
    clock.advance(0)
    assert rp.starts == 3  # ... but somebody wants to log in: asked at once
    resp = run(auth.handle(request(f"{PROXY}/_connect/login?next=/")))
    assert resp.status == 302 and not auth.issuer_down


def test_a_login_while_the_shared_store_is_down_says_try_again():
    """Redis (which keeps logins between their start and their callback on a cluster)
    cannot be reached at the start or at the callback: a clear 503 page with a way back,
    not a traceback; once it is back, the login works."""
    auth, _, rp = make()
    jar = Jar()
    state = begin_login(auth, studio("abc"), jar)
    rp.store_down = True
    begun = run(auth.handle(request(f"{PROXY}/_connect/login?next={studio('abc')}", jar)))
    assert begun.status == 503 and b"unavailable for a moment" in begun.body, begun.body
    assert (b"Retry-After", b"5") in begun.headers
    assert b"/_connect/login?next=https%3A%2F%2Fabc." in begun.body  # "Try again"
    back = run(auth.handle(request(f"{PROXY}/_connect/callback?state={state}&code=good",
                                   jar)))
    assert back.status == 503 and b"unavailable for a moment" in back.body, back.body
    rp.store_down = False
    again = run(auth.handle(request(f"{PROXY}/_connect/login?next={studio('abc')}", jar)))
    assert again.status == 302


def test_an_issuer_away_at_the_callback_says_try_again_to_the_same_page():
    """The issuer did not answer the code exchange (RelyingParty's LoginUnavailable with
    the login's page): 503 whose "Try again" leads back to that page, not to "/"."""
    auth, _, rp = make()
    jar = Jar()
    state = begin_login(auth, studio("abc"), jar)
    away = LoginUnavailable("the identity provider could not be reached: refused")
    away.next_url = studio("abc")
    rp.finish = lambda params, browsers=(): defer.fail(away)  # type: ignore[method-assign]
    back = run(auth.handle(request(f"{PROXY}/_connect/callback?state={state}&code=good",
                                   jar)))
    assert back.status == 503 and b"unavailable for a moment" in back.body, back.body
    assert b"/_connect/login?next=https%3A%2F%2Fabc." in back.body  # "Try again"


def test_a_login_with_two_login_cookies_is_refused():
    # Mallory's valid login cookie planted next to Alice's must not mint Mallory's studio
    # cookie for Alice's browser (nor Alice's for Mallory): the login is refused.
    auth, _, rp = make()
    alice = LoginDriver(auth, external=idp_login(rp))
    run(alice.open(studio("abc")))
    rp.user = "mallory"
    mallory = LoginDriver(auth, external=idp_login(rp))
    run(mallory.open(studio("xyz")))
    ours = [v for (_, _, n), v in alice.jar.cookies.items() if n == "__Host-connect_login"]
    planted = [v for (_, _, n), v in mallory.jar.cookies.items() if n == "__Host-connect_login"]
    login = f"{PROXY}/_connect/login?next=" + studio("xyz")
    for first, second in ((planted[0], ours[0]), (ours[0], planted[0])):
        name = "__Host-connect_login"
        cookie = (b"Cookie", f"{name}={first}; {name}={second}".encode())
        resp = run(auth.handle(request(login, headers=(cookie,))))
        assert resp.status == 400 and b"several login cookies" in resp.body
        assert not any(b"handoff" in v for k, v in resp.headers if k == b"Location")
        assert any(k == b"Set-Cookie" and v.startswith(b"__Host-connect_login=; Path=/;")
                   for k, v in resp.headers)
    # One login cookie still logs in as before.
    one = (b"Cookie", f"__Host-connect_login={ours[0]}".encode())
    assert run(auth.handle(request(login, headers=(one,)))).status == 302


def test_login_again_is_the_one_shape_of_the_proxy_hosts_login_url() -> None:
    """The "Try again" links and a studio host's trip back to bind its hand-off
    (routes._bind_handoff) make the proxy host's login URL in one place."""
    s = AuthSettings(proxy_url="https://connect.example.test:8443",
                     studios_domain="studios.example.test", path_routing=False,
                     storage_root="/nonexistent", secure_cookies=True)
    login = "https://connect.example.test:8443/_connect/login"
    assert s.login_again(None) == s.login_again("") == login
    nxt = "https://abc.studios.example.test:8443/lab?a=1&b=2"
    assert s.login_again(nxt) == f"{login}?next={quote(nxt, safe='')}"
    assert s.login_again(nxt, bind="v" * 43) == \
        f"{login}?next={quote(nxt, safe='')}&bind={'v' * 43}"
    # The proxy host's other pages, in the same shape.
    assert s.redirect_uri == "https://connect.example.test:8443/_connect/callback"
    assert s.proxy_page("logout") == "https://connect.example.test:8443/_connect/logout"
    assert s.proxy_page("link", token="ab-_.cd", next=None) == \
        "https://connect.example.test:8443/_connect/link?token=ab-_.cd"
    # A studio's origin (and a studio page's, in login_url) has the same scheme and port.
    assert s.studio_origin("abc") == s.origin("abc.studios.example.test") == \
        "https://abc.studios.example.test:8443"
    default_port = replace(s, proxy_url="http://connect.example.test")
    assert default_port.studio_origin("abc") == "http://abc.studios.example.test"


# Logging out of the issuer too ------------------------------------------------------------


def issuer_logout_link(body: bytes) -> str | None:
    """The href of the logged-out page's "Also log out of ..." link, or None."""
    import re

    found = re.search(rb'<a autofocus class=button id=issuer-logout href="([^"]*)">Also log out of '
                      rb'idp\.example\.org</a>', body)
    return html.unescape(found.group(1).decode()) if found else None


def test_the_logout_page_offers_the_issuers_logout_with_the_logins_id_token() -> None:
    """On a shared computer the issuer's own login outlived the gateway's logout: the next
    person to open a studio link was logged in as the last one, silently. The page after
    the logout now says so and links to the issuer's logout (RP-Initiated Logout), with
    the login's ID token as its hint and a state that brings the browser back."""
    auth, _, rp = make()
    rp.tokens = TokenSet(None, "alices-id-token", None, None)
    b = LoginDriver(auth, external=idp_login(rp))
    who, _ = run(b.open(studio("abc")))
    asked, _ = run(b.open(f"{PROXY}/_connect/logout"))  # the GET still ends nothing
    assert asked.status == 200 and not auth.authorizer.is_logged_out(who.login_id)
    assert issuer_logout_link(asked.body) is None
    done, _ = run(b.open(f"{PROXY}/_connect/logout", method="POST"))
    assert done.status == 200 and auth.authorizer.is_logged_out(who.login_id)
    assert b"You are logged out of the studios gateway." in done.body
    assert b"Your login at idp.example.org (the identity provider) may still be open" \
        in done.body
    link = issuer_logout_link(done.body)
    assert link is not None and link.startswith("https://idp.example.org/logout?")
    q = dict(parse_qsl(urlsplit(link).query))
    assert q["client_id"] == "cid" and q["id_token_hint"] == "alices-id-token"
    # Back from the issuer: the state this gateway signed says it was the issuer's logout.
    back, _ = run(b.open(f"{PROXY}/_connect/logged-out?state={quote(q['state'])}"))
    assert back.status == 200
    assert b"logged out of the studios gateway and of idp.example.org" in back.body
    assert b"On a shared computer, also close the browser" in back.body
    # The token was for that one logout: the page again (the login has ended) has none.
    again, _ = run(b.open(f"{PROXY}/_connect/logout"))
    link = issuer_logout_link(again.body)
    assert link is not None and "id_token_hint" not in link


def test_the_logged_out_page_ends_nothing_and_a_forged_state_says_nothing() -> None:
    auth, clock, rp = make()
    b = LoginDriver(auth, external=idp_login(rp))
    who, _ = run(b.open(studio("abc")))
    still, _ = run(b.open(f"{PROXY}/_connect/logged-out?state=x"))
    assert still.status == 200 and b"still logged in" in still.body
    assert not auth.authorizer.is_logged_out(who.login_id)
    done, _ = run(b.open(f"{PROXY}/_connect/logout", method="POST"))
    state = dict(parse_qsl(urlsplit(issuer_logout_link(done.body) or "").query))["state"]
    for forged in ("x", state[:-2] + "AA"):
        plain, _ = run(b.open(f"{PROXY}/_connect/logged-out?state={quote(forged)}"))
        assert plain.status == 200 and b"and of idp.example.org" not in plain.body
        assert issuer_logout_link(plain.body) is not None
    clock.advance(3601)  # an old state: the plain page too
    late, _ = run(b.open(f"{PROXY}/_connect/logged-out?state={quote(state)}"))
    assert b"and of idp.example.org" not in late.body
    # On a studio's host there is no such page.
    assert run(auth.handle(request(studio("abc", "/_connect/logged-out")))).status == 404


def test_without_the_issuers_logout_the_page_says_to_close_the_browser() -> None:
    auth, _, rp = make()
    rp.end_session = None
    b = LoginDriver(auth, external=idp_login(rp))
    run(b.open(studio("abc")))
    done, _ = run(b.open(f"{PROXY}/_connect/logout", method="POST"))
    assert done.status == 200 and issuer_logout_link(done.body) is None
    assert b"may still be open, and this gateway cannot end it: on a shared computer, " \
           b"close the browser" in done.body


def test_with_login_links_the_logout_page_names_no_identity_provider() -> None:
    auth, _, _ = make(issuer=False)
    done = run(auth.handle(request(f"{PROXY}/_connect/logout")))
    assert done.status == 200 and b"You are logged out of the studios gateway. To open a " \
        b"studio again, ask the person who gave it to you for a new login link.</p>" in done.body
    assert b"identity provider" not in done.body
    assert run(auth.handle(request(f"{PROXY}/_connect/logged-out"))).status == 404


def test_a_logged_out_state_counts_only_in_the_browser_given_it() -> None:
    """Anyone gets a signed state: the page after a logout (GET /_connect/logout without a
    login shows it) links to the issuer's logout with one. That state sent to someone else
    (/_connect/logged-out?state=...) made the gateway tell them "You are logged out of the
    studios gateway and of <issuer>", while their login at the issuer was still open: on a
    shared computer, the next person in as them. The state now counts only in the browser
    that got it with its page (a cookie), and once."""
    auth, _, rp = make()
    mallory = LoginDriver(auth)
    got, _ = run(mallory.open(f"{PROXY}/_connect/logout"))  # no login needed
    state = dict(parse_qsl(urlsplit(issuer_logout_link(got.body) or "").query))["state"]
    alice = LoginDriver(auth)
    told, _ = run(alice.open(f"{PROXY}/_connect/logged-out?state={quote(state)}"))
    assert told.status == 200 and b"and of idp.example.org" not in told.body
    assert issuer_logout_link(told.body) is not None  # the plain page, with the button
    # In the browser the state was given to (back from the issuer), it says so, once.
    back, _ = run(mallory.open(f"{PROXY}/_connect/logged-out?state={quote(state)}"))
    assert b"logged out of the studios gateway and of idp.example.org" in back.body
    assert b"On a shared computer, also close the browser" in back.body
    again, _ = run(mallory.open(f"{PROXY}/_connect/logged-out?state={quote(state)}"))
    assert b"and of idp.example.org" not in again.body
    # A tool cannot plant the cookie (path mode: the same origin): it is the gateway's.
    assert auth.settings.logout_cookie_name.lower() in GATEWAY_COOKIES
