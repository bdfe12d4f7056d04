"""The compiled lane's way back (studios_gateway/http/_answer.c) held against its Python
twin, the way every other answer takes (ResponseReader's llhttp, the header pass, the
framer): whatever the C takes gives the client the same bytes, the exchange the same
state and the tool connection the same reuse; what it declines is left untouched for
the Python way. Hypothesis makes the responses, well-formed and hostile.

The extension must be built (scripts/setup builds it into the source tree, pip into the
install): a missing build fails here rather than skipping, since every test of the lane
would otherwise pass without running it.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from studios_gateway.config_loading import load_config
from studios_gateway.http import lane
from studios_gateway.http.exchange import Exchange, Step, ToolCodec
from studios_gateway.http.routing import Router
from studios_gateway.http.toolroute import tool_route
from tests.support.examples import examples
from tests.unit.test_http_exchange import started
from tests.unit.test_http_proxy import Harness

try:
    from studios_gateway.http._answer import answer
except ImportError:  # pragma: no cover - a broken build
    pytest.fail("studios_gateway.http._answer is not built: run scripts/setup "
                "(or: python setup.py build_ext --inplace)", pytrace=False)

GET = b"GET /lab HTTP/1.1\r\nHost: abc.studios.test\r\n\r\n"
ROUTER = Router("studios.test", "studios.test")
PATH_ROUTER = Router("studios.test", "studios.test", True)

NGINX = (b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Fri, 04 Dec 2026 23:00:00 GMT\r\n"
         b"Content-Type: text/plain\r\nContent-Length: 5\r\nLast-Modified: Fri, 04 Dec 2026 "
         b"22:00:00 GMT\r\nConnection: keep-alive\r\nETag: \"1-5\"\r\nAccept-Ranges: bytes"
         b"\r\n\r\nhello")
NODE = (b"HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: 2\r\n"
        b"Date: Fri, 04 Dec 2026 23:00:00 GMT\r\nConnection: keep-alive\r\n"
        b"Keep-Alive: timeout=5\r\n\r\n{}")
TORNADO = (b"HTTP/1.1 200 OK\r\nServer: TornadoServer/6.4\r\nContent-Type: text/css\r\n"
           b"Date: Fri, 04 Dec 2026 23:00:00 GMT\r\nEtag: \"abc\"\r\nContent-Length: 7\r\n"
           b"Cache-Control: max-age=0\r\n\r\nbody{x}")

# A browser's revalidation answered: no body, whatever its Content-Length says.
REVALIDATED = (b"HTTP/1.1 304 Not Modified\r\nServer: TornadoServer/6.4\r\n"
               b"Etag: \"abc\"\r\nContent-Length: 7\r\n\r\n")


def exchange(request: bytes = GET, router: Router = ROUTER, tool: str | None = None
             ) -> tuple[Exchange, ToolCodec]:
    """An exchange whose request went to the tool whole: waiting for its answer."""
    ex = started(request)
    route = router.route(ex.host, ex.target)
    assert route is not None and not isinstance(route, tuple)
    ex.route = route  # type: ignore[assignment]
    if tool is not None:
        ex.tool = tool_route(route, tool)  # type: ignore[arg-type]
    codec = ToolCodec(1 << 16)
    ex.tool_head(codec, "192.0.2.7", False, "http")
    body, step = ex.pump_request(codec)
    assert (body, step) == (b"", Step.COMPLETE)
    return ex, codec


def state(ex: Exchange, codec: ToolCodec) -> tuple[Any, ...]:
    return (ex.response_started, ex.head_sent, ex.status, ex.framer.done,
            ex.framer.keep_alive, ex.reusable(codec), codec.idle(), ex.leftover(),
            codec.events, codec.error)


PATH_GET = b"GET /_studio/abc/lab/tree?x=1 HTTP/1.1\r\nHost: studios.test\r\n\r\n"
# (request, router, tool): both routing modes, with and without the prefix stripped
MODES = {
    "subdomain": (GET, ROUTER, None),
    "subdomain jupyter": (GET, ROUTER, "jupyter"),
    "path jupyter": (PATH_GET, PATH_ROUTER, "jupyter"),
    "path rstudio": (PATH_GET, PATH_ROUTER, "rstudio"),
}


def python_way(data: bytes | list[bytes], mode: str = "subdomain"
               ) -> tuple[bytes, Step, tuple[Any, ...]]:
    """The tool's reads (one, or pieces) the Python way, until the response ends."""
    ex, codec = exchange(*MODES[mode])
    out, step = b"", Step.NEED_DATA
    for piece in [data] if isinstance(data, bytes) else data:
        codec.receive(piece)
        got, step, _ = ex.pump_response(codec)
        out += got
        if step is not Step.NEED_DATA:
            break
    return out, step, state(ex, codec)


