"""Per-tool routing: the prefix stripped before a tool that serves at / and put back on
Location, Refresh and Set-Cookie; the headers a tool expects from its proxy.

The browser's reading of a redirect is modelled by ada-url (the WHATWG URL parser
Node uses), not by our own code: what the gateway sends must, read the way a
browser reads it, stay inside the studio's prefix on the gateway's host.
"""

from __future__ import annotations

from typing import Any

import ada_url
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from studios_gateway.http import toolroute as toolroute_module
from studios_gateway.http.pathmode import ToolPaths, remove_dot_segments, under_prefix
from studios_gateway.http.routing import Mode, Route
from studios_gateway.http.toolroute import ToolRoute, tool_route
from studios_gateway.http.upstream import SessionInfo
from studios_gateway.wire import tools
from tests.unit.test_http_proxy import Harness, parse_responses, sent_request

HOST = "proxy.example.com"
PREFIX = "/_studio/abc/"
PATH_ROUTE = Route("abc", Mode.PATH, "/_studio/abc/x?y=1", PREFIX)
SUB_ROUTE = Route("abc", Mode.SUBDOMAIN, "/x?y=1", "/")

# URLs a tool might send, built the way they go wrong: a scheme or none, some slashes
# (or backslashes), maybe this host, then segments with dot forms a browser resolves.
_start = st.sampled_from(["", "http:", "https:", "HTTP:", "mailto:", "javascript:"])
_slashes = st.sampled_from(["", "/", "//", "///", "\\", "/\\", "\\\\", "\t/"])
_host = st.sampled_from(["", HOST, HOST.upper() + ".", f"user@{HOST}:8080", "evil.example",
                         "proxy%2Eexample.com", "[::1]"])
_segment = st.sampled_from(["..", ".", "%2e%2e", "%2E.", ".%2e", ".\t.", "a", "_studio",
                            "abc", "other", "", "%2F", "x?y", "#f", "?", ";"])
_separator = st.sampled_from(["/", "\\", "/\t"])
tool_urls = st.builds(
    lambda start, slashes, host, segs, seps: start + slashes + host + "".join(
        sep + seg for sep, seg in zip(seps, segs, strict=False)),
    _start, _slashes, _host, st.lists(_segment, max_size=8),
    st.lists(_separator, min_size=8, max_size=8))
segments = st.lists(st.sampled_from(["a", "b", "lab", "x.y", "%20", "_studio", "abc", ""]),
                    max_size=5)
tool_paths = segments.map(lambda s: "/" + "/".join(s))
request_paths = segments.map(lambda s: PREFIX + "/".join(s))


def browser_target(value: str, request_path: str) -> Any:
    """Where a browser on http://HOST<request_path> goes for this Location, or None if
    it would not follow it."""
    base = f"http://{HOST}{request_path}"
    try:
        return ada_url.URL(value, base)
    except ValueError:
        return None


# The plain object ---------------------------------------------------------------------------


@given(tool_urls, request_paths, st.booleans())
def test_nothing_a_tool_sends_leaves_the_prefix_on_this_host(value, request_path, strip) -> None:
    paths = ToolPaths(PREFIX, strip=strip)
    for out in (paths.location(value, HOST, request_path),
                _refresh_url(paths.refresh(f"0; url={value}", HOST, request_path))):
        url = browser_target(out, request_path)
        if url is not None and url.hostname == HOST and url.protocol in ("http:", "https:"):
            assert under_prefix(url.pathname, PREFIX), (value, out, url.href)


def _refresh_url(header: str) -> str:
    return header.split("url=", 1)[1] if "url=" in header else ""


