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
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.gateway import REPO
from tests.support.ssh_client import shell_cut_off
from tests.support.ssh_deployment import Deployment, ssh_deployment

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(90),
    pytest.mark.skipif(shutil.which("ssh") is None, reason="OpenSSH client not installed"),
]


@pytest.fixture(scope="module")
def dep(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    with ssh_deployment(tmp_path_factory.mktemp("sshgw"), CONNECT_SSH_MAX_CONNECTIONS="5",
                        CONNECT_SSH_MAX_STARTUPS="10:30:60") as d:
        yield d


def test_exec_prints_and_exits_with_the_status(dep: Deployment) -> None:
    r = dep.ssh(f"alice@{dep.sid}", "echo hello; pwd; exit 3")
    assert r.returncode == 3, (r.stderr, dep.gw.output()[-3000:])
    assert r.stdout == f"hello\n{dep.work}\n"


def test_ssh_starts_in_the_tools_working_directory(dep: Deployment, tmp_path: Path) -> None:
    # CONNECT_TOOL_WORKDIR names where the tool works: ssh and sftp start there too, not
    # in the directory studios-connect was started in (the image's WORKDIR: often /)
    home = tmp_path / "studio-home"
    home.mkdir()
    assert dep.client is not None
    dep.client.stop()
    dep.start_studio("connect-workdir", {"CONNECT_TOOL_WORKDIR": str(home)})
    try:
        r = dep.ssh(f"alice@{dep.sid}", "pwd")
        assert (r.returncode, r.stdout) == (0, f"{home}\n"), r.stderr
    finally:
        assert dep.client is not None
        dep.client.stop()
        dep.start_studio("connect-again")


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


def _cut_off(dep: Deployment, act: Callable[[], object], opts: list[str] | None = None,
             user: str = "alice") -> str:
    """Open a shell as `user` (`opts`: ssh's options, default the deployment's), do `act`
    once it is in, and return what ssh wrote to stderr after the gateway ended it (exit
    255). The client is killed, by pid, whatever happens."""
    return shell_cut_off([*(opts or dep.ssh_opts()), "-p", str(dep.port),
                          f"{user}@{dep.sid}@127.0.0.1"], act)


def test_removing_the_key_closes_the_open_connection(dep: Deployment, tmp_path: Path) -> None:
    second = tmp_path / "alice_laptop"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "laptop",
                    "-f", str(second)], check=True)
    first_line = dep.key.with_suffix(".pub").read_text()
    status, body, _ = dep.gw.request("/api/users/alice/keys", method="POST",
                                     body={"keys": [second.with_suffix(".pub").read_text()]})
    assert status == 200, body
    def replace_keys() -> None:
        # Replace alice's keys with the first one only: the laptop's connection ends.
        status, body, _ = dep.gw.request("/api/users/alice/keys", method="PUT",
                                         body={"keys": [first_line]})
        assert status == 200, body

    err = _cut_off(dep, replace_keys, [*dep.ssh_opts()[:-1], str(second)])
    assert "your SSH key was removed" in err, err
    # The remaining key still logs in.
    assert dep.ssh(f"alice@{dep.sid}", "echo still").stdout == "still\n"


# What the gateway logs, with a real client ---------------------------------------------------


