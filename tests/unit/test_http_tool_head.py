"""The tool's request head in one pass (request_headers with the tool route's names to
drop and Host first) is the head the three passes it replaced wrote: request_headers,
then ToolRoute.request_headers, then Host moved first (hypothesis; the earlier
tool_head is kept here as the reference)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from studios_gateway.auth.login import strip_auth_cookies
from studios_gateway.http.exchange import Exchange, Limits, NotForwardable, ToolCodec
from studios_gateway.http.h1 import RequestBody, RequestHead
from studios_gateway.http.headers import (
    SESSION_HEADER,
    Headers,
    connection_tokens,
    request_headers,
)
from studios_gateway.http.routing import Mode, Route
from studios_gateway.http.toolroute import tool_route
from tests.support.examples import examples


def reference_tool_head(ex: Exchange, *, peer: str | None, trusted: bool, scheme: str
                        ) -> bytes | str:
    """Exchange.tool_head before its one pass (without the response reader's expect)."""
    assert ex.route is not None
    req = ex.request
    raw = strip_auth_cookies(req.headers)
    framing = None
    if req.chunked:
        framing = (b"Transfer-Encoding", b"chunked")
    elif req.content_length is not None:
        for k, v in raw:
            if k.lower() == b"content-length":
                framing = (b"Content-Length", v.strip())
    try:
        headers = request_headers(raw, peer=peer, trusted=trusted, scheme=scheme,
                                  subject=ex.subject, upgrade=ex.upgrade, framing=framing)
    except ValueError as e:
        return str(e)
    target = ex.route.upstream_target
    if ex.tool is not None:
        headers, target = ex.tool.request_headers(headers), ex.tool.target(target)
    headers.append((SESSION_HEADER, ex.route.session_id.encode()))  # (since http.loop)
    lines = [b"%s %s HTTP/1.1\r\n" % (req.method, target.encode())]
    rest: list[bytes] = []
    for nv in headers:
        (lines if nv[0].lower() == b"host" else rest).append(b"%s: %s\r\n" % nv)
    lines += rest
    lines.append(b"\r\n")
    return b"".join(lines)


_NAMES = st.sampled_from([b"Connection", b"Upgrade", b"Keep-Alive", b"Content-Length",
                          b"X-Forwarded-For", b"x-forwarded-for", b"X-Forwarded-Proto",
                          b"X-Forwarded-Host", b"X-Forwarded-Prefix", b"x-forwarded-prefix",
                          b"X-RStudio-Root-Path", b"x-rstudio-root-path", b"X-Real-IP",
                          b"Forwarded", b"X-Connect-Sub", b"X-Connect-Session", b"Cookie",
                          b"cookie", b"Accept", b"TE", b"X-Custom", b"Proxy-Connection"])
_VALUES = st.sampled_from([b"", b"a", b"1.2.3.4", b"close", b"upgrade", b"x-custom",
                           b"keep-alive, X-Forwarded-For", b"accept, cookie", b"host",
                           b"x-forwarded-prefix", b"https", b"h.example", b"5",
                           b"a=1; connect_session=x", b"__Host-connect_session=y"])
_ROUTES = st.sampled_from([Route("abc", Mode.SUBDOMAIN, "/x?y=1", "/"),
                           Route("abc", Mode.PATH, "/_studio/abc/x?y=1", "/_studio/abc/")])
_TOOLS = st.sampled_from(["jupyter", "rstudio", "vscode", "xpra", "generic"])


@st.composite
def _exchanges(draw: st.DrawFn) -> Exchange:
    headers: Headers = draw(st.lists(st.tuples(_NAMES, _VALUES), max_size=8))
    host = draw(st.sampled_from([b"Host", b"host"])), b"abc.studios.test"
    headers.insert(draw(st.integers(0, len(headers))), host)
    names = [n.lower() for n, _ in headers]
    length = 5 if b"content-length" in names else None
    chunked = length is None and draw(st.booleans())
    connection = frozenset(connection_tokens(headers))
    upgrade_offered = b"upgrade" in names
    head = RequestHead(draw(st.sampled_from([b"GET", b"POST"])), b"/x", b"1.1", headers,
                       True, upgrade_offered, length, chunked, host[1], connection)
    ex = Exchange(head, RequestBody(b"", head, 1024) if not chunked else _NoBody(), Limits())
    ex.route = route = draw(_ROUTES)
    ex.tool = tool_route(route, draw(_TOOLS)) if draw(st.booleans()) else None
    ex.subject = draw(st.sampled_from(["alice", "b\r\nad"]))
    ex.upgrade = b"upgrade" in connection and upgrade_offered
    return ex


class _NoBody:
    done = False


@settings(max_examples=examples(1500))
@given(_exchanges(), st.sampled_from([None, "10.0.0.9", "::1"]), st.booleans())
def test_one_pass_is_the_three(ex: Exchange, peer: str | None, trusted: bool) -> None:
    kw = dict(peer=peer, trusted=trusted, scheme="https")
    expected = reference_tool_head(ex, **kw)  # type: ignore[arg-type]
    try:
        got: bytes | str = ex.tool_head(ToolCodec(1024), **kw)  # type: ignore[arg-type]
    except NotForwardable as e:
        got = str(e)
    assert got == expected
