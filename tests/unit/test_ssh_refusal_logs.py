"""What the SSH proxy logs and tells the user when it refuses or ends a connection: a
wrong key, a login name without a session, -R, a session ended or its SSH turned off,
the studio's side closing; on a fake clock and in-memory transports."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from twisted.conch.ssh import common
from twisted.conch.ssh.keys import Key
from twisted.internet.defer import Deferred
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.python.failure import Failure

from studios_gateway.registry.base import SessionRecord
from studios_gateway.registry.memory import MemoryStore
from studios_gateway.ssh.policy import Identity, LoginName, Refused, shown_name
from studios_gateway.ssh.relay import (
    LOGGED_GLOBAL_REQUESTS,
    UpstreamTransport,
    UserConnection,
    describe_global_request,
)
from studios_gateway.ssh.server import GatewaySSHFactory, GatewayUserAuth, UserKeyChecker
from studios_gateway.traffic.facts import Finished
from studios_gateway.wire.mux import TunnelLost


class _NoKeys:
    async def accepts(self, user: str, key: Key) -> bool:
        return False


class _Metrics:
    def login(self, kind: str, ok: bool) -> None:
        pass


class _Traffic:
    """Records the access-log facts the SSH server hands over."""

    def __init__(self) -> None:
        self.metrics = _Metrics()
        self.refused: list[Finished] = []
        self.closed: list[Finished] = []

    def ssh_refused(self, facts: Finished) -> None:
        self.refused.append(facts)

    def close(self, meter: Any, facts: Finished) -> None:
        self.closed.append(facts)


@pytest.fixture
def lines() -> Iterator[list[str]]:
    seen: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        if str(event.get("log_namespace", "")).startswith("studios_gateway") \
                and event.get("log_level") != LogLevel.debug:
            seen.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    yield seen
    globalLogPublisher.removeObserver(observe)


def _record(sid: str = "abcd", **kw: Any) -> SessionRecord:
    data: dict[str, Any] = dict(id=sid, workspace_id=None, tool="generic", owner="alice",
                                allowed_users=[], ssh_enabled=True, token_hash="x",
                                created_at=0.0)
    data.update(kw)
    return SessionRecord.from_dict(data)


def _factory(store: MemoryStore | None = None) -> tuple[GatewaySSHFactory, _Traffic]:
    clock = MemoryReactorClock()
    traffic = _Traffic()
    f = GatewaySSHFactory(host_key=Key(ed25519.Ed25519PrivateKey.generate()),
                          user_keys=_NoKeys(), store=store or MemoryStore(clock),
                          dial=lambda sid, proto: False, clock=clock, traffic=traffic)
    f.doStart()
    return f, traffic


def _connect(f: GatewaySSHFactory) -> tuple[Any, StringTransport]:
    proto = f.buildProtocol(None)
    t = StringTransport()
    proto.makeConnection(t)
    return proto, t


def _fp() -> str:
    from studios_gateway.ssh.keys import fingerprint

    return fingerprint(Key(ed25519.Ed25519PrivateKey.generate()).public())


def _logged_in(proto: Any, user: str = "alice", sid: str = "abcd") -> None:
    proto.identity = Identity(LoginName(user, sid), "SHA256:k")
    proto.relaying = True
    proto.meter = object()


# A: a key nobody registered -------------------------------------------------------------


def test_a_wrong_key_is_one_refusal_line_with_user_session_and_fingerprints(
        lines: list[str]) -> None:
    f, traffic = _factory()
    proto, _ = _connect(f)
    proto.login_attempt(b"alice@abcd")  # "none" first, as OpenSSH does
    fps = [_fp() for _ in range(8)]
    for fp in fps + fps[:2]:  # a client offering many keys (two of them twice)
        proto.key_not_accepted(fp)
    proto.connectionLost(Failure(ConnectionError()))
    refused = [line for line in lines if "SSH: refused" in line]
    assert refused == [f"SSH: refused alice@abcd from 192.168.1.1:54321: no accepted key "
                       f"(offered {', '.join(fps[:5])} and 3 more)"]
    (facts,) = traffic.refused
    assert (facts.subject, facts.session_id, facts.reason) == ("alice", "abcd",
                                                                "no accepted key")


def test_no_key_offered_and_keys_that_cannot_be_checked(lines: list[str]) -> None:
    f, traffic = _factory()
    proto, _ = _connect(f)
    proto.login_attempt(b"alice@abcd")
    proto.connectionLost(Failure(ConnectionError()))
    proto2, _ = _connect(f)
    proto2.login_attempt(b"bob@abcd")
    proto2.keys_unavailable("cannot check bob's SSH keys right now (HTTP 503)")
    proto2.key_not_accepted(_fp())
    proto2.connectionLost(Failure(ConnectionError()))
    assert [line.split(": ", 2)[2] for line in lines if "SSH: refused" in line] == [
        "no key offered", "cannot check bob's SSH keys right now (HTTP 503)"]
    assert [r.reason for r in traffic.refused] == [
        "no key offered", "cannot check bob's SSH keys right now (HTTP 503)"]


def test_the_checker_reports_each_refused_key() -> None:
    from twisted.cred.credentials import SSHPrivateKey

    refused: list[str] = []
    checker = UserKeyChecker(_NoKeys(), not_accepted=refused.append)
    key = Key(ed25519.Ed25519PrivateKey.generate()).public()
    errors: list[Failure] = []
    checker.requestAvatarId(SSHPrivateKey(b"alice@abcd", b"ssh-ed25519", key.blob(), None,
                                          None)).addErrback(errors.append)
    from studios_gateway.ssh.keys import fingerprint

    assert refused == [fingerprint(key)] and len(errors) == 1


def test_a_socket_that_never_tried_to_log_in_is_not_a_refusal(lines: list[str]) -> None:
    f, traffic = _factory()
    proto, _ = _connect(f)
    proto.connectionLost(Failure(ConnectionError()))
    assert not [line for line in lines if "refused" in line] and traffic.refused == []


# B: a login name without a session ------------------------------------------------------


def test_a_name_without_a_session_is_logged_as_given(lines: list[str]) -> None:
    f, traffic = _factory()
    proto, t = _connect(f)
    proto.login_attempt(b"alice")
    proto.refuse(Refused("no session in the login name; log in as ...", kind="usage"))
    proto.connectionLost(Failure(ConnectionError()))
    assert [line for line in lines if "SSH: refused" in line] == [
        "SSH: refused alice from 192.168.1.1:54321: no session in the login name; "
        "log in as ..."]
    assert traffic.refused[0].subject == "alice" and traffic.refused[0].session_id == ""


def test_shown_name_escapes_and_limits() -> None:
    assert shown_name(b"alice") == "alice"
    assert shown_name(b"a b\n\xff\\") == "a\\x20b\\x0a\\xff\\\\"
    assert shown_name("x" * 200) == "x" * 80 + "..."
    assert shown_name(b"") == "''"


# D: remote forwarding and other global requests ------------------------------------------


def _forward(port: int, host: bytes = b"localhost") -> bytes:
    return common.NS(host) + struct.pack(">L", port)


def test_describe_global_requests() -> None:
    assert describe_global_request(b"tcpip-forward", _forward(8080)) == \
        "remote port forwarding (-R) of localhost:8080"
    assert describe_global_request(b"tcpip-forward", _forward(0, b"")) == \
        "remote port forwarding (-R) of *:0"
    assert describe_global_request(b"cancel-tcpip-forward", _forward(22, b"::1")) == \
        "cancelling remote port forwarding of [::1]:22"
    assert describe_global_request(b"streamlocal-forward@openssh.com",
                                   common.NS(b"/tmp/s")) == \
        "remote socket forwarding (-R) of /tmp/s"
    assert describe_global_request(b"tcpip-forward", b"\x00") == \
        "a malformed tcpip-forward request"
    assert describe_global_request(b"x\x01", b"") == "the global request x\\x01"


def test_remote_forwarding_is_refused_with_a_line_a_few_per_connection(
        lines: list[str]) -> None:
    f, _ = _factory()
    proto, _ = _connect(f)
    _logged_in(proto)
    conn = UserConnection()
    conn.transport = proto
    assert conn.gotGlobalRequest(b"keepalive@openssh.com", b"") == 0
    assert conn.gotGlobalRequest(b"no-more-sessions@openssh.com", b"") == 0
    assert not lines
    for port in range(8000, 8000 + LOGGED_GLOBAL_REQUESTS + 3):
        assert conn.gotGlobalRequest(b"tcpip-forward", _forward(port)) == 0
    assert len(lines) == LOGGED_GLOBAL_REQUESTS
    assert lines[0] == ("SSH: refused remote port forwarding (-R) of localhost:8000 for "
                        "alice@abcd from 192.168.1.1:54321: not offered by the gateway")


# F, G, H: the gateway ends a connection -----------------------------------------------------


def test_access_ended_is_logged_and_told_and_in_the_access_line(lines: list[str]) -> None:
    f, traffic = _factory()
    proto, t = _connect(f)
    _logged_in(proto)
    proto.revoke("the session was ended")
    proto.revoke("again")  # already closing: nothing more
    proto.connectionLost(Failure(ConnectionError()))
    assert b"access ended: the session was ended" in t.value()
    assert lines == ["SSH: closing the connection of alice@abcd from 192.168.1.1:54321: "
                     "the session was ended"]
    assert traffic.closed[0].reason == "access ended: the session was ended"


def test_the_studio_side_closing_is_the_access_lines_reason() -> None:
    f, traffic = _factory()
    proto, t = _connect(f)
    _logged_in(proto)
    proto.upstream_lost()
    proto.connectionLost(Failure(ConnectionError()))
    assert b"the connection to the studio was closed" in t.value()
    assert traffic.closed[0].reason == "the connection to the studio was closed"


def test_a_studio_connection_that_broke_says_why() -> None:
    """The studio's tunnel declared dead under an open SSH session: the user reads why
    (before: 'the connection to the studio was closed', as if the studio had ended it)."""
    f, traffic = _factory()
    proto, t = _connect(f)
    _logged_in(proto)
    ready: Deferred[Any] = Deferred()
    ready.callback(None)  # the studio's side was up (the user logged in through it)
    upstream = UpstreamTransport("alice", proto.factory.host_key, ready, proto)
    upstream.connectionLost(Failure(TunnelLost("tunnel lost: nothing heard from the studio "
                                               "for 20s")))
    proto.connectionLost(Failure(ConnectionError()))
    said = "the connection to the studio broke: tunnel lost: nothing heard from the studio for 20s"
    assert said.encode() in t.value()
    assert traffic.closed[0].reason == said


def _relaying() -> tuple[Any, Any, StringTransport, UpstreamTransport]:
    """A logged-in user's connection and its studio side, relaying."""
    f, traffic = _factory()
    proto, t = _connect(f)
    _logged_in(proto)
    ready: Deferred[Any] = Deferred()
    ready.callback(None)
    return traffic, proto, t, UpstreamTransport("alice", proto.factory.host_key, ready, proto)


