"""Path mode: keep a tool's redirects and cookies under its ``/_studio/<id>/`` prefix.

Tools are started with their prefix and mostly honour it; these rewrites catch
the ones that do not: a ``Location`` that points at this host outside the
prefix, and a ``Set-Cookie`` whose ``Path`` would let the cookie reach other
studios on the same host.
"""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import urlsplit, urlunsplit

from studios_gateway.http.routing import parse_host

__all__ = ["rewrite_location", "rewrite_response_headers", "rewrite_set_cookie", "under_prefix"]


def under_prefix(path: str, prefix: str) -> bool:
    return path.startswith(prefix) or path == prefix.rstrip("/")


def _prefixed(path: str, prefix: str) -> str:
    if under_prefix(path, prefix):
        return path
    return prefix.rstrip("/") + path


def rewrite_location(value: str, prefix: str, hostname: str) -> str:
    """``value`` (a Location) kept under ``prefix`` if it points at ``hostname``."""
    if value.startswith("/") and not value.startswith("//"):
        return _prefixed(value, prefix)
    try:
        parts = urlsplit(value)
    except ValueError:
        return value
    if value.startswith("//") or parts.scheme.lower() in ("http", "https"):
        if parse_host(parts.netloc) != hostname:
            return value
        return urlunsplit(parts._replace(path=_prefixed(parts.path or "/", prefix)))
    return value  # relative to the request's path, which is under the prefix


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


def rewrite_response_headers(headers: Sequence[tuple[bytes, bytes]], prefix: str,
                             hostname: str) -> list[tuple[bytes, bytes]]:
    out = []
    for name, value in headers:
        lname = name.lower()
        if lname == b"location":
            value = rewrite_location(value.decode("latin-1"), prefix, hostname).encode("latin-1")
        elif lname == b"set-cookie":
            value = rewrite_set_cookie(value.decode("latin-1"), prefix).encode("latin-1")
        out.append((name, value))
    return out
