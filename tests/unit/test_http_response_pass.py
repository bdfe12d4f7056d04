"""A tool's final response headers in one pass (client_response_headers) are what the
filters they replaced gave one after the other: response_headers (hop-by-hop out), then
tool_set_cookies (Domain out, the gateway's cookie names dropped), then the framer's
lower-cased names (hypothesis)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from studios_gateway.auth.login import GATEWAY_COOKIES
from studios_gateway.http.headers import (
    Headers,
    client_response_headers,
    connection_options,
    response_headers,
    tool_set_cookies,
)
from tests.support.examples import examples

_NAMES = st.sampled_from([b"Content-Length", b"content-length", b"Transfer-Encoding",
                          b"Connection", b"connection", b"Keep-Alive", b"Upgrade", b"TE",
                          b"Trailer", b"Proxy-Authenticate", b"Set-Cookie", b"set-cookie",
                          b"SET-COOKIE", b"Location", b"X-Custom", b"x-custom", b"Host",
                          b"Date", b"Server"])
_VALUES = st.sampled_from([
    b"", b"5", b"close", b"keep-alive", b"x-custom", b"X-Custom, close", b"host", b"upgrade",
    b"date, server", b"a=1", b"a=1; Domain=example.com; Path=/", b"a=1;domain=x",
    b"__Host-connect_session=x; Path=/", b" __host-CONNECT_SESSION = y",
    b"connect_login=z; Domain=x", b"noequals",
    b"b=2; Secure; HttpOnly", b"c=3;  Domain = .x ; Path=/p", b"=v; Domain=x", b"chunked"])
_HEADERS = st.lists(st.tuples(_NAMES, _VALUES), max_size=10)


def reference(headers: Headers) -> tuple[Headers, list[bytes], bool]:
    out, changed = tool_set_cookies(response_headers(headers, upgrade=False), GATEWAY_COOKIES)
    return out, [n.lower() for n, _ in out], changed


@settings(max_examples=examples(1500))
@given(_HEADERS)
def test_one_pass_is_the_filters(headers: Headers) -> None:
    assert client_response_headers(headers, GATEWAY_COOKIES) == reference(headers)


@settings(max_examples=examples(500))
@given(st.lists(st.sampled_from([b"keep-alive", b"Close", b" upgrade", b"X-Custom ", b"",
                                 b" ", b"\t", b"a" * 70]), max_size=4).map(b",".join))
def test_connection_options_remembered_are_the_split(value: bytes) -> None:
    split = {t.strip().lower() for t in value.split(b",") if t.strip()}
    assert connection_options(value) == split
    assert connection_options(value) == split  # remembered (or, when long, split again)
