"""What the HTTP proxy tells the traffic observer: one finished exchange's facts per
request, and a meter for a WebSocket (the proxy driven by hand, as in test_http_proxy)."""

from __future__ import annotations

import ipaddress
from typing import Any

from studios_gateway.traffic.facts import Finished
from studios_gateway.traffic.observer import Meter
from tests.unit.test_http_proxy import OK, Harness


class Observer:
    def __init__(self) -> None:
        self.done: list[Finished] = []
        self.closed: list[tuple[Meter, Finished]] = []
        self.meters: list[Meter] = []

    def http_done(self, f: Finished) -> None:
        self.done.append(f)

    def open(self, kind: str, session_id: str, subject: str, stop: Any) -> Meter:
        meter = Meter(kind, session_id, subject, stop)
        self.meters.append(meter)
        return meter

    def close(self, meter: Meter, f: Finished) -> None:
        self.closed.append((meter, f))


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


def test_an_untrusted_peer_is_the_client_and_refusals_say_why() -> None:
    obs = Observer()
    h = Harness(observer=obs)
    p, t = h.client()
    p.dataReceived(b"GET / HTTP/1.1\r\nHost: off.studios.test\r\n"
                   b"X-Forwarded-For: 1.2.3.4\r\n\r\n")
    [f] = obs.done
    assert f.client == "192.0.2.7" and f.status == 502
    assert f.reason == "studio not connected"


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
