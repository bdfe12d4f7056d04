"""A small HTTP client for tests: names resolve to 127.0.0.1, cookies per host, redirects.

Browsers resolve ``<id>.localhost`` to loopback; this client does the same for
any host name, connecting to 127.0.0.1 on the URL's port while sending the
real Host header, so subdomain routing can be tested without DNS.
"""

from __future__ import annotations

import http.client
import json as jsonlib
import socket
import ssl
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin, urlsplit


@dataclass
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes
    url: str

    def json(self) -> Any:
        return jsonlib.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


class _HTTPSTo127(http.client.HTTPSConnection):
    """HTTPS to 127.0.0.1 on the URL's port, with the URL's host name as SNI."""

    def __init__(self, hostname: str, port: int, context: ssl.SSLContext, timeout: float):
        super().__init__("127.0.0.1", port, timeout=timeout, context=context)
        self._hostname = hostname

    def connect(self) -> None:
        sock = socket.create_connection(("127.0.0.1", self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self._hostname)


#: The Accept of a browser's page load (Chromium's): the gateway answers it with its HTML
#: pages, and a client that accepts no HTML (``curl``'s ``*/*``, a script's) with their
#: words in JSON (studios_gateway.http.audience).
PAGE_LOAD_ACCEPT = ("text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,"
                    "image/webp,image/apng,*/*;q=0.8,application/signed-exchange;v=b3;q=0.7")


@dataclass
class Browser:
    """Cookie jar keyed by (host, path prefix); good enough for host-only cookies.
    `tls`: the context for https:// URLs; `set_cookies` keeps every (host, Set-Cookie).
    Each request is sent as a page load's (`accept`: a browser's); a request's own
    ``Accept`` in its `headers` replaces it (``*/*``: as ``curl`` asks)."""

    cookies: dict[str, dict[str, tuple[str, str]]] = field(default_factory=dict)
    timeout: float = 30.0
    tls: ssl.SSLContext | None = None
    set_cookies: list[tuple[str, str]] = field(default_factory=list)
    accept: str = PAGE_LOAD_ACCEPT

    def _cookie_header(self, host: str, path: str) -> str | None:
        jar = self.cookies.get(host, {})
        pairs = [f"{name}={value}" for name, (value, cpath) in jar.items()
                 if path.startswith(cpath.rstrip("/")) or cpath == "/"]
        return "; ".join(pairs) or None

    def _store(self, host: str, headers: http.client.HTTPMessage) -> None:
        for raw in headers.get_all("Set-Cookie") or []:
            self.set_cookies.append((host, raw))
            first, *attrs = [p.strip() for p in raw.split(";")]
            name, _, value = first.partition("=")
            path = "/"
            expired = False
            for a in attrs:
                k, _, v = a.partition("=")
                if k.lower() == "path":
                    path = v or "/"
                if k.lower() == "max-age" and v.strip() in ("0", "-1"):
                    expired = True
            jar = self.cookies.setdefault(host, {})
            if expired or not value:
                jar.pop(name, None)
            else:
                jar[name] = (value, path)

    def request(self, url: str, method: str = "GET", body: bytes | None = None,
                headers: dict[str, str] | None = None, follow: bool = True,
                max_redirects: int = 10) -> Reply:
        for _ in range(max_redirects + 1):
            parts = urlsplit(url)
            host = parts.hostname or "localhost"
            port = parts.port or (443 if parts.scheme == "https" else 80)
            path = parts.path or "/"
            target = path + (f"?{parts.query}" if parts.query else "")
            conn: http.client.HTTPConnection
            if parts.scheme == "https":
                conn = _HTTPSTo127(host, port, self.tls or ssl.create_default_context(),
                                   self.timeout)
            else:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=self.timeout)
            hdrs = {"Host": parts.netloc, "Accept": self.accept}
            cookie = self._cookie_header(host, path)
            if cookie:
                hdrs["Cookie"] = cookie
            hdrs.update(headers or {})
            try:
                conn.request(method, target, body=body, headers=hdrs)
                resp = conn.getresponse()
                data = resp.read()
            finally:
                conn.close()
            self._store(host, resp.headers)
            location = resp.headers.get("Location")
            if follow and resp.status in (301, 302, 303, 307, 308) and location:
                url = urljoin(url, location)
                if resp.status in (301, 302, 303):
                    method, body = "GET", None
                continue
            return Reply(resp.status, resp.headers, data, url)
        raise AssertionError(f"more than {max_redirects} redirects, last at {url}")

    def get(self, url: str, **kw: Any) -> Reply:
        return self.request(url, **kw)

    def use_login_link(self, link: str) -> Reply:
        """Open a one-time login link as a person does: the page, then its button (a POST),
        following the redirects to the studio."""
        page = self.get(link)
        assert page.status == 200 and 'method="post"' in page.text, (page.status, page.text)
        return self.request(link, method="POST")

    def log_out(self, url: str) -> Reply:
        """Log out as a person does: the logout page (`url`), then its "Log out" button
        (a POST to the same address), following the redirects."""
        page = self.get(url)
        assert page.status == 200 and 'method="post"' in page.text, (page.status, page.text)
        return self.request(page.url, method="POST")
