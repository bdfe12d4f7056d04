"""OpenSSH client helpers for integration tests."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Sequence


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
