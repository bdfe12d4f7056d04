"""A real gateway stopping (SIGTERM) answers the requests of connections it had accepted
but had not read a whole request from yet: a browser that connected just before a restart
got a reset or an empty answer (0-1 connection in ~1,500 of a load across `systemctl
restart`, measured with socket activation; docs/operators.md)."""

from __future__ import annotations

import signal
import socket
from pathlib import Path

import pytest

from tests.support.gateway import GatewayProcess, base_env
from tests.support.waiting import wait_until

pytestmark = pytest.mark.slow


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = fd.readlink().name
        except OSError:
            continue  # (closed since listed)
        if target.startswith("socket:["):
            inodes.add(target[len("socket:["):-1])
    return inodes


def _accepted(pid: int, client: socket.socket) -> bool:
    """The gateway process holds the server end of `client`'s connection: accepted, not
    only queued in the listening socket's backlog (/proc/net/tcp's inode of that end)."""
    local_port = client.getsockname()[1]
    server_port = client.getpeername()[1]
    mine = _socket_inodes(pid)
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, inode = fields[1], fields[2], fields[9]
        if (int(local.split(":")[1], 16) == server_port
                and int(remote.split(":")[1], 16) == local_port and inode in mine):
            return True
    return False


def _read_to_end(s: socket.socket) -> bytes:
    s.settimeout(15)
    got = b""
    while chunk := s.recv(65536):
        got += chunk
    return got


def test_connections_accepted_as_the_drain_begins_get_their_answers(tmp_path: Path) -> None:
    env = base_env(tmp_path)
    gw = GatewayProcess(tmp_path, env)
    sockets: list[socket.socket] = []
    try:
        gw.wait_healthy()
        port = int(env["CONNECT_HTTP_PORT"])
        fresh = socket.create_connection(("127.0.0.1", port))  # nothing sent yet
        partial = socket.create_connection(("127.0.0.1", port))  # part of a head sent
        sockets += [fresh, partial]
        partial.sendall(b"GET /nothing-here HTTP/1.1\r\n")
        pid = gw.proc.pid
        wait_until(lambda: _accepted(pid, fresh) and _accepted(pid, partial),
                   "the gateway accepting both connections")
        gw.proc.send_signal(signal.SIGTERM)
        wait_until(lambda: "draining:" in gw.output(), "the gateway draining")
        fresh.sendall(b"GET /nothing-here HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        partial.sendall(b"Host: 127.0.0.1\r\n\r\n")
        for s in (fresh, partial):
            answer = _read_to_end(s)  # (the connection closes after its answer)
            assert answer.startswith(b"HTTP/1.1 "), (answer, gw.output()[-2000:])
            head = answer.partition(b"\r\n\r\n")[0].lower()
            assert b"\r\nconnection: close" in head, answer  # (the close follows)
        assert gw.wait(timeout=15) == 0
    finally:
        for s in sockets:
            s.close()
        gw.stop()
