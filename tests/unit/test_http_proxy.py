"""The proxy protocol driven by hand: StringTransports on both sides, a fake clock."""

from __future__ import annotations

import ipaddress
import json
from types import SimpleNamespace
from typing import Any

import h11
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from studios_gateway.http import pages
from studios_gateway.http.loop import Marks
from studios_gateway.http.proxy import ProxyFactory, ProxyProtocol, UpstreamConnection
from studios_gateway.http.relayed import Relayed
from studios_gateway.http.routing import Router
from studios_gateway.http.upstream import SessionInfo, StudioNotConnected, ToolNotAnswering
from studios_gateway.wire.closing import CLOSE_GRACE
from studios_gateway.wire.mux import TunnelLost
from tests.support.examples import examples
from tests.support.stuck_socket import StuckSocket

DOMAIN = "studios.test"
GET = b"GET /lab HTTP/1.1\r\nHost: abc.studios.test\r\n\r\n"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"


class FakeUpstream:
    """Hands out UpstreamConnections on StringTransports; can be told to fail or hang."""

    def __init__(self) -> None:
        self.conns: list[tuple[UpstreamConnection, StringTransport]] = []
        self.fail: Exception | None = None
        self.hang = False
        self.asked: list[str] = []
        #: The registry's holder a stream to another node was opened to (PeerStream's).
        self.holder: Any = None

    def connect(self, session_id: str, factory: Any) -> defer.Deferred[Any]:
        self.asked.append(session_id)
        if self.fail is not None:
            return defer.fail(self.fail)
        if self.hang:
            return defer.Deferred()
        p = factory.buildProtocol(None)
        t = StringTransport()
        if self.holder is not None:
            t.holder = self.holder  # type: ignore[attr-defined]
        p.makeConnection(t)
        self.conns.append((p, t))
        return defer.succeed(p)


class Harness:
    def __init__(self, path_routing: bool = False, **kw: Any) -> None:
        self.clock = MemoryReactorClock()
        self.upstream = FakeUpstream()
        self.sessions = {"abc": SessionInfo("abc", "jupyter", True),
                         "off": SessionInfo("off", "jupyter", False),
                         "xp": SessionInfo("xp", "xpra", True)}
        kw.setdefault("marks", Marks(b"harness" * 4))  # (the same heads from every harness)
        self.factory = ProxyFactory(
            router=Router(DOMAIN, DOMAIN, path_routing), upstream=self.upstream,
            lookup=lambda sid: defer.succeed(self.sessions.get(sid)), reactor=self.clock, **kw)

    def client(self, peer: str = "192.0.2.7") -> tuple[ProxyProtocol, StringTransport]:
        p = self.factory.buildProtocol(None)
        t = StringTransport(peerAddress=IPv4Address("TCP", peer, 5555))
        p.makeConnection(t)
        return p, t

    def up(self, i: int = -1) -> tuple[UpstreamConnection, StringTransport]:
        return self.upstream.conns[i]


def parse_responses(data: bytes, method: bytes = b"GET") -> list[tuple[int, dict[bytes, bytes],
                                                                      bytes]]:
    """Responses in `data`, parsed by h11 playing the client."""
    out = []
    c = h11.Connection(h11.CLIENT)
    c.receive_data(data)
    while True:
        c.send(h11.Request(method=method, target="/", headers=[("Host", "x")]))
        c.send(h11.EndOfMessage())
        status, headers, body = 0, {}, b""
        while True:
            ev = c.next_event()
            if isinstance(ev, h11.Response):
                status, headers = ev.status_code, dict(ev.headers)
            elif isinstance(ev, h11.Data):
                body += ev.data
            elif isinstance(ev, h11.EndOfMessage):
                break
            elif ev is h11.NEED_DATA or ev is h11.PAUSED:
                return out
        out.append((status, headers, body))
        if c.our_state is not h11.DONE or c.their_state is not h11.DONE:
            return out
        c.start_next_cycle()


def status_of(t: StringTransport) -> int:
    return int(t.value().split(b" ", 2)[1])


def sent_request(ut: StringTransport) -> tuple[h11.Request, bytes]:
    s = h11.Connection(h11.SERVER)
    s.receive_data(ut.value())
    req = s.next_event()
    body = b""
    while isinstance(ev := s.next_event(), h11.Data):
        body += ev.data
    assert isinstance(req, h11.Request)
    return req, body


# Forwarding ---------------------------------------------------------------------------------


def test_get_is_forwarded_and_answered() -> None:
    h = Harness()
    p, t = h.client()
    p.dataReceived(GET)
    up, ut = h.up()
    req, _ = sent_request(ut)
    assert req.target == b"/lab"
    headers = dict(req.headers)
    assert headers[b"x-connect-sub"] == b"anonymous"
    assert headers[b"x-forwarded-for"] == b"192.0.2.7"
    assert headers[b"host"] == b"abc.studios.test"
    up.dataReceived(OK)
    [(status, _, body)] = parse_responses(t.value())
    assert (status, body) == (200, b"hi")
    assert not t.disconnecting
    assert h.factory.pool.count("abc") == 1


@pytest.mark.parametrize("version", [b"1.1", b"1.0"])
def test_1xx_heads_go_to_http_11_clients_only(version: bytes) -> None:
    """A tool's 100 Continue or 103 went to an HTTP/1.0 client too, which reads the first
    head as the answer (RFC 9110 15.2: a server must not send it one)."""
    h = Harness()
    p, t = h.client()
    p.dataReceived(GET.replace(b"HTTP/1.1", b"HTTP/" + version))
    up, _ = h.up()
    up.dataReceived(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\n"
                    b"Link: </a.css>; rel=preload\r\n\r\n" + OK)
    heads = [line for line in t.value().split(b"\r\n") if line.startswith(b"HTTP/1.1 ")]
    assert heads == ([b"HTTP/1.1 100 Continue", b"HTTP/1.1 103 Early Hints"]
                     if version == b"1.1" else []) + [b"HTTP/1.1 200 OK"]


def test_keep_alive_reuses_the_upstream_connection() -> None:
    h = Harness()
    p, t = h.client()
    for _ in range(3):
        p.dataReceived(GET)
        up, ut = h.up(0)
        up.dataReceived(OK)
    assert len(h.upstream.conns) == 1
    assert [r[2] for r in parse_responses(t.value())] == [b"hi"] * 3


