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
from urllib.parse import SplitResult, urlsplit

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectError, DNSLookupError
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss

__all__ = ["MAX_BODY", "PlatformCallFailed", "PlatformHTTP"]

#: Largest answer read (bytes); more is an error.
MAX_BODY = 1024 * 1024


class PlatformCallFailed(Exception):
    """A call to the Platform got no usable answer; the message says why in plain
    words (never a credential), fit for the log and for the user."""


class _TooLarge(Exception):
    pass


class _Body(Protocol):
    """Collects a response's body up to `limit` bytes; more aborts the connection."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._size = 0
        self._chunks: list[bytes] = []
        self.done: Deferred[bytes] = Deferred(lambda _: self._abort())

    def _abort(self) -> None:
        # The response's transport is a producer: stopping it aborts the connection.
        stop = getattr(self.transport, "stopProducing", None)
        if stop is not None:
            stop()

    def dataReceived(self, data: bytes) -> None:
        if self.done.called:
            return
        self._size += len(data)
        if self._size > self._limit:
            self._abort()
            self.done.errback(_TooLarge())
            return
        self._chunks.append(data)

    def connectionLost(self, reason: Failure = Failure(ResponseDone())) -> None:  # noqa: B008
        if self.done.called:
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback(b"".join(self._chunks))
        else:
            self.done.errback(reason)


class PlatformHTTP:
    def __init__(self, platform_url: str, credentials: Callable[[], tuple[str, str] | None], *,
                 reactor: Any, http: Any = None, timeout: float = 5.0,
                 max_body: int = MAX_BODY):
        self._base = platform_url.rstrip("/")
        self._credentials = credentials
        self._reactor = reactor
        self._timeout = timeout
        self._max_body = max_body
        self._pool: Any = None
        if http is None:
            from treq.client import HTTPClient
            from twisted.web.client import Agent, HTTPConnectionPool

            self._pool = HTTPConnectionPool(reactor)
            self._pool._factory.noisy = False  # no "Starting factory" line per connection
            http = HTTPClient(Agent(reactor, pool=self._pool))
        self._http = http

    def stop(self) -> Deferred[None] | None:
        """Close kept-alive connections to the Platform."""
        return self._pool.closeCachedConnections() if self._pool is not None else None

    def _get(self, url: str) -> Deferred[Any]:
        """GET ``url`` with the credentials; fires with the treq response (headers only)."""
        from studios_gateway.auth.oidc import basic_auth

        creds = self._credentials()
        headers = {"Accept": ["application/json"]}
        if creds is not None:
            headers["Authorization"] = [basic_auth(*creds)]
        return self._http.request("GET", url, headers=headers, reactor=self._reactor)

    async def _exchange(self, url: str) -> tuple[int, bytes]:
        resp = await self._get(url)
        body = _Body(self._max_body)
        resp.deliverBody(body)
        return int(resp.code), await body.done

    async def fetch(self, url: str, what: str) -> tuple[int, bytes]:
        """GET ``url``: (status, body), the whole answer within the timeout and at most
        ``max_body`` bytes; else :class:`PlatformCallFailed` saying, in `what`'s name
        ("the Platform's access call"), what went wrong."""
        d = Deferred.fromCoroutine(self._exchange(url))
        late: list[bool] = []

        def expire() -> None:
            late.append(True)
            d.cancel()  # aborts the connection, whether headers or body are awaited

        timer = self._reactor.callLater(self._timeout, expire)
        try:
            return await d
        except Exception as e:  # noqa: BLE001 - every transport failure is said in words
            words = (f"got no answer within {self._timeout:g}s" if late
                     else self._failure_words(e))
            raise PlatformCallFailed(f"{what} {words}") from None
        finally:
            if timer.active():
                timer.cancel()

    def _failure_words(self, e: Exception) -> str:
        if isinstance(e, _TooLarge):
            return f"answered more than {self._max_body // 1024} KiB"
        reasons = [r.value for r in getattr(e, "reasons", []) if isinstance(r, Failure)]
        if isinstance(e, DNSLookupError) or any(isinstance(r, DNSLookupError) for r in reasons):
            return f"failed: the Platform's host name {self._where().hostname} does not resolve"
        if isinstance(e, ConnectError) or any(isinstance(r, ConnectError) for r in reasons):
            where = self._where()
            return (f"failed: the Platform at {where.scheme}://{where.netloc.rpartition('@')[2]} "
                    "cannot be reached")
        return f"failed: the connection broke before the answer ({type(e).__name__})"

    def _where(self) -> SplitResult:
        return urlsplit(self._base)
