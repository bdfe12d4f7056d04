"""The tunnel's WebSocket endpoint on the HTTP port (/_connect/tunnel): an upgrade without
a proper Sec-WebSocket-Key is refused with 400 and a reason; a malformed frame after the
upgrade ends the connection with a close frame (1002; 1003 for a text message) and one
log line naming the peer; each attempt has a log line and an access line."""

from __future__ import annotations

import base64
import struct
from typing import Any

import pytest
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Factory
from twisted.logger import Logger, formatEvent
from twisted.python.failure import Failure
from wsproto import ConnectionType
from wsproto import events as ws
from wsproto.connection import Connection

from studios_gateway.wire.carrier import WebSocketServer, websocket_refusal
from tests.unit.test_carrier import Recorder
from tests.unit.test_http_observer import Observer
from tests.unit.test_http_proxy import Harness, status_of

KEY = base64.b64encode(b"0123456789abcdef")  # 16 bytes: 24 characters


def upgrade(key: bytes = KEY) -> bytes:
    return (b"GET /_connect/tunnel HTTP/1.1\r\nHost: gw.studios.test\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: " + key + b"\r\n"
            b"Sec-WebSocket-Version: 13\r\n\r\n")


def client_frames(*events: Any) -> bytes:
    """What a WebSocket client sends for `events` (masked frames)."""
    c = Connection(ConnectionType.CLIENT)
    return b"".join(c.send(e) for e in events)


def masked(first: int, payload: bytes) -> bytes:
    """A client frame by hand: `first` its first byte (FIN and opcode), a zero mask."""
    return bytes([first, 0x80 | len(payload)]) + b"\0\0\0\0" + payload


def close_frame(data: bytes) -> tuple[int, str]:
    """The code and reason of the server's close frame at the end of `data`."""
    at = data.rindex(b"\x88")
    n = data[at + 1]
    payload = data[at + 2:at + 2 + n]
    return struct.unpack("!H", payload[:2])[0], payload[2:].decode()


class Gateway:
    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.obs = Observer()
        self.h = Harness(observer=self.obs)
        self.inner: list[Recorder] = []

        def build(addr: Any) -> Recorder:
            self.inner.append(Recorder())
            return self.inner[-1]

        carry = Factory()
        carry.buildProtocol = build  # type: ignore[method-assign]
        self.h.factory.carry = carry
        self.p, self.t = self.h.client(peer="198.51.100.3")
        self.events: list[dict[str, Any]] = []
        self.p._log = Logger(observer=self.events.append)
        monkeypatch.setattr(WebSocketServer, "_log", Logger(observer=self.events.append))

    def lines(self) -> list[str]:
        return [formatEvent(e) for e in self.events]

    def lose(self) -> None:
        self.p.connectionLost(Failure(ConnectionDone()))


@pytest.fixture
def gw(monkeypatch: pytest.MonkeyPatch) -> Gateway:
    return Gateway(monkeypatch)


@pytest.mark.parametrize(("headers", "why"), [
    ([(b"Upgrade", b"websocket"), (b"Sec-WebSocket-Version", b"13"),
      (b"Sec-WebSocket-Key", KEY)], None),
    ([(b"Upgrade", b"WebSocket"), (b"Sec-WebSocket-Version", b"13"),
      (b"Sec-WebSocket-Key", b" " + KEY + b" ")], None),
    ([(b"Upgrade", b"websocket"), (b"Sec-WebSocket-Version", b"13"),
      (b"Sec-WebSocket-Key", b"x")], "the Sec-WebSocket-Key header is not the base64 of 16 bytes"),
    ([(b"Upgrade", b"websocket"), (b"Sec-WebSocket-Version", b"13"),
      (b"Sec-WebSocket-Key", base64.b64encode(b"x" * 15) + b"==")],
     "the Sec-WebSocket-Key header is not the base64 of 16 bytes"),
    ([(b"Upgrade", b"websocket"), (b"Sec-WebSocket-Version", b"13"),
      (b"Sec-WebSocket-Key", b"!" * 22 + b"==")],
     "the Sec-WebSocket-Key header is not the base64 of 16 bytes"),
    ([(b"Upgrade", b"websocket"), (b"Sec-WebSocket-Version", b"13")],
     "no Sec-WebSocket-Key header"),
    ([(b"Upgrade", b"websocket"), (b"Sec-WebSocket-Version", b"13"),
      (b"Sec-WebSocket-Key", KEY), (b"Sec-WebSocket-Key", KEY)],
     "more than one Sec-WebSocket-Key header"),
    ([(b"Upgrade", b"h2c"), (b"Sec-WebSocket-Version", b"13"), (b"Sec-WebSocket-Key", KEY)],
     "the Upgrade header is not websocket"),
    ([(b"Upgrade", b"websocket"), (b"Sec-WebSocket-Version", b"8"),
      (b"Sec-WebSocket-Key", KEY)], "the Sec-WebSocket-Version header is not 13"),
])
def test_websocket_refusal(headers: list[tuple[bytes, bytes]], why: str | None) -> None:
    assert websocket_refusal(headers) == why


