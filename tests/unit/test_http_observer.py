"""What the HTTP proxy tells the traffic observer: one finished exchange's facts per
request, and a meter for a WebSocket (the proxy driven by hand, as in test_http_proxy)."""

from __future__ import annotations

import ipaddress
from dataclasses import replace
from typing import Any

from prometheus_client import CollectorRegistry
from twisted.internet import defer
from twisted.internet.error import ConnectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from studios_gateway.http import pages
from studios_gateway.traffic.access_log import AccessLog, text_line
from studios_gateway.traffic.facts import Finished
from studios_gateway.traffic.metrics import TrafficMetrics
from studios_gateway.traffic.observer import Meter, Traffic
from studios_gateway.traffic.throttle import Throttles
from studios_gateway.wire.mux import TunnelLost
from tests.unit.test_http_proxy import OK, Harness, status_of


class Observer:
    def __init__(self, throttles: Throttles | None = None) -> None:
        self.throttles = throttles
        self.done: list[Finished] = []
        self.closed: list[tuple[Meter, Finished]] = []
        self.meters: list[Meter] = []

    def http_done(self, f: Finished) -> None:
        self.done.append(f)

    def http(self, *fields: Any) -> None:  # (Traffic.http: a Finished's fields in order)
        self.done.append(Finished(*fields))

    def open(self, kind: str, session_id: str, subject: str, stop: Any) -> Meter:
        meter = Meter(kind, session_id, subject, stop)
        self.meters.append(meter)
        return meter

    def close(self, meter: Meter, f: Finished) -> None:
        self.closed.append((meter, f))

    def carried(self, f: Finished) -> None:  # (a tunnel carried in a WebSocket ended)
        self.done.append(f)


SECRET_GET = (b"GET /lab/tree?token=s3cret-query HTTP/1.1\r\nHost: abc.studios.test\r\n"
              b"Cookie: session=s3cret-cookie\r\nAuthorization: Bearer s3cret-token\r\n"
              b"X-Forwarded-For: 198.51.100.9, 203.0.113.5\r\n\r\n")


def test_a_proxied_request_is_reported_without_query_or_headers() -> None:
    obs = Observer()
    h = Harness(observer=obs, trusted_proxy_cidrs=[ipaddress.ip_network("10.0.0.0/8")])
    h.clock.advance(100)
    p, t = h.client(peer="10.0.0.2")
    p.dataReceived(SECRET_GET)
    h.clock.advance(0.25)
    up, _ = h.up()
    up.dataReceived(OK)
    [f] = obs.done
    assert (f.kind, f.method, f.path, f.status) == ("http", "GET", "/lab/tree", 200)
    assert (f.session_id, f.tool, f.subject) == ("abc", "jupyterlab", "anonymous")
    assert f.client == "203.0.113.5"  # the trusted proxy's last X-Forwarded-For entry
    assert (f.started, f.duration) == (100, 0.25)
    assert f.bytes_in == len(SECRET_GET) and f.bytes_out == len(t.value())
    assert "s3cret" not in repr(f)


def test_a_studio_whose_node_cannot_be_reached_says_so_in_the_access_line() -> None:
    """The registry names another node as the studio's holder and this node cannot reach
    it (a wrong CONNECT_ADVERTISE_ADDRESS, a firewall): the page is the not-connected one,
    and the access line says why. It said "studio not connected" alone, of a studio that
    was connected."""
    from studios_gateway.http.upstream import StudioNotConnected

    obs = Observer()
    h = Harness(observer=obs)
    p, _ = h.client()
    why = "node gw-3 unreachable (Connection was refused by other side)"
    h.upstream.fail = StudioNotConnected(why, detail=why)
    p.dataReceived(b"GET / HTTP/1.1\r\nHost: abc.studios.test\r\n\r\n")
    h.upstream.fail = StudioNotConnected("abc")
    p.dataReceived(b"GET / HTTP/1.1\r\nHost: abc.studios.test\r\n\r\n")
    assert [(f.status, f.reason) for f in obs.done] == [
        (503, f"studio not connected ({why})"), (503, "studio not connected")]


def test_a_tool_that_refused_or_ended_the_connection_says_so_in_the_access_line() -> None:
    """studios-connect ended the stream as the tool refused it (after
    CONNECT_TOOL_RESTART_WAIT), or the tool closed it before answering: the access line
    said only "Gateway Timeout" / "Bad Gateway"."""
    from studios_gateway.http.upstream import ToolNotAnswering

    obs = Observer()
    h = Harness(observer=obs)
    p, _ = h.client()
    p.dataReceived(b"GET / HTTP/1.1\r\nHost: abc.studios.test\r\n\r\n")
    h.up()[0].connectionLost(Failure(ToolNotAnswering("abc")))
    p, _ = h.client()
    p.dataReceived(b"GET / HTTP/1.1\r\nHost: abc.studios.test\r\n\r\n")
    h.up()[0].connectionLost(Failure(ConnectionDone()))
    assert [(f.status, f.reason) for f in obs.done] == [
        (504, "the tool refused the connection (nothing listening on its port)"),
        (502, "the tool's connection ended before its answer")]


