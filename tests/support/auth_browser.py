"""The login flow driven in-process: a cookie jar and redirects calling `Auth` directly.

Unit tests of the login routes use this; everything over real sockets uses
:class:`tests.support.web.Browser` (the one browser of the integration tests).

Requests to the gateway's hosts go through ``Auth.handle`` and then
``Auth.authorize_request`` (as the proxy will do); a redirect to any other
host is handed to `external` (the identity provider's login page), which
returns the URL the provider redirects back to.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin, urlsplit

from studios_gateway.auth.login import Auth, Identity, Response
from studios_gateway.http.request import RequestInfo


@dataclass
class Jar:
    #: (host, path, name) -> value; host-only cookies, as the gateway sets them.
    cookies: dict[tuple[str, str, str], str] = field(default_factory=dict)

    def store(self, host: str, response: Response) -> None:
        for k, v in response.headers:
            if k.lower() != b"set-cookie":
                continue
            parts = [p.strip() for p in v.decode().split(";")]
            name, _, value = parts[0].partition("=")
            attrs = {p.partition("=")[0].lower(): p.partition("=")[2] for p in parts[1:]}
            assert "domain" not in attrs, "the gateway sets host-only cookies"
            key = (host, attrs.get("path", "/"), name)
            if attrs.get("max-age") == "0":
                self.cookies.pop(key, None)
            else:
                self.cookies[key] = value

    def header(self, host: str, path: str) -> tuple[bytes, bytes] | None:
        sent = [f"{n}={v}" for (h, p, n), v in self.cookies.items()
                if h == host and path.startswith(p)]
        return (b"Cookie", "; ".join(sent).encode()) if sent else None


def request(url: str, jar: Jar | None = None, method: str = "GET",
            headers: tuple[tuple[bytes, bytes], ...] = ()) -> RequestInfo:
    u = urlsplit(url)
    hdrs = list(headers)
    if jar is not None:
        c = jar.header(u.hostname or "", u.path or "/")
        if c is not None:
            hdrs.append(c)
    return RequestInfo(method=method, host=u.netloc, path=u.path or "/", query=u.query,
                       headers=tuple(hdrs), scheme=u.scheme)


@dataclass
class LoginDriver:
    auth: Auth
    external: Callable[[str], Awaitable[str]] | None = None
    jar: Jar = field(default_factory=Jar)
    visited: list[str] = field(default_factory=list)

    def _ours(self, host: str) -> bool:
        s = self.auth.settings
        return host == s.proxy_host or s.session_of_host(host) is not None

    async def open(self, url: str, method: str = "GET",
                   max_hops: int = 10) -> tuple[Identity | Response | None, str]:
        """Follow redirects from `url`; returns the last answer and where it came from."""
        s = self.auth.settings
        for _ in range(max_hops):
            self.visited.append(url)
            host = (urlsplit(url).hostname or "").lower()
            if not self._ours(host):
                if self.external is None:
                    return None, url
                url = await self.external(url)
                continue
            req = request(url, self.jar, method)
            method = "GET"
            resp: Any = await self.auth.handle(req)
            if resp is None:
                sid = s.session_of_host(host) or s.session_of_path(req.path)
                if sid is None:
                    return None, url
                resp = await self.auth.authorize_request(req, sid)
                if isinstance(resp, Identity):
                    return resp, url
            self.jar.store(host, resp)
            location = dict((k.lower(), v) for k, v in resp.headers).get(b"location")
            if resp.status in (301, 302, 303, 307) and location is not None:
                url = urljoin(url, location.decode())
                continue
            return resp, url
        raise AssertionError(f"too many redirects: {self.visited}")
