"""A connection's memo of its last request head (h1.HeadMemo) says what a fresh parse
says: a reader that remembers, fed a run of heads that repeat, change or break their
fields, request line and limits, answers each as a reader that has seen nothing; and
the tool's head made from a remembered one is the head made without the memo, for any
studio, subject, tool route and client (hypothesis)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from studios_gateway.http.exchange import (
    Exchange,
    HeadReader,
    HeadRefused,
    Limits,
    NotForwardable,
    ToolCodec,
)
from studios_gateway.http.h1 import _llhttp_refusal
from studios_gateway.http.routing import Mode, Route
from studios_gateway.http.toolroute import tool_route
from tests.support.examples import examples

LIMITS = Limits(max_request_line=48, max_header_bytes=320, max_header_count=6)

_METHODS = st.sampled_from([b"GET", b"POST", b"HEAD", b"PUT", b"FOO", b"G\tT", b""])
_TARGETS = st.sampled_from([
    b"/", b"/a?b=c", b"/lab/api/x", b"*", b"http://abc.studios.test/x", b"/a b", b"/\x7f",
    b"/\xff", b"/a\r\nX: y", b"/a\n", b"", b"/" + b"x" * 60, b"/%2e%2e/", b"/a#frag",
    b"//x", b"/a HTTP/1.1\r\nHost: b", b"abc", b"?x", b"a:b",  # (the last three: llhttp refuses)
])
#: origin-form targets of any visible characters (llhttp's verdict carries over for these)
_ORIGIN = st.binary(max_size=20).map(
    lambda b: b"/" + bytes(0x21 + c % 94 for c in b))
_TARGETS = _TARGETS | _ORIGIN
_MINORS = st.sampled_from([b"1", b"0", b"2", b"1 "])
_LINES = st.sampled_from([
    b"Host: abc.studios.test", b"Host: b", b"host:abc.studios.test", b"Content-Length: 3",
    b"Content-Length: x", b"Transfer-Encoding: chunked", b"Connection: close",
    b"Connection: keep-alive, upgrade", b"Upgrade: websocket", b" folded",
    b"X-Forwarded-For: 10.1.2.3", b"Cookie: a=1; __Host-connect_session=x",
    b"X-Long: " + b"v" * 120, b"Bad Name: 1", b"X: a\x00b", b"X: trailing ", b"X:\tt",
    b"Accept: */*", b"abc", b"X: a\rb", b"X: a\nb",
])


_GOOD_FIELDS = st.sampled_from([
    [b"Host: abc.studios.test"], [b"Host: abc.studios.test", b"Accept: */*"],
    [b"host:abc.studios.test", b"Content-Length: 3"],
    [b"Host: b", b"Connection: keep-alive, upgrade", b"Upgrade: websocket"],
    [b"Host: b", b"Transfer-Encoding: chunked"], [b"Host: b", b"Connection: close"],
])


@st.composite
def _heads(draw: st.DrawFn) -> list[bytes]:
    """A run of heads on one connection: each keeps the previous one's fields (and
    often its method and version, with a new target) or has fields of its own."""
    heads: list[bytes] = []
    fields = method = minor = b""
    for _ in range(draw(st.integers(1, 6))):
        if not heads or draw(st.booleans()):
            lines = draw(_GOOD_FIELDS | st.lists(_LINES, max_size=7))
            fields = b"".join(b"\r\n" + line for line in lines)
        if not heads or draw(st.booleans()):
            method, minor = draw(_METHODS), draw(_MINORS)
        line = b"%s %s HTTP/1.%s" % (method, draw(_TARGETS), minor)
        heads.append(line + fields + b"\r\n\r\n")
    return heads


def _outcome(got: Exchange | HeadRefused | None) -> object:
    if isinstance(got, Exchange):
        req = got.request
        return ("exchange", req.method, req.target, req.version, req.headers, req.keep_alive,
                req.upgrade_offered, req.content_length, req.chunked, req.host,
                req.connection, req.forwarded, got.body.done)
    if isinstance(got, HeadRefused):
        return ("refused", got.status, got.why)
    return ("more",)


@settings(max_examples=examples(1500), deadline=None)
@given(_heads())
def test_a_remembered_head_reads_as_a_fresh_one(heads: list[bytes]) -> None:
    remembering = HeadReader(LIMITS)
    for head in heads:
        got = remembering.take_read(head)
        assert _outcome(got) == _outcome(HeadReader(LIMITS).take_read(head))
        if not isinstance(got, Exchange):  # refused or incomplete: a new connection
            remembering = HeadReader(LIMITS)


@settings(max_examples=examples(1500), deadline=None)
@given(st.sampled_from([b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"CONNECT", b"OPTIONS",
                        b"TRACE", b"PATCH", b"PROPFIND", b"M-SEARCH", b"PRI", b"FOO", b"G\tT"]),
       _MINORS, st.lists(_LINES, max_size=5), _ORIGIN)
def test_llhttp_judges_an_origin_form_target_by_its_method_version_and_fields(
        method: bytes, minor: bytes, lines: list[bytes], target: bytes) -> None:
    """What HeadMemo.parse relies on to skip llhttp: any origin-form target of visible
    characters gets llhttp's verdict on ``/a`` with the same method, version and fields
    (an httptools upgrade that changes this fails here)."""
    fields = b"".join(b"\r\n" + line for line in lines) + b"\r\n\r\n"
    head = b"%s %s HTTP/1.%s" % (method, target, minor) + fields
    assert (_llhttp_refusal(head) is None) == (
        _llhttp_refusal(b"%s /a HTTP/1.%s" % (method, minor) + fields) is None)


def test_llhttp_still_judges_a_target_not_in_origin_form() -> None:
    """The memo skips llhttp only from an origin-form target to another: a target llhttp
    refuses after a remembered one, or after a remembered target it had to judge, is
    refused as on a fresh connection."""
    fields = b"\r\nHost: abc.studios.test\r\n\r\n"
    for first, then in ((b"/a", b"abc"), (b"/a", b"?x"), (b"/a", b"a:b"),
                        (b"http://abc.studios.test/", b"/b"), (b"*", b"/b")):
        reader = HeadReader(Limits())
        remembered = reader.take_read(b"OPTIONS " + first + b" HTTP/1.1" + fields)
        assert isinstance(remembered, Exchange), first
        head = b"OPTIONS " + then + b" HTTP/1.1" + fields
        assert _outcome(reader.take_read(head)) == _outcome(HeadReader(Limits()).take_read(head))
    reader = HeadReader(Limits())
    assert isinstance(reader.take_read(b"GET /a HTTP/1.1" + fields), Exchange)
    refused = reader.take_read(b"GET abc HTTP/1.1" + fields)
    assert isinstance(refused, HeadRefused) and refused.status == 400


def test_only_the_same_fields_method_and_version_are_taken_from_the_memo() -> None:
    reader = HeadReader(Limits())
    fields = b"\r\nHost: abc.studios.test\r\nAccept: */*\r\n\r\n"
    first = reader.take_read(b"GET /a HTTP/1.1" + fields)
    second = reader.take_read(b"GET /b?c HTTP/1.1" + fields)
    assert isinstance(first, Exchange) and isinstance(second, Exchange)
    assert second.request.headers is first.request.headers  # read once
    assert second.memo is first.memo and second.request.target == b"/b?c"
    for other in (b"POST /b HTTP/1.1" + fields, b"GET /b HTTP/1.0" + fields,
                  b"GET /b HTTP/1.1\r\nHost: abc.studios.test\r\nAccept: text/*\r\n\r\n"):
        third = reader.take_read(other)
        assert isinstance(third, Exchange)
        assert third.request.headers is not first.request.headers
        assert third.memo is not first.memo


_ROUTES = [Route("abc", Mode.SUBDOMAIN, "/x?y=1", "/"),
           Route("abc", Mode.PATH, "/_studio/abc/x?y=1", "/_studio/abc/"),
           Route("def", Mode.PATH, "/_studio/def/z", "/_studio/def/")]
_CLIENT_LINES = st.sampled_from([
    b"Host: abc.studios.test", b"Cookie: a=1; __Host-connect_session=x; b=2",
    b"X-Forwarded-For: 10.9.9.9", b"Connection: keep-alive, upgrade", b"Upgrade: websocket",
    b"X-Forwarded-Prefix: /evil", b"X-Connect-Sub: mallory", b"Content-Length: 0",
    b"Accept: */*", b"X-RStudio-Root-Path: /evil",
])


@settings(max_examples=examples(800), deadline=None)
@given(st.lists(_CLIENT_LINES, max_size=6, unique=True), st.lists(st.tuples(
    st.sampled_from(_ROUTES), st.sampled_from([None, "jupyter", "rstudio", "vscode"]),
    st.sampled_from(["alice", "bob", "b\r\nad"]), st.sampled_from([None, "10.0.0.9", "::1"]),
    st.booleans(), st.sampled_from(["http", "https"]), st.sampled_from([b"/a", b"/b"])),
    min_size=1, max_size=5))
def test_a_remembered_tool_head_is_the_head_made_anew(lines: list[bytes],
                                                      requests: list[tuple]) -> None:
    fields = b"".join(b"\r\n" + line for line in lines if not line.startswith(b"Host"))
    fields = b"\r\nHost: abc.studios.test" + fields + b"\r\n\r\n"
    reader = HeadReader(Limits())
    for route, tool, subject, peer, trusted, scheme, target in requests:
        ex = reader.take_read(b"GET " + target + b" HTTP/1.1" + fields)
        assert isinstance(ex, Exchange)
        assert ex.begin(scheme, peer, 5000) is None
        ex.route, ex.subject = route, subject
        ex.tool = tool_route(route, tool) if tool is not None else None
        memo, ex.memo = ex.memo, None
        try:
            expected: bytes | str = ex.tool_head(ToolCodec(1024), peer, trusted, scheme)
        except NotForwardable as e:
            expected = str(e)
        ex.memo = memo
        try:
            got: bytes | str = ex.tool_head(ToolCodec(1024), peer, trusted, scheme)
        except NotForwardable as e:
            got = str(e)
        assert got == expected


def test_a_long_head_or_one_of_many_fields_is_not_remembered() -> None:
    many = b"".join(b"\r\nX-%d: v" % i for i in range(32))
    for fields in (b"\r\nHost: abc.studios.test\r\nX-Long: " + b"v" * 5000 + b"\r\n\r\n",
                   b"\r\nHost: abc.studios.test" + many + b"\r\n\r\n"):
        reader = HeadReader(Limits())
        first = reader.take_read(b"GET /a HTTP/1.1" + fields)
        second = reader.take_read(b"GET /b HTTP/1.1" + fields)
        assert isinstance(first, Exchange) and isinstance(second, Exchange)
        assert first.memo is None and second.memo is None
        assert second.request.headers == first.request.headers
    reader = HeadReader(Limits())  # 32 lines in all: remembered
    fields = b"\r\nHost: abc.studios.test" + many[:many.index(b"\r\nX-31")] + b"\r\n\r\n"
    first = reader.take_read(b"GET /a HTTP/1.1" + fields)
    assert isinstance(first, Exchange) and first.memo is not None
