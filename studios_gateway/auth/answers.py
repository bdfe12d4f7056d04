"""Reading an HTTP answer from a service the gateway depends on (the Platform, an
OpenID provider) with one deadline for the whole answer and a bound on its size.

treq's own timeout covers only the status and headers: a server that sends them
and then stalls the body would hold the caller (and everyone waiting on the same
call: a shared JWKS fetch, a shared access decision) for as long as it keeps
the connection open. :func:`read_answer` aborts the connection when the time
runs out, whichever part is awaited, and when the body grows past the bound;
its failures say what happened in plain words.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectError, DNSLookupError
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss

__all__ = ["MAX_ANSWER", "AnswerFailed", "quiet_pool", "read_answer"]

#: Largest answer read by default (bytes); more is an error.
MAX_ANSWER = 1024 * 1024


class AnswerFailed(Exception):
    """No usable answer; the message ("got no answer within 5s", "answered more than
    1024 KiB", ...) follows the name of the call and never holds a credential."""


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


async def _exchange(http: Any, method: str, url: str, limit: int, kwargs: Any
                    ) -> tuple[int, bytes]:
    resp = await http.request(method, url, **kwargs)
    body = _Body(limit)
    resp.deliverBody(body)
    return int(resp.code), await body.done


async def read_answer(http: Any, method: str, url: str, *, reactor: Any, within: float,
                      max_body: int = MAX_ANSWER, **kwargs: Any) -> tuple[int, bytes]:
    """``http.request(method, url, **kwargs)`` (treq) and its whole body: (status,
    body) within `within` seconds and at most `max_body` bytes, else AnswerFailed."""
    d = Deferred.fromCoroutine(_exchange(http, method, url, max_body,
                                         {**kwargs, "reactor": reactor}))
    late: list[bool] = []

    def expire() -> None:
        late.append(True)
        d.cancel()  # aborts the connection, whether headers or body are awaited

    timer = reactor.callLater(within, expire)
    try:
        return await d
    except Exception as e:  # noqa: BLE001 - every transport failure is said in words
        raise AnswerFailed(f"got no answer within {within:g}s" if late
                           else _words(e, url, max_body)) from None
    finally:
        if timer.active():
            timer.cancel()


def _words(e: Exception, url: str, max_body: int) -> str:
    if isinstance(e, _TooLarge):
        return f"answered more than {max_body // 1024} KiB"
    where = urlsplit(url)
    reasons = [r.value for r in getattr(e, "reasons", []) if isinstance(r, Failure)]
    if isinstance(e, DNSLookupError) or any(isinstance(r, DNSLookupError) for r in reasons):
        return f"failed: the host name {where.hostname} does not resolve"
    if isinstance(e, ConnectError) or any(isinstance(r, ConnectError) for r in reasons):
        return (f"failed: {where.scheme}://{where.netloc.rpartition('@')[2]} "
                "cannot be reached")
    return f"failed: the connection broke before the answer ({type(e).__name__})"


def quiet_pool(reactor: Any, *, persistent: bool = True) -> Any:
    """An HTTPConnectionPool whose connections do not log "Starting factory" and
    "Stopping factory" each (two lines per connection to the Platform or issuer)."""
    from twisted.web.client import HTTPConnectionPool

    pool = HTTPConnectionPool(reactor, persistent=persistent)

    class QuietHTTP11ClientFactory(pool._factory):  # type: ignore[name-defined]
        noisy = False

    pool._factory = QuietHTTP11ClientFactory
    return pool