def lane_way(pieces: list[bytes], mode: str = "subdomain"
             ) -> tuple[bytes, Step, tuple[Any, ...]] | None:
    """The same reads through the lane (None: it declined the first), as the proxy makes
    them: lane_answer, then lane_more while its body goes on."""
    ex, codec = exchange(*MODES[mode])
    out = ex.lane_answer(codec, pieces[0], answer)
    if out is None:
        return None
    step = Step.NEED_DATA if ex.lane_rest else Step.COMPLETE
    for piece in pieces[1:]:
        if step is Step.COMPLETE:
            break
        got, done = ex.lane_more(codec, piece)
        out += got
        step = Step.COMPLETE if done else step
    return out, step, state(ex, codec)


# -- what the C takes ----------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("response", [NGINX, NODE, TORNADO,
                                      b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
                                      b"HTTP/1.1 599 Custom Thing\r\nContent-Length: 1\r\n\r\nx",
                                      REVALIDATED, b"HTTP/1.1 204 No Content\r\n\r\n"])
def test_plain_answers_take_the_lane_and_match_the_python_way(response: bytes, mode: str
                                                              ) -> None:
    got = answer(response)
    assert got is not None, "the lane declined an answer it exists for"
    out, step, after = python_way(response, mode)
    assert step is Step.COMPLETE
    assert got == (out, int(response[9:12]), 0)
    ex, codec = exchange(*MODES[mode])
    assert ex.lane_answer(codec, response, answer) == out
    assert state(ex, codec) == after


def test_hop_by_hop_lines_go_and_the_status_line_is_kept() -> None:
    got = answer(NODE)
    assert got is not None
    assert got[2] == 0
    assert got[0] == (b"HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\n"
                      b"Content-Length: 2\r\nDate: Fri, 04 Dec 2026 23:00:00 GMT\r\n\r\n{}")


@pytest.mark.parametrize("response", [
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nSet-Cookie: _xsrf=1; Domain=studios.test\r\nContent-Length: 2\r\n\r\nhi",
    b"HTTP/1.1 200 OK\r\nClear-Site-Data: \"cookies\"\r\nContent-Length: 2\r\n\r\nhi",
    # path mode keeps a service worker's scope inside the studio: the Python way's job
    b"HTTP/1.1 200 OK\r\nService-Worker-Allowed: /\r\nContent-Length: 2\r\n\r\nhi",
    b"HTTP/1.1 200 OK\r\nSERVICE-WORKER-ALLOWED: /\r\nContent-Length: 2\r\n\r\nhi",
    # path mode drops what sets a policy for the whole origin: the Python way's job too
    b"HTTP/1.1 200 OK\r\nNEL: {\"report_to\":\"g\",\"max_age\":9}\r\nContent-Length: 2\r\n\r\nhi",
    b"HTTP/1.1 200 OK\r\nReport-To: {\"group\":\"g\"}\r\nContent-Length: 2\r\n\r\nhi",
    b"HTTP/1.1 200 OK\r\nnel: x\r\nREPORT-TO: x\r\nContent-Length: 2\r\n\r\nhi",
    b"HTTP/1.1 200 OK\r\nStrict-Transport-Security: max-age=9\r\nContent-Length: 2\r\n\r\nhi",
    b"HTTP/1.1 200 OK\r\nalt-svc: clear\r\nContent-Length: 2\r\n\r\nhi",
    b"HTTP/1.1 200 OK\r\nAccept-CH: Sec-CH-UA\r\nContent-Length: 2\r\n\r\nhi",
    b"HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\n\r\nbody",  # a 304 has none
    b"HTTP/1.1 204 No Content\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi",
    b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nhi",  # not kept alive by llhttp
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive, X-Mine\r\n\r\nhi",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhiHTTP/1.1 200 OK\r\n",  # more than it
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nhi",
    b"HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\nhi",
    b"HTTP/1.1 200 OK\r\n\r\nclose-delimited",
    b"HTTP/1.1 200 OK\r\nX-Folded: a\r\n b\r\nContent-Length: 2\r\n\r\nhi",
    b"HTTP/1.1 200 OK\r\nX-Bad : a\r\nContent-Length: 2\r\n\r\nhi",
    b"HTTP/1.1 200 OK\r\nX-Tab:\ta\r\nContent-Length: 2\r\n\r\nhi",
    b"HTTP/1.1 200 OK\r\nX-Trailing: a \r\nContent-Length: 2\r\n\r\nhi",
    b"HTTP/1.1 200 OK\r\nX-Empty:\r\nContent-Length: 2\r\n\r\nhi",
    b"HTTP/1.1 200 OK\r\nX-Latin: caf\xe9\r\nContent-Length: 2\r\n\r\nhi",
    b"HTTP/1.1 200 OK\nContent-Length: 2\n\nhi",
    b"HTTP/1.1 200\r\nContent-Length: 2\r\n\r\nhi",
    b"HTTP/1.1 200 \r\nContent-Length: 2\r\n\r\nhi",
    b"HTTP/1.1 2000 OK\r\nContent-Length: 2\r\n\r\nhi",
    b"HTTP/1.1 600 Odd\r\nContent-Length: 2\r\n\r\nhi",
    b"HTTP/1.1 200 OK\r\nProxy-Authenticate: Basic\r\nContent-Length: 2\r\n\r\nhi",
    b"HTTP/1.1 200 OK\r\nTrailer: X\r\nContent-Length: 2\r\n\r\nhi",
    # what path mode rewrites: declined in both modes, so the lane can serve both
    b"HTTP/1.1 302 Found\r\nLocation: /lab\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nRefresh: 0; url=/lab\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n",  # the head goes on in the next read
    b"",
])
def test_what_the_lane_declines(response: bytes) -> None:
    assert answer(response) is None
    ex, codec = exchange()
    before = state(ex, codec)
    assert ex.lane_answer(codec, response, answer) is None
    assert state(ex, codec) == before  # untouched: the Python way reads it as always