def test_a_studio_that_went_away_on_purpose_says_so() -> None:
    """The studio's connect client stopping (GoAway, then its tunnel closes): not "broke:
    ... lost in a non-clean fashion", which is neither clear nor what happened."""
    from types import SimpleNamespace

    from twisted.internet.error import ConnectionLost

    traffic, proto, t, upstream = _relaying()
    mux = SimpleNamespace(local_go_away=False, remote_go_away=0, close_reason=None)
    upstream.transport = SimpleNamespace(mux=mux)  # the tunnel stream the SSH ran on
    upstream.connectionLost(Failure(TunnelLost("tunnel lost: " + str(ConnectionLost()))))
    proto.connectionLost(Failure(ConnectionError()))
    said = ("the studio's connection went away (the studio stopped or restarted); "
            "ssh again to reconnect")
    assert said.encode() in t.value() and b"non-clean" not in t.value()
    assert traffic.closed[0].reason == said


def test_a_holding_node_that_went_away_is_not_called_the_studio() -> None:
    """An SSH session through this node to a studio whose tunnel another node held: that
    node drained (its grace ended) or was killed, closing the peer link cleanly. The
    studio did not stop (it has bound elsewhere), so the user does not read that it did
    (they did before: "the studio stopped or restarted")."""
    from types import SimpleNamespace

    from twisted.internet.error import ConnectionDone

    traffic, proto, t, upstream = _relaying()
    link = SimpleNamespace(local_go_away=False, remote_go_away=None,
                           close_reason=Failure(ConnectionDone()))
    # A peer stream: the holder's reset of it means the tunnel was lost there.
    upstream.transport = SimpleNamespace(mux=link, RESET_IS_LOST=True)
    upstream.connectionLost(Failure(TunnelLost("tunnel lost: the peer link closed")))
    proto.connectionLost(Failure(ConnectionError()))
    said = ("the gateway node that held the studio's connection stopped or restarted; "
            "ssh again to reconnect")
    assert said.encode() in t.value() and b"studio stopped" not in t.value()
    assert traffic.closed[0].reason == said


