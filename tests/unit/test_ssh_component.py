"""The SSH proxy's wiring into the gateway, and the key trust carried by the bind reply."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import defer
from twisted.internet.testing import MemoryReactorClock

from studios_gateway.auth import Decision
from studios_gateway.component import StartError
from studios_gateway.config_loading import load_config
from studios_gateway.registry.base import SessionRecord
from studios_gateway.service import Built, GatewayService, make_service
from studios_gateway.ssh.component import make_authorize, make_dial
from studios_gateway.studio.ssh import StudioSSH
from studios_gateway.tunnel.dialer import StudioUnreachable
from studios_gateway.wire.bind import BindReply, parse_reply

FP = "SHA256:" + "A" * 43


def gateway(tmp_path: Path, **env: str) -> GatewayService:
    cfg = load_config(environ={"CONNECT_STORAGE_ROOT": str(tmp_path),
                               "CONNECT_MANAGEMENT_PORT": "9000", "CONNECT_SSH_ENABLED": "true",
                               "CONNECT_SSH_ADDR": "127.0.0.1:2222", **env})
    return make_service(cfg, MemoryReactorClock())


def built(gw: GatewayService) -> Built:
    assert gw.built is not None
    return gw.built


def ssh_factory(gw: GatewayService) -> Any:
    ssh = built(gw).ssh
    assert ssh is not None
    return ssh.factory


def test_enabled_adds_listener_component_api_and_tells_the_tunnels(tmp_path: Path) -> None:
    gw = gateway(tmp_path)
    ssh = [lst for lst in gw.listeners if lst.name == "ssh"]
    assert ssh and ssh[0].variable == "CONNECT_SSH_ADDR"
    assert "SSH proxy" in [c.name for c in gw.components]
    assert b"users" in built(gw).api_mounts
    assert built(gw).tunnel_table.ssh_host_key == ssh_factory(gw).host_key_fingerprint()
    assert (tmp_path / "ssh" / "ssh_host_ed25519_key").exists()
    gw.bind_all()
    assert any(server[0] == 2222 for server in gw.reactor.tcpServers)


def test_disabled_adds_nothing(tmp_path: Path) -> None:
    gw = gateway(tmp_path, CONNECT_SSH_ENABLED="false")
    assert "ssh" not in [lst.name for lst in gw.listeners]
    assert built(gw).tunnel_table.ssh_host_key is None
    assert built(gw).ssh is None


def test_an_unusable_host_key_fails_the_start(tmp_path: Path) -> None:
    bad = base64.b64encode(b"-----BEGIN OPENSSH PRIVATE KEY-----\nnope\n").decode()
    with pytest.raises(StartError, match="CONNECT_SSH_KEY_VALUE_BASE64"):
        gateway(tmp_path, CONNECT_SSH_KEY_VALUE_BASE64=bad)


def test_drain_waits_for_open_connections(tmp_path: Path) -> None:
    f = ssh_factory(gateway(tmp_path))
    conn = object()
    f.connections.add(conn)
    done = f.when_idle()
    assert not done.called
    f.forget(conn)
    assert done.called


class FakeDialer:
    def __init__(self, stream: Any = None):
        self.stream = stream
        self.kinds: list[bytes] = []

    def dial(self, sid: str, kind: bytes) -> defer.Deferred[Any]:
        self.kinds.append(kind)
        if self.stream is None:
            return defer.fail(StudioUnreachable(sid))
        return defer.succeed(self.stream)


class FakeStream:
    attached: Any = None

    def attach(self, proto: Any) -> None:
        self.attached = proto


def test_dial_attaches_an_ssh_stream_or_answers_false() -> None:
    stream = FakeStream()
    dialer = FakeDialer(stream)
    got: list[Any] = []
    make_dial(dialer)("abcd", "proto").addCallback(got.append)  # type: ignore[arg-type]
    assert got == [True] and stream.attached == "proto" and dialer.kinds == [b"S"]
    make_dial(FakeDialer())("abcd", "proto").addCallback(got.append)  # type: ignore[arg-type]
    assert got == [True, False]


class FakeAuthorizer:
    def __init__(self, decision: Decision):
        self.decision = decision

    def check(self, sid: str, user: str) -> defer.Deferred[Decision]:
        return defer.succeed(self.decision)


@pytest.mark.parametrize(("decision", "expect"), [
    (Decision(True, "owner"), True),
    # The plain "no" says nothing the sentence does not (docs/ssh.md's wording).
    (Decision(False, "not allowed on this session", 403), "bob is not allowed on session abcd"),
    (Decision(False, "the session's workspace may not use studios", 403),
     "bob is not allowed on session abcd (the session's workspace may not use studios)"),
    (Decision(False, "the Platform could not be asked", 503),
     "cannot check access to session abcd right now (the Platform could not be asked); "
     "try again shortly"),
])
def test_authorize_words_the_decision(decision: Decision, expect: Any) -> None:
    record = SessionRecord.from_dict(dict(id="abcd", workspace_id=None, tool="generic",
                                          owner="alice", allowed_users=[], ssh_enabled=True,
                                          token_hash="x", created_at=0.0))
    got: list[Any] = []
    make_authorize(FakeAuthorizer(decision))("bob", record).addCallback(got.append)
    assert got == [expect]


# The bind reply ------------------------------------------------------------------------------


def test_bind_reply_carries_the_fingerprint() -> None:
    line = BindReply(ok=True, tunnel_id="t1", ssh_host_key=FP).encode()
    assert json.loads(line)["ssh_host_key"] == FP
    assert parse_reply(line.strip()).ssh_host_key == FP


def test_bind_reply_without_or_with_a_bad_fingerprint_means_no_ssh() -> None:
    assert "ssh_host_key" not in json.loads(BindReply(ok=True, tunnel_id="t").encode())
    assert parse_reply(b'{"ok": true, "tunnel_id": "t"}').ssh_host_key == ""
    assert parse_reply(b'{"ok": true, "ssh_host_key": "md5:xx", "new": 1}').ssh_host_key == ""


def test_studio_pins_what_each_bind_says() -> None:
    ssh = StudioSSH(MemoryReactorClock())
    assert ssh.server.trusted() == set()
    ssh.on_bind(BindReply(ok=True, ssh_host_key=FP))
    assert ssh.server.trusted() == {FP}
    ssh.on_bind(BindReply(ok=True))
    assert ssh.server.trusted() == set()


def test_users_keys_are_the_registrys_and_one_node_keeps_the_file(tmp_path: Path) -> None:
    from studios_gateway.ssh.keys import key_file_path
    from studios_gateway.ssh.user_keys import StoreUserKeys

    line = ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIC2vM1aF0vO0Zt0m9kq2Zm9pLk0rM8nJ4x8mW3yQd7Ls "
            "old@node")
    key_file_path(str(tmp_path)).parent.mkdir(parents=True, exist_ok=True)
    key_file_path(str(tmp_path)).write_text(json.dumps({"users": {"alice": [line]}}))
    gw = gateway(tmp_path)
    keys = ssh_factory(gw).user_keys
    assert isinstance(keys, StoreUserKeys) and keys.store is gw.store and keys.platform is None
    assert gw.store.get_user_keys("alice").result == [line]  # loaded from the file
    gw.store.set_user_keys("bob", [line])
    assert json.loads(key_file_path(str(tmp_path)).read_text())["users"]["bob"] == [line]


def test_with_a_platform_its_keys_are_asked_too(tmp_path: Path) -> None:
    gw = gateway(tmp_path, PLATFORM_URL="https://platform.example.com",
                 CONNECT_PROXY_URL="https://connect.example.com")
    platform = ssh_factory(gw).user_keys.platform
    assert platform.url("a@b") == "https://platform.example.com/api/users/a%40b/ssh-keys"
