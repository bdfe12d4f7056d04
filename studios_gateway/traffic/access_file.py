"""Access lines written straight to the files the process's log goes to, a batch at a time.

Logging each line as an event cost the gateway about as much CPU as proxying the
request did: the global publisher, the level filter, the event's formatting (a format
string and a timestamp per line) and a flush (one ``write`` system call) per request.
:class:`LineBuffer` instead keeps the lines of a short interval and writes them to each
:class:`TextTarget` in one ``write`` and one flush. A target is a text observer's file
(twistd's ``--logfile``, whose size rotation and SIGUSR1 rotation then apply as before,
or the standard output journald reads), and each line gets the very prefix that
observer would have written (its own formatting, asked once per second).

It is used only when every observer of the process is such a file (found by
:func:`studios_gateway.logs.observers`); otherwise the access log stays on the
per-event path. Lines wait at most :data:`INTERVAL` seconds (or until
:data:`LIMIT` characters wait), so other log lines may be written between a request's
end and its access line; each line's time is the request's end either way.

A line may also be added as its fields (:meth:`LineBuffer.add_fields`), made into text
by the buffer's ``render`` only when the batch is written: the access log's text is
then made for a whole batch in one loop, off the request's path (at one connection at
a time, each request's formatting ran with the caches cold from the other processes).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import IO, Any

from twisted.logger import FileLogObserver, Logger, LogLevel
from twisted.python.compat import ioType

__all__ = ["INTERVAL", "LIMIT", "LineBuffer", "TextTarget"]

INTERVAL = 0.1
LIMIT = 64 * 1024
#: What a line added as fields counts towards :data:`LIMIT` before it is text (an access
#: line is ~150-250 characters): at most LIMIT / FIELDS_SIZE such lines wait.
FIELDS_SIZE = 128
_MARK = "\x00access-line\x00"


class TextTarget:
    """A file a text log observer writes to, with that observer's line prefix."""

    def __init__(self, observer: FileLogObserver, out: IO[Any], namespace: str):
        self.observer = observer
        self.out = out
        self.namespace = namespace
        self._bytes = ioType(out) is not str
        self._second = -1
        self._prefix = ""

    @classmethod
    def of(cls, observer: object, namespace: str) -> TextTarget | None:
        """The target of `observer` when it is a file observer that writes each event as one
        line of text (twistd's), else None."""
        if not isinstance(observer, FileLogObserver):
            return None
        # FileLogObserver keeps its file private; tests/unit/test_access_file.py checks that
        # the installed Twisted still has it where we look.
        out = getattr(observer, "_outFile", None)
        if out is None or not callable(getattr(out, "write", None)):
            return None
        target = cls(observer, out, namespace)
        try:
            target.prefix(0)
        except ValueError:
            return None
        return target

    def prefix(self, when: float) -> str:
        """What the observer writes before the text of an info event of `namespace` logged
        at `when` (epoch seconds; the prefix is computed once per whole second)."""
        second = int(when)
        if second != self._second:
            text = self.observer.formatEvent({
                "log_time": float(second), "log_namespace": self.namespace,
                "log_level": LogLevel.info, "log_format": "{line}", "line": _MARK})
            head, mark, tail = (text or "").partition(_MARK)
            if not mark or tail != "\n" or "\n" in head:
                raise ValueError("the observer does not write one line per event")
            self._second, self._prefix = second, head
        return self._prefix

    def write(self, runs: Sequence[tuple[float, Sequence[str]]]) -> None:
        """Write `runs`: lines each logged in the second of its run's time."""
        # The prefix asked once per run, and each run's lines joined by newline + prefix
        # (not an f-string per line).
        parts: list[str] = []
        for when, lines in runs:
            head = self.prefix(when)
            parts.append(head + ("\n" + head).join(lines) + "\n")
        text = "".join(parts)
        self.out.write(text.encode("utf-8") if self._bytes else text)
        self.out.flush()


class LineBuffer:
    """Lines for `targets`, written every :data:`INTERVAL` seconds or when :data:`LIMIT`
    characters wait; after :meth:`close`, each line is written as it comes."""

    _log = Logger()

    def __init__(self, clock: Any, targets: Sequence[TextTarget],
                 render: Callable[[tuple[Any, ...]], str] | None = None):
        self.clock = clock
        self.targets = tuple(targets)
        #: What makes a line of the fields given to :meth:`add_fields`.
        self.render = render
        # The lines waiting, in runs of one second each: (a time in it, its lines, each
        # text or fields to render).
        self._runs: list[tuple[float, list[Any]]] = []
        self._run: list[Any] = []  # (the last run's lines)
        self._second = -1  # (the last run's second)
        self._size = 0
        self._call: Any = None
        self._closed = False
        self._failed = False
        self._render_failed = False

    def add(self, when: float, line: str) -> None:
        self._put(when, line, len(line))

    def add_fields(self, when: float, fields: tuple[Any, ...]) -> None:
        """:meth:`add` of ``render(fields)``, rendered when the batch is written."""
        if self.render is None:
            raise TypeError("this LineBuffer has no render for lines given as fields")
        self._put(when, fields, FIELDS_SIZE)

    def _put(self, when: float, line: Any, size: int) -> None:
        second = int(when)
        if second == self._second:
            self._run.append(line)
        else:
            self._second, self._run = second, [line]
            self._runs.append((when, self._run))
        self._size += size
        if self._closed or self._size >= LIMIT:
            self.flush()
        elif self._call is None:
            self._call = self.clock.callLater(INTERVAL, self.flush)

    def flush(self) -> None:
        if self._call is not None:
            if self._call.active():
                self._call.cancel()
            self._call = None
        runs, self._runs, self._size, self._second = self._runs, [], 0, -1
        if not runs:
            return
        runs = [(when, self._text(lines)) for when, lines in runs]
        for target in self.targets:
            try:
                target.write(runs)
            except Exception as e:  # noqa: BLE001 - a full disk must not stop the proxy
                if not self._failed:  # said once: every later batch would say it again
                    self._failed = True
                    self._log.error("cannot write the access log: {e}", e=e)

    def _text(self, lines: list[Any]) -> list[str]:
        """A run's lines as text: those added as fields rendered now. One that cannot be
        rendered is left out (said once, as a failed write is)."""
        render = self.render
        if render is None:
            return lines
        out: list[str] = []
        for line in lines:
            if type(line) is not str:
                try:
                    line = render(line)
                except Exception as e:  # noqa: BLE001 - one bad line must not lose the batch
                    if not self._render_failed:
                        self._render_failed = True
                        self._log.error("cannot write an access line: {e!r}", e=e)
                    continue
            out.append(line)
        return out

    def close(self) -> None:
        """Write what waits; lines after this (a shutdown's last requests) go out at once."""
        self._closed = True
        self.flush()
