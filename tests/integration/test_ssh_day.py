"""A user's day with OpenSSH through a real gateway and studio: what goes wrong on the way.

One twistd gateway (CONNECT_SSH_MAX_CONNECTIONS=1, so that a connection the gateway
keeps for nothing locks the user out where a test can see it; a short
CONNECT_SSH_CLIENT_TIMEOUT), one studio (demo tool and `studios-connect`), OpenSSH's ssh.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.ssh_client import ssh_agent
from tests.support.ssh_deployment import Deployment, openssh_marks, ssh_deployment
from tests.support.studio import CuttableRelay
from tests.support.waiting import wait_until

pytestmark = openssh_marks(timeout=90)

CLIENT_TIMEOUT = 3.0


@pytest.fixture(scope="module")
def dep(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    with ssh_deployment(tmp_path_factory.mktemp("sshday"), CONNECT_SSH_MAX_CONNECTIONS="1",
                        CONNECT_SSH_CLIENT_TIMEOUT=f"{CLIENT_TIMEOUT:g}s") as d:
        yield d


def _opts(dep: Deployment, port: int | None = None) -> list[str]:
    return [*dep.ssh_opts(), "-p", str(port or dep.port), f"alice@{dep.sid}@127.0.0.1"]


def _ssh(dep: Deployment, command: str) -> subprocess.CompletedProcess[str]:
    return dep.ssh(f"alice@{dep.sid}", command)


def _running(cmdline: str) -> bool:
    """A process of this machine runs exactly `cmdline` (the studio runs here)."""
    want = cmdline.encode().replace(b" ", b"\0") + b"\0"
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and (proc / "cmdline").read_bytes() == want:
                return True
        except OSError:
            continue
    return False


def _access_lines(dep: Deployment, needle: str) -> list[str]:
    return [x for x in dep.gw.output().splitlines()
            if "studios_gateway.access" in x and needle in x]


def test_an_idle_client_that_answers_is_kept(dep: Deployment) -> None:
    # Twice the client timeout without a byte from the user (no ServerAliveInterval):
    # OpenSSH answers the gateway's keepalive requests, so the connection stays.
    r = _ssh(dep, f"sleep {2 * CLIENT_TIMEOUT:g}; echo still-here")
    assert (r.returncode, r.stdout) == (0, "still-here\n"), (r.stderr,
                                                             dep.gw.output()[-3000:])


def test_a_client_gone_silent_is_closed_and_frees_its_place(dep: Deployment) -> None:
    """A laptop shut (or a path gone) without a FIN or RST: the gateway kept the
    connection, its slot of CONNECT_SSH_MAX_CONNECTIONS and the studio's shell, for
    ever; with one slot the user was locked out for good."""
    relay = CuttableRelay(dep.port)
    proc = subprocess.Popen(["ssh", *_opts(dep, relay.port), "echo in; exec sleep 299.5"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "in\n"
        # the user's command, in the studio ("in" comes before the exec: wait for it)
        wait_until(lambda: _running("sleep 299.5"), "the user's command running")
        assert relay.silence() == 1  # the laptop sleeps: nothing either way, no close
        r = _ssh(dep, "true")
        assert "too many SSH connections" in r.stderr, r.stderr  # the one slot is held
        reason = "nothing heard from the client for 3s (CONNECT_SSH_CLIENT_TIMEOUT)"
        wait_until(lambda: _access_lines(dep, reason), "the silent connection closed",
                   timeout=4 * CLIENT_TIMEOUT + 5)
        assert f"SSH: closing the connection of alice@{dep.sid} from 127.0.0.1:" in (
            dep.gw.output())
        wait_until(lambda: not _running("sleep 299.5"), "the studio's command ended")
        r = _ssh(dep, "echo again")
        assert (r.returncode, r.stdout) == (0, "again\n"), r.stderr
    finally:
        proc.kill()
        proc.wait(5)
        relay.close()


def _studio_ended_under_a_shell(dep: Deployment, end: Callable[[], None], again: str) -> str:
    """ssh's stderr when `end()` ends the studio's connect client under an open shell;
    then the studio is started again and ssh works again."""
    proc = subprocess.Popen(["ssh", *_opts(dep), "echo in; exec sleep 298.5"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "in\n"
        end()
        assert proc.wait(30) == 255
        assert proc.stderr is not None
        err = proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    dep.start_studio(again)  # the studio is back: ssh works again
    r = _ssh(dep, "echo back")
    assert (r.returncode, r.stdout) == (0, "back\n"), r.stderr
    return err


def test_a_studio_that_stops_or_restarts_says_so(dep: Deployment) -> None:
    """The studio's connect client stopping (a restart, the container stopped) told the
    user "the connection to the studio broke: tunnel lost: Connection to the other side
    was lost in a non-clean fashion.": Twisted's words, and not what happened."""
    assert dep.client is not None
    # SIGTERM: studios-connect says GoAway, then closes
    err = _studio_ended_under_a_shell(dep, dep.client.stop, "connect-again")
    assert ("the studio's connection went away (the studio stopped or restarted); "
            "ssh again to reconnect") in err, err
    assert "non-clean" not in err and "broke" not in err, err


