"""h1.ResponseReader keeps its llhttp parser from one kept-alive response to the next: it
reads every response as a fresh reader would (hypothesis: the same events, the same
verdict), and makes a new parser after anything that leaves llhttp inside a message."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from studios_gateway.http.h1 import BodyError, ResponseHead, ResponseReader
from tests.support.examples import examples

MAX_HEAD = 4096

# (method, response): well-formed answers with every framing, and some that end a
# connection's reuse (a HEAD's stop after the head, a 101, bytes after the response,
# Connection: close, a malformed body).
_EXCHANGES = st.sampled_from([
    (b"GET", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"),
    (b"GET", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"),
    (b"GET", b"HTTP/1.1 204 No Content\r\nX-A: b\r\n\r\n"),
    (b"GET", b"HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\n\r\n"),
    (b"POST", b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok"),
    (b"GET", b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: keep-alive\r\n\r\n"),
    (b"HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"),
    (b"GET", b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\nframes"),
    (b"GET", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA"),
    (b"GET", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"),
    (b"GET", b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok"),
    (b"GET", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"),
])


def _read(reader: ResponseReader, method: bytes, response: bytes, cuts: list[int]
          ) -> tuple[Any, ...]:
    """What `reader` makes of `response` fed in pieces cut at `cuts`."""
    reader.expect(method)
    events: list[Any] = []
    error = None
    at = 0
    for cut in sorted({c % (len(response) + 1) for c in cuts} | {len(response)}):
        try:
            events += reader.feed(response[at:cut])
        except BodyError as e:
            error = str(e)
            break
        at = cut
    shown = [(e.status, e.reason, e.headers) if isinstance(e, ResponseHead) else e
             for e in events]
    return (shown, error, reader.done, reader.keep_alive, reader.extra, reader.reusable(),
            reader.switched_rest)


@settings(max_examples=examples(300), deadline=None)
@given(st.lists(st.tuples(_EXCHANGES, st.lists(st.integers(0, 200), max_size=3)),
                min_size=1, max_size=6))
def test_a_kept_parser_reads_what_a_fresh_one_reads(
        exchanges: list[tuple[tuple[bytes, bytes], list[int]]]) -> None:
    kept = ResponseReader(MAX_HEAD)
    for (method, response), cuts in exchanges:
        assert _read(kept, method, response, cuts) == _read(ResponseReader(MAX_HEAD),
                                                            method, response, cuts)
        if not kept.reusable():  # the proxy closes the connection: no next response
            break


def test_the_parser_is_kept_only_after_a_message_llhttp_ended() -> None:
    reader = ResponseReader(MAX_HEAD)
    reader.expect(b"GET")
    reader.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    first = reader._parser
    reader.expect(b"GET")
    assert reader._parser is first  # a kept-alive response ended: kept
    reader.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    reader.expect(b"HEAD")
    assert reader._parser is first
    reader.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n")  # stopped after the head
    assert reader.reusable()
    reader.expect(b"GET")
    assert reader._parser is not first  # llhttp still expects the HEAD's body: a new one
