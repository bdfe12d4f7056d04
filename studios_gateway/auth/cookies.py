"""Signed, expiring tokens: session cookies, handoff codes and login links.

A token is ``<payload>.<mac>``: the payload is URL-safe base64 (no padding) of
a compact JSON object, the mac is HMAC-SHA256 over a purpose label and the
payload, keyed by a secret kept under CONNECT_STORAGE_ROOT. The purpose label
keeps the kinds apart: a login link is never accepted as a cookie.

A session cookie carries its subject, the one session id it is valid for (its
scope), when it was issued and expires, and the login it belongs to (so a
logout can revoke every cookie of that login). A cookie copied from studio A
fails on studio B: its scope names A.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from studios_gateway.memos import make_room

__all__ = [
    "COOKIE_NAME",
    "LOGIN_SCOPE",
    "Clock",
    "CookieCodec",
    "SessionCookie",
    "Signer",
    "clear_cookie_header",
    "cookie_values",
    "set_cookie_header",
]

#: The studio cookie's base name; see :func:`cookie_name` for the prefixed forms.
COOKIE_NAME = "connect_session"
#: The scope of the proxy host's own login cookie (never a session id: ids have no '@').
LOGIN_SCOPE = "@login"
#: Longest token we look at; anything longer is refused before any work.
MAX_TOKEN = 3000
#: How far in the future an issued-at may lie (clock skew between nodes).
SKEW = 60.0

_B64 = re.compile(r"[A-Za-z0-9_-]+")


class Clock(Protocol):
    def seconds(self) -> float: ...


def _b64e(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64d(text: str) -> bytes:
    if not _B64.fullmatch(text) or len(text) % 4 == 1:
        raise ValueError("not base64url")
    raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if _b64e(raw) != text:  # non-canonical trailing bits: one token has one spelling
        raise ValueError("not canonical base64url")
    return raw


class Signer:
    """HMAC-SHA256 over (purpose, payload), verified in constant time."""

    def __init__(self, key: bytes):
        if len(key) < 32:
            raise ValueError("the signing key must have at least 32 bytes")
        self._key = key

    def _mac(self, purpose: str, body: str) -> bytes:
        msg = purpose.encode("ascii") + b"\x00" + body.encode("ascii")
        return hmac.new(self._key, msg, hashlib.sha256).digest()

    def sign(self, purpose: str, payload: Mapping[str, Any]) -> str:
        body = _b64e(json.dumps(payload, separators=(",", ":"), sort_keys=True).encode())
        return f"{body}.{_b64e(self._mac(purpose, body))}"

    def verify(self, purpose: str, token: str) -> dict[str, Any] | None:
        """The payload when `token` was signed by us for `purpose`, else None."""
        if not isinstance(token, str) or len(token) > MAX_TOKEN or token.count(".") != 1:
            return None
        body, _, mac = token.partition(".")
        try:
            given = _b64d(mac)
            if not _B64.fullmatch(body):
                return None
        except ValueError:
            return None
        if not hmac.compare_digest(given, self._mac(purpose, body)):
            return None
        try:
            data = json.loads(_b64d(body))
        except ValueError:
            return None
        return data if isinstance(data, dict) else None


def _text(v: Any) -> bool:
    return isinstance(v, str) and 0 < len(v) <= 256


def _num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


@dataclass(frozen=True)
class SessionCookie:
    """What a valid session cookie says."""

    subject: str
    scope: str  # the session id it opens, or LOGIN_SCOPE for the proxy host's login cookie
    issued_at: float
    expires_at: float
    login_id: str

    def to_payload(self) -> dict[str, Any]:
        return {"v": 1, "sub": self.subject, "scp": self.scope, "iat": int(self.issued_at),
                "exp": int(self.expires_at), "lid": self.login_id}

    @classmethod
    def from_payload(cls, data: Mapping[str, Any]) -> SessionCookie | None:
        if data.get("v") != 1:
            return None
        sub, scp, iat, exp, lid = (data.get(k) for k in ("sub", "scp", "iat", "exp", "lid"))
        if not (_text(sub) and _text(scp) and _text(lid) and _num(iat) and _num(exp)):
            return None
        return cls(sub, scp, float(iat), float(exp), lid)  # type: ignore[arg-type]


def new_login_id() -> str:
    return secrets.token_urlsafe(12)


#: How long a cookie whose signature and scope checked out is remembered, and how many
#: are: a browser sends the same cookie with every request, and the HMAC, base64 and
#: JSON work is most of what checking it costs. Expiry is checked on every use.
VERIFIED_TTL = 30.0
VERIFIED_MAX = 10_000


class CookieCodec:
    """Issues and checks session cookies against a clock.

    Cookies that verified are remembered for ``verified_ttl`` seconds (at most
    ``verified_max`` of them) by their exact value and scope, so a browser's
    next requests skip the HMAC; the memory holds only the last ``verified_ttl``
    seconds' cookies. Only valid cookies are remembered: a forged or
    tampered one pays the full check every time and cannot crowd out others. The
    lookup is a dict lookup keyed by the value; Python's string hash is keyed by
    a per-process secret, so its timing tells an attacker nothing about a
    cookie they do not already hold.
    """

    PURPOSE = "session-cookie/1"

    def __init__(self, signer: Signer, clock: Clock, *, verified_ttl: float = VERIFIED_TTL,
                 verified_max: int = VERIFIED_MAX):
        self._signer = signer
        self._clock = clock
        self._verified_ttl = verified_ttl
        self._verified_max = verified_max
        #: (value, scope) -> (remembered until, the cookie's claims)
        self._verified: dict[tuple[str, str], tuple[float, SessionCookie]] = {}

    def issue(self, subject: str, scope: str, login_id: str, ttl: float) -> str:
        now = self._clock.seconds()
        return self._signer.sign(self.PURPOSE, SessionCookie(
            subject, scope, now, now + ttl, login_id).to_payload())

    def verify(self, value: str, scope: str) -> SessionCookie | None:
        """The cookie's claims if it is ours, unexpired and scoped to `scope`."""
        now = self._clock.seconds()
        key = (value, scope)
        hit = self._verified.get(key)
        if hit is not None and hit[0] > now:
            cookie = hit[1]
        else:
            if hit is not None:
                del self._verified[key]
            found = self._check(value, scope)
            if found is None:
                return None
            cookie = found
        if now >= cookie.expires_at or cookie.issued_at > now + SKEW:
            return None
        if hit is None or hit[1] is not cookie:
            self._remember(key, cookie, now)
        return cookie

    def ended(self, value: str, scope: str) -> SessionCookie | None:
        """The claims of a cookie of ours for `scope` whose time is over (None for one
        still valid, or not ours). Such a cookie opens nothing; it only names its login,
        so that a logout can still end that login's open connections."""
        cookie = self._check(value, scope)
        if cookie is None or self._clock.seconds() < cookie.expires_at:
            return None
        return cookie

    def _check(self, value: str, scope: str) -> SessionCookie | None:
        """Signature, claims and scope (not the time) of `value`."""
        data = self._signer.verify(self.PURPOSE, value)
        if data is None:
            return None
        cookie = SessionCookie.from_payload(data)
        if cookie is None or not hmac.compare_digest(cookie.scope.encode(), scope.encode()):
            return None
        return cookie

    def _remember(self, key: tuple[str, str], cookie: SessionCookie, now: float) -> None:
        if self._verified_ttl <= 0 or self._verified_max <= 0:
            return
        cache = self._verified
        # One TTL for all, so the oldest expire first. A logged-out browser's cookies never
        # come back, and each login's stayed until verified_max newer ones had pushed them
        # out (soak53).
        make_room(cache, self._verified_max, lambda hit: hit[0] <= now)
        cache[key] = (now + self._verified_ttl, cookie)


