"""A small OpenID provider for the test suite (twisted.web), in-process or standalone.

    python -m tests.support.idp --port 9400 [--user alice:secret] [--registration-token T]

Implements what the gateway uses, strictly enough to catch a sloppy client:
discovery, dynamic client registration (RFC 7591) that demands the initial
access token, an authorize endpoint with a real HTML login form (user name
and password), PKCE S256 (required), single-use codes bound to client,
redirect URI and verifier, the token endpoint (authorization_code and
refresh_token grants, client_secret_basic or client_secret_post), RS256 ID
tokens with a key id, a JWKS with key rotation, and the Platform's
studio access call ``GET /api/studios/<id>/access?user=<name>`` (client
credentials by HTTP Basic; answers ``{"allowed": true|false}``) and the SSH key
call ``GET /api/users/<name>/ssh-keys``. Run as its own process,
``PUT /test/access?session=<id>&user=<name>&allowed=true|false`` sets that answer,
``PUT /test/ssh-keys?user=<name>`` (body ``{"keys": [...]}``) a user's keys,
``PUT /test/revoke?user=<name>`` revokes that user's refresh tokens (the next refresh
is refused with invalid_grant) and ``GET /test/counts`` answers the call counters
(``refreshed``: refresh grants served, ``refreshed_late``: of those, how many came
after the tokens being refreshed had expired, ``refresh_refused``).
``--token-ttl`` sets the lifetime of ID and access tokens (seconds).

``--sso`` makes it remember a signed-in browser (a ``test_idp_sso`` cookie), as real
providers do: the next authorize request of that browser is answered at once, without
the form. Its logout (OpenID Connect RP-Initiated Logout 1.0, ``end_session_endpoint``
``/logout``) ends that: it checks ``id_token_hint`` (its own signature, the client as
audience) and ``client_id``, accepts a ``post_logout_redirect_uri`` only if the client
registered it, and sends the browser back there with ``state``. An authorize request
with ``prompt=login`` (OpenID Connect Core 3.1.2.1) shows the form even then, as real
providers do when a client asks the person to log in again; with ``--keep-login`` too it
does not (it answers at once from the browser's sign-in, as some providers do). ID tokens
carry ``auth_time``: when the person typed their password (for a browser remembered, its
sign-in's time).

Its discovery document lists ``prompt_values_supported`` (``login`` by default;
``--prompt-values`` changes the list, ``""`` for none), and an authorize request with a
``prompt`` value not on that list is refused with ``error=invalid_request`` sent back to
the client, as some providers refuse values they do not know.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import html
import html.parser
import json
import secrets
import sys
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote, urlencode, urlsplit

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from twisted.internet.interfaces import IReactorTCP
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

DEFAULT_REGISTRATION_TOKEN = "initial-access-token"


@dataclass
class _Client:
    client_id: str
    secret: str
    name: str
    redirect_uris: list[str]
    auth_method: str
    post_logout_redirect_uris: list[str] = field(default_factory=list)


@dataclass
class _Code:
    client_id: str
    redirect_uri: str
    user: str
    nonce: str | None
    challenge: str
    expires: float
    #: When the person typed their password (OpenID Connect Core's auth_time).
    auth_time: float | None = None


@dataclass
class _Key:
    kid: str
    private: Any
    public_jwk: dict[str, Any] = field(default_factory=dict)


def _new_key() -> _Key:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    kid = secrets.token_hex(8)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(private.public_key()))
    jwk.update({"kid": kid, "use": "sig", "alg": "RS256"})
    return _Key(kid, private, jwk)


class TestIdP:
    """State and behaviour of the provider; `resource()` serves it."""

    __test__ = False  # not a pytest test class

    def __init__(self, *, clock: Any, users: dict[str, str] | None = None,
                 registration_token: str | None = DEFAULT_REGISTRATION_TOKEN,
                 issuer: str = "http://127.0.0.1", token_ttl: int = 300,
                 prompt_values: tuple[str, ...] = ("login",)):
        self.clock = clock
        self.users = dict(users or {"alice": "alice-password", "bob": "bob-password"})
        self.registration_token = registration_token
        self.issuer = issuer
        self.token_ttl = token_ttl
        self.keys = [_new_key()]
        self.clients: dict[str, _Client] = {}
        self.codes: dict[str, _Code] = {}
        self.refresh_tokens: dict[str, tuple[str, str]] = {}
        #: refresh token -> when the tokens issued with it expire.
        self.refresh_expiry: dict[str, float] = {}
        #: (session id, user) -> the Platform's answer to the access call.
        self.access: dict[tuple[str, str], bool] = {}
        #: user -> the keys the Platform's SSH key call lists (absent: 404).
        self.ssh_keys: dict[str, list[str]] = {}
        #: Claims merged into the next ID tokens (to make bad ones in tests).
        self.claim_overrides: dict[str, Any] = {}
        #: Serve PUT /test/access (the standalone process, for tests in another process).
        self.control = False
        #: Remember signed-in browsers (single sign-on): sso cookie value -> user.
        self.sso = False
        self.sessions: dict[str, str] = {}
        #: When each remembered browser signed in (its ID tokens' auth_time).
        self.signed_in_at: dict[str, float] = {}
        #: Ignore prompt=login where a browser is signed in (as some providers do).
        self.keep_login = False
        #: The prompt values the discovery document lists (others are refused).
        self.prompt_values = prompt_values
        self.counts = {"registrations": 0, "jwks": 0, "token": 0, "access": 0, "authorize": 0,
                       "refreshed": 0, "refreshed_late": 0, "refresh_refused": 0,
                       "silent": 0, "prompted": 0, "end_session": 0}

    # Operations for tests -------------------------------------------------------

    def listen(self, reactor: IReactorTCP, port: int = 0, interface: str = "127.0.0.1") -> Any:
        p = reactor.listenTCP(port, Site(self.resource()), interface=interface)
        self.issuer = f"http://{interface}:{p.getHost().port}"
        return p

    def rotate_key(self, keep_old: bool = True) -> str:
        """Sign from now on with a new key; the old one stays published unless told."""
        key = _new_key()
        self.keys = [key, *self.keys] if keep_old else [key]
        return key.kid

    def resource(self) -> Resource:
        return _Root(self)

    def now(self) -> float:
        return float(self.clock.seconds())

    # Helpers -----------------------------------------------------------------------

    def _authenticate_client(self, request: Request, form: dict[str, str]) -> _Client | None:
        header = request.getHeader("authorization") or ""
        if header.lower().startswith("basic "):
            try:
                raw = base64.b64decode(header[6:]).decode()
            except ValueError:
                return None
            cid, _, secret = raw.partition(":")
            cid, secret = unquote(cid), unquote(secret)
        else:
            cid, secret = form.get("client_id", ""), form.get("client_secret", "")
        client = self.clients.get(cid)
        if client is None or not hmac.compare_digest(client.secret.encode(), secret.encode()):
            return None
        return client

    def id_token(self, client_id: str, user: str, nonce: str | None,
                 auth_time: float | None = None) -> str:
        now = int(self.now())
        claims: dict[str, Any] = {"iss": self.issuer, "sub": user, "aud": client_id,
                                  "iat": now, "exp": now + self.token_ttl,
                                  "auth_time": now if auth_time is None else int(auth_time),
                                  "preferred_username": user, "email": f"{user}@example.com"}
        if nonce is not None:
            claims["nonce"] = nonce
        claims.update(self.claim_overrides)
        key = self.keys[0]
        return jwt.encode(claims, key.private, algorithm="RS256", headers={"kid": key.kid})

    def _tokens(self, client_id: str, user: str, nonce: str | None,
                auth_time: float | None = None) -> dict[str, Any]:
        access = secrets.token_urlsafe(24)
        refresh = secrets.token_urlsafe(24)
        self.refresh_tokens[refresh] = (client_id, user)
        self.refresh_expiry[refresh] = self.now() + self.token_ttl
        return {"access_token": access, "token_type": "Bearer", "expires_in": self.token_ttl,
                "refresh_token": refresh,
                "id_token": self.id_token(client_id, user, nonce, auth_time)}


def _json(request: Request, code: int, body: Any) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"cache-control", b"no-store")
    return json.dumps(body).encode()


def _error(request: Request, code: int, error: str, desc: str) -> bytes:
    return _json(request, code, {"error": error, "error_description": desc})


_SSO_COOKIE = "test_idp_sso"


def _sso_cookie(request: Request) -> str:
    """The browser's sign-in cookie ("" when none)."""
    value = request.getCookie(_SSO_COOKIE.encode())
    return value.decode() if value else ""


