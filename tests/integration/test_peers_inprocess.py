"""The peer link in one reactor over real loopback sockets: handshake, streams, refusals.

Node B "holds" a tunnel: a yamux pair over TCP whose studio side answers every
stream with the upper-cased bytes it receives. Node A dials B through a
PeerPool, as its dialer would.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import capturedLogs, formatEvent
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.trial.unittest import TestCase

from studios_gateway.peers.component import peer_tls_options
from studios_gateway.peers.handshake import PeerAuth
from studios_gateway.peers.link import PeerPool, PeerServerFactory, PeerSettings, PeerUnavailable
from studios_gateway.peers.remote import make_remote
from studios_gateway.peers.streams import PeerRefused
from studios_gateway.registry.base import TunnelHolder
from studios_gateway.tunnel.dialer import StudioUnreachable
from studios_gateway.wire.kinds import STREAM_TOOL
from studios_gateway.wire.mux import RESET_RELAYED, Multiplexer, tunnel_lost
from studios_gateway.wire.stream import StreamReset
from tests.integration.test_tunnel_inprocess import Collect
from tests.support.peer_certs import ca_and_leaf

SECRET = "a-long-shared-peer-secret"


# Real sockets on 127.0.0.1 in this process: the integration layer, not the fast one.
pytestmark = pytest.mark.slow


class Upper(Protocol):
    """The studio's side of a stream: skips the kind byte, echoes upper-cased, half-close
    aware (EOF in -> EOF out)."""

    def __init__(self) -> None:
        self.kind: bytes | None = None

    def dataReceived(self, data: bytes) -> None:
        if self.kind is None:
            self.kind, data = data[:1], data[1:]
        if data:
            self.transport.write(data.upper())


class Refuser(Protocol):
    """The studio's side of a stream whose tool refused the connection: reset at once."""

    def dataReceived(self, data: bytes) -> None:
        self.transport.abortConnection()


class Ended(Protocol):
    """Fires `done` with why the stream ended (in a list: a Failure would errback)."""

    def __init__(self) -> None:
        self.done: defer.Deferred[list[Any]] = defer.Deferred()

    def connectionLost(self, reason: Any = None) -> None:
        self.done.callback([reason])


class FakeTable:
    """The part of TunnelTable the peer listener uses."""

    def __init__(self) -> None:
        self.tunnels: dict[str, Multiplexer] = {}
        self.node_id = "node-b"

    def open_stream(self, session_id: str, kind: bytes) -> Any:
        mux = self.tunnels.get(session_id)
        if mux is None:
            return None
        stream = mux.open_stream()
        stream.write(kind)
        return stream


def make_mux(is_client: bool, **kw: Any) -> Multiplexer:
    return Multiplexer(is_client=is_client, clock=reactor, ping_interval=0, **kw)