def test_a_user_who_leaves_has_no_reason() -> None:
    f, traffic = _factory()
    proto, _ = _connect(f)
    _logged_in(proto)
    proto.connectionLost(Failure(ConnectionError()))
    assert traffic.closed[0].reason == ""


def test_ssh_turned_off_closes_the_sessions_connections(lines: list[str]) -> None:
    from dataclasses import replace

    clock = MemoryReactorClock()
    store = MemoryStore(clock)
    store.create(_record("abcd"))
    store.create(_record("efgh"))
    f, _ = _factory(store)
    store.subscribe(f.session_changed)
    on_abcd, t1 = _connect(f)
    _logged_in(on_abcd, sid="abcd")
    on_efgh, t2 = _connect(f)
    _logged_in(on_efgh, sid="efgh")
    store.update(replace(_record("abcd"), allowed_users=("bob",)))  # SSH still on
    assert not on_abcd.closing
    store.update(_record("abcd", ssh_enabled=False))
    assert b"access ended: SSH was turned off for session abcd" in t1.value()
    assert not on_efgh.closing and b"access ended" not in t2.value()
    assert lines == ["SSH: closing the connection of alice@abcd from 192.168.1.1:54321: "
                     "SSH was turned off for session abcd"]


def test_the_authorizer_says_the_session_was_ended() -> None:
    from studios_gateway.auth.authorizer import SESSION_ENDED, Authorizer

    clock = MemoryReactorClock()
    store = MemoryStore(clock)
    store.create(_record("abcd"))
    store.create(_record("efgh"))
    authorizer = Authorizer(store, clock=clock, ttl=60, workspace_allowed=lambda w: True)
    closed: list[str] = []
    authorizer.track("abcd", "alice", closed.append)
    authorizer.track("efgh", "alice", closed.append)
    authorizer.start()
    store.delete("abcd")  # the registry's change: the re-check finds no session
    authorizer.session_ended("efgh")  # the admin API's own call
    assert closed == [SESSION_ENDED, SESSION_ENDED] == ["the session was ended"] * 2
    authorizer.stop()


