"""Head checks, forwarded header lists and path-mode rewrites: plain functions."""

from __future__ import annotations

import ipaddress

import pytest

from studios_gateway.http.headers import (
    check_head,
    field_value_ok,
    is_trusted,
    request_headers,
    response_headers,
)
from studios_gateway.http.pathmode import ToolPaths, rewrite_set_cookie


def head(*fields: str, line: str = "GET / HTTP/1.1") -> bytes:
    return ("\r\n".join([line, *fields]) + "\r\n\r\n").encode("latin-1")


def problem(h: bytes) -> int | None:
    p = check_head(h, max_request_line=100, max_header_count=5)
    return None if p is None else p.status


def test_good_head() -> None:
    assert problem(head("Host: a")) is None
    assert problem(head("Host: a", "Content-Length: 5", line="POST / HTTP/1.1")) is None
    assert problem(head("Host: a", "Transfer-Encoding: Chunked")) is None


@pytest.mark.parametrize("fields,line", [
    (("Host: a", "Content-Length: 5", "Transfer-Encoding: chunked"), "POST / HTTP/1.1"),
    (("Host: a", "Content-Length: 5", "Content-Length: 5"), "POST / HTTP/1.1"),
    (("Host: a", "Content-Length: 5, 5"), "POST / HTTP/1.1"),
    (("Host: a", "Content-Length: -1"), "POST / HTTP/1.1"),
    (("Host: a", "Content-Length: 0x10"), "POST / HTTP/1.1"),
    (("Host: a", "Transfer-Encoding: gzip, chunked"), "POST / HTTP/1.1"),
    (("Host: a", "Transfer-Encoding: chunked", "Transfer-Encoding: chunked"), "POST / HTTP/1.1"),
    (("Host: a", "Transfer-Encoding: chunked"), "POST / HTTP/1.0"),
    (("Host: a", "X-A: b", " folded"), "GET / HTTP/1.1"),
    (("Host: a", "X-A: b", "\tfolded"), "GET / HTTP/1.1"),
    ((), "GET / HTTP/1.1"),
    (("Host: a", "Host: b"), "GET / HTTP/1.1"),
    (("Host: a", "Bad Name: x"), "GET / HTTP/1.1"),
    (("Host: a", "NoColon"), "GET / HTTP/1.1"),
    (("Host: a",), "GET / HTTP/2.0"),
    (("Host: a",), "GET  / HTTP/1.1"),
    (("Host: a",), "GET / HTTP/1.1 x"),
])
def test_smuggling_shapes_are_400(fields: tuple[str, ...], line: str) -> None:
    assert problem(head(*fields, line=line)) == 400


def test_limits() -> None:
    assert problem(head("Host: a", line="GET /" + "a" * 200 + " HTTP/1.1")) == 414
    assert problem(head("Host: a", *[f"X-{i}: 1" for i in range(5)])) == 431


def test_bare_lf_and_cr() -> None:
    assert problem(b"GET / HTTP/1.1\r\nHost: a\nX: y\r\n\r\n") == 400
    assert problem(b"GET / HTTP/1.1\r\nHost: a\rX: y\r\n\r\n") == 400


NETS = [ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("fd00::/8")]


def test_trust() -> None:
    assert is_trusted("10.1.2.3", NETS)
    assert is_trusted("::ffff:10.1.2.3", NETS)
    assert is_trusted("fd00::1", NETS)
    assert not is_trusted("192.168.1.1", NETS)
    assert not is_trusted("10.1.2.3", [])
    assert not is_trusted(None, NETS)
    assert not is_trusted("garbage", NETS)


def names(headers: list[tuple[bytes, bytes]]) -> list[bytes]:
    return [k.lower() for k, _ in headers]


def get(headers: list[tuple[bytes, bytes]], name: bytes) -> list[bytes]:
    return [v for k, v in headers if k.lower() == name]


CLIENT = [(b"Host", b"abc.example.com"), (b"Connection", b"keep-alive, X-Secret"),
          (b"Keep-Alive", b"timeout=5"), (b"X-Secret", b"1"), (b"Proxy-Authorization", b"x"),
          (b"TE", b"trailers"), (b"Trailer", b"X"), (b"Upgrade", b"websocket"),
          (b"X-Connect-Sub", b"admin"), (b"x-connect-sub", b"root"),
          (b"X-Forwarded-For", b"1.2.3.4"), (b"X-Forwarded-Proto", b"https"),
          (b"X-Forwarded-Host", b"evil"), (b"X-Real-IP", b"1.2.3.4"),
          (b"X-Forwarded-Port", b"1"), (b"X-Scheme", b"https"), (b"X-Original-URL", b"/admin"),
          (b"Content-Length", b"3"), (b"Accept", b"*/*")]


def test_request_headers_untrusted_peer() -> None:
    out = request_headers(CLIENT, peer="192.0.2.1", trusted=False, scheme="http",
                          subject="alice", upgrade=False, framing=(b"Content-Length", b"3"))
    for gone in (b"connection", b"keep-alive", b"x-secret", b"proxy-authorization", b"te",
                 b"trailer", b"upgrade", b"x-real-ip", b"x-forwarded-port", b"x-scheme",
                 b"x-original-url"):
        assert gone not in names(out)
    assert get(out, b"x-connect-sub") == [b"alice"]
    assert get(out, b"x-forwarded-for") == [b"192.0.2.1"]
    assert get(out, b"x-forwarded-proto") == [b"http"]
    assert get(out, b"x-forwarded-host") == [b"abc.example.com"]
    assert get(out, b"content-length") == [b"3"]
    assert get(out, b"accept") == [b"*/*"] and get(out, b"host") == [b"abc.example.com"]


