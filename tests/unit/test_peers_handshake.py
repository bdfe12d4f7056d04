"""The peer handshake and stream request lines, as plain objects (no reactor)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.testing import MemoryReactorClock

from studios_gateway.config import ConfigError
from studios_gateway.config_loading import load_config
from studios_gateway.peers import advertised_address
from studios_gateway.peers.handshake import (
    ClientHandshake,
    HandshakeError,
    PeerAuth,
    ServerHandshake,
)
from studios_gateway.peers.link import PeerServerFactory, PeerSettings
from studios_gateway.peers.streams import open_line, parse_open
from studios_gateway.wire.closing import CLOSE_GRACE
from tests.support.stuck_socket import StuckSocket

SECRET = "s" * 24


def exchange(server_auth: PeerAuth, client_auth: PeerAuth) -> ClientHandshake:
    server, client = ServerHandshake(server_auth), ClientHandshake(client_auth, "node-a")
    line = client.greet(server.hello())
    try:
        reply = server.answer(line)
    except HandshakeError as e:
        reply = ServerHandshake.refusal(e)
    client.finish(reply)
    return client


def test_same_secret_is_accepted_and_never_sent() -> None:
    server, client = ServerHandshake(PeerAuth(SECRET)), ClientHandshake(PeerAuth(SECRET), "n1")
    line = client.greet(server.hello())
    reply = server.answer(line)
    client.finish(reply)
    assert server.peer_node == "n1"
    assert SECRET.encode() not in line + reply


def test_other_secret_is_refused_with_a_reason() -> None:
    with pytest.raises(HandshakeError, match="authentication failed"):
        exchange(PeerAuth(SECRET), PeerAuth("t" * 24))


def test_no_auth_configured_refuses_everyone() -> None:
    with pytest.raises(HandshakeError, match="accepts no peers"):
        exchange(PeerAuth(None), PeerAuth(None))


def test_mutual_tls_alone_needs_no_secret() -> None:
    exchange(PeerAuth(None, mutual_tls=True), PeerAuth(None, mutual_tls=True))
    with pytest.raises(HandshakeError):  # a secret-less client cannot fool a secret server
        exchange(PeerAuth(SECRET, mutual_tls=True), PeerAuth(None, mutual_tls=True))


def test_client_checks_the_server_too() -> None:
    server, client = ServerHandshake(PeerAuth("u" * 24)), ClientHandshake(PeerAuth(SECRET), "n")
    client.greet(server.hello())
    with pytest.raises(HandshakeError, match="could not prove"):
        client.finish(b"ok " + b"0" * 64)


def test_not_a_peer_listener() -> None:
    with pytest.raises(HandshakeError, match="not a gateway peer"):
        ClientHandshake(PeerAuth(SECRET), "n").greet(b"SSH-2.0-OpenSSH_9.6")


@given(st.binary(max_size=300))
def test_server_never_crashes_on_garbage(line: bytes) -> None:
    server = ServerHandshake(PeerAuth(SECRET))
    with pytest.raises(HandshakeError):
        server.answer(line)


@given(st.binary(max_size=100))
def test_parse_open_rejects_or_round_trips(line: bytes) -> None:
    try:
        sid, kind = parse_open(line)
    except ValueError:
        return
    assert open_line(sid, kind).strip() == line.strip()


def test_open_line_round_trip() -> None:
    assert parse_open(open_line("abc-1", b"S")) == ("abc-1", b"S")


def test_peer_variables() -> None:
    base = {"CONNECT_REDIS_ADDRESS": "r:6379", "CONNECT_BIND_ADDRESS": "10.0.0.5"}
    cfg = load_config(environ=base)
    assert any("refuses every other gateway node" in w for w in cfg.warnings)
    assert advertised_address(cfg) == "10.0.0.5:7777"
    cfg = load_config(environ={**base, "CONNECT_PEER_SECRET": SECRET,
                               "CONNECT_HOST_DOMAIN": "gw1.internal"})
    assert not any("refuses" in w for w in cfg.warnings)
    assert advertised_address(cfg) == "gw1.internal:7777"
    cfg = load_config(environ={**base, "CONNECT_ADVERTISE_ADDRESS": "[fd00::5]:7001"})
    assert advertised_address(cfg) == "[fd00::5]:7001"
    with pytest.raises(ConfigError, match="CONNECT_PEER_SECRET=<redacted>"):
        load_config(environ={**base, "CONNECT_PEER_SECRET": "short"})
    with pytest.raises(ConfigError, match="CONNECT_PEER_TLS_KEY_FILE"):
        load_config(environ={**base, "CONNECT_PEER_TLS_CERT_FILE": "/etc/hostname"})


def test_wiring_into_the_gateway(tmp_path) -> None:
    from twisted.internet.testing import MemoryReactorClock

    from studios_gateway.service import make_service

    env = {"CONNECT_STORAGE_ROOT": str(tmp_path), "CONNECT_BIND_ADDRESS": "127.0.0.1",
           "CONNECT_LISTENER_PORT": "7123"}
    alone = make_service(load_config(environ=env), MemoryReactorClock())
    assert "peer" not in [lst.name for lst in alone.listeners]  # in-memory: one node
    assert alone.built is not None and alone.built.dialer.remote is None
    cluster = make_service(load_config(environ={**env, "CONNECT_REDIS_ADDRESS": "r:6379",
                                                "CONNECT_PEER_SECRET": SECRET,
                                                "CONNECT_NODE_ID": "gw-1"}),
                           MemoryReactorClock())
    peer = [lst for lst in cluster.listeners if lst.name == "peer"]
    assert peer and peer[0].variable == "CONNECT_LISTENER_PORT"
    assert cluster.built is not None
    assert cluster.built.dialer.remote is not None
    assert cluster.built.tunnel_table.node_address == "127.0.0.1:7123"
    assert "peers" in [c.name for c in cluster.components]


class FakeStream:
    """Just enough of a mux Stream for the dialing side's hand-over."""

    def __init__(self) -> None:
        self.protocol = None
        self.written = b""
        self.paused = False
        self.aborted = False

    def attach(self, protocol) -> None:
        self.protocol = protocol
        protocol.makeConnection(self)

    def write(self, data: bytes) -> None:
        self.written += data

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False

    def abortConnection(self) -> None:
        self.aborted = True


