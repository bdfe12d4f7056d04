"""A real SSH deployment for integration tests: a twistd gateway with SSH on, one session
with SSH allowed, alice's key registered through the admin API, and its studio (the
demo tool and `studios-connect`) bound."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_tunnel_process import wait_connected
from tests.support.gateway import GatewayProcess, base_env
from tests.support.studio import Connect, Tool

KEY = "ssh-gateway-test-key"


def openssh_marks(timeout: float) -> list[Any]:
    """A module's pytestmark when its tests run OpenSSH's ssh against real processes."""
    return [pytest.mark.slow, pytest.mark.timeout(timeout),
            pytest.mark.skipif(shutil.which("ssh") is None,
                               reason="OpenSSH client not installed")]


@dataclass
class Deployment:
    gw: GatewayProcess
    sid: str
    port: int
    key: Path
    known_hosts: Path
    work: Path
    tmp: Path
    connect_string: str = ""
    tool_port: int = 0
    #: the studio's connect client (a test may stop it and start another)
    client: Connect | None = None
    stoppers: list[Callable[[], object]] = field(default_factory=list)

    def ssh_opts(self) -> list[str]:
        return ["-F", "/dev/null", "-o", "StrictHostKeyChecking=no",
                "-o", f"UserKnownHostsFile={self.known_hosts}", "-o", "IdentitiesOnly=yes",
                "-o", "BatchMode=yes", "-i", str(self.key)]

    def ssh(self, login: str, command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ssh", *self.ssh_opts(), "-p", str(self.port),
                               f"{login}@127.0.0.1", command], capture_output=True, text=True,
                              timeout=20, stdin=subprocess.DEVNULL)

    def start_studio(self, name: str = "connect",
                     extra_env: dict[str, str] | None = None) -> Connect:
        """Start the session's connect client (again; `extra_env`: its own variables) and
        wait until it is bound. Its HOME is the studio's own (studio_home)."""
        client = Connect(self.tmp, self.connect_string, self.tool_port, cwd=self.work,
                         name=name, extra_env={**studio_home(self.tmp), **(extra_env or {})})
        self.stoppers.append(client.stop)
        self.client = client
        wait_connected(self.gw, self.sid)
        return client


def studio_home(tmp: Path) -> dict[str, str]:
    """HOME for a studio's connect client: a directory of its own. A command's bash reads
    ~/.bashrc (as under sshd), and the test runner's (a pyenv init, ...) slowed and
    changed what the tests' commands ran."""
    home = tmp / "studio-user-home"
    home.mkdir(exist_ok=True)
    return {"HOME": str(home)}


def _admin(gw: GatewayProcess, path: str, method: str, body: object, expect: int) -> Any:
    status, answer, _ = gw.request(path, method=method, body=body)
    assert status == expect, answer
    return json.loads(answer)


@contextmanager
def ssh_deployment(tmp: Path, **env: str) -> Iterator[Deployment]:
    """The deployment (`env`: the gateway's extra variables); every process it started is
    stopped by its pid at the end, and neither log may hold a traceback."""
    env = base_env(tmp, CONNECT_MANAGEMENT_AUTH_KEY=KEY, CONNECT_SSH_ENABLED="true", **env)
    key = tmp / "alice_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "alice",
                    "-f", str(key)], check=True)
    stoppers: list[Callable[[], object]] = []
    gw = GatewayProcess(tmp, env)
    stoppers.append(gw.stop)
    try:
        gw.wait_ready()
        ssh_port = int(env["CONNECT_SSH_ADDR"].rsplit(":", 1)[1])  # (once up: see base_env)
        created = _admin(gw, "/api/sessions", "POST", {"owner": "alice", "ssh_enabled": True},
                         201)
        _admin(gw, "/api/users/alice/keys", "PUT",
               {"keys": [key.with_suffix(".pub").read_text()]}, 200)
        tool = Tool(tmp)
        stoppers.append(tool.stop)
        work = tmp / "studio-work"
        work.mkdir()
        dep = Deployment(gw, created["id"], ssh_port, key, tmp / "known_hosts", work, tmp,
                         created["connect_string"], tool.port, stoppers=stoppers)
        dep.start_studio()
        yield dep
        out = gw.output() + "".join(p.read_text(errors="replace")
                                    for p in tmp.glob("connect*.log"))
        assert "Traceback" not in out, out[-5000:]
    finally:
        for stop in reversed(stoppers):
            stop()
