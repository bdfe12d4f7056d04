"""How the gateway presents one studio's tool: its routing mode times its tool.

:func:`tool_route` turns a :class:`~studios_gateway.http.routing.Route` and the
session's tool (any name :mod:`~studios_gateway.wire.tools` accepts) into a
:class:`ToolRoute`, a plain object the proxy asks three things:

* ``target(upstream_target)``: what the tool is sent (the prefix stripped for
  tools that serve at ``/``, in path mode);
* ``request_headers(headers)``: the headers the tool expects from its proxy
  set (RStudio's ``X-RStudio-Root-Path``), ``X-Forwarded-Prefix`` set when the
  gateway stripped a prefix, and any copy of these a client sent dropped;
* ``response_headers(headers, host, path)``: ``Location``, ``Refresh``,
  ``Set-Cookie`` and ``Service-Worker-Allowed`` paths kept inside the studio (path
  mode only).

``unavailable`` says why the tool cannot work in this mode (the proxy then
answers with a page, never with the tool's 404); no tool needs it today.
``is_logout(method, path)`` says whether a request is a page load of the tool's own
logout (JupyterLab's ``<prefix>logout``), which the proxy sends to the gateway's.

``X-Forwarded-Prefix`` is sent only when the gateway removed the prefix: that is
what the header means to the frameworks that read it (Spring, ASP.NET, Traefik's
StripPrefix), which put it in front of the path they were given; a tool that
already sees the prefix would get it twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property, lru_cache

from studios_gateway.http.pathmode import ToolPaths
from studios_gateway.http.routing import Mode, Route, parse_host
from studios_gateway.wire import tools
from studios_gateway.wire.tools import ToolSpec

__all__ = ["FORWARDED_PREFIX", "ToolRoute", "tool_route"]

FORWARDED_PREFIX = b"X-Forwarded-Prefix"
Headers = list[tuple[bytes, bytes]]


@dataclass(frozen=True)
class ToolRoute:
    spec: ToolSpec
    mode: Mode
    paths: ToolPaths | None  # None in subdomain mode: nothing to strip or rewrite
    set_headers: tuple[tuple[bytes, bytes], ...] = ()
    unavailable: str | None = None
    logout: str | None = None  # the path of the tool's own logout page on this route

    def is_logout(self, method: str, path: str) -> bool:
        """A GET (or HEAD) of the tool's own logout page."""
        return path == self.logout and method in ("GET", "HEAD")

    def target(self, upstream_target: str) -> str:
        return self.paths.to_tool(upstream_target) if self.paths else upstream_target

    @cached_property
    def drop(self) -> frozenset[bytes]:
        """The (lower-case) names of request headers only the gateway sets for this tool."""
        return frozenset({FORWARDED_PREFIX.lower()}
                         | {name.lower() for name, _ in self.set_headers})

    def request_headers(self, headers: Sequence[tuple[bytes, bytes]]) -> Headers:
        drop = self.drop
        return [(n, v) for n, v in headers if n.lower() not in drop] + list(self.set_headers)

    def response_headers(self, headers: Headers, host_header: str, request_path: str
                         ) -> tuple[Headers, bool]:
        """The tool's response headers for the browser, and whether any were changed."""
        if self.paths is None:
            return headers, False
        return self.paths.response_headers(headers, parse_host(host_header) or "",
                                           request_path), True


def _header_value(template: str, prefix: str) -> bytes:
    return template.format(prefix=prefix, prefix_no_slash=prefix.rstrip("/") or "/").encode()


def tool_route(route: Route, tool: str) -> ToolRoute:
    """How `tool` is presented on `route` (the same object for the same mode, prefix and
    tool: it is asked on every request, and is immutable)."""
    # Keyed by the mode's value: an Enum member's hash is a Python call (one per request).
    return _tool_route(route.mode._value_, route.prefix, tool)


@lru_cache(maxsize=4096)
def _tool_route(mode_value: str, prefix: str, tool: str) -> ToolRoute:
    mode = Mode(mode_value)
    spec = tools.spec_for(tool)
    headers = [(name.encode(), _header_value(value, prefix))
               for name, value in spec.proxy_headers]
    paths = None
    if mode is Mode.PATH:
        paths = ToolPaths(prefix, strip=spec.strip_prefix)
        if spec.strip_prefix:
            headers.append((FORWARDED_PREFIX, prefix.rstrip("/").encode()))
    logout = prefix + spec.logout_path if spec.logout_path else None
    return ToolRoute(spec, mode, paths, tuple(headers), spec.unavailable_in(mode.value),
                     logout)
