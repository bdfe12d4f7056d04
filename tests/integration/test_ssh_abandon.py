"""An SSH download abandoned by its client is reset end to end (issue 16), with real
processes: twistd gateway (SSH proxy on), studios-connect whose tunnel runs through a
counting relay, OpenSSH's ssh.

The command on the studio writes zeros as fast as its channel lets it and records how
much it wrote and when it stopped. The ssh client is killed (SIGKILL: no goodbye, its
socket closes with unread data) after 64 MiB: the command must end promptly (its
channel closed, so it is hung up on or its pipe breaks), and at most one window may
cross the tunnel after the kill (the browser's twin is in test_tunnel_quality).

scp is another case: the connection is its ssh child's, which outlives a killed scp.
That ssh finds its pipe to scp broken, drops the replies it held, sends EOF and waits
for the channel's close; if it held a whole window of them, it never re-opens the
window (it says eow@openssh.com only to OpenSSH servers), and the close must not wait
behind replies nobody reads (it did, for ever: the gateway relay drops them now).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_tunnel_process import Deployment, wait_connected
from tests.support.ssh_deployment import studio_home
from tests.support.studio import Connect, Tool
from tests.support.waiting import wait_until

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(120),
    pytest.mark.skipif(shutil.which("ssh") is None, reason="OpenSSH client not installed"),
]

MiB = 1 << 20
TUNNEL_WINDOW = 6 * MiB  # the gateway's receive window per tunnel stream (the default)

#: Runs on the studio: zeros to stdout until the channel goes; then "<bytes> <monotonic>"
#: into the file named by argv[1]. A hang-up (SIGHUP, the channel closed under a running
#: command) and a broken pipe both end it through `finally`. The studio sends the hang-up
#: and then closes the pipes, so both come: the broken pipe can be raised first and the
#: hang-up's exit land inside `finally` (Python runs the handler at its next check), which
#: must then still write the record (the test failed 1 run in 4 on the lost record).
WRITER = r"""
import os, signal, sys, time
hung_up = False

def hang_up(*_):
    global hung_up
    if not hung_up:
        hung_up = True
        sys.exit(129)

def record(n):
    with open(sys.argv[1] + ".tmp", "w") as f:
        f.write(f"{n} {time.monotonic()}")
    os.rename(sys.argv[1] + ".tmp", sys.argv[1])

signal.signal(signal.SIGHUP, hang_up)
block, n = bytes(1 << 16), 0
try:
    while True:
        n += os.write(1, block)
finally:
    while True:
        try:
            record(n)
            break
        except SystemExit:
            pass
"""


class SSHStudio:
    """A gateway with the SSH proxy, alice's key registered, and a studio (the demo tool
    plus studios-connect working in `work`) whose tunnel runs through a counting relay."""

    def __init__(self, tmp_path: Path):
        self.tmp_path = tmp_path
        self.d = d = Deployment(tmp_path, CONNECT_SSH_ENABLED="true")
        self.created = d.create(ssh_enabled=True)
        self.key = tmp_path / "alice_key"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.key)],
                       check=True)
        status, body, _ = d.gw.request(
            "/api/users/alice/keys", method="PUT",
            body={"keys": [self.key.with_suffix(".pub").read_text()]})
        assert status == 200, body
        self.relay, via_relay = d.relay(self.created)
        tool = Tool(tmp_path)  # the web tool answers the barrier requests (see `settle`)
        d.stoppers.append(tool.stop)
        self.work = tmp_path / "studio-work"
        self.work.mkdir()
        self.client = Connect(tmp_path, via_relay, tool.port, cwd=self.work,
                              extra_env=studio_home(tmp_path))
        d.stoppers.append(self.client.stop)
        wait_connected(d.gw, self.created["id"])
        d.login(self.created)
        self.port = d.env["CONNECT_SSH_ADDR"].rsplit(":", 1)[1]
        self.target = f"alice@{self.created['id']}@127.0.0.1"

    def options(self) -> list[str]:
        return ["-F", "/dev/null", "-o", "StrictHostKeyChecking=no",
                "-o", f"UserKnownHostsFile={self.tmp_path / 'known_hosts'}",
                "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes", "-i", str(self.key)]

    def start(self, argv: list[str], **kw: Any) -> subprocess.Popen[bytes]:
        """``argv`` in a process group of its own, stopped (scp's ssh child with it)."""
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                start_new_session=True, **kw)

        def stop() -> None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()

        self.d.stoppers.append(stop)
        return proc

    def kill(self, proc: subprocess.Popen[bytes]) -> tuple[float, int]:
        """SIGKILL the OpenSSH client: when, and the tunnel's upward count then."""
        up, at = self.relay.forwarded["up"], time.monotonic()
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        return at, up

    def stream_closed(self) -> None:
        """The studio closes the tunnel stream that carried the (only) SSH connection."""
        [sid] = re.findall(r"studio SSH: serving stream (\d+)", self.client.output())
        try:
            wait_until(lambda: f"stream {sid} closed" in self.client.output(),
                       f"the studio closed SSH stream {sid}", timeout=10)
        except AssertionError as e:
            raise AssertionError(f"{e}\n--- studio:\n{self.client.output()[-4000:]}"
                                 f"\n--- gateway:\n{self.d.gw.output()[-4000:]}") from None

    def settle(self) -> int:
        """Bytes that went up the tunnel so far, once nothing more is on its way: a request
        through the same tunnel is answered while the relay carries little besides it
        (whatever the studio sent before that answer has crossed)."""
        url = self.d.url(self.created, "/api/info")

        def quiet() -> bool:
            before = self.relay.forwarded["up"]
            assert self.d.browser.get(url).status == 200
            return self.relay.forwarded["up"] - before < 64 * 1024

        wait_until(quiet, "the tunnel carries nothing but the probe", timeout=20)
        return self.relay.forwarded["up"]


