"""The gateway's own pages under ``/_connect/``: logging in (through the OpenID issuer or
with a one-time link), the hand-off of a login to a studio's host, and logging out.

On the proxy host: ``login`` (begins an OpenID login, or carries an existing one to a
studio), ``callback`` (the issuer's answer), ``link`` (a one-time login link: a page
with a button, then its post) and ``logout`` (a page with a button, then its post). On
a studio's host (subdomain mode): ``handoff`` (sets that host's cookie from a one-time
code) and ``logout`` (sends the browser to the proxy host's). After a logout with an
OpenID issuer that offers its own logout, the page links to it, and ``logged-out`` (on
the proxy host) is where that logout sends the browser back. :class:`LoginRoutes`
answers them for :class:`studios_gateway.auth.login.Auth`, which keeps the per-request
decisions.
"""

from __future__ import annotations

import hashlib
import hmac
import html
import re
import secrets
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from typing import Any
from urllib.parse import urlencode

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from studios_gateway.auth.authorizer import WORKSPACE_REFUSED, Authorizer, Decision
from studios_gateway.auth.cookies import (
    LOGIN_SCOPE,
    CookieCodec,
    SessionCookie,
    Signer,
    clear_cookie_header,
    cookie_values,
    new_login_id,
    set_cookie_header,
)
from studios_gateway.auth.oidc import (
    ClientRefused,
    LoginFailed,
    LoginUnavailable,
    OIDCError,
    RelyingParty,
    StateUnknown,
    same_browser,
)
from studios_gateway.auth.onetime import OneTimeTable
from studios_gateway.auth.refresh import LoginRefresher
from studios_gateway.auth.settings import PREFIX, SWITCH, AuthSettings
from studios_gateway.http import pages
from studios_gateway.http.origin import posted_from_elsewhere
from studios_gateway.http.request import RequestInfo
from studios_gateway.registry.base import StoreUnavailable
from studios_gateway.repeats import Repeats
from studios_gateway.shown import shown

__all__ = ["LINK", "LoginRoutes", "Response", "first_live", "page", "redirect"]

#: The signed tokens' kinds: a one-time login link, a hand-off code.
LINK = "login-link/1"
HANDOFF = "handoff/1"
#: The signed state the issuer's logout brings back to ``logged-out``, and how long it is
#: good for (seconds: the person may linger on the issuer's page).
LOGOUT_RETURN = "logout-return/1"
LOGOUT_RETURN_TTL = 3600
#: Bounds on the ID tokens kept (in this process only) for the issuer's logout: how many
#: logins, and how many bytes (a token is one or two KiB).
MAX_ID_TOKENS = 10_000
MAX_ID_TOKEN_BYTES = 16 * 1024 * 1024
#: How long the browser cookie of a begun OpenID login lasts (seconds; the relying
#: party keeps a begun login 10 minutes). Each new login in the browser renews it.
BROWSER_COOKIE_TTL = 900
#: A random token's cookie value (a begun login's browser, a studio host's hand-off).
_BROWSER_VALUE = re.compile(r"[A-Za-z0-9_-]{43}")
#: The longest user name a cookie carries (cookies.SessionCookie).
MAX_SUBJECT = 256
#: "Log in as someone else": the login after its logout names who was logged out (the
#: signed digest of that user, in the login address's WAS parameter, good for
#: SWITCH_FROM_TTL seconds), and the ID token's auth_time counts as from before the
#: switch when it is more than SWITCH_SKEW seconds before it (the issuer's clock may be
#: a little behind ours; a fresh login also takes the time to type a password).
SWITCH_FROM = "switch-from/1"
#: The purpose of the return cookie's signature (RETURN_COOKIE: where a login leads).
RETURN_TO = "login-return/1"
#: A longer `next` is not kept in the return cookie (a browser keeps ~4 KiB per cookie).
RETURN_LONGEST = 3000
SWITCH_FROM_TTL = 600
WAS = "was"
SWITCH_SKEW = 30.0

# Response: what a login route answers, a page or a redirect (http/pages.py).
Response = pages.Page


def page(status: int, title: str, message: str, *, link: tuple[str, str] | None = None,
         extra_headers: Iterable[tuple[bytes, bytes]] = (), body_html: str = "") -> Response:
    """A small, self-contained HTML page (http/pages.py makes every page the gateway
    answers with). `message` is text (escaped there)."""
    return pages.page(status, title, message, link=link, body_html=body_html,
                      extra=tuple(extra_headers))


def redirect(location: str, extra_headers: Iterable[tuple[bytes, bytes]] = ()) -> Response:
    return pages.redirect(location, 302, extra=tuple(extra_headers))


def _digest(value: str) -> str:
    """A cookie value's SHA-256 (hex), for a signed token that must meet that cookie."""
    return hashlib.sha256(value.encode("ascii", "replace")).hexdigest()


def _studio_path(raw: Any) -> str:
    """A hand-off's `next` as a path on the studio's host ("/" unless it is one)."""
    path = str(raw or "/")
    return "/" if not path.startswith("/") or path.startswith("//") else path


def _unusable_subject(subject: str) -> str | None:
    """Why `subject` (an issuer's user claim) cannot name a user here, or None: a cookie
    names at most MAX_SUBJECT characters, and the tool gets it in a header."""
    if len(subject) > MAX_SUBJECT:
        return f"has {len(subject)} characters (at most {MAX_SUBJECT})"
    if any(not c.isprintable() for c in subject) or subject != subject.strip():
        return f"has control characters or surrounding spaces ({shown(subject, 64)})"
    return None


def _switch_of(extra: Any) -> Mapping[str, Any] | None:
    """What a pending login's `extra` keeps of a "Log in as someone else" (its SWITCH
    entry: when it was asked for), or None: an ordinary login."""
    kept = extra.get(SWITCH) if isinstance(extra, Mapping) else None
    return kept if isinstance(kept, Mapping) else None


