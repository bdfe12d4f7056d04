"""The gateway's HTTP client for calls to the Platform (access, SSH keys).

One place for what every such call shares: the base URL, the gateway's
client credentials as HTTP Basic, ``Accept: application/json``, one deadline
for the whole call (the answer's body included: a Platform that sends its
headers and then stalls fails in time, too), a bound on the answer's size,
failures told in plain words, and a pool of kept-alive connections closed on
stop.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from studios_gateway.auth.answers import MAX_ANSWER, AnswerFailed, quiet_pool, read_answer
from studios_gateway.repeats import Repeats

__all__ = ["MAX_BODY", "PlatformCallFailed", "PlatformHTTP"]

#: Largest answer read (bytes); more is an error.
MAX_BODY = MAX_ANSWER


class PlatformCallFailed(Exception):
    """A call to the Platform got no usable answer; the message says why in plain
    words (never a credential), fit for the log and for the user."""


#: After a failure is logged, further failures of the same call are counted for this
#: long (seconds) and told in the next line, not one line each: while the Platform is
#: down every user and every open connection's re-check would fail, each on its own.
QUIET = 60.0
#: Kinds of failure remembered for that (the oldest are forgotten beyond it).
MAX_KINDS = 64


class PlatformHTTP:
    _log = Logger()
    #: What the log calls these calls ("the Platform's access calls").
    call_name = "the Platform's calls"
    #: The `call` label of studios_gateway_platform_calls_total.
    metric_label = "other"

    def __init__(self, platform_url: str, credentials: Callable[[], tuple[str, str] | None], *,
                 reactor: Any, http: Any = None, timeout: float = 5.0,
                 max_body: int = MAX_BODY, clock: IReactorTime | None = None):
        self._clock: IReactorTime = clock if clock is not None else reactor
        #: Per kind of failure ("answered HTTP 500"): said once per QUIET seconds.
        self._repeats = Repeats(self._clock, QUIET, MAX_KINDS)
        self._failing_since: float | None = None
        self._failures = 0
        #: on_call(call, ok): told of every call's outcome (the metrics).
        self.on_call: Callable[[str, bool], Any] = lambda call, ok: None
        self._base = platform_url.rstrip("/")
        self._credentials = credentials
        self._reactor = reactor
        self._timeout = timeout
        self._max_body = max_body
        self._pool: Any = None
        if http is None:
            from treq.client import HTTPClient
            from twisted.web.client import Agent

            self._pool = quiet_pool(reactor)
            http = HTTPClient(Agent(reactor, pool=self._pool))
        self._http = http

    def failed(self, why: str, kind: str | None = None) -> None:
        """Log a failed call: the first of its `kind` (what went wrong, without whose
        call it was; default `why`) at once, then at most one line of that kind per
        QUIET seconds, counting the others. A new kind is logged at once."""
        self.on_call(self.metric_label, False)
        now = self._clock.seconds()
        self._failures += 1
        if self._failing_since is None:
            self._failing_since = now
        unsaid = self._repeats.due(why if kind is None else kind)
        if unsaid is not None:
            self._log.warn("{why}{more}", why=why, more=self._repeats.more(unsaid))

    def answered(self) -> None:
        """A call got a usable answer: after failures, say once that it works again."""
        self.on_call(self.metric_label, True)
        if self._failing_since is None:
            return
        took = self._clock.seconds() - self._failing_since
        self._log.info("{call} answer again ({n} failed in the last {took:.0f}s)",
                       call=self.call_name, n=self._failures, took=took)
        self._failing_since = None
        self._failures = 0
        self._repeats.clear()

    def stop(self) -> Deferred[None] | None:
        """Close kept-alive connections to the Platform."""
        return self._pool.closeCachedConnections() if self._pool is not None else None

    async def fetch(self, url: str, what: str) -> tuple[int, bytes]:
        """GET ``url``: (status, body), the whole answer within the timeout and at most
        ``max_body`` bytes; else :class:`PlatformCallFailed` saying, in `what`'s name
        ("the Platform's access call"), what went wrong."""
        from studios_gateway.auth.oidc import basic_auth

        creds = self._credentials()
        headers = {"Accept": ["application/json"]}
        if creds is not None:
            headers["Authorization"] = [basic_auth(*creds)]
        try:
            return await read_answer(self._http, "GET", url, headers=headers,
                                     reactor=self._reactor, within=self._timeout,
                                     max_body=self._max_body)
        except AnswerFailed as e:
            raise PlatformCallFailed(f"{what} {e}") from None
