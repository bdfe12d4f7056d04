"""One way to reach a studio: a stream to its tool or SSH server, wherever its tunnel is.

The HTTP proxy and the SSH proxy both ask the dialer, never the tunnel table
directly: a session whose tunnel this node holds gets a local yamux stream;
one held by another node goes through ``remote`` (the peer link, when
clustering is configured); otherwise the studio is not connected.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred

from studios_gateway.wire.mux import TunnelUnavailable


class StudioUnreachable(Exception):
    """No tunnel for this session on this node or any peer we know."""

    def __init__(self, session_id: str, why: str = "not connected"):
        super().__init__(f"studio {session_id}: {why}")
        self.session_id = session_id
        self.why = why


RemoteDial = Callable[[str, bytes], Deferred[Any]]


class Dialer:
    def __init__(self, table: Any, remote: RemoteDial | None = None):
        self.table = table
        self.remote = remote

    def is_local(self, session_id: str) -> bool:
        return self.table.get(session_id) is not None

    def dial(self, session_id: str, kind: bytes) -> Deferred[Any]:
        """A Deferred firing with a stream (an ITransport-like object you attach a
        protocol to), or failing with StudioUnreachable."""
        try:
            stream = self.table.open_stream(session_id, kind)
        except TunnelUnavailable as e:  # draining or closing: try elsewhere
            stream = None
            why = str(e) or "tunnel closing"
        else:
            why = "not connected"
        if stream is not None:
            return defer.succeed(stream)
        if self.remote is not None:
            return self.remote(session_id, kind)
        return defer.fail(StudioUnreachable(session_id, why))