def test_hand_over_keeps_early_bytes_and_the_new_protocol_pause() -> None:
    from twisted.internet.defer import Deferred
    from twisted.internet.protocol import Protocol

    from studios_gateway.peers.streams import PeerRefused, _Opening

    class Pausing(Protocol):
        got = b""

        def connectionMade(self) -> None:
            self.transport.pauseProducing()

        def dataReceived(self, data: bytes) -> None:
            self.got += data

    answered: Deferred = Deferred()
    stream = FakeStream()
    stream.attach(_Opening("s1", b"T", answered))
    assert stream.written == b"open T s1\n"
    stream.protocol.dataReceived(b"ok\nSSH-2.0-x\r\n")
    peer_stream = answered.result
    assert stream.paused  # nothing more is read until someone attaches
    proto = Pausing()
    peer_stream.attach(proto)
    assert proto.got == b"SSH-2.0-x\r\n" and proto.transport is peer_stream
    assert stream.paused, "the new protocol paused it: the hand-over must not resume it"
    peer_stream.resumeProducing()
    assert not stream.paused

    refused: Deferred = Deferred()
    other = FakeStream()
    other.attach(_Opening("s2", b"S", refused))
    other.protocol.dataReceived(b"no not connected to this node\n")
    failures: list = []
    refused.addErrback(failures.append)
    assert failures[0].check(PeerRefused) and other.aborted
    assert failures[0].value.reason == "not connected to this node"


