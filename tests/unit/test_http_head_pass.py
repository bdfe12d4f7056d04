"""The request head read in one pass (headers.read_head, then llhttp without callbacks)
says what the two passes it replaced said: check_head over the raw lines, then
parse_request_head with llhttp's callbacks and h11's field checks (hypothesis; the
earlier functions are kept here as the reference)."""

from __future__ import annotations

import re
from typing import Any

import httptools
from hypothesis import given, settings
from hypothesis import strategies as st

from studios_gateway.http.h1 import RequestHead, _value_ok, parse_request_head
from studios_gateway.http.headers import HeadProblem, connection_tokens
from tests.support.examples import examples

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_REQUEST_LINE = re.compile(rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+) ([^ ]+) HTTP/1\.([01])")
_DIGITS = re.compile(rb"[0-9]{1,18}")
_TARGET = re.compile(rb"[\x21-\x7e]+")


def reference_check_head(head: bytes, *, max_request_line: int, max_header_count: int
                         ) -> HeadProblem | None:
    """check_head as it was before read_head (a dict of counts, a second walk for CR/LF)."""
    if b"\r\n\r\n" != head[-4:]:
        return HeadProblem(400, "incomplete head")
    lines = head[:-4].split(b"\r\n")
    if any(b"\n" in line or b"\r" in line for line in lines):
        return HeadProblem(400, "bare CR or LF")
    request_line, fields = lines[0], lines[1:]
    if len(request_line) > max_request_line:
        return HeadProblem(414, "request line too long")
    if len(fields) > max_header_count:
        return HeadProblem(431, "too many header fields")
    m = _REQUEST_LINE.fullmatch(request_line)
    if m is None:
        return HeadProblem(400, "malformed request line")
    counts: dict[bytes, int] = {}
    content_length: bytes | None = None
    transfer_encoding: bytes | None = None
    for line in fields:
        if line[:1] in (b" ", b"\t"):
            return HeadProblem(400, "obsolete line folding")
        name, colon, value = line.partition(b":")
        if not colon or not _TOKEN.fullmatch(name):
            return HeadProblem(400, "malformed header field")
        lname = name.lower()
        counts[lname] = counts.get(lname, 0) + 1
        value = value.strip(b" \t")
        if lname == b"content-length":
            content_length = value
        elif lname == b"transfer-encoding":
            transfer_encoding = value
    if counts.get(b"content-length", 0) > 1:
        return HeadProblem(400, "repeated Content-Length")
    if counts.get(b"transfer-encoding", 0) > 1:
        return HeadProblem(400, "repeated Transfer-Encoding")
    if content_length is not None and transfer_encoding is not None:
        return HeadProblem(400, "Content-Length with Transfer-Encoding")
    if content_length is not None and not _DIGITS.fullmatch(content_length):
        return HeadProblem(400, "malformed Content-Length")
    if transfer_encoding is not None:
        if m.group(3) == b"0":
            return HeadProblem(400, "Transfer-Encoding in HTTP/1.0")
        if transfer_encoding.lower() != b"chunked":
            return HeadProblem(400, "unsupported Transfer-Encoding")
    if counts.get(b"host", 0) != 1:
        return HeadProblem(400, "missing or repeated Host")
    return None


class _Collector:
    def __init__(self) -> None:
        self.target = b""
        self.headers: list[tuple[bytes, bytes]] = []

    def on_url(self, url: bytes) -> None:
        self.target += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))


def reference_parse(head: bytes) -> tuple[Any, ...] | str:
    """parse_request_head as it was: llhttp with callbacks collecting the target and the
    fields, then the target and value checks and the fields' meaning."""
    c = _Collector()
    p = httptools.HttpRequestParser(c)
    try:
        p.feed_data(head)
    except httptools.HttpParserUpgrade:
        pass
    except httptools.HttpParserError as e:
        return f"malformed request ({e})"
    if not _TARGET.fullmatch(c.target):
        return "malformed request target"
    keep_alive = True
    upgrade = False
    length = None
    chunked = False
    for name, value in c.headers:
        if not _value_ok(value):
            return "malformed header value"
        lname = name.lower()
        if lname == b"connection":
            if b"close" in (t.strip().lower() for t in value.split(b",")):
                keep_alive = False
        elif lname == b"upgrade":
            upgrade = True
        elif lname == b"content-length":
            length = int(value)
        elif lname == b"transfer-encoding":
            chunked = True
    version = b"1.1" if head[head.index(b"\r\n") - 1:head.index(b"\r\n")] == b"1" else b"1.0"
    if version == b"1.0":
        keep_alive = False
    host = next(v for k, v in c.headers if k.lower() == b"host")
    return (p.get_method(), c.target, version, c.headers, keep_alive, upgrade, length,
            chunked, host, connection_tokens(c.headers))


def reference(head: bytes, limits: dict[str, int]) -> tuple[Any, ...]:
    problem = reference_check_head(head, **limits)
    if problem is not None:
        return (problem.status, problem.reason)
    got = reference_parse(head)
    return (400, got) if isinstance(got, str) else got