def _issuer_kept_login(switch: Mapping[str, Any], subject: str,
                       claims: Mapping[str, Any]) -> bool:
    """Whether the issuer answered a "Log in as someone else" login (`switch`: what it
    kept, _switch_from) from its own earlier login rather than asking: the ID token's
    auth_time is from before the switch (by more than SWITCH_SKEW), or it names the very
    user who was logged out for it."""
    at, auth_time = switch.get("at"), claims.get("auth_time")
    if isinstance(at, int | float) and isinstance(auth_time, int | float) \
            and not isinstance(auth_time, bool) and auth_time < at - SWITCH_SKEW:
        return True
    was = switch.get("was")
    return isinstance(was, str) and hmac.compare_digest(was, _digest(subject))


def _refused_person(decision: Decision) -> bool:
    """Whether `decision` refuses the person (the "Access denied" that offers "Log in as
    someone else"), not the studio (gone, its workspace refused) nor for now (503)."""
    return not decision.allowed and decision.status == 403 \
        and decision.reason != WORKSPACE_REFUSED


def _issuer_logout_button(url: str, host: str) -> str:
    """The "Also log out of <issuer host>" button, leading to the issuer's logout."""
    return (f'<p><a autofocus class=button id=issuer-logout href="{html.escape(url)}">'
            f"Also log out of {html.escape(host)}</a></p>")


def _failed_words(failure: LoginFailed) -> str:
    """A failed login's page, for the person: what happened and what to do. The reason
    (as the log says it) was the page's only words, from a lower-case letter and in the
    protocol's terms ("the login's state is unknown, used already or expired"); it is
    kept for whoever they ask, but for the most common case, which says nothing to them
    and which trying again mends."""
    if isinstance(failure, StateUnknown):
        return ("This login was finished already (the Back button or a reload brought you "
                "here again), or it waited too long. Try again.")
    return (f"The login could not be completed: {failure}. Try again; if it fails again, "
            "tell your administrator what this page says.")


def first_live(cookies: CookieCodec, authorizer: Authorizer, values: list[str],
               scope: str) -> SessionCookie | None:
    """The first of `values` that is a cookie valid for `scope` (a session id, or the
    proxy host's LOGIN_SCOPE) whose login has not ended."""
    for value in values:
        c = cookies.verify(value, scope)
        if c is not None and not authorizer.is_logged_out(c.login_id):
            return c
    return None