def _args(request: Request) -> dict[str, str]:
    out = {k.decode(): v[0].decode() for k, v in (request.args or {}).items()}
    return out


def _page(request: Request, code: int, body: str) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"text/html; charset=utf-8")
    return f"<!doctype html><html><head><title>Test IdP</title></head><body>{body}</body></html>" \
        .encode()


class _Root(Resource):
    isLeaf = True

    def __init__(self, idp: TestIdP):
        super().__init__()
        self.idp = idp

    def render(self, request: Request) -> bytes:
        path = (request.path or b"/").decode()
        method = (request.method or b"GET").decode()
        if path == "/.well-known/openid-configuration":
            return self.discovery(request)
        if path == "/register" and method == "POST":
            return self.register(request)
        if path == "/authorize":
            return self.authorize(request, method)
        if path == "/token" and method == "POST":
            return self.token(request)
        if path == "/jwks":
            self.idp.counts["jwks"] += 1
            return _json(request, 200, {"keys": [k.public_jwk for k in self.idp.keys]})
        if path == "/logout":
            return self.end_session(request)
        parts = path.strip("/").split("/")
        if len(parts) == 4 and parts[:2] == ["api", "studios"] and parts[3] == "access":
            return self.access(request, parts[2])
        if path == "/test/access" and method == "PUT" and self.idp.control:
            return self.set_access(request)
        if path == "/test/revoke" and method == "PUT" and self.idp.control:
            return self.revoke(request)
        if path == "/test/counts" and self.idp.control:
            return _json(request, 200, self.idp.counts)
        if len(parts) == 4 and parts[:2] == ["api", "users"] and parts[3] == "ssh-keys":
            return self.user_ssh_keys(request, unquote(parts[2]))
        if path == "/test/ssh-keys" and method == "PUT" and self.idp.control:
            body = json.loads(request.content.read() or b"{}")
            self.idp.ssh_keys[_args(request).get("user", "")] = list(body.get("keys", []))
            return _json(request, 200, {"ok": True})
        return _error(request, 404, "not_found", path)

    def discovery(self, request: Request) -> bytes:
        i = self.idp.issuer
        return _json(request, 200, {
            "issuer": i, "authorization_endpoint": i + "/authorize",
            "token_endpoint": i + "/token", "jwks_uri": i + "/jwks",
            # Listed as issuers list it: the gateway checks it is a URL but never calls it.
            "userinfo_endpoint": i + "/userinfo", "registration_endpoint": i + "/register",
            "end_session_endpoint": i + "/logout",
            "response_types_supported": ["code"], "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "code_challenge_methods_supported": ["S256"],
            "grant_types_supported": ["authorization_code", "refresh_token"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic",
                                                      "client_secret_post"],
            "scopes_supported": ["openid", "profile", "email"],
            "prompt_values_supported": list(self.idp.prompt_values)})

    def register(self, request: Request) -> bytes:
        idp = self.idp
        if idp.registration_token is not None:
            given = (request.getHeader("authorization") or "").removeprefix("Bearer ")
            if not hmac.compare_digest(given.encode(), idp.registration_token.encode()):
                return _error(request, 401, "invalid_token", "the initial access token is wrong")
        try:
            body = json.loads(request.content.read() if request.content else b"")
        except ValueError:
            return _error(request, 400, "invalid_client_metadata", "not JSON")
        uris = body.get("redirect_uris") if isinstance(body, dict) else None
        if not isinstance(uris, list) or not uris or not all(isinstance(u, str) for u in uris):
            return _error(request, 400, "invalid_redirect_uri", "redirect_uris is required")
        method = body.get("token_endpoint_auth_method", "client_secret_basic")
        back = body.get("post_logout_redirect_uris", [])
        if not isinstance(back, list) or not all(isinstance(u, str) for u in back):
            return _error(request, 400, "invalid_client_metadata",
                          "post_logout_redirect_uris must be a list of URLs")
        client = _Client(secrets.token_hex(8), secrets.token_urlsafe(24),
                         str(body.get("client_name", "")), uris, method, back)
        idp.clients[client.client_id] = client
        idp.counts["registrations"] += 1
        return _json(request, 201, {
            "client_id": client.client_id, "client_secret": client.secret,
            "client_name": client.name, "redirect_uris": uris,
            **({"post_logout_redirect_uris": back} if back else {}),
            "token_endpoint_auth_method": method, "client_id_issued_at": int(idp.now()),
            "client_secret_expires_at": 0})

    def authorize(self, request: Request, method: str) -> bytes:
        idp = self.idp
        q = _args(request)
        client = idp.clients.get(q.get("client_id", ""))
        if client is None or q.get("redirect_uri") not in client.redirect_uris:
            return _page(request, 400, "<p>Unknown client or redirect URI.</p>")
        if q.get("response_type") != "code" or q.get("code_challenge_method") != "S256" \
                or not q.get("code_challenge") or "openid" not in q.get("scope", "").split():
            return _page(request, 400, "<p>Bad request: code flow with PKCE S256 and "
                                       "scope openid are required.</p>")
        prompt = q.get("prompt", "").split()
        unknown = [p for p in prompt if p not in idp.prompt_values]
        if unknown:  # as providers that refuse values they do not support
            return self._refuse(request, q, "invalid_request",
                                f"unsupported prompt value {unknown[0]}")
        error = ""
        sso = _sso_cookie(request)
        signed_in = idp.sessions.get(sso) if idp.sso else None
        if "login" in prompt and method == "GET" and signed_in is not None \
                and not idp.keep_login:
            idp.counts["prompted"] += 1  # signed in, but the client asks to log in again
        elif method == "GET" and signed_in is not None and signed_in in idp.users:
            idp.counts["silent"] += 1  # this browser signed in before: no form
            return self._code(request, client, q, signed_in, idp.signed_in_at.get(sso))
        if method == "POST":
            user, password = q.get("username", ""), q.get("password", "")
            known = idp.users.get(user)
            if known is not None and hmac.compare_digest(known.encode(), password.encode()):
                if idp.sso:
                    session = secrets.token_urlsafe(24)
                    idp.sessions[session] = user
                    idp.signed_in_at[session] = idp.now()
                    request.addCookie(_SSO_COOKIE, session, path="/", httpOnly=True)
                return self._code(request, client, q, user, idp.now())
            error = "<p class=error>Wrong user name or password.</p>"
        hidden = "".join(
            f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}">'
            for k, v in q.items() if k not in ("username", "password"))
        return _page(request, 200, f"""<h1>Sign in</h1>{error}
<form method="post" action="/authorize">{hidden}
<label>User name <input name="username" id="username" autocomplete="username"></label>
<label>Password <input name="password" id="password" type="password"></label>
<button type="submit" id="submit">Sign in</button></form>""")

    def _refuse(self, request: Request, q: dict[str, str], error: str, desc: str) -> bytes:
        """Send the browser back to the client with an OAuth error (RFC 6749 4.1.2.1)."""
        back = {"error": error, "error_description": desc, "iss": self.idp.issuer}
        if "state" in q:
            back["state"] = q["state"]
        sep = "&" if "?" in q["redirect_uri"] else "?"
        request.redirect(q["redirect_uri"] + sep + urlencode(back))
        return b""

    def _code(self, request: Request, client: _Client, q: dict[str, str], user: str,
              auth_time: float | None) -> bytes:
        """Send the browser back to the client with a fresh code for `user`, who typed
        their password at `auth_time`."""
        idp = self.idp
        idp.counts["authorize"] += 1
        code = secrets.token_urlsafe(24)
        idp.codes[code] = _Code(client.client_id, q["redirect_uri"], user,
                                q.get("nonce"), q["code_challenge"], idp.now() + 60,
                                auth_time)
        back = {"code": code, "iss": idp.issuer}
        if "state" in q:
            back["state"] = q["state"]
        sep = "&" if "?" in q["redirect_uri"] else "?"
        request.redirect(q["redirect_uri"] + sep + urlencode(back))
        return b""

    def end_session(self, request: Request) -> bytes:
        """RP-Initiated Logout 1.0: end this browser's sign-in, then send it back to the
        client's registered post-logout page (with state) or show a page."""
        idp = self.idp
        q = _args(request)
        client_id = q.get("client_id")
        hint = q.get("id_token_hint")
        if hint:
            try:
                kid = jwt.get_unverified_header(hint).get("kid")
                key = next(k for k in idp.keys if k.kid == kid)
                claims = jwt.decode(hint, key.private.public_key(), algorithms=["RS256"],
                                    options={"verify_exp": False, "verify_aud": False})
            except (jwt.PyJWTError, StopIteration):
                return _page(request, 400, "<p>The id_token_hint is not one of mine.</p>")
            if client_id is not None and claims.get("aud") != client_id:
                return _page(request, 400, "<p>The id_token_hint is for another client.</p>")
            client_id = str(claims.get("aud"))
        back = q.get("post_logout_redirect_uri")
        client = idp.clients.get(client_id or "")
        if back is not None and (client is None or back not in client.post_logout_redirect_uris):
            return _page(request, 400, "<p>Unknown client or post-logout redirect URI.</p>")
        idp.sessions.pop(_sso_cookie(request), None)
        idp.signed_in_at.pop(_sso_cookie(request), None)
        request.addCookie(_SSO_COOKIE, "", path="/", httpOnly=True, max_age="0")
        idp.counts["end_session"] += 1
        if back is None:
            return _page(request, 200, "<p>You are signed out.</p>")
        sep = "&" if "?" in back else "?"
        request.redirect(back + (sep + urlencode({"state": q["state"]}) if "state" in q else ""))
        return b""

    def token(self, request: Request) -> bytes:
        idp = self.idp
        idp.counts["token"] += 1
        form = {k: v[0] for k, v in parse_qs(
            (request.content.read() if request.content else b"").decode()).items()}
        client = idp._authenticate_client(request, form)
        if client is None:
            return _error(request, 401, "invalid_client", "client authentication failed")
        grant = form.get("grant_type")
        if grant == "authorization_code":
            code = idp.codes.pop(form.get("code", ""), None)
            if code is None or code.client_id != client.client_id or code.expires < idp.now():
                return _error(request, 400, "invalid_grant", "unknown, used or expired code")
            if form.get("redirect_uri") != code.redirect_uri:
                return _error(request, 400, "invalid_grant", "redirect_uri does not match")
            verifier = form.get("code_verifier", "")
            digest = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
            if not hmac.compare_digest(digest.rstrip(b"=").decode(), code.challenge):
                return _error(request, 400, "invalid_grant", "PKCE verification failed")
            return _json(request, 200, idp._tokens(client.client_id, code.user, code.nonce,
                                                   code.auth_time))
        if grant == "refresh_token":
            given = form.get("refresh_token", "")
            held = idp.refresh_tokens.pop(given, None)
            if held is None or held[0] != client.client_id:
                idp.counts["refresh_refused"] += 1
                return _error(request, 400, "invalid_grant", "unknown refresh token")
            idp.counts["refreshed"] += 1
            if idp.refresh_expiry.pop(given, 0.0) <= idp.now():
                idp.counts["refreshed_late"] += 1
            return _json(request, 200, idp._tokens(client.client_id, held[1], None))
        return _error(request, 400, "unsupported_grant_type", str(grant))

    def set_access(self, request: Request) -> bytes:
        """A test changes the Platform's answer: PUT /test/access?session=&user=&allowed="""
        q = _args(request)
        self.idp.access[(q.get("session", ""), q.get("user", ""))] = q.get("allowed") == "true"
        return _json(request, 200, {"ok": True})

    def revoke(self, request: Request) -> bytes:
        """A test ends a user's logins at the provider: PUT /test/revoke?user="""
        user = _args(request).get("user", "")
        idp = self.idp
        for token in [t for t, (_, u) in idp.refresh_tokens.items() if u == user]:
            del idp.refresh_tokens[token]
            idp.refresh_expiry.pop(token, None)
        return _json(request, 200, {"ok": True})

    def access(self, request: Request, session_id: str) -> bytes:
        idp = self.idp
        if idp._authenticate_client(request, {}) is None:
            return _error(request, 401, "invalid_client", "client authentication failed")
        idp.counts["access"] += 1
        user = _args(request).get("user", "")
        return _json(request, 200, {"allowed": idp.access.get((session_id, user), False)})


    def user_ssh_keys(self, request: Request, user: str) -> bytes:
        """The Platform's SSH key call: GET /api/users/<user>/ssh-keys (client auth)."""
        if self.idp._authenticate_client(request, {}) is None:
            return _error(request, 401, "invalid_client", "client authentication failed")
        self.idp.counts["ssh_keys"] = self.idp.counts.get("ssh_keys", 0) + 1
        if user not in self.idp.ssh_keys:
            return _error(request, 404, "not_found", "no such user")
        return _json(request, 200, {"keys": self.idp.ssh_keys[user]})


