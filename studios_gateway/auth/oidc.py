"""OpenID Connect relying party: discovery, dynamic registration, code flow with PKCE.

One :class:`RelyingParty` per gateway process. :meth:`RelyingParty.start`
reads the issuer's discovery document and makes sure we have a client: a
static one from the configuration, the one registered earlier (kept in
``oidc-client.json`` under CONNECT_STORAGE_ROOT, mode 0600), or a new one
registered (RFC 7591) with the initial access token. A refused registration
fails the start with a message that names the variable to fix.

A login is :meth:`begin` (a fresh state, nonce and PKCE S256 verifier, kept
in a bounded single-use table, and the authorization URL; with a shared store,
Redis, they are kept there instead, so the callback may land on any node) and then
:meth:`finish` with the callback's query: the state is taken once, the code
exchanged, and the ID token's signature (the issuer's JWKS, refetched on an
unknown key id at most every `jwks_min_refresh` seconds) and claims (iss,
aud, azp, exp, iat, nonce) checked. Every call to the issuer goes through
treq with a timeout. Tokens, codes and secrets are never logged.

:meth:`RelyingParty.logout_url` is the issuer's own logout (OpenID Connect
RP-Initiated Logout 1.0) when its discovery document names an
``end_session_endpoint``; a registered client asks for the gateway's
post-logout page as a ``post_logout_redirect_uris`` entry.

A login begun with ``ask_again`` (the person chose to log in as someone else) asks the
issuer to have them log in again (``prompt=login``, OpenID Connect Core 3.1.2.1) rather
than answer at once from the issuer's own login, unless the discovery document's
``prompt_values_supported`` leaves "login" out (:attr:`RelyingParty.can_ask_again`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote, urlencode, urlsplit

import jwt
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from studios_gateway.auth.answers import AnswerFailed, quiet_pool, read_answer
from studios_gateway.auth.cookies import Clock
from studios_gateway.auth.files import StorageError, read_json, write_private_json
from studios_gateway.auth.onetime import OneTimeTable
from studios_gateway.config import default_of
from studios_gateway.registry.base import PendingLogins, StoreUnavailable

__all__ = [
    "CLIENT_FILE",
    "ClientRefused",
    "ClientRegistration",
    "ClientUnconfirmed",
    "ConfigurationError",
    "LoginFailed",
    "LoginResult",
    "LoginUnavailable",
    "OIDCError",
    "OIDCSettings",
    "ProviderMetadata",
    "RelyingParty",
    "StateUnknown",
    "TokenSet",
]

CLIENT_FILE = "oidc-client.json"
_D = TypeVar("_D")  # a default the discovery document's lists fall back to
BASIC = "client_secret_basic"  # noqa: S105 - the name of an auth method, not a secret
#: Signature algorithms we accept on ID tokens (asymmetric only; never "none").
SAFE_ALGS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512",
             "EdDSA")


class OIDCError(Exception):
    """Talking to the OpenID provider failed; the message is safe to show and log."""


class ConfigurationError(OIDCError):
    """The provider or our settings make logins impossible: stop the start."""


class LoginFailed(OIDCError):
    """One login attempt was refused (bad or replayed state, code, token). `next_url` and
    `extra`: where the refused login was to lead and what its beginning kept with it
    (known once its state was), for "Try again"."""

    next_url: str | None = None
    extra: Mapping[str, Any] | None = None
    #: The issuer's OAuth error code (``invalid_grant``...) when its answer had one.
    error: str | None = None


class StateUnknown(LoginFailed):
    """The callback's state names no login waiting: finished already (the browser's Back
    button went back to the issuer, which answered again), over its time at the issuer,
    begun before a restart, or made up."""


class ClientRefused(LoginFailed):
    """The issuer does not accept the gateway's own client (its id or secret: HTTP 401,
    invalid_client): every login fails until the operator fixes the configuration, and
    it says nothing about the person logging in or their login."""


class ClientUnconfirmed(OIDCError):
    """check-config's made-up code exchange was answered with neither ``invalid_grant``
    (the code refused: the client accepted) nor a refusal of the client (the token
    endpoint down or not found, or an issuer's own words, such as Gitea's
    ``unauthorized_client`` for a wrong secret and an unknown code alike)."""


class IssuerUnreachable(OIDCError):
    """The issuer gave no usable answer (down, a timeout, its TLS, a server error): a
    moment later it may; not a refusal of anything."""


class LoginUnavailable(OIDCError):
    """The shared store that keeps logins between their start and their callback cannot
    be reached, or the issuer could not be at the callback: the person should try again
    in a moment. `next_url` and `extra`: where the login was to lead and what its beginning
    kept with it, once its state was known (as LoginFailed's)."""

    next_url: str | None = None
    extra: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class OIDCSettings:
    issuer: str
    redirect_uri: str
    storage_root: str
    #: Where the issuer's logout sends the browser back (registered with the client).
    post_logout_redirect_uri: str | None = None
    client_name: str = default_of("client_name")
    registration_token: str | None = field(default=None, repr=False)
    client_id: str | None = None
    client_secret: str | None = field(default=None, repr=False)
    scopes: tuple[str, ...] = tuple(default_of("oidc_scopes").split())
    timeout: float = 10.0
    login_ttl: float = 600.0  # how long a started login (state, nonce, verifier) stays valid
    #: Bounds on the logins this node began and that are not finished yet (a flood of
    #: /_connect/login requests evicts the oldest of them): how many, and with a shared
    #: store how many bytes (what the flood can make each node keep in Redis).
    max_pending: int = 10_000
    max_pending_bytes: int = 16 * 1024 * 1024
    jwks_min_refresh: float = 60.0
    leeway: float = 60.0

    @property
    def client_file(self) -> Path:
        return Path(self.storage_root) / CLIENT_FILE


@dataclass(frozen=True)
class ProviderMetadata:
    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    userinfo_endpoint: str | None = None
    registration_endpoint: str | None = None
    end_session_endpoint: str | None = None
    code_challenge_methods: tuple[str, ...] = ()
    id_token_algs: tuple[str, ...] = ("RS256",)
    token_auth_methods: tuple[str, ...] = (BASIC,)
    #: ``prompt_values_supported`` (Initiating User Registration via OpenID Connect 1.0);
    #: None when the document has none (OpenID Connect Core's values then).
    prompt_values: tuple[str, ...] | None = None

    @property
    def prompts_login(self) -> bool:
        """Whether an authorization request may carry ``prompt=login``: the issuer lists
        it, or lists no prompt values at all (Core defines it for every issuer; some
        refuse a value they do not list)."""
        return self.prompt_values is None or "login" in self.prompt_values

    @classmethod
    def from_dict(cls, data: Any, expected_issuer: str) -> ProviderMetadata:
        where = f"the discovery document of {expected_issuer}"
        if not isinstance(data, dict):
            raise ConfigurationError(f"{where} is not a JSON object")

        def url(key: str, required: bool = True) -> str | None:
            v = data.get(key)
            if v is None and not required:
                return None
            if not isinstance(v, str) or urlsplit(v).scheme not in ("http", "https"):
                raise ConfigurationError(f"{where} has no valid {key}")
            return v

        issuer = data.get("issuer")
        if not isinstance(issuer, str) or issuer.rstrip("/") != expected_issuer.rstrip("/"):
            raise ConfigurationError(
                f"{where} names the issuer {issuer!r}; it must be the configured issuer")

        def strings(key: str, default: _D) -> tuple[str, ...] | _D:
            v = data.get(key)
            if isinstance(v, list) and all(isinstance(x, str) for x in v):
                return tuple(v)
            return default

        return cls(
            issuer=issuer, authorization_endpoint=url("authorization_endpoint"),  # type: ignore[arg-type]
            token_endpoint=url("token_endpoint"), jwks_uri=url("jwks_uri"),  # type: ignore[arg-type]
            userinfo_endpoint=url("userinfo_endpoint", False),
            registration_endpoint=url("registration_endpoint", False),
            end_session_endpoint=url("end_session_endpoint", False),
            code_challenge_methods=strings("code_challenge_methods_supported", ()),
            id_token_algs=strings("id_token_signing_alg_values_supported", ("RS256",)),
            token_auth_methods=strings("token_endpoint_auth_methods_supported",
                                       (BASIC,)),
            prompt_values=strings("prompt_values_supported", None),
        )


@dataclass(frozen=True)
class ClientRegistration:
    issuer: str
    client_name: str
    client_id: str
    client_secret: str | None = field(repr=False)
    redirect_uris: tuple[str, ...]
    token_endpoint_auth_method: str = BASIC
    registered_at: float = 0.0
    static: bool = False
    #: The pages the issuer's logout may send the browser back to (a client registered
    #: before the gateway asked for them has none: the issuer shows its own page then).
    post_logout_redirect_uris: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"issuer": self.issuer, "client_name": self.client_name,
                "client_id": self.client_id, "client_secret": self.client_secret,
                "redirect_uris": list(self.redirect_uris),
                "post_logout_redirect_uris": list(self.post_logout_redirect_uris),
                "token_endpoint_auth_method": self.token_endpoint_auth_method,
                "registered_at": self.registered_at}

    @classmethod
    def from_dict(cls, data: Any) -> ClientRegistration | None:
        try:
            return cls(issuer=str(data["issuer"]), client_name=str(data["client_name"]),
                       client_id=str(data["client_id"]),
                       client_secret=(None if data.get("client_secret") is None
                                      else str(data["client_secret"])),
                       redirect_uris=tuple(str(u) for u in data["redirect_uris"]),
                       post_logout_redirect_uris=tuple(
                           str(u) for u in data.get("post_logout_redirect_uris") or ()),
                       token_endpoint_auth_method=str(
                           data.get("token_endpoint_auth_method", BASIC)),
                       registered_at=float(data.get("registered_at", 0.0)))
        except (KeyError, TypeError, ValueError):
            return None

    def fits(self, settings: OIDCSettings, issuer: str) -> bool:
        return (self.issuer.rstrip("/") == issuer.rstrip("/")
                and self.client_name == settings.client_name
                and settings.redirect_uri in self.redirect_uris)


