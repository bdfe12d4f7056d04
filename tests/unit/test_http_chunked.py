"""Chunked request bodies (h1.RequestBody: h11 decodes, llhttp checks too): decoded whole
however the bytes are cut; refused with a reason in words (no Python repr) for a bad size
line, a size of more than 16 hex digits, data not ended by CRLF or a bad trailer; and
the proxy's refusal: a 400 page, one log line naming the client, an access line with the
method and path."""

from __future__ import annotations

from typing import Any

import h11
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.logger import Logger, formatEvent

from studios_gateway.http.h1 import BodyError, RequestBody, RequestHead
from tests.support.examples import examples
from tests.unit.test_http_observer import Observer
from tests.unit.test_http_proxy import Harness, parse_responses, status_of

HEAD = b"POST /up?secret=1 HTTP/1.1\r\nHost: abc.studios.test\r\nTransfer-Encoding: chunked\r\n\r\n"
_REQUEST = RequestHead(b"POST", b"/up?secret=1", b"1.1", [(b"Host", b"abc.studios.test"),
                       (b"Transfer-Encoding", b"chunked")], True, False, None, True,
                       b"abc.studios.test")


def decode(data: bytes, cuts: list[int] | None = None, max_head: int = 1024
           ) -> tuple[bytes, bool, bytes]:
    """The body, whether it ended, and the bytes after it, `data` fed in pieces."""
    b = RequestBody(HEAD, _REQUEST, max_head)
    out = b""
    at = 0
    for cut in sorted({c % (len(data) + 1) for c in cuts or []} | {len(data)}):
        b.feed(data[at:cut])
        at = cut
        out += b.read()
    return out, b.done, b.leftover() if b.done else b""


def h11_body(data: bytes) -> tuple[bytes, bytes]:
    """What h11 alone makes of the same body: the data, the rest."""
    c = h11.Connection(h11.SERVER)
    c.receive_data(HEAD + data)
    assert isinstance(c.next_event(), h11.Request)
    out = b""
    while True:
        ev = c.next_event()
        if isinstance(ev, h11.Data):
            out += ev.data
        else:
            assert isinstance(ev, h11.EndOfMessage), ev
            return out, bytes(c.trailing_data[0])


_chunk = st.tuples(st.binary(min_size=1, max_size=40),
                   st.sampled_from(["%x", "%X", "%04x", "%x;name=value", '%x;a="q s"', "%x;a;b=c"]))
_trailer = st.lists(st.sampled_from([b"X-Sum: 1", b"Expires: never", b"A:", b"B:  c d "]),
                    max_size=2)


@settings(max_examples=examples(300), deadline=None)
@given(st.lists(_chunk, max_size=6), _trailer, st.binary(max_size=20),
       st.lists(st.integers(0, 400), max_size=8))
def test_well_formed_bodies_are_decoded_whole_however_they_are_cut(
        chunks: list[tuple[bytes, str]], trailer: list[bytes], rest: bytes, cuts: list[int]
) -> None:
    body = b"".join(b"%s\r\n%s\r\n" % ((fmt % len(data)).encode(), data)
                    for data, fmt in chunks)
    body += b"0\r\n" + b"".join(t + b"\r\n" for t in trailer) + b"\r\n"
    got, done, left = decode(body + rest, cuts)
    assert done and (got, left) == (b"".join(d for d, _ in chunks), rest)
    assert h11_body(body + rest) == (got, left)  # (what h11 alone made of it before)


def test_sizes_of_up_to_16_hex_digits_are_taken() -> None:
    # (and no more than 20 digits in all, leading zeros included: h11's limit)
    for line in (b"ffffffffffffffff", b"0000ffffffffffffffff", b"00000000000000000003"):
        got, done, _ = decode(line + b"\r\nabc")
        assert got == b"abc" and not done, line