# Driving the login page from a test ------------------------------------------------------


class _Form(html.parser.HTMLParser):
    """The fields and action of the first form on a page, as a browser would submit it."""

    def __init__(self) -> None:
        super().__init__()
        self.action: str | None = None
        self.fields: dict[str, str] = {}
        self._done = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "form" and self.action is None and not self._done:
            self.action = a.get("action") or ""
        elif tag == "input" and self.action is not None and not self._done and a.get("name"):
            self.fields[a["name"] or ""] = a.get("value") or ""

    def handle_endtag(self, tag: str) -> None:
        if tag == "form" and self.action is not None:
            self._done = True


def http_client() -> Any:
    """treq without kept-alive connections, so trial finds a clean reactor."""
    from treq.client import HTTPClient
    from twisted.internet import reactor
    from twisted.web.client import Agent, HTTPConnectionPool

    return HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False)))


async def submit_login(authorize_url: str, fields: dict[str, str]) -> str:
    """Open a provider's login page, fill its first form as a browser would, submit it;
    returns where the provider redirects the browser (the relying party's callback)."""
    http = http_client()
    resp = await http.get(authorize_url, timeout=10)
    page = (await resp.text()).strip()
    assert resp.code == 200, page
    form = _Form()
    form.feed(page)
    assert form.action is not None, page
    data = {**form.fields, **fields}
    target = form.action or authorize_url
    if target.startswith("/"):
        u = urlsplit(authorize_url)
        target = f"{u.scheme}://{u.netloc}{target}"
    elif not target.startswith("http"):
        target = authorize_url
    resp = await http.post(target, data=data, allow_redirects=False, timeout=10)
    location = resp.headers.getRawHeaders("location", [""])[0]
    assert resp.code in (302, 303), (resp.code, await resp.text())
    return location