@pytest.fixture
def studio(tmp_path: Path) -> Iterator[SSHStudio]:
    s = SSHStudio(tmp_path)
    try:
        yield s
    finally:
        s.d.stop()
    out = s.d.gw.log_path.read_text() + s.client.log_path.read_text()
    assert "Traceback" not in out, out[-5000:]


def test_a_killed_ssh_download_is_reset_end_to_end(studio: SSHStudio) -> None:
    ended = studio.work / "ended"
    (studio.work / "writer.py").write_text(WRITER)
    ssh = studio.start(["ssh", *studio.options(), "-p", studio.port, studio.target,
                        f"exec python3 writer.py {ended}"], stdout=subprocess.PIPE)
    assert ssh.stdout is not None
    got = 0
    while got < 64 * MiB:
        chunk = ssh.stdout.read1(1 << 20)
        assert chunk, (ssh.wait(), ssh.stderr and ssh.stderr.read(),
                       studio.d.gw.output()[-3000:])
        got += len(chunk)
    killed, up_at_kill = studio.kill(ssh)

    # The studio's command ends (its channel was closed under it: hung up), and the
    # tunnel stream that carried the SSH connection is closed.
    wait_until(ended.exists, "the command on the studio ended", timeout=10)
    studio.stream_closed()
    wrote, ended_at = ended.read_text().split()
    closed_after = float(ended_at) - killed
    crossed = studio.settle() - up_at_kill
    print(f"\ncommand ended {closed_after * 1000:.0f} ms after the kill, having written "
          f"{int(wrote) / MiB:.0f} MiB; {crossed / MiB:.2f} MiB crossed the tunnel after")
    assert closed_after < 5, closed_after
    assert crossed <= TUNNEL_WINDOW * 1.01  # payload plus SSH, frame and TLS headers
    assert int(wrote) < 256 * MiB
    assert wait_connected(studio.d.gw, studio.created["id"])  # the tunnel lives on


def _children(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _gone(pid: int) -> bool:
    """Exited (reaped, or a zombie its new parent has not reaped yet)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def _scp(studio: SSHStudio, tmp_path: Path, size: int) -> tuple[subprocess.Popen[bytes], Path]:
    """scp (SFTP underneath, the studio's in-process server) of a 2 GiB file, once it
    has copied ``size`` bytes."""
    with (studio.work / "big.bin").open("wb") as f:
        f.truncate(2 << 30)  # sparse: no disk written
    copy = tmp_path / "copy.bin"
    scp = studio.start(["scp", *studio.options(), "-P", studio.port,
                        f"{studio.target}:big.bin", str(copy)], stdout=subprocess.DEVNULL)
    wait_until(lambda: copy.exists() and copy.stat().st_size >= size or scp.poll(),
               f"scp copied {size / MiB:g} MiB", timeout=60)
    assert scp.poll() is None, (scp.stderr and scp.stderr.read())
    return scp, copy


def test_a_killed_scp_download_is_reset_end_to_end(studio: SSHStudio, tmp_path: Path
                                                   ) -> None:
    """scp killed after 64 MiB: its ssh ends, the studio's SSH stream is closed and at
    most a window crosses."""
    scp, copy = _scp(studio, tmp_path, 64 * MiB)
    [ssh] = _children(scp.pid)
    killed, up_at_kill = studio.kill(scp)
    studio.stream_closed()
    wait_until(lambda: _gone(ssh), "scp's ssh ended", timeout=10)
    closed_after = time.monotonic() - killed
    crossed = studio.settle() - up_at_kill
    print(f"\nSSH stream closed within {closed_after * 1000:.0f} ms of the kill, "
          f"{copy.stat().st_size / MiB:.0f} MiB copied; {crossed / MiB:.2f} MiB crossed the "
          f"tunnel after")
    assert crossed <= TUNNEL_WINDOW * 1.01


def test_a_stalled_scp_killed_with_a_window_unread_ends(studio: SSHStudio, tmp_path: Path
                                                        ) -> None:
    """The losing side of a race the test above ran into once in a while (CI once): scp
    is stopped until every window on the way is shut (its ssh holds a whole window of
    replies), then killed. Its ssh drops them, sends EOF and waits for the close, which
    the studio sends behind replies that can never go: the gateway drops them (they are
    not for the SFTP client any more), so the close reaches ssh, which ends."""
    scp, copy = _scp(studio, tmp_path, 8 * MiB)
    [ssh] = _children(scp.pid)
    scp.send_signal(signal.SIGSTOP)
    studio.settle()  # nothing more crosses: the windows are shut
    killed, up_at_kill = studio.kill(scp)
    studio.stream_closed()
    wait_until(lambda: _gone(ssh), "scp's ssh ended", timeout=10)
    crossed = studio.settle() - up_at_kill
    print(f"\nSSH stream closed within {(time.monotonic() - killed) * 1000:.0f} ms of the "
          f"kill; {crossed / MiB:.2f} MiB crossed the tunnel after")
    assert crossed <= TUNNEL_WINDOW * 1.01