@given(tool_paths, st.sampled_from(["", "?q=1", "#f", "?q=/x#y"]), request_paths)
def test_a_strip_tools_location_comes_back_under_the_prefix(path, tail, request_path) -> None:
    paths = ToolPaths(PREFIX, strip=True)
    path = remove_dot_segments(path)
    assume(not path.startswith("//"))  # a network-path reference names a host, not a path
    if under_prefix(path, PREFIX):
        return  # already public (the tool knows its prefix): left as it is, tested below
    public = PREFIX.rstrip("/") + path
    assert paths.location(path + tail, HOST, request_path) == public + tail
    assert paths.location(f"http://{HOST}:8080{path}{tail}", HOST, request_path) \
        == f"http://{HOST}:8080{public}{tail}"
    assert paths.refresh(f"3;URL='{path}{tail}'", HOST, request_path) == f"3; url={public}{tail}"
    cookie = paths.set_cookie(f"k=v; Path={path}; HttpOnly")
    assert f"Path={public};" in cookie or (path == "/" and f"Path={PREFIX};" in cookie)
    # ... and what the browser then asks for reaches the tool as the tool's own path.
    assert paths.to_tool(public + tail) == path + tail


@given(tool_paths, st.sampled_from(["", "?a=b"]))
def test_stripping_then_restoring_round_trips(path, query) -> None:
    paths = ToolPaths(PREFIX, strip=True)
    public = PREFIX + path[1:] + query
    tool_side = paths.to_tool(public)
    assert tool_side == path + query
    if not under_prefix(path, PREFIX):
        assert paths.to_public(path) + query == public


def cookie_path(set_cookie: str) -> str | None:
    """The path a browser gives this cookie (RFC 6265 5.2.4: the last Path attribute
    that starts with "/"; None: the request's own directory, under the prefix here)."""
    path = None
    for attr in set_cookie.split(";")[1:]:
        name, _, value = attr.partition("=")
        if name.strip().lower() == "path":
            value = value.strip()
            path = value if value.startswith("/") else None
    return path


@given(st.lists(st.text(st.sampled_from("/._ab%=; \t"), max_size=12), max_size=3),
       st.booleans())
def test_no_cookie_path_leaves_the_prefix(paths, strip) -> None:
    header = "k=v" + "".join(f"; Path={p}" for p in paths) + "; HttpOnly"
    path = cookie_path(ToolPaths(PREFIX, strip=strip).set_cookie(header))
    assert path is None or under_prefix(path, PREFIX), (header, path)


def test_a_location_already_under_the_prefix_is_not_prefixed_twice() -> None:
    for strip in (True, False):
        paths = ToolPaths(PREFIX, strip=strip)
        assert paths.location("/_studio/abc/auth-sign-in", HOST, PREFIX) \
            == "/_studio/abc/auth-sign-in"
        assert paths.set_cookie("s=1; Path=/_studio/abc") == "s=1; Path=/_studio/abc"


@pytest.mark.parametrize("value,request_path,expected", [
    ("/y", "/_studio/abc/x", "/_studio/abc/y"),
    ("y", "/_studio/abc/d/x", "/_studio/abc/d/y"),
    ("./?folder=/root", "/_studio/abc/", "/_studio/abc/?folder=/root"),
    ("../../../../etc", "/_studio/abc/a/b", "/_studio/abc/etc"),
    ("/\\proxy.example.com/other", "/_studio/abc/", "//proxy.example.com/_studio/abc/other"),
    ("http:///proxy.example.com/z", "/_studio/abc/", "http://proxy.example.com/_studio/abc/z"),
    ("http:../../z", "/_studio/abc/a/b", "/_studio/abc/z"),
    ("/%2e%2e/%2E./z", "/_studio/abc/", "/_studio/abc/z"),
    ("https://elsewhere.example.org/x", "/_studio/abc/", "https://elsewhere.example.org/x"),
    ("mailto:a@b.example", "/_studio/abc/", "mailto:a@b.example"),
    ("?page=2", "/_studio/abc/list", "/_studio/abc/list?page=2"),
])
def test_locations_for_a_strip_tool(value, request_path, expected) -> None:
    assert ToolPaths(PREFIX, strip=True).location(value, HOST, request_path) == expected