def one_pass(head: bytes, limits: dict[str, int]) -> tuple[Any, ...]:
    got = parse_request_head(head, **limits)
    if isinstance(got, HeadProblem):
        return (got.status, got.reason)
    assert isinstance(got, RequestHead)
    return (got.method, got.target, got.version, got.headers, got.keep_alive,
            got.upgrade_offered, got.content_length, got.chunked, got.host, got.connection)


def _mostly(usual: list[bytes], odd: list[bytes]) -> st.SearchStrategy[bytes]:
    """One of `usual` three times in four, else one of `odd`."""
    return st.one_of(st.sampled_from(usual), st.sampled_from(usual), st.sampled_from(usual),
                     st.sampled_from(odd))


_METHODS = _mostly([b"GET", b"POST", b"HEAD", b"OPTIONS"],
                   [b"get", b"FOO", b"CONNECT", b"PRI", b"G\x00T", b"GET\t", b""])
_TARGETS = _mostly([b"/", b"/x?y=1", b"http://abc.studios.test/x"],
                   [b"*", b"/a b", b"/\x00", b"/\x7f", b"/\x80", b"%", b"",
                    b"abc.studios.test:80", b"/" + b"a" * 30])
_VERSIONS = _mostly([b"HTTP/1.1", b"HTTP/1.0"], [b"HTTP/2.0", b"HTTP/1.1 ", b"http/1.1"])
_NAMES = _mostly([b"Content-Length", b"content-length", b"Transfer-Encoding", b"Connection",
                  b"connection", b"Upgrade", b"Cookie", b"X-A", b"Host"],
                 [b"host", b"HOST", b"Bad Name", b"", b"X\x00", b"X@", b" Host", b"Host ",
                  b"\tX", b"X\x0b"])
_SEPS = _mostly([b": ", b":"], [b":\t", b" :", b":  ", b"", b": \t "])
_VALUES = _mostly([
    b"abc.studios.test", b"5", b"0", b"chunked", b"Chunked", b"close", b"keep-alive, Upgrade",
    b"Upgrade", b"websocket", b"a b", b"", b"CLOSE ,x", b"a,,b", b"upgrade,close"], [
    b"-1", b"0x10", b"5, 5", b"12345678901234567890", b"123456789012345678", b"gzip, chunked",
    b" ", b"\t", b"x ", b"x\t", b" x ", b"\x00", b"a\x01b", b"\x7f", b"\x80\xff", b"\x0b",
    b"\x0c", b"\r", b"\n", b"a\x1fb"])
_LINES = st.one_of(
    st.tuples(_NAMES, _SEPS, _VALUES).map(b"".join),
    st.tuples(_NAMES, _SEPS, _VALUES).map(b"".join),
    st.tuples(_NAMES, _SEPS, _VALUES).map(b"".join),
    st.sampled_from([b" folded", b"\tfolded", b"NoColon", b"X: a\rb", b"X: a\nb", b"",
                     b"Host", b"Cookie", b"X-A", b" Cookie: a", b"\tX-A:"]),
)
_HOST = _mostly([b"Host: abc.studios.test"], [b"", b"host:abc", b"Host:  a\t"])


@st.composite
def _heads(draw: st.DrawFn) -> bytes:
    lines = draw(st.lists(_LINES, max_size=6))
    host = draw(_HOST)
    if host:
        lines.insert(draw(st.integers(0, len(lines))), host)
    end = draw(st.sampled_from([b"\r\n\r\n"] * 15 + [b"\r\n", b"\n\n", b"\r\n\r\nGET"]))
    request_line = b" ".join([draw(_METHODS), draw(_TARGETS), draw(_VERSIONS)])
    return request_line + b"".join(b"\r\n" + line for line in lines) + end


_HEADS = _heads()
_LIMITS = st.sampled_from([dict(max_request_line=8190, max_header_count=100)] * 3
                          + [dict(max_request_line=20, max_header_count=3)])


@settings(max_examples=examples(800))
@given(_HEADS, _LIMITS)
def test_one_pass_is_check_head_then_llhttp(head: bytes, limits: dict[str, int]) -> None:
    assert one_pass(head, limits) == reference(head, limits)


_pieces = st.sampled_from([
    b"GET", b"POST", b" ", b"/", b"HTTP/1.1", b"HTTP/1.0", b"\r\n", b"\n", b"\r", b":",
    b"Host", b"abc.studios.test", b"Content-Length", b"Transfer-Encoding", b"chunked",
    b"0", b"5", b"-1", b"\t", b"\x00", b"\xff", b"Connection", b"Upgrade", b",", b"X-A",
    b"close", b"http://abc.studios.test", b"*", b"%", b"\x01",
])


@settings(max_examples=examples(500))
@given(st.lists(_pieces, max_size=30).map(b"".join), _LIMITS)
def test_one_pass_is_the_two_passes_for_any_bytes(raw: bytes, limits: dict[str, int]) -> None:
    head = raw + b"\r\n\r\n"
    assert one_pass(head, limits) == reference(head, limits)
