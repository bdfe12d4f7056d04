"""Which studio a request is for: pure functions of the Host header and the request target.

Two ways in, one per deployment:

* subdomain mode: ``Host: <id>.<studios domain>`` (any port, any case); the tool
  sees the request target unchanged and its prefix is ``/``;
* path mode: ``Host: <proxy host>`` and a target under ``/_studio/<id>/``; what
  the tool sees of that prefix depends on the tool (``http.toolroute``: passed on
  to tools started with it, stripped for tools that serve at ``/``). Per-studio
  host names are refused in path mode: path mode is for deployments without a
  wildcard name and certificate, its logins and cookies are scoped to paths on
  the proxy host, and a studio reachable by a second origin would escape that.

The answer is a :class:`Route`, a :class:`Redirect` (``/_studio/<id>`` gets its
slash) or a :class:`Refusal` with the status the proxy should send.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import Enum
from urllib.parse import urlsplit

from studios_gateway.wire.ids import SESSION_ID

__all__ = [
    "PATH_PREFIX",
    "Mode",
    "Redirect",
    "Refusal",
    "Route",
    "Router",
    "parse_host",
]

PATH_PREFIX = "/_studio/"

# RFC 3986 reg-name restricted to what DNS names use, or an IP literal.
_REG_NAME = re.compile(r"[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63})*\.?")
_IPV6 = re.compile(r"\[[0-9A-Fa-f:.]{2,45}\]")
_PORT = re.compile(r"[0-9]{1,5}")
# Dot segments, plain or percent-encoded, anywhere in a path.
_DOT_SEGMENT = re.compile(r"(?:^|/)(?:\.|%2e){1,2}(?:/|$)", re.IGNORECASE)


class Mode(Enum):
    SUBDOMAIN = "subdomain"
    PATH = "path"


@dataclass(slots=True)
class Route:
    """Not frozen: one is made per request, and a frozen dataclass sets each field through
    ``object.__setattr__`` (about 0.1 us a field); none is changed once made."""

    session_id: str
    mode: Mode
    upstream_target: str  # path and query as asked (toolroute may strip the prefix)
    prefix: str  # "/" in subdomain mode, "/_studio/<id>/" in path mode


@dataclass(frozen=True)
class Redirect:
    location: str
    status: int = 308


@dataclass(frozen=True)
class Refusal:
    status: int
    # machine-readable: bad-host, bad-target, not-a-studio, unknown-host, path-mode-host,
    # subdomain-mode-path
    reason: str
    detail: str = ""  # for the page (plain text)
    session_id: str | None = None


# parse_host's answers for Host values seen before (a client sends the same one on every
# request, the login asks again). Bounded: once full, other values are parsed each time.
_PARSED_HOSTS: dict[str, str | None] = {}
_PARSED_HOSTS_MAX = 1024


def parse_host(value: str) -> str | None:
    """The lower-cased host name of a Host header value (port and trailing dot removed),
    or None if the value is not a valid host[:port]."""
    try:
        return _PARSED_HOSTS[value]
    except KeyError:
        pass
    host = _parse_host(value)
    if len(_PARSED_HOSTS) < _PARSED_HOSTS_MAX:
        _PARSED_HOSTS[value] = host
    return host


def _parse_host(value: str) -> str | None:
    if not value or value != value.strip() or len(value) > 300:
        return None
    if value.startswith("["):
        end = value.find("]")
        host, rest = value[: end + 1], value[end + 1 :]
        if end == -1 or not _IPV6.fullmatch(host):
            return None
    else:
        host, sep, port = value.partition(":")
        rest = sep + port
        if not _REG_NAME.fullmatch(host) or len(host) > 254:
            return None
    if rest:
        if not rest.startswith(":") or not _PORT.fullmatch(rest[1:]) or int(rest[1:]) > 65535:
            return None
    return host.lower().rstrip(".")


_STUDIO_HOSTS_MAX = 1024


@dataclass(frozen=True)
class Router:
    """Routes for one deployment.

    ``studios_domain``: the parent of the per-studio hosts (``connect.example.com``);
    ``proxy_host``: the host that serves path mode and the login routes (often the
    same name); ``path_routing``: path mode (``/_studio/<id>/`` on the proxy host,
    per-studio hosts refused) instead of subdomain mode.
    """

    studios_domain: str
    proxy_host: str
    path_routing: bool = False
    # Host header values seen before that name a studio in subdomain mode, with its id:
    # every request of a studio's pages asks again. Bounded: once full it starts again
    # empty (those in use come back at their next request). It was kept full: a node
    # that had seen 1024 host names (made-up ones too: a scanner's, the soak's 404s)
    # worked out every other studio's host at every request for the rest of its life.
    _studio_hosts: dict[str, str] = field(default_factory=dict, init=False, repr=False,
                                          compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "studios_domain", self.studios_domain.lower().rstrip("."))
        object.__setattr__(self, "proxy_host", self.proxy_host.lower().rstrip("."))

    def route(self, host_header: str, target: str) -> Route | Redirect | Refusal:
        label = self._studio_hosts.get(host_header)
        if label is not None and target[:1] == "/":
            return Route(label, Mode.SUBDOMAIN, target, "/")
        got = self._route(host_header, target)
        if type(got) is Route and got.mode is Mode.SUBDOMAIN:
            if len(self._studio_hosts) >= _STUDIO_HOSTS_MAX:
                self._studio_hosts.clear()
            self._studio_hosts[host_header] = got.session_id
        return got

    def serves(self, hostname: str) -> bool:
        """Whether requests for ``hostname`` (as :func:`parse_host` gives it) are this
        gateway's: the proxy host, or in subdomain mode a well-formed studio host."""
        if hostname == self.proxy_host:
            return True
        suffix = "." + self.studios_domain
        return (not self.path_routing and hostname.endswith(suffix)
                and SESSION_ID.fullmatch(hostname[: -len(suffix)]) is not None)

    def _route(self, host_header: str, target: str) -> Route | Redirect | Refusal:
        hostname = parse_host(host_header)
        if hostname is None:
            return Refusal(400, "bad-host", "The Host header is not a valid host name.")
        if not target.startswith("/"):
            return Refusal(400, "bad-target", "The request target must be a path.")
        suffix = "." + self.studios_domain
        if hostname != self.proxy_host and hostname.endswith(suffix):
            label = hostname[: -len(suffix)]
            if not SESSION_ID.fullmatch(label):
                return Refusal(404, "unknown-host", "There is no studio at this address.")
            if self.path_routing:
                return Refusal(404, "path-mode-host",
                               f"This gateway serves studios by path, not by host name: open "
                               f"{self.proxy_host}{PATH_PREFIX}{label}/ instead.", label)
            return Route(label, Mode.SUBDOMAIN, target, "/")
        if hostname == self.proxy_host:
            return self._path_route(target)
        return Refusal(404, "unknown-host", "There is no studio at this address.")

    def _path_route(self, target: str) -> Route | Redirect | Refusal:
        if not self.path_routing and target.startswith(PATH_PREFIX):
            # A path-mode address in subdomain mode (a link from a path-mode setup, the
            # operator's routing not the one they meant): it said "no page of its own".
            sid = target[len(PATH_PREFIX):].partition("/")[0].partition("?")[0]
            if SESSION_ID.fullmatch(sid):
                return Refusal(404, "subdomain-mode-path",
                               f"This gateway serves studios by host name, not by path: "
                               f"open {sid}.{self.studios_domain}/ instead.", sid)
        if not self.path_routing or not target.startswith(PATH_PREFIX):
            # The gateway's own address, typed or bookmarked: where studios are.
            return Refusal(404, "not-a-studio",
                           "This address is the studios gateway, which has no page of its "
                           "own. Open your studio with the address or login link you were "
                           "given.")
        path, qmark, query = target.partition("?")
        sid, slash, _rest = path[len(PATH_PREFIX) :].partition("/")
        if not SESSION_ID.fullmatch(sid):
            return Refusal(404, "not-a-studio", "That is not a studio address.")
        if _DOT_SEGMENT.search(path):
            return Refusal(400, "bad-target", "The path has dot segments.", sid)
        prefix = f"{PATH_PREFIX}{sid}/"
        if not slash:
            return Redirect(prefix + (qmark + query if qmark else ""))
        return Route(sid, Mode.PATH, target, prefix)


def absolute_to_origin(target: str, host_header: str) -> str | None:
    """An absolute-form target (``http://host/path``) as origin-form, if its authority
    is the Host header; None when it is anything else (the proxy refuses it)."""
    try:
        parts = urlsplit(target)
    except ValueError:
        return None
    if parts.scheme.lower() not in ("http", "https") or parts.fragment or parts.username:
        return None
    if parse_host(parts.netloc) is None or parts.netloc.lower() != host_header.lower():
        return None
    path = parts.path or "/"
    return path + (f"?{parts.query}" if parts.query else "")
