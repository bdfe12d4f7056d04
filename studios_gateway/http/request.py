"""One HTTP request as the gateway's own routes see it (login, logout, hand-off, pages)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import parse_qsl

from studios_gateway.http.routing import parse_host

__all__ = ["RequestInfo"]


@dataclass(slots=True)
class RequestInfo:
    """What the login logic needs to know about one HTTP request.

    Not frozen: the proxy makes one per request, and a frozen dataclass sets each field
    through ``object.__setattr__`` (0.66 against 0.11 us for these seven); none is changed
    once made, and ``headers`` is the head's own list, never changed either."""

    method: str
    host: str  # the Host header as sent (may carry a port)
    path: str  # the request target's path, as received
    query: str = ""  # the raw query string, without '?'
    headers: Sequence[tuple[bytes, bytes]] = ()
    scheme: str = "http"
    client: tuple[str, int] | None = None

    @property
    def hostname(self) -> str:
        """The host name of the Host header (lower case, no port, IPv6 without brackets);
        "" when the header is not a valid host[:port]. Read by routing's one Host parser."""
        host = parse_host(self.host) or ""
        return host[1:-1] if host.startswith("[") else host

    def params(self) -> dict[str, str]:
        """Query parameters; the first of repeated names wins."""
        out: dict[str, str] = {}
        for k, v in parse_qsl(self.query, keep_blank_values=True):
            out.setdefault(k, v)
        return out

    def header(self, name: bytes) -> bytes | None:
        name = name.lower()
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return None

    @property
    def target(self) -> str:
        return self.path + (f"?{self.query}" if self.query else "")
