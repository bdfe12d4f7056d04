"""Silent SSH sockets cannot lock users out (real OpenSSH `ssh`, the Conch server in a
child process, as in test_ssh_openssh).

Connections that have not logged in hold no slot of CONNECT_SSH_MAX_CONNECTIONS;
they have their own cap (CONNECT_SSH_MAX_STARTUPS, here a hard 4) past which a new
socket is closed at accept, before the server's version line, and a short deadline
(CONNECT_SSH_KEX_TIMEOUT) that closes a socket that never finished its key exchange.
"""

from __future__ import annotations

import shutil
import socket
import time
from collections.abc import Iterator

import pytest

from tests.integration.test_ssh_openssh import Gateway, _start, _stop

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(120),
    pytest.mark.skipif(shutil.which("ssh") is None, reason="OpenSSH client not installed"),
]

KEX_TIMEOUT = 4.0


@pytest.fixture(scope="module")
def crowded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    g = _start(tmp_path_factory.mktemp("ssh-startups"), "crowded", "--max-connections", "2",
               "--max-startups", "4", "--kex-timeout", str(KEX_TIMEOUT))
    yield g
    _stop(g)


def silent(gw: Gateway, n: int) -> list[socket.socket]:
    return [socket.create_connection(("127.0.0.1", gw.port), timeout=10) for _ in range(n)]


def read_until_closed(s: socket.socket) -> bytes:
    data = b""
    while chunk := s.recv(4096):
        data += chunk
    return data


def test_silent_sockets_past_max_connections_do_not_keep_a_user_out(crowded: Gateway) -> None:
    socks = silent(crowded, 3)  # more than CONNECT_SSH_MAX_CONNECTIONS=2, below the cap
    try:
        r = crowded.run("alice@abcd", "echo in")
        assert r.returncode == 0 and r.stdout == "in\n", r.stderr
    finally:
        for s in socks:
            s.close()


def test_past_max_startups_a_socket_is_closed_before_the_version_line(crowded: Gateway
                                                                     ) -> None:
    socks = silent(crowded, 4)
    try:
        for s in socks:  # every one admitted: each hears the server's version line
            assert s.recv(8) == b"SSH-2.0-"
        extra = socket.create_connection(("127.0.0.1", crowded.port), timeout=10)
        assert read_until_closed(extra) == b""  # closed at accept: no version, no kex
        extra.close()
        # The silent ones are closed at the key-exchange deadline, with a reason...
        t0 = time.monotonic()
        for s in socks:
            assert b"key exchange timed out" in read_until_closed(s)
        assert time.monotonic() - t0 < KEX_TIMEOUT + 5
    finally:
        for s in socks:
            s.close()
    # ...and then a real ssh gets in.
    deadline = time.monotonic() + 10
    while True:  # the server sees the closes asynchronously: retry, bounded
        r = crowded.run("alice@abcd", "echo back")
        if r.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert r.stdout == "back\n", r.stderr