def test_a_bad_key_is_refused_with_a_reason_and_logged(gw: Gateway) -> None:
    gw.p.dataReceived(upgrade(b"x"))
    assert status_of(gw.t) == 400 and gw.t.disconnecting and not gw.inner
    assert b"the Sec-WebSocket-Key header is not the base64 of 16 bytes" in gw.t.value()
    assert gw.lines() == ["refused a WebSocket tunnel from 198.51.100.3: the Sec-WebSocket-Key "
                          "header is not the base64 of 16 bytes"]
    [f] = gw.obs.done
    assert (f.kind, f.client, f.method, f.path, f.status) == (
        "http", "198.51.100.3", "GET", "/_connect/tunnel", 400)
    assert f.reason == ("WebSocket upgrade refused: the Sec-WebSocket-Key header is not the "
                        "base64 of 16 bytes")


def test_binary_messages_reach_the_tunnel_and_the_end_has_an_access_line(gw: Gateway) -> None:
    gw.h.clock.advance(1)
    gw.p.dataReceived(upgrade())
    assert gw.t.value().startswith(b"HTTP/1.1 101 ")
    gw.p.dataReceived(client_frames(ws.BytesMessage(data=b"tls bytes")))
    [inner] = gw.inner
    assert inner.data == b"tls bytes"
    inner.transport.write(b"back")
    gw.h.clock.advance(5)
    gw.lose()
    assert inner.lost
    assert gw.lines() == ["carrying a tunnel in a WebSocket from 198.51.100.3"]
    [f] = gw.obs.done
    assert (f.kind, f.client, f.method, f.path, f.status, f.reason) == (
        "websocket", "198.51.100.3", "GET", "/_connect/tunnel", 101, "")
    assert (f.started, f.duration) == (1, 5)
    assert f.bytes_in == len(upgrade()) + len(client_frames(ws.BytesMessage(data=b"tls bytes")))
    assert f.bytes_out == len(gw.t.value())


@pytest.mark.parametrize(("frames", "code", "why"), [
    (b"garbage garbage\r\n", 1002, "malformed WebSocket frame: Invalid opcode 0x7"),
    (b"\xc2\x80abcd", 1002, "malformed WebSocket frame: Reserved bit set unexpectedly"),
    (b"\x82\x03abc", 1002, "malformed WebSocket frame: server received unexpected unmasked "
                           "frame"),
    (b"\x83\x80abcd", 1002, "malformed WebSocket frame: Invalid opcode 0x3"),
    (client_frames(ws.TextMessage(data="hello")), 1003,
     "a text message (a tunnel is carried in binary messages only)"),
    (masked(0x02, b"x") + masked(0x81, b"y"), 1002,
     "malformed WebSocket frame: expected CONTINUATION, got TEXT"),
], ids=["garbage", "reserved-bit", "unmasked", "opcode-3", "text", "continuation"])
# (named: a client's frame carries a random mask, and the runners of `-n 2` must collect
# the same names)
def test_a_malformed_frame_is_closed_with_a_close_frame_and_one_log_line(
        gw: Gateway, frames: bytes, code: int, why: str) -> None:
    gw.p.dataReceived(upgrade())
    head = len(gw.t.value())
    gw.p.dataReceived(frames)
    assert gw.t.disconnecting
    assert close_frame(gw.t.value()[head:]) == (code, why)
    gw.p.dataReceived(client_frames(ws.BytesMessage(data=b"after")))  # not read any more
    sent = gw.t.value()
    gw.inner[0].transport.write(b"TLS alert")  # (the inner protocol's last words: dropped)
    assert gw.t.value() == sent
    gw.lose()
    assert gw.lines() == ["carrying a tunnel in a WebSocket from 198.51.100.3",
                          f"WebSocket tunnel from 198.51.100.3 closed with {code}: {why}"]
    assert all("<" not in line and "b'" not in line for line in gw.lines())
    [f] = gw.obs.done
    assert (f.kind, f.status, f.reason) == ("websocket", 101, why)
    assert gw.inner[0].lost and b"after" not in gw.inner[0].data


def test_the_peer_s_close_is_answered_with_a_close_frame(gw: Gateway) -> None:
    gw.p.dataReceived(upgrade())
    head = len(gw.t.value())
    gw.p.dataReceived(client_frames(ws.CloseConnection(code=1000, reason="bye")))
    assert close_frame(gw.t.value()[head:]) == (1000, "bye") and gw.t.disconnecting
    sent = gw.t.value()
    gw.inner[0].transport.write(b"TLS alert")
    assert gw.t.value() == sent
    gw.lose()
    assert len(gw.lines()) == 1 and gw.obs.done[0].reason == ""