class LoginRoutes:
    """The ``/_connect/`` routes. `issuer_unreachable()`: whether the OpenID issuer could
    not be reached at start (asking it again soon when so)."""

    _log = Logger()

    def __init__(self, settings: AuthSettings, *, reactor: Any, authorizer: Authorizer,
                 rp: RelyingParty | None, signer: Signer, cookies: CookieCodec,
                 refresher: LoginRefresher, issuer_unreachable: Callable[[], bool]):
        self.settings = settings
        self._reactor = reactor
        self.authorizer = authorizer
        self.rp = rp
        self._signer = signer
        self._cookies = cookies
        self._refresher = refresher
        self._issuer_unreachable = issuer_unreachable
        #: Where used login links and hand-off codes are kept (the session store).
        self._once = authorizer.login_state
        #: Refused logins' warnings: one per kind of failure and minute (see _callback).
        self._refusals = Repeats(reactor)
        #: Each OpenID login's ID token, by login id, for the issuer's logout (its
        #: id_token_hint): in this process's memory only, never in a cookie or a file; a
        #: logout through another node (or after a restart) goes without it.
        self._id_tokens: OneTimeTable[str] = OneTimeTable(
            reactor, settings.login_ttl, MAX_ID_TOKENS, MAX_ID_TOKEN_BYTES)
        #: on_login(kind, ok): a login ("oidc", "link", "handoff") succeeded or failed.
        self.on_login: Callable[[str, bool], Any] = lambda kind, ok: None

    def handle(self, request: RequestInfo) -> Deferred[Response | None]:
        """The response for one of the gateway's own routes, or None (not ours)."""
        if not request.path.startswith(PREFIX):
            return defer.succeed(None)
        return defer.maybeDeferred(self._route, request).addErrback(self._failed)

    def _failed(self, failure: Any) -> Response:
        if failure.check(StoreUnavailable):
            # Whether a link or code was used cannot be known: refuse it for now.
            unsaid = self._refusals.due("registry")
            if unsaid is not None:
                self._log.warn("a login was refused for now: {why}{more}",
                               why=failure.value.reason, more=self._refusals.more(unsaid))
            return page(503, "Try again shortly",
                        "The login cannot be checked right now; try again in a moment.",
                        extra_headers=[(b"Retry-After", b"5")])
        self._log.failure("a login route failed", failure)
        return page(503, "Login unavailable", "The login could not be completed; try again.")

    def _route(self, request: RequestInfo) -> Any:
        s = self.settings
        name = request.path[len(PREFIX):]
        host = request.hostname
        studio = None if host == s.proxy_host else s.session_of_host(host)
        if studio is not None:
            if name == "handoff":
                return self._handoff(request, studio)
            if name == "logout":
                return self._studio_logout(request, studio)
            return page(404, "Not found", "No such page.")
        if host != s.proxy_host:
            return None  # not a host of ours: let the proxy decide
        routes = {"login": self._login, "callback": self._callback, "link": self._link,
                  "logout": self._logout, "logged-out": self._logout_returned}
        handler = routes.get(name)
        if handler is None:
            return page(404, "Not found", "No such page.")
        return handler(request)

    def _login_cookie(self, request: RequestInfo) -> SessionCookie | None:
        return first_live(self._cookies, self.authorizer,
                          cookie_values(request.headers, self.settings.login_cookie_name),
                          LOGIN_SCOPE)

    def _browser_login_cookie(self, request: RequestInfo) -> SessionCookie | None:
        """The browser's login cookie, of a login that is on or one that expired without
        a logout: WebSockets opened before the expiry are still open (expiry does not cut
        them), so a logout, or the next login in this browser, is to end that login too.
        The browser keeps the cookie one CONNECT_LOGIN_TTL past the login's end for this
        alone (_complete), and it counts no longer here either: a copy kept past that
        (a browser profile's backup, a HAR file sent with a bug report) would end the
        login it names, which the same user's next logins continue, at any later time."""
        live = self._login_cookie(request)
        if live is not None:
            return live
        kept_until = self._reactor.seconds() - self.settings.login_ttl
        for value in cookie_values(request.headers, self.settings.login_cookie_name):
            c = self._cookies.ended(value, LOGIN_SCOPE)
            if c is not None and c.expires_at > kept_until \
                    and not self.authorizer.is_logged_out(c.login_id):
                return c
        return None

    def _login(self, request: RequestInfo) -> Any:
        s = self.settings
        next_url = s.safe_next(request.params().get("next")) or "/"
        if len(cookie_values(request.headers, s.login_cookie_name)) > 1:
            # The gateway sets one login cookie; a second one was planted (by a page on
            # a sibling host or path), and trying each could log this browser in as
            # whoever planted it. Clear ours and have the person clear the rest.
            self._log.warn("a login with several login cookies was refused")
            return page(400, "Login refused",
                        "Your browser sent several login cookies for this gateway, which "
                        "it never sets. Clear this site's cookies, then log in again.",
                        extra_headers=[self._proxy_cookie(s.login_cookie_name)])
        existing = self._login_cookie(request)
        if existing is not None:
            bind = request.params().get("bind", "")
            return self._complete(existing.subject, existing.login_id, existing.expires_at,
                                  next_url, new_login=False,
                                  bind=bind if _BROWSER_VALUE.fullmatch(bind) else None)
        if self.rp is None:
            # Seen by the person (after a logout, with an old bookmark, in another
            # browser): what to ask for, not the administrator's command.
            return page(401, "Login required",
                        "This browser is not logged in, or its login has ended. This gateway "
                        "logs people in with one-time links: ask the person who gave you the "
                        "studio for a new login link, then open it in this browser.")
        if self._issuer_unreachable():
            return page(503, "Login unavailable",
                        "The identity provider cannot be reached right now; try again "
                        "shortly.", extra_headers=[(b"Retry-After", b"5")])
        # The callback completes this login only in this browser: its cookie (kept for
        # the next login too, so logins begun in two tabs both work).
        browsers = self._tokens(request, s.browser_cookie_name)
        browser = browsers[0] if browsers else secrets.token_urlsafe(32)

        def begun(url: str) -> Response:
            cookies = [self._proxy_cookie(s.browser_cookie_name, browser, BROWSER_COOKIE_TTL)]
            back = self._signer.sign(RETURN_TO, {"n": next_url})
            if len(back) <= RETURN_LONGEST:
                cookies.append(self._proxy_cookie(s.return_cookie_name, back, s.login_ttl))
            return redirect(url, cookies)

        # "Log in as someone else" (switch=1): the issuer asks who this is even where its
        # own login is open. Only that fixed request: nothing of the query reaches the
        # issuer, and the worst a link of someone else's can do is have the person type
        # their password once (a live login here is continued above, the issuer unasked).
        ask_again = request.params().get(SWITCH) == "1"

        def failed(f: Any) -> Response:
            f.trap(OIDCError)
            if f.check(LoginFailed):
                return page(400, "Login failed", str(f.value))
            return self._unavailable(f.value, next_url, ask_again=ask_again)

        # The pending login keeps that it is a switch, when, and who was logged out for
        # it, for its callback (_issuer_kept_login; its "Try again").
        extra = {SWITCH: self._switch_from(request)} if ask_again else None
        return self.rp.begin(next_url, extra, browser=browser,
                             ask_again=ask_again).addCallbacks(begun, failed)

    def _login_over(self, request: RequestInfo) -> Response | None:
        """A callback whose login is over, in a browser that began one here: back to the
        page its last login was for (the return cookie), not a "Login failed" whose "Try
        again" ended at the proxy host's "/" (404). Logged in (the Back button after the
        login went back to the issuer, which answered at once): on to that page, the
        issuer unasked. Not: the login took longer than its time at the issuer; one
        click logs in again. None: no such cookie (a made-up or someone's callback)."""
        s = self.settings
        next_url = None
        for value in cookie_values(request.headers, s.return_cookie_name):
            kept = self._signer.verify(RETURN_TO, value)
            if kept is not None and isinstance(kept.get("n"), str):
                next_url = s.safe_next(kept["n"])
        if next_url is None:
            return None
        # (A line a minute with a count, as refused callbacks: the return cookie is
        # anyone's for a GET of the login page, and the state may be made up.)
        if self._login_cookie(request) is not None:
            unsaid = self._refusals.due("callback again, logged in")
            if unsaid is not None:
                self._log.info("a login's callback came again (the Back button to the "
                               "identity provider): sent on, logged in{more}",
                               more=self._refusals.more(unsaid))
            return redirect(s.login_again(next_url))
        self.on_login("oidc", False)
        minutes = (self.rp.settings.login_ttl if self.rp is not None else 600) / 60
        unsaid = self._refusals.due("callback late")
        if unsaid is not None:
            self._log.info("a login's callback came after its {minutes:.0f} minutes, or "
                           "again: asked to log in again{more}", minutes=minutes,
                           more=self._refusals.more(unsaid))
        return page(400, "Login took too long",
                    "This login was not finished in time at the identity provider (it "
                    f"waits {minutes:.0f} minutes at most), or was finished already. Log in "
                    "again to go on where you were.",
                    link=(s.login_again(next_url), "Log in again"))

    def _switch_from(self, request: RequestInfo) -> dict[str, Any]:
        """What a "Log in as someone else" login keeps until its callback: when it began
        and, when its address names them (WAS, from the logout before it), the digest of
        the user just logged out."""
        now = self._reactor.seconds()
        kept: dict[str, Any] = {"at": now}
        was = self._signer.verify(SWITCH_FROM, request.params().get(WAS, ""))
        if was is not None and isinstance(was.get("d"), str) \
                and isinstance(was.get("exp"), int) and was["exp"] > now:
            kept["was"] = was["d"]
        return kept

    def _proxy_cookie(self, name: str, value: str = "", max_age: float = 0
                      ) -> tuple[bytes, bytes]:
        """The Set-Cookie header of one of the login pages' own cookies (login, browser,
        hand-off): the login cookie's path (Path=/ under HTTPS, for the ``__Host-``
        prefix their names then carry; else ``/_connect/``). Without a value: cleared."""
        s = self.settings
        return set_cookie_header(name, value, path=s.login_cookie_path, max_age=int(max_age),
                                 secure=s.secure_cookies)

    def _studio_cookie(self, subject: str, session_id: str, login_id: str,
                       ttl: float) -> tuple[bytes, bytes]:
        """The Set-Cookie header of a studio's login cookie, valid for `ttl` seconds."""
        s = self.settings
        return set_cookie_header(
            s.studio_cookie_name, self._cookies.issue(subject, session_id, login_id, ttl),
            path=s.studio_cookie_path(session_id), max_age=int(ttl), secure=s.secure_cookies)

    def _unavailable(self, why: Any, next_url: str | None, *, ask_again: bool = False,
                     again: str | None = None) -> Response:
        """The "try again in a moment" page: the store that keeps logins between their
        start and their callback (Redis) cannot be reached, or the issuer could not be at
        the callback. `ask_again`: the login was a "Log in as someone else" (its "Try
        again" is one too). `again`: that link, made already (see :meth:`_try_again`)."""
        unsaid = self._refusals.due("LoginUnavailable")
        if unsaid is not None:
            self._log.warn("a login could not go on: {why}{more}", why=str(why),
                           more=self._refusals.more(unsaid))
        return page(503, "Login unavailable",
                    "Login is unavailable for a moment; try again shortly.",
                    link=(again or self.settings.login_again(next_url, ask_again=ask_again),
                          "Try again"),
                    extra_headers=[(b"Retry-After", b"5")])

    def _try_again(self, refused: Any) -> str:
        """The "Try again" of a login refused or unavailable at its callback: back to the
        page the login was for, not "/", asking the issuer again when that login did ("Log
        in as someone else"; else the issuer's own login answered as the same person)."""
        switch = _switch_of(getattr(refused, "extra", None))
        again = self.settings.login_again(getattr(refused, "next_url", None),
                                          ask_again=switch is not None)
        if switch is not None and isinstance(switch.get("was"), str):
            again = self._naming_who_was(again, switch["was"])  # (still who it was)
        return again

    @staticmethod
    def _tokens(request: RequestInfo, name: str) -> list[str]:
        """The well-formed values (random tokens) of the cookie `name` the request brings:
        the browser cookie of a begun login, a studio host's hand-off cookie."""
        return [v for v in cookie_values(request.headers, name) if _BROWSER_VALUE.fullmatch(v)]

    def _callback(self, request: RequestInfo) -> Any:
        if self.rp is None:
            return page(404, "Not found", "No such page.")
        rp = self.rp
        d = rp.finish(request.params(),
                           self._tokens(request, self.settings.browser_cookie_name))

        def failed(f: Any) -> Response:
            f.trap(LoginFailed, OIDCError)
            if f.check(LoginUnavailable):
                self.on_login("oidc", False)
                return self._unavailable(f.value, None, again=self._try_again(f.value))
            if f.check(StateUnknown):
                over = self._login_over(request)
                if over is not None:
                    return over
                on = self._login_cookie(request)
                if on is not None:
                    # Logged in, no page of a login of this browser's to go on to (begun
                    # before connect_return was set): "Try again" led to the login without
                    # a page, the proxy host's "/" ("Studio not found").
                    return replace(page(200, "Logged in",
                                        f"This login was finished already: this browser is "
                                        f"logged in as {on.subject}. Open your studio's "
                                        "address again."), user=on.subject)
            # Anyone can ask for /_connect/callback?state=x (each has its access line):
            # a line per kind of failure and minute, with the count of the others.
            client = f.check(ClientRefused) is not None
            unsaid = self._refusals.due(type(f.value).__name__)
            if unsaid is not None:
                # The issuer refusing the gateway's own client is the operator's to fix
                # (every login fails): an error, apart from people's refused logins.
                (self._log.error if client else self._log.warn)(
                    "a login was refused: {why}{more}",
                    why=shown(str(f.value), 600 if client else 300, words=True),
                    more=self._refusals.more(unsaid))
            self.on_login("oidc", False)
            if client:
                return page(502, "Login unavailable",
                            f"{rp.issuer_host} (the identity provider) does not accept "
                            "this gateway's configuration, so nobody can log in here at the "
                            "moment. Your account is not the cause: tell your administrator.")
            return page(400, "Login failed", _failed_words(f.value),
                        link=(self._try_again(f.value), "Try again"))

        def done(result: Any) -> Response | Deferred[Response]:
            subject = result.claims.get(self.settings.user_claim)
            if not isinstance(subject, str) or not subject:
                return page(400, "Login failed",
                            f"The identity provider sent no {self.settings.user_claim} claim.")
            unusable = _unusable_subject(subject)
            if unusable is not None:
                # A cookie would carry it but never open anything (longer than a cookie
                # may name: back to the issuer, which logs the person in again, for ever)
                # or the tool's header could not carry it.
                self._log.warn("a login was refused: the {claim} claim {why}",
                               claim=self.settings.user_claim, why=unusable)
                self.on_login("oidc", False)
                return replace(page(400, "Login failed",
                                    f"The identity provider's {self.settings.user_claim} "
                                    f"claim for you {unusable}, so it cannot name you on "
                                    "this gateway. Ask your administrator."),
                               why=f"unusable {self.settings.user_claim} claim")
            switch = _switch_of(result.extra)
            sid, _ = self.settings.studio_of_next(result.next_url)
            if switch is None or sid is None \
                    or not _issuer_kept_login(switch, subject, result.claims):
                return log_in(result, subject)
            # "Log in as someone else", answered from the issuer's earlier login: one who
            # may open the studio goes in; one who may not learns why, instead of the
            # bare "Access denied" again.
            return self.authorizer.check(sid, subject).addCallback(
                lambda decision: log_in(result, subject) if not _refused_person(decision)
                else self._kept_login(subject, sid, result))

        def log_in(result: Any, subject: str) -> Response:
            login_id = self._browser_login(self._browser_login_cookie(request), subject,
                                           "logged in")
            expires = self._reactor.seconds() + self.settings.login_ttl
            self._refresher.begin(login_id, result.tokens, expires)
            id_token = result.tokens.id_token
            if id_token:
                self._id_tokens.put(id_token, login_id, size=len(id_token))
            self._log.info("{user} logged in", user=subject)
            self.on_login("oidc", True)
            return self._complete(subject, login_id, expires, result.next_url, new_login=True)

        return d.addCallbacks(done, failed)

    def _kept_login(self, subject: str, session_id: str, result: Any) -> Response:
        """The page for a "Log in as someone else" that the issuer answered from its own
        earlier login (it ignored prompt=login), as `subject`, who may not open the
        studio: nobody is logged in here (the gateway's login of this browser stays
        ended); the page says why, and offers the issuer's logout (with this login's ID
        token), whose page back leads to the studio's login, or a private window."""
        assert self.rp is not None
        host = self.rp.issuer_host
        self._log.info("{user} was not logged in: the issuer answered a login as someone "
                       "else from its earlier login", user=subject)
        self.on_login("oidc", False)
        said = (f"{host} (the identity provider) did not ask who you are: it kept its "
                f"earlier login in this browser and logged you in as {subject} again, and "
                f"{subject} may not open studio {session_id}. You are not logged in to the "
                "studios gateway.")
        link = self._issuer_logout(result.tokens.id_token, back=result.next_url)
        if link is None:
            refusal = page(403, "Access denied",
                           f"{said} To log in as someone else, open the studio link in a "
                           "private window, or close the browser (every window of it) and "
                           "open the studio link again.")
        else:
            url, cookie = link
            refusal = page(403, "Access denied",
                           f"{said} To log in as someone else, also log out of {host}, "
                           "then open the studio link again, or open it in a private "
                           "window.",
                           body_html=_issuer_logout_button(url, host),
                           extra_headers=[cookie])
        return replace(refusal, user=subject,
                       why="login as someone else answered from the issuer's earlier login")

    def _complete(self, subject: str, login_id: str, expires_at: float, next_url: str, *,
                  new_login: bool, bind: str | None = None) -> Response:
        """Set the cookies a fresh login needs and send the browser on. `bind`: the studio
        host's hand-off cookie the hand-off must meet there (see _handoff)."""
        s = self.settings
        now = self._reactor.seconds()
        ttl = max(0.0, expires_at - now)
        headers: list[tuple[bytes, bytes]] = []
        if new_login:  # (kept by the browser past its end: _browser_login_cookie)
            headers.append(self._proxy_cookie(
                s.login_cookie_name, self._cookies.issue(subject, LOGIN_SCOPE, login_id, ttl),
                ttl + s.login_ttl))
        session_id, path = s.studio_of_next(next_url)
        if session_id is None:
            return redirect(next_url, headers)
        if s.path_routing:
            headers.append(self._studio_cookie(subject, session_id, login_id, ttl))
            return redirect(next_url, headers)
        claims = {"sub": subject, "sid": session_id, "lid": login_id, "lexp": int(expires_at),
                  "next": path, "exp": int(now + s.handoff_ttl),
                  "jti": secrets.token_urlsafe(12)}
        if bind is not None:
            claims["bind"] = bind
        code = self._signer.sign(HANDOFF, claims)
        return redirect(f"{s.studio_origin(session_id)}{PREFIX}handoff?code={code}", headers)

    def _handoff(self, request: RequestInfo, session_id: str) -> Any:
        s = self.settings
        data = self._signer.verify(HANDOFF, request.params().get("code", ""))
        now = self._reactor.seconds()
        again = self.settings.login_again(s.studio_url(session_id))
        # Seen on Back or a reload after a login, or a link opened in another browser:
        # in the person's words ("hand-off" is the gateway's), and what to do.
        expired = page(400, "Login link expired",
                       "This step of the login was used already, took too long, or was "
                       "started in another browser or for another studio. Log in again to "
                       "open the studio.", link=(again, "Log in again"))
        if data is None or not isinstance(data.get("exp"), int) \
                or not isinstance(data.get("jti"), str):
            self.on_login("handoff", False)
            return replace(expired, why="login hand-off not valid")
        # For the access line: whose hand-off it was, and why it was refused.
        user = str(data.get("sub", ""))
        if data["exp"] <= now or data.get("sid") != session_id:
            self.on_login("handoff", False)
            why = ("login hand-off expired" if data["exp"] <= now else
                   f"login hand-off for another studio ({shown(str(data.get('sid')), 64)})")
            return replace(expired, user=user, why=why)
        # A code is anyone's who holds it: someone could make one from their own login
        # and have another person's browser open it (a link, a redirect), logging that
        # browser in to the studio as them, over its own cookie. So a code completes only
        # where this host's hand-off cookie is the one it names; an unbound code (from
        # the login, which cannot read this host's cookies) is sent back to the proxy host
        # once with that cookie's value, and the proxy host binds the code it makes to it
        # for the login this browser holds there.
        mine = self._tokens(request, s.handoff_cookie_name)
        bind = data.get("bind")
        if bind is None:
            return self._bind_handoff(session_id, data, mine)
        if not isinstance(bind, str) or not same_browser(bind, mine):
            self.on_login("handoff", False)
            return replace(expired, user=user, why="login hand-off for another browser")

        def spent(fresh: bool) -> Response:
            self.on_login("handoff", fresh)
            if fresh:
                return replace(self._handed_off(data, session_id, again), user=user)
            return replace(expired, user=user, why="login hand-off used already")

        return self._spend(data).addCallback(spent)

    def _bind_handoff(self, session_id: str, data: Mapping[str, Any],
                      mine: list[str]) -> Response:
        """Send an unbound hand-off back to the proxy host's login, with this host's
        hand-off cookie (set now if the browser has none) to bind the next code to."""
        s = self.settings
        value = mine[0] if mine else secrets.token_urlsafe(32)
        back = s.login_again(s.studio_origin(session_id) + _studio_path(data.get("next")),
                             bind=value)
        return redirect(back, [self._proxy_cookie(s.handoff_cookie_name, value, s.login_ttl)])

    def _handed_off(self, data: Mapping[str, Any], session_id: str, again: str) -> Response:
        now = self._reactor.seconds()
        login_id, subject = str(data["lid"]), str(data["sub"])
        if self.authorizer.is_logged_out(login_id):
            return replace(page(400, "Logged out", "This login has ended.",
                                link=(again, "Log in")), why="the login has ended (logged out)")
        ttl = max(0.0, float(data.get("lexp", 0)) - now)
        return redirect(_studio_path(data.get("next")),
                        [self._studio_cookie(subject, session_id, login_id, ttl)])

    def _spend(self, data: Mapping[str, Any]) -> Deferred[bool]:
        """Spend a verified link's or code's id on every node: True the first time.
        Fails with StoreUnavailable when that cannot be known (the route answers 503)."""
        jti = data["jti"]
        ttl = max(0.001, float(data["exp"]) - self._reactor.seconds())
        return defer.maybeDeferred(self._once.spend_once, jti, ttl)

    def _link(self, request: RequestInfo) -> Any:
        token = request.params().get("token", "")
        data = self._signer.verify(LINK, token)
        now = self._reactor.seconds()
        invalid = page(400, "Login link not valid",
                       "This login link was used already, has expired, or was not copied "
                       "whole. Ask the person who gave it to you for a new one.")
        if data is None or not isinstance(data.get("exp"), int) \
                or not isinstance(data.get("sid"), str) or not isinstance(data.get("sub"), str) \
                or not isinstance(data.get("jti"), str):
            self.on_login("link", False)
            return replace(invalid, why="login link not valid (not one of this gateway's, or "
                                        "cut short)")
        # For the access line: whose link it is and why it was refused (the link's
        # signature is checked, so its user and session are the gateway's own words).
        user, sid = data["sub"], data["sid"]
        if data["exp"] <= now:
            self.on_login("link", False)
            return replace(invalid, user=user, why=f"login link to {sid} expired")
        if request.method != "POST":
            # Link scanners and previews only GET: spend the link on a deliberate click.
            action = html.escape(f"{PREFIX}link?" + urlencode({"token": token}))
            form = (f'<form method="post" action="{action}"><button type="submit" autofocus>'
                    f"Open studio {html.escape(data['sid'])}</button></form>")
            text = f"Log in to studio {data['sid']} as {data['sub']}."
            previous = self._login_cookie(request)
            if previous is not None and previous.subject != data["sub"]:
                # Someone else's link (sent to this person, say): the click would end
                # their own login here and make them work as that user. Say so first.
                text += (f" You are logged in as {previous.subject} in this browser: "
                         f"this ends that login, and the studio opens as {data['sub']}.")
            confirm = page(200, "Open studio", text, body_html=form)
            used = self._used_link(data, previous, invalid)
            return defer.maybeDeferred(self._once.is_spent, data["jti"]).addCallback(
                lambda spent: used if spent else confirm)
        why = posted_from_elsewhere(request.header(b"sec-fetch-site"),
                                    request.header(b"origin"), request.host)
        if why is not None:
            # A form on another site (another studio's page, too: the same site in
            # subdomain mode) posting a link of its own would log this browser in as
            # someone else (login CSRF); the link stays unspent.
            self._log.info("refused a login link's post to {session}: {why}",
                           session=data["sid"], why=why)
            return replace(page(403, "Login refused",
                                "This login link was posted from another site. Open the link "
                                "itself in your browser to log in."),
                           user=user, why=f"login link to {sid} posted from elsewhere: {why}")

        def spent(fresh: bool) -> Response:
            self.on_login("link", fresh)
            if fresh:
                return self._link_spent(data, self._browser_login_cookie(request))
            return self._used_link(data, self._login_cookie(request), page(
                400, "Login link not valid", "This login link was used already."))

        return self._spend(data).addCallback(spent)

    def _used_link(self, data: Mapping[str, Any], previous: SessionCookie | None,
                   invalid: Response) -> Response:
        """The answer to a link used already: `invalid`, unless this browser is logged in
        as the link's user (`previous`, a login that is on), most often because it used
        the link itself: the Back button from the studio, a reload of the link's page, a
        second click. Those said "ask the person who gave it to you for a new one" to
        someone who needed none; they get the studio's address instead."""
        user, sid = data["sub"], data["sid"]
        why = f"login link to {sid} used already"
        if previous is None or previous.subject != user:
            return replace(invalid, user=user, why=why)
        return replace(page(200, "Open studio",
                            f"This login link was used already. This browser is still "
                            f"logged in as {user}: studio {sid} opens without it.",
                            link=(self.settings.studio_url(sid), f"Open studio {sid}")),
                       user=user, why=f"{why} (still logged in)")

    def _browser_login(self, previous: SessionCookie | None, subject: str, how: str) -> str:
        """The login id for `subject` logging in where `previous` (the browser's login
        cookie, of a login on or expired) was: one login per browser. The same user's
        login goes on (so one logout ends every studio this browser opened, and the
        WebSockets an expired login left open); another user's ends first (its studios'
        cookies stay in this browser, and its logout could no longer reach them)."""
        if previous is not None and previous.subject == subject:
            return str(previous.login_id)
        if previous is not None:
            self.authorizer.logout(previous.login_id)
            self._id_tokens.take(previous.login_id)
            self._log.info("{user} logged out: {other} {how} in the same browser",
                           user=previous.subject, other=subject, how=how)
        return new_login_id()

    def _link_spent(self, data: Mapping[str, Any], previous: SessionCookie | None) -> Response:
        """Log the link's user in. One login per browser: a link used where that user's
        login is on continues it (so one logout ends every studio this browser opened),
        and a link for someone else ends the login that was on (its studios' cookies stay
        in this browser, and its logout could no longer reach them)."""
        s = self.settings
        now = self._reactor.seconds()
        login_id = self._browser_login(previous, data["sub"], "logged in with a login link")
        self._log.info("{user} logged in with a login link to {session}", user=data["sub"],
                       session=data["sid"])
        done = self._complete(data["sub"], login_id, now + s.login_ttl,
                              s.studio_url(data["sid"]), new_login=True)
        return replace(done, user=data["sub"])  # the access line names who logged in

    def _logout(self, request: RequestInfo) -> Response:
        s = self.settings
        c = self._browser_login_cookie(request)  # (expired too: its WebSockets are open)
        id_token = None
        if c is not None:  # (a login logged out already is cleared without asking)
            refused = self._logout_confirmed(request, f"{PREFIX}logout")
            if refused is not None:
                return refused
            self.authorizer.logout(c.login_id)
            id_token = self._id_tokens.take(c.login_id)
            self._log.info("{user} logged out", user=c.subject)
        # The return cookie names the page this login was for: kept, the next person's
        # late or repeated callback in this browser led there ("Login took too long ...
        # Log in again", then on to it after their own login).
        clear = [self._proxy_cookie(s.login_cookie_name), self._proxy_cookie(
            s.return_cookie_name)]
        params = request.params()
        if s.path_routing:
            sid = s.session_of_path(params.get("next") or params.get("back", ""))
            if sid is not None:
                clear.append(clear_cookie_header(s.studio_cookie_name,
                                                 path=s.studio_cookie_path(sid),
                                                 secure=s.secure_cookies))
        next_url = s.safe_next(params.get("next"))
        if next_url is not None:
            if c is not None and self._switching(request):
                next_url = self._naming_who_was(next_url, _digest(c.subject))
            return redirect(next_url, clear)
        return self._logged_out(id_token, clear, back=s.safe_next(params.get("back")))

    def _naming_who_was(self, next_url: str, digest: str) -> str:
        """The login a "Log in as someone else" logout leads to (`next_url`, when it is
        the login), naming who was just logged out (WAS: signed, `digest`, the SHA-256 of
        that user): an issuer that answers it with that same person kept its own login."""
        if not next_url.startswith(self.settings.proxy_page("login") + "?"):
            return next_url
        was = self._signer.sign(SWITCH_FROM, {
            "d": digest, "exp": int(self._reactor.seconds() + SWITCH_FROM_TTL)})
        return next_url + "&" + urlencode({WAS: was})

    def _logged_out(self, id_token: str | None,
                    extra_headers: Iterable[tuple[bytes, bytes]] = (), *,
                    back: str | None = None) -> Response:
        """The page after a logout. The issuer's own login (its cookie in this browser)
        outlives the gateway's: on a shared computer the next person to open a studio
        link would be logged in as this one without a word. So the page says so, and
        links to the issuer's logout when it has one (`id_token`: the login's ID token,
        if this process still has it). `back`: the studio page of a "Log in as someone
        else" with an issuer that cannot be asked for prompt=login: logging in as someone
        else then takes the issuer's logout, which the page says; the page the issuer
        sends the browser back to links to the login for `back` (in the signed state)."""
        done = "You are logged out of the studios gateway."
        if self.rp is None:  # login links: no identity provider to stay logged in to
            # What next: the link used before works once.
            return page(200, "Logged out", f"{done} To open a studio again, ask the person "
                        "who gave it to you for a new login link.", extra_headers=extra_headers)
        host = self.rp.issuer_host
        link = self._issuer_logout(id_token, back=back)
        if link is None and back is not None:
            return page(200, "Logged out",
                        f"{done} To log in as someone else, close the browser (every window "
                        f"of it) and open the studio link again: your login at {host} (the "
                        "identity provider) is still open in this browser, and this gateway "
                        "cannot end it.", extra_headers=extra_headers)
        if link is None:
            return page(200, "Logged out",
                        f"{done} Your login at {host} (the identity provider) may still be "
                        "open, and this gateway cannot end it: on a shared computer, close "
                        "the browser (every window of it), or the next person to open a "
                        "studio link is logged in as you.", extra_headers=extra_headers)
        url, cookie = link
        why = (f"To log in as someone else, also log out of {host} (the identity provider): "
               "its login is still open in this browser and would log you in as before."
               if back is not None else
               f"Your login at {host} (the identity provider) may still be open: on a "
               "shared computer, log out there too, or the next person to open a studio "
               "link is logged in as you.")
        return page(200, "Logged out", f"{done} {why}",
                    body_html=_issuer_logout_button(url, host),
                    extra_headers=[*extra_headers, cookie])

    def _issuer_logout(self, id_token: str | None, *, back: str | None
                       ) -> tuple[str, tuple[bytes, bytes]] | None:
        """The issuer's logout address (with `id_token` as its hint, when known) and the
        Set-Cookie header its state is bound to; None when the issuer has no logout. The
        state brings the browser back to ``logged-out``, whose page links to the login
        for `back` (a studio page) when given."""
        assert self.rp is not None
        # The state counts only with the cookie set here (its hash in the state): anyone
        # can have this page, and a state alone, sent to someone else, would tell them
        # they are logged out of the issuer.
        binding = secrets.token_urlsafe(32)
        signed: dict[str, Any] = {
            "exp": int(self._reactor.seconds() + LOGOUT_RETURN_TTL), "b": _digest(binding)}
        if back is not None:
            signed["n"] = back
        url = self.rp.logout_url(id_token=id_token,
                                 state=self._signer.sign(LOGOUT_RETURN, signed))
        if url is None:
            return None
        return url, self._proxy_cookie(self.settings.logout_cookie_name, binding,
                                       LOGOUT_RETURN_TTL)

    def _logout_returned(self, request: RequestInfo) -> Response:
        """Where the issuer's logout sends the browser back (its post_logout_redirect_uri):
        a page only, it ends nothing. A state this gateway did not sign, or did for
        another browser (someone's link), or used already, gets the plain logged-out page,
        with the issuer's logout again."""
        if self.rp is None:
            return page(404, "Not found", "No such page.")
        if self._login_cookie(request) is not None:
            return page(200, "Still logged in",
                        "You are still logged in to the studios gateway in this browser.",
                        link=(self.settings.proxy_page("logout"), "Log out"))
        data = self._signer.verify(LOGOUT_RETURN, request.params().get("state", ""))
        bound = data.get("b") if data is not None else None
        if data is None or not isinstance(data.get("exp"), int) \
                or data["exp"] <= self._reactor.seconds() or not isinstance(bound, str) \
                or not any(hmac.compare_digest(bound, _digest(v)) for v in
                           self._tokens(request, self.settings.logout_cookie_name)):
            return self._logged_out(None)
        # The issuer's logout address (with the ID token it was given) stays in this
        # browser's history: say so to whoever shares the computer.
        back = self.settings.safe_next(data["n"]) if isinstance(data.get("n"), str) else None
        return page(200, "Logged out", "You are logged out of the studios gateway and of "
                    f"{self.rp.issuer_host}. On a shared computer, also close the browser "
                    "(every window): it keeps the addresses you opened.",
                    link=None if back is None else (
                        self.settings.login_again(back), "Log in as someone else"),
                    extra_headers=[self._proxy_cookie(self.settings.logout_cookie_name)])

    def _logout_confirmed(self, request: RequestInfo, path: str) -> Response | None:
        """None when `request` is a logout to carry out: a post from the gateway's own page
        (or from no browser at all); else the page to answer: for a GET (a link, a page
        another site opened, an image another studio's page loads) a "Log out" button
        that posts back to the same address, for a post from another site 403. A logout
        ends every studio of the login, and a login link works once: logged out by
        someone else's page, a person had to ask an administrator for a new link."""
        if request.method == "POST":
            why = posted_from_elsewhere(request.header(b"sec-fetch-site"),
                                        request.header(b"origin"), request.host)
            if why is None:
                return None
            self._log.info("refused a logout posted from elsewhere: {why}", why=why)
            return replace(page(403, "Logout refused",
                                "This logout was posted from another site. Open the logout "
                                "page itself to log out.",
                                link=(self.settings.proxy_page("logout"), "Log out")),
                           why=f"logout posted from elsewhere: {why}")
        query = f"?{request.query}" if request.query else ""
        action = html.escape(path + query)
        form = (f'<form method="post" action="{action}"><button type="submit" autofocus>'
                "Log out</button></form>")
        ends = ("studio opened with this login in this browser stops working until you log "
                "in again.")
        if self._switching(request):
            return page(200, "Log out", f"To log in as someone else, first log out of the "
                        f"studios gateway: every {ends}", body_html=form)
        return page(200, "Log out", f"Log out of the studios gateway? Every {ends}",
                    body_html=form)

    @staticmethod
    def _switching(request: RequestInfo) -> bool:
        """Whether this logout is the first step of "Log in as someone else": the link
        Auth.switch_user_url makes carries ``switch=1`` (a logout merely followed by the
        login, a script's say, is a plain logout)."""
        return request.params().get(SWITCH) == "1"

    def _studio_logout(self, request: RequestInfo, session_id: str) -> Response:
        """A studio host's logout is the proxy host's: its page and its post. On the
        studio's own host the tool's pages are the same origin, so a post there could
        not be told from the tool's own script, which would end its visitor's login
        (every studio of it); the proxy host's origin belongs to the gateway alone."""
        return replace(redirect(self.settings.proxy_page("logout")), status=303)