def test_a_trusted_proxy_without_x_forwarded_for_is_the_client_itself() -> None:
    # The head says whether it holds an X-Forwarded-For (any case); only then is it read.
    obs = Observer()
    h = Harness(observer=obs, trusted_proxy_cidrs=[ipaddress.ip_network("10.0.0.0/8")])
    p, t = h.client(peer="10.0.0.2")
    for extra in (b"", b"x-forwarded-FOR: 198.51.100.4\r\n", b""):
        p.dataReceived(b"GET /a HTTP/1.1\r\nHost: abc.studios.test\r\n" + extra + b"\r\n")
        up, _ = h.up()
        up.dataReceived(OK)
    assert [f.client for f in obs.done] == ["10.0.0.2", "198.51.100.4", "10.0.0.2"]


def test_an_untrusted_peer_is_the_client_and_refusals_say_why() -> None:
    obs = Observer()
    h = Harness(observer=obs)
    p, t = h.client()
    p.dataReceived(b"GET / HTTP/1.1\r\nHost: off.studios.test\r\n"
                   b"X-Forwarded-For: 1.2.3.4\r\n\r\n")
    [f] = obs.done
    assert f.client == "192.0.2.7" and f.status == 503
    assert f.reason == "studio not connected"


def test_a_logged_in_user_refused_by_the_authorizer_is_named_with_the_reason() -> None:
    # "Why could bob not open the studio?": the access line says who and why, not
    # "- ... forbidden".
    refusal = replace(pages.forbidden(message="bob may not use studio abc"), user="bob",
                      why="not allowed on this session")
    obs = Observer()
    h = Harness(observer=obs, authorize=lambda request, sid: defer.succeed(refusal))
    p, t = h.client()
    p.dataReceived(b"GET /lab HTTP/1.1\r\nHost: abc.studios.test\r\n\r\n")
    [f] = obs.done
    assert (f.status, f.subject, f.reason) == (403, "bob", "not allowed on this session")
    assert status_of(t) == 403 and b"not allowed" not in t.value()  # the page's own words
    line = text_line(f, "gw-1")
    assert ' - bob [' in line and 'reason="not allowed on this session"' in line


def test_a_gateway_page_naming_its_user_and_reason_is_logged_so() -> None:
    # The login's own routes (a used login link): "- ... 400 bad request" before.
    used = replace(pages.status_page(400, "This login link was used already."),
                   user="alice", why="login link to abc used already")
    obs = Observer()
    h = Harness(observer=obs, local_routes=lambda request: defer.succeed(used))
    p, t = h.client()
    p.dataReceived(b"POST /_connect/link HTTP/1.1\r\nHost: studios.test\r\n"
                   b"Content-Length: 0\r\n\r\n")
    [f] = obs.done
    assert (f.status, f.subject, f.reason) == (400, "alice", "login link to abc used already")


def test_a_refused_head_is_reported() -> None:
    obs = Observer()
    h = Harness(observer=obs)
    p, t = h.client()
    p.dataReceived(b"GET / HTTP/1.1\nHost: x\n\n")
    [f] = obs.done
    assert f.status == 400 and f.reason == "bare LF" and f.bytes_out == len(t.value())


def test_a_websocket_is_metered_and_reported_when_it_ends() -> None:
    obs = Observer()
    h = Harness(observer=obs)
    p, t = h.client()
    head = (b"GET /ws?token=x HTTP/1.1\r\nHost: abc.studios.test\r\nConnection: Upgrade\r\n"
            b"Upgrade: websocket\r\nSec-WebSocket-Key: x\r\n\r\n")
    p.dataReceived(head)
    up, ut = h.up()
    up.dataReceived(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                    b"Connection: Upgrade\r\nSec-WebSocket-Accept: y\r\n\r\n")
    up.dataReceived(b"\x81\x02hi")
    p.dataReceived(b"\x81\x82abcdXY")
    assert obs.done == []  # one line for the WebSocket, when it ends
    [meter] = obs.meters
    h.clock.advance(3)
    p.connectionLost(None)
    [(closed, f)] = obs.closed
    assert closed is meter and meter.bytes_in == len(head) + 8
    assert meter.bytes_out == len(t.value())
    assert (f.kind, f.status, f.path, f.duration) == ("websocket", 101, "/ws", 3)


WS_HEAD = (b"GET /ws HTTP/1.1\r\nHost: abc.studios.test\r\nConnection: Upgrade\r\n"
           b"Upgrade: websocket\r\nSec-WebSocket-Key: x\r\n\r\n")
