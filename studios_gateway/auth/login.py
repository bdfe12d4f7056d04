"""Logins and the `/_connect/*` routes, for the HTTP proxy to mount.

The proxy calls two things per request:

* ``Auth.handle(request)`` first: a Deferred firing with a :class:`Response`
  for the gateway's own routes (``/_connect/login``, ``callback``, ``link``,
  ``logout`` on the proxy host; ``handoff`` and ``logout`` on a studio's host)
  or ``None`` for everything else.
* ``Auth.authorize_request(request, session_id)`` for a request to a studio:
  an :class:`Identity` (forward, with ``X-Connect-Sub``) or a
  :class:`Response` to send instead (a redirect to the login, 401, 403, 404,
  503).

How a login reaches a studio's cookie:

* subdomain mode: the callback (or a login link) lands on the proxy host,
  which sets its own login cookie (``Path=/_connect/``) and hands the login
  to ``https://<id>.<domain>/_connect/handoff?code=...`` with a one-time code
  valid for a minute; the studio's host sets its own host-only cookie
  (``__Host-`` prefixed under TLS) scoped to that session id.
* path mode: the callback sets the studio's cookie with ``Path=/_studio/<id>/``
  directly.

Without an issuer, logins come from one-time links made by
:meth:`Auth.mint_login_link`. No studio is ever served without a login.

Login links and hand-off codes are signed, so any node that shares the key
can redeem them; "once" is the store's ``spend_once`` (Redis: shared by every
node; alone: memory backed by journal files), and a store that cannot answer
refuses the id with a "try again" page rather than risk accepting it twice.

URLs, cookie scopes and ``next`` checks are plain logic in
:mod:`studios_gateway.auth.settings`; :class:`Auth` here is the adapter that
speaks Deferreds.
"""

from __future__ import annotations

import html
import re
import secrets
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from studios_gateway.auth.authorizer import (
    WORKSPACE_REFUSED,
    Authorizer,
    Decision,
    PlatformAccess,
)
from studios_gateway.auth.cookies import (
    COOKIE_NAME,
    LOGIN_SCOPE,
    SKEW,
    CookieCodec,
    SessionCookie,
    Signer,
    clear_cookie_header,
    cookie_values,
    new_login_id,
    set_cookie_header,
)
from studios_gateway.auth.files import load_or_create_key
from studios_gateway.auth.oidc import (
    ConfigurationError,
    LoginFailed,
    LoginUnavailable,
    OIDCError,
    OIDCSettings,
    RelyingParty,
    TokenSet,
    same_browser,
)
from studios_gateway.auth.settings import (
    BROWSER_COOKIE,
    HANDOFF_COOKIE,
    LOGIN_COOKIE,
    PREFIX,
    AuthSettings,
)
from studios_gateway.http import pages
from studios_gateway.http.origin import posted_from_elsewhere
from studios_gateway.http.request import RequestInfo
from studios_gateway.registry.base import SessionRecord, StoreUnavailable
from studios_gateway.registry.memory import MemoryStore
from studios_gateway.repeats import Repeats
from studios_gateway.shown import shown

__all__ = [
    "Auth",
    "Identity",
    "RequestInfo",
    "Response",
    "SUBJECT_HEADER",
    "GATEWAY_COOKIES",
    "platform_credentials",
    "strip_auth_cookie",
    "strip_auth_cookies",
]

SUBJECT_HEADER = b"X-Connect-Sub"
#: The gateway's cookie names, lower-cased, with the prefixed forms a browser treats
#: specially: a tool's Set-Cookie with one of these names never reaches the browser.
GATEWAY_COOKIES = frozenset(
    f"{prefix}{name}".lower()
    for name in (COOKIE_NAME, LOGIN_COOKIE, BROWSER_COOKIE, HANDOFF_COOKIE)
    for prefix in ("", "__Host-", "__Secure-"))
