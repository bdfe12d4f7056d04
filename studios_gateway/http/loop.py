"""A studio whose tool port is the gateway's own HTTP port: its requests come back.

On one machine it is an easy mistake: the gateway listens on 8080 and the studio is
started with ``studios-connect --tool-port 8080``. Every request the gateway sends
the tool then arrives at the gateway again, without the login's cookies (they never
reach a tool), and is answered with the login's redirect: the browser goes round the
login for ever.

So every request the gateway sends a tool carries :data:`SESSION_HEADER` with the
session's id (a client's copy is dropped first, as ``X-Connect-Sub``'s). A request
that arrives with it for the very studio it routes to, or for no studio at all (in
path mode a tool that is sent its paths without the prefix asks the gateway's own
``/``), came back: the gateway answers :func:`page` instead of the login's redirect
or its own page, and says :func:`log_line`'s words. The header reaches the tool too:
the session it serves, for a tool that wants to know. studios-connect asks its tool's
port the same at the bind, and stops when the gateway answers
(:mod:`studios_gateway.studio.points_back`).
"""

from __future__ import annotations

from collections.abc import Sequence

from studios_gateway.http import pages
from studios_gateway.http.headers import SESSION_HEADER
from studios_gateway.wire.ids import is_session_id

__all__ = ["LOOP_STATUS", "SESSION_HEADER", "came_back", "log_line", "page"]

_NAME = SESSION_HEADER.lower()
#: RFC 5842's Loop Detected.
LOOP_STATUS = 508


def came_back(headers: Sequence[tuple[bytes, bytes]], routed_to: str | None) -> str | None:
    """The session whose tool sent this request back to the gateway, or None. `routed_to`
    is the studio the request routes to (None: the gateway's own routes). A header naming
    another studio is left alone: a tool may pass a request on to another studio."""
    for name, value in headers:
        if name.lower() == _NAME:
            session_id = value.decode("latin-1")
            if is_session_id(session_id) and routed_to in (None, session_id):
                return session_id
    return None


def page(session_id: str) -> pages.Page:
    return pages.page(
        LOOP_STATUS, "The studio points back at the gateway",
        "The studio is connected, but the port it gives for its application is this "
        "gateway's own port: the gateway's requests to the application come back to the "
        "gateway. Whoever runs the studio must start studios-connect with the port the "
        "application listens on (--tool-port, or CONNECT_TOOL_PORT).",
        session_id=session_id)


def log_line(session_id: str, port: int | str) -> str:
    """For the gateway's log (a warning): which studio, what is wrong, what to change."""
    return (f"session {session_id}: a request to its tool came back to this gateway's "
            f"HTTP port {port}: the studio's tool port is this gateway's own port "
            "(studios-connect --tool-port or CONNECT_TOOL_PORT); answered "
            f"{LOOP_STATUS}. In the studio, give studios-connect the port the tool listens on")