class PeerLinkTests(TestCase):
    timeout = 20

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        self.table = FakeTable()
        yield self.studio("s1", Upper)
        self.settings = PeerSettings(ping_interval=5, ping_timeout=10, handshake_timeout=1,
                                     answer_timeout=5)

    @defer.inlineCallbacks
    def studio(self, session_id: str, tool: Any) -> Any:
        """A "tunnel" from node B to a studio whose streams `tool()` serves: two
        multiplexers over loopback TCP."""
        studio_factory = Factory.forProtocol(
            lambda: make_mux(True, on_stream=lambda stream: tool()))
        port = reactor.listenTCP(0, studio_factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        gateway_side = yield TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port).connect(
            Factory.forProtocol(lambda: make_mux(False)))
        self.addCleanup(gateway_side.close)
        self.table.tunnels[session_id] = gateway_side
        return gateway_side

    def listen(self, auth: PeerAuth, tls: Any = None) -> str:
        server = PeerServerFactory(self.table, auth, self.settings, reactor)
        self.addCleanup(server.close)
        factory: Any = server
        if tls is not None:
            factory = TLSMemoryBIOFactory(tls, False, factory)
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return f"127.0.0.1:{port.getHost().port}"

    def pool(self, auth: PeerAuth, tls: Any = None) -> PeerPool:
        pool = PeerPool(reactor, auth, "node-a", self.settings, tls=tls)
        self.addCleanup(pool.close)
        return pool

    @defer.inlineCallbacks
    def roundtrip(self, pool: PeerPool, address: str) -> Any:
        stream = yield pool.open(address, "s1", STREAM_TOOL)
        got = Collect()
        stream.attach(got)
        stream.write(b"hello ")
        stream.write(b"peer")
        stream.loseWriteConnection()  # half-close: the answer is still read
        data = yield got.done
        return data

    @defer.inlineCallbacks
    def test_stream_through_a_peer_reaches_the_tunnel(self) -> Any:
        address = self.listen(PeerAuth(SECRET))
        pool = self.pool(PeerAuth(SECRET))
        self.assertEqual((yield self.roundtrip(pool, address)), b"HELLO PEER")
        first = pool.links[address].mux
        self.assertEqual((yield self.roundtrip(pool, address)), b"HELLO PEER")
        self.assertIs(pool.links[address].mux, first, "one link per peer, reused")

    @defer.inlineCallbacks
    def test_lost_link_is_dialed_again(self) -> Any:
        """Dialled again, and quietly: each dial logged Twisted's "Starting factory
        <twisted.internet.protocol.Factory object at 0x7f9d45c97250>" and "Stopping factory
        <...>" (in an operator's log at every node restart or kill) beside the link's own
        lines."""
        from twisted.logger import formatEvent, globalLogPublisher

        said: list[str] = []

        def observe(event: dict[str, Any]) -> None:
            said.append(formatEvent(event))

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        address = self.listen(PeerAuth(SECRET))
        pool = self.pool(PeerAuth(SECRET))
        yield self.roundtrip(pool, address)
        mux = pool.links[address].mux
        closed = defer.Deferred()
        mux.on_close = lambda reason: closed.callback(None)
        mux.transport.abortConnection()
        yield closed
        self.assertEqual((yield self.roundtrip(pool, address)), b"HELLO PEER")
        self.assertIsNot(pool.links[address].mux, mux)
        self.assertTrue(any("peer link to" in line for line in said), said)
        self.assertEqual([line for line in said if "protocol.Factory object" in line], [])

    @defer.inlineCallbacks
    def test_a_studio_reset_is_relayed_and_a_lost_tunnel_is_a_plain_reset(self) -> Any:
        """The studio resets a stream before its tool's first byte (studios-connect, when
        the tool refused the connection): node A's stream is reset with RESET_RELAYED,
        not taken for a lost tunnel (the proxy then answers "not answering", as for a
        stream of its own tunnel). The tunnel lost under a stream: a plain reset."""
        yield self.studio("s2", Refuser)
        address = self.listen(PeerAuth(SECRET))
        pool = self.pool(PeerAuth(SECRET))
        refused = yield pool.open(address, "s2", STREAM_TOOL)
        got = Ended()
        refused.attach(got)
        [reason] = yield got.done
        self.assertIsNotNone(reason.check(StreamReset))
        self.assertEqual(reason.value.code, RESET_RELAYED)
        self.assertFalse(tunnel_lost(reason, refused))

        held = yield pool.open(address, "s1", STREAM_TOOL)
        got = Ended()
        held.attach(got)
        held.write(b"x")
        self.table.tunnels["s1"].transport.abortConnection()  # the tunnel lost on node B
        [reason] = yield got.done
        self.assertIsNotNone(reason.check(StreamReset))
        self.assertEqual(reason.value.code, 0)
        self.assertTrue(tunnel_lost(reason, held))

    @defer.inlineCallbacks
    def test_session_not_held_there_is_refused_with_a_reason(self) -> Any:
        address = self.listen(PeerAuth(SECRET))
        pool = self.pool(PeerAuth(SECRET))
        with self.assertRaises(PeerRefused) as caught:
            yield pool.open(address, "other", STREAM_TOOL)
        self.assertIn("not connected to this node", caught.exception.reason)

    @defer.inlineCallbacks
    def test_wrong_secret_is_refused_both_ways(self) -> Any:
        address = self.listen(PeerAuth(SECRET))
        pool = self.pool(PeerAuth("another-secret-of-some-length"))
        with self.assertRaises(PeerUnavailable) as caught:
            yield pool.open(address, "s1", STREAM_TOOL)
        self.assertIn("authentication failed", caught.exception.reason)
        self.assertNotIn(SECRET, caught.exception.reason)

    @defer.inlineCallbacks
    def test_listener_without_auth_refuses_every_peer(self) -> Any:
        address = self.listen(PeerAuth(None))
        pool = self.pool(PeerAuth(None))
        with self.assertRaises(PeerUnavailable) as caught:
            yield pool.open(address, "s1", STREAM_TOOL)
        self.assertIn("accepts no peers", caught.exception.reason)

    @defer.inlineCallbacks
    def test_unreachable_peer_fails_fast_then_retries(self) -> Any:
        from tests.support.ports import free_port

        pool = self.pool(PeerAuth(SECRET))
        address = f"127.0.0.1:{free_port()}"
        with capturedLogs() as events, self.assertRaises(PeerUnavailable):
            yield pool.open(address, "s1", STREAM_TOOL, node_id="node-c")
        with self.assertRaises(PeerUnavailable):  # within retry_after: no new connect
            yield pool.open(address, "s1", STREAM_TOOL)
        # The line names the node and the settings that make its address (it named only
        # the address): a node that runs but advertises one the others cannot reach.
        said = [formatEvent(e) for e in events if "cannot reach" in formatEvent(e)]
        self.assertEqual(len(said), 1, said)
        self.assertTrue(said[0].startswith(f"cannot reach peer node node-c at {address}: "),
                        said)
        self.assertIn("check its CONNECT_ADVERTISE_ADDRESS and CONNECT_LISTENER_PORT", said[0])

    @defer.inlineCallbacks
    def test_mutual_tls_without_a_secret(self) -> Any:
        tmp = Path(tempfile.mkdtemp(prefix="peer-tls-"))
        self.addCleanup(shutil.rmtree, tmp, True)
        tls = peer_tls_options(ca_and_leaf(tmp))
        address = self.listen(PeerAuth(None, mutual_tls=True), tls)
        pool = self.pool(PeerAuth(None, mutual_tls=True), tls)
        self.assertEqual((yield self.roundtrip(pool, address)), b"HELLO PEER")
        # A node without the cluster's certificate does not get in.
        from OpenSSL import crypto
        from twisted.internet import ssl

        ca = crypto.load_certificate(crypto.FILETYPE_PEM, (tmp / "ca.crt").read_bytes())
        stranger = self.pool(PeerAuth(None, mutual_tls=True),
                             ssl.CertificateOptions(verify=True, caCerts=[ca]))
        with self.assertRaises(PeerUnavailable):
            yield stranger.open(address, "s2", STREAM_TOOL)

    @defer.inlineCallbacks
    def test_remote_dial_follows_the_registry(self) -> Any:
        address = self.listen(PeerAuth(SECRET))
        pool = self.pool(PeerAuth(SECRET))
        holders = {"s1": TunnelHolder("s1", "node-b", address, "t1", "0.12", 8888, 0.0),
                   "s2": TunnelHolder("s2", "node-a", "127.0.0.1:1", "t2", "0.12", 8888, 0.0)}
        invalidated: list[str] = []
        store = SimpleNamespace(get_tunnel=lambda sid: defer.succeed(holders.get(sid)),
                                invalidate=invalidated.append)
        remote = make_remote(store, pool, "node-a", lambda: "127.0.0.1:1")
        stream = yield remote("s1", STREAM_TOOL)
        got = Collect()
        stream.attach(got)
        stream.write(b"via registry")
        stream.loseWriteConnection()
        self.assertEqual((yield got.done), b"VIA REGISTRY")
        for sid, why in (("s2", "not connected"), ("s3", "not connected")):
            with self.assertRaises(StudioUnreachable) as caught:
                yield remote(sid, STREAM_TOOL)
            self.assertEqual(caught.exception.why, why)
        self.assertEqual(invalidated, ["s2"])  # asked again once after a stale answer