KEY_FILE = "auth-signing.key"
#: Journals under the storage root (one node, no Redis): logins that ended, used login
#: links and hand-off codes.
LOGOUTS = "auth-logouts.log"
SPENT = "auth-spent.log"
#: Retrying an unreachable issuer at start: first after this many seconds, doubling up to
START_RETRY_FIRST = 1.0
#: ... this many.
START_RETRY_MAX = 30.0
#: Tokens are refreshed at most this often (seconds), however short-lived.
REFRESH_MIN_INTERVAL = 1.0
#: How long the browser cookie of a begun OpenID login lasts (seconds; the relying
#: party keeps a begun login 10 minutes). Each new login in the browser renews it.
BROWSER_COOKIE_TTL = 900
_BROWSER_VALUE = re.compile(r"[A-Za-z0-9_-]{43}")
#: The longest user name a cookie carries (cookies.SessionCookie).
MAX_SUBJECT = 256
_LINK = "login-link/1"
_HANDOFF = "handoff/1"
#: How many of authorized_now's answers are remembered (one per Cookie value and studio;
#: once full, the oldest goes).
FAST_MEMO_MAX = 4096
# Header names seen that are not Cookie (as sent): authorized_now's look for the Cookie
# line is one set look-up per other line instead of a lower(). Bounded; nothing evicted.
_NOT_COOKIE: set[bytes] = set()
_NOT_COOKIE_MAX = 512


# Requests and responses ------------------------------------------------------------------

# Response: what a login route answers, a page or a redirect (http/pages.py).
Response = pages.Page


@dataclass(slots=True)
class Identity:
    """An authenticated (and, from authorize_request, authorized) user of one session.

    Not frozen: the proxy's fast path makes one per request, and a frozen dataclass sets
    each field through ``object.__setattr__``; none is changed once made."""

    subject: str
    session_id: str
    login_id: str
    expires_at: float
    reason: str = ""  # why the authorizer said yes: owner, allow-list, platform

    def header(self) -> tuple[bytes, bytes]:
        """The identity header for the tool (the proxy strips any client-sent copy)."""
        return SUBJECT_HEADER, self.subject.encode("utf-8")


def page(status: int, title: str, message: str, *, link: tuple[str, str] | None = None,
         extra_headers: Iterable[tuple[bytes, bytes]] = (), body_html: str = "") -> Response:
    """A small, self-contained HTML page (http/pages.py makes every page the gateway
    answers with). `message` is text (escaped there)."""
    return pages.page(status, title, message, link=link, body_html=body_html,
                      extra=tuple(extra_headers))


def pending_logins(store: Any, local: MemoryStore | None) -> Any:
    """Where OpenID logins wait for their callback: the shared store (Redis, under the
    local cache), so the callback may land on any node; None (this process's memory)
    for one node."""
    if local is not None:
        return None
    inner = getattr(store, "inner", store)
    return inner if hasattr(inner, "take_pending_login") else None


def redirect(location: str, extra_headers: Iterable[tuple[bytes, bytes]] = ()) -> Response:
    return pages.redirect(location, 302, extra=tuple(extra_headers))


