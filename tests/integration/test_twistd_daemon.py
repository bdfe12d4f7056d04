"""`twistd studios-gateway` without -n (it forks into the background, as old init scripts
run it) when the start fails after the fork: a port another program holds. twistd's first
process waits on a pipe for the start's outcome; the gateway exited without a word on it,
so that process waited for ever, the pid file stayed, and the reason went to the
daemon's stderr, /dev/null."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest

from tests.support.gateway import BIN, base_env

pytestmark = pytest.mark.slow


def test_a_port_taken_after_the_fork_ends_the_start_with_its_reason(tmp_path: Path) -> None:
    env = base_env(tmp_path, CONNECT_SSH_ENABLED="false")
    other = socket.socket()  # another program's server on the gateway's HTTP port
    other.bind(("127.0.0.1", int(env["CONNECT_HTTP_PORT"])))
    other.listen()
    pidfile, logfile = tmp_path / "gateway.pid", tmp_path / "gateway.log"
    try:
        proc = subprocess.run([str(BIN / "twistd"), f"--pidfile={pidfile}",
                               f"--logfile={logfile}", "studios-gateway"], env=env,
                              cwd=tmp_path, capture_output=True, text=True, timeout=60)
    finally:
        other.close()
    line = (f"studios-gateway: cannot listen for the HTTP proxy (CONNECT_HTTP_PORT) on "
            f"127.0.0.1:{env['CONNECT_HTTP_PORT']}: [Errno 98] Address already in use")
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    assert "An error has occurred: b'studios-gateway: cannot listen for the HTTP proxy" \
        in proc.stderr and "Please look at log file" in proc.stderr, proc.stderr
    assert line in logfile.read_text()
    assert not pidfile.exists()