@pytest.mark.parametrize(("message", "payload", "name"), [
    (90, b"", "MSG_CHANNEL_OPEN"),  # nothing after the type
    (80, b"", "MSG_GLOBAL_REQUEST"),
    (93, b"\x00", "MSG_CHANNEL_WINDOW_ADJUST"),
    (98, b"\x00\x00\x00\x00", "MSG_CHANNEL_REQUEST"),
    (81, b"", "MSG_REQUEST_SUCCESS"),  # a reply to a request the gateway never sent
])
def test_a_malformed_connection_message_is_a_line_and_a_protocol_error(
        lines: list[str], message: int, payload: bytes, name: str) -> None:
    """Before: an "Unhandled Error" traceback in the gateway's log (struct.error,
    IndexError) and the connection dropped without a word."""
    from studios_gateway.ssh.relay import UserConnection

    f, _ = _factory()
    proto, t = _connect(f)
    _logged_in(proto)
    conn = UserConnection()
    conn.transport = proto
    proto.service = conn
    proto.dispatchMessage(message, payload)
    assert f"malformed or unexpected {name}".encode() in t.value()
    assert t.disconnecting
    said = [x for x in lines if "sent a malformed" in x]
    assert said == [f"SSH: alice@abcd from 192.168.1.1:54321 sent a malformed or unexpected "
                    f"{name} ({said[0].rsplit('(', 1)[1].split(')')[0]}); disconnecting"]
    proto.dispatchMessage(90, b"")  # after the goodbye: not acted on, not said again
    assert len([x for x in lines if "sent a malformed" in x]) == 1


def test_too_many_keys_tells_the_user_how_to_offer_the_right_one() -> None:
    """An agent with many keys: after the seventh unknown one Conch said only "too many
    bad auths"; the user now reads how to name the key."""
    from twisted.cred.error import UnauthorizedLogin

    f, _ = _factory()
    proto, t = _connect(f)
    auth = GatewayUserAuth()
    auth.transport = proto
    auth.serviceStarted()
    auth.method, auth.user = b"publickey", b"alice@abcd"
    proto.login_attempt(b"alice@abcd")
    for _ in range(auth.attemptsBeforeDisconnect):
        auth._ebBadAuth(Failure(UnauthorizedLogin("key not registered for this user")))
    assert not t.disconnecting
    auth._ebBadAuth(Failure(UnauthorizedLogin("key not registered for this user")))
    said = (b"7 keys were tried and none is registered for alice; offer that one key: "
            b"ssh -i <key file> -o IdentitiesOnly=yes ...")
    assert t.disconnecting and said in t.value()  # (the banner waits for the key exchange)
    assert b"too many bad auths" not in t.value()
