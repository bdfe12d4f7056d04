"""h1.RequestBody for a Content-Length body: however the client's bytes are cut, the
body comes out whole and in order, the bytes after it are left for the next request,
and a read that is the only bytes waiting is passed on as it is (no copy: an upload's
usual case)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from studios_gateway.http.h1 import RequestBody, RequestHead
from tests.support.examples import examples


def _head(length: int) -> RequestHead:
    return RequestHead(b"PUT", b"/upload", b"1.1", [(b"Content-Length", b"%d" % length)],
                       True, False, length, False, b"x")


@settings(max_examples=examples(500), deadline=None)
@given(st.binary(max_size=300), st.binary(max_size=40), st.lists(st.integers(0, 400)),
       st.lists(st.booleans()))
def test_any_cut_gives_the_body_and_leaves_the_rest(body: bytes, rest: bytes,
                                                    cuts: list[int], reads: list[bool]
                                                    ) -> None:
    data = body + rest
    b = RequestBody(b"", _head(len(body)), 1024)
    got = b""
    at = 0
    points = sorted({c % (len(data) + 1) for c in cuts} | {len(data)})
    for i, cut in enumerate(points):
        b.feed(data[at:cut])
        at = cut
        if reads[i] if i < len(reads) else True:  # sometimes two feeds before a read
            got += b.read()
    got += b.read()
    assert got == body and b.done
    assert b.leftover() == rest


def test_a_lone_read_is_passed_on_uncopied() -> None:
    b = RequestBody(b"", _head(1 << 20), 1024)
    chunk = bytes(range(256)) * 256
    b.feed(chunk)
    assert b.read() is chunk
    b.feed(bytearray(b"abc"))  # not bytes: copied (a bytearray may change after)
    b.feed(b"def")
    assert b.read() == b"abcdef"
