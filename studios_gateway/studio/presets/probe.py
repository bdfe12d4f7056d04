"""Readiness: ask the tool for one page until it answers as a started tool does.

"Port open" is not enough (JupyterLab accepts before its API answers,
code-server before its workbench is served), so each preset names a path and
the statuses that mean ready; the probe asks on the tool's loopback port every
PROBE_INTERVAL seconds until one comes back.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

PROBE_INTERVAL = 0.5
PROBE_TIMEOUT = 5.0  # one request
SLOW_NOTICE = 30.0  # log once when the tool takes longer than this

Fetch = Callable[[str], "Deferred[int]"]


class _StatusLine(Protocol):
    """Sends one GET and reads the status line; the rest of the answer is not needed."""

    transport: Any

    def __init__(self, request: bytes, done: Deferred[int]):
        self._request, self._done, self._buf = request, done, b""
        self.transport = None

    def connectionMade(self) -> None:
        self.transport.write(self._request)

    def dataReceived(self, data: bytes) -> None:
        self._buf += data
        line, nl, _ = self._buf.partition(b"\r\n")
        if not nl and len(self._buf) < 1024:
            return
        parts = line.split(b" ", 2)
        if not self._done.called:
            if len(parts) >= 2 and parts[0].startswith(b"HTTP/") and parts[1].isdigit():
                self._done.callback(int(parts[1]))
            else:
                self._done.errback(ValueError(f"not an HTTP answer: {line[:80]!r}"))
        self.transport.abortConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if not self._done.called:
            self._done.errback(reason)


def http_status(reactor: Any, host: str | None = None,
                headers: tuple[tuple[str, str], ...] = ()) -> Fetch:
    """GET a loopback URL over HTTP/1.0 and fire with the status (quietly: no factory logs).
    `host`: the Host header to send (default: the URL's); `headers`: more lines to send."""

    def fetch(url: str) -> Deferred[int]:
        parts = urlsplit(url)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        more = "".join(f"{name}: {value}\r\n" for name, value in headers)
        request = (f"GET {path} HTTP/1.0\r\nHost: {host or parts.netloc}\r\n{more}"
                   f"User-Agent: studios-connect-probe\r\n\r\n").encode()
        made: list[_StatusLine] = []
        connecting: list[Deferred[Any]] = []

        def cancelled(_: Deferred[int]) -> None:
            # A caller that gave up (a tool that accepts and never answers): the
            # connection goes too, rather than stay open until the tool closes it.
            for attempt in connecting:
                attempt.cancel()
            for protocol in made:
                if protocol.transport is not None:
                    protocol.transport.abortConnection()

        done: Deferred[int] = Deferred(cancelled)

        def build() -> _StatusLine:
            made.append(_StatusLine(request, done))
            return made[-1]

        endpoint = TCP4ClientEndpoint(reactor, parts.hostname or "127.0.0.1",
                                      parts.port or 80, timeout=PROBE_TIMEOUT)
        factory = Factory.forProtocol(build)
        factory.noisy = False
        def refused(f: Failure) -> None:
            if not done.called:
                done.errback(f)

        attempt = endpoint.connect(factory)
        connecting.append(attempt)
        attempt.addCallback(lambda p: connecting.clear()).addErrback(refused)
        return done

    return fetch


class Readiness:
    """Polls ``http://127.0.0.1:<port><path>``; ``ready`` fires once an ok status comes."""

    _log = Logger()

    def __init__(self, clock: Any, port: int, path: str, ok: tuple[int, ...], fetch: Fetch,
                 title: str = "the tool"):
        self.clock, self.url, self.ok, self.fetch = clock, f"http://127.0.0.1:{port}{path}", \
            ok, fetch
        self.title = title
        self.ready: Deferred[None] = Deferred()
        self.last = "no answer yet"
        self._started = 0.0
        self._noticed = False
        self._call: Any = None
        self._stopped = False

    def start(self) -> Deferred[None]:
        self._started = self.clock.seconds()
        self._attempt()
        return self.ready

    def stop(self) -> None:
        self._stopped = True
        if self._call is not None and self._call.active():
            self._call.cancel()

    def _attempt(self) -> None:
        if self._stopped:
            return
        d = self.fetch(self.url)
        timeout = self.clock.callLater(PROBE_TIMEOUT, d.cancel)

        def answered(status: int) -> None:
            if status in self.ok:
                self._log.info("{title} is ready ({url} answered {status} after {secs:.1f}s)",
                               title=self.title, url=self.url, status=status,
                               secs=self.clock.seconds() - self._started)
                self.ready.callback(None)
                return
            self.last = f"status {status}"
            self._again()

        def failed(f: Any) -> None:
            self.last = f.getErrorMessage()
            self._again()

        def done(result: Any) -> Any:
            if timeout.active():
                timeout.cancel()
            return result

        d.addBoth(done).addCallbacks(answered, failed)

    def _again(self) -> None:
        waited = self.clock.seconds() - self._started
        if not self._noticed and waited >= SLOW_NOTICE:
            self._noticed = True
            self._log.warn("{title} is not ready after {secs:.0f}s ({url}: {last}); still "
                           "waiting", title=self.title, secs=waited, url=self.url,
                           last=self.last)
        if not self._stopped:
            self._call = self.clock.callLater(PROBE_INTERVAL, self._attempt)
