"""A tool's Set-Cookie stays with its studio: host-only, never named like the gateway's."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from studios_gateway.auth.login import GATEWAY_COOKIES
from studios_gateway.http.exchange import Exchange, HeadReader, Limits, Step, ToolCodec
from studios_gateway.http.headers import tool_set_cookie, tool_set_cookies
from studios_gateway.http.routing import Router


def browser_view(value: bytes) -> tuple[str, list[str]]:
    """How a browser reads a Set-Cookie (RFC 6265 5.2): the name it sends the cookie back
    under and its attribute names, lower-cased. A cookie with an empty name goes back as
    its value alone (RFC 6265bis 5.7.3: ``=connect_session=x`` is sent as
    ``connect_session=x``), which the gateway's Cookie parser reads as that name."""
    parts = value.decode("latin-1").split(";")
    name, eq, rest = parts[0].partition("=")
    attrs = [a.partition("=")[0].strip(" \t").lower() for a in parts[1:]]
    name = name.strip(" \t") if eq else ""
    if not name:
        name = (rest if eq else parts[0]).partition("=")[0].strip(" \t")
    return name, attrs


@pytest.mark.parametrize("before, after", [
    (b"a=1; Domain=studios.test; Path=/", b"a=1; Path=/"),
    (b"a=1;domain=.studios.test", b"a=1"),
    (b"a=1; Path=/; DOMAIN = studios.test ; HttpOnly", b"a=1; Path=/; HttpOnly"),
    (b"a=1; Domain", b"a=1"),
    (b"a=1; Path=/x; Secure", b"a=1; Path=/x; Secure"),  # unchanged, same bytes
    (b"domain=1; Path=/", b"domain=1; Path=/"),  # a cookie named domain is just a cookie
    # a tool's cookies do not outrank the gateway's (Priority=High) when a browser evicts
    (b"a=1; Path=/; Priority=High", b"a=1; Path=/"),
    (b"a=1; priority = high; Domain=x.test; HttpOnly", b"a=1; HttpOnly"),
])
def test_domain_is_removed(before: bytes, after: bytes) -> None:
    assert tool_set_cookie(before, GATEWAY_COOKIES) == after


@pytest.mark.parametrize("value", [
    b"connect_login=x; Path=/_connect/", b"connect_session=x", b"__Host-connect_session=x",
    b"__host-CONNECT_SESSION=x; Path=/", b" connect_login =x", b"__Secure-connect_login=x",
    # nameless: a browser sends the value alone, "connect_session=x", back
    b"=connect_session=x; Path=/lab", b" = connect_login=x", b"=__Host-connect_session=x",
    b"connect_handoff", b"=connect_handoff; Path=/_connect/",
])
def test_the_gateways_names_are_dropped(value: bytes) -> None:
    assert tool_set_cookie(value, GATEWAY_COOKIES) is None


def test_other_headers_and_cookies_pass() -> None:
    headers = [(b"Content-Type", b"text/html"), (b"Set-Cookie", b"_xsrf=t; Path=/"),
               (b"set-cookie", b"connect_login=evil; Domain=studios.test"),
               (b"Set-Cookie", b"s=1; Domain=studios.test")]
    out, changed = tool_set_cookies(headers, GATEWAY_COOKIES)
    assert changed
    assert out == [(b"Content-Type", b"text/html"), (b"Set-Cookie", b"_xsrf=t; Path=/"),
                   (b"Set-Cookie", b"s=1")]
    assert tool_set_cookies(out, GATEWAY_COOKIES) == (out, False)


_NAMES = st.one_of(
    st.sampled_from(sorted(GATEWAY_COOKIES)).flatmap(
        lambda n: st.tuples(st.sampled_from(["", " ", "\t"]), st.sampled_from([n, n.upper(),
                            n.title()]), st.sampled_from(["", " "])).map("".join)),
    st.from_regex(r"[A-Za-z0-9_.\-]{0,12}", fullmatch=True))
_ATTR_NAMES = st.sampled_from(["Domain", "domain", " DOMAIN", "Domain ", "Path", "Secure",
                               "HttpOnly", "Max-Age", "SameSite", "x"])
_ATTRS = st.lists(st.tuples(_ATTR_NAMES, st.sampled_from(["", "=", "=studios.test",
                                                          "=.studios.test ", "=/", "= 1"])
                            ).map("".join), max_size=5)