# Set-Cookie and Cookie headers ----------------------------------------------------------


def cookie_name(*, secure: bool, host_only_root: bool) -> str:
    """``__Host-`` when the cookie is Secure, has Path=/ and no Domain (subdomain mode):
    browsers then refuse a sibling subdomain's attempt to set or shadow it."""
    return f"__Host-{COOKIE_NAME}" if secure and host_only_root else COOKIE_NAME


def set_cookie_header(name: str, value: str, *, path: str, max_age: int,
                      secure: bool) -> tuple[bytes, bytes]:
    """A host-only (no Domain) Set-Cookie header: HttpOnly, SameSite=Lax, Secure on TLS,
    Priority=High. A browser keeps a bounded number of cookies per site (Chromium: 180)
    and evicts the least recently used beyond it, lower priorities first: without it a
    studio's tool setting a few hundred cookies of its own pushed the gateway's login
    (the proxy host's, other studios') out of the browser (tools' Set-Cookie headers lose
    their Priority: http/headers.py)."""
    parts = [f"{name}={value}", f"Path={path}", f"Max-Age={max(0, int(max_age))}",
             "HttpOnly", "SameSite=Lax", "Priority=High"]
    if secure:
        parts.append("Secure")
    return b"Set-Cookie", "; ".join(parts).encode("ascii")


def clear_cookie_header(name: str, *, path: str, secure: bool) -> tuple[bytes, bytes]:
    return set_cookie_header(name, "", path=path, max_age=0, secure=secure)


def cookie_values(headers: Any, name: str) -> list[str]:
    """Every value of cookie `name` in the request's Cookie headers, in order.

    `headers` is a sequence of (name, value) byte pairs. Several values can come
    (cookies with the same name and different paths); callers try each.
    """
    out = []
    for hname, hvalue in headers:
        if hname.lower() != b"cookie":
            continue
        for k, v in _cookie_pairs(hvalue):
            if k == name:
                out.append(v)
    return out


# _cookie_pairs' answers for the Cookie values seen lately (a browser sends the same one
# on each request until a cookie changes). Bounded by count and length; once full, the
# oldest answer goes. (The values are secrets the process holds anyway, like
# CookieCodec's cache of verified cookies.)
_PAIRS: dict[bytes, tuple[tuple[str, str], ...]] = {}
_PAIRS_MAX = 256
_PAIRS_LONGEST = 4096


def _cookie_pairs(value: bytes) -> tuple[tuple[str, str], ...]:
    """The (name, value) pairs of one Cookie header's value, in order (items without
    "=" left out; values without surrounding spaces and quotes)."""
    pairs = _PAIRS.get(value)
    if pairs is None:
        found = []
        for item in value.decode("latin-1").split(";"):
            k, sep, v = item.strip().partition("=")
            if sep:
                found.append((k, v.strip().strip('"')))
        pairs = tuple(found)
        if len(value) <= _PAIRS_LONGEST:
            if len(_PAIRS) >= _PAIRS_MAX:
                del _PAIRS[next(iter(_PAIRS))]
            _PAIRS[value] = pairs
    return pairs