@dataclass(frozen=True)
class TokenSet:
    access_token: str | None = field(repr=False)
    id_token: str | None = field(repr=False)
    refresh_token: str | None = field(repr=False)
    expires_at: float | None

    @classmethod
    def from_response(cls, data: Mapping[str, Any], now: float,
                      previous: TokenSet | None = None) -> TokenSet:
        expires_in = data.get("expires_in")
        try:
            expires_at = now + float(expires_in) if expires_in is not None else None
        except (TypeError, ValueError):
            expires_at = None
        refresh = data.get("refresh_token")
        if not isinstance(refresh, str):
            refresh = previous.refresh_token if previous else None
        access = data.get("access_token")
        id_token = data.get("id_token")
        return cls(access_token=access if isinstance(access, str) else None,
                   id_token=id_token if isinstance(id_token, str) else None,
                   refresh_token=refresh, expires_at=expires_at)


@dataclass(frozen=True)
class LoginResult:
    subject: str
    claims: Mapping[str, Any]
    tokens: TokenSet
    next_url: str
    extra: Mapping[str, Any]


@dataclass(frozen=True)
class _Pending:
    nonce: str
    verifier: str
    next_url: str
    extra: Mapping[str, Any]
    #: The browser that began the login (a random value in its cookie); None: not bound.
    browser: str | None = None

    def to_json(self) -> str:
        return json.dumps({"nonce": self.nonce, "verifier": self.verifier,
                           "next_url": self.next_url, "extra": dict(self.extra),
                           "browser": self.browser}, ensure_ascii=False,
                          separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> _Pending | None:
        """None for anything but what to_json writes."""
        try:
            data = json.loads(text)
        except ValueError:
            return None
        if not isinstance(data, dict):
            return None
        nonce, verifier, next_url = data.get("nonce"), data.get("verifier"), data.get("next_url")
        extra, browser = data.get("extra"), data.get("browser")
        if not (isinstance(nonce, str) and isinstance(verifier, str)
                and isinstance(next_url, str) and isinstance(extra, dict)
                and (browser is None or isinstance(browser, str))):
            return None
        return cls(nonce, verifier, next_url, extra, browser)


def same_browser(expected: str, given: Sequence[str]) -> bool:
    """Whether one of `given` is `expected` (each compared in constant time)."""
    found = False
    for value in given:
        found |= hmac.compare_digest(value.encode("utf-8", "replace"),
                                     expected.encode("utf-8"))
    return found


def pkce_challenge(verifier: str) -> str:
    """RFC 7636 S256: base64url(sha256(verifier)) without padding."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def _short(text: str, n: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[:n] + "..."


def _oauth_error(body: Any, text: str) -> str:
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        desc = body.get("error_description")
        return body["error"] + (f" ({_short(desc)})" if isinstance(desc, str) else "")
    return _short(text) or "no details"


class RelyingParty:
    """The gateway as an OpenID Connect client of one issuer."""

    _log = Logger()

    def __init__(self, settings: OIDCSettings, *, reactor: Any, http: Any = None,
                 shared: PendingLogins | None = None):
        """`shared`: the store every node shares (Redis), which then keeps the logins
        between their start and their callback; None (one node): this process's memory."""
        self.settings = settings
        self._reactor = reactor
        self._clock: Clock = reactor
        self._pool: Any = None
        if http is None:
            http = self._make_client(reactor)
        self._http = http
        self.metadata: ProviderMetadata | None = None
        self.client: ClientRegistration | None = None
        self._pending: OneTimeTable[_Pending] = OneTimeTable(
            reactor, settings.login_ttl, settings.max_pending)
        self._shared = shared
        #: With a shared store: the logins this node began there (their sizes only), for
        #: the bounds (max_pending, max_pending_bytes); those evicted are dropped there.
        self._begun: OneTimeTable[None] = OneTimeTable(
            reactor, settings.login_ttl, settings.max_pending, settings.max_pending_bytes,
            on_evict=self._drop_begun)
        self._keys: dict[str, jwt.PyJWK] = {}
        self._keys_fetched_at: float | None = None
        self._keys_fetching: Deferred[None] | None = None

    # HTTP --------------------------------------------------------------------------

    def _make_client(self, reactor: Any) -> Any:
        from treq.client import HTTPClient
        from twisted.web.client import Agent

        self._pool = quiet_pool(reactor)
        self._pool.maxPersistentPerHost = 4
        return HTTPClient(Agent(reactor, pool=self._pool))

    def stop(self) -> Deferred[None] | None:
        """Close kept-alive connections to the issuer."""
        return self._pool.closeCachedConnections() if self._pool is not None else None

    async def _call(self, method: str, url: str, what: str, *,
                    data: Mapping[str, str] | None = None, json_body: Any = None,
                    headers: Mapping[str, str] | None = None) -> tuple[int, Any, str]:
        hdrs = {"Accept": ["application/json"]}
        for k, v in (headers or {}).items():
            hdrs[k] = [v]
        kwargs: dict[str, Any] = {"headers": hdrs}
        if data is not None:
            kwargs["data"] = dict(data)
        if json_body is not None:
            kwargs["json"] = json_body
        try:
            # The whole answer within the timeout: a stalled body (of the JWKS, which
            # every login with a new key waits for) must not hold logins forever.
            code, raw = await read_answer(self._http, method, url, reactor=self._reactor,
                                          within=self.settings.timeout, **kwargs)
        except AnswerFailed as e:
            raise IssuerUnreachable(f"{what} at {url} {e}") from None
        text = raw.decode("utf-8", "replace")
        try:
            body = json.loads(text) if text.strip() else None
        except ValueError:
            body = None
        return code, body, text

    # Start: discovery and the client --------------------------------------------

    def start(self) -> Deferred[None]:
        """Discover the issuer and make sure a client is registered. Fails with
        ConfigurationError (stop the start) or OIDCError (the issuer is unreachable)."""
        return Deferred.fromCoroutine(self._start())

    async def _start(self) -> None:
        self.metadata = await self._discover()
        self.client = await self._ensure_client(self.metadata)
        await self._fetch_keys()

    def discover(self) -> Deferred[ProviderMetadata]:
        """The issuer's discovery document, checked as a start checks it (not kept)."""
        return Deferred.fromCoroutine(self._discover())

    def fetch_keys(self) -> Deferred[None]:
        """Read the issuer's JWKS now (after :meth:`discover`'s metadata is set)."""
        return Deferred.fromCoroutine(self._fetch_keys())

    @property
    def key_count(self) -> int:
        """How many signing keys the last JWKS read gave."""
        return len(self._keys)

    async def _discover(self) -> ProviderMetadata:
        issuer = self.settings.issuer.rstrip("/")
        url = issuer + "/.well-known/openid-configuration"
        code, body, text = await self._call("GET", url, "OpenID discovery")
        if code != 200:
            # 5xx: the issuer (or a proxy before it) is down for now: asked again later.
            error = OIDCError if code >= 500 else ConfigurationError
            raise error(f"OpenID discovery at {url} answered HTTP {code}: {_short(text, 120)}")
        meta = ProviderMetadata.from_dict(body, issuer)
        if meta.code_challenge_methods and "S256" not in meta.code_challenge_methods:
            raise ConfigurationError(f"the issuer {issuer} does not support PKCE S256")
        return meta

    async def _ensure_client(self, meta: ProviderMetadata) -> ClientRegistration:
        s = self.settings
        if s.client_id:
            return self._static_client(meta.issuer)
        raw, stored = self._kept_client()
        if stored is not None and stored.fits(s, meta.issuer):
            self._log.info("using the OIDC client {client_id} registered with {issuer} "
                           "(from {path})", client_id=stored.client_id, issuer=meta.issuer,
                           path=str(s.client_file))
            if (isinstance(raw, dict) and "post_logout_redirect_uris" not in raw
                    and meta.end_session_endpoint and s.post_logout_redirect_uri):
                # Written by a release that did not ask for the post-logout page: the
                # issuer's logout works, but leaves people on the issuer's own page. The
                # operator learns it here, not from a user.
                self._log.info(
                    "the OIDC client {client_id} was registered by an earlier release, "
                    "without {page} as a post-logout page: after the issuer's logout people "
                    "stay on the issuer's page. To register again with it, stop every "
                    "gateway that uses {path}, delete that file, and start them "
                    "(docs/operators.md, Upgrade)", client_id=stored.client_id,
                    page=s.post_logout_redirect_uri, path=str(s.client_file))
            return stored
        if stored is not None:
            self._log.info("the stored OIDC client does not match the issuer, client name "
                           "or redirect URI {uri}: registering a new one", uri=s.redirect_uri)
        return await self._register(meta)

    def _kept_client(self) -> tuple[Any, ClientRegistration | None]:
        """The client file's JSON as read (``{}``: none yet) and the registration it holds
        (None: none usable); a file that cannot be read stops the start."""
        try:
            raw = read_json(self.settings.client_file) or {}
        except StorageError as e:
            raise ConfigurationError(str(e)) from None
        return raw, ClientRegistration.from_dict(raw)

    def _static_client(self, issuer: str) -> ClientRegistration:
        s = self.settings
        assert s.client_id is not None
        return ClientRegistration(
            issuer=issuer, client_name=s.client_name, client_id=s.client_id,
            client_secret=s.client_secret, redirect_uris=(s.redirect_uri,),
            token_endpoint_auth_method=BASIC if s.client_secret else "none",
            # Registered by hand: whether the post-logout page is among its addresses
            # is not known here, and an issuer that does not know it shows an error in
            # place of its logout. So the issuer's logout shows the issuer's own page.
            static=True)

    async def _register(self, meta: ProviderMetadata) -> ClientRegistration:
        s = self.settings
        if not meta.registration_endpoint:
            raise ConfigurationError(
                f"the issuer {meta.issuer} offers no dynamic client registration: set a "
                "static client (CONNECT_OIDC_CLIENT_ID and CONNECT_OIDC_CLIENT_SECRET)")
        headers = {}
        if s.registration_token:
            headers["Authorization"] = f"Bearer {s.registration_token}"
        auth_method = (BASIC if BASIC in meta.token_auth_methods
                       else "client_secret_post")
        body = {"client_name": s.client_name, "redirect_uris": [s.redirect_uri],
                "grant_types": ["authorization_code", "refresh_token"],
                "response_types": ["code"], "application_type": "web",
                "token_endpoint_auth_method": auth_method, "scope": " ".join(s.scopes)}
        if s.post_logout_redirect_uri:
            # RP-Initiated Logout 1.0: the issuer's logout may send the browser back there
            body["post_logout_redirect_uris"] = [s.post_logout_redirect_uri]
        code, answer, text = await self._call("POST", meta.registration_endpoint,
                                              "OIDC client registration", json_body=body,
                                              headers=headers)
        if code in (401, 403):
            hint = ("check CONNECT_OIDC_CLIENT_REGISTRATION_TOKEN" if s.registration_token
                    else "set CONNECT_OIDC_CLIENT_REGISTRATION_TOKEN (the initial access token)")
            raise ConfigurationError(
                f"the issuer {meta.issuer} refused to register the OIDC client "
                f"{s.client_name!r} (HTTP {code}: {_oauth_error(answer, text)}): {hint}")
        if code >= 500:
            raise OIDCError(f"OIDC client registration at {meta.registration_endpoint} "
                            f"answered HTTP {code}")
        if code not in (200, 201) or not isinstance(answer, dict) \
                or not isinstance(answer.get("client_id"), str):
            raise ConfigurationError(
                f"OIDC client registration at {meta.registration_endpoint} failed "
                f"(HTTP {code}: {_oauth_error(answer, text)})")
        secret = answer.get("client_secret")
        # Only what the issuer says it registered (RFC 7591 3.2.1: the answer holds every
        # registered field): an issuer without RP-Initiated Logout drops the field.
        back = answer.get("post_logout_redirect_uris")
        client = ClientRegistration(
            issuer=meta.issuer, client_name=s.client_name, client_id=answer["client_id"],
            client_secret=secret if isinstance(secret, str) else None,
            redirect_uris=tuple(answer.get("redirect_uris") or [s.redirect_uri]),
            token_endpoint_auth_method=str(answer.get("token_endpoint_auth_method")
                                           or auth_method),
            registered_at=self._clock.seconds(),
            post_logout_redirect_uris=tuple(u for u in back if isinstance(u, str))
            if isinstance(back, list) else ())
        try:
            write_private_json(s.client_file, client.to_dict())
        except StorageError as e:
            raise ConfigurationError(str(e)) from None
        self._log.info("registered the OIDC client {name!r} with {issuer} as {client_id}",
                       name=s.client_name, issuer=meta.issuer, client_id=client.client_id)
        return client

    # Client authentication -----------------------------------------------------

    def client_auth(self, form: dict[str, str]) -> dict[str, str]:
        """Headers for the token endpoint; adds client_id/secret to `form` when needed."""
        c = self._need_client()
        if c.client_secret and c.token_endpoint_auth_method == BASIC:
            return {"Authorization": basic_auth(c.client_id, c.client_secret)}
        form["client_id"] = c.client_id
        if c.client_secret:
            form["client_secret"] = c.client_secret
        return {}

    # Logging out of the issuer ----------------------------------------------------------

    @property
    def issuer_host(self) -> str:
        """The issuer's host (and port, if any), as a person knows it."""
        parts = urlsplit(self.metadata.issuer if self.metadata else self.settings.issuer)
        return parts.netloc.rpartition("@")[2] or self.settings.issuer

    def logout_url(self, *, id_token: str | None = None, state: str | None = None
                   ) -> str | None:
        """The address of the issuer's own logout (OpenID Connect RP-Initiated Logout
        1.0), for the browser to open; None when the issuer offers none (no
        ``end_session_endpoint``) or has not been reached yet.

        It names this client (``client_id``) and, when given, the login's ID token
        (``id_token_hint``, which lets the issuer end that session without asking). The
        issuer sends the browser back to the gateway's post-logout page, with `state`,
        only when the client has that page registered (else it shows its own page)."""
        meta, client = self.metadata, self.client
        if meta is None or client is None or not meta.end_session_endpoint:
            return None
        params = {"client_id": client.client_id}
        if id_token:
            params["id_token_hint"] = id_token
        back = self.settings.post_logout_redirect_uri
        if back and back in client.post_logout_redirect_uris:
            params["post_logout_redirect_uri"] = back
            if state:
                params["state"] = state
        endpoint = meta.end_session_endpoint
        # the endpoint's own query (if any) is kept: RP-Initiated Logout 1.0 section 2
        return endpoint + ("&" if "?" in endpoint else "?") + urlencode(params, quote_via=quote)

    @property
    def can_ask_again(self) -> bool:
        """Whether a login may ask the issuer to have the person log in again
        (``prompt=login``): the issuer has not said it cannot (an issuer not reached yet
        has not said anything)."""
        return self.metadata is None or self.metadata.prompts_login

    def _need_client(self) -> ClientRegistration:
        if self.client is None or self.metadata is None:
            raise OIDCError("the OpenID relying party has not started")
        return self.client

    # The login -----------------------------------------------------------------

    def begin(self, next_url: str, extra: Mapping[str, Any] | None = None, *,
              browser: str | None = None, ask_again: bool = False) -> Deferred[str]:
        """Start a login; gives the authorization URL to redirect the browser to.

        `ask_again`: the issuer is to have the person log in again even where its own
        login in this browser is still open (``prompt=login``), when it supports that
        (:attr:`can_ask_again`); otherwise the request goes without it (an issuer that
        lists prompt values without "login" may refuse the whole login).

        `browser`: a secret the beginning browser holds (in a cookie); :meth:`finish`
        then completes the login only for a callback that brings it back. Without it,
        anyone's callback link (a state and code of their own) opened in someone else's
        browser would log that browser in as them (login CSRF).

        Without a shared store the answer is there at once. With one, the login is kept
        there first: LoginUnavailable when the store cannot be reached."""
        try:
            client = self._need_client()
        except OIDCError as e:
            return defer.fail(e)
        assert self.metadata is not None
        nonce = secrets.token_urlsafe(32)
        verifier = secrets.token_urlsafe(64)
        pending = _Pending(nonce, verifier, next_url, dict(extra or {}), browser)
        params = self._authorization_params(client, nonce, verifier)
        if ask_again and self.can_ask_again:
            params["prompt"] = "login"
        endpoint = self.metadata.authorization_endpoint

        def url(state: str) -> str:
            params["state"] = state
            return endpoint + ("&" if "?" in endpoint else "?") + urlencode(
                params, quote_via=quote)

        if self._shared is None:
            return defer.succeed(url(self._pending.put(pending)))
        state = secrets.token_urlsafe(32)
        value = pending.to_json()
        size = len(value.encode("utf-8", "replace"))
        try:
            self._begun.check_size(size)
        except ValueError as e:
            return defer.fail(LoginFailed(f"this login cannot be kept: {e}"))
        d = defer.maybeDeferred(self._shared.keep_pending_login, state, value,
                                self.settings.login_ttl)

        def kept(_: None) -> str:
            self._begun.put(None, state, size=size)
            return url(state)

        def failed(f: Failure) -> Failure:
            if f.check(StoreUnavailable):
                raise LoginUnavailable(f"the login cannot be kept: {f.value}")
            if f.check(ValueError):  # too large (the next page's address)
                raise LoginFailed(f"this login cannot be kept: {f.value}")
            return f

        return d.addCallbacks(kept, failed)

    def _authorization_params(self, client: ClientRegistration, nonce: str,
                              verifier: str) -> dict[str, str]:
        """An authorization request's query (its state left empty, set by the caller)."""
        return {"response_type": "code", "client_id": client.client_id,
                "redirect_uri": self.settings.redirect_uri,
                "scope": " ".join(self.settings.scopes), "state": "", "nonce": nonce,
                "code_challenge": pkce_challenge(verifier), "code_challenge_method": "S256"}

    def _drop_begun(self, states: list[str]) -> None:
        """Past a bound, the oldest logins this node began leave the shared store too."""
        if self._shared is not None:
            self._shared.drop_pending_logins(states).addErrback(
                lambda f: self._log.debug("dropping old pending logins failed: {why}",
                                          why=f.getErrorMessage()))

    async def _take(self, state: str) -> _Pending | None:
        if self._shared is None:
            return self._pending.take(state)
        try:
            raw = await self._shared.take_pending_login(state)
        except StoreUnavailable as e:
            raise LoginUnavailable(f"the login's state cannot be read: {e}") from None
        self._begun.take(state)
        if raw is None:
            return None
        pending = _Pending.from_json(raw)
        if pending is None:
            self._log.warn("a pending login in the shared store is malformed: refused")
        return pending

    def finish(self, params: Mapping[str, str],
               browsers: Sequence[str] = ()) -> Deferred[LoginResult]:
        """Complete a login from the callback's query parameters (state, code or error).
        `browsers`: the values the callback's browser holds of the cookie given to
        :meth:`begin`; a login begun for a browser is refused (its code never exchanged)
        unless one of them is that browser's."""
        return Deferred.fromCoroutine(self._finish(params, browsers))

    async def _finish(self, params: Mapping[str, str], browsers: Sequence[str]) -> LoginResult:
        pending = await self._take(params.get("state", ""))
        if pending is None:
            raise StateUnknown("the login's state is unknown, used already or expired")
        if pending.browser is not None and not same_browser(pending.browser, browsers):
            # Not the browser that began it: someone's own callback link, sent to another
            # person. Its next_url is theirs too: "Try again" does not follow it.
            raise LoginFailed("this login was begun in another browser (a login's callback "
                              "link works only in the browser that began the login)")
        try:
            return await self._finish_pending(params, pending)
        except OIDCError as e:
            if isinstance(e, LoginFailed):
                e.next_url, e.extra = pending.next_url, pending.extra
            elif isinstance(e, IssuerUnreachable):
                # The issuer did not answer (down, a timeout, its TLS, a 5xx): not the
                # person's login, which a moment later goes through ("Login failed" said
                # it was). An answer it did give (a 404 for its keys) stays a failure.
                away = LoginUnavailable(f"the identity provider could not be reached: {e}")
                away.next_url, away.extra = pending.next_url, pending.extra
                raise away from None
            raise

    async def _finish_pending(self, params: Mapping[str, str], pending: _Pending
                              ) -> LoginResult:
        if "error" in params:
            raise LoginFailed(f"the identity provider refused the login: "
                              f"{_short(params['error'], 80)}")
        code = params.get("code")
        if not code:
            raise LoginFailed("the callback carries no authorization code")
        form = {"grant_type": "authorization_code", "code": code,
                "redirect_uri": self.settings.redirect_uri, "code_verifier": pending.verifier}
        tokens = await self._token_request(form, "the code exchange")
        if tokens.id_token is None:
            raise LoginFailed("the token endpoint returned no ID token")
        claims = await self.verify_id_token(tokens.id_token, nonce=pending.nonce)
        return LoginResult(subject=claims["sub"], claims=claims, tokens=tokens,
                           next_url=pending.next_url, extra=pending.extra)

    async def _token_request(self, form: dict[str, str], what: str,
                             previous: TokenSet | None = None) -> TokenSet:
        assert self.metadata is not None
        headers = self.client_auth(form)
        code, body, text = await self._call("POST", self.metadata.token_endpoint, what,
                                            data=form, headers=headers)
        if code != 200 or not isinstance(body, dict):
            why = f"{what} was refused (HTTP {code}: {_oauth_error(body, text)})"
            error = body.get("error") if isinstance(body, dict) else None
            # Not unauthorized_client: issuers answer it for a code or a refresh token
            # they refuse (Gitea: one it does not know, or that was used), which is the
            # person's login, to end at a refresh, not the gateway's client.
            if error == "invalid_client" or (code == 401 and error != "invalid_grant"):
                raise ClientRefused(f"{why}: {self.client_hint()}")
            refused = LoginFailed(why)
            refused.error = error if isinstance(error, str) else None
            raise refused
        return TokenSet.from_response(body, self._clock.seconds(), previous)

    def client_hint(self) -> str:
        """What to check when the issuer refuses the gateway's client, by where the client
        came from (the operator's settings, or the registration kept in the client file)."""
        c = self._need_client()
        if c.static:
            return (f"the issuer does not accept the client {c.client_id}: check "
                    "CONNECT_OIDC_CLIENT_ID and CONNECT_OIDC_CLIENT_SECRET")
        return (f"the issuer does not accept the client {c.client_id} registered in "
                f"{self.settings.client_file} (it was deleted or its secret changed at the "
                "issuer): stop every gateway that uses that file, delete it, and start them "
                "to register again")

    def try_client(self) -> Deferred[str]:
        """For check-config --connect: ask the token endpoint to exchange a made-up code
        with the client's credentials. An issuer that knows the client refuses the code
        (invalid_grant); one that does not refuses the client (ClientRefused); any other
        answer says neither (ClientUnconfirmed). Fires with what the issuer answered;
        nothing is registered or kept."""
        async def ask() -> str:
            form = {"grant_type": "authorization_code",
                    "code": "check-config-" + secrets.token_urlsafe(16),
                    "redirect_uri": self.settings.redirect_uri,
                    "code_verifier": secrets.token_urlsafe(48)}
            try:
                await self._token_request(form, "a made-up code exchange")
            except ClientRefused:
                raise
            except LoginFailed as e:
                if e.error == "invalid_grant":
                    return str(e)
                raise ClientUnconfirmed(
                    f"{e}: not invalid_grant, the answer of an issuer that knows the client "
                    f"and not the code, so whether the issuer accepts the client "
                    f"{self._need_client().client_id} is not known") from None
            return "the token endpoint exchanged a made-up code"
        return Deferred.fromCoroutine(ask())

    def try_authorize(self) -> Deferred[tuple[int, str]]:
        """For check-config --connect: ask the authorization endpoint for a login as
        :meth:`begin` would (a made-up state, nothing kept), without following its
        redirect. An issuer answers the login form or a redirect to it; most answer 400
        to a redirect URI not registered for the client. Fires with (status, the start
        of the answer's text)."""
        async def ask() -> tuple[int, str]:
            client = self._need_client()
            assert self.metadata is not None
            params = self._authorization_params(
                client, secrets.token_urlsafe(16), secrets.token_urlsafe(48))
            params["state"] = secrets.token_urlsafe(16)
            endpoint = self.metadata.authorization_endpoint
            url = endpoint + ("&" if "?" in endpoint else "?") + urlencode(params, quote_via=quote)
            try:
                code, raw = await read_answer(self._http, "GET", url, reactor=self._reactor,
                                              within=self.settings.timeout,
                                              allow_redirects=False)
            except AnswerFailed as e:
                raise OIDCError(f"the authorization endpoint {endpoint} {e}") from None
            return code, _short(raw.decode("utf-8", "replace"), 160)
        return Deferred.fromCoroutine(ask())

    def stored_client(self) -> ClientRegistration | None:
        """The client a start would use without registering (the operator's, or the one
        kept in the client file that fits these settings); None: the start registers."""
        assert self.metadata is not None
        s = self.settings
        if s.client_id:
            return self._static_client(self.metadata.issuer)
        _, stored = self._kept_client()
        return stored if stored is not None and stored.fits(s, self.metadata.issuer) else None

    def refresh(self, tokens: TokenSet) -> Deferred[TokenSet]:
        """New tokens from the refresh token; LoginFailed when the issuer says no."""
        return Deferred.fromCoroutine(self._refresh(tokens))

    async def _refresh(self, tokens: TokenSet) -> TokenSet:
        if not tokens.refresh_token:
            raise LoginFailed("no refresh token")
        new = await self._token_request(
            {"grant_type": "refresh_token", "refresh_token": tokens.refresh_token},
            "the token refresh", previous=tokens)
        if new.id_token and tokens.id_token:
            claims = await self.verify_id_token(new.id_token, nonce=None, check_iat=False)
            old = jwt.decode(tokens.id_token, options={"verify_signature": False})
            if claims["sub"] != old.get("sub"):
                raise LoginFailed("the refreshed ID token names another subject")
        return new

    # ID tokens -------------------------------------------------------------------

    async def _fetch_keys(self) -> None:
        assert self.metadata is not None
        if self._keys_fetching is not None:
            await self._keys_fetching
            return
        d: Deferred[None] = Deferred()
        self._keys_fetching = d
        try:
            code, body, text = await self._call("GET", self.metadata.jwks_uri, "the JWKS fetch")
            if code != 200 or not isinstance(body, dict) or not isinstance(body.get("keys"), list):
                kind = IssuerUnreachable if code >= 500 else OIDCError
                raise kind(f"the JWKS at {self.metadata.jwks_uri} answered HTTP {code}")
            keys: dict[str, jwt.PyJWK] = {}
            for i, raw in enumerate(body["keys"]):
                if not isinstance(raw, dict) or raw.get("use", "sig") != "sig":
                    continue
                try:
                    key = jwt.PyJWK(raw)
                except jwt.PyJWTError:
                    continue  # a key type we do not use
                keys[str(raw.get("kid", f"#{i}"))] = key
            self._keys = keys
            self._keys_fetched_at = self._clock.seconds()
        finally:
            self._keys_fetching = None
            d.callback(None)

    async def _key_for(self, header: Mapping[str, Any]) -> jwt.PyJWK:
        kid = header.get("kid")
        for attempt in (0, 1):
            if isinstance(kid, str) and kid in self._keys:
                return self._keys[kid]
            if kid is None and len(self._keys) == 1:
                return next(iter(self._keys.values()))
            recent = (self._keys_fetched_at is not None and self._clock.seconds()
                      - self._keys_fetched_at < self.settings.jwks_min_refresh)
            if attempt or recent:
                break
            self._log.info("ID token signed with an unknown key: refetching the issuer's JWKS")
            await self._fetch_keys()
        raise LoginFailed("the ID token is signed with a key the issuer does not publish")

    async def verify_id_token(self, token: str, *, nonce: str | None,
                              check_iat: bool = True) -> dict[str, Any]:
        """The token's claims, once signature, iss, aud, azp, exp, iat and nonce check out."""
        client = self._need_client()
        assert self.metadata is not None
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise LoginFailed("the ID token is not a JWT") from None
        alg = header.get("alg")
        allowed = [a for a in self.metadata.id_token_algs if a in SAFE_ALGS] or ["RS256"]
        if alg not in allowed:
            raise LoginFailed(f"the ID token's algorithm {alg!r} is not accepted")
        key = await self._key_for(header)
        try:
            claims = jwt.decode(
                token, key=key.key, algorithms=[alg], audience=client.client_id,
                issuer=self.metadata.issuer,
                options={"verify_exp": False, "verify_iat": False, "verify_nbf": False,
                         "require": ["iss", "aud", "exp", "iat", "sub"]})
        except jwt.PyJWTError as e:
            raise LoginFailed(f"the ID token is not valid: {type(e).__name__}") from None
        check_claims(claims, client_id=client.client_id, nonce=nonce,
                     now=self._clock.seconds(), leeway=self.settings.leeway, check_iat=check_iat,
                     max_age=self.settings.login_ttl)
        return claims


def check_claims(claims: Mapping[str, Any], *, client_id: str, nonce: str | None, now: float,
                 leeway: float, check_iat: bool = True, max_age: float = 600.0) -> None:
    """The time, audience and nonce checks that come after the signature (clock-driven)."""
    exp, iat, sub = claims.get("exp"), claims.get("iat"), claims.get("sub")
    if not isinstance(sub, str) or not sub:
        raise LoginFailed("the ID token has no subject")
    if not isinstance(exp, int | float) or not isinstance(iat, int | float):
        raise LoginFailed("the ID token has no expiry or issue time")
    # A token refused for its times just after the issuer made it: most often the clock
    # of this host or of the issuer is wrong, which the operator must hear as such.
    if now >= exp + leeway:
        raise LoginFailed(f"the ID token has expired: it expired {now - exp:.0f}s ago by "
                          f"this host's clock{_skew(iat, now, leeway)}")
    if iat > now + leeway:
        raise LoginFailed(f"the ID token was issued in the future: {iat - now:.0f}s ahead of "
                          f"this host's clock{_skew(iat, now, leeway)}")
    nbf = claims.get("nbf")
    if nbf is not None and not isinstance(nbf, int | float):
        raise LoginFailed("the ID token's nbf is not a time")
    if nbf is not None and nbf > now + leeway:
        raise LoginFailed(f"the ID token is not valid yet (nbf): {nbf - now:.0f}s ahead of "
                          f"this host's clock{_skew(nbf, now, leeway)}")
    if check_iat and iat < now - max_age - leeway:
        raise LoginFailed(f"the ID token was issued too long ago ({now - iat:.0f}s by this "
                          f"host's clock){_skew(iat, now, leeway)}")
    aud = claims.get("aud")
    if isinstance(aud, list) and len(aud) > 1 and claims.get("azp") != client_id:
        raise LoginFailed("the ID token is meant for several parties and not authorized to us")
    if "azp" in claims and claims["azp"] != client_id:
        raise LoginFailed("the ID token's authorized party is another client")
    if nonce is not None:
        got = claims.get("nonce")
        if not isinstance(got, str) or not hmac.compare_digest(got.encode(), nonce.encode()):
            raise LoginFailed("the ID token's nonce does not match this login")


def _skew(issued: float, now: float, leeway: float) -> str:
    """The hint that the clocks differ, when the issuer's time for a token it has just
    made is further from ours than the allowance (every such login fails alike)."""
    if abs(issued - now) <= leeway:
        return ""
    return (f" (the issuer's clock and this host's differ by about {abs(issued - now):.0f}s, "
            f"more than the {leeway:.0f}s allowed: check that both keep time, e.g. with "
            "NTP)")


def basic_auth(user: str, password: str) -> str:
    """RFC 6749 2.3.1: both parts form-urlencoded before base64."""
    raw = f"{quote(user, safe='')}:{quote(password, safe='')}".encode()
    return "Basic " + base64.b64encode(raw).decode("ascii")