@pytest.mark.parametrize("value,expected", [
    ("5", "5"),
    ("0; url=/next", "0; url=/_studio/abc/next"),
    ("0;URL=\"/next\"", "0; url=/_studio/abc/next"),
    ("1, url=https://elsewhere.example.org/", "1, url=https://elsewhere.example.org/"),
    ("2; /direct", "2; url=/_studio/abc/direct"),
])
def test_refresh(value, expected) -> None:
    assert ToolPaths(PREFIX, strip=True).refresh(value, HOST, PREFIX) == expected


def test_request_targets() -> None:
    strip, keep = ToolPaths(PREFIX, strip=True), ToolPaths(PREFIX)
    assert strip.to_tool("/_studio/abc/") == "/"
    assert strip.to_tool("/_studio/abc/static/x.js?v=1") == "/static/x.js?v=1"
    assert keep.to_tool("/_studio/abc/lab?x") == "/_studio/abc/lab?x"


# The table, per tool and mode ----------------------------------------------------------------


@pytest.mark.parametrize("tool,stripped", [
    ("jupyterlab", False), ("jupyter", False), ("generic", False), ("ride", True),
    ("rstudio", True), ("vscode", True), ("code-server", True), ("xpra", True),
])
def test_each_tool_in_path_mode(tool, stripped) -> None:
    r = tool_route(PATH_ROUTE, tool)
    assert r.unavailable is None
    assert r.target(PATH_ROUTE.upstream_target) == ("/x?y=1" if stripped
                                                      else "/_studio/abc/x?y=1")
    headers = dict(r.request_headers([(b"Host", b"h")]))
    assert (b"X-Forwarded-Prefix" in headers) == stripped
    if stripped:
        assert headers[b"X-Forwarded-Prefix"] == b"/_studio/abc"


@pytest.mark.parametrize("tool", sorted(tools.TOOL_NAMES))
def test_each_tool_in_subdomain_mode_is_passed_unchanged(tool) -> None:
    r = tool_route(SUB_ROUTE, tool)
    assert r.unavailable is None and r.paths is None
    assert r.target("/x?y=1") == "/x?y=1"
    headers = [(b"Location", b"/elsewhere")]
    assert r.response_headers(headers, HOST, "/x") == (headers, False)
    assert b"X-Forwarded-Prefix" not in dict(r.request_headers([]))


def test_rstudio_root_path_in_both_modes_and_client_copies_dropped() -> None:
    forged = [(b"x-rstudio-root-path", b"/_studio/other"), (b"X-Forwarded-Prefix", b"/evil"),
              (b"Accept", b"*/*")]
    path = tool_route(PATH_ROUTE, "rstudio").request_headers(forged)
    sub = tool_route(SUB_ROUTE, "ride").request_headers(forged)
    assert [v for n, v in path if n.lower() == b"x-rstudio-root-path"] == [b"/_studio/abc"]
    assert [v for n, v in path if n.lower() == b"x-forwarded-prefix"] == [b"/_studio/abc"]
    assert [v for n, v in sub if n.lower() == b"x-rstudio-root-path"] == [b"/"]
    assert not [v for n, v in sub if n.lower() == b"x-forwarded-prefix"]
    assert (b"Accept", b"*/*") in path and (b"Accept", b"*/*") in sub


def test_a_tool_unavailable_in_a_mode_is_said_by_the_table(monkeypatch) -> None:
    spec = tools.ToolSpec("demo", "Demo", unavailable=(("path", "it needs its own host"),))
    monkeypatch.setattr(toolroute_module.tools, "spec_for", lambda name: spec)
    assert tool_route(PATH_ROUTE, "demo").unavailable == "it needs its own host"
    assert tool_route(SUB_ROUTE, "demo").unavailable is None


# Through the proxy ---------------------------------------------------------------------------


def harness(tool: str, path_routing: bool = True) -> Harness:
    h = Harness(path_routing=path_routing)
    h.sessions["abc"] = SessionInfo("abc", tool, True)
    return h