def test_a_studio_killed_under_a_session_says_so_in_words(dep: Deployment) -> None:
    """studios-connect killed (no GoAway, its sockets closed by the kernel): ssh read
    "tunnel lost: Connection lost" (or Twisted's "Connection to the other side was lost
    in a non-clean fashion."), which says nothing of what happened."""
    client = dep.client
    assert client is not None

    def kill() -> None:
        client.proc.kill()  # SIGKILL: no word to the gateway
        client.proc.wait(10)

    err = _studio_ended_under_a_shell(dep, kill, "connect-after-kill")
    assert ("the connection to the studio broke: tunnel lost: the connection ended without "
            "a clean close (reset, or the other end gone)") in err, err


def test_an_agent_full_of_other_keys_is_told_how_to_pick_one(dep: Deployment,
                                                             tmp_path: Path) -> None:
    """Seven keys in the agent before the right one: ssh read only "too many bad auths"."""
    sock = tmp_path / "agent.sock"
    agent = ssh_agent(sock)
    try:
        env = {"PATH": "/usr/bin:/bin", "SSH_AUTH_SOCK": str(sock)}
        for i in range(7):
            other = tmp_path / f"other{i}"
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)],
                           check=True)
            subprocess.run(["ssh-add", "-q", str(other)], env=env, check=True,
                           capture_output=True)
        subprocess.run(["ssh-add", "-q", str(dep.key)], env=env, check=True,
                       capture_output=True)
        opts = ["-F", "/dev/null", "-o", "StrictHostKeyChecking=no",
                "-o", f"UserKnownHostsFile={dep.known_hosts}", "-o", "BatchMode=yes",
                "-p", str(dep.port), f"alice@{dep.sid}@127.0.0.1"]
        r = subprocess.run(["ssh", *opts, "echo in"], env=env, capture_output=True,
                           text=True, timeout=20, stdin=subprocess.DEVNULL)
        assert r.returncode == 255, r.stdout
        assert ("7 keys were tried and none is registered for alice; offer that one key: "
                "ssh -i <key file> -o IdentitiesOnly=yes") in r.stderr, r.stderr
        r = subprocess.run(["ssh", "-i", str(dep.key), "-o", "IdentitiesOnly=yes", *opts,
                            "echo in"], env=env, capture_output=True, text=True, timeout=20,
                           stdin=subprocess.DEVNULL)
        assert (r.returncode, r.stdout) == (0, "in\n"), r.stderr
    finally:
        agent.terminate()
        agent.wait(5)


