"""Whether a browser's request comes from the origin it is sent to (the Origin header).

A login cookie is ``SameSite=Lax``: a browser sends it with requests from any page of
the same *site*, and in subdomain mode every studio is a subdomain of one site
(``a.studios.example`` and ``b.studios.example``). So a page one studio serves could open
a WebSocket to another studio as the user who visits it, or post a login link of its
own to the gateway. Browsers always send ``Origin`` with a WebSocket handshake and
with a cross-origin POST; the gateway refuses those whose origin is not the host they
are sent to. A request without ``Origin`` (a command-line client, a same-origin GET) is
not a browser's cross-origin request and passes.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from studios_gateway.http.routing import parse_host
from studios_gateway.shown import shown

__all__ = ["cross_origin"]

_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}
# An Origin header longer than this is not a browser's (scheme, host and port only).
_LONGEST = 1024


def cross_origin(origin: bytes | None, host: str) -> str | None:
    """Why a request with the header ``Origin: origin`` to the Host header `host` comes
    from another origin (a reason for the refusal), or None when it does not: no Origin,
    or the same host name and port. The Host's port, when it has none, is the default of
    the origin's scheme (a TLS terminator before the gateway makes the browser's scheme
    unknown here)."""
    if origin is None:
        return None
    if len(origin) > _LONGEST:
        return "an Origin header too long to be a browser's"
    text = origin.decode("latin-1").strip()
    if text == "null":
        return "Origin: null (a sandboxed frame, a file, a redirect across sites)"
    try:
        parts = urlsplit(text)
        origin_port = parts.port
    except ValueError:
        return "a malformed Origin header"
    default = _DEFAULT_PORTS.get(parts.scheme.lower())
    if default is None or not parts.hostname or parts.path or parts.query \
            or parts.username is not None:
        return "a malformed Origin header"
    name = parse_host(host)  # (lower case, no port, no trailing dot; validated)
    if name is None:
        return "a malformed Host header"
    port_text = host[host.find("]") + 1:] if host.startswith("[") else host.partition(":")[2]
    port_text = port_text.lstrip(":")
    host_port = int(port_text) if port_text.isdigit() else default
    if name.startswith("["):
        name = name[1:-1]
    if parts.hostname.rstrip(".") != name or (origin_port or default) != host_port:
        return f"a request from another origin ({shown(text, 200)})"
    return None