def test_no_reuse_after_connection_close_or_incomplete_read() -> None:
    h = Harness()
    p, t = h.client()
    p.dataReceived(GET)
    h.up()[0].dataReceived(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nhi")
    assert h.up()[1].disconnecting and h.factory.pool.count() == 0
    p.dataReceived(GET)
    assert len(h.upstream.conns) == 2


def test_pool_is_bounded_and_idle_connections_expire() -> None:
    h = Harness(max_idle_per_session=1, upstream_idle_timeout=4.0)
    clients = [h.client() for _ in range(2)]
    for p, _ in clients:
        p.dataReceived(GET)
    for i in range(2):
        h.up(i)[0].dataReceived(OK)
    assert h.factory.pool.count("abc") == 1
    assert h.up(1)[1].disconnecting  # the second one did not fit
    h.clock.advance(4.1)
    assert h.factory.pool.count() == 0 and h.up(0)[1].disconnecting


def test_pipelined_requests_are_answered_in_order() -> None:
    h = Harness()
    p, t = h.client()
    p.dataReceived(GET + GET.replace(b"/lab", b"/two"))
    up, ut = h.up()
    assert b"/two" not in ut.value()
    ut.clear()
    up.dataReceived(OK)
    req, _ = sent_request(ut)
    assert req.target == b"/two"
    up.dataReceived(OK)
    assert len(parse_responses(t.value())) == 2


def test_chunked_request_and_response_bodies() -> None:
    h = Harness()
    p, t = h.client()
    p.dataReceived(b"POST /up HTTP/1.1\r\nHost: abc.studios.test\r\nTransfer-Encoding: chunked"
                   b"\r\n\r\n5\r\nhello\r\n")
    up, ut = h.up()
    p.dataReceived(b"6\r\n world\r\n0\r\n\r\n")
    req, body = sent_request(ut)
    assert body == b"hello world" and dict(req.headers)[b"transfer-encoding"] == b"chunked"
    up.dataReceived(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
    [(status, headers, body)] = parse_responses(t.value())
    assert body == b"abc" and headers[b"transfer-encoding"] == b"chunked"


def test_head_response_has_no_body() -> None:
    h = Harness()
    p, t = h.client()
    p.dataReceived(GET.replace(b"GET", b"HEAD"))
    up, _ = h.up()
    up.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n")
    assert t.value().endswith(b"\r\n\r\n") and b"content-length: 100" in t.value().lower()
    p.dataReceived(GET)
    assert len(h.upstream.conns) == 1  # reused after the HEAD


def test_client_headers_cannot_forge_identity() -> None:
    h = Harness(authorize=lambda req, sid: defer.succeed(type("I", (), {"subject": "alice"})()))
    p, _ = h.client()
    p.dataReceived(b"GET / HTTP/1.1\r\nHost: abc.studios.test\r\nX-Connect-Sub: root\r\n"
                   b"X-Forwarded-For: 6.6.6.6\r\nConnection: x-connect-sub\r\n\r\n")
    req, _ = sent_request(h.up()[1])
    subs = [v for k, v in req.headers if k == b"x-connect-sub"]
    assert subs == [b"alice"]
    assert [v for k, v in req.headers if k == b"x-forwarded-for"] == [b"192.0.2.7"]


def test_a_subject_with_a_line_break_is_never_sent() -> None:
    h = Harness(authorize=lambda req, sid: defer.succeed(
        type("I", (), {"subject": "alice\r\nX-Connect-Sub: root"})()))
    p, t = h.client()
    p.dataReceived(GET)
    assert h.up()[1].value() == b""
    assert parse_responses(t.value())[0][0] == 400


def test_trusted_proxy_forwarded_for_is_appended() -> None:
    h = Harness(trusted_proxy_cidrs=[ipaddress.ip_network("10.0.0.0/8")])
    p, _ = h.client(peer="10.2.3.4")
    p.dataReceived(b"GET / HTTP/1.1\r\nHost: abc.studios.test\r\nX-Forwarded-For: 1.1.1.1\r\n"
                   b"X-Forwarded-Proto: https\r\n\r\n")
    req, _ = sent_request(h.up()[1])
    headers = dict(req.headers)
    assert headers[b"x-forwarded-for"] == b"1.1.1.1, 10.2.3.4"
    assert headers[b"x-forwarded-proto"] == b"https"


def test_path_mode_rewrites_location_and_cookie() -> None:
    h = Harness(path_routing=True)
    p, t = h.client()
    p.dataReceived(b"GET /_studio/abc/login HTTP/1.1\r\nHost: studios.test\r\n\r\n")
    req, _ = sent_request(h.up()[1])
    assert req.target == b"/_studio/abc/login"
    h.up()[0].dataReceived(b"HTTP/1.1 302 Found\r\nLocation: /tree\r\n"
                           b"Set-Cookie: s=1; Path=/\r\nContent-Length: 0\r\n\r\n")
    [(status, headers, _)] = parse_responses(t.value())
    assert status == 302
    assert headers[b"location"] == b"/_studio/abc/tree"
    assert headers[b"set-cookie"] == b"s=1; Path=/_studio/abc/"


def test_one_connection_repeating_its_fields_reaches_each_studio_as_itself() -> None:
    """Path mode, one keep-alive client, the same field lines each time (the head memo):
    each request goes to its own studio with its own target and tool headers."""
    h = Harness(path_routing=True)
    h.sessions["rs"] = SessionInfo("rs", "ride", True)
    p, t = h.client()
    fields = b" HTTP/1.1\r\nHost: studios.test\r\nCookie: a=1\r\n\r\n"
    seen = []
    for path, sid in ((b"/_studio/abc/x", "abc"), (b"/_studio/rs/y", "rs"),
                      (b"/_studio/abc/z", "abc")):
        before = len(h.upstream.conns)
        p.dataReceived(b"GET " + path + fields)
        up, ut = h.up() if len(h.upstream.conns) > before else next(
            c for c in h.upstream.conns if c[0].session_id == sid)
        assert up.session_id == sid
        req, _ = sent_request(ut)
        seen.append((req.target, dict(req.headers).get(b"x-rstudio-root-path")))
        ut.clear()
        up.dataReceived(OK)
    assert seen == [(b"/_studio/abc/x", None), (b"/y", b"/_studio/rs"),
                    (b"/_studio/abc/z", None)]
    assert [r[0] for r in parse_responses(t.value())] == [200, 200, 200]


def test_path_mode_redirects_bare_prefix() -> None:
    h = Harness(path_routing=True)
    p, t = h.client()
    p.dataReceived(b"GET /_studio/abc HTTP/1.1\r\nHost: studios.test\r\n\r\n")
    [(status, headers, _)] = parse_responses(t.value())
    assert status == 308 and headers[b"location"] == b"/_studio/abc/"
    assert not h.upstream.conns


def test_local_routes_answer_first() -> None:
    from studios_gateway.http.pages import page

    seen = []

    def local(req: Any) -> defer.Deferred[Any]:
        seen.append(req.path)
        return defer.succeed(page(200, "Login", "hi") if req.path.startswith("/_connect/")
                             else None)

    h = Harness(local_routes=local)
    p, t = h.client()
    p.dataReceived(b"GET /_connect/login HTTP/1.1\r\nHost: studios.test\r\n\r\n")
    assert status_of(t) == 200 and not h.upstream.conns and seen == ["/_connect/login"]


# Pages instead of the tool -----------------------------------------------------------------


def one_status(h: Harness, request: bytes) -> tuple[int, bytes]:
    p, t = h.client()
    p.dataReceived(request)
    [(status, _, body)] = parse_responses(t.value())
    return status, body


def test_an_ended_studio_answers_410_to_its_pages_requests() -> None:
    """A studio whose session ended under an open page: the login's answer is still
    cached, the session is gone. Its page's requests got 404, and JupyterLab's file browser
    asked for its listing again at once on each (hundreds a second per open tab); 410
    keeps it to its polling interval. The page still says what may have happened."""
    h = Harness()
    p, _ = h.client()
    p.dataReceived(GET)
    assert h.upstream.asked == ["abc"]  # forwarded while the session exists
    del h.sessions["abc"]
    status, body = one_status(h, GET)
    assert status == 410
    assert b"There is no studio abc. It may have been ended" in body


def test_pages() -> None:
    h = Harness()
    st_, body = one_status(h, b"GET / HTTP/1.1\r\nHost: nope.studios.test\r\n\r\n")
    assert st_ == 410 and b"nope" in body  # past the login: gone (test_an_ended_studio...)
    st_, body = one_status(h, b"GET / HTTP/1.1\r\nHost: off.studios.test\r\n"
                              b"Accept: text/html\r\n\r\n")
    assert st_ == 503 and b"http-equiv=refresh" in body and b"off" in body
    st_, _ = one_status(h, b"GET / HTTP/1.1\r\nHost: studios.test\r\n\r\n")
    assert st_ == 404
    h.upstream.fail = StudioNotConnected("abc")
    assert one_status(h, GET)[0] == 503
    h.upstream.fail = ToolNotAnswering("abc")
    assert one_status(h, GET)[0] == 504
    h.upstream.fail = RuntimeError("boom")
    assert one_status(h, GET)[0] == 502
    assert not h.upstream.conns


def test_a_program_gets_the_page_s_words_in_json_and_a_page_load_the_page() -> None:
    """The gateway's own answers to a request that is not a browser's page load (a
    script's fetch, curl) are the same status and headers with the page's words in JSON;
    a page load gets the page exactly as before. Before, every client got the HTML page,
    which JupyterLab reported as "Invalid response: 503 Service Unavailable"."""
    off = b"GET /lab HTTP/1.1\r\nHost: off.studios.test\r\n"
    expected = pages.not_connected("off")
    for head, loads_page in ((b"Accept: */*\r\n", False),
                             (b"Sec-Fetch-Mode: cors\r\nSec-Fetch-Dest: empty\r\n", False),
                             (b"Accept: text/html\r\n", True),
                             (b"Sec-Fetch-Mode: navigate\r\nAccept: text/html\r\n", True)):
        p, t = Harness().client()
        p.dataReceived(off + head + b"\r\n")
        [(status, headers, body)] = parse_responses(t.value())
        assert status == 503 and headers[b"retry-after"] == b"5"
        assert headers[b"cache-control"] == b"no-store"
        if loads_page:
            assert body == expected.body
            assert headers[b"content-type"] == b"text/html; charset=utf-8"
        else:
            assert headers[b"content-type"] == b"application/json"
            assert json.loads(body) == json.loads(pages.for_script(expected).body)
    # The tool's own error answer to a program passes as the tool made it.
    h = Harness()
    p, t = h.client()
    p.dataReceived(b"GET /lab HTTP/1.1\r\nHost: abc.studios.test\r\nAccept: */*\r\n\r\n")
    h.up()[0].dataReceived(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/html\r\n"
                           b"Content-Length: 8\r\n\r\n<p>x</p>")
    [(status, headers, body)] = parse_responses(t.value())
    assert (status, headers[b"content-type"], body) == (503, b"text/html", b"<p>x</p>")


def test_session_id_in_page_is_escaped() -> None:
    assert b"<script>" not in pages.not_found("<script>").body


def test_refusal_from_authorize_is_sent_as_is() -> None:
    from studios_gateway.http.pages import forbidden

    h = Harness(authorize=lambda req, sid: defer.succeed(forbidden(sid)))
    status, body = one_status(h, GET)
    assert status == 403 and b"abc" in body and not h.upstream.conns


def test_connect_timeout_is_504() -> None:
    h = Harness(connect_timeout=5)
    h.upstream.hang = True
    p, t = h.client()
    p.dataReceived(GET)
    assert t.value() == b""
    h.clock.advance(5.1)
    assert status_of(t) == 504


def test_response_timeout_is_504() -> None:
    h = Harness(response_timeout=10)
    p, t = h.client()
    p.dataReceived(GET)
    h.clock.advance(10.1)
    assert status_of(t) == 504 and h.up()[1].disconnecting


def test_upstream_dies_mid_response_closes_client() -> None:
    h = Harness()
    p, t = h.client()
    p.dataReceived(GET)
    up, _ = h.up()
    up.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
    up.connectionLost(Failure(ConnectionError()))
    assert t.disconnecting


def test_stale_pooled_connection_is_retried_once() -> None:
    h = Harness()
    p, t = h.client()
    p.dataReceived(GET)
    h.up()[0].dataReceived(OK)
    p.dataReceived(GET)
    h.up(0)[0].connectionLost(Failure(ConnectionError()))  # closed as we took it
    assert len(h.upstream.conns) == 2
    sent_request(h.up(1)[1])
    h.up(1)[0].dataReceived(OK)
    assert [r[0] for r in parse_responses(t.value())] == [200, 200]


def test_a_pooled_connection_whose_tunnel_ended_under_the_request_is_not_tried_again(
        ) -> None:
    """The tunnel went while a request on a pooled connection waited for its answer: the
    request may have reached the tool. It was tried again as if the tool had closed an
    idle connection, and a studio back at once (a node's retry period of 1 s) got it
    twice (suitetime50, test_away_process). It is answered as a tunnel away is."""
    h = Harness()
    p, t = h.client()
    p.dataReceived(GET)
    h.up()[0].dataReceived(OK)
    p.dataReceived(b"POST /api/kernels HTTP/1.1\r\nHost: abc.studios.test\r\n"
                   b"Content-Length: 0\r\n\r\n")
    sent_request(h.up(0)[1])  # it went out on the pooled connection
    # (a pooled connection's guard stepped aside at its first answer: the stream's own
    # end, TunnelLost, says the tunnel went)
    h.up(0)[0].connectionLost(Failure(TunnelLost("the tunnel was declared dead")))
    assert len(h.upstream.conns) == 1  # not sent again
    statuses = [r[0] for r in parse_responses(t.value())]
    assert statuses == [200, 503] and t.disconnecting


def test_close_delimited_response() -> None:
    h = Harness()
    p, t = h.client()
    p.dataReceived(GET)
    up, _ = h.up()
    up.dataReceived(b"HTTP/1.1 200 OK\r\n\r\nsome bytes")
    up.connectionLost(Failure(ConnectionError()))
    [(status, _, body)] = parse_responses(t.value())
    assert body == b"some bytes" and not t.disconnecting


# Refusals and limits -----------------------------------------------------------------------

SMUGGLING = [
    b"POST / HTTP/1.1\r\nHost: abc.studios.test\r\nContent-Length: 3\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: abc.studios.test\r\nContent-Length: 3\r\nContent-Length: 3\r\n"
    b"\r\nabc",
    b"POST / HTTP/1.1\r\nHost: abc.studios.test\r\nContent-Length: +3\r\n\r\nabc",
    b"GET / HTTP/1.1\r\nHost: abc.studios.test\r\nX: a\r\n b\r\n\r\n",
    b"GET / HTTP/1.1\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: abc.studios.test\r\nHost: abc.studios.test\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: abc.studios.test:x\r\n\r\n",
    b"GET http://other.test/ HTTP/1.1\r\nHost: abc.studios.test\r\n\r\n",
    b"CONNECT abc.studios.test:443 HTTP/1.1\r\nHost: abc.studios.test\r\n\r\n",
    b"GET / HTTP/1.1\nHost: abc.studios.test\n\n",
    b"POST / HTTP/1.1\r\nHost: abc.studios.test\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"zz\r\nabc\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: abc.studios.test\r\nTransfer-Encoding: xchunked\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: abc.studios.test\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"ffffffffffffffffffff\r\nzz" + b"GET / HTTP/1.1\r\nHost: abc.studios.test\r\n\r\n" * 4,
    b"POST / HTTP/1.1\r\nHost: abc.studios.test\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"10000000000000000\r\nzz\r\n0\r\n\r\n",
]


def test_smuggling_shapes_never_reach_the_tool() -> None:
    for raw in SMUGGLING:
        h = Harness()
        p, t = h.client()
        p.dataReceived(raw)
        assert status_of(t) == 400, raw
        assert t.disconnecting, raw
        if h.upstream.conns:  # a bad chunk is noticed only after the head went out
            up, ut = h.up()
            assert b"zz" not in ut.value() and ut.disconnecting, raw


def test_absolute_form_for_our_host_is_accepted() -> None:
    h = Harness()
    p, _ = h.client()
    p.dataReceived(b"GET http://abc.studios.test/x HTTP/1.1\r\nHost: abc.studios.test\r\n\r\n")
    req, _ = sent_request(h.up()[1])
    assert req.target == b"/x"


def test_limits_statuses() -> None:
    h = Harness(max_request_line=50, max_header_bytes=200, max_header_count=3, max_body=5)
    cases = [
        (b"GET /" + b"a" * 60 + b" HTTP/1.1\r\n", 414),
        (b"GET / HTTP/1.1\r\nHost: abc.studios.test\r\nX: " + b"a" * 200, 431),
        (b"GET / HTTP/1.1\r\nHost: abc.studios.test\r\n" + b"A: 1\r\n" * 3 + b"\r\n", 431),
        (b"POST / HTTP/1.1\r\nHost: abc.studios.test\r\nContent-Length: 6\r\n\r\n", 413),
    ]
    for raw, want in cases:
        p, t = h.client()
        p.dataReceived(raw)
        assert status_of(t) == want, raw
        assert t.disconnecting
    assert not h.upstream.conns


def test_chunked_body_over_the_limit_is_413() -> None:
    h = Harness(max_body=5)
    p, t = h.client()
    p.dataReceived(b"POST / HTTP/1.1\r\nHost: abc.studios.test\r\nTransfer-Encoding: chunked"
                   b"\r\n\r\n3\r\nabc\r\n")
    up, ut = h.up()
    p.dataReceived(b"3\r\ndef\r\n")
    assert status_of(t) == 413 and t.disconnecting and ut.disconnecting


def test_header_timeout_is_408_and_idle_timeout_closes() -> None:
    h = Harness(header_timeout=10, idle_timeout=30)
    p, t = h.client()
    p.dataReceived(b"GET / HTTP/1.1\r\n")
    h.clock.advance(10.1)
    assert status_of(t) == 408 and t.disconnecting
    p, t = h.client()
    p.dataReceived(GET)
    h.up()[0].dataReceived(OK)
    h.clock.advance(29)
    assert not t.disconnecting
    h.clock.advance(2)
    assert t.disconnecting and t.value().count(b"HTTP/1.1") == 1


def test_a_browser_that_reads_nothing_is_reset_once_the_proxy_closes() -> None:
    """The proxy's close (after a refusal, or at the idle timeout) waited for the browser
    to take what was buffered for it: a browser that never reads held the connection for
    good. Now it is reset CLOSE_GRACE after the close."""
    h = Harness(header_timeout=10, idle_timeout=30)
    refused = StuckSocket(h.clock)
    p = refused.connect(h.factory.buildProtocol(None))
    p.dataReceived(b"GET / HTTP/1.1\r\n")
    h.clock.advance(10.1)  # the head's timeout: 408, and the close
    idle = StuckSocket(h.clock)
    p = idle.connect(h.factory.buildProtocol(None))
    p.dataReceived(GET)
    h.up()[0].dataReceived(OK)
    assert refused.unsent() and refused.disconnecting and not refused.disconnected
    h.clock.advance(CLOSE_GRACE)
    assert refused.aborted
    h.clock.advance(30)  # the idle timeout: the close
    assert idle.unsent() and idle.disconnecting and not idle.disconnected
    h.clock.advance(CLOSE_GRACE)
    assert idle.aborted
    assert not [c for c in h.clock.getDelayedCalls() if c.active()]


def test_a_preconnect_that_times_out_is_not_logged() -> None:
    """A browser's preconnect (a socket opened ahead, never used) got no access line, but
    an info line "request head timeout from <address>" each, 30 s after: five in an
    afternoon of one headless Chromium, one per page load per person at scale. Said
    only for a request head that began and did not finish."""
    from twisted.logger import capturedLogs

    h = Harness(header_timeout=10)
    with capturedLogs() as events:
        p, t = h.client()
        h.clock.advance(10.1)
        assert t.disconnecting
        p, t = h.client()
        p.dataReceived(b"GET / HTTP/1.1\r\n")
        h.clock.advance(10.1)
        assert status_of(t) == 408
    said = [e["log_format"] for e in events if "head timeout" in e.get("log_format", "")]
    assert said == ["request head timeout from {peer}"]


def test_max_connections_503() -> None:
    h = Harness(max_connections=2)
    a, _b = h.client(), h.client()
    p, t = h.client()
    assert status_of(t) == 503 and t.disconnecting
    a[0].connectionLost(Failure(ConnectionError()))
    p, t = h.client()
    assert t.value() == b""


def test_client_gone_aborts_upstream() -> None:
    h = Harness()
    p, t = h.client()
    p.dataReceived(GET)
    p.connectionLost(Failure(ConnectionError()))
    assert h.up()[1].disconnecting and h.factory.pool.count() == 0


# Backpressure -------------------------------------------------------------------------------


def test_slow_client_pauses_the_tool() -> None:
    h = Harness()
    p, t = h.client()
    p.dataReceived(GET)
    up, ut = h.up()
    up.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc")
    assert t.producer is not None
    t.producer.pauseProducing()  # the client's send buffer is full
    assert ut.producerState == "paused"
    t.producer.resumeProducing()
    assert ut.producerState == "producing"


def test_slow_tool_pauses_the_client() -> None:
    h = Harness()
    p, t = h.client()
    p.dataReceived(b"POST / HTTP/1.1\r\nHost: abc.studios.test\r\nContent-Length: 100\r\n\r\nab")
    up, ut = h.up()
    assert ut.producer is not None
    ut.producer.pauseProducing()
    assert t.producerState == "paused"
    ut.producer.resumeProducing()
    assert t.producerState == "producing"


def test_client_is_paused_while_the_request_is_dispatched() -> None:
    h = Harness()
    h.upstream.hang = True
    p, t = h.client()
    p.dataReceived(b"POST / HTTP/1.1\r\nHost: abc.studios.test\r\nContent-Length: 100\r\n\r\n")
    assert t.producerState == "paused"


def test_pause_reasons_combine() -> None:
    """Upstream full and then drained must not resume a client paused for dispatch."""
    h = Harness()
    p, t = h.client()
    p.dataReceived(b"POST / HTTP/1.1\r\nHost: abc.studios.test\r\nContent-Length: 3\r\n\r\nabc")
    up, ut = h.up()
    ut.producer.pauseProducing()
    p.gate.pause("dispatch")
    ut.producer.resumeProducing()
    assert t.producerState == "paused"


# Upgrade ------------------------------------------------------------------------------------


def test_websocket_upgrade_splices_bytes() -> None:
    h = Harness()
    p, t = h.client()
    p.dataReceived(b"GET /ws HTTP/1.1\r\nHost: abc.studios.test\r\nConnection: Upgrade\r\n"
                   b"Upgrade: websocket\r\nSec-WebSocket-Key: x\r\n\r\n")
    up, ut = h.up()
    req, _ = sent_request(ut)
    assert dict(req.headers)[b"upgrade"] == b"websocket"
    ut.clear()
    up.dataReceived(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                    b"Connection: Upgrade\r\nSec-WebSocket-Accept: y\r\n\r\n\x81\x02hi")
    assert t.value().startswith(b"HTTP/1.1 101 ")
    assert t.value().endswith(b"\r\n\r\n\x81\x02hi")
    p.dataReceived(b"\x81\x82abcd\x00\x00")
    assert ut.value() == b"\x81\x82abcd\x00\x00"
    t.producer.pauseProducing()
    assert ut.producerState == "paused"
    up.connectionLost(Failure(ConnectionError()))
    assert t.disconnecting


# Hostile heads ------------------------------------------------------------------------------

_pieces = st.sampled_from([
    b"GET", b"POST", b" ", b"/", b"HTTP/1.1", b"HTTP/1.0", b"\r\n", b"\n", b"\r", b":",
    b"Host", b"abc.studios.test", b"Content-Length", b"Transfer-Encoding", b"chunked",
    b"0", b"5", b"-1", b"\t", b"\x00", b"\xff", b"Connection", b"Upgrade", b",", b"X-A",
    b"\r\n\r\n", b"http://abc.studios.test", b"*", b"%",
])


@settings(max_examples=examples(300))
@given(st.lists(_pieces, max_size=30).map(b"".join), st.integers(1, 7))
def test_hostile_heads_never_crash_or_reach_the_tool_unvalidated(raw: bytes,
                                                                split: int) -> None:
    h = Harness(max_header_bytes=512)
    p, t = h.client()
    step = max(1, len(raw) // split)
    for i in range(0, len(raw), step):
        p.dataReceived(raw[i:i + step])
    for _, ut in h.upstream.conns:
        req, _ = sent_request(ut)  # what reached the tool is a well-formed request
        assert b"abc.studios.test" in dict(req.headers)[b"host"]
    h.clock.advance(1000)  # all timers fire cleanly
    p2, t2 = h.client()
    p2.dataReceived(GET)
    assert h.upstream.conns, "a second connection keeps working"
    h.up()[0].dataReceived(OK)
    assert parse_responses(t2.value())[0][0] == 200


_body_pieces = st.sampled_from([
    b"0", b"3", b"a", b"F", b"ffffffffffffffffffff", b"10000000000000000", b"ffffffffffffffff",
    b"zz", b"-", b" ", b"\t", b";", b"ext=1", b"\r\n", b"\n", b"\r", b"abc", b"X-A: 1", b":",
    b"\x00", b"GET / HTTP/1.1\r\nHost: abc.studios.test\r\n\r\n",
])


@settings(max_examples=examples(300))
@given(st.lists(_body_pieces, max_size=30).map(b"".join), st.integers(1, 7))
def test_hostile_chunked_bodies_reach_the_tool_only_as_well_formed_chunks(
        raw: bytes, split: int) -> None:
    h = Harness()
    p, t = h.client()
    p.dataReceived(b"POST /up HTTP/1.1\r\nHost: abc.studios.test\r\n"
                   b"Transfer-Encoding: chunked\r\n\r\n")
    step = max(1, len(raw) // split)
    for i in range(0, len(raw), step):
        p.dataReceived(raw[i:i + step])
    for _, ut in h.upstream.conns:  # the tool's bytes are a request h11 reads without fault
        s = h11.Connection(h11.SERVER)
        s.receive_data(ut.value())
        while (ev := s.next_event()) not in (h11.NEED_DATA, h11.PAUSED):
            assert not isinstance(ev, h11.ConnectionClosed)
    assert not t.value() or (status_of(t) == 400 and t.disconnecting)  # (the tool is silent)
    h.clock.advance(1000)  # all timers fire cleanly
    p2, t2 = h.client()
    p2.dataReceived(GET)
    h.up()[0].dataReceived(OK)
    assert parse_responses(t2.value())[0][0] == 200


def test_behind_a_tls_terminator_the_tools_cookies_are_secure() -> None:
    """The listener speaks plain HTTP behind a TLS terminator (CONNECT_PROXY_URL on
    https://, no CONNECT_TLS_*): browsers are on HTTPS all the same, and the gateway's own
    cookies were Secure, but a tool's (JupyterLab's _xsrf and user cookies) were not, so a
    browser sent them over plain HTTP to the same host."""
    h = Harness(scheme="http", https_outside=True)
    p, t = h.client()
    p.dataReceived(GET)
    h.up()[0].dataReceived(b"HTTP/1.1 200 OK\r\nSet-Cookie: _xsrf=t; Path=/\r\n"
                           b"Content-Length: 2\r\n\r\nok")
    [(status, headers, _)] = parse_responses(t.value())
    assert status == 200 and headers[b"set-cookie"] == b"_xsrf=t; Path=/; Secure", headers


def test_over_https_the_tools_cookies_are_secure_and_over_http_unchanged() -> None:
    """The browser's connection is HTTPS (the gateway's own TLS): a tool's Set-Cookie
    without Secure gets it, on a plain answer and on a WebSocket's 101."""
    for scheme, expected in (("https", b"_xsrf=t; Path=/; Secure"), ("http", b"_xsrf=t; Path=/")):
        h = Harness(scheme=scheme)
        p, t = h.client()
        p.dataReceived(GET)
        h.up()[0].dataReceived(b"HTTP/1.1 200 OK\r\nSet-Cookie: _xsrf=t; Path=/\r\n"
                               b"Content-Length: 2\r\n\r\nok")
        [(status, headers, _)] = parse_responses(t.value())
        assert status == 200 and headers[b"set-cookie"] == expected, (scheme, headers)
        p, t = h.client()
        p.dataReceived(b"GET /ws HTTP/1.1\r\nHost: abc.studios.test\r\nConnection: Upgrade"
                       b"\r\nUpgrade: websocket\r\n\r\n")
        h.up()[0].dataReceived(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n"
                               b"Upgrade: websocket\r\nSet-Cookie: _xsrf=t; Path=/\r\n\r\n")
        assert b"\r\nSet-Cookie: " + expected + b"\r\n" in t.value(), (scheme, t.value())


# A WebSocket's end: the gateway's close frame, only between whole frames of the tool's -----

_UPGRADE = (b"GET /ws HTTP/1.1\r\nHost: abc.studios.test\r\nConnection: Upgrade\r\n"
            b"Upgrade: websocket\r\nSec-WebSocket-Key: x\r\n\r\n")
_SWITCHED = (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
             b"Connection: Upgrade\r\nSec-WebSocket-Accept: y\r\n\r\n")


def upgraded(upgrade: bytes = b"websocket", **kw: Any
             ) -> tuple[Harness, ProxyProtocol, StringTransport, UpstreamConnection]:
    """A client's WebSocket spliced to the tool; the client's transport cleared."""
    h = Harness(**kw)
    p, t = h.client()
    p.dataReceived(_UPGRADE.replace(b"websocket", upgrade))
    up, _ = h.up()
    up.dataReceived(_SWITCHED.replace(b"websocket", upgrade))
    assert t.value().startswith(b"HTTP/1.1 101 ")
    t.clear()
    return h, p, t, up


def close_of(data: bytes) -> tuple[int, str]:
    assert data[0] == 0x88 and data[1] == len(data) - 2, data
    return int.from_bytes(data[2:4], "big"), data[4:].decode("utf-8")


def test_a_lost_studio_gets_the_browser_a_close_frame_between_frames() -> None:
    h, p, t, up = upgraded()
    up.dataReceived(b"\x81\x02hi\x81")  # a frame and a head's first byte ...
    up.dataReceived(b"\x03abc")  # ... and the rest
    t.clear()
    up.connectionLost(Failure(ConnectionError("tunnel lost: 10.0.0.5 reset")))
    assert close_of(t.value()) == (1011, "the connection to the studio broke")
    assert t.disconnecting


def test_a_break_mid_frame_closes_without_a_frame() -> None:
    h, p, t, up = upgraded()
    up.dataReceived(b"\x82\x7e\x01\x00" + b"x" * 100)  # 100 of a frame's 256 bytes
    t.clear()
    up.connectionLost(Failure(ConnectionError("tunnel lost")))
    assert t.value() == b"" and t.disconnecting
    h, p, t, up = upgraded()
    up.dataReceived(b"\x82")  # a head cut by the read
    t.clear()
    up.connectionLost(Failure(ConnectionError("tunnel lost")))
    assert t.value() == b"" and t.disconnecting


def test_after_the_tools_own_close_frame_the_gateway_sends_none() -> None:
    h, p, t, up = upgraded()
    up.dataReceived(b"\x88\x02\x03\xe8")
    t.clear()
    up.connectionLost(Failure(ConnectionError("tunnel lost")))
    assert t.value() == b"" and t.disconnecting


def test_the_tool_closing_is_passed_on_as_it_came_and_the_gateway_draining_a_restart() -> None:
    """The tool's end goes on as it came: closed without a close frame of its own, the
    browser's connection just closes (1006 there, as connected directly; it was the
    gateway's 1001, which JupyterLab takes as final: a notebook whose jupyter-server
    stopped never asked for its kernel again); its own close frame goes on alone. The
    access line has no reason for it. 1012 for the drain: JupyterLab takes 1001 on its
    kernel's WebSocket as final and never reconnects (the notebook stayed "Disconnected"
    after a gateway restart)."""
    obs = _Observer()
    h, p, t, up = upgraded(observer=obs)
    up.dataReceived(b"\x81\x02hi")
    up.connectionLost(None)
    assert t.value() == b"\x81\x02hi" and t.disconnecting
    p.connectionLost(Failure(ConnectionDone()))
    assert [f.reason for f in obs.closed] == [""]
    h, p, t, up = upgraded()
    up.dataReceived(b"\x88\x02\x03\xe8")  # the tool's own close frame (1000)
    up.connectionLost(None)
    assert t.value() == b"\x88\x02\x03\xe8" and t.disconnecting
    h, p, t, up = upgraded()
    h.factory.drain()
    assert close_of(t.value()) == (1012, "this gateway node is shutting down; reconnect")
    assert t.disconnecting


_H2C = (b"GET /ws HTTP/1.1\r\nHost: abc.studios.test\r\nConnection: Upgrade, HTTP2-Settings\r\n"
        b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n")


@pytest.mark.parametrize("upgrade", [b"h2c", b"websocket, h2c", b"h2c, websocket", b"TLS/1.2",
                                     b"websocket\r\nUpgrade: h2c", b"websocket,"])
def test_an_upgrade_to_another_protocol_reaches_the_tool_as_a_plain_request(
        upgrade: bytes) -> None:
    """A tool that switches to h2c (hypercorn, Go's h2c handler) would read what the client
    sends next on the spliced connection as requests of their own, X-Connect-Sub
    included: only a WebSocket upgrade is passed on; any other is dropped, as a hop-by-hop
    field is, and the tool answers the request as it is."""
    h = Harness()
    p, t = h.client()
    p.dataReceived(_H2C.replace(b"h2c", upgrade, 1))
    up, ut = h.up()
    req, _ = sent_request(ut)
    names = {k for k, _ in req.headers}
    assert b"upgrade" not in names and b"http2-settings" not in names, req.headers
    assert dict(req.headers).get(b"connection", b"").lower() != b"upgrade"
    up.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    [(status, _, body)] = parse_responses(t.value())
    assert (status, body) == (200, b"ok")


def test_a_tool_that_switches_protocols_unasked_gets_the_browser_a_502() -> None:
    """A 101 to a request that offered no WebSocket (here h2c, which the tool never saw) is
    not spliced: the browser gets 502 and the tool's connection is closed."""
    h = Harness()
    p, t = h.client()
    p.dataReceived(_H2C)
    up, ut = h.up()
    up.dataReceived(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n"
                    b"Connection: Upgrade\r\n\r\nSMUGGLED")
    assert status_of(t) == 502 and b"SMUGGLED" not in t.value()
    assert ut.disconnecting


class _Meter:
    session_id = ""

    def inbound(self, n: int) -> None:
        pass

    def outbound(self, n: int) -> None:
        pass


class _Observer:
    """Traffic's part the proxy uses for an upgraded connection: the stop it is given."""

    throttles = None

    def __init__(self) -> None:
        self.stops: list[Any] = []
        self.closed: list[Any] = []

    def open(self, kind: str, session_id: str, subject: str, stop: Any) -> _Meter:
        self.stops.append(stop)
        return _Meter()

    def close(self, meter: Any, facts: Any) -> None:
        self.closed.append(facts)

    def http(self, *fields: Any) -> None:
        pass


def test_a_quota_stop_mid_frame_sends_1008_after_the_tools_frame() -> None:
    """Mid-frame the close frame waits for the end of the tool's frame (it was a close
    without one, 1006 in the browser, though the frame's end was a few bytes away); the
    tool's next frame is not sent, and the client is not read meanwhile."""
    obs = _Observer()
    h, p, t, up = upgraded(observer=obs)
    up.dataReceived(b"\x81\x05hel")  # a text frame's head and 3 of its 5 bytes
    t.clear()
    obs.stops[0]("transfer quota reached")
    assert t.value() == b"" and not t.disconnecting  # (never a close frame inside the text)
    assert t.producerState == "paused"  # the client's bytes wait (then go nowhere)
    up.dataReceived(b"l")
    assert t.value() == b"l" and not t.disconnecting
    t.clear()
    up.dataReceived(b"o\x81\x01!")  # the frame's end, and a frame that is not sent
    assert t.value()[:1] == b"o" and close_of(t.value()[1:]) == (1008, "transfer quota reached")
    assert t.disconnecting
    t.clear()
    up.dataReceived(b"\x81\x01!")
    h.clock.advance(60)
    assert t.value() == b"" and p._ending is None


def test_a_quota_stop_mid_frame_closes_without_a_frame_past_the_bounds() -> None:
    """The frame's end too far (more than _END_WAIT_BYTES to come), unknown (a head cut
    by a read), not come within _END_WAIT, or the tunnel lost meanwhile: the connection
    closes without a close frame, as before."""
    for first in (b"\x82\x7f" + (1 << 20).to_bytes(8, "big") + b"x" * 10, b"\x82"):
        obs = _Observer()
        h, p, t, up = upgraded(observer=obs)
        up.dataReceived(first)
        t.clear()
        obs.stops[0]("transfer quota reached")
        assert t.value() == b"" and t.disconnecting, first[:2]
    obs = _Observer()
    h, p, t, up = upgraded(observer=obs)
    up.dataReceived(b"\x81\x05hel")
    t.clear()
    obs.stops[0]("transfer quota reached")
    obs.stops[0]("transfer quota reached again")  # (waits once)
    h.clock.advance(1.9)
    assert not t.disconnecting
    h.clock.advance(0.2)
    assert t.value() == b"" and t.disconnecting
    up.dataReceived(b"lo")
    assert t.value() == b""
    obs = _Observer()
    h, p, t, up = upgraded(observer=obs)
    up.dataReceived(b"\x81\x05hel")
    t.clear()
    obs.stops[0]("transfer quota reached")
    up.connectionLost(Failure(ConnectionError("tunnel lost")))
    assert t.value() == b"" and t.disconnecting and p._ending is None


def test_a_quota_stop_between_frames_sends_1008_once_and_nothing_after() -> None:
    obs = _Observer()
    h, p, t, up = upgraded(observer=obs)
    up.dataReceived(b"\x81\x05hello")
    t.clear()
    obs.stops[0]("transfer quota reached: " + "x" * 200)
    code, reason = close_of(t.value())
    assert code == 1008 and reason.startswith("transfer quota reached") and len(reason) == 123
    t.clear()
    up.dataReceived(b"\x81\x01!")
    obs.stops[0]("again")
    up.connectionLost(Failure(ConnectionError("tunnel lost")))
    assert t.value() == b""


def test_a_revoked_websocket_says_why() -> None:
    closes: list[Any] = []

    def track(session_id: str, identity: Any, close: Any) -> Any:
        closes.append(close)
        return lambda: None

    for why, code in (("the session was ended", 1001), ("logged out", 1008)):
        h, p, t, up = upgraded(track=track)
        closes[-1](why)
        assert close_of(t.value()) == (code, why) and t.disconnecting


def test_the_access_line_of_a_websocket_whose_session_ended_says_so() -> None:
    """Deleting a session closes its WebSockets ("the session was ended", 1001), then its
    tunnel: the tunnel's loss, heard before the browser's connection was gone, replaced
    the access line's reason with `the studio's connection went away: tunnel lost: tunnel
    closed locally`, while the browser had been told the session was ended."""
    closes: list[Any] = []

    def track(session_id: str, identity: Any, close: Any) -> Any:
        closes.append(close)
        return lambda: None

    obs = _Observer()
    h, p, t, up = upgraded(track=track, observer=obs)
    closes[-1]("the session was ended")
    up.connectionLost(Failure(ConnectionError("tunnel lost: tunnel closed locally")))
    p.connectionLost(Failure(ConnectionDone()))
    assert close_of(t.value()) == (1001, "the session was ended")
    assert [f.reason for f in obs.closed] == ["the session was ended"]
    # A tunnel that breaks on its own still says so.
    obs = _Observer()
    h, p, t, up = upgraded(observer=obs)
    up.connectionLost(Failure(ConnectionError("tunnel lost: reset")))
    p.connectionLost(Failure(ConnectionDone()))
    assert [f.reason for f in obs.closed] == ["the connection to the studio broke: tunnel "
                                              "lost: reset"]


def test_a_websocket_relayed_to_another_node_closes_once_its_studio_moved() -> None:
    """Relayed into another node's tunnel, a WebSocket is closed with 1012 when the
    registry names another holder (the page reconnects to it), and forgotten when it
    ends; one through this node's own tunnel is not kept at all."""
    node_a = SimpleNamespace(node_id="node-a", node_address="10.0.0.5:7071", tunnel_id="t1")
    holders = {"abc": node_a}
    relayed = Relayed(lambda sid: defer.succeed(holders.get(sid)))
    obs = _Observer()
    h = Harness(relayed=relayed, observer=obs)
    h.upstream.holder = node_a
    p, t = h.client()
    p.dataReceived(_UPGRADE)
    up, _ = h.up()
    up.dataReceived(_SWITCHED + b"\x81\x02hi")
    assert len(relayed) == 1
    t.clear()
    holders["abc"] = replace_holder = SimpleNamespace(
        node_id="node-b", node_address="10.0.0.6:7071", tunnel_id="t2")
    relayed.changed("abc")
    assert close_of(t.value()) == (1012, "the studio's connection is going away; reconnect")
    assert t.disconnecting and len(relayed) == 0
    p.connectionLost(Failure(ConnectionDone()))
    assert [f.reason for f in obs.closed] == [
        "the studio's connection is going away; reconnect"]
    # Opened again, to the new holder: kept until it ends.
    h.upstream.holder = replace_holder
    p, t = h.client()
    p.dataReceived(_UPGRADE)
    h.up()[0].dataReceived(_SWITCHED)
    assert len(relayed) == 1
    p.connectionLost(Failure(ConnectionDone()))
    assert len(relayed) == 0
    h.upstream.holder = None  # this node's own tunnel: its loss ends it, not the registry
    upgraded_here = upgraded(relayed=relayed)
    assert len(relayed) == 0 and upgraded_here[2].value() == b""


def test_a_tunnel_going_away_on_purpose_is_going_away_not_broken() -> None:
    class Mux:
        local_go_away = False
        remote_go_away: int | None = 0  # the studio's GoAway (studios-connect stopping)
        close_reason = None

    h, p, t, up = upgraded()
    up.transport.mux = Mux()
    up.connectionLost(Failure(ConnectionError("tunnel lost: reset")))
    assert close_of(t.value()) == (1012, "the studio's connection is going away; reconnect")


def test_a_revoked_websocket_mid_frame_closes_at_once() -> None:
    """Only a quota waits for the tool's frame to end: a revoked access (logged out, taken
    off the list) gets nothing more of the tool's."""
    closes: list[Any] = []

    def track(session_id: str, identity: Any, close: Any) -> Any:
        closes.append(close)
        return lambda: None

    h, p, t, up = upgraded(track=track)
    up.dataReceived(b"\x81\x05hel")
    t.clear()
    closes[-1]("logged out")
    assert t.value() == b"" and t.disconnecting
    up.dataReceived(b"lo")
    assert t.value() == b""