SWITCHED = (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: y\r\n\r\n")


def test_a_websocket_whose_studio_connection_broke_says_why_in_its_access_line() -> None:
    """The studio's tunnel declared dead under an open WebSocket: the browser's connection
    closes, and the access line says why (a tool closing it says nothing)."""
    obs = Observer()
    h = Harness(observer=obs)
    for lost, reason in [
        (Failure(TunnelLost("tunnel lost: nothing heard from the studio for 20s")),
         "the connection to the studio broke: tunnel lost: nothing heard from the studio "
         "for 20s"),
        (Failure(ConnectionDone()), ""),
    ]:
        p, t = h.client()
        p.dataReceived(WS_HEAD)
        up, _ = h.up()
        up.dataReceived(SWITCHED)
        up.connectionLost(lost)
        assert t.disconnecting
        p.connectionLost(None)
        assert obs.closed[-1][1].reason == reason


def test_a_stopped_websocket_gets_a_close_frame_with_the_reason() -> None:
    obs = Observer()
    h = Harness(observer=obs)
    p, t = h.client()
    p.dataReceived(WS_HEAD)
    up, _ = h.up()
    up.dataReceived(SWITCHED)
    t.clear()
    [meter] = obs.meters
    meter.stop("transfer quota reached")
    reason = b"transfer quota reached"
    assert t.value() == b"\x88" + bytes([2 + len(reason)]) + b"\x03\xf0" + reason
    assert t.disconnecting


def test_a_bandwidth_cap_pauses_the_side_that_sent_too_much() -> None:
    h = Harness()
    obs = Observer(Throttles(1000, h.clock, burst_seconds=1.0))
    h.factory.observer = obs
    p, t = h.client()
    p.dataReceived(WS_HEAD)
    up, ut = h.up()
    up.dataReceived(SWITCHED)
    # 1000 bytes at once, then 1000 a second: the 101's head and 3000 bytes are 2.1 s over.
    up.dataReceived(b"x" * 3000)
    assert ut.producerState == "paused" and t.producerState == "producing"
    h.clock.advance(2.0)
    assert ut.producerState == "paused"
    h.clock.advance(0.2)
    assert ut.producerState == "producing"
    p.dataReceived(b"y" * 1500)  # the client's side now, 98 bytes left: 1.402 s
    assert t.producerState == "paused"
    h.clock.advance(1.3)
    assert t.producerState == "paused"
    h.clock.advance(0.2)
    assert t.producerState == "producing"


def test_throttles_average_the_rate() -> None:
    from twisted.internet.task import Clock

    clock = Clock()
    th = Throttles(100, clock, burst_seconds=0.5)
    assert th.delay("s", 50) == 0  # the burst
    assert th.delay("s", 100) == 1.0
    clock.advance(1.0)
    assert th.delay("s", 0) == 0  # paid back
    assert th.delay("other", 50) == 0  # per session


def test_the_gateway_s_observer_logs_and_counts_each_kept_alive_request() -> None:
    # The real Traffic (text access log, metrics, per-session figures) behind the proxy:
    # every request of a kept-alive connection is its own line and count, no secret in any.
    events: list[dict[str, Any]] = []
    registry = CollectorRegistry()
    h = Harness()
    traffic = Traffic(metrics=TrafficMetrics(registry), clock=h.clock,
                      access_log=AccessLog("text", "gw-1", Logger(observer=events.append)))
    h.factory.observer = traffic
    h.clock.advance(1_796_000_000)
    p, t = h.client()
    sizes = []
    for _ in range(3):
        t.clear()
        p.dataReceived(SECRET_GET)
        h.clock.advance(0.002)
        up, _ = h.up(0)
        up.dataReceived(OK)
        sizes.append(len(t.value()))
    assert len(h.upstream.conns) == 1  # (one pooled tool connection: the same path each time)
    lines = [e["access_line"] for e in events]
    assert lines == [
        f'192.0.2.7 - anonymous [30/Nov/2026:00:53:20 +0000] "GET /lab/tree" 200 '
        f"{size} in={len(SECRET_GET)} out={size} duration=0.002 kind=http session=abc "
        f"tool=jupyterlab node=gw-1" for size in sizes]
    assert not any("s3cret" in line or "198.51.100.9" in line for line in lines)
    assert registry.get_sample_value("studios_gateway_http_requests_total",
                                     {"code": "2xx", "tool": "jupyterlab"}) == 3
    assert registry.get_sample_value("studios_gateway_http_request_duration_seconds_count",
                                     {"tool": "jupyterlab"}) == 3
    assert registry.get_sample_value("studios_gateway_transfer_bytes_total",
                                     {"kind": "http", "direction": "out"}) == sum(sizes)
    figures = traffic.usage.get("abc")
    assert figures is not None and (figures.requests, figures.bytes_in) == (
        3, 3 * len(SECRET_GET))
