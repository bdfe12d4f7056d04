"""A studio whose tool port is the gateway's own HTTP port: its requests come back.

On one machine it is an easy mistake: the gateway listens on 8080 and the studio is
started with ``studios-connect --tool-port 8080``. Every request the gateway sends
the tool then arrives at the gateway again, without the login's cookies (they never
reach a tool), and is answered with the login's redirect: the browser goes round the
login for ever.

So every request the gateway sends a tool carries :data:`SESSION_HEADER` with the
session's id and :data:`MARK_HEADER` with that session's mark (:class:`Marks`: a MAC of
the id under a key derived from the login's signing key, which every process of a
deployment shares); a client's copies of both are dropped first, as ``X-Connect-Sub``'s.
A request that arrives with a mark that proves its id, for the very studio it routes to
or for no studio at all (in path mode a tool that is sent its paths without the prefix
asks the gateway's own ``/``), came back: the gateway answers :func:`page` instead of
the login's redirect or its own page, and says :func:`log_line`'s words. An id without
its mark (anyone may send one: ids are short, and seen in addresses) is no loop. The
session header reaches the tool too: the session it serves, for a tool that wants to
know. studios-connect asks its tool's port the same at the bind, with the mark the
bind's reply gives it, and stops when the gateway answers
(:mod:`studios_gateway.studio.points_back`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from collections.abc import Sequence

from studios_gateway.http import pages
from studios_gateway.http.headers import MARK_HEADER, SESSION_HEADER
from studios_gateway.wire.ids import is_session_id

__all__ = ["LOOP_STATUS", "MARK_HEADER", "SESSION_HEADER", "Marks", "came_back", "log_line",
           "page"]

_NAME, _MARK = SESSION_HEADER.lower(), MARK_HEADER.lower()
#: RFC 5842's Loop Detected.
LOOP_STATUS = 508
#: What the marks' key is derived from the signing key with (the marks tell nothing of it).
_PURPOSE = b"studios-gateway: the mark of a request sent to a tool"


class Marks:
    """A session's mark: the first 16 bytes of HMAC-SHA256(key, session id), base64url.
    `signing_key`: the login's (auth-signing.key, shared by the processes and nodes of a
    deployment, so a request one of them sent is known by whichever it comes back to);
    None: a key of this process alone. A tool sees its own session's mark, which proves
    nothing of another session."""

    #: Marks kept for the request path (one HMAC per session, not per request).
    KEEP = 10_000

    def __init__(self, signing_key: bytes | None = None):
        self._key = hmac.new(signing_key if signing_key is not None else os.urandom(32),
                             _PURPOSE, hashlib.sha256).digest()
        self._kept: dict[str, bytes] = {}

    def _make(self, session_id: str) -> bytes:
        mac = hmac.new(self._key, session_id.encode(), hashlib.sha256).digest()[:16]
        return base64.urlsafe_b64encode(mac).rstrip(b"=")

    def of(self, session_id: str) -> bytes:
        """`session_id`'s mark (a session id is ASCII: wire.ids)."""
        mark = self._kept.get(session_id)
        if mark is None:
            if len(self._kept) >= self.KEEP:
                self._kept.clear()
            mark = self._kept[session_id] = self._make(session_id)
        return mark

    def proves(self, session_id: str, mark: bytes) -> bool:
        """Whether `mark` is `session_id`'s (compared in constant time; nothing kept, as
        the ids come from anyone)."""
        return hmac.compare_digest(self._make(session_id), mark)


def came_back(headers: Sequence[tuple[bytes, bytes]], routed_to: str | None,
              marks: Marks) -> str | None:
    """The session whose tool sent this request back to the gateway, or None. `routed_to`
    is the studio the request routes to (None: the gateway's own routes). A header naming
    another studio is left alone: a tool may pass a request on to another studio. An id
    without the mark that proves it is no loop: anyone can send one."""
    session_id, mark = None, None
    for name, value in headers:
        lower = name.lower()
        if lower == _NAME:
            session_id = value.decode("latin-1")
        elif lower == _MARK:
            mark = value
    if (session_id is None or mark is None or not is_session_id(session_id)
            or routed_to not in (None, session_id)):
        return None
    return session_id if marks.proves(session_id, mark) else None


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