def forwarded(tool: str, head: bytes) -> tuple[Harness, Any, Any]:
    """The request the tool receives for `head` (a request from a browser)."""
    h = harness(tool, path_routing=b" /_studio/" in head)
    p, t = h.client()
    p.dataReceived(head)
    return h, t, sent_request(h.up()[1])[0]


@pytest.mark.parametrize("tool,target,prefix_header", [
    ("vscode", b"/login?x=1", [b"/_studio/abc"]),
    ("jupyter", b"/_studio/abc/login?x=1", []),
])
def test_proxy_strips_or_keeps_and_restores_on_the_way_out(tool, target, prefix_header) -> None:
    h, t, req = forwarded(tool, b"GET /_studio/abc/login?x=1 HTTP/1.1\r\nHost: studios.test\r\n"
                                b"X-Forwarded-Prefix: /evil\r\n\r\n")
    assert req.target == target
    assert [v for n, v in req.headers if n == b"x-forwarded-prefix"] == prefix_header
    h.up()[0].dataReceived(b"HTTP/1.1 302 Found\r\nLocation: /tree\r\nRefresh: 0; url=/r\r\n"
                           b"Set-Cookie: s=1; Path=/\r\nContent-Length: 0\r\n\r\n")
    [(status, headers, _)] = parse_responses(t.value())
    assert (status, headers[b"location"]) == (302, b"/_studio/abc/tree")
    assert headers[b"refresh"] == b"0; url=/_studio/abc/r"
    assert headers[b"set-cookie"] == b"s=1; Path=/_studio/abc/"


def test_proxy_serves_xpra_in_path_mode_with_its_websocket_stripped() -> None:
    h, t, req = forwarded("xpra", b"GET /_studio/abc/ HTTP/1.1\r\nHost: studios.test\r\n"
                                  b"Connection: Upgrade\r\nUpgrade: websocket\r\n"
                                  b"Sec-WebSocket-Key: x\r\n\r\n")
    assert req.target == b"/" and dict(req.headers)[b"upgrade"] == b"websocket"
    h.up()[0].dataReceived(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                           b"Connection: Upgrade\r\n\r\n")
    assert t.value().startswith(b"HTTP/1.1 101 ")


def test_proxy_sends_rstudio_its_root_path_in_subdomain_mode_too() -> None:
    _, _, req = forwarded("rstudio", b"GET /x HTTP/1.1\r\nHost: abc.studios.test\r\n"
                                     b"X-RStudio-Root-Path: /forged\r\n\r\n")
    assert req.target == b"/x"
    assert [v for n, v in req.headers if n == b"x-rstudio-root-path"] == [b"/"]


def test_proxy_answers_with_a_page_where_a_tool_cannot_work(monkeypatch) -> None:
    def unavailable(route: Route, tool: str) -> ToolRoute:
        return ToolRoute(tools.spec_for(tool), route.mode, None, (), "no reason at all")

    monkeypatch.setattr("studios_gateway.http.proxy.tool_route", unavailable)
    h = harness("xpra")
    p, t = h.client()
    p.dataReceived(b"GET /_studio/abc/ HTTP/1.1\r\nHost: studios.test\r\n\r\n")
    [(status, _, body)] = parse_responses(t.value())
    assert status == 501 and b"Xpra" in body and b"no reason at all" in body
    assert not h.upstream.conns


# Service-Worker-Allowed: path mode keeps a worker's scope inside the studio ----------------


def browser_max_scope(value: str, script_path: str) -> str | None:
    """The widest scope a browser lets a worker of http://HOST<script_path> take when the
    script comes with `Service-Worker-Allowed: value` (the Service Workers spec's Update
    step: the value parsed against the script's URL; another origin: no scope at all)."""
    script = f"http://{HOST}{script_path}"
    try:
        url = ada_url.URL(value, script)
    except ValueError:
        return None
    return url.pathname if url.origin == ada_url.URL(script).origin else None