def main(argv: list[str] | None = None) -> int:
    from twisted.internet import reactor

    p = argparse.ArgumentParser(prog="python -m tests.support.idp")
    p.add_argument("--port", type=int, default=9400)
    p.add_argument("--interface", default="127.0.0.1")
    p.add_argument("--user", action="append", default=[], help="name:password (repeatable)")
    p.add_argument("--registration-token", default=DEFAULT_REGISTRATION_TOKEN)
    p.add_argument("--token-ttl", type=int, default=300,
                   help="lifetime of ID and access tokens, seconds")
    p.add_argument("--sso", action="store_true",
                   help="remember signed-in browsers (the next login asks nothing, unless "
                        "the client sends prompt=login)")
    p.add_argument("--keep-login", action="store_true",
                   help="with --sso: ignore prompt=login where a browser is signed in (the "
                        "next login asks nothing even then, as some providers do)")
    p.add_argument("--prompt-values", default="login",
                   help="the prompt values listed in discovery, comma-separated (others "
                        "are refused); \"\" for none")
    args = p.parse_args(argv)
    users = dict(u.split(":", 1) for u in args.user) or None
    idp = TestIdP(clock=reactor, users=users, registration_token=args.registration_token or None,
                  token_ttl=args.token_ttl,
                  prompt_values=tuple(v for v in args.prompt_values.split(",") if v))
    idp.control = True
    idp.sso = args.sso
    idp.keep_login = args.keep_login
    idp.listen(reactor, args.port, args.interface)  # type: ignore[arg-type]
    print(f"test IdP at {idp.issuer}", flush=True)
    reactor.run()  # type: ignore[attr-defined]
    return 0


if __name__ == "__main__":
    sys.exit(main())