def test_the_exchange_decides_when_the_lane_may_answer_at_all() -> None:
    # a HEAD (the answer has no body), a client that closes after it (Connection: close
    # to add), an upgrade offer: the Python way
    for request, router, tool in [
        (b"HEAD /lab HTTP/1.1\r\nHost: abc.studios.test\r\n\r\n", ROUTER, None),
        (b"GET /lab HTTP/1.1\r\nHost: abc.studios.test\r\nConnection: close\r\n\r\n",
         ROUTER, None),
        (b"GET /lab HTTP/1.0\r\nHost: abc.studios.test\r\n\r\n", ROUTER, None),
        (b"GET /x HTTP/1.1\r\nHost: abc.studios.test\r\nConnection: Upgrade\r\n"
         b"Upgrade: websocket\r\n\r\n", ROUTER, None),
    ]:
        ex, codec = exchange(request, router, tool)
        assert ex.lane_answer(codec, NGINX, answer) is None, request
    # either mode's tool routes: the lane
    for mode in MODES.values():
        ex, codec = exchange(*mode)
        assert ex.lane_answer(codec, NGINX, answer) is not None
    # the answer's head already begun (a read before this one): the Python way
    ex, codec = exchange()
    codec.receive(NGINX[:20])
    assert ex.lane_answer(codec, NGINX[20:], answer) is None


