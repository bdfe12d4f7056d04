"""Login settings and URL policy: where the login routes live, which host or path is a
studio's, which cookie a studio's login uses, and which ``next`` URLs may be followed.

Plain logic, no I/O: :mod:`studios_gateway.auth.login` and
:mod:`studios_gateway.auth.routes` ask it for every decision.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

from studios_gateway.auth.cookies import cookie_name
from studios_gateway.config import default_of
from studios_gateway.wire.ids import SESSION_ID

__all__ = ["BROWSER_COOKIE", "HANDOFF_COOKIE", "LOGIN_COOKIE", "LOGOUT_COOKIE", "PREFIX",
           "RETURN_COOKIE", "SWITCH", "AuthSettings"]

PREFIX = "/_connect/"
LOGIN_COOKIE = "connect_login"
#: Set by /_connect/login before the issuer is asked: the callback completes a login
#: only in the browser that began it.
BROWSER_COOKIE = "connect_browser"
#: Set by a studio's host (subdomain mode): a hand-off completes only in the browser
#: whose value it names.
HANDOFF_COOKIE = "connect_handoff"
#: Set with the page after a logout that links to the issuer's logout: the state that
#: logout brings back to /_connect/logged-out counts only in the browser that has it.
LOGOUT_COOKIE = "connect_logout"
#: Set with each OpenID login's start on the proxy host: the page that login leads to
#: (signed), for a callback whose login is over (the Back button, a login left open at
#: the issuer past its time) to lead there rather than nowhere.
RETURN_COOKIE = "connect_return"
#: The login page's parameter (``switch=1``) of a login begun from "Log in as someone
#: else": the issuer is asked to have the person log in again (prompt=login).
SWITCH = "switch"



def same_origin(a: str, b: str) -> bool:
    """Whether two http(s) URLs name the same origin (scheme, host, port)."""
    ua, ub = urlsplit(a), urlsplit(b)
    default = {"http": 80, "https": 443}
    try:
        return ((ua.scheme.lower(), ua.hostname, ua.port or default.get(ua.scheme.lower()))
                == (ub.scheme.lower(), ub.hostname, ub.port or default.get(ub.scheme.lower())))
    except ValueError:  # a port out of range: config refuses such URLs anyway
        return False


@dataclass(frozen=True)
class AuthSettings:
    proxy_url: str  # e.g. https://connect.example.com (a port if not the default)
    studios_domain: str
    path_routing: bool
    storage_root: str
    secure_cookies: bool
    issuer: str | None = None  # None: login links only
    platform_url: str | None = None  # the access call; None: owner and allow-list only
    client_name: str = default_of("client_name")
    registration_token: str | None = field(default=None, repr=False)
    client_id: str | None = None
    client_secret: str | None = field(default=None, repr=False)
    scopes: tuple[str, ...] = tuple(default_of("oidc_scopes").split())
    user_claim: str = default_of("oidc_user_claim")
    cache_ttl: float = default_of("local_cache_ttl")
    login_ttl: float = default_of("login_ttl")
    link_ttl: float = default_of("login_link_ttl")
    handoff_ttl: float = 60.0
    timeout: float = 10.0

    @property
    def platform_gets_credentials(self) -> bool:
        """Whether the Platform's calls may carry the OpenID client's id and secret: only
        when the issuer that client is registered with is the Platform itself (same
        origin). Another provider's client secret is never sent to a third party."""
        if self.issuer is None or self.platform_url is None:
            return False
        return same_origin(self.issuer, self.platform_url)

    @classmethod
    def from_config(cls, config: Any, **overrides: Any) -> AuthSettings:
        """From the gateway's Config. Variables proposed for auth and not (yet) in the
        Config are read with getattr and fall back to the defaults above."""
        issuer = getattr(config, "oidc_issuer_url", None) or config.platform_url
        values: dict[str, Any] = dict(
            proxy_url=config.effective_proxy_url.rstrip("/"),
            studios_domain=config.effective_studios_domain,
            path_routing=config.path_routing, storage_root=config.storage_root,
            secure_cookies=(config.effective_proxy_url.startswith("https://")
                            or bool(config.tls_cert_file)),
            issuer=issuer, platform_url=config.platform_url, client_name=config.client_name,
            registration_token=config.oidc_registration_token,
            client_id=getattr(config, "oidc_client_id", None),
            client_secret=getattr(config, "oidc_client_secret", None),
            cache_ttl=config.local_cache_ttl)
        for attr, name in (("login_ttl", "login_ttl"), ("link_ttl", "login_link_ttl"),
                           ("user_claim", "oidc_user_claim")):
            v = getattr(config, name, None)
            if v is not None:
                values[attr] = v
        scopes = getattr(config, "oidc_scopes", None)
        if scopes:
            values["scopes"] = tuple(scopes.split()) if isinstance(scopes, str) else tuple(scopes)
        values.update(overrides)
        return cls(**values)

    # Derived URLs ----------------------------------------------------------------

    @property
    def _parts(self) -> Any:
        return urlsplit(self.proxy_url)

    @property
    def scheme(self) -> str:
        return self._parts.scheme

    @property
    def proxy_host(self) -> str:
        return (self._parts.hostname or "localhost").lower()

    def origin(self, host: str) -> str:
        """The origin of `host` on this gateway: its scheme and port (the proxy URL's)."""
        port = self._parts.port
        return f"{self.scheme}://{host}:{port}" if port else f"{self.scheme}://{host}"

    def proxy_page(self, name: str, **query: str | None) -> str:
        """The proxy host's page ``/_connect/<name>``, with those of `query` that have a
        value (percent-encoded, in the order given)."""
        url = f"{self.proxy_url}{PREFIX}{name}"
        given = {k: v for k, v in query.items() if v}
        return url + "?" + urlencode(given, quote_via=quote) if given else url

    @property
    def redirect_uri(self) -> str:
        return self.proxy_page("callback")

    @property
    def post_logout_redirect_uri(self) -> str:
        """The page the issuer's own logout sends the browser back to."""
        return self.proxy_page("logged-out")

    def studio_origin(self, session_id: str) -> str:
        return self.origin(f"{session_id}.{self.studios_domain}")

    def studio_url(self, session_id: str) -> str:
        if self.path_routing:
            return f"{self.proxy_url}/_studio/{session_id}/"
        return self.studio_origin(session_id) + "/"

    def studio_cookie_path(self, session_id: str) -> str:
        return f"/_studio/{session_id}/" if self.path_routing else "/"

    @property
    def login_cookie_name(self) -> str:
        """``__Host-connect_login`` under HTTPS (Secure, Path=/, no Domain): a page on a
        studio's host cannot set or shadow it, not even from JavaScript."""
        return self._host_only(LOGIN_COOKIE)

    def _host_only(self, name: str) -> str:
        """`name` with the ``__Host-`` prefix under HTTPS (Secure, Path=/, no Domain)."""
        return f"__Host-{name}" if self.secure_cookies else name

    @property
    def login_cookie_path(self) -> str:
        return "/" if self.secure_cookies else PREFIX

    @property
    def handoff_cookie_name(self) -> str:
        """A studio host's hand-off cookie (path and prefix as the login cookie's)."""
        return self._host_only(HANDOFF_COOKIE)

    @property
    def logout_cookie_name(self) -> str:
        """The cookie that binds the issuer's logout's state to the browser (path and
        prefix as the login cookie's)."""
        return self._host_only(LOGOUT_COOKIE)

    @property
    def return_cookie_name(self) -> str:
        """The page the browser's last login was for (path and prefix as the login
        cookie's)."""
        return self._host_only(RETURN_COOKIE)

    @property
    def browser_cookie_name(self) -> str:
        """The login's browser cookie (path and prefix as the login cookie's)."""
        return self._host_only(BROWSER_COOKIE)

    @cached_property  # asked on every request (the login's fast path); settings are frozen
    def studio_cookie_name(self) -> str:
        return cookie_name(secure=self.secure_cookies, host_only_root=not self.path_routing)

    def session_of_host(self, hostname: str) -> str | None:
        """The session id when `hostname` is a studio's own host (subdomain mode)."""
        suffix = "." + self.studios_domain
        if self.path_routing or not hostname.endswith(suffix):
            return None
        label = hostname[: -len(suffix)]
        return label if SESSION_ID.fullmatch(label) else None

    def session_of_path(self, path: str) -> str | None:
        if not self.path_routing or not path.startswith("/_studio/"):
            return None
        label = path[len("/_studio/"):].split("/", 1)[0]
        return label if SESSION_ID.fullmatch(label) else None

    def safe_next(self, raw: str | None) -> str | None:
        """`raw` if it is a place on this gateway (the proxy host or a studio), else None.

        Accepts a path on the proxy host ('/x', never '//x' or '/\\x') or an absolute
        URL with the gateway's scheme and port and a host that is the proxy host or a
        studio's host. Control characters, backslashes and user info are refused.
        """
        if not raw or len(raw) > 4096 or any(ord(c) < 0x21 or c == "\x7f" for c in raw) \
                or "\\" in raw:
            return None
        if raw.startswith("/"):
            return None if raw.startswith("//") else raw
        try:
            u = urlsplit(raw)
            port = u.port
        except ValueError:
            return None
        if u.scheme != self.scheme or u.username is not None or u.password is not None \
                or "@" in u.netloc or port != self._parts.port or not u.hostname:
            return None
        host = u.hostname.lower()
        if host != self.proxy_host and self.session_of_host(host) is None:
            return None
        return raw

    def login_again(self, next_url: str | None, *, bind: str | None = None,
                    ask_again: bool = False) -> str:
        """The proxy host's login, leading back to `next_url` once done (to "/" without).
        `bind`: a studio host's hand-off cookie, which the hand-off code that login makes
        must name (routes.LoginRoutes._handoff). `ask_again`: the person chose to log in
        as someone else, so the issuer is to ask who they are even where its own login is
        open (``switch=1``; the request to the issuer carries ``prompt=login``)."""
        return self.proxy_page("login", next=next_url, bind=bind,
                               **{SWITCH: "1" if ask_again else None})

    def studio_of_next(self, next_url: str) -> tuple[str | None, str]:
        """(session id or None, the path on that session's host) for a checked `next`."""
        if next_url.startswith("/"):
            return self.session_of_path(next_url), next_url
        u = urlsplit(next_url)
        path = (u.path or "/") + (f"?{u.query}" if u.query else "")
        host = (u.hostname or "").lower()
        if host == self.proxy_host:
            return self.session_of_path(path), path
        return self.session_of_host(host), path
