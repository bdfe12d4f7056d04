"""h1.ResponseReader keeps its llhttp parser from one kept-alive response to the next: it
reads every response as a fresh reader would (hypothesis: the same events, the same
verdict), and makes a new parser after anything that leaves llhttp inside a message."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from studios_gateway.http.h1 import MAX_RESPONSE_FIELDS, BodyError, ResponseHead, ResponseReader
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


def test_a_head_after_1xx_heads_is_measured_and_the_1xx_heads_let_go() -> None:
    """A tool's head after a 100 Continue was never measured (the 1xx head's end was in
    the bytes kept): an endless head grew the gateway without bound (and 20 MB of it
    took 17 s of llhttp's time). 1xx heads are let go once read; the head after them is
    held to MAX_HEAD as any."""
    reader = ResponseReader(MAX_HEAD)
    reader.expect(b"POST")
    got = reader.feed(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nX-Endless: ")
    assert [e.status for e in got] == [100]
    error = None
    for _ in range(MAX_HEAD // 1000 + 1):
        try:
            reader.feed(b"a" * 1000)
        except BodyError as e:
            error = str(e)
            break
    assert error == "response head too large"

    reader = ResponseReader(MAX_HEAD)
    reader.expect(b"GET")
    hints = b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"
    for _ in range(1000):  # endless 1xx heads: each passed on, none kept
        assert len(reader.feed(hints * 10)) == 10
    assert not reader.untouched()  # a 1xx was read: not the compiled lane's to answer
    reader.feed(hints + b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\nafter")
    assert reader.switched_rest == b"after"


def test_a_status_outside_100_to_599_is_a_bad_response() -> None:
    """llhttp reads any three digits as a status: a tool's 'HTTP/1.1 000' head (with its
    Content-Length) went to the browser as if it were a 1xx, the exchange going on."""
    for status in (b"000", b"099", b"600", b"999"):
        reader = ResponseReader(MAX_HEAD)
        reader.expect(b"GET")
        try:
            got = reader.feed(b"HTTP/1.1 " + status + b" X\r\nContent-Length: 2\r\n\r\nok")
        except BodyError as e:
            assert str(e) == f"status {int(status)} is not an HTTP status (100-599)"
        else:
            raise AssertionError(f"{status!r} read as {got}")
    reader = ResponseReader(MAX_HEAD)
    reader.expect(b"GET")
    assert [e.status for e in reader.feed(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 599 X\r\n"
                                          b"Content-Length: 0\r\n\r\n")[:2]] == [100, 599]


def test_a_response_trailer_section_is_bounded_and_not_kept() -> None:
    """Trailer fields were appended to the head's fields for as long as the tool sent
    them (26 MB of 'X-T: a' lines grew the process by 390 MB), an endless trailer value
    or chunk size line was kept whole; the framer never passes trailers on. Now they are
    not kept, and what comes between two pieces of the body is held to MAX_HEAD."""
    for endless in (b"X-T: a\r\n" * 100, b"a" * 800):
        reader = ResponseReader(MAX_HEAD)
        reader.expect(b"GET")
        head = reader.feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                           b"2\r\nhi\r\n0\r\nX-Trailer: ")
        assert head[1:] == [b"hi"]
        error = None
        for _ in range(MAX_HEAD // len(endless) + 1):
            try:
                reader.feed(endless)
            except BodyError as e:
                error = str(e)
                break
        assert error == "response chunk size line or trailer section too long"
        assert head[0].headers == [(b"Transfer-Encoding", b"chunked")]
    reader = ResponseReader(MAX_HEAD)
    reader.expect(b"GET")
    got = reader.feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    for _ in range(3 * MAX_HEAD // 8):  # a long answer in small chunks, a read each
        got += reader.feed(b"2\r\nhi\r\n")
    got += reader.feed(b"0\r\nX-T: 1\r\n\r\n")
    assert got[-1] is None and reader.reusable()


def test_a_head_read_whole_in_one_read_has_at_most_1000_fields() -> None:
    """A head that comes whole in one read is not held to MAX_HEAD (a tunnel's Data frame
    may be megabytes; the compiled lane takes such heads too), so its fields are counted:
    a million of them were a million tuples."""
    many = b"HTTP/1.1 200 OK\r\n" + b"a:b\r\n" * 100_000 + b"Content-Length: 0\r\n\r\n"
    reader = ResponseReader(MAX_HEAD)
    reader.expect(b"GET")
    try:
        reader.feed(many)
    except BodyError as e:
        assert str(e) == f"response head with more than {MAX_RESPONSE_FIELDS} fields"
    else:
        raise AssertionError("read")
    cookies = b"Set-Cookie: a=b\r\n" * (MAX_RESPONSE_FIELDS - 1)
    reader = ResponseReader(len(cookies) * 2)
    reader.expect(b"GET")
    got = reader.feed(b"HTTP/1.1 200 OK\r\n" + cookies + b"Content-Length: 0\r\n\r\n")
    assert len(got[0].headers) == MAX_RESPONSE_FIELDS and got[-1] is None


def test_a_reason_phrase_with_a_control_byte_becomes_the_standard_one() -> None:
    """llhttp lets a reason phrase's control bytes (\\x01, DEL) through, and they went on
    to the browser as the tool sent them."""
    for reason, shown in ((b"O\x01K", b"OK"), (b"Fine\x7f", b"OK"), (b"All good\tnow", None),
                          (b"caf\xe9", None)):
        reader = ResponseReader(MAX_HEAD)
        reader.expect(b"GET")
        [head, *_] = reader.feed(b"HTTP/1.1 200 " + reason + b"\r\nContent-Length: 0\r\n\r\n")
        assert isinstance(head, ResponseHead)
        assert head.reason == (reason if shown is None else shown)
    reader = ResponseReader(MAX_HEAD)
    reader.expect(b"GET")
    [head, *_] = reader.feed(b"HTTP/1.1 599 \x01\r\nContent-Length: 0\r\n\r\n")
    assert head.reason == b""  # no standard phrase