_VALUES = st.one_of(
    st.from_regex(r"[ -:<-~]{0,10}", fullmatch=True),
    # what a nameless cookie is sent back as: a value that starts with a gateway name
    st.tuples(_NAMES, st.sampled_from(["=", " =", ""]),
              st.from_regex(r"[ -:<-~]{0,10}", fullmatch=True)).map("".join))


@given(name=_NAMES, eq=st.sampled_from(["=", ""]), value=_VALUES, attrs=_ATTRS)
def test_no_cookie_a_browser_keeps_has_a_domain_or_a_gateway_name(
        name: str, eq: str, value: str, attrs: list[str]) -> None:
    raw = ";".join([f"{name}{eq}{value}", *attrs]).encode("latin-1")
    out, _ = tool_set_cookies([(b"Set-Cookie", raw)], GATEWAY_COOKIES)
    for _, sent in out:
        cookie_name, attr_names = browser_view(sent)
        assert "domain" not in attr_names
        assert cookie_name.lower() not in GATEWAY_COOKIES


def test_the_exchange_sends_the_browser_only_the_tools_own_cookies() -> None:
    reader = HeadReader(Limits())
    reader.feed(b"GET / HTTP/1.1\r\nHost: abc.studios.test\r\n\r\n")
    ex = reader.take()
    assert isinstance(ex, Exchange) and ex.begin("http", None, 0) is None
    ex.route = Router("studios.test", "studios.test").route(ex.host, ex.target)  # type: ignore
    tool = ToolCodec(1 << 16)
    ex.tool_head(tool, peer=None, trusted=False, scheme="http")
    ex.pump_request(tool)
    tool.receive(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n"
                 b"Set-Cookie: connect_login=planted; Domain=studios.test; Path=/_connect/\r\n"
                 b"Set-Cookie: __Host-connect_session=planted; Path=/; Secure\r\n"
                 b"Set-Cookie: theme=dark; Domain=.studios.test; Path=/\r\n\r\n")
    out, step, _ = ex.pump_response(tool)
    assert step is Step.COMPLETE
    cookies = [line for line in out.split(b"\r\n") if line.lower().startswith(b"set-cookie")]
    assert cookies == [b"Set-Cookie: theme=dark; Path=/"]


@pytest.mark.parametrize("before, after", [
    (b"_xsrf=t; Path=/", b"_xsrf=t; Path=/; Secure"),
    (b"a=1; Domain=studios.test; HttpOnly", b"a=1; HttpOnly; Secure"),
    (b"a=1; secure; Path=/", b"a=1; secure; Path=/"),  # has it: the same bytes
    (b"a=1; Path=/; Secure=", b"a=1; Path=/; Secure="),  # a browser reads this as Secure
])
def test_over_https_a_tool_cookie_is_secure(before: bytes, after: bytes) -> None:
    """JupyterLab sets _xsrf and its user cookie without Secure (it sees plain HTTP from
    the proxy): over HTTPS the browser would send them over plain HTTP to the same host,
    to any port. Over HTTPS each tool cookie is Secure; over HTTP they stay as they are."""
    assert tool_set_cookie(before, GATEWAY_COOKIES, secure=True) == after
    assert "secure" in browser_view(after)[1]
    assert tool_set_cookie(before, GATEWAY_COOKIES, secure=False) == \
        tool_set_cookie(before, GATEWAY_COOKIES)


def test_a_tools_clear_site_data_never_reaches_the_browser() -> None:
    """A tool answering `Clear-Site-Data: "cookies"` made the browser delete every cookie of
    the site (the registrable domain; shown in Chromium: a.gw.localhost's answer wiped
    gw.localhost's and b.gw.localhost's, HttpOnly ones too): the proxy host's login and
    every other studio's, so a studio could sign each visitor out of everything (with
    one-use login links, until an administrator made new ones). The header is dropped,
    on a plain answer and on a WebSocket's 101."""
    from studios_gateway.http.headers import client_response_headers

    headers = [(b"Content-Type", b"text/html"), (b"Clear-Site-Data", b'"cookies"'),
               (b"clear-site-data", b'"*"'), (b"Set-Cookie", b"a=1")]
    out, names, _ = client_response_headers(headers, GATEWAY_COOKIES)
    assert out == [(b"Content-Type", b"text/html"), (b"Set-Cookie", b"a=1")]
    assert b"clear-site-data" not in names
    upgraded, changed = tool_set_cookies(headers, GATEWAY_COOKIES)
    assert changed and upgraded == out
