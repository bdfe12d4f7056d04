"""Whether a browser's request comes from the origin it is sent to (the Origin header).

A login cookie is ``SameSite=Lax``: a browser sends it with requests from any page of
the same *site*, and in subdomain mode every studio is a subdomain of one site
(``a.studios.example`` and ``b.studios.example``). So a page one studio serves could open
a WebSocket to another studio as the user who visits it, or post a login link of its
own to the gateway. Browsers always send ``Origin`` with a WebSocket handshake: the
gateway refuses those whose origin is not the host they are sent to. A form's post is
judged by ``Sec-Fetch-Site`` first (:func:`posted_from_elsewhere`). A request without
either header (a command-line client) is not a browser's cross-site request and passes.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from studios_gateway.http.routing import parse_host
from studios_gateway.shown import shown

__all__ = ["cross_origin", "posted_from_elsewhere"]

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


def posted_from_elsewhere(fetch_site: bytes | None, origin: bytes | None,
                          host: str) -> str | None:
    """Why a form's post (its ``Sec-Fetch-Site`` and ``Origin`` headers, to the Host
    `host`) comes from a page that is not the gateway's own (login CSRF), or None. A
    browser says where a request comes from in ``Sec-Fetch-Site``, which no page can set;
    only one that does not send it is judged by ``Origin`` (:func:`cross_origin`). Not
    Origin first: the gateway's pages say ``Referrer-Policy: no-referrer``, under which a
    browser posts a form with ``Origin: null`` even to the same origin."""
    if fetch_site is not None:
        if fetch_site.strip().lower() in (b"same-origin", b"none"):
            return None
        return f"a post from another site (Sec-Fetch-Site: {shown(fetch_site, 20)})"
    return cross_origin(origin, host)
