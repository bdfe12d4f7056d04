"""Gateway tunnel server and connect client in one reactor, over real TLS sockets."""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import defer, reactor, task
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import capturedLogs, formatEvent
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.trial.unittest import TestCase
from twisted.web.server import Site
from zope.interface import implementer

from studios_gateway.demo.tool import make_root
from studios_gateway.registry.base import SessionRecord, hash_token, new_token
from studios_gateway.registry.memory import MemoryStore
from studios_gateway.studio.client import Backoff, ConnectClient
from studios_gateway.studio.segments import SMALL_MSS
from studios_gateway.studio.settings import ClientSettings, Gateway
from studios_gateway.tunnel.server import TunnelServerFactory, TunnelSettings, TunnelTable
from studios_gateway.wire import tls
from studios_gateway.wire.sockopts import (
    TCP_RTO_MAX_MS,
    TUNNEL_RTO_MAX_MS,
    TUNNEL_UNACKED_MARGIN,
    TUNNEL_UNSENT,
    _tcp_under,
)

# Real sockets on 127.0.0.1 in this process: the integration layer, not the fast one.
pytestmark = pytest.mark.slow


class Collect(Protocol):
    """Sends `request` (if any) on connect, collects everything until the stream ends."""

    def __init__(self, request: bytes = b""):
        self.request = request
        self.data = bytearray()
        self.done: defer.Deferred[bytes] = defer.Deferred()

    def connectionMade(self) -> None:
        if self.request:
            self.transport.write(self.request)

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Any = None) -> None:
        if not self.done.called:
            self.done.callback(bytes(self.data))


@implementer(IHalfCloseableProtocol)
class CountToEOF(Protocol):
    """A tool that reads until EOF, then answers with the byte count and closes."""

    n = 0

    def dataReceived(self, data: bytes) -> None:
        self.n += len(data)

    def readConnectionLost(self) -> None:
        self.transport.write(b"%d\n" % self.n)
        self.transport.loseConnection()


class _ClosesAtOnce(Protocol):
    """A listener that accepts a connection and closes it at once."""

    def connectionMade(self) -> None:
        self.transport.loseConnection()


