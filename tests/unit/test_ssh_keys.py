"""Host key loading, users' keys, and the /api/users/{user}/keys resource."""

from __future__ import annotations

import json
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from twisted.conch.ssh.keys import Key
from twisted.internet.task import Clock
from twisted.web.server import NOT_DONE_YET
from twisted.web.test.requesthelper import DummyRequest

from studios_gateway.registry.memory import MemoryStore
from studios_gateway.ssh.api import UserKeysResource
from studios_gateway.ssh.keys import (
    HostKeyError,
    fingerprint,
    load_host_key,
    parse_public_keys,
)


def _pem(private: object) -> bytes:
    return private.private_bytes(serialization.Encoding.PEM,  # type: ignore[attr-defined]
                                 serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())


def _traditional(private: object) -> bytes:
    if isinstance(private, ed25519.Ed25519PrivateKey):
        return _openssh(private)
    return private.private_bytes(serialization.Encoding.PEM,  # type: ignore[attr-defined]
                                 serialization.PrivateFormat.TraditionalOpenSSL,
                                 serialization.NoEncryption())


def _openssh(private: object) -> bytes:
    return private.private_bytes(serialization.Encoding.PEM,  # type: ignore[attr-defined]
                                 serialization.PrivateFormat.OpenSSH,
                                 serialization.NoEncryption())


KEYS = {
    "ed25519": ed25519.Ed25519PrivateKey.generate(),
    "rsa": rsa.generate_private_key(public_exponent=65537, key_size=2048),
    "ecdsa": ec.generate_private_key(ec.SECP256R1()),
}


@pytest.mark.parametrize("kind", sorted(KEYS))
@pytest.mark.parametrize("fmt", [_pem, _traditional, _openssh])
def test_value_formats(kind: str, fmt: object, tmp_path: Path) -> None:
    data = fmt(KEYS[kind])  # type: ignore[operator]
    key = load_host_key(None, data, str(tmp_path))
    assert not key.isPublic()
    assert not (tmp_path / "ssh").exists()


def test_path_wins_over_value(tmp_path: Path) -> None:
    path = tmp_path / "host"
    path.write_bytes(_openssh(KEYS["ed25519"]))
    other = _pem(KEYS["rsa"])
    key = load_host_key(str(path), other, str(tmp_path))
    assert key.type() == "Ed25519"


def test_generated_once_0600(tmp_path: Path) -> None:
    first = load_host_key(None, None, str(tmp_path))
    files = list((tmp_path / "ssh").iterdir())
    assert [f.name for f in files] == ["ssh_host_ed25519_key"]
    assert stat.S_IMODE(files[0].stat().st_mode) == 0o600
    again = load_host_key(None, None, str(tmp_path))
    assert fingerprint(first) == fingerprint(again) and first.type() == "Ed25519"


def test_fingerprint_matches_ssh_keygen(tmp_path: Path) -> None:
    path = tmp_path / "k"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    out = subprocess.run(["ssh-keygen", "-l", "-f", str(path)], capture_output=True, text=True,
                         check=True).stdout
    assert fingerprint(Key.fromFile(str(path))) == out.split()[1]


@pytest.mark.parametrize("data, words", [
    (b"not a key", "not a usable private key"),
    (b"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl",
     "public key"),
])
def test_bad_values(data: bytes, words: str, tmp_path: Path) -> None:
    with pytest.raises(HostKeyError, match=words) as e:
        load_host_key(None, data, str(tmp_path))
    assert "CONNECT_SSH_KEY_VALUE_BASE64" in str(e.value)


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(HostKeyError, match="CONNECT_SSH_KEY_PATH"):
        load_host_key(str(tmp_path / "nope"), None, str(tmp_path))


def _pub(kind: str = "ed25519") -> str:
    return Key(KEYS[kind]).public().toString("OPENSSH").decode() + " someone@host"


def test_parse_public_keys() -> None:
    text = f"# comment\n\n{_pub()}\n{_pub('rsa')}\n"
    lines = parse_public_keys(text)
    assert len(lines) == 2 and lines[0].endswith("someone@host")
    with pytest.raises(ValueError, match="line 1"):
        parse_public_keys('from="1.2.3.4" ' + _pub())
    with pytest.raises(ValueError, match="line 1"):
        parse_public_keys("ssh-ed25519 AAAAnotbase64!!")


def _call(resource: UserKeysResource, method: str, path: str,
          body: bytes = b"") -> tuple[int, dict]:
    from twisted.internet.address import IPv4Address

    req = DummyRequest([p.encode() for p in path.split("/")])
    req.method = method.encode()
    req.client = IPv4Address("TCP", "192.0.2.7", 50000)
    import io

    req.content = io.BytesIO(body)
    out = resource.render(req)
    if out == NOT_DONE_YET:  # the in-memory store answers at once
        assert req.finished
        out = b"".join(req.written)
    return req.responseCode or 200, json.loads(out)


