"""The proxy's wiring: certificate names, the tunnel upstream, lookup, drain, tracking."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import defer
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial import unittest

from studios_gateway.http.component import TunnelUpstream, check_certificate_names, make_lookup
from studios_gateway.http.upstream import SessionInfo, StudioNotConnected
from studios_gateway.registry.base import TunnelHolder
from studios_gateway.tunnel.dialer import StudioUnreachable
from studios_gateway.wire.mux import RESET_RELAYED
from studios_gateway.wire.stream import StreamReset
from studios_gateway.wire.tls import make_self_signed
from tests.unit.test_auth_authorizer import record, store_with
from tests.unit.test_http_proxy import (
    GET,
    OK,
    Harness,
    close_of,
    parse_responses,
    status_of,
)


def cert(tmp_path: Path, *names: str) -> str:
    pem, _ = make_self_signed(list(names))
    path = tmp_path / "cert.pem"
    path.write_bytes(pem)
    return str(path)


def test_certificate_must_cover_proxy_host_and_wildcard(tmp_path: Path) -> None:
    good = cert(tmp_path, "connect.example.com", "*.connect.example.com")
    assert check_certificate_names(good, "connect.example.com", "connect.example.com",
                                   False) is None
    only_host = cert(tmp_path, "connect.example.com")
    problem = check_certificate_names(only_host, "connect.example.com", "connect.example.com",
                                      False)
    assert problem is not None and "*.connect.example.com" in problem
    assert "the proxy host connect" not in problem
    # Path mode needs only the proxy host.
    assert check_certificate_names(only_host, "connect.example.com", "connect.example.com",
                                   True) is None
    other = cert(tmp_path, "elsewhere.example.org")
    problem = check_certificate_names(other, "connect.example.com", "connect.example.com", True)
    assert problem is not None and "the proxy host connect.example.com" in problem
    ip = cert(tmp_path, "127.0.0.1")
    assert check_certificate_names(ip, "127.0.0.1", "x.test", True) is None
    tld = cert(tmp_path, "localhost", "*.localhost")
    problem = check_certificate_names(tld, "localhost", "localhost", False)
    assert problem is not None and "too few host components" in problem
    (tmp_path / "junk.pem").write_text("not a certificate")
    problem = check_certificate_names(str(tmp_path / "junk.pem"), "a.test", "a.test", True)
    assert problem is not None and "holds no PEM certificate" in problem


class FakeStream(StringTransport):
    def __init__(self) -> None:
        super().__init__()
        self.protocol: Any = None

    def attach(self, protocol: Any) -> None:
        self.protocol = protocol
        protocol.makeConnection(self)


class FakeDialer:
    def __init__(self) -> None:
        self.streams: list[FakeStream] = []
        self.local: set[str] = set()

    def is_local(self, sid: str) -> bool:
        return sid in self.local

    def dial(self, sid: str, kind: bytes) -> defer.Deferred[Any]:
        assert kind == b"T"
        if sid not in self.local:
            return defer.fail(StudioUnreachable(sid))
        s = FakeStream()
        self.streams.append(s)
        return defer.succeed(s)


def tunnel_harness() -> tuple[Harness, FakeDialer]:
    h = Harness()
    dialer = FakeDialer()
    dialer.local.add("abc")
    h.factory.upstream = TunnelUpstream(dialer)
    return h, dialer


def test_tunnel_upstream_forwards_and_maps_failures() -> None:
    h, dialer = tunnel_harness()
    # A reset before any response byte: the tool refused (504, not 502).
    p, t = h.client()
    p.dataReceived(GET)
    dialer.streams[0].protocol.connectionLost(Failure(StreamReset("reset")))
    assert status_of(t) == 504
    p2, t2 = h.client()
    p2.dataReceived(GET)
    stream = dialer.streams[1]
    assert stream.value().startswith(b"GET /lab HTTP/1.1")
    stream.protocol.dataReceived(OK)
    assert [r[0] for r in parse_responses(t2.value())] == [200]
    # No tunnel: the dialer's StudioUnreachable is "not connected" (503 page).
    dialer.local.clear()
    d = TunnelUpstream(dialer).connect("abc", h.factory.upstream_factory("abc"))
    failures: list[Failure] = []
    d.addErrback(failures.append)
    assert failures and failures[0].check(StudioNotConnected)


@pytest.mark.parametrize(("code", "status", "words"), [
    # The holding node resets the stream when the studio's tunnel is lost there: not
    # connected, not 504 (a tool that closes reaches the dialing node as a close)...
    (0, 503, b"Studio not connected"),
    # ...and relays the studio's reset of a stream whose tool refused the connection
    # (RESET_RELAYED): the same 504 page as for a stream of our own tunnel.
    (RESET_RELAYED, 504, b"Studio is not answering"),
])
def test_a_reset_through_another_node(code: int, status: int, words: bytes) -> None:
    h, dialer = tunnel_harness()
    p, t = h.client()
    p.dataReceived(GET)
    stream = dialer.streams[0]
    stream.RESET_IS_LOST = True  # type: ignore[attr-defined]  # (a PeerStream's)
    stream.protocol.connectionLost(Failure(StreamReset("reset", code=code)))
    assert status_of(t) == status and words in t.value()


def test_reset_after_the_response_started_is_not_a_refusal() -> None:
    h, dialer = tunnel_harness()
    p, t = h.client()
    p.dataReceived(GET)
    stream = dialer.streams[0]
    guard = stream.protocol
    stream.protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
    # Answered: the guard has stepped aside, the stream talks to the proxy's protocol.
    assert stream.protocol is guard.inner and stream.protocol is not guard
    stream.protocol.connectionLost(Failure(StreamReset("reset")))
    assert t.disconnecting and b"504" not in t.value()


def test_lookup_uses_record_and_tunnel_state() -> None:
    store = store_with(*(replace(record(s), tool="jupyterlab")
                         for s in ("here", "there", "nowhere")))
    dialer = FakeDialer()
    dialer.local.add("here")
    holder = TunnelHolder("there", "node-b", "10.0.0.2:7777", "t1", "0.12.0", 8888, 1.0)
    assert unittest.TestCase().successResultOf(store.claim_tunnel(holder, 30)) is None
    lookup = make_lookup(store, dialer)  # type: ignore[arg-type]
    got: dict[str, Any] = {}
    for sid in ("here", "there", "nowhere", "missing"):
        lookup(sid).addCallback(lambda info, sid=sid: got.__setitem__(sid, info))
    assert got["here"] == SessionInfo("here", "jupyterlab", True)
    assert got["there"].connected and not got["nowhere"].connected
    assert got["missing"] is None
    store.failing.add("get_tunnel")  # the registry cannot say where the tunnel is
    lookup("there").addCallback(lambda info: got.__setitem__("broken", info))
    assert got["broken"] == SessionInfo("there", "jupyterlab", False)


def test_drain_closes_idle_and_waits_for_in_flight() -> None:
    h = Harness()
    idle, idle_t = h.client()
    idle.dataReceived(GET)  # kept alive after its answer: idle at the drain
    h.up()[0].dataReceived(OK)
    busy, busy_t = h.client()
    busy.dataReceived(GET)
    done: list[Any] = []
    h.factory.drain().addCallback(done.append)
    assert idle_t.disconnecting and not busy_t.disconnecting
    idle.connectionLost(Failure(ConnectionError()))
    assert not done
    h.up()[0].dataReceived(OK)  # the in-flight response completes, then the connection closes
    assert [r[0] for r in parse_responses(busy_t.value())] == [200]
    assert busy_t.disconnecting
    busy.connectionLost(Failure(ConnectionError()))
    assert done == [None]


def test_drain_answers_the_request_of_a_connection_just_accepted() -> None:
    """A connection accepted as the drain began has not sent its request yet (a client
    connects to send one): closing it at once gave that client a reset or an empty answer
    at every restart. Its request is answered, then it closes; one whose head never
    comes closes after the drain's grace, and a kept-alive one whose next request is
    still in its socket waits for it too (test_sockopts: bytes_waiting)."""
    h = Harness()
    fresh, fresh_t = h.client()
    partial, partial_t = h.client()
    partial.dataReceived(GET[:10])
    silent, silent_t = h.client()
    done: list[Any] = []
    h.factory.drain().addCallback(done.append)
    assert not (fresh_t.disconnecting or partial_t.disconnecting or silent_t.disconnecting)
    fresh.dataReceived(GET)
    partial.dataReceived(GET[10:])
    for up, _ in h.upstream.conns:
        up.dataReceived(OK)
    for p, t in ((fresh, fresh_t), (partial, partial_t)):
        assert [r[0] for r in parse_responses(t.value())] == [200]
        assert t.disconnecting
        p.connectionLost(Failure(ConnectionDone()))
    assert not done and not silent_t.disconnecting
    h.clock.advance(1.0)  # the drain's grace for a head
    assert silent_t.disconnecting
    silent.connectionLost(Failure(ConnectionDone()))
    assert done == [None]


@pytest.mark.parametrize("compiled_lane", [True, False])
def test_answers_during_the_drain_say_the_connection_closes(compiled_lane: bool) -> None:
    """Each answer the drain lets through (a tool's, in flight as it began or asked for
    after it; a page of the gateway's own) is followed by the close, and says so in its
    head (Connection: close): without it a client took the connection as kept alive and
    could send its next request into the close, the reset the drain's grace avoids."""
    h = Harness(compiled_lane=compiled_lane)
    busy, busy_t = h.client()
    busy.dataReceived(GET)
    fresh, fresh_t = h.client()
    own, own_t = h.client()
    h.factory.drain()
    fresh.dataReceived(GET)
    own.dataReceived(b"GET /nothing HTTP/1.1\r\nHost: studios.test\r\n\r\n")
    for up, _ in h.upstream.conns:
        up.dataReceived(OK)
    for t, status in ((busy_t, 200), (fresh_t, 200), (own_t, 404)):
        [(got, headers, _)] = parse_responses(t.value())
        assert (got, headers.get(b"connection")) == (status, b"close"), t.value()
        assert t.disconnecting


_UPGRADE = (b"GET /ws HTTP/1.1\r\nHost: abc.studios.test\r\nConnection: Upgrade\r\n"
            b"Upgrade: websocket\r\n\r\n")
_SWITCHED = (b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n"
             b"Upgrade: websocket\r\n\r\n")


def test_a_websocket_upgraded_during_the_drain_is_closed_as_the_drain_closes_them() -> None:
    """A WebSocket whose upgrade was in flight as the drain began, or on its way (a
    connection the drain lets send its request), gets its 101 and then 1012 at once, as
    the WebSockets open before the drain: it stayed open and held the drain until
    CONNECT_SHUTDOWN_GRACE ran out, then ended without a close frame (1006)."""
    h = Harness()
    asked, asked_t = h.client()
    asked.dataReceived(_UPGRADE)
    fresh, fresh_t = h.client()
    done: list[Any] = []
    h.factory.drain().addCallback(done.append)
    fresh.dataReceived(_UPGRADE)
    for up, _ in h.upstream.conns:
        up.dataReceived(_SWITCHED)
    for p, t in ((asked, asked_t), (fresh, fresh_t)):
        head, _, frames = t.value().partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101 ")
        assert close_of(frames) == (1012, "this gateway node is shutting down; reconnect")
        assert t.disconnecting
        p.connectionLost(Failure(ConnectionDone()))
    assert done == [None]


def test_upgraded_connections_are_tracked_and_closed_by_revocation() -> None:
    tracked: list[tuple[str, Any, Any]] = []
    released: list[bool] = []

    def track(sid: str, who: Any, close: Any) -> Any:
        tracked.append((sid, who, close))
        return lambda: released.append(True)

    h = Harness(track=track)
    p, t = h.client()
    p.dataReceived(b"GET /ws HTTP/1.1\r\nHost: abc.studios.test\r\nConnection: Upgrade\r\n"
                   b"Upgrade: websocket\r\n\r\n")
    h.up()[0].dataReceived(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n"
                           b"Upgrade: websocket\r\n\r\n")
    assert [(sid, who.subject) for sid, who, _ in tracked] == [("abc", "anonymous")]
    tracked[0][2]("logged out")
    assert t.disconnecting
    # A TLS transport sends its close_notify, and closes, only once no producer is
    # registered: the tool stream's stayed, and over HTTPS a logout left the browser's
    # WebSocket open until the browser itself closed it.
    assert t.producer is None
    p.connectionLost(Failure(ConnectionError()))
    assert released == [True]


def test_an_upgraded_connection_the_tool_closes_unregisters_its_producer() -> None:
    """The tool (or the studio's tunnel) ends a WebSocket: the browser's connection
    closes, over TLS too (which waits for its producer to go first)."""
    h = Harness()
    p, t = h.client()
    p.dataReceived(b"GET /ws HTTP/1.1\r\nHost: abc.studios.test\r\nConnection: Upgrade\r\n"
                   b"Upgrade: websocket\r\n\r\n")
    up, _ = h.up()
    up.dataReceived(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n"
                    b"Upgrade: websocket\r\n\r\n")
    assert t.producer is not None  # the tool stream's back-pressure, while both are open
    up.connectionLost(Failure(ConnectionDone()))
    assert t.disconnecting and t.producer is None


def test_a_proxy_url_on_https_without_tls_here_makes_tool_cookies_secure() -> None:
    """CONNECT_PROXY_URL on https:// with no CONNECT_TLS_* (a TLS terminator before the
    gateway): the proxy is told browsers are on HTTPS (tool cookies get Secure)."""
    from unittest import mock

    from twisted.internet.task import Clock

    from studios_gateway.config_loading import load_config
    from studios_gateway.http.component import build_factory

    for url, outside in (("https://connect.example.com", True),
                         ("http://connect.example.com", False)):
        config = load_config(environ={"CONNECT_PROXY_URL": url})
        factory = build_factory(config, Clock(), mock.Mock(), mock.Mock(),
                                mock.Mock(signing_key=b"k" * 32))
        assert (factory.scheme, factory.https_outside) == ("http", outside), url