def test_a_forwarding_to_a_port_nothing_listens_on_says_so(dep: Deployment) -> None:
    """`ssh -L` before the server in the studio is up (or to a wrong port)."""
    import socket

    from tests.support.ports import free_ports, wait_for_port

    closed, local = free_ports(2)  # (two free_port calls may give one port twice)
    proc = subprocess.Popen(["ssh", "-N", "-L", f"{local}:127.0.0.1:{closed}", *_opts(dep)],
                            stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_port(local, proc=proc)  # its probe is refused too: the first message
        with socket.create_connection(("127.0.0.1", local), timeout=10) as s:
            s.settimeout(10)
            assert s.recv(1) == b""  # ssh closes it: the studio refused the channel
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=5)
    assert (f"open failed: connect failed: cannot connect to 127.0.0.1:{closed} in the "
            "studio: connection refused (nothing listens there)") in err, err
    assert "refused by other side" not in err


def test_an_idle_forwarding_with_no_channel_open_is_kept(dep: Deployment) -> None:
    """`ssh -N -L` left alone (no ServerAliveInterval, no channel open: nothing at all
    from the client) for twice the client timeout still forwards."""
    import time
    import urllib.request

    from tests.support.ports import free_port, wait_for_port

    local = free_port()
    proc = subprocess.Popen(["ssh", "-N", "-L", f"{local}:127.0.0.1:{dep.tool_port}",
                             *_opts(dep)],
                            stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_port(local, proc=proc)
        time.sleep(2 * CLIENT_TIMEOUT)  # the span under test, not a wait for an event
        assert proc.poll() is None
        with urllib.request.urlopen(f"http://127.0.0.1:{local}/", timeout=10) as r:
            assert r.status == 200
    finally:
        proc.terminate()
        proc.wait(5)


def test_a_client_that_pauses_less_than_the_timeout_carries_on(dep: Deployment) -> None:
    """A laptop asleep for a while, as far as the gateway can tell: the ssh process
    stopped (its kernel still takes the gateway's bytes, nothing answers), then
    continued within the client timeout: its session goes on."""
    import signal
    import time

    proc = subprocess.Popen(["ssh", *_opts(dep), "cat"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def echoed(line: str) -> str:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(line)
        proc.stdin.flush()
        return proc.stdout.readline()

    try:
        assert echoed("before\n") == "before\n"
        proc.send_signal(signal.SIGSTOP)
        time.sleep(CLIENT_TIMEOUT / 2)  # the pause under test, not a wait for an event
        proc.send_signal(signal.SIGCONT)
        assert echoed("after\n") == "after\n"
    finally:
        proc.kill()
        proc.wait(5)


def test_a_browser_through_a_forwarding_gets_every_request(dep: Deployment) -> None:
    """25 requests at a time through `ssh -L` (a browser loading a page's parts): each
    local connection is a channel, which OpenSSH closes only once the studio's end has
    answered its EOF, a round trip after the local connection ended; the next request's
    channel was open by then. The slots of the default 30 (CONNECT_SSH_MAX_CONN_CHANNELS)
    went to channels the client was done with: 20 to 60 of 300 requests were refused
    ("open failed: resource shortage"; the browser reads a reset)."""
    import urllib.request
    from concurrent.futures import ThreadPoolExecutor

    from tests.support.ports import free_port, wait_for_port

    ended = len(_access_lines(dep, "kind=ssh"))
    local = free_port()
    proc = subprocess.Popen(["ssh", "-N", "-L", f"{local}:127.0.0.1:{dep.tool_port}",
                             *_opts(dep)],
                            stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def get(_: int) -> str:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{local}/", timeout=10) as r:
                r.read()
                return str(r.status)
        except OSError as e:
            return type(e).__name__

    try:
        wait_for_port(local, proc=proc)
        with ThreadPoolExecutor(25) as pool:
            answers = list(pool.map(get, range(300)))
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=5)
    # the one connection slot is free again for the next test
    wait_until(lambda: len(_access_lines(dep, "kind=ssh")) > ended, "the forwarding ended")
    assert answers == ["200"] * 300, ({a: answers.count(a) for a in set(answers)}, err)
    assert "open failed" not in err, err
