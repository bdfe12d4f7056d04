"""The SSH proxy with OpenSSH's own ssh, scp and sftp.

A gateway-side SSH server and a studio-side SSH server run in a child process
(``python -m tests.support.ssh_loopback``), joined by a real socket that
stands in for the tunnel stream (the studio side is handed each connection the
way the connect client hands it an ``S`` stream).
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import pty
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import termios
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.ports import free_port, wait_for_port
from tests.support.ssh_client import ssh_agent

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(120),
    pytest.mark.skipif(shutil.which("ssh") is None, reason="OpenSSH client not installed"),
]

ROOT = Path(__file__).resolve().parents[2]
ADMINS_SSH = "198.51.100.9 40000 198.51.100.10 22"


def _record(sid: str, **kw: object) -> dict[str, object]:
    data: dict[str, object] = dict(id=sid, workspace_id=None, tool="generic", owner="alice",
                                   allowed_users=["carol"], ssh_enabled=True,
                                   token_hash="sha256:unused", created_at=0.0)
    data.update(kw)
    return data


@dataclass
class Gateway:
    port: int
    dir: Path
    work: Path
    proc: subprocess.Popen[str]
    log: Path

    def ssh_base(self, key: str = "alice_key") -> list[str]:
        return ["-F", "/dev/null", "-o", f"UserKnownHostsFile={self.dir / 'known_hosts'}",
                "-o", "StrictHostKeyChecking=accept-new", "-o", "IdentitiesOnly=yes",
                "-o", "BatchMode=yes", "-i", str(self.dir / key)]

    def ssh(self, login: str, *args: str, key: str = "alice_key") -> list[str]:
        return ["ssh", *self.ssh_base(key), "-p", str(self.port), *args,
                f"{login}@127.0.0.1"]

    def run(self, login: str, command: str, *opts: str, key: str = "alice_key",
            timeout: float = 20) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*self.ssh(login, *opts, key=key), command], capture_output=True,
                              text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def _start(base: Path, name: str, *extra: str) -> Gateway:
    d = base / name
    (d / "store" / "ssh").mkdir(parents=True)
    work = d / "work"
    work.mkdir()
    for key in ("alice_key", "bob_key", "carol_key"):
        if not (base / key).exists():
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", key,
                            "-f", str(base / key)], check=True)
        shutil.copy(base / key, d / key)
        os.chmod(d / key, 0o600)
    users = {u: [(base / f"{u}_key.pub").read_text().strip()] for u in ("alice", "carol")}
    (d / "store" / "ssh" / "user_keys.json").write_text(json.dumps({"users": users}))
    sessions = [_record("abcd"), _record("nossh", ssh_enabled=False),
                _record("bobs", owner="bob", allowed_users=[]), _record("gone")]
    (d / "sessions.json").write_text(json.dumps(sessions))
    log = d / "gateway.log"
    home = d / "home"
    home.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.support.ssh_loopback", "--storage-root",
         str(d / "store"), "--sessions", str(d / "sessions.json"), "--cwd", str(work),
         "--offline", "gone", *extra],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=log.open("w"), text=True,
        # As if the connect client had been started from an administrator's ssh: that
        # connection is none of the users' (test_ssh_connection_is_the_users).
        # Likewise the state of the shell that started it (test_no_shell_state_...).
        env={**os.environ, "SSH_CONNECTION": ADMINS_SSH, "SSH_CLIENT": "198.51.100.9 4 22",
             "SHLVL": "1", "OLDPWD": "/nowhere",
             # A home of the studio's own: a command's bash reads ~/.bashrc (as under sshd),
             # and the runner's (pyenv init, ...) is none of these tests' business.
             "HOME": str(home)})
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 30)
    if not ready:
        proc.kill()
        pytest.fail(f"gateway did not start within 30s: {log.read_text()}")
    line = proc.stdout.readline()
    assert line.startswith("ready "), f"gateway did not start: {log.read_text()}"
    return Gateway(int(line.split()[1]), d, work, proc, log)


def _stop(gw: Gateway) -> None:
    gw.proc.send_signal(signal.SIGTERM)
    try:
        gw.proc.wait(10)
    except subprocess.TimeoutExpired:
        gw.proc.kill()
        gw.proc.wait()


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ssh")


@pytest.fixture(scope="module")
def gw(base: Path) -> Iterator[Gateway]:
    g = _start(base, "main")
    yield g
    _stop(g)
    text = g.log.read_text()
    assert "Traceback" not in text and "#error]" not in text and "#critical]" not in text, text


@pytest.fixture(scope="module")
def tight(base: Path) -> Iterator[Gateway]:
    g = _start(base, "tight", "--max-connections", "2", "--max-channels", "2",
               "--handshake-timeout", "1.5")
    yield g
    _stop(g)


# Sessions ---------------------------------------------------------------------------------


def test_exec_output_and_exit_status(gw: Gateway) -> None:
    r = gw.run("alice@abcd", "echo hello; echo oops >&2; pwd; exit 3")
    assert r.returncode == 3, r.stderr
    assert r.stdout == f"hello\n{gw.work}\n"
    assert "oops" in r.stderr


@pytest.mark.parametrize("cipher", ["aes128-gcm@openssh.com", "aes256-gcm@openssh.com"])
def test_openssh_asking_for_aes_gcm(gw: Gateway, cipher: str) -> None:
    # Our own GCM framing against OpenSSH's, on the user's hop (the gateway -> studio
    # hop uses it in every test); 300 KB of output crosses several packets.
    r = gw.run("alice@abcd", "head -c 300000 /dev/zero | tr '\\0' x; echo; echo done",
               "-c", cipher)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "x" * 300000 + "\ndone\n"


@pytest.mark.parametrize("cipher", ["aes128-ctr", "aes128-gcm@openssh.com"])
def test_rekeying_mid_stream(gw: Gateway, cipher: str) -> None:
    # OpenSSH re-keys every 256 KiB here: new keys while data flows both ways.
    r = subprocess.run([*gw.ssh("alice@abcd", "-v", "-c", cipher, "-o", "RekeyLimit=256K"),
                        "wc -c; head -c 2000000 /dev/zero | tr '\\0' y | wc -c"],
                       input="z" * 1_500_000, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["1500000", "2000000"]
    assert r.stderr.count("SSH2_MSG_NEWKEYS received") > 3  # the first and re-keys


def test_a_command_leads_a_session_of_its_own(gw: Gateway) -> None:
    """As sshd starts it (setsid): a command without a pty ran in the connect client's
    process group, so its `kill 0` stopped the connect client and the tool."""
    r = gw.run("alice@abcd", "echo $$; ps -o sid= -o pgid= -p $$; :")
    assert r.returncode == 0, r.stderr
    pid, sid, pgid = r.stdout.split()
    assert sid == pgid == pid, r.stdout
    # (Only once that holds: before, this stopped the test's own process group.)
    r = gw.run("alice@abcd", "kill 0")  # the shell itself ends, by SIGTERM
    assert r.returncode == 255 and "disconnect" not in r.stderr, r.stderr
    assert gw.run("alice@abcd", "exit 3").returncode == 3


def _in_session(sid: int) -> list[str]:
    """The processes of a session (of a command's setsid), but zombies."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid and fields[0] != "Z":
            found.append(stat.parent.name)
    return found


def test_a_pipeline_ends_with_its_channel(gw: Gateway) -> None:
    """ssh killed (Ctrl-C) during `cat /dev/zero | tr ...`: the channel's close hung up
    the shell only, and the pipeline, blocked on the output nobody read any more, stayed
    in the studio for good, with its pipes in the connect client. As with sshd, the
    pipes now close with the channel: what writes to them ends."""
    proc = subprocess.Popen([*gw.ssh("alice@abcd"), "echo $$; cat /dev/zero | tr '\\0' y"],
                            stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    sid = int(proc.stdout.readline())
    proc.stdout.read(1 << 20)
    assert len(_in_session(sid)) >= 2  # the shell, cat and tr: under way
    proc.kill()
    proc.wait(5)
    proc.stdout.close()
    deadline = time.monotonic() + 10
    while _in_session(sid):
        assert time.monotonic() < deadline, f"still running: {_in_session(sid)}"
        time.sleep(0.05)  # polling for the processes' end


def test_no_shell_state_of_the_connect_clients_reaches_a_session(gw: Gateway) -> None:
    """A session's bash is a first one, as under sshd: with the SHLVL of the shell that
    started studios-connect (1) it was a nested one, and then Debian's bash, which reads
    ~/.bashrc for a command run by ssh (SSH_CLIENT set), did not."""
    r = gw.run("alice@abcd", 'echo "$SHLVL ${OLDPWD-unset} $PWD"')
    assert r.stdout.split() == ["1", "unset", str(gw.work)], r.stdout


def test_ssh_connection_is_the_users(gw: Gateway) -> None:
    # As sshd sets them: the user's address and port, the address and port they
    # connected to (the gateway's); SSH_TTY only with a pty. They were not set at all.
    r = gw.run("alice@abcd", 'echo "$SSH_CONNECTION|$SSH_CLIENT|${SSH_TTY-none}"')
    assert r.returncode == 0, r.stderr
    connection, client, tty = r.stdout.strip().split("|")
    host, port, server, server_port = connection.split()
    assert (host, server, server_port) == ("127.0.0.1", "127.0.0.1", str(gw.port)), r.stdout
    assert client == f"127.0.0.1 {port} {gw.port}" and tty == "none", r.stdout
    assert ADMINS_SSH not in r.stdout
    r = gw.run("alice@abcd", 'echo "$SSH_TTY $(tty) ${SSH_CONNECTION##* }"', "-tt")
    assert r.returncode == 0, r.stderr
    ssh_tty, real_tty, server_port = r.stdout.split()
    assert ssh_tty == real_tty and real_tty.startswith("/dev/pts/"), r.stdout
    assert server_port == str(gw.port), r.stdout


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def _read_bytes(fd: int, n: int, deadline: float) -> None:
    while n > 0:
        assert select.select([fd], [], [], deadline - time.monotonic())[0], "no output"
        chunk = os.read(fd, min(n, 1 << 20))
        assert chunk, "the output ended"
        n -= len(chunk)


def test_output_nobody_reads_waits_in_the_command_not_in_the_studio(gw: Gateway) -> None:
    """The studio reads a command's output in pieces of up to 256 KiB (it read 8 KiB,
    each an SSH packet); a reader that stops still stops the command, and what waits
    meanwhile is bounded by the channels' windows, not by how much it writes."""
    r, w = os.pipe()
    proc = subprocess.Popen([*gw.ssh("alice@abcd"), "cat /dev/zero"], stdout=w,
                            stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(w)
    try:
        deadline = time.monotonic() + 20
        _read_bytes(r, 8 << 20, deadline)  # it flows; from now on nobody reads
        before = _rss(gw.proc.pid)
        end = time.monotonic() + 3
        while time.monotonic() < end:
            grown = _rss(gw.proc.pid) - before
            assert grown < 32 << 20, f"gateway and studio grew {grown / 2**20:.0f} MiB"
            time.sleep(0.1)  # a sample every 100 ms, not a wait for an event
        _read_bytes(r, 64 << 20, time.monotonic() + 20)  # and it goes on when read
    finally:
        proc.kill()
        proc.wait(5)
        os.close(r)


def test_input_read_late_still_ends(gw: Gateway) -> None:
    """A command that reads its input only after more than a pipe's worth has come (the
    sleep stands for a slow start: conda, a module load) got all of it but never its
    end: `wc -c` waited for ever."""
    r = subprocess.run([*gw.ssh("alice@abcd"), "sleep 0.5; wc -c"], input=b"z" * 300_000,
                       capture_output=True, timeout=20)
    assert (r.returncode, r.stdout.strip()) == (0, b"300000"), r.stderr


def test_allow_listed_user(gw: Gateway) -> None:
    r = gw.run("carol@abcd", "echo $USER-ok", key="carol_key")
    assert r.returncode == 0 and r.stdout.strip().endswith("-ok"), r.stderr


def _read_until(fd: int, needle: bytes, deadline: float) -> bytes:
    out = b""
    while needle not in out:
        left = deadline - time.monotonic()
        assert left > 0, f"timed out waiting for {needle!r}; got {out!r}"
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
    return out


def test_pty_and_window_size(gw: Gateway) -> None:
    master, slave = pty.openpty()
    termios_size = struct.pack("4H", 40, 100, 0, 0)
    import fcntl

    fcntl.ioctl(slave, termios.TIOCSWINSZ, termios_size)
    proc = subprocess.Popen(
        # The trap before the first line: the test resizes once it has read them.
        [*gw.ssh("alice@abcd", "-tt"), "trap 'stty size; exit 4' WINCH; tty; stty size; "
         "echo $TERM; while :; do sleep 0.1; done"],
        stdin=slave, stdout=slave, stderr=slave, start_new_session=True,
        env={**os.environ, "TERM": "xterm-256color"})
    os.close(slave)
    try:
        deadline = time.monotonic() + 20
        out = _read_until(master, b"xterm-256color", deadline)
        assert b"/dev/pts/" in out and b"40 100" in out, out
        fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("4H", 50, 132, 0, 0))
        proc.send_signal(signal.SIGWINCH)
        # ssh sends window-change; the studio's pty takes the size, and its SIGWINCH
        # has the shell print it (the event, whenever ssh gets to it)
        out = _read_until(master, b"50 132", deadline)
        assert proc.wait(10) == 4
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)


def test_agent_forwarding(gw: Gateway, tmp_path: Path) -> None:
    sock = tmp_path / "agent.sock"
    agent = ssh_agent(sock)
    try:
        env = {**os.environ, "SSH_AUTH_SOCK": str(sock)}
        subprocess.run(["ssh-add", "-q", str(gw.dir / "alice_key")], env=env, check=True,
                       capture_output=True)
        r = subprocess.run([*gw.ssh("alice@abcd", "-A"), "echo $SSH_AUTH_SOCK; ssh-add -l"],
                           env=env, capture_output=True, text=True, timeout=20)
        assert r.returncode == 0, r.stderr
        assert "alice_key" in r.stdout and "ED25519" in r.stdout
        # without -A there is no agent in the studio
        r = subprocess.run([*gw.ssh("alice@abcd"), "ssh-add -l"], env=env,
                           capture_output=True, text=True, timeout=20)
        assert r.returncode != 0 and "alice_key" not in r.stdout
    finally:
        agent.terminate()
        agent.wait(5)


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def http_server(tmp_path: Path) -> Iterator[int]:
    (tmp_path / "index.html").write_text("the tool says hi\n")

    def handler(*a: object) -> _Quiet:
        return _Quiet(*a, directory=str(tmp_path))  # type: ignore[arg-type]

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv.server_address[1]
    srv.shutdown()
    srv.server_close()


def test_local_forwarding(gw: Gateway, http_server: int) -> None:
    lport = free_port()
    proc = subprocess.Popen(gw.ssh("alice@abcd", "-N", "-L", f"{lport}:127.0.0.1:{http_server}"),
                            stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_port(lport, proc=proc)
        for _ in range(3):
            with urllib.request.urlopen(f"http://127.0.0.1:{lport}/index.html", timeout=10) as r:
                assert r.read() == b"the tool says hi\n"
    finally:
        proc.terminate()
        proc.wait(5)


def _sha(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def test_scp_256mib_up_and_down(gw: Gateway, tmp_path: Path) -> None:
    src = tmp_path / "big.bin"
    size = 256 * 1024 * 1024
    with src.open("wb") as f:
        for _ in range(size // (4 << 20)):
            f.write(os.urandom(4 << 20))
    scp = ["scp", *gw.ssh_base(), "-P", str(gw.port)]
    t0 = time.monotonic()
    r = subprocess.run([*scp, str(src), "alice@abcd@127.0.0.1:big.bin"], capture_output=True,
                       text=True, timeout=60)
    up = time.monotonic() - t0
    assert r.returncode == 0, r.stderr
    assert _sha(gw.work / "big.bin") == _sha(src)
    back = tmp_path / "back.bin"
    t0 = time.monotonic()
    r = subprocess.run([*scp, "alice@abcd@127.0.0.1:big.bin", str(back)], capture_output=True,
                       text=True, timeout=60)
    down = time.monotonic() - t0
    assert r.returncode == 0, r.stderr
    assert _sha(back) == _sha(src)
    print(f"\nscp 256 MiB through the proxy: up {size / up / 1e6:.0f} MB/s, "
          f"down {size / down / 1e6:.0f} MB/s")
    (gw.work / "big.bin").unlink()


def test_sftp_batch(gw: Gateway, tmp_path: Path) -> None:
    (gw.work / "notes.txt").write_text("remember the milk\n")
    batch = tmp_path / "batch"
    batch.write_text(f"ls -l\nget notes.txt {tmp_path / 'got.txt'}\nmkdir sub\nls\n")
    r = subprocess.run(["sftp", *gw.ssh_base(), "-P", str(gw.port), "-b", str(batch),
                        "alice@abcd@127.0.0.1"], capture_output=True, text=True, timeout=20)
    assert r.returncode == 0, r.stderr
    assert "notes.txt" in r.stdout and "sub" in r.stdout
    assert (tmp_path / "got.txt").read_text() == "remember the milk\n"
    assert (gw.work / "sub").is_dir()


def test_scp_and_sftp_with_names_beyond_ascii(gw: Gateway, tmp_path: Path) -> None:
    """A scientist's tree (spaces, accents) up and back with scp -r, then sftp's mkdir,
    ln -s and ls -l: scp said "stat remote: Failure" and sftp "Unknown status"."""
    tree = tmp_path / "run 7"
    (tree / "ünï çødé").mkdir(parents=True)
    (tree / "a file.txt").write_text("a\n")
    (tree / "ünï çødé" / "naïve résumé.txt").write_text("b\n")
    scp = ["scp", *gw.ssh_base(), "-P", str(gw.port)]
    r = subprocess.run([*scp, "-r", str(tree), "alice@abcd@127.0.0.1:"], capture_output=True,
                       text=True, timeout=20)
    assert r.returncode == 0, r.stderr
    assert (gw.work / "run 7" / "ünï çødé" / "naïve résumé.txt").read_text() == "b\n"
    r = subprocess.run([*scp, "-r", "alice@abcd@127.0.0.1:run 7", str(tmp_path / "back")],
                       capture_output=True, text=True, timeout=20)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "back" / "ünï çødé" / "naïve résumé.txt").read_text() == "b\n"
    batch = tmp_path / "batch"
    batch.write_text('mkdir "données"\nln -s "run 7/a file.txt" latest\nls -l\n', "utf-8")
    r = subprocess.run(["sftp", *gw.ssh_base(), "-P", str(gw.port), "-b", str(batch),
                        "alice@abcd@127.0.0.1"], capture_output=True, text=True, timeout=20)
    assert r.returncode == 0, r.stderr
    assert os.readlink(gw.work / "latest") == "run 7/a file.txt"
    assert not (gw.work / "données").stat().st_mode & 0o002  # not world-writable
    user = subprocess.run(["id", "-un"], capture_output=True, text=True).stdout.strip()
    assert f" {user} " in r.stdout and "données" in r.stdout, r.stdout


def test_sftp_df_hard_link_and_rename_onto_a_file(gw: Gateway, tmp_path: Path) -> None:
    """`df` and `ln` said "Server does not support ... extension"."""
    (gw.work / "draft.txt").write_text("draft\n")
    (gw.work / "final.txt").write_text("final\n")
    batch = tmp_path / "batch"
    batch.write_text("df -h\nln final.txt kept.txt\nrename draft.txt final.txt\n")
    r = subprocess.run(["sftp", *gw.ssh_base(), "-P", str(gw.port), "-b", str(batch),
                        "alice@abcd@127.0.0.1"], capture_output=True, text=True, timeout=20)
    assert r.returncode == 0, r.stderr
    assert "Avail" in r.stdout and "does not support" not in r.stderr, r.stdout
    assert (gw.work / "kept.txt").read_text() == "final\n"
    assert (gw.work / "final.txt").read_text() == "draft\n"


def test_sftp_cp_copies_in_the_studio(gw: Gateway, tmp_path: Path) -> None:
    """sftp's `cp` (copy-data): it said "Server does not support copy-data extension".
    A new file gets the source's mode; 24 MiB is several of the studio's steps."""
    src = gw.work / "results.bin"
    src.write_bytes(os.urandom(24 << 20) + b"end")
    src.chmod(0o640)
    (gw.work / "old.txt").write_bytes(b"x" * (30 << 20))
    batch = tmp_path / "batch"
    batch.write_text("cp results.bin copy.bin\ncp results.bin old.txt\n")
    r = subprocess.run(["sftp", *gw.ssh_base(), "-P", str(gw.port), "-b", str(batch),
                        "alice@abcd@127.0.0.1"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and "does not support" not in r.stderr, r.stderr
    for name in ("copy.bin", "old.txt"):  # a new file, and one that was there (longer)
        assert _sha(gw.work / name) == _sha(src), name
    assert (gw.work / "copy.bin").stat().st_mode & 0o777 == 0o640


# Refusals ------------------------------------------------------------------------------------


def test_refusals_each_with_its_message(gw: Gateway) -> None:
    live = subprocess.Popen([*gw.ssh("alice@abcd"), "cat"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert live.stdin and live.stdout
        live.stdin.write("before\n")
        live.stdin.flush()
        assert live.stdout.readline() == "before\n"
        cases = [
            ("alice@abcd", "bob_key", "Permission denied (publickey)"),
            ("alice@nope", "alice_key", "there is no session nope"),
            ("alice@bobs", "alice_key", "alice is not allowed on session bobs"),
            ("alice@nossh", "alice_key", "SSH is not enabled for session nossh"),
            # (made long ago, never connected: said so, with the next step)
            ("alice@gone", "alice_key", "the studio of session gone has not connected in "),
            ("alice", "alice_key", "log in as <user>@<session-id>"),
        ]
        for login, key, message in cases:
            r = gw.run(login, "echo should-not-run", key=key)
            assert r.returncode == 255, (login, r.stdout, r.stderr)
            assert message in r.stderr, (login, r.stderr)
            assert "should-not-run" not in r.stdout
        live.stdin.write("after\n")
        live.stdin.flush()
        assert live.stdout.readline() == "after\n"
    finally:
        live.terminate()
        live.wait(5)


def test_health_check_not_an_error(gw: Gateway) -> None:
    for _ in range(3):
        socket.create_connection(("127.0.0.1", gw.port), timeout=5).close()
    r = gw.run("alice@abcd", "echo still-fine")
    assert r.stdout == "still-fine\n"
    assert "Traceback" not in gw.log.read_text()


# Limits ----------------------------------------------------------------------------------------


def test_connection_limit(tight: Gateway) -> None:
    holders = [subprocess.Popen([*tight.ssh("alice@abcd"), "echo up; cat"],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
               for _ in range(2)]
    try:
        for h in holders:
            assert h.stdout and h.stdout.readline() == "up\n"
        r = tight.run("alice@abcd", "echo third")
        assert r.returncode == 255
        assert "too many SSH connections" in r.stderr
    finally:
        for h in holders:
            h.terminate()
            h.wait(5)
    deadline = time.monotonic() + 10
    while True:  # the slots come back as the holders' connections close
        r = tight.run("alice@abcd", "echo again")
        if r.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert r.stdout == "again\n", r.stderr


def test_channel_limit(tight: Gateway) -> None:
    held: list[socket.socket] = []
    srv = socket.create_server(("127.0.0.1", 0))
    lport = free_port()
    proc = subprocess.Popen(
        tight.ssh("alice@abcd", "-N", "-L", f"{lport}:127.0.0.1:{srv.getsockname()[1]}"),
        stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_port(lport, proc=proc)  # this probe opens (and closes) one channel
        srv.settimeout(10)
        srv.accept()[0].close()
        srv.settimeout(0.5)
        # The probe's channel closes through gateway and tunnel asynchronously; until
        # it has, a new one may be refused. Retry (with a deadline) until two are held.
        deadline = time.monotonic() + 10
        while len(held) < 4:
            client = socket.create_connection(("127.0.0.1", lport), timeout=5)
            try:
                held += [client, srv.accept()[0]]
            except TimeoutError:
                client.close()
                assert time.monotonic() < deadline, "the probe's channel was never released"
        third = socket.create_connection(("127.0.0.1", lport), timeout=5)
        third.settimeout(10)
        assert third.recv(1) == b""  # ssh closes it: the gateway refused the channel
        third.close()
    finally:
        for s in held:
            s.close()
        srv.close()
        proc.terminate()
        _, err = proc.communicate(timeout=5)
    assert "resource shortage" in err and "too many channels" in err, err


def test_handshake_timeout(tight: Gateway) -> None:
    s = socket.create_connection(("127.0.0.1", tight.port), timeout=10)
    t0 = time.monotonic()
    data = b""
    while chunk := s.recv(4096):
        data += chunk
    s.close()
    assert 1.0 < time.monotonic() - t0 < 8
    assert data.startswith(b"SSH-2.0-studios_gateway")
    assert b"login timed out" in data


# Through the real tunnel -------------------------------------------------------------------


@pytest.fixture(scope="module")
def tunneled(base: Path) -> Iterator[Gateway]:
    g = _start(base, "tunneled", "--tunnel")
    yield g
    _stop(g)
    text = g.log.read_text()
    assert "Traceback" not in text and "#critical]" not in text, text


def test_through_the_tunnel(tunneled: Gateway, tmp_path: Path) -> None:
    """The same relay over TLS + yamux streams served by a real ConnectClient."""
    r = tunneled.run("alice@abcd", "echo hello; exit 3")
    assert (r.returncode, r.stdout) == (3, "hello\n"), r.stderr
    src = tmp_path / "mid.bin"
    src.write_bytes(os.urandom(32 * 1024 * 1024))
    scp = ["scp", *tunneled.ssh_base(), "-P", str(tunneled.port)]
    subprocess.run([*scp, str(src), "alice@abcd@127.0.0.1:mid.bin"], check=True, timeout=60,
                   capture_output=True)
    subprocess.run([*scp, "alice@abcd@127.0.0.1:mid.bin", str(tmp_path / "back.bin")],
                   check=True, timeout=60, capture_output=True)
    assert _sha(tmp_path / "back.bin") == _sha(src) == _sha(tunneled.work / "mid.bin")
    r = tunneled.run("alice@gone", "true")
    assert "the studio of session gone has not connected in " in r.stderr