@given(tool_urls, request_paths, st.booleans())
def test_no_service_worker_scope_leaves_the_prefix(value, request_path, strip) -> None:
    """A scope is a plain prefix of the path: `/_studio/abc` without its slash would let
    the worker take `/_studio/abcd/`, so the check is against PREFIX with its slash."""
    out = ToolPaths(PREFIX, strip=strip).service_worker_allowed(value, HOST, request_path)
    scope = browser_max_scope(out, request_path)
    assert scope is None or scope.startswith(PREFIX), (value, out, scope)


@pytest.mark.parametrize("value,strip,expected", [
    ("/", False, PREFIX),  # the whole proxy host: the gateway's login, every studio
    ("/", True, PREFIX),  # a strip tool's root (code-server's own worker) is the studio's
    ("/_connect/", False, PREFIX),
    ("/_studio/", False, PREFIX),
    ("/_studio/abc", False, PREFIX),  # no slash: a prefix of /_studio/abcd/ too
    ("/_studio/other/", False, PREFIX),
    ("/_studio/abc/../other/", False, PREFIX),
    ("/_studio/abc/%2e%2e/", False, PREFIX),
    ("..\\..\\", False, PREFIX),
    (f"http://{HOST}/", False, PREFIX),
    ("//evil.example/", False, PREFIX),
    ("/_studio/abc/", False, PREFIX),  # inside: left as it is
    ("/_studio/abc/lab/", False, "/_studio/abc/lab/"),
    ("./", False, "/_studio/abc/static/"),
    ("../", False, PREFIX),
    ("/lab/", True, "/_studio/abc/lab/"),
])
def test_service_worker_allowed_in_path_mode(value, strip, expected) -> None:
    got = ToolPaths(PREFIX, strip=strip).service_worker_allowed(
        value, HOST, PREFIX + "static/sw.js")
    assert got == expected


@pytest.mark.parametrize("compiled_lane", [True, False])
@pytest.mark.parametrize("tool,path_routing,expected", [
    ("jupyter", True, b"/_studio/abc/"),
    ("vscode", True, b"/_studio/abc/"),  # code-server sends "/" for its own worker
    ("jupyter", False, b"/"),  # subdomain mode: the studio's own origin, left as it is
])
def test_proxy_keeps_a_service_workers_scope_in_the_studio(tool, path_routing, expected,
                                                           compiled_lane) -> None:
    """Both ways back: the compiled lane declines the header (tests/unit/test_answer_lane.py),
    so the Python way rewrites it."""
    h = Harness(path_routing=path_routing, compiled_lane=compiled_lane)
    h.sessions["abc"] = SessionInfo("abc", tool, True)
    p, t = h.client()
    target = b"/_studio/abc/sw.js" if path_routing else b"/sw.js"
    host = b"studios.test" if path_routing else b"abc.studios.test"
    p.dataReceived(b"GET " + target + b" HTTP/1.1\r\nHost: " + host + b"\r\n\r\n")
    h.up()[0].dataReceived(b"HTTP/1.1 200 OK\r\nContent-Type: text/javascript\r\n"
                           b"Service-Worker-Allowed: /\r\nContent-Length: 2\r\n\r\n;;")
    [(status, headers, body)] = parse_responses(t.value())
    assert (status, body) == (200, b";;")
    assert headers[b"service-worker-allowed"] == expected