def strip_auth_cookies(headers: Iterable[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The request headers without the gateway's own cookies (the tool never sees them)."""
    out = []
    for k, v in headers:
        if k.lower() != b"cookie":
            out.append((k, v))
            continue
        kept = strip_auth_cookie(v)
        if kept is not None:
            out.append((k, kept))
    return out


# strip_auth_cookie's answers for the Cookie values seen lately: a browser sends the same
# value on each request until a cookie changes. Bounded by count and length; once full,
# the oldest answer goes. (The values are secrets the process holds anyway, like
# CookieCodec's cache of verified cookies.)
_STRIPPED: dict[bytes, bytes | None] = {}
_STRIPPED_MAX = 256
_STRIPPED_LONGEST = 4096


def strip_auth_cookie(value: bytes) -> bytes | None:
    """One Cookie header's value without the gateway's own cookies; None when nothing is
    left of it."""
    try:
        return _STRIPPED[value]
    except KeyError:
        pass
    kept = [c for c in value.decode("latin-1").split(";")
            if c.strip() and c.partition("=")[0].strip().lower() not in GATEWAY_COOKIES]
    out = ";".join(kept).strip().encode("latin-1") if kept else None
    if len(value) <= _STRIPPED_LONGEST:
        if len(_STRIPPED) >= _STRIPPED_MAX:
            del _STRIPPED[next(iter(_STRIPPED))]
        _STRIPPED[value] = out
    return out


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


# The adapter ----------------------------------------------------------------------------



def platform_credentials(settings: AuthSettings, rp: RelyingParty | None
                         ) -> Callable[[], tuple[str, str] | None]:
    """What the Platform's calls (studio access, SSH keys) send as HTTP Basic: the
    gateway's OpenID client id and secret once it has them, and only when the Platform
    is that client's issuer (another provider's secret is never sent to the Platform:
    ``AuthSettings.platform_gets_credentials``)."""
    sends = settings.platform_gets_credentials

    def credentials() -> tuple[str, str] | None:
        client = rp.client if rp is not None and sends else None
        return (client.client_id, client.client_secret) if client and client.client_secret \
            else None

    return credentials

class Auth:
    """Login routes, cookies and per-request authorization for the HTTP proxy (and the
    login links that the admin API prints)."""

    _log = Logger()

    def __init__(self, settings: AuthSettings, *, reactor: Any, authorizer: Authorizer,
                 rp: RelyingParty | None = None, key: bytes | None = None):
        self.settings = settings
        self._reactor = reactor
        self.authorizer = authorizer
        self.rp = rp
        signer = Signer(key if key is not None else load_or_create_key(
            Path(settings.storage_root) / KEY_FILE))
        self._signer = signer
        self._cookies = CookieCodec(signer, reactor)
        #: authorized_now's answers: (Cookie value, session id) -> (the authorizer's
        #: `changes` then, given while the clock reads less than this, the cookie's
        #: issued-at, identity, record, the decision's key and the authorizer's entry
        #: it rests on: the answer stands while `decisions` holds that very entry).
        #: The keys are cookies: secrets the process holds anyway (as CookieCodec's
        #: cache); the look-up hashes them with Python's per-process keyed hash, so its
        #: timing tells nothing about a cookie one lacks.
        self._fast_memo: dict[tuple[bytes, str], tuple[
            int, float, float, Identity, SessionRecord, tuple[str, str], Any]] = {}
        self._decisions = authorizer.decisions
        # One clock for the cookie's and the decision's times, or no memo.
        self._fast_memo_max = FAST_MEMO_MAX if authorizer.clock is reactor else 0
        #: Where used login links and hand-off codes are kept (the session store).
        self._once = authorizer.login_state
        self._refreshes: dict[str, Any] = {}
        self._start_retry: Any = None
        self._start_tried = 0.0
        self._stopped = False
        #: The issuer could not be reached at start (and is being asked again).
        self.issuer_down = False
        #: Refused logins' warnings: one per kind of failure and minute (see _callback).
        self._refusals = Repeats(reactor)
        #: on_login(kind, ok): a login ("oidc", "link", "handoff") succeeded or failed.
        self.on_login: Callable[[str, bool], Any] = lambda kind, ok: None

    @classmethod
    def from_config(cls, config: Any, store: Any, *, reactor: Any,
                    local: MemoryStore | None = None, **overrides: Any) -> Auth:
        """Everything built from the gateway's Config and session store. A storage
        problem (the key file, the journals) is a StartError with one line."""
        from studios_gateway.auth.files import StorageError

        try:
            return cls._from_config(config, store, reactor=reactor, local=local, **overrides)
        except StorageError as e:
            from studios_gateway.component import StartError

            raise StartError(str(e)) from None

    @classmethod
    def _from_config(cls, config: Any, store: Any, *, reactor: Any,
                     local: MemoryStore | None = None, **overrides: Any) -> Auth:
        """`local`: the embedded registry of a single node, whose login state (spent
        links, logouts) is kept in journal files under the storage root."""
        from studios_gateway.auth.files import Journal

        s = AuthSettings.from_config(config, **overrides)
        root = Path(s.storage_root)
        rp = None
        if s.issuer:
            rp = RelyingParty(OIDCSettings(
                issuer=s.issuer, redirect_uri=s.redirect_uri, storage_root=s.storage_root,
                client_name=s.client_name, registration_token=s.registration_token,
                client_id=s.client_id, client_secret=s.client_secret, scopes=s.scopes,
                timeout=s.timeout), reactor=reactor, shared=pending_logins(store, local))
        platform = None
        if s.platform_url:
            platform = PlatformAccess(s.platform_url, platform_credentials(s, rp),
                                      reactor=reactor, timeout=min(s.timeout, 5.0))
        if local is not None:  # one node, in memory: files remember
            local.keep_login_journals(Journal(root / SPENT), Journal(root / LOGOUTS))
        authorizer = Authorizer(store, clock=reactor, ttl=s.cache_ttl,
                                workspace_allowed=config.workspace_allowed, platform=platform,
                                login_ttl=s.login_ttl)
        return cls(s, reactor=reactor, authorizer=authorizer, rp=rp)

    def start(self) -> Deferred[None]:
        """Discover and register with the issuer (when there is one), follow the registry.

        Fails only with a ConfigurationError (a refused registration...), which must
        stop the gateway's start. An issuer that cannot be reached is asked again,
        less and less often (up to every START_RETRY_MAX seconds); meanwhile studios
        serve the cookies they know and new logins answer 503. The Deferred fires once
        logins work."""
        self.authorizer.start()
        if self.rp is None:
            self._log.info("no OpenID issuer configured: logins come from one-time links")
            return defer.succeed(None)
        rp = self.rp
        started: Deferred[None] = Deferred()
        delay = [START_RETRY_FIRST]

        def attempt() -> None:
            self._start_retry = None
            self._start_tried = self._reactor.seconds()
            rp.start().addCallbacks(ok, failed)

        def ok(_: Any) -> None:
            self.issuer_down = False
            started.callback(None)

        def failed(f: Any) -> None:
            if f.check(ConfigurationError) or not f.check(OIDCError):
                started.errback(f)
                return
            self.issuer_down = True
            if self._stopped:
                return
            self._log.warn("{why}; new logins fail until the issuer answers (next try in "
                           "{delay:.0f}s)", why=f.getErrorMessage(), delay=delay[0])
            self._start_retry = self._reactor.callLater(delay[0], attempt)
            delay[0] = min(delay[0] * 2, START_RETRY_MAX)

        attempt()
        return started

    def _retry_start_now(self) -> None:
        """Somebody wants to log in while the issuer was unreachable: ask it again now
        rather than at the next back-off step (at most every START_RETRY_FIRST)."""
        call = self._start_retry
        if call is not None and call.active() \
                and self._reactor.seconds() - self._start_tried >= START_RETRY_FIRST:
            call.reset(0)

    def stop(self) -> Deferred[None]:
        """Cancel refreshes, close connections to the issuer and the Platform."""
        self._stopped = True
        if self._start_retry is not None and self._start_retry.active():
            self._start_retry.cancel()
        self._start_retry = None
        for call in self._refreshes.values():
            if call.active():
                call.cancel()
        self._refreshes.clear()
        waits = [self.authorizer.stop(), self.rp.stop() if self.rp is not None else None]
        return defer.gatherResults([d for d in waits if d is not None]).addCallback(
            lambda _: None)

    # Login links (no issuer) ---------------------------------------------------------

    def mint_login_link(self, session_id: str, user: str) -> str:
        """A one-time link that logs `user` in to `session_id` (valid for link_ttl)."""
        now = self._reactor.seconds()
        token = self._signer.sign(_LINK, {"sub": user, "sid": session_id,
                                          "exp": int(now + self.settings.link_ttl),
                                          "jti": secrets.token_urlsafe(12)})
        return f"{self.settings.proxy_url}{PREFIX}link?token={token}"

    # Per request ----------------------------------------------------------------------

    def _studio_cookie(self, request: RequestInfo, session_id: str) -> Identity | None:
        c = self._studio_claims(request, session_id)
        return None if c is None else Identity(c.subject, session_id, c.login_id,
                                               c.expires_at)

    def _studio_claims(self, request: RequestInfo, session_id: str) -> SessionCookie | None:
        """The first of the request's studio cookies that is valid for `session_id` and
        whose login has not ended."""
        return self._first_valid(
            cookie_values(request.headers, self.settings.studio_cookie_name), session_id)

    def _first_valid(self, values: list[str], session_id: str) -> SessionCookie | None:
        """The first of `values` that is a cookie valid for `session_id` whose login has
        not ended."""
        for value in values:
            c = self._cookies.verify(value, session_id)
            if c is not None and not self.authorizer.is_logged_out(c.login_id):
                return c
        return None

    def login_url(self, request: RequestInfo) -> str:
        s = self.settings
        if s.path_routing:
            next_url = request.target
        else:
            next_url = f"{s.scheme}://{request.hostname}{s._port_suffix}{request.target}"
        return self._login_again(next_url)

    def _login_again(self, next_url: str | None) -> str:
        """The proxy host's login, leading back to `next_url` once done (to "/" without)."""
        again = f"{self.settings.proxy_url}{PREFIX}login"
        if next_url:
            again += "?" + urlencode({"next": next_url}, quote_via=quote)
        return again

    def authenticate(self, request: RequestInfo,
                     session_id: str) -> Deferred[Identity | Response]:
        """Who is this (a valid cookie for this very session), or the response to send:
        a redirect to the login for a page load, 401 for anything else."""
        ident = self._studio_cookie(request, session_id)
        if ident is not None:
            return defer.succeed(ident)
        upgrade = request.header(b"upgrade") is not None
        if request.method in ("GET", "HEAD") and not upgrade:
            return defer.succeed(redirect(self.login_url(request)))
        return defer.succeed(page(401, "Login required",
                                  f"Log in to studio {session_id} first.",
                                  link=(self.login_url(request), "Log in")))

    def authorize_request(self, request: RequestInfo,
                          session_id: str) -> Deferred[Identity | Response]:
        """authenticate() and then the authorizer's decision for this user and session."""
        d = self.authenticate(request, session_id)

        def decide(who: Identity | Response) -> Any:
            if isinstance(who, Response):
                return who
            return self.authorizer.check(session_id, who.subject).addCallback(
                lambda decision: self._decided(request, who, decision))

        return d.addCallback(decide)

    def authorized_now(self, request: RequestInfo,
                       session_id: str) -> tuple[Identity, SessionRecord] | None:
        """What authorize_request would allow at once from what is cached (a remembered
        cookie and decision), with the session's record; None: ask authorize_request.

        A browser sends the same Cookie line with each request: the answer for a line
        and studio is remembered and given again while nothing it rests on moved (the
        authorizer's `changes`: decisions forgotten or revoked, logins ended; and its
        entry for this studio and user, which a decision made again replaces), the
        cookie has not expired (nor is issued too far ahead) and the decision is not
        due to be asked again. Requests with several Cookie lines or
        several studio cookies go the whole way each time."""
        if request.path.startswith(PREFIX):
            return None  # one of our routes: handle() answers it
        cookie = None
        not_cookie = _NOT_COOKIE
        for name, value in request.headers:
            if name in not_cookie:
                continue
            if name.lower() != b"cookie":
                if len(not_cookie) < _NOT_COOKIE_MAX:
                    not_cookie.add(name)
                continue
            if cookie is not None:  # several Cookie lines: not remembered
                return self._authorized_now(request, session_id, None)
            cookie = value
        if cookie is None:
            return None  # no cookie at all
        key = (cookie, session_id)
        hit = self._fast_memo.get(key)
        if (hit is not None and hit[0] == self.authorizer.changes
                and self._decisions.get(hit[5]) is hit[6]):  # the same decision
            now = self._reactor.seconds()
            if now < hit[1] and not hit[2] > now + SKEW:  # (CookieCodec.verify's times)
                return hit[3], hit[4]
        return self._authorized_now(request, session_id, key)

    def _authorized_now(self, request: RequestInfo, session_id: str,
                        key: tuple[bytes, str] | None
                        ) -> tuple[Identity, SessionRecord] | None:
        """authorized_now's answer the whole way; remembered under `key` (when given)
        if the request has one studio cookie."""
        memo = self._fast_memo
        if key is not None:
            memo.pop(key, None)
        values = cookie_values(request.headers, self.settings.studio_cookie_name)
        c = self._first_valid(values, session_id)
        if c is None:
            return None
        entry = self.authorizer.cached_entry(session_id, c.subject)
        if entry is None:
            return None
        until, _, decision = entry
        if not decision.allowed or decision.record is None:
            return None
        who = Identity(c.subject, session_id, c.login_id, c.expires_at, decision.reason)
        if key is not None and len(values) == 1 and self._fast_memo_max:
            while len(memo) >= self._fast_memo_max:
                del memo[next(iter(memo))]  # the oldest
            memo[key] = (self.authorizer.changes, min(until, c.expires_at), c.issued_at,
                         who, decision.record, (session_id, c.subject), entry)
        return who, decision.record

    def _decided(self, request: RequestInfo, who: Identity,
                 decision: Decision) -> Identity | Response:
        if decision.allowed:
            return Identity(who.subject, who.session_id, who.login_id, who.expires_at,
                            decision.reason)
        sid = who.session_id
        if decision.status == 404:
            refusal = page(404, "Studio not found", f"There is no studio {sid}.")
        elif decision.status == 503:
            refusal = page(503, "Try again shortly",
                           f"Access to studio {sid} cannot be checked right now.",
                           extra_headers=[(b"Retry-After", b"5")])
        elif decision.reason == WORKSPACE_REFUSED:
            # Nobody may open it: logging in as someone else would not help.
            refusal = page(403, "Studio not available",
                           f"Studio {sid} belongs to a workspace that may not use studios "
                           "on this gateway, so nobody can open it. Ask your Platform "
                           "administrator.")
        else:
            switch = f"{self.settings.proxy_url}{PREFIX}logout?" + urlencode(
                {"next": self.login_url(request)}, quote_via=quote)
            refusal = page(403, "Access denied",
                           f"{who.subject} may not use studio {sid} ({decision.reason}).",
                           link=(switch, "Log in as someone else"))
        # The access line names the logged-in user and the decision's reason ("not
        # allowed on this session"), not "-" and "forbidden".
        return replace(refusal, user=who.subject, why=decision.reason)

    # The /_connect/ routes ----------------------------------------------------------------

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
                  "logout": self._logout}
        handler = routes.get(name)
        if handler is None:
            return page(404, "Not found", "No such page.")
        return handler(request)

    def _login_cookie(self, request: RequestInfo) -> Any:
        for value in cookie_values(request.headers, self.settings.login_cookie_name):
            c = self._cookies.verify(value, LOGIN_SCOPE)
            if c is not None and not self.authorizer.is_logged_out(c.login_id):
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
                        extra_headers=[clear_cookie_header(
                            s.login_cookie_name, path=s.login_cookie_path,
                            secure=s.secure_cookies)])
        existing = self._login_cookie(request)
        if existing is not None:
            bind = request.params().get("bind", "")
            return self._complete(existing.subject, existing.login_id, existing.expires_at,
                                  next_url, new_login=False,
                                  bind=bind if _BROWSER_VALUE.fullmatch(bind) else None)
        if self.rp is None:
            return page(401, "Login required",
                        "This gateway logs people in with one-time links. Ask an "
                        "administrator for one (studios-gateway sessions link <session> <user> "
                        "prints it).")
        if self.issuer_down:
            self._retry_start_now()
            return page(503, "Login unavailable",
                        "The identity provider cannot be reached right now; try again "
                        "shortly.", extra_headers=[(b"Retry-After", b"5")])
        # The callback completes this login only in this browser: its cookie (kept for
        # the next login too, so logins begun in two tabs both work).
        browsers = self._tokens(request, s.browser_cookie_name)
        browser = browsers[0] if browsers else secrets.token_urlsafe(32)

        def begun(url: str) -> Response:
            return redirect(url, [set_cookie_header(
                s.browser_cookie_name, browser, path=s.login_cookie_path,
                max_age=BROWSER_COOKIE_TTL, secure=s.secure_cookies)])

        def failed(f: Any) -> Response:
            f.trap(OIDCError)
            if f.check(LoginFailed):
                return page(400, "Login failed", str(f.value))
            return self._unavailable(f.value, next_url)

        return self.rp.begin(next_url, browser=browser).addCallbacks(begun, failed)

    def _unavailable(self, why: Any, next_url: str | None) -> Response:
        """The "try again in a moment" page: the store that keeps logins between their
        start and their callback (Redis) cannot be reached."""
        unsaid = self._refusals.due("LoginUnavailable")
        if unsaid is not None:
            self._log.warn("a login could not go on: {why}{more}", why=str(why),
                           more=self._refusals.more(unsaid))
        return page(503, "Login unavailable",
                    "Login is unavailable for a moment; try again shortly.",
                    link=(self._login_again(next_url), "Try again"),
                    extra_headers=[(b"Retry-After", b"5")])

    @staticmethod
    def _tokens(request: RequestInfo, name: str) -> list[str]:
        """The well-formed values (random tokens) of the cookie `name` the request brings:
        the browser cookie of a begun login, a studio host's hand-off cookie."""
        return [v for v in cookie_values(request.headers, name) if _BROWSER_VALUE.fullmatch(v)]

    def _callback(self, request: RequestInfo) -> Any:
        if self.rp is None:
            return page(404, "Not found", "No such page.")
        d = self.rp.finish(request.params(),
                           self._tokens(request, self.settings.browser_cookie_name))

        def failed(f: Any) -> Response:
            f.trap(LoginFailed, OIDCError)
            if f.check(LoginUnavailable):
                self.on_login("oidc", False)
                return self._unavailable(f.value, None)
            # Anyone can ask for /_connect/callback?state=x (each has its access line):
            # a line per kind of failure and minute, with the count of the others.
            unsaid = self._refusals.due(type(f.value).__name__)
            if unsaid is not None:
                self._log.warn("a login was refused: {why}{more}",
                               why=shown(str(f.value), 300, words=True),
                               more=self._refusals.more(unsaid))
            self.on_login("oidc", False)
            # "Try again" leads back to the page the login was for, not "/"
            again = self._login_again(getattr(f.value, "next_url", None))
            return page(400, "Login failed", str(f.value), link=(again, "Try again"))

        def done(result: Any) -> Response:
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
            login_id = self._browser_login(self._login_cookie(request), subject,
                                           "logged in")
            stale = self._refreshes.pop(login_id, None)  # (a login that goes on)
            if stale is not None and stale.active():
                stale.cancel()
            expires = self._reactor.seconds() + self.settings.login_ttl
            self._keep_fresh(login_id, result.tokens, expires)
            self._log.info("{user} logged in", user=subject)
            self.on_login("oidc", True)
            return self._complete(subject, login_id, expires, result.next_url, new_login=True)

        return d.addCallbacks(done, failed)

    def _complete(self, subject: str, login_id: str, expires_at: float, next_url: str, *,
                  new_login: bool, bind: str | None = None) -> Response:
        """Set the cookies a fresh login needs and send the browser on. `bind`: the studio
        host's hand-off cookie the hand-off must meet there (see _handoff)."""
        s = self.settings
        now = self._reactor.seconds()
        ttl = max(0.0, expires_at - now)
        headers: list[tuple[bytes, bytes]] = []
        if new_login:
            headers.append(set_cookie_header(
                s.login_cookie_name, self._cookies.issue(subject, LOGIN_SCOPE, login_id, ttl),
                path=s.login_cookie_path, max_age=int(ttl), secure=s.secure_cookies))
        session_id, path = s.studio_of_next(next_url)
        if session_id is None:
            return redirect(next_url, headers)
        if s.path_routing:
            headers.append(set_cookie_header(
                s.studio_cookie_name, self._cookies.issue(subject, session_id, login_id, ttl),
                path=s.studio_cookie_path(session_id), max_age=int(ttl),
                secure=s.secure_cookies))
            return redirect(next_url, headers)
        claims = {"sub": subject, "sid": session_id, "lid": login_id, "lexp": int(expires_at),
                  "next": path, "exp": int(now + s.handoff_ttl),
                  "jti": secrets.token_urlsafe(12)}
        if bind is not None:
            claims["bind"] = bind
        code = self._signer.sign(_HANDOFF, claims)
        return redirect(f"{s.studio_origin(session_id)}{PREFIX}handoff?code={code}", headers)

    def _handoff(self, request: RequestInfo, session_id: str) -> Any:
        s = self.settings
        data = self._signer.verify(_HANDOFF, request.params().get("code", ""))
        now = self._reactor.seconds()
        again = self._login_again(s.studio_url(session_id))
        expired = page(400, "Login link expired",
                       "This login hand-off was used already, has expired, or is for "
                       "another studio or another browser.", link=(again, "Log in again"))
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
        back = (f"{s.proxy_url}{PREFIX}login?" + urlencode(
            {"next": s.studio_origin(session_id) + _studio_path(data.get("next")),
             "bind": value}, quote_via=quote))
        return redirect(back, [set_cookie_header(
            s.handoff_cookie_name, value, path=s.login_cookie_path,
            max_age=int(s.login_ttl), secure=s.secure_cookies)])

    def _handed_off(self, data: Mapping[str, Any], session_id: str, again: str) -> Response:
        s = self.settings
        now = self._reactor.seconds()
        login_id, subject = str(data["lid"]), str(data["sub"])
        if self.authorizer.is_logged_out(login_id):
            return replace(page(400, "Logged out", "This login has ended.",
                                link=(again, "Log in")), why="the login has ended (logged out)")
        ttl = max(0.0, float(data.get("lexp", 0)) - now)
        return redirect(_studio_path(data.get("next")), [set_cookie_header(
            s.studio_cookie_name, self._cookies.issue(subject, session_id, login_id, ttl),
            path="/", max_age=int(ttl), secure=s.secure_cookies)])

    def _spend(self, data: Mapping[str, Any]) -> Deferred[bool]:
        """Spend a verified link's or code's id on every node: True the first time.
        Fails with StoreUnavailable when that cannot be known (the route answers 503)."""
        jti = data["jti"]
        ttl = max(0.001, float(data["exp"]) - self._reactor.seconds())
        return defer.maybeDeferred(self._once.spend_once, jti, ttl)

    def _link(self, request: RequestInfo) -> Any:
        token = request.params().get("token", "")
        data = self._signer.verify(_LINK, token)
        now = self._reactor.seconds()
        invalid = page(400, "Login link not valid",
                       "This login link was used already or has expired. Ask for a new one.")
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
            form = (f'<form method="post" action="{action}"><button type="submit">'
                    f"Open studio {html.escape(data['sid'])}</button></form>")
            text = f"Log in to studio {data['sid']} as {data['sub']}."
            previous = self._login_cookie(request)
            if previous is not None and previous.subject != data["sub"]:
                # Someone else's link (sent to this person, say): the click would end
                # their own login here and make them work as that user. Say so first.
                text += (f" You are logged in as {previous.subject} in this browser: "
                         f"this ends that login, and the studio opens as {data['sub']}.")
            confirm = page(200, "Open studio", text, body_html=form)
            used = replace(invalid, user=user, why=f"login link to {sid} used already")
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
                return self._link_spent(data, self._login_cookie(request))
            return replace(page(400, "Login link not valid", "This login link was used already."),
                           user=user, why=f"login link to {sid} used already")

        return self._spend(data).addCallback(spent)

    def _browser_login(self, previous: SessionCookie | None, subject: str, how: str) -> str:
        """The login id for `subject` logging in where `previous` (the browser's login
        cookie) is on: one login per browser. The same user's login goes on (so one
        logout ends every studio this browser opened); another user's ends first (its
        studios' cookies stay in this browser, and its logout could no longer reach
        them)."""
        if previous is not None and previous.subject == subject:
            return str(previous.login_id)
        if previous is not None:
            self.authorizer.logout(previous.login_id)
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
        c = self._login_cookie(request)
        if c is not None:  # (a login that ended already is cleared without asking)
            refused = self._logout_confirmed(request, f"{PREFIX}logout")
            if refused is not None:
                return refused
            self.authorizer.logout(c.login_id)
            self._log.info("{user} logged out", user=c.subject)
        clear = [clear_cookie_header(s.login_cookie_name, path=s.login_cookie_path,
                                     secure=s.secure_cookies)]
        if s.path_routing:
            sid = s.session_of_path(request.params().get("next", ""))
            if sid is not None:
                clear.append(clear_cookie_header(s.studio_cookie_name,
                                                 path=s.studio_cookie_path(sid),
                                                 secure=s.secure_cookies))
        next_url = s.safe_next(request.params().get("next"))
        if next_url is not None:
            return redirect(next_url, clear)
        return page(200, "Logged out", "You are logged out of the studios gateway.",
                    extra_headers=clear)

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
                                link=(f"{self.settings.proxy_url}{PREFIX}logout", "Log out")),
                           why=f"logout posted from elsewhere: {why}")
        query = f"?{request.query}" if request.query else ""
        action = html.escape(path + query)
        form = (f'<form method="post" action="{action}"><button type="submit">'
                "Log out</button></form>")
        return page(200, "Log out", "Log out of the studios gateway? Every studio opened "
                    "with this login in this browser stops working until you log in again.",
                    body_html=form)

    def _studio_logout(self, request: RequestInfo, session_id: str) -> Response:
        """A studio host's logout is the proxy host's: its page and its post. On the
        studio's own host the tool's pages are the same origin, so a post there could
        not be told from the tool's own script, which would end its visitor's login
        (every studio of it); the proxy host's origin belongs to the gateway alone."""
        return replace(redirect(f"{self.settings.proxy_url}{PREFIX}logout"), status=303)

    # Refresh before expiry -------------------------------------------------------------

    def _keep_fresh(self, login_id: str, tokens: TokenSet, login_expires: float) -> None:
        """While the login lasts, refresh its tokens before they expire; a refused
        refresh (the issuer ended the login) logs the user out everywhere."""
        if self.rp is None or not tokens.refresh_token or tokens.expires_at is None:
            return
        now = self._reactor.seconds()
        lifetime = max(0.0, tokens.expires_at - now)
        # A fifth of the lifetime (at most a minute) before expiry; at most once a second.
        at = now + max(REFRESH_MIN_INTERVAL, lifetime - min(60.0, lifetime / 5))
        if at >= login_expires:
            self._refreshes.pop(login_id, None)
            return
        rp = self.rp

        def refresh() -> None:
            def ok(new: TokenSet) -> None:
                self._keep_fresh(login_id, new, login_expires)

            def failed(f: Any) -> None:
                self._refreshes.pop(login_id, None)
                if f.check(LoginFailed):
                    self._log.info("the issuer refused to refresh a login: logging it out")
                    self.authorizer.logout(login_id)
                else:
                    self._log.warn("refreshing a login failed: {why}", why=str(f.value))
                    self._keep_fresh(login_id, TokenSet(
                        tokens.access_token, tokens.id_token, tokens.refresh_token,
                        self._reactor.seconds() + 30.0), login_expires)

            if self.authorizer.is_logged_out(login_id):
                self._refreshes.pop(login_id, None)
                return
            rp.refresh(tokens).addCallbacks(ok, failed)

        self._refreshes[login_id] = self._reactor.callLater(at - now, refresh)
