"""The access log: one line per finished exchange, text or JSON, in the process's log.

Lines are info events of the namespace :data:`NAMESPACE`, written whatever
``CONNECT_LOG_LEVEL`` says (:func:`studios_gateway.logs.always`). Once started, when
the process logs only to text files (twistd's log file or standard output, the usual
case), the lines go straight to those files a batch at a time, each with the prefix
the log would have given it (:mod:`studios_gateway.traffic.access_file`); otherwise
each line is an event through twisted.logger, so every observer gets it.

Only the fields of :class:`~studios_gateway.traffic.facts.Finished` are written:
no header, cookie, token or query string is ever in the facts.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

from twisted.logger import Logger, LogPublisher, globalLogPublisher

from studios_gateway import logs
from studios_gateway.traffic.access_file import LineBuffer, TextTarget
from studios_gateway.traffic.facts import Finished, field_values

__all__ = ["NAMESPACE", "AccessLog", "json_line", "text_fields", "text_line"]

NAMESPACE = "studios_gateway.access"
_UNSAFE = re.compile(r'[\x00-\x20"\\\x7f-\U0010ffff]')
_UNSAFE_QUOTED = re.compile(r'[\x00-\x1f"\\\x7f-\U0010ffff]')


def _escape(text: str, unsafe: re.Pattern[str]) -> str:
    return unsafe.sub(lambda m: "".join(f"\\x{b:02x}" for b in m.group().encode()), text)


# _quote's answers for the texts seen before (the same client, user, session, tool,
# method and path come back request after request). Bounded: once full, other texts
# are worked out each time.
_QUOTED: dict[str, str] = {}
_QUOTED_MAX = 1024


def _quote(text: str) -> str:
    """A field for the text line: printable ASCII without spaces or quotes (others are
    written as \\xNN), "-" when empty."""
    quoted = _QUOTED.get(text)
    if quoted is None:
        if not text:
            quoted = "-"
        else:
            quoted = text if _UNSAFE.search(text) is None else _escape(text, _UNSAFE)
        if len(_QUOTED) < _QUOTED_MAX:
            _QUOTED[text] = quoted
    return quoted


_last_clf: tuple[int, str] = (-1, "")


def _clf_time(started: float) -> str:
    """The common log format's time (UTC), formatted once per second."""
    global _last_clf
    second = int(started)
    if _last_clf[0] != second:
        _last_clf = (second, time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(second)))
    return _last_clf[1]


def text_fields(kind: str, started: float, duration: float, session_id: str, tool: str,
                subject: str, client: str, method: str, path: str, status: int | None,
                bytes_in: int, bytes_out: int, reason: str, node: str) -> str:
    """:func:`text_line` of the fields of a :class:`Finished`, given in its order (the HTTP
    proxy's per-request path makes no Finished)."""
    # _quote's remembered answers asked directly (each is a non-empty text); _quote
    # works out the others.
    q = _QUOTED.get
    clf = _last_clf  # this second's time as is, else _clf_time's
    when = clf[1] if clf[0] == int(started) else _clf_time(started)
    line = (f"{q(client) or _quote(client)} - {q(subject) or _quote(subject)} [{when}] "
            f"\"{q(method) or _quote(method)} {q(path) or _quote(path)}\" "
            f"{'-' if status is None else status} {bytes_out} "
            f"in={bytes_in} out={bytes_out} duration={duration:.3f} kind={kind} "
            f"session={q(session_id) or _quote(session_id)} "
            f"tool={q(tool) or _quote(tool)} node={q(node) or _quote(node)}")
    if reason:
        line += f' reason="{_escape(reason, _UNSAFE_QUOTED)}"'
    return line


def text_line(f: Finished, node: str) -> str:
    """A combined-log-like line: client, user, time, request, status, bytes, then
    key=value fields."""
    return text_fields(*field_values(f), node)


def json_line(f: Finished, node: str) -> str:
    record: dict[str, Any] = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(f.started))
        + f".{int(f.started % 1 * 1000):03d}Z",
        "node": node, "kind": f.kind, "session": f.session_id, "tool": f.tool,
        "user": f.subject, "client": f.client, "method": f.method, "path": f.path,
        "status": f.status, "bytes_in": f.bytes_in, "bytes_out": f.bytes_out,
        "duration": round(f.duration, 6)}
    if f.reason:
        record["reason"] = f.reason
    return json.dumps(record, separators=(",", ":"), ensure_ascii=True)


class AccessLog:
    """Writes finished exchanges as `mode` ("off", "text" or "json") lines."""

    def __init__(self, mode: str, node: str, logger: Logger | None = None):
        self.mode = mode
        self.node = node
        # An instance attribute: a Logger on the class would name its events after the class.
        self._log = logger if logger is not None else Logger(namespace=NAMESPACE)
        self._buffer: LineBuffer | None = None

    @property
    def buffered(self) -> bool:
        """Lines go straight to the log's files (see :meth:`start`)."""
        return self._buffer is not None

    def start(self, clock: Any, publisher: LogPublisher = globalLogPublisher) -> None:
        """Write lines straight to the log's files from now on, when every observer of
        `publisher` is a text file's (else each line stays an event)."""
        if self.mode == "off" or self._buffer is not None:
            return
        found = logs.observers(publisher)
        targets = [TextTarget.of(obs, NAMESPACE) for obs in found or ()]
        if targets and all(t is not None for t in targets):
            self._buffer = LineBuffer(clock, [t for t in targets if t is not None],
                                      self._render)

    def _render(self, fields: tuple[Any, ...]) -> str:
        """The line of a :class:`Finished`'s fields (in its order), in this log's mode."""
        if self.mode == "json":
            return json_line(Finished(*fields), self.node)
        args = (*fields, self.node)  # (text_fields takes the node last)
        return text_fields(*args)

    def stop(self) -> None:
        """Write the lines that wait; later ones (a shutdown's) go out one by one."""
        if self._buffer is not None:
            self._buffer.close()

    def __call__(self, f: Finished) -> None:
        self.fields(*field_values(f))

    def fields(self, kind: str, started: float, duration: float, session_id: str, tool: str,
               subject: str, client: str, method: str, path: str, status: int | None,
               bytes_in: int, bytes_out: int, reason: str) -> None:
        """Like calling it with a :class:`Finished` of these fields (in its order)."""
        fields = (kind, started, duration, session_id, tool, subject, client, method, path,
                  status, bytes_in, bytes_out, reason)
        buffer = self._buffer
        if buffer is not None:  # the line made when its batch is written (_render)
            buffer.add_fields(started + duration, fields)
        elif self.mode in ("text", "json"):
            self._log.info("{access_line}", access_line=self._render(fields))
