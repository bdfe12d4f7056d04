"""The proxy's shortcuts for a keep-alive client's usual request say what the general way
says: HeadReader.take_read (a read that starts a head, taken without the buffer) against
feed + take; strip_auth_cookie's and cookie_values' remembered answers against the
answers worked out; a Router that remembers studio hosts against a fresh one."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from studios_gateway.auth import cookies, login
from studios_gateway.auth.cookies import cookie_values
from studios_gateway.auth.login import strip_auth_cookie
from studios_gateway.http import headers
from studios_gateway.http.exchange import Exchange, HeadReader, HeadRefused, Limits
from studios_gateway.http.routing import Router
from tests.support.examples import examples

LIMITS = Limits(max_request_line=64, max_header_bytes=256, max_header_count=6)

_PIECES = st.sampled_from([
    b"GET / HTTP/1.1", b"GET /a?b=c HTTP/1.0", b"POST /x HTTP/1.1", b"GET  / HTTP/1.1",
    b"GET /" + b"x" * 80 + b" HTTP/1.1", b"\r\n", b"\n", b"\r", b"\r\n\r\n",
    b"Host: a.studios.test", b"Host: b", b"Content-Length: 3", b"Content-Length: x",
    b"Transfer-Encoding: chunked", b"Connection: close, upgrade", b"Upgrade: websocket",
    b" folded", b"X-Long: " + b"v" * 200, b"Bad Name: 1", b"X: a\x00b", b"X: trailing ",
    b"abc", b"", b"0\r\n\r\n",
])


def _outcome(got: Exchange | HeadRefused | None, reader: HeadReader) -> object:
    if isinstance(got, Exchange):
        req = got.request
        return ("exchange", req.method, req.target, req.version, req.headers, req.keep_alive,
                req.upgrade_offered, req.content_length, req.chunked, req.host,
                req.connection, got.body.done, bytes(got.body._buf))
    if isinstance(got, HeadRefused):
        return ("refused", got.status, got.why)
    return ("more", bytes(reader.buf))


@settings(max_examples=examples(400), deadline=None)
@given(st.lists(_PIECES, min_size=1, max_size=8), st.lists(_PIECES, max_size=3))
def test_take_read_says_what_feed_and_take_say(first: list[bytes], second: list[bytes]
                                               ) -> None:
    reads = [b"".join(first)] + ([b"".join(second)] if second else [])
    fast, slow = HeadReader(LIMITS), HeadReader(LIMITS)
    for data in reads:
        got_fast = fast.take_read(data)
        slow.feed(data)
        got_slow = slow.take()
        assert _outcome(got_fast, fast) == _outcome(got_slow, slow)
        if got_slow is not None:
            break


def test_take_read_of_a_whole_head_keeps_what_follows_for_the_body() -> None:
    reader = HeadReader(Limits())
    got = reader.take_read(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nokGET")
    assert isinstance(got, Exchange)
    assert got.body.read() == b"ok" and got.body.done and got.body.leftover() == b"GET"
    assert not reader.buf


@settings(max_examples=examples(200), deadline=None)
@given(st.lists(st.sampled_from(["a=1", " b=2", "__Host-connect_session=x",
                                 "connect_session=y", "CONNECT_SESSION=z", "", " ", "c",
                                 "__host-connect_login=q", "d=\"e\""]), max_size=5))
def test_a_remembered_cookie_answer_is_the_answer(parts: list[str]) -> None:
    value = ";".join(parts).encode("latin-1")
    login._STRIPPED.clear()
    first = strip_auth_cookie(value)  # worked out (and remembered)
    assert strip_auth_cookie(value) == first  # remembered
    kept = [c for c in parts if c.strip()
            and c.partition("=")[0].strip().lower() not in login.GATEWAY_COOKIES]
    assert first == (";".join(kept).strip().encode("latin-1") if kept else None)


def test_the_remembered_cookie_answers_are_bounded() -> None:
    login._STRIPPED.clear()
    for i in range(login._STRIPPED_MAX + 50):
        strip_auth_cookie(b"a=%d; __Host-connect_session=x" % i)
    strip_auth_cookie(b"a=" + b"x" * (login._STRIPPED_LONGEST + 1))
    assert len(login._STRIPPED) == login._STRIPPED_MAX
    assert all(len(v) <= login._STRIPPED_LONGEST for v in login._STRIPPED)
    assert b"a=0; __Host-connect_session=x" not in login._STRIPPED  # the oldest went


@settings(max_examples=examples(200), deadline=None)
@given(st.lists(st.sampled_from(["a=1", " connect_session=x ", "connect_session=\"y\"", "",
                                 "b", "connect_session", "=z", "connect_session=w=v"]),
                max_size=5), st.integers(min_value=1, max_value=2))
def test_remembered_cookie_pairs_give_the_values_worked_out(parts: list[str], times: int
                                                            ) -> None:
    value = ";".join(parts).encode("latin-1")
    headers = [(b"Host", b"a")] + [(b"Cookie", value)] * times
    cookies._PAIRS.clear()
    first = cookie_values(headers, "connect_session")
    assert cookie_values(headers, "connect_session") == first  # remembered
    expected = []
    for item in parts:
        k, sep, v = item.strip().partition("=")
        if sep and k == "connect_session":
            expected.append(v.strip().strip('"'))
    assert first == expected * times


def test_the_remembered_cookie_pairs_are_bounded() -> None:
    cookies._PAIRS.clear()
    for i in range(cookies._PAIRS_MAX + 10):
        cookie_values([(b"Cookie", b"a=%d" % i)], "a")
    cookie_values([(b"Cookie", b"a=" + b"x" * (cookies._PAIRS_LONGEST + 1))], "a")
    assert len(cookies._PAIRS) == cookies._PAIRS_MAX
    assert b"a=0" not in cookies._PAIRS


_HOSTS = st.sampled_from(["abc.studios.test", "ABC.studios.test:8443", "abc.studios.test.",
                          "studios.test", "-x.studios.test", "a b.studios.test", "abc.other",
                          "abc.studios.test:99999", "[::1]", "x.abc.studios.test", ""])
_TARGETS = st.sampled_from(["/", "/lab?x=1", "", "*", "http://abc.studios.test/",
                            "/_studio/abc/", "/_studio/abc"])


@settings(max_examples=examples(300), deadline=None)
@given(st.lists(st.tuples(_HOSTS, _TARGETS), min_size=1, max_size=6), st.booleans())
def test_a_remembered_studio_host_routes_as_a_fresh_router_does(
        asks: list[tuple[str, str]], path_routing: bool) -> None:
    used = Router("studios.test", "studios.test", path_routing)
    for host, target in asks:
        fresh = Router("studios.test", "studios.test", path_routing)
        assert used.route(host, target) == fresh.route(host, target)


@settings(max_examples=examples(300), deadline=None)
@given(st.lists(_PIECES, min_size=1, max_size=8))
def test_remembered_field_lines_read_as_lines_worked_out(pieces: list[bytes]) -> None:
    head = b"GET / HTTP/1.1\r\n" + b"\r\n".join(pieces) + b"\r\n\r\n"
    headers._SEEN_LINES.clear()
    first = headers.read_head(head, 64, 6)  # every line worked out (and remembered)
    assert headers.read_head(head, 64, 6) == first


def test_the_remembered_field_lines_are_bounded() -> None:
    headers._SEEN_LINES.clear()
    for i in range(headers._SEEN_LINES_MAX + 10):
        headers.read_head(b"GET / HTTP/1.1\r\nHost: a\r\nX-N: %d\r\n\r\n" % i, 64, 6)
    headers.read_head(b"GET / HTTP/1.1\r\nHost: a\r\nX-L: " + b"v" * 2000 + b"\r\n\r\n",
                      64, 6)
    assert len(headers._SEEN_LINES) == headers._SEEN_LINES_MAX
    assert all(len(line) <= headers._SEEN_LINES_LONGEST for line in headers._SEEN_LINES)
    assert b"X-N: 0" not in headers._SEEN_LINES  # the oldest went
