"""The SSH proxy inside the real gateway: twistd, studios-connect, the admin API, OpenSSH.

One gateway process with CONNECT_SSH_ENABLED=true, one studio (demo tool and
`studios-connect`), a session with ssh_enabled and alice's key registered
through the admin API; then OpenSSH's ssh and scp through the gateway, and one
refusal; removing a key closes the connection open with it. The studio's SSH
server trusts the gateway's key because the bind reply told it the fingerprint.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.test_tunnel_process import wait_connected
from tests.support.gateway import GatewayProcess, base_env
from tests.support.studio import Connect, Tool

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(90),
    pytest.mark.skipif(shutil.which("ssh") is None, reason="OpenSSH client not installed"),
]

KEY = "ssh-gateway-test-key"


@dataclass
class Deployment:
    gw: GatewayProcess
    sid: str
    port: int
    key: Path
    known_hosts: Path
    work: Path

    def ssh_opts(self) -> list[str]:
        return ["-F", "/dev/null", "-o", "StrictHostKeyChecking=no",
                "-o", f"UserKnownHostsFile={self.known_hosts}", "-o", "IdentitiesOnly=yes",
                "-o", "BatchMode=yes", "-i", str(self.key)]

    def ssh(self, login: str, command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ssh", *self.ssh_opts(), "-p", str(self.port),
                               f"{login}@127.0.0.1", command], capture_output=True, text=True,
                              timeout=20, stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def dep(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    tmp = tmp_path_factory.mktemp("sshgw")
    env = base_env(tmp, CONNECT_MANAGEMENT_AUTH_KEY=KEY, CONNECT_SSH_ENABLED="true",
                   CONNECT_SSH_MAX_CONNECTIONS="5", CONNECT_SSH_MAX_STARTUPS="10:30:60")
    ssh_port = int(env["CONNECT_SSH_ADDR"].rsplit(":", 1)[1])
    key = tmp / "alice_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "alice",
                    "-f", str(key)], check=True)
    stoppers = []
    gw = GatewayProcess(tmp, env)
    stoppers.append(gw.stop)
    try:
        gw.wait_ready()
        status, body, _ = gw.request("/api/sessions", method="POST",
                                     body={"owner": "alice", "ssh_enabled": True})
        assert status == 201, body
        created = json.loads(body)
        status, body, _ = gw.request("/api/users/alice/keys", method="PUT",
                                     body={"keys": [key.with_suffix(".pub").read_text()]})
        assert status == 200, body
        tool = Tool(tmp)
        stoppers.append(tool.stop)
        work = tmp / "studio-work"
        work.mkdir()
        client = Connect(tmp, created["connect_string"], tool.port, cwd=work)
        stoppers.append(client.stop)
        wait_connected(gw, created["id"])
        yield Deployment(gw, created["id"], ssh_port, key, tmp / "known_hosts", work)
        out = gw.output() + client.output()
        assert "Traceback" not in out, out[-5000:]
    finally:
        for stop in reversed(stoppers):
            stop()


def test_exec_prints_and_exits_with_the_status(dep: Deployment) -> None:
    r = dep.ssh(f"alice@{dep.sid}", "echo hello; pwd; exit 3")
    assert r.returncode == 3, (r.stderr, dep.gw.output()[-3000:])
    assert r.stdout == f"hello\n{dep.work}\n"


def test_scp_a_small_file_up_and_down(dep: Deployment, tmp_path: Path) -> None:
    src = tmp_path / "notes.txt"
    src.write_bytes(b"studio notes\n" * 1000)
    target = f"alice@{dep.sid}@127.0.0.1"
    r = subprocess.run(["scp", *dep.ssh_opts(), "-P", str(dep.port), str(src),
                        f"{target}:notes.txt"], capture_output=True, text=True, timeout=20)
    assert r.returncode == 0, r.stderr
    assert (dep.work / "notes.txt").read_bytes() == src.read_bytes()
    back = tmp_path / "back.txt"
    r = subprocess.run(["scp", *dep.ssh_opts(), "-P", str(dep.port), f"{target}:notes.txt",
                        str(back)], capture_output=True, text=True, timeout=20)
    assert r.returncode == 0, r.stderr
    assert back.read_bytes() == src.read_bytes()


def test_five_silent_sockets_do_not_lock_users_out(dep: Deployment) -> None:
    """Issue 17: with CONNECT_SSH_MAX_CONNECTIONS=5, five sockets that connect and say
    nothing refused every user until the handshake timeout (60 s)."""
    import socket

    silent = [socket.create_connection(("127.0.0.1", dep.port), timeout=10)
              for _ in range(5)]
    try:
        for s in silent:
            assert s.recv(8) == b"SSH-2.0-"  # accepted, each holding a connection
        r = dep.ssh(f"alice@{dep.sid}", "echo in")
        assert r.returncode == 0 and r.stdout == "in\n", (r.stderr, dep.gw.output()[-3000:])
    finally:
        for s in silent:
            s.close()


def test_unknown_session_is_refused_with_its_reason(dep: Deployment) -> None:
    r = dep.ssh("alice@nosuchsession", "echo should-not-run")
    assert r.returncode == 255 and "should-not-run" not in r.stdout
    assert "there is no session nosuchsession" in r.stderr, r.stderr


def test_user_keys_api_lists_the_key(dep: Deployment) -> None:
    status, body, _ = dep.gw.request("/api/users/alice/keys")
    assert status == 200
    keys = json.loads(body)["keys"]
    assert len(keys) == 1 and keys[0]["fingerprint"].startswith("SHA256:")
    status, _, _ = dep.gw.request("/api/users/alice/keys", auth=False)
    assert status == 401


def test_removing_the_key_closes_the_open_connection(dep: Deployment, tmp_path: Path) -> None:
    second = tmp_path / "alice_laptop"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "laptop",
                    "-f", str(second)], check=True)
    first_line = dep.key.with_suffix(".pub").read_text()
    status, body, _ = dep.gw.request("/api/users/alice/keys", method="POST",
                                     body={"keys": [second.with_suffix(".pub").read_text()]})
    assert status == 200, body
    opts = [*dep.ssh_opts()[:-1], str(second)]
    proc = subprocess.Popen(["ssh", *opts, "-p", str(dep.port), f"alice@{dep.sid}@127.0.0.1",
                             "echo ready; sleep 30"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        # Replace alice's keys with the first one only: the laptop's connection ends.
        status, body, _ = dep.gw.request("/api/users/alice/keys", method="PUT",
                                         body={"keys": [first_line]})
        assert status == 200, body
        assert proc.wait(timeout=5) == 255
        assert proc.stderr is not None
        err = proc.stderr.read()
        assert "your SSH key was removed" in err, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # The remaining key still logs in.
    assert dep.ssh(f"alice@{dep.sid}", "echo still").stdout == "still\n"