def _logged(dep: Deployment, *needles: str, timeout: float = 5.0, since: int = 0) -> str:
    """The gateway's output once every needle is in it (access lines go out in batches);
    `since`: only what came after that much of it (the module's earlier tests wrote the
    rest, some of it the same lines)."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        out = dep.gw.output()[since:]
        if all(n in out for n in needles) or time.monotonic() > deadline:
            return out
        time.sleep(0.05)


def test_a_wrong_key_is_one_refusal_line_and_an_access_line(dep: Deployment,
                                                              tmp_path: Path) -> None:
    wrong = tmp_path / "wrong_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(wrong)],
                   check=True)
    fp = subprocess.run(["ssh-keygen", "-lf", str(wrong.with_suffix(".pub"))],
                        capture_output=True, text=True, check=True).stdout.split()[1]
    opts = [*dep.ssh_opts()[:-1], str(wrong)]
    r = subprocess.run(["ssh", *opts, "-p", str(dep.port), f"alice@{dep.sid}@127.0.0.1",
                        "true"], capture_output=True, text=True, timeout=20,
                       stdin=subprocess.DEVNULL)
    assert r.returncode == 255 and "Permission denied (publickey)" in r.stderr, r.stderr
    line = f"SSH: refused alice@{dep.sid} from 127.0.0.1:"
    out = _logged(dep, f"no accepted key (offered {fp})", 'reason="no accepted key"')
    refused = [x for x in out.splitlines() if line in x and fp in x]
    assert len(refused) == 1, out[-3000:]
    access = [x for x in out.splitlines() if "studios_gateway.access" in x
              and 'reason="no accepted key"' in x]
    assert access and " - alice [" in access[-1] and f"session={dep.sid} " in access[-1]


def test_a_name_without_a_session_is_logged_as_given(dep: Deployment) -> None:
    r = dep.ssh("alice", "true")
    assert r.returncode == 255 and "log in as <user>@<session-id>" in r.stderr
    out = _logged(dep, "SSH: refused alice from 127.0.0.1:")
    assert "SSH: refused alice from 127.0.0.1:" in out and "SSH: refused ? " not in out


def test_remote_forwarding_is_refused_and_logged(dep: Deployment) -> None:
    r = subprocess.run(["ssh", *dep.ssh_opts(), "-p", str(dep.port), "-R",
                        "40999:127.0.0.1:1", f"alice@{dep.sid}@127.0.0.1", "echo still-on"],
                       capture_output=True, text=True, timeout=20, stdin=subprocess.DEVNULL)
    assert r.returncode == 0 and r.stdout == "still-on\n", r.stderr
    assert "remote port forwarding failed for listen port 40999" in r.stderr
    text = "SSH: refused remote port forwarding (-R) of localhost:40999 for alice@"
    assert text in _logged(dep, text)


def test_ssh_turned_off_closes_open_connections_and_on_lets_users_in(
        dep: Deployment) -> None:
    def turn_off() -> None:
        status, body, _ = dep.gw.request(f"/api/sessions/{dep.sid}", method="PATCH",
                                         body={"ssh_enabled": False})
        assert status == 200 and json.loads(body)["ssh_enabled"] is False, body

    logged = len(dep.gw.output())  # earlier tests closed connections of alice@<sid> too
    try:
        err = _cut_off(dep, turn_off)
        assert f"access ended: SSH was turned off for session {dep.sid}" in err, err
        r = dep.ssh(f"alice@{dep.sid}", "true")
        assert f"SSH is not enabled for session {dep.sid}" in r.stderr
    finally:
        status, body, _ = dep.gw.request(f"/api/sessions/{dep.sid}", method="PATCH",
                                         body={"ssh_enabled": True})
        assert status == 200, body
    assert dep.ssh(f"alice@{dep.sid}", "echo back").stdout == "back\n"
    # (the access line goes out with its batch: wait for it, not only the log line)
    out = _logged(dep, f"SSH: closing the connection of alice@{dep.sid} from 127.0.0.1:",
                  f'reason="access ended: SSH was turned off for session {dep.sid}',
                  since=logged)
    assert f"SSH: closing the connection of alice@{dep.sid} from 127.0.0.1:" in out
    assert f"admin API: session {dep.sid} changed (ssh_enabled=false) by 127.0.0.1" in out
    access = [x for x in out.splitlines() if "studios_gateway.access" in x
              and "access ended: SSH was turned off" in x]
    assert access, out[-3000:]


def test_taken_off_the_allow_list_closes_open_connections(dep: Deployment,
                                                          tmp_path: Path) -> None:
    bob = tmp_path / "bob_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(bob)],
                   check=True)
    status, body, _ = dep.gw.request("/api/users/bob/keys", method="PUT",
                                     body={"keys": [bob.with_suffix(".pub").read_text()]})
    assert status == 200, body

    def allow(users: list[str]) -> None:
        status, body, _ = dep.gw.request(f"/api/sessions/{dep.sid}", method="PATCH",
                                         body={"allowed_users": users})
        assert status == 200, body

    allow(["bob"])
    try:
        err = _cut_off(dep, lambda: allow([]), [*dep.ssh_opts()[:-1], str(bob)], "bob")
    finally:
        allow([])
    assert f"access ended: no longer allowed on session {dep.sid}" in err, err
    text = f'reason="access ended: no longer allowed on session {dep.sid}'
    assert text in _logged(dep, text)


def _rss(pid: int) -> int:
    """A process's resident memory, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def test_a_client_that_reads_nothing_does_not_fill_the_gateways_memory(
        dep: Deployment) -> None:
    """A client that advertises the largest window and then stops reading its socket:
    the studio's output piled up in the gateway's send buffer, 4 channels of
    `cat /dev/zero` took the gateway from 70 MB to 5 GB in 36 s. Now the channels wait
    for the socket, each holding at most its window (2 MiB)."""
    import select
    import sys
    import time

    pid = dep.gw.proc.pid
    before = _rss(pid)
    hog = subprocess.Popen([sys.executable, "-m", "tests.support.ssh_hog", str(dep.port),
                            f"alice@{dep.sid}", str(dep.key), "4"], cwd=REPO,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert hog.stdout is not None
        ready, _, _ = select.select([hog.stdout], [], [], 20)
        assert ready and hog.stdout.readline() == "reading stopped\n", hog.stdout.read()
        # Four seconds of it: without the fix well over a GB by then.
        end = time.monotonic() + 4
        while time.monotonic() < end:
            grown = _rss(pid) - before
            assert grown < 100 * 2**20, f"the gateway grew {grown / 2**20:.0f} MiB"
            time.sleep(0.1)  # a sample every 100 ms, not a wait for an event
        # Everyone else is served meanwhile.
        r = dep.ssh(f"alice@{dep.sid}", "head -c 3000000 /dev/zero | wc -c")
        assert (r.returncode, r.stdout.strip()) == (0, "3000000"), r.stderr
    finally:
        hog.kill()
        hog.wait(5)


def test_a_client_told_goodbye_while_its_socket_was_full_gets_nothing_after_it(
        dep: Deployment) -> None:
    """The gateway disconnects a client that has stopped reading (here for a malformed
    message) while channel data waits for its socket: once the client read again, the
    held output (and more from the studio) went on after the goodbye, megabytes of it,
    and the socket closed only if the last of it happened not to fill the socket's
    buffer (Twisted closes a socket whose producer is paused only once it is
    unregistered). Now nothing comes after the goodbye and the socket closes."""
    import select
    import signal
    import sys

    from tests.support.waiting import wait_until

    hog = subprocess.Popen([sys.executable, "-m", "tests.support.ssh_hog", str(dep.port),
                            f"alice@{dep.sid}", str(dep.key), "2", "rude"], cwd=REPO,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert hog.stdout is not None
        ready, _, _ = select.select([hog.stdout], [], [], 20)
        assert ready and hog.stdout.readline() == "reading stopped\n", hog.stdout.read()
        hog.send_signal(signal.SIGUSR1)  # a malformed message: the gateway says goodbye
        wait_until(lambda: "sent a malformed or unexpected" in dep.gw.output()
                   or hog.poll() is not None, "the gateway's goodbye")
        assert hog.poll() is None, f"the client ended ({hog.returncode}): {hog.stdout.read()}"
        hog.send_signal(signal.SIGUSR2)  # the client reads again, ignoring the goodbye
        ready, _, _ = select.select([hog.stdout], [], [], 15)
        assert ready, "the socket stayed open"
        assert hog.stdout.readline() == "closed 0\n"
    finally:
        hog.kill()
        hog.wait(5)


def test_a_download_over_a_slow_link_does_not_starve_a_channel_beside_it(
        dep: Deployment) -> None:
    """One connection, a download to a client on a slow link (its socket full at the
    gateway) and a second channel beside it: whenever the socket drained, the download's
    channel was flushed first and filled it again, and the second channel's output
    waited for as long as the download went on."""
    import sys

    r = subprocess.run([sys.executable, "-m", "tests.support.ssh_slow_reader", str(dep.port),
                        f"alice@{dep.sid}", str(dep.key)], cwd=REPO, capture_output=True,
                       text=True, timeout=60)
    assert r.stdout.startswith("hello after "), (r.stdout, r.stderr[-2000:])
    assert float(r.stdout.split()[-1]) < 10, r.stdout  # (1.3 s here; never, without)


def test_ending_the_session_closes_its_connections_last(dep: Deployment) -> None:
    """Last in this module: the session is gone afterwards."""
    def end() -> None:
        status, body, _ = dep.gw.request(f"/api/sessions/{dep.sid}", method="DELETE")
        assert status == 200, body

    logged = len(dep.gw.output())  # earlier tests closed connections of alice@<sid> too
    err = _cut_off(dep, end)
    assert "access ended: the session was ended" in err, err
    closing = f"SSH: closing the connection of alice@{dep.sid} from 127.0.0.1:"
    reason = 'reason="access ended: the session was ended"'
    out = _logged(dep, closing, reason, since=logged)
    assert closing in out and reason in out, out[-3000:]
