"""The facts of one finished HTTP request, WebSocket or SSH session.

The proxies fill one :class:`Finished` when an exchange ends and hand it to the
gateway's observer; nothing here holds a header, a cookie or a query string.
"""

from __future__ import annotations

from dataclasses import dataclass

HTTP = "http"
WEBSOCKET = "websocket"
SSH = "ssh"


@dataclass(slots=True)
class Finished:
    """Not frozen: one is made per request, and a frozen dataclass sets each field through
    ``object.__setattr__`` (a microsecond per request here); none is changed once handed
    on (``dataclasses.replace`` makes a new one)."""

    kind: str  # HTTP, WEBSOCKET or SSH
    started: float  # wall-clock seconds (epoch) when it began
    duration: float  # seconds
    session_id: str = ""
    tool: str = ""
    subject: str = ""  # the user, once known
    client: str = ""  # the client's address (after trusted-proxy handling)
    method: str = ""  # the HTTP method; "SSH" for SSH
    path: str = ""  # the path without its query string
    status: int | None = None  # the HTTP status sent (101 for a WebSocket); None for SSH
    bytes_in: int = 0  # from the client
    bytes_out: int = 0  # to the client
    reason: str = ""  # why it was refused or ended, when it was


def field_values(f: Finished) -> tuple[str, float, float, str, str, str, str, str, str,
                                       int | None, int, int, str]:
    """`f`'s fields in their order: what the functions that take a Finished's fields by
    position (the HTTP proxy's per-request path makes no Finished) are given for one."""
    return (f.kind, f.started, f.duration, f.session_id, f.tool, f.subject, f.client,
            f.method, f.path, f.status, f.bytes_in, f.bytes_out, f.reason)


def path_only(target: str) -> str:
    """The path of a request target, never its query string or fragment."""
    if "?" in target or "#" in target:
        return target.split("?", 1)[0].split("#", 1)[0]
    return target
