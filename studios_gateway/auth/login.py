"""Logins and per-request authorization, for the HTTP proxy to mount.

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
speaks Deferreds. The routes' pages are :mod:`studios_gateway.auth.routes`; an OpenID
login's tokens are refreshed by :mod:`studios_gateway.auth.refresh`.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from studios_gateway.auth.authorizer import (
    NOT_ALLOWED,
    WORKSPACE_REFUSED,
    Authorizer,
    Decision,
    PlatformAccess,
)
from studios_gateway.auth.cookies import (
    COOKIE_NAME,
    SKEW,
    CookieCodec,
    SessionCookie,
    Signer,
    cookie_values,
)
from studios_gateway.auth.files import load_or_create_key
from studios_gateway.auth.oidc import (
    ConfigurationError,
    OIDCError,
    OIDCSettings,
    RelyingParty,
)
from studios_gateway.auth.refresh import LoginRefresher
from studios_gateway.auth.routes import (
    LINK,
    LoginRoutes,
    Response,
    first_live,
    page,
    redirect,
)
from studios_gateway.auth.settings import (
    BROWSER_COOKIE,
    HANDOFF_COOKIE,
    LOGIN_COOKIE,
    LOGOUT_COOKIE,
    PREFIX,
    RETURN_COOKIE,
    SWITCH,
    AuthSettings,
)
from studios_gateway.http import pages
from studios_gateway.http.request import RequestInfo
from studios_gateway.memos import make_room
from studios_gateway.registry.base import SessionRecord
from studios_gateway.registry.memory import MemoryStore

__all__ = [
    "Auth",
    "Identity",
    "RequestInfo",
    "Response",
    "SUBJECT_HEADER",
    "GATEWAY_COOKIES",
    "check_signing_key",
    "platform_credentials",
    "strip_auth_cookie",
    "strip_auth_cookies",
]

SUBJECT_HEADER = b"X-Connect-Sub"
#: The gateway's cookie names, lower-cased, with the prefixed forms a browser treats
#: specially: a tool's Set-Cookie with one of these names never reaches the browser.
GATEWAY_COOKIES = frozenset(
    f"{prefix}{name}".lower()
    for name in (COOKIE_NAME, LOGIN_COOKIE, BROWSER_COOKIE, HANDOFF_COOKIE, LOGOUT_COOKIE,
                 RETURN_COOKIE)
    for prefix in ("", "__Host-", "__Secure-"))
KEY_FILE = "auth-signing.key"
#: The browser's ``Sec-Fetch-Dest`` of a page load into a frame of another page.
FRAMES = frozenset((b"iframe", b"frame", b"fencedframe", b"embed", b"object"))
#: Journals under the storage root (one node, no Redis): logins that ended, used login
#: links and hand-off codes.
LOGOUTS = "auth-logouts.log"
SPENT = "auth-spent.log"
#: Retrying an unreachable issuer at start: first after this many seconds, doubling up to
START_RETRY_FIRST = 1.0
#: ... this many.
START_RETRY_MAX = 30.0
#: How many of authorized_now's answers are remembered (one per Cookie value and studio;
#: once full, the oldest goes).
FAST_MEMO_MAX = 4096
# Header names seen that are not Cookie (as sent): authorized_now's look for the Cookie
# line is one set look-up per other line instead of a lower(). Bounded; nothing evicted.
_NOT_COOKIE: set[bytes] = set()
_NOT_COOKIE_MAX = 512


# Requests and responses ------------------------------------------------------------------

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


def pending_logins(store: Any, local: MemoryStore | None) -> Any:
    """Where OpenID logins wait for their callback: the shared store (Redis, under the
    local cache), so the callback may land on any node; None (this process's memory)
    for one node."""
    if local is not None:
        return None
    inner = getattr(store, "inner", store)
    return inner if hasattr(inner, "take_pending_login") else None


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

def check_signing_key(config: Any) -> str | None:
    """For check-config: why the start would refuse the login signing key kept under
    CONNECT_STORAGE_ROOT, in the start's words (none there yet, or usable: None)."""
    from studios_gateway.auth.files import StorageError, read_key

    try:
        read_key(Path(config.storage_root) / KEY_FILE)
    except StorageError as e:
        return str(e)
    return None


class Auth:
    """Per-request authorization for the HTTP proxy, the login routes it mounts
    (`routes`), the issuer's start and the login links that the admin API prints."""

    _log = Logger()

    def __init__(self, settings: AuthSettings, *, reactor: Any, authorizer: Authorizer,
                 rp: RelyingParty | None = None, key: bytes | None = None):
        self.settings = settings
        self._reactor = reactor
        self.authorizer = authorizer
        self.rp = rp
        key = key if key is not None else load_or_create_key(
            Path(settings.storage_root) / KEY_FILE)
        signer = Signer(key)
        self._signer = signer
        #: The login's signing key, which the HTTP proxy's marks derive a key of their
        #: own from (http.loop.Marks): every process and node of a deployment shares it.
        self.signing_key = key
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
        self._refresher = LoginRefresher(rp, authorizer, reactor=reactor)
        self._start_retry: Any = None
        self._start_tried = 0.0
        self._stopped = False
        #: The issuer could not be reached at start (and is being asked again).
        self.issuer_down = False
        #: The /_connect/ routes.
        self.routes = LoginRoutes(settings, reactor=reactor, authorizer=authorizer, rp=rp,
                                  signer=signer, cookies=self._cookies,
                                  refresher=self._refresher,
                                  issuer_unreachable=self._issuer_unreachable)

    @property
    def on_login(self) -> Callable[[str, bool], Any]:
        """on_login(kind, ok): a login ("oidc", "link", "handoff") succeeded or failed."""
        return self.routes.on_login

    @on_login.setter
    def on_login(self, call: Callable[[str, bool], Any]) -> None:
        self.routes.on_login = call

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
                post_logout_redirect_uri=s.post_logout_redirect_uri,
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
            # (Whether the issuer accepts the client is asked by check-config --connect,
            # not at every start: a made-up code exchange is a failed token request in
            # the issuer's own log, Keycloak's CODE_TO_TOKEN_ERROR event, Auth0's "Failed
            # Exchange", once per node and restart. A refused client is said at the first
            # login it fails, as an error.)

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

    def _issuer_unreachable(self) -> bool:
        """Whether the issuer could not be reached at start. When so, somebody wants to
        log in: ask it again now rather than at the next back-off step (at most every
        START_RETRY_FIRST)."""
        if not self.issuer_down:
            return False
        call = self._start_retry
        if call is not None and call.active() \
                and self._reactor.seconds() - self._start_tried >= START_RETRY_FIRST:
            call.reset(0)
        return True

    def stop(self) -> Deferred[None]:
        """Cancel refreshes, close connections to the issuer and the Platform."""
        self._stopped = True
        if self._start_retry is not None and self._start_retry.active():
            self._start_retry.cancel()
        self._start_retry = None
        self._refresher.stop()
        waits = [self.authorizer.stop(), self.rp.stop() if self.rp is not None else None]
        return defer.gatherResults([d for d in waits if d is not None]).addCallback(
            lambda _: None)

    # Login links (no issuer) ---------------------------------------------------------

    def mint_login_link(self, session_id: str, user: str) -> str:
        """A one-time link that logs `user` in to `session_id` (valid for link_ttl)."""
        now = self._reactor.seconds()
        token = self._signer.sign(LINK, {"sub": user, "sid": session_id,
                                          "exp": int(now + self.settings.link_ttl),
                                          "jti": secrets.token_urlsafe(12)})
        return self.settings.proxy_page("link", token=token)

    # Per request ----------------------------------------------------------------------

    def _studio_cookie(self, request: RequestInfo, session_id: str) -> Identity | None:
        c = self._studio_claims(request, session_id)
        return None if c is None else Identity(c.subject, session_id, c.login_id,
                                               c.expires_at)

    def _studio_claims(self, request: RequestInfo, session_id: str) -> SessionCookie | None:
        """The first of the request's studio cookies that is valid for `session_id` and
        whose login has not ended."""
        return first_live(self._cookies, self.authorizer, cookie_values(
            request.headers, self.settings.studio_cookie_name), session_id)

    def _here(self, request: RequestInfo) -> str:
        """The address `request` asked for, as a login's ``next``."""
        s = self.settings
        if s.path_routing:
            return request.target
        return s.origin(request.hostname) + request.target

    def login_url(self, request: RequestInfo) -> str:
        return self.settings.login_again(self._here(request))

    def switch_user_url(self, request: RequestInfo) -> str:
        """Where "Log in as someone else" leads: the gateway's logout (its "Log out"
        button), then back here through a login that asks the issuer to have the person
        log in again (prompt=login): an issuer that keeps its own login (single sign-on)
        would otherwise answer at once with the same person. An issuer whose discovery
        document says it cannot (``prompt_values_supported`` without "login"): the logout
        alone, whose page says that logging in as someone else takes the issuer's own
        logout ("Also log out of <issuer>", after which a "Log in as someone else" leads
        back here: ``back``), or closing the browser when the issuer has none. Login
        links: the logout, then the login page (which says how to get a link). The
        logout's own ``switch=1`` marks it as that first step: its page says why it comes
        first, and the login after it learns who was refused."""
        s, rp = self.settings, self.rp
        if rp is not None and not rp.can_ask_again:
            return s.proxy_page("logout", back=self._here(request), **{SWITCH: "1"})
        return s.proxy_page("logout", next=s.login_again(self._here(request),
                                                          ask_again=rp is not None),
                            **{SWITCH: "1"})

    def authenticate(self, request: RequestInfo,
                     session_id: str) -> Deferred[Identity | Response]:
        """Who is this (a valid cookie for this very session), or the response to send:
        a redirect to the login for a page load, 401 for anything else.

        A page load is a GET or HEAD that is not a WebSocket's and that the browser does
        not mark as a script's (``Sec-Fetch-Mode`` other than ``navigate``). A script's
        request (an open page whose login has ended or was logged out in another tab)
        followed the redirect: to the proxy host's login in subdomain mode, which no
        script may read, so JupyterLab said "Server Connection Error ... Check your
        network connection"; in path mode to a 401 page, which JupyterLab said nothing
        of until a save failed with "Invalid response: 401 Unauthorized". It gets 401
        itself now, in JSON for a script's fetch (``Sec-Fetch-Dest: empty``), whose
        ``message`` JupyterLab shows in its dialogs. A frame's page load (``Sec-Fetch-Dest``
        iframe...: a webview of VS Code's) gets 401 with the words to show in the frame:
        the login's pages refuse frames, so the redirect left it blank."""
        ident = self._studio_cookie(request, session_id)
        if ident is not None:
            return defer.succeed(ident)
        upgrade = request.header(b"upgrade") is not None
        mode = request.header(b"sec-fetch-mode")
        scripted = mode is not None and mode != b"navigate"
        if request.method in ("GET", "HEAD") and not upgrade and not scripted:
            if request.header(b"sec-fetch-dest") in FRAMES:
                return defer.succeed(pages.login_ended_in_frame(session_id))
            return defer.succeed(redirect(self.login_url(request)))
        if scripted and request.header(b"sec-fetch-dest") == b"empty":
            return defer.succeed(pages.login_required_for_script(session_id,
                                                                   self.login_url(request)))
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
        c = first_live(self._cookies, self.authorizer, values, session_id)
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
            # Those past their time go too: a browser that logged out never sends its Cookie
            # line again, and each login's answer stayed until FAST_MEMO_MAX newer ones had
            # pushed it out (soak53).
            now = self._reactor.seconds()
            make_room(memo, self._fast_memo_max, lambda answer: answer[1] <= now)
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
            # A studio ended while its page was open lands here on the next load (and
            # with the page's own requests): say so, as 410 (pages.session_gone).
            refusal = pages.session_gone(sid)
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
            switch = self.switch_user_url(request)
            # The authorizer's reason ("not allowed on this session") is for the access
            # line; the person reads who they are here and what would let them in.
            text = (f"You are logged in as {who.subject}, and studio {sid} is not shared "
                    f"with {who.subject}. Ask its owner to share it with you, or log in as "
                    "someone else." if decision.reason == NOT_ALLOWED else
                    f"{who.subject} may not use studio {sid} ({decision.reason}).")
            refusal = page(403, "Access denied", text,
                           link=(switch, "Log in as someone else"))
        # The access line names the logged-in user and the decision's reason ("not
        # allowed on this session"), not "-" and "forbidden".
        return replace(refusal, user=who.subject, why=decision.reason)

    # The /_connect/ routes ----------------------------------------------------------------

    def handle(self, request: RequestInfo) -> Deferred[Response | None]:
        """The response for one of the gateway's own routes, or None (not ours)."""
        return self.routes.handle(request)