def test_remote_waits_for_the_rebind_when_the_holder_cannot_serve() -> None:
    from twisted.internet import defer
    from twisted.internet.task import Clock

    from studios_gateway.peers.link import PeerUnavailable
    from studios_gateway.peers.remote import make_remote
    from studios_gateway.registry.base import TunnelHolder
    from studios_gateway.registry.memory import MemoryStore
    from studios_gateway.tunnel.dialer import StudioUnreachable
    from tests.support.stores import FlakyStore
    from tests.unit.test_auth_authorizer import record

    clock = Clock()
    store = FlakyStore(MemoryStore(clock))
    store.inner.create(record("s1"))
    dead = TunnelHolder("s1", "node-a", "10.0.0.1:7777", "t1", "0.12", 8888, 0.0)
    store.inner.claim_tunnel(dead, 60)

    class Pool:
        def open(self, address, sid, kind, node_id=""):
            return defer.fail(PeerUnavailable(address, "connection refused"))

    here: dict[str, str] = {}
    remote = make_remote(store, Pool(), "node-b", lambda: "10.0.0.2:7777",
                         local=lambda sid, kind: here.get(sid), clock=clock, rebind_wait=5)
    d = remote("s1", b"T")
    assert not d.called  # waiting for the studio to rebind somewhere
    here["s1"] = "local stream"  # the client rebound to this node: the claim is published
    store.inner.claim_tunnel(TunnelHolder("s1", "node-b", "10.0.0.2:7777", "t2", "0.12", 8888,
                                          1.0), 60)
    assert d.result == "local stream"
    store.inner.claim_tunnel(dead, 60)  # it moved back to node-a, which is now gone
    d2 = remote("s1", b"T")
    here.clear()
    clock.advance(5)  # nothing changed within the wait: give up with the reason
    failures: list = []
    d2.addErrback(failures.append)
    assert failures[0].check(StudioUnreachable)
    assert "node-a unreachable (connection refused)" in failures[0].value.why


def test_remote_takes_the_rebind_to_this_node_that_came_while_it_dialed_the_dead_holder(
        ) -> None:
    """kill -9 of the holder, one request through the other node: the studio rebound to
    that very node (0.4 s) while the request was dialling the dead one; the registry then
    named this node, the request waited 5 s for a change that had already come, and
    answered 502 "studio not connected" (measured on two nodes; the studio was bound
    here all along)."""
    from twisted.internet import defer
    from twisted.internet.task import Clock

    from studios_gateway.peers.link import PeerUnavailable
    from studios_gateway.peers.remote import make_remote
    from studios_gateway.registry.base import TunnelHolder
    from studios_gateway.registry.memory import MemoryStore
    from tests.support.stores import FlakyStore
    from tests.unit.test_auth_authorizer import record

    clock = Clock()
    store = FlakyStore(MemoryStore(clock))
    store.inner.create(record("s1"))
    store.inner.claim_tunnel(TunnelHolder("s1", "node-a", "10.0.0.1:7777", "t1", "0.12",
                                          8888, 0.0), 60)
    dialing: defer.Deferred = defer.Deferred()

    class Pool:
        def open(self, address, sid, kind, node_id=""):
            return dialing

    here: dict[str, str] = {}
    remote = make_remote(store, Pool(), "node-b", lambda: "10.0.0.2:7777",
                         local=lambda sid, kind: here.get(sid), clock=clock, rebind_wait=5)
    d = remote("s1", b"T")
    here["s1"] = "local stream"  # the studio rebinds here, its claim published...
    store.inner.claim_tunnel(TunnelHolder("s1", "node-b", "10.0.0.2:7777", "t2", "0.12",
                                          8888, 1.0), 60)
    dialing.errback(PeerUnavailable("10.0.0.1:7777", "connection refused"))  # ...then this
    assert d.called and d.result == "local stream"
    assert not clock.getDelayedCalls()


def test_a_refused_peer_that_reads_nothing_is_reset_after_the_grace() -> None:
    """A refused peer connection closed once the other end took the refusal: one that
    reads nothing held the socket for good. It is reset CLOSE_GRACE after the refusal."""
    clock = MemoryReactorClock()
    factory = PeerServerFactory(None, PeerAuth(SECRET), PeerSettings(), clock)
    sock = StuckSocket()
    sock.connect(factory.buildProtocol(None))
    sock.protocol.dataReceived(b"not a peer\n")
    assert sock.disconnecting and sock.unsent() and not sock.disconnected
    clock.advance(CLOSE_GRACE)
    assert sock.aborted and not factory.connections
    assert not [c for c in clock.getDelayedCalls() if c.active()]
