"""OpenSSH client helpers for integration tests."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any


def shell_cut_off(argv: Sequence[str], act: Callable[[], object], timeout: float = 5) -> str:
    """Run `ssh *argv "echo ready; sleep 30"`, call `act` once the shell is in, and return
    what ssh wrote to stderr after the gateway ended the connection (exit 255). The client
    is killed, by pid, whatever happens."""
    proc = subprocess.Popen(["ssh", *argv, "echo ready; sleep 30"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        act()
        assert proc.wait(timeout=timeout) == 255
        assert proc.stderr is not None
        return proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def ssh_agent(socket_path: Path) -> subprocess.Popen[str]:
    """`ssh-agent -D -a socket_path`, returned once it accepts connections: it prints its
    SSH_AUTH_SOCK line after listen(). Its socket file is there from bind(), a moment
    before, and an ssh-add let in by the file alone can find nobody listening. The
    caller stops it by pid."""
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(socket_path)],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert agent.stdout is not None
    line = agent.stdout.readline()
    if not line.startswith("SSH_AUTH_SOCK="):
        agent.kill()
        agent.wait()
        raise AssertionError(f"ssh-agent did not start: {line!r}")
    return agent


def registered_key(gw: Any, directory: Path, user: str) -> Path:
    """A new ed25519 key in `directory` (no passphrase), made `user`'s only key through the
    gateway's admin API (`gw`: a tests.support.gateway.GatewayProcess); its private file."""
    key = directory / f"{user}_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    status, body, _ = gw.request(f"/api/users/{user}/keys", method="PUT",
                                 body={"keys": [key.with_suffix(".pub").read_text()]})
    assert status == 200, body
    return key