def test_api() -> None:
    res = UserKeysResource(MemoryStore(Clock()))
    code, body = _call(res, "PUT", "alice/keys", _pub().encode())
    assert code == 200 and body["keys"][0]["fingerprint"].startswith("SHA256:")
    code, body = _call(res, "POST", "alice/keys", json.dumps({"keys": [_pub("ecdsa")]}).encode())
    assert code == 200 and len(body["keys"]) == 2
    code, body = _call(res, "GET", "alice/keys")
    assert len(body["keys"]) == 2
    fp = body["keys"][1]["fingerprint"]
    from urllib.parse import quote

    code, body = _call(res, "DELETE", f"alice/keys/{quote(fp, safe='')}")
    assert code == 200 and body["deleted"] == 1
    code, body = _call(res, "PUT", "alice/keys", b"garbage")
    assert code == 400 and "line 1" in body["error"]
    code, body = _call(res, "DELETE", "alice/keys")
    assert body["deleted"] == 1
    assert _call(res, "GET", "alice/nothing")[0] == 404
    assert _call(res, "PATCH", "alice/keys")[0] == 405
    code, body = _call(res, "PUT", "alice/keys", b'{"keys":' + b"[" * 20000 + b"]" * 20000
                       + b"}")
    assert (code, body) == (400, {"error": "the body is not valid JSON: nested too deeply"})


def test_api_changes_are_logged_with_the_caller_and_never_the_keys() -> None:
    from urllib.parse import quote

    from twisted.logger import formatEvent, globalLogPublisher

    lines: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        if event.get("log_namespace") == "studios_gateway.ssh.api":
            lines.append(formatEvent(event))

    res = UserKeysResource(MemoryStore(Clock()))
    one, two = _pub(), _pub("ecdsa")
    globalLogPublisher.addObserver(observe)
    try:
        _call(res, "PUT", "alice/keys", one.encode())
        _call(res, "POST", "alice/keys", f"{one}\n{two}".encode())
        fp = _call(res, "GET", "alice/keys")[1]["keys"][1]["fingerprint"]
        _call(res, "DELETE", f"alice/keys/{quote(fp, safe='')}")
        _call(res, "DELETE", "alice/keys")
        _call(res, "DELETE", "alice/keys")
    finally:
        globalLogPublisher.removeObserver(observe)
    peer = "192.0.2.7"
    assert lines == [
        f"admin API: SSH keys of alice replaced (1 key) by {peer}",
        f"admin API: SSH keys added for alice (2 keys sent, 2 keys now) by {peer}",
        f"admin API: SSH key {fp} of alice deleted by {peer}",
        f"admin API: SSH keys of alice deleted (1 key) by {peer}",
        f"admin API: SSH keys of alice deleted (0 keys) by {peer}",
    ]
    text = "\n".join(lines)
    assert one.split()[1] not in text and two.split()[1] not in text


def test_api_limits_and_an_unavailable_registry() -> None:
    from tests.support.stores import FlakyStore

    flaky = FlakyStore(MemoryStore(Clock()))
    res = UserKeysResource(flaky)
    many = "\n".join(Key(ed25519.Ed25519PrivateKey.generate()).public().toString("OPENSSH")
                     .decode() for _ in range(101))
    code, body = _call(res, "PUT", "alice/keys", many.encode())
    assert code == 400 and "at most 100 keys" in body["error"]
    code, body = _call(res, "PUT", "alice/keys", (_pub() + " " + "x" * 9000).encode())
    assert code == 400 and "longer than 8192 bytes" in body["error"]
    code, body = _call(res, "PUT", "alice@example.com/keys", f"{_pub()}\n{_pub()}".encode())
    assert code == 200 and len(body["keys"]) == 1  # e-mail user names; the same key once
    flaky.up = False
    for method in ("GET", "PUT", "DELETE"):
        code, body = _call(res, method, "alice/keys", _pub().encode())
        assert code == 503 and "registry is unavailable" in body["error"], (method, body)


def test_checker_refuses_unavailable_keys_and_says_why_once() -> None:
    from twisted.conch.ssh.keys import Key as ConchKey
    from twisted.cred.credentials import SSHPrivateKey
    from twisted.cred.error import UnauthorizedLogin
    from twisted.internet import defer

    from studios_gateway.ssh.keys import KeysUnavailable
    from studios_gateway.ssh.server import UserKeyChecker

    class Down:
        async def accepts(self, user: str, key: ConchKey) -> bool:
            raise KeysUnavailable(f"cannot check {user}'s SSH keys right now")

    said: list[str] = []
    checker = UserKeyChecker(Down(), notice=said.append)
    blob = Key(KEYS["ed25519"]).public().blob()
    for _ in range(2):
        d = checker.requestAvatarId(SSHPrivateKey(b"alice@abc123", b"ssh-ed25519", blob,
                                                  None, None))
        failures: list[Any] = []
        d.addErrback(failures.append)
        assert isinstance(d, defer.Deferred) and failures[0].check(UnauthorizedLogin)
    assert said == ["cannot check alice's SSH keys right now"]