@pytest.mark.parametrize("compiled_lane", [True, False])
@pytest.mark.parametrize("path_routing", [True, False])
def test_proxy_drops_a_tools_policies_for_the_whole_origin_in_path_mode(
        path_routing: bool, compiled_lane: bool) -> None:
    """A tool's NEL with its Report-To group reached the browser, which then kept the
    policy for the whole origin: in path mode the proxy host, so it reported the URLs the
    visitor opened afterwards there (the gateway's pages, other studios) to the tool's
    collector (shown in Chromium, tests/integration/test_hostile_studio.py). Dropped in
    path mode, both ways back (the compiled lane declines them); a studio's own origin in
    subdomain mode keeps them, as a page's own Reporting-Endpoints in both."""
    h = Harness(path_routing=path_routing, compiled_lane=compiled_lane)
    h.sessions["abc"] = SessionInfo("abc", "jupyter", True)
    p, t = h.client()
    target = b"/_studio/abc/lab" if path_routing else b"/lab"
    host = b"studios.test" if path_routing else b"abc.studios.test"
    p.dataReceived(b"GET " + target + b" HTTP/1.1\r\nHost: " + host + b"\r\n\r\n")
    h.up()[0].dataReceived(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n"
        b'NEL: {"report_to":"g","max_age":86400,"success_fraction":1.0}\r\n'
        b'Report-To: {"group":"g","max_age":86400,"endpoints":[{"url":"https://x.test/"}]}\r\n'
        b'Reporting-Endpoints: g="https://x.test/"\r\n'
        b"Strict-Transport-Security: max-age=31536000; includeSubDomains\r\n"
        b'Alt-Svc: h2="alt.x.test:443"\r\nAccept-CH: Sec-CH-UA-Model\r\n'
        b"Content-Length: 2\r\n\r\nhi")
    [(status, headers, body)] = parse_responses(t.value())
    assert (status, body) == (200, b"hi")
    assert headers[b"reporting-endpoints"] == b'g="https://x.test/"'
    origin_wide = (b"nel", b"report-to", b"strict-transport-security", b"alt-svc",
                   b"accept-ch")
    assert [name in headers for name in origin_wide] == [not path_routing] * 5


# The tool's own logout -----------------------------------------------------------------------


class _Who:
    subject = "alice"


@pytest.mark.parametrize("fast", [False, True])  # the login and session known already, or not
@pytest.mark.parametrize("head", [
    b"GET /_studio/abc/logout HTTP/1.1\r\nHost: studios.test\r\n\r\n",
    b"GET /_studio/abc/logout?next=/lab HTTP/1.1\r\nHost: studios.test\r\n\r\n",
    b"HEAD /logout HTTP/1.1\r\nHost: abc.studios.test\r\n\r\n",
])
def test_jupyterlabs_log_out_leads_to_the_gateways_logout(head, fast) -> None:
    """JupyterLab's File > Log Out opens <prefix>logout, where a JupyterLab whose login is
    off answers "Cannot log out. Jupyter Server authentication is disabled." and the
    gateway's login goes on: the gateway sends the browser to its own logout page."""
    h = harness("jupyter", path_routing=b" /_studio/" in head)
    if fast:
        h.factory.fast = lambda request, sid: (_Who(), h.sessions[sid])
    p, t = h.client()
    p.dataReceived(head)
    [(status, headers, _)] = parse_responses(t.value(), head.split(b" ", 1)[0])
    assert (status, headers[b"location"]) == (303, b"/_connect/logout")
    assert not h.upstream.conns


@pytest.mark.parametrize("tool,head", [
    ("jupyter", b"POST /_studio/abc/logout HTTP/1.1\r\nHost: studios.test\r\n"
                b"Content-Length: 0\r\n\r\n"),
    ("jupyter", b"GET /_studio/abc/lab/logout HTTP/1.1\r\nHost: studios.test\r\n\r\n"),
    ("jupyter", b"GET /_studio/abc/logout/ HTTP/1.1\r\nHost: studios.test\r\n\r\n"),
    ("vscode", b"GET /_studio/abc/logout HTTP/1.1\r\nHost: studios.test\r\n\r\n"),
    ("generic", b"GET /logout HTTP/1.1\r\nHost: abc.studios.test\r\n\r\n"),
])
def test_other_logout_paths_and_tools_reach_the_tool(tool, head) -> None:
    _, _, req = forwarded(tool, head)
    assert req.target.rstrip(b"/").endswith(b"logout")