def test_request_headers_trusted_peer_appends() -> None:
    out = request_headers(CLIENT + [(b"X-Forwarded-For", b"5.6.7.8")], peer="10.0.0.9",
                          trusted=True, scheme="http", subject="alice", upgrade=False,
                          framing=None)
    assert get(out, b"x-forwarded-for") == [b"1.2.3.4, 5.6.7.8, 10.0.0.9"]
    assert get(out, b"x-forwarded-proto") == [b"https"]
    assert get(out, b"x-connect-sub") == [b"alice"]
    assert get(out, b"content-length") == []


def test_request_headers_upgrade() -> None:
    out = request_headers([(b"Host", b"h"), (b"Connection", b"Upgrade"),
                           (b"Upgrade", b"websocket")], peer=None, trusted=False,
                          scheme="https", subject="s", upgrade=True, framing=None)
    assert get(out, b"upgrade") == [b"websocket"] and get(out, b"connection") == [b"upgrade"]


def test_response_headers() -> None:
    out = response_headers([(b"Connection", b"close, X-Y"), (b"X-Y", b"1"),
                            (b"Transfer-Encoding", b"chunked"), (b"Set-Cookie", b"a=b"),
                            (b"Upgrade", b"websocket")], upgrade=False)
    assert names(out) == [b"set-cookie"]


P = "/_studio/abc/"


@pytest.mark.parametrize("before,after", [
    ("/login", "/_studio/abc/login"),
    ("/", "/_studio/abc/"),
    ("/_studio/abc/lab", "/_studio/abc/lab"),
    ("/_studio/abc", "/_studio/abc"),
    ("/_studio/other/", "/_studio/abc/_studio/other/"),
    ("http://proxy.example.com/x?y=1", "http://proxy.example.com/_studio/abc/x?y=1"),
    ("https://PROXY.example.com:8443/x", "https://PROXY.example.com:8443/_studio/abc/x"),
    ("//proxy.example.com/x", "//proxy.example.com/_studio/abc/x"),
    ("https://elsewhere.example.org/x", "https://elsewhere.example.org/x"),
    ("relative/path", "/_studio/abc/relative/path"),
])
def test_location(before: str, after: str) -> None:
    assert ToolPaths(P).location(before, "proxy.example.com", P) == after


@pytest.mark.parametrize("before,after", [
    ("a=b; Path=/", "a=b; Path=/_studio/abc/"),
    ("a=b; path=/lab; HttpOnly", "a=b; Path=/_studio/abc/lab; HttpOnly"),
    ("a=b; Path=/_studio/abc/x", "a=b; Path=/_studio/abc/x"),
    ("a=b; HttpOnly", "a=b; HttpOnly"),
    ("a=b; Path=weird", "a=b; Path=/_studio/abc/"),
    ("a=/; Secure; Path=/", "a=/; Secure; Path=/_studio/abc/"),
])
def test_set_cookie(before: str, after: str) -> None:
    assert rewrite_set_cookie(before, P) == after


def test_field_values_that_may_be_sent_as_they_are() -> None:
    for ok in (b"", b"alice", b"a b\tc", "j\u00f6rg".encode(), b"x=1; y"):
        assert field_value_ok(ok), ok
    for bad in (b"a\r\nX-Evil: 1", b"a\nb", b"a\rb", b"a\x00b", b" a", b"a ", b"a\x7f"):
        assert not field_value_ok(bad), bad


def test_a_subject_that_is_no_header_value_is_refused() -> None:
    with pytest.raises(ValueError):
        request_headers(CLIENT, peer="192.0.2.1", trusted=False, scheme="http",
                        subject="alice\r\nX-Connect-Sub: root", upgrade=False, framing=None)


def test_our_headers_spelt_with_underscores_go_too() -> None:
    """X_Connect_Sub is X-Connect-Sub to a WSGI or CGI tool (both are HTTP_X_CONNECT_SUB,
    the client's first: Python's wsgiref joins them as 'admin,alice'); the client's copies of
    our headers and the forwarding ones went only in their spelling with '-'."""
    sent = [(b"Host", b"abc.example.com"), (b"X_Connect_Sub", b"admin"),
            (b"x_connect_session", b"other"), (b"X_Forwarded_For", b"1.2.3.4"),
            (b"X_Real_IP", b"1.2.3.4"), (b"X_Custom", b"kept")]
    for trusted in (False, True):
        out = request_headers(sent, peer="192.0.2.1", trusted=trusted, scheme="http",
                              subject="alice", upgrade=False, framing=None)
        environ = [k.decode().upper().replace("-", "_") for k, _ in out]
        for ours in ("X_CONNECT_SUB", "X_FORWARDED_FOR"):
            assert environ.count(ours) == 1, (trusted, out)
        assert get(out, b"x-connect-sub") == [b"alice"]
        assert get(out, b"x-forwarded-for") == [b"192.0.2.1"]
        assert "X_CONNECT_SESSION" not in environ
        assert ("X_REAL_IP" in environ) is trusted  # (a trusted proxy's goes on, as X-Real-IP)
        assert get(out, b"x_custom") == [b"kept"]