def test_the_connection_reads_its_next_answer_after_the_lane() -> None:
    # the lane leaves llhttp's parser where the next response starts: the Python way
    # and the lane alternate on one pooled connection
    ex, codec = exchange()
    assert ex.lane_answer(codec, NGINX, answer) is not None
    codec.next_cycle()
    ex2, _ = exchange()
    ex2.tool_head(codec, "192.0.2.7", False, "http")
    codec.receive(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n")
    out, step, _ = ex2.pump_response(codec)
    assert step is Step.COMPLETE and out.endswith(b"2\r\nhi\r\n0\r\n\r\n")
    assert codec.idle()


def test_a_body_over_several_reads_is_counted_and_passed_on() -> None:
    head_end = NGINX.index(b"\r\n\r\n") + 4
    got = answer(NGINX[:head_end + 1])
    assert got is not None and got[2] == 4  # "hello": 1 byte here, 4 to come
    for pieces in ([NGINX[:head_end], NGINX[head_end:]],
                   [NGINX[:head_end + 1], b"el", b"lo"],
                   [NGINX[:head_end + 1], b"ello" + b"HTTP/1.1 200 OK\r\n"]):  # says more
        lane = lane_way(pieces)
        assert lane is not None and lane == python_way(pieces), pieces
        assert lane[1] is Step.COMPLETE and lane[2][5] == (pieces[-1] != b"ello"
                                                           b"HTTP/1.1 200 OK\r\n")
    # not all of it came: both ways wait for the rest, the connection not reusable yet
    assert lane_way([NGINX[:head_end + 2]]) == python_way([NGINX[:head_end + 2]])


@pytest.mark.parametrize("cut", [10, 300, len(NGINX) - 1])
def test_a_tool_that_closes_mid_answer_ends_the_client_either_way(cut: int) -> None:
    seen = []
    for compiled in (True, False):
        h = Harness(compiled_lane=compiled)
        p, t = h.client()
        p.dataReceived(GET)
        up, _ = h.up()
        up.dataReceived(NGINX[:cut])
        up.connectionLost(None)
        seen.append((t.value(), t.disconnecting, len(h.upstream.conns)))
    assert seen[0] == seen[1]


def test_not_bytes_is_a_type_error() -> None:
    with pytest.raises(TypeError):
        answer(bytearray(NGINX))  # type: ignore[arg-type]


# -- the twins, by hypothesis ----------------------------------------------------------------

_NAMES = st.sampled_from([
    b"Content-Type", b"Content-Length", b"content-length", b"CONTENT-LENGTH", b"Connection",
    b"Keep-Alive", b"Transfer-Encoding", b"Set-Cookie", b"Server", b"Date", b"ETag",
    b"Proxy-Connection", b"Upgrade", b"TE", b"Trailer", b"Location", b"X-A", b"x_b~|!#$%&'*+.^`",
    b"Clear-Site-Data", b"clear-site-data", b"Service-Worker-Allowed", b"NEL", b"Report-To",
    b"Strict-Transport-Security", b"Alt-Svc", b"Accept-CH", b"Bad Name", b"Bad\x00", b"",
    b"Caf\xe9", b"Content-Length ",
]) | st.binary(min_size=0, max_size=6)
_VALUES = st.sampled_from([
    b"keep-alive", b"Keep-Alive", b"close", b"keep-alive, upgrade", b"timeout=5", b"chunked",
    b"0", b"2", b"5", b"+2", b"2 ", b" 2", b"02", b"18446744073709551617", b"", b"a b",
    b"a\tb", b"a  ", b"\"quoted\"", b"\xe9", b"a\x7fb", b"a\x00b", b"x=1; Domain=studios.test",
]) | st.binary(min_size=0, max_size=8)
_SEPARATORS = st.sampled_from([b": ", b":", b":  ", b" : ", b":\t", b": \t"])
_EOLS = st.sampled_from([b"\r\n"] * 12 + [b"\n", b"\r", b"\r\r\n"])


_CLEAN_NAMES = st.sampled_from([b"Content-Type", b"Server", b"Date", b"ETag", b"X-A",
                                 b"Cache-Control", b"x_b~|!#$%&'*+.^`", b"Keep-Alive",
                                 b"Connection", b"Vary", b"Location", b"Refresh",
                                 b"Clear-Site-Data", b"Service-Worker-Allowed", b"NEL",
                                 b"Report-To", b"Reporting-Endpoints", b"Alt-Svc",
                                 b"Accept-CH", b"Strict-Transport-Security"])
_CLEAN_VALUES = st.sampled_from([b"keep-alive", b"Keep-Alive", b"timeout=5", b"text/html",
                                 b"a b", b"\"quoted\"", b"x:y", b"0", b"~", b"/lab",
                                 b"0; url=/x"]) | st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0x7e), min_size=1, max_size=8).map(
    lambda t: t.strip(" ").encode() or b"v")


@st.composite
def responses(draw: Any) -> bytes:
    """Half well-formed answers of the shapes tools send (which the lane mostly takes),
    half with hostile parts; either, sometimes, with one byte changed anywhere."""
    clean = draw(st.booleans())
    if clean:
        version, reason, eol = b"HTTP/1.1", draw(st.sampled_from([b" OK", b" Not Found",
                                                                   b" A-b c"])), b"\r\n"
        fields = draw(st.lists(st.tuples(_CLEAN_NAMES, st.sampled_from([b": ", b":"]),
                                         _CLEAN_VALUES, st.just(b"\r\n")), max_size=8))
        end = b"\r\n"
    else:
        version = draw(st.sampled_from([b"HTTP/1.1"] * 8 + [b"HTTP/1.0", b"HTTP/2",
                                                            b"http/1.1"]))
        reason = draw(st.sampled_from([b" OK", b" Not Found", b"", b" ", b"  OK", b" OK ",
                                       b" caf\xe9", b" a\tb"]))
        eol = draw(_EOLS)
        fields = draw(st.lists(st.tuples(_NAMES, _SEPARATORS, _VALUES, _EOLS), max_size=6))
        end = draw(_EOLS)
    status = draw(st.sampled_from([b"200", b"201", b"204", b"206", b"301", b"304", b"404",
                                   b"500", b"599"])
                  if clean else
                  st.sampled_from([b"200", b"204", b"304", b"404", b"100", b"101", b"199",
                                   b"600", b"099", b"2000", b"20"]))
    body = draw(st.binary(max_size=20))
    if status in (b"204", b"304") and draw(st.booleans()):
        body = b""  # (their Content-Length, if any, still says the size it would have)
    length = draw(st.sampled_from(["right"] * (9 if clean else 3) + ["off", "none", "twice"]))
    lines = [name + sep + value + e for name, sep, value, e in fields]
    cl = b"Content-Length: %d\r\n" % (len(body) + (1 if length == "off" else 0))
    if length in ("right", "off", "twice"):
        lines.insert(draw(st.integers(0, len(lines))), cl)
    if length == "twice":
        lines.insert(draw(st.integers(0, len(lines))), cl)
    data = version + b" " + status + reason + eol + b"".join(lines) + end + body
    data += draw(st.sampled_from([b""] * (14 if clean else 6)
                                 + [b"x", b"HTTP/1.1 200 OK\r\n\r\n"]))
    if draw(st.integers(0, 3)) == 0 and data:  # one byte changed, anywhere
        at = draw(st.integers(0, len(data) - 1))
        data = data[:at] + bytes([draw(st.integers(0, 255))]) + data[at + 1:]
    return data