@pytest.mark.parametrize(("body", "reason"), [
    (b"zz\r\nabc\r\n0\r\n\r\n", "bad chunk size line"),
    (b"-5\r\nhello\r\n", "bad chunk size line"),
    (b"5 5\r\nhello\r\n", "bad chunk size line"),
    (b"5 \r\nhello\r\n", "bad chunk size line"),  # (h11 took spaces after the size)
    (b"5 ;a\r\nhello\r\n", "bad chunk size line"),
    (b"5;a\x00\r\nhello\r\n", "bad chunk size line"),
    (b"\r\nhello\r\n", "bad chunk size line"),
    (b"0x5\r\nhello\r\n", "bad chunk size line"),
    (b"5\nhello\r\n", "bad chunk size line"),
    (b"ffffffffffffffffffff\r\nabc", "chunk size too large (more than 16 hex digits)"),
    (b"10000000000000000\r\n", "chunk size too large (more than 16 hex digits)"),
    (b"000000000000000000003\r\nabc", "bad chunk size line"),  # 21 digits
    (b"3\r\nabcXY", "chunk data not followed by CRLF"),
    (b"0\r\nno colon\r\n\r\n", "bad trailer section"),
    (b"0\r\nBad Name: x\r\n\r\n", "bad trailer section"),
    (b"0\r\n folded\r\n\r\n", "bad trailer section"),
])
def test_bad_bodies_are_refused_with_a_reason_in_words(body: bytes, reason: str) -> None:
    for cuts in ([], list(range(len(body)))):  # at once, and a byte at a time
        with pytest.raises(BodyError) as e:
            decode(body, cuts)
        assert str(e.value) == reason


def test_long_size_lines_and_trailers_are_refused() -> None:
    too_long = "chunk size line or trailer section too long"
    with pytest.raises(BodyError, match=f"^{too_long}$"):  # (one not ended yet)
        decode(b"5;a=" + b"x" * 2000, max_head=64)
    with pytest.raises(BodyError, match=f"^{too_long}$"):
        decode(b"0\r\n" + b"X-A: 1\r\n" * 400, max_head=64)


# The proxy's refusal ---------------------------------------------------------------------


def _refused(body: bytes) -> tuple[Harness, Any, Observer, list[str]]:
    obs = Observer()
    h = Harness(observer=obs)
    p, t = h.client(peer="192.0.2.44")
    events: list[dict[str, Any]] = []
    p._log = Logger(observer=events.append)
    p.dataReceived(HEAD + body)
    return h, t, obs, [formatEvent(e) for e in events]


@pytest.mark.parametrize(("body", "reason"), [
    (b"zz\r\nabc\r\n0\r\n\r\n", "bad chunk size line"),
    (b"ffffffffffffffffffff\r\n" + b"x" * 100, "chunk size too large (more than 16 hex digits)"),
])
def test_a_bad_chunk_is_a_400_logged_with_the_client_method_and_path(body: bytes,
                                                                     reason: str) -> None:
    h, t, obs, lines = _refused(body)
    assert status_of(t) == 400 and t.disconnecting
    [(_, _, page)] = parse_responses(t.value(), b"POST")
    assert b"The request was refused: malformed request body: " + reason.encode() in page
    [line] = [line for line in lines if "refused" in line]
    assert line == f"refused a request body from 192.0.2.44: 400 malformed request body: {reason}"
    assert "bytearray" not in line and "b'" not in line
    [f] = obs.done
    assert (f.client, f.method, f.path, f.status) == ("192.0.2.44", "POST", "/up", 400)
    assert f.reason == f"malformed request body: {reason}"
    up, ut = h.up()
    assert ut.value().split(b"\r\n\r\n", 1)[1] == b"" and ut.disconnecting  # no body


def test_a_chunk_too_large_is_not_forwarded_even_in_pieces() -> None:
    h = Harness()
    p, t = h.client()
    p.dataReceived(HEAD + b"ffffffff")
    p.dataReceived(b"ffffffffffff\r\n")
    p.dataReceived(b"GET / HTTP/1.1\r\n\r\n" * 10)
    assert status_of(t) == 400 and t.disconnecting
    assert b"GET" not in h.up()[1].value().split(b"\r\n\r\n", 1)[1]


def test_a_refused_head_s_access_line_has_its_method_and_path() -> None:
    obs = Observer()
    h = Harness(observer=obs)
    p, t = h.client()
    p.dataReceived(b"GET /x?q=1 HTTP/1.1\r\nHost: abc.studios.test\r\nX: a\x01b\r\n\r\n")
    assert status_of(t) == 400
    p, t = h.client()
    p.dataReceived(b"GE(T /y HTTP/1.1\r\nHost: abc.studios.test\r\n\r\n")  # no method
    assert status_of(t) == 400
    [first, second] = obs.done
    assert (first.method, first.path, first.status) == ("GET", "/x", 400)
    assert (second.method, second.path) == ("", "")
