"""Path mode: a studio under ``/_studio/<id>/``, and what its tool sees of that prefix.

A :class:`ToolPaths` is the plain per-studio rule (jupyter-server-proxy calls
the two kinds "absolute" and "relative"):

* ``strip=False``: the tool serves under the prefix itself (started with its
  base path); requests reach it unchanged;
* ``strip=True``: the tool serves at ``/`` (it has no base-path setting, or
  wants a proxy that strips); the gateway removes ``/_studio/<id>`` from the
  request target and puts it back on the way out.

Either way the tool's answers are kept inside the studio: a ``Location``,
``Refresh`` or ``Set-Cookie`` path that points at this host outside the prefix
is moved under it (a ``Service-Worker-Allowed`` outside it becomes the prefix), and
what sets a policy for the whole origin (``NEL``, ``Report-To``) is dropped. A
path that is already under the prefix is left as it is
(a tool that knows its public prefix, such as RStudio told by
``X-RStudio-Root-Path``, emits public paths: the prefix is never added twice).

A browser reads a redirect more loosely than :func:`urllib.parse.urlsplit`
(the WHATWG URL rules): tabs and newlines are dropped, ``\\`` counts as ``/``,
``%2e`` as ``.``, and ``http:x`` is relative. The rewrites read the value the
way the browser will, resolve it against what the tool was asked (dot
segments cannot climb above the tool's root), and write a plain absolute path,
so nothing a tool sends can send the browser to another studio on this host.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import unquote

from studios_gateway.http.routing import parse_host

__all__ = ["ORIGIN_POLICIES", "ToolPaths", "remove_dot_segments", "rewrite_set_cookie",
           "under_prefix"]

_TAB_NEWLINE = re.compile(r"[\t\r\n]")
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):(.*)", re.DOTALL)
_REFRESH = re.compile(r"\s*([0-9.]*)\s*[;,]?\s*(?:url\s*=\s*)?(.*)", re.IGNORECASE | re.DOTALL)


def under_prefix(path: str, prefix: str) -> bool:
    return path.startswith(prefix) or path == prefix.rstrip("/")


def _prefixed(path: str, prefix: str) -> str:
    if under_prefix(path, prefix):
        return path
    return prefix.rstrip("/") + path


def _first(text: str, chars: str) -> int:
    """The index of the first of ``chars`` in ``text``, or its length."""
    return min((i for i in map(text.find, chars) if i != -1), default=len(text))


def _is_dot(segment: str, dots: str) -> bool:
    return segment.lower().replace("%2e", ".") == dots


def remove_dot_segments(path: str) -> str:
    """An absolute path with ``.`` and ``..`` segments (also percent-encoded) resolved;
    ``..`` never climbs above ``/``."""
    out: list[str] = []
    segments = path.split("/")[1:]
    for i, seg in enumerate(segments):
        last = i == len(segments) - 1
        if _is_dot(seg, "."):
            if last:
                out.append("")
        elif _is_dot(seg, ".."):
            if out:
                out.pop()
            if last:
                out.append("")
        else:
            out.append(seg)
    return "/" + "/".join(out)


def _resolve(reference: str, base_path: str) -> str:
    """``reference`` (no scheme, no authority; ``\\`` already ``/``) resolved against
    the absolute path ``base_path``: an absolute path, with query and fragment."""
    cut = _first(reference, "?#")
    path, rest = reference[:cut], reference[cut:]
    if not path:
        path = base_path
    elif not path.startswith("/"):
        path = base_path[: base_path.rfind("/") + 1] + path
    return remove_dot_segments(path) + rest


def _browser_form(value: str) -> str:
    """The value as a browser reads a URL: no tabs or newlines, ``\\`` as ``/`` before
    the query (http and https URLs and references to them)."""
    value = _TAB_NEWLINE.sub("", value).strip(" ")
    cut = _first(value, "?#")
    return value[:cut].replace("\\", "/") + value[cut:]


@dataclass(frozen=True)
class ToolPaths:
    """How one studio's public paths map to its tool's, in path mode.

    ``prefix`` is the public prefix (``/_studio/<id>/``, with its slash); ``strip``
    whether the tool is served at ``/``.
    """

    prefix: str
    strip: bool = False

    # Requests -------------------------------------------------------------------------------

    def to_tool(self, target: str) -> str:
        """The request target (path and query, under the prefix) the tool is sent."""
        if self.strip and target.startswith(self.prefix):
            return target[len(self.prefix) - 1:]
        return target

    def tool_path(self, public_path: str) -> str:
        return self.to_tool(public_path) if self.strip else public_path

    # Answers --------------------------------------------------------------------------------

    def to_public(self, tool_path: str) -> str:
        """A path from the tool (absolute, no dot segments) as the browser must see it."""
        return _prefixed(tool_path, self.prefix)

    def location(self, value: str, hostname: str, request_path: str) -> str:
        """A ``Location`` (or any URL the tool sends the browser to), kept inside the
        studio when it points at ``hostname``. ``request_path`` is the public path
        the browser asked for (relative references resolve against it)."""
        url = _browser_form(value)
        scheme = ""
        m = _SCHEME.fullmatch(url)
        if m is not None:
            scheme, url = m.group(1).lower(), m.group(2)
            if scheme not in ("http", "https"):
                return value  # mailto:, a custom scheme...: not this host's paths
        if not url.startswith("//"):  # a path, or "http:x" (relative to a browser too)
            return self._relative(url, request_path)
        # "//host/...", "http:///host": a browser skips every slash before the host.
        rest = url.lstrip("/")
        cut = _first(rest, "/?#")
        authority, tail = rest[:cut], rest[cut:]
        host = parse_host(unquote(authority.rpartition("@")[2]))
        if host is None:
            return self.prefix  # a host we cannot read: the studio's start page
        if host != hostname:
            return value  # another site: the tool's business
        cut = _first(tail, "?#")
        path = remove_dot_segments(tail[:cut] or "/")
        start = f"{scheme}://" if scheme else "//"
        return f"{start}{authority}{self.to_public(path)}{tail[cut:]}"

    def _relative(self, reference: str, request_path: str) -> str:
        resolved = _resolve(reference, self.tool_path(request_path))
        cut = _first(resolved, "?#")
        return self.to_public(resolved[:cut]) + resolved[cut:]

    def refresh(self, value: str, hostname: str, request_path: str) -> str:
        """A ``Refresh`` header (``5; url=/next``) with its URL kept inside the studio."""
        m = _REFRESH.fullmatch(value)
        if m is None or not m.group(2).strip():
            return value
        delay, url = m.group(1) or "0", m.group(2).strip()
        if url[:1] in ("'", '"'):
            quote, url = url[0], url[1:]
            url = url.split(quote, 1)[0]
        new = self.location(url, hostname, request_path)
        return value if new == url else f"{delay}; url={new}"

    def set_cookie(self, value: str) -> str:
        return rewrite_set_cookie(value, self.prefix)

    def service_worker_allowed(self, value: str, hostname: str, request_path: str) -> str:
        """A ``Service-Worker-Allowed`` header (the widest scope a service worker of the
        script answered may take: a URL the browser resolves against the script's) kept
        inside the studio. The value is read as :meth:`location` reads a URL (a strip
        tool's paths are its own: put under the prefix first); a path under the prefix
        stays, anything else (``/``, another studio, the gateway's ``/_connect/``, a
        full URL, another host) becomes the prefix: the widest scope the studio has.
        Every studio shares the proxy host's origin in path mode, so a scope of ``/``
        would let one tool's worker answer for the gateway's login pages and every other
        studio."""
        reader = self if self.strip else _AS_IS
        url = reader.location(value, hostname, request_path)
        if url.startswith("/") and not url.startswith("//"):
            path = url[:_first(url, "?#")]
            if path.startswith(self.prefix):
                return path
        return self.prefix

    def response_headers(self, headers: Sequence[tuple[bytes, bytes]], hostname: str,
                         request_path: str) -> list[tuple[bytes, bytes]]:
        out = []
        for name, value in headers:
            lname = name.lower()
            if lname == b"location":
                value = self.location(value.decode("latin-1"), hostname,
                                      request_path).encode("latin-1")
            elif lname == b"refresh":
                value = self.refresh(value.decode("latin-1"), hostname,
                                     request_path).encode("latin-1")
            elif lname == b"set-cookie":
                value = self.set_cookie(value.decode("latin-1")).encode("latin-1")
            elif lname == b"service-worker-allowed":
                value = self.service_worker_allowed(value.decode("latin-1"), hostname,
                                                    request_path).encode("latin-1")
            elif lname in ORIGIN_POLICIES:
                continue
            out.append((name, value))
        return out


#: Response fields that set a policy for the whole origin, kept by the browser past the
#: answer and applied to every later request to the origin: in path mode that is the
#: proxy host (the gateway's login pages, every other studio), so they are dropped from
#: a tool's answers there. ``NEL`` (Network Error Logging) with ``Report-To``'s endpoint
#: groups makes the browser report the URL of each later request (``success_fraction``)
#: or failure to the tool's collector, for as long as ``max_age`` says. (A page's own
#: ``Reporting-Endpoints`` is the document's, and passes.) ``Strict-Transport-Security``
#: (with ``includeSubDomains``: every host under the proxy host's name, for a year),
#: ``Alt-Svc`` (where the browser connects for the origin) and ``Accept-CH`` (the client
#: hints the browser sends every page of the origin) are the gateway's to decide there,
#: not one tool's.
ORIGIN_POLICIES = frozenset({b"nel", b"report-to", b"strict-transport-security", b"alt-svc",
                             b"accept-ch"})

#: Reads a URL as the browser does (relative references resolved, dot segments gone)
#: and moves no path.
_AS_IS = ToolPaths("/")


def rewrite_set_cookie(value: str, prefix: str) -> str:
    """``value`` (a Set-Cookie) with a ``Path`` outside ``prefix`` moved under it."""
    parts = value.split(";")
    changed = False
    for i, attr in enumerate(parts[1:], start=1):
        name, eq, path = attr.partition("=")
        if name.strip().lower() != "path" or not eq:
            continue
        path = path.strip()
        new = _prefixed(path, prefix) if path.startswith("/") else prefix
        if new != path:
            parts[i] = f" Path={new}"
            changed = True
    return ";".join(parts) if changed else value
