"""Per-studio figures on this node: requests, bytes, open connections.

Kept in a dict by session id (not in Prometheus labels, whose series would grow with
every session ever seen); a session's entry goes when the session ends, and the
least recently active entries go beyond `limit`. An entry is made for a session that
was found (Traffic.http: a request that reached its tool; a WebSocket or SSH session
opened), never for an id a request merely named.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["SessionFigures", "Usage"]


@dataclass(slots=True)
class SessionFigures:
    requests: int = 0
    websockets: int = 0  # opened
    ssh_sessions: int = 0  # logged in
    bytes_in: int = 0
    bytes_out: int = 0
    open_websockets: int = 0
    open_ssh: int = 0
    last_active: float = 0.0

    @property
    def open_connections(self) -> int:
        return self.open_websockets + self.open_ssh

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "open_connections": self.open_connections}


class Usage:
    def __init__(self, limit: int = 100_000):
        self.limit = limit
        self._by_session: OrderedDict[str, SessionFigures] = OrderedDict()
        # The session of the last `of` and its figures: already the most recent entry when
        # the next request is the same session's (the usual keep-alive case), so neither
        # looked up nor moved again.
        self._last_id = ""
        self._last: SessionFigures | None = None

    def of(self, session_id: str, now: float) -> SessionFigures:
        figures = self._last
        if figures is None or session_id != self._last_id:
            figures = self._by_session.get(session_id)
            if figures is None:
                figures = self._by_session[session_id] = SessionFigures()
                self._trim()
            else:
                self._by_session.move_to_end(session_id)
            if session_id in self._by_session:  # (_trim may have let it go at once)
                self._last_id, self._last = session_id, figures
        figures.last_active = now
        return figures

    def get(self, session_id: str) -> SessionFigures | None:
        return self._by_session.get(session_id)

    def forget(self, session_id: str) -> None:
        self._by_session.pop(session_id, None)
        if session_id == self._last_id:
            self._last = None

    def active_studios(self) -> int:
        return sum(1 for f in self._by_session.values() if f.open_connections)

    def _trim(self) -> None:
        while len(self._by_session) > self.limit:
            for sid, figures in self._by_session.items():
                if not figures.open_connections:
                    del self._by_session[sid]
                    if sid == self._last_id:
                        self._last = None
                    break
            else:
                return