@settings(max_examples=examples(3000), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(responses(), st.sampled_from(sorted(MODES)), st.lists(st.integers(1, 400), max_size=3))
@example(NGINX, "subdomain", [])
@example(NODE, "path rstudio", [150])
def test_the_lane_gives_what_the_python_way_gives(data: bytes, mode: str, cuts: list[int]
                                                  ) -> None:
    """The tool's answer in one read or cut in pieces (a body over several reads)."""
    pieces = _pieces(data, cuts)
    got = lane_way(pieces, mode)
    if got is None:
        ex, codec = exchange(*MODES[mode])
        before = state(ex, codec)
        assert ex.lane_answer(codec, pieces[0], answer) is None
        assert state(ex, codec) == before
        return
    assert got == python_way(pieces, mode), (pieces, got)
    if got[1] is Step.COMPLETE and len(pieces) == 1:
        assert got[2][5], "the lane took an answer after which the connection is not reusable"


def _pieces(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % len(data) for c in cuts if data and c % len(data)} | {len(data)})
    return [data[a:b] for a, b in zip([0, *points], points, strict=False)] or [data]


@settings(max_examples=examples(300), deadline=None)
@given(responses(), st.booleans(), st.lists(st.integers(1, 400), max_size=3))
def test_the_proxy_says_the_same_with_and_without_the_lane(data: bytes, path: bool,
                                                           cuts: list[int]) -> None:
    """Through the proxy protocol (fake transports), in either routing mode, the answer in
    one read or in pieces: the client's bytes, the status, the pooled tool connection and
    the next request on it, lane on and off."""
    pieces = _pieces(data, cuts)
    seen = [_through_proxy(pieces, compiled, path) for compiled in (True, False)]
    assert seen[0] == seen[1]


def _through_proxy(pieces: list[bytes], compiled: bool, path: bool) -> tuple[Any, ...]:
    h = Harness(path_routing=path, compiled_lane=compiled)
    assert (h.factory.answer is not None) == compiled
    request = PATH_GET if path else GET
    p, t = h.client()
    p.dataReceived(request)
    up, ut = h.up()
    first_request = ut.value()
    for piece in pieces:
        if up.transport.disconnecting:
            break
        up.dataReceived(piece)
    first = (t.value(), t.disconnecting, up.transport.disconnecting)
    t.clear()
    ut.clear()
    p.dataReceived(request)
    if t.disconnecting or len(h.upstream.conns) > 1:
        return first, first_request, len(h.upstream.conns)
    up.dataReceived(NGINX)
    return first, first_request, t.value(), len(h.upstream.conns)


def test_the_switch_and_a_build_without_the_extension() -> None:
    assert lane.available()
    assert not lane.stale(), ("studios_gateway/http/_answer.c changed since it was built: "
                              "python setup.py build_ext --inplace")
    assert load_config(environ={}).compiled_lane is True
    assert load_config(environ={"CONNECT_COMPILED_LANE": "off"}).compiled_lane is False
    assert lane.load(True) is answer and lane.load(False) is None


def test_a_proxy_without_the_lane_answers_the_python_way() -> None:
    h = Harness(compiled_lane=False)
    p, t = h.client()
    p.dataReceived(GET)
    up, _ = h.up()
    up.dataReceived(NODE)
    assert t.value() == answer(NODE)[0]  # type: ignore[index]
    assert up.codec.idle() and h.factory.pool.count("abc") == 1