class TunnelTests(TestCase):
    timeout = 30

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        tmp = Path(tempfile.mkdtemp(prefix="tunnel-test-"))
        self.addCleanup(shutil.rmtree, tmp, True)
        cert, key = tls.ensure_self_signed(tmp, ["localhost", "127.0.0.1"])
        self.pin = tls.fingerprint_pem(cert.read_bytes())
        self.store = MemoryStore(reactor)
        self.token = new_token()
        yield self.store.create(SessionRecord(
            id="s1", workspace_id=None, tool="generic", owner="alice", allowed_users=(),
            ssh_enabled=False, token_hash=hash_token(self.token), created_at=0.0))
        self.table = TunnelTable(self.store, node_id="n1", node_address="127.0.0.1:1",
                                 clock=reactor, settings=TunnelSettings())
        self.table.start()
        self.addCleanup(self.table.stop)
        factory = TLSMemoryBIOFactory(tls.server_options(cert, key), False,
                                      TunnelServerFactory(self.table))
        port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
        self.addCleanup(port.stopListening)
        self.gw_port = port.getHost().port
        tool = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            Site(make_root("/")))
        self.addCleanup(tool.stopListening)
        self.tool_port = tool.getHost().port

    def client(self, token: str | None = None, version: str | None = None,
               fatal: defer.Deferred[str] | None = None,
               stalled_before: bool = False, gateways: tuple[Gateway, ...] | None = None,
               proxy_environ: tuple[tuple[str, str], ...] = (),
               backoff: Backoff | None = None) -> ConnectClient:
        """`stalled_before`: as after an attempt that ended before its bind was answered.
        `gateways`: those listed (by default this test's gateway alone)."""
        extra = {"connect_version": version} if version else {}
        settings = ClientSettings(
            gateways=gateways or (Gateway("127.0.0.1", self.gw_port, self.pin),),
            session_id="s1", token=token or self.token, tool_port=self.tool_port,
            proxy_environ=proxy_environ, **extra)
        c = ConnectClient(settings, reactor, on_fatal=(fatal.callback if fatal is not None
                                                       else None), backoff=backoff)
        if stalled_before:
            c.segments.stalled(settings.gateways[0])
        c.startService()
        self.addCleanup(self.table.wait_empty)  # runs after the client has closed its side
        self.addCleanup(lambda: c.stopService() if c.running else None)
        return c

    def request(self, raw: bytes) -> defer.Deferred[bytes]:
        stream = self.table.open_stream("s1")
        assert stream is not None, "session s1 has no tunnel"
        proto = Collect(raw)
        stream.attach(proto)
        return proto.done

    @defer.inlineCallbacks
    def test_http_through_a_stream(self) -> Any:
        c = self.client()
        yield c.ready
        body = yield self.request(b"GET /api/info HTTP/1.0\r\nHost: x\r\n\r\n")
        head, _, payload = body.partition(b"\r\n\r\n")
        self.assertIn(b"200 OK", head)
        self.assertEqual(json.loads(payload)["path"], "/api/info")
        holder = yield self.store.get_tunnel("s1")
        self.assertEqual(holder.node_id, "n1")

    @defer.inlineCallbacks
    def test_a_half_closed_stream_is_a_half_closed_tool_connection(self) -> Any:
        tool = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            Factory.forProtocol(CountToEOF))
        self.addCleanup(tool.stopListening)
        self.tool_port = tool.getHost().port
        c = self.client()
        yield c.ready
        stream = self.table.open_stream("s1")
        assert stream is not None
        proto = Collect(b"a" * 100_000)
        stream.attach(proto)
        stream.loseWriteConnection()  # the tool sees EOF, answers, and its EOF comes back
        body = yield proto.done
        self.assertEqual(body, b"100000\n")

    @defer.inlineCallbacks
    def test_bulk_both_ways(self) -> Any:
        c = self.client()
        yield c.ready
        size = 32 * 1024 * 1024
        body = yield self.request(b"GET /download?size=%d HTTP/1.0\r\n\r\n" % size)
        self.assertEqual(len(body.partition(b"\r\n\r\n")[2]), size)
        upload = bytes(range(256)) * (4 * 1024 * 16)
        body = yield self.request(b"POST /upload HTTP/1.0\r\nContent-Length: %d\r\n\r\n"
                                  % len(upload) + upload)
        answer = json.loads(body.partition(b"\r\n\r\n")[2])
        self.assertEqual(answer, {"length": len(upload),
                                  "sha256": hashlib.sha256(upload).hexdigest()})

    @defer.inlineCallbacks
    def bound_sockets(self, **client: Any) -> Any:
        """A client bound (`client`: self.client's arguments); the TCP sockets of its
        tunnel, the client's end and the gateway's."""
        protocol = yield self.client(**client).next_bind()
        tunnel = self.table.get("s1")
        assert tunnel is not None
        return [_tcp_under(end, "setTcpNoDelay").socket
                for end in (protocol.transport, tunnel.protocol.transport)]

    @defer.inlineCallbacks
    def test_both_ends_keep_little_unsent_in_the_kernel(self) -> Any:
        """TCP_NOTSENT_LOWAT on the tunnel's socket at both ends: what waits to go out
        waits in the multiplexer, where a small frame overtakes a download's (on a
        20 Mbit/s uplink the kernel's queue was ~0.7 MiB, ~300 ms before each message)."""
        for sock in (yield self.bound_sockets()):
            self.assertEqual(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT),
                             TUNNEL_UNSENT)

    @defer.inlineCallbacks
    def test_both_ends_retransmit_at_least_every_two_seconds(self) -> Any:
        """TCP_RTO_MAX_MS on the tunnel's socket at both ends: once a silent path is back,
        the data waiting goes within 2 s (after a 10 s cut TCP's doubled wait held it
        ~9 s more)."""
        for sock in (yield self.bound_sockets()):
            self.assertEqual(sock.getsockopt(socket.IPPROTO_TCP, TCP_RTO_MAX_MS),
                             TUNNEL_RTO_MAX_MS)

    @defer.inlineCallbacks
    def test_both_ends_keep_a_silent_tunnel_until_its_pings_give_up(self) -> Any:
        """Under the 2 s cap the kernel's own limit (15 retransmissions) ends a connection
        ~27 s into a silence (measured across two network namespaces: 28 s, ETIMEDOUT),
        so a tunnel with a longer ping timeout was ended by the kernel within a cut its
        settings say it outlasts. Both ends let its data go unacknowledged for the ping
        timeout (the gateway's, 20 s here) and a margin: the pings decide."""
        limit = int((TunnelSettings().ping_timeout + TUNNEL_UNACKED_MARGIN) * 1000)
        for sock in (yield self.bound_sockets()):
            self.assertEqual(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT),
                             limit)

    @defer.inlineCallbacks
    def test_after_a_stalled_attempt_the_tunnel_binds_with_small_segments(self) -> Any:
        """An attempt that ended before its bind was answered (as behind an MTU black
        hole) makes the next connection announce 1200-byte segments: both ends of the
        bound tunnel send no bigger ones, and the bind says so once."""
        with capturedLogs() as events:
            socks = yield self.bound_sockets(stalled_before=True)
        for sock in socks:
            self.assertLessEqual(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG),
                                 SMALL_MSS)
        said = [formatEvent(e) for e in events if "TCP segments" in formatEvent(e)]
        self.assertEqual(len(said), 1, said)
        self.assertIn("MTU black hole", said[0])
        self.assertIn("the next one tries full-size ones again", said[0])

    @defer.inlineCallbacks
    def test_the_tunnel_after_a_small_one_tries_full_size_segments_again(self) -> Any:
        """One stall proves little (a gateway too busy to finish handshakes, a restart
        under many studios): once that tunnel ends, the next connection uses the path's
        own size again, and binds with it (here, the gateway dropped the tunnel)."""
        client = self.client(stalled_before=True)
        yield client.next_bind()
        tunnel = self.table.get("s1")
        assert tunnel is not None
        first = _tcp_under(tunnel.protocol.transport, "setTcpNoDelay").socket
        self.assertLessEqual(first.getsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG),
                             SMALL_MSS)
        again = client.next_bind()
        tunnel.protocol.transport.abortConnection()
        protocol = yield again
        sock = _tcp_under(protocol.transport, "setTcpNoDelay").socket
        self.assertGreater(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG), SMALL_MSS)
        self.assertEqual(client.segments.small_binds, 0)

    @defer.inlineCallbacks
    def test_a_listed_gateway_that_ends_attempts_does_not_make_a_sound_path_small(
            self) -> Any:
        """Two gateways listed, the first accepting connections and closing them at once
        (a proxying load balancer with no backend, a gateway at its handshake limit):
        its full-size attempt ends before the bind, the small one after it goes to the
        second, a sound path, and binds. Twice (the next connection starts at the first
        again) and the studio said the second's path drops large packets and kept small
        segments for good (the second gateway was never tried with full-size ones).
        What the attempts said is kept per gateway now: the second binds with full-size
        segments each time."""
        closing = Factory.forProtocol(_ClosesAtOnce)
        port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(closing)
        self.addCleanup(port.stopListening)
        client = self.client(gateways=(Gateway("127.0.0.1", port.getHost().port, self.pin),
                                       Gateway("127.0.0.1", self.gw_port, self.pin)),
                             backoff=Backoff(0.05, 0.05))
        yield client.next_bind()
        tunnel = self.table.get("s1")
        assert tunnel is not None
        again = client.next_bind()
        tunnel.protocol.transport.abortConnection()
        protocol = yield again
        self.assertFalse(client.segments.sure)
        sock = _tcp_under(protocol.transport, "setTcpNoDelay").socket
        self.assertGreater(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG), SMALL_MSS)

    @defer.inlineCallbacks
    def test_a_wss_gateway_that_ends_its_tls_handshake_makes_the_next_attempt_small(
            self) -> Any:
        """A wss:// gateway (the tunnel in a WebSocket to the HTTPS port) whose TLS
        handshake ends after the TCP connection opened: a stall, as the tunnel's own TLS
        stalling is (behind an MTU black hole the gateway's certificate never comes), so
        the next attempt there announces small segments (before, only the tunnel's own
        TLS counted, and a studio on wss:// behind a black hole never bound: review52).
        A connection refused is no stall; an https:// proxy whose TLS ends so is one.
        """
        closing = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            Factory.forProtocol(_ClosesAtOnce))
        self.addCleanup(closing.stopListening)
        refusing = socket.socket()
        refusing.bind(("127.0.0.1", 0))  # bound, not listening: connections are refused
        self.addCleanup(refusing.close)
        wss = [(Gateway("127.0.0.1", port, self.pin, carrier="wss", path="/_connect/tunnel"),
                (), stall) for port, stall in ((refusing.getsockname()[1], False),
                                               (closing.getHost().port, True))]
        # The same through an https:// proxy whose TLS ends so (the tunnel's own port
        # behind it): the proxy's handshake stalls first on such a path.
        proxied = [(Gateway("127.0.0.1", self.gw_port, self.pin),
                    (("HTTPS_PROXY", f"https://127.0.0.1:{closing.getHost().port}"),), True)]
        for gateway, proxy, stall in wss + proxied:
            client = self.client(gateways=(gateway,), proxy_environ=proxy,
                                 backoff=Backoff(30, 30))
            while client.state != "backing-off":  # the first attempt ended
                yield task.deferLater(reactor, 0.01, lambda: None)
            yield client.stopService()
            self.assertEqual(client.segments.mss, SMALL_MSS if stall else None,
                             (gateway, proxy))

    @defer.inlineCallbacks
    def test_until_the_bind_is_answered_a_silent_gateway_host_ends_the_connection(
            self) -> Any:
        """A gateway that accepts and then says nothing (its host gone silent after the
        TCP handshake; here a listener that never answers): the kernel probes it and ends
        the connection after ~35 s of silence (without, the client waited for ever: no
        pings before the bind). Once bound the pings take over at the gateway's timeout,
        so the kernel's keepalive is off again and its limit follows the pings'."""
        mute = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            Factory.forProtocol(Protocol))
        self.addCleanup(mute.stopListening)
        bound_port, self.gw_port = self.gw_port, mute.getHost().port
        c = self.client()
        while c.protocol is None:  # connected at the TCP level; the TLS handshake waits
            yield task.deferLater(reactor, 0.01, lambda: None)
        sock = _tcp_under(c.protocol.transport, "setTcpNoDelay").socket
        self.assertEqual(sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE), 1)
        self.assertEqual([sock.getsockopt(socket.IPPROTO_TCP, o) for o in (
            socket.TCP_KEEPIDLE, socket.TCP_KEEPINTVL, socket.TCP_KEEPCNT,
            socket.TCP_USER_TIMEOUT)], [20, 5, 3, 35_000])
        yield c.stopService()  # at once, though its TLS handshake never finished
        self.gw_port = bound_port
        protocol = yield self.client().next_bind()
        sock = _tcp_under(protocol.transport, "setTcpNoDelay").socket
        self.assertEqual((sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
                          sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT)),
                         (0, int((TunnelSettings().ping_timeout + TUNNEL_UNACKED_MARGIN)
                                 * 1000)))  # (the pings' timeout, not the kernel's)

    @defer.inlineCallbacks
    def test_wrong_token_is_refused_and_final(self) -> Any:
        fatal: defer.Deferred[str] = defer.Deferred()
        c = self.client(token="x" * 43, fatal=fatal)
        message = yield fatal
        self.assertIn("bad_token", message)
        self.assertEqual(c.state, "refused")
        self.assertIsNone(self.table.get("s1"))

    @defer.inlineCallbacks
    def test_incompatible_version_is_refused_with_the_supported_ones(self) -> Any:
        fatal: defer.Deferred[str] = defer.Deferred()
        self.client(version="0.3.0", fatal=fatal)
        message = yield fatal
        self.assertIn("incompatible_version", message)
        self.assertIn("0.12", message)

    @defer.inlineCallbacks
    def test_cut_connection_rebinds(self) -> Any:
        c = self.client()
        first = yield c.next_bind()
        again = c.next_bind()
        first.transport.abortConnection()
        second = yield again
        self.assertIsNot(first, second)
        body = yield self.request(b"GET /api/info HTTP/1.0\r\n\r\n")
        self.assertIn(b"200 OK", body)

    @defer.inlineCallbacks
    def test_deleting_the_session_closes_the_tunnel(self) -> Any:
        c = self.client()
        proto = yield c.next_bind()
        closed: defer.Deferred[None] = defer.Deferred()
        original = proto.connectionLost

        def lost(reason: Any = None) -> None:
            original(reason)
            if not closed.called:
                closed.callback(None)

        proto.connectionLost = lost  # type: ignore[method-assign]
        yield self.store.delete("s1")
        self.table.end_session("s1")
        yield closed

