"""bench.floor: the tunnel's protocol in C (bench/yamux_floor.c) carries a connection's
bytes both ways, intact, in either role and against the real other end: the C far end
bound to a real gateway in place of studios-connect, and the real studios-connect bound
to the C near end. Its figures are only worth what these show."""

from __future__ import annotations

import os
import shutil
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench import deploy, floor
from bench.arena import Target
from bench.common import Processes
from bench.http import EchoClient
from tests.support.echo import bench_processes, echo_server

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc is not installed")]


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Processes]:
    with bench_processes(tmp_path) as p:
        yield p


@pytest.fixture
def exe(tmp_path: Path) -> Path:
    return floor.build(tmp_path)


def _through(port: int, payload: bytes) -> bytes:
    """`payload` sent to `port` while its echo is read back, all of it, counted."""
    got = bytearray()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as c:
        writer = threading.Thread(target=c.sendall, args=(payload,))
        writer.start()
        while len(got) < len(payload) and (data := c.recv(65536)):
            got += data
        writer.join()
    return bytes(got)


@pytest.mark.parametrize("c_far", [True, False], ids=["C far end", "studios-connect"])
def test_the_near_end_carries_bytes_both_ways_intact(procs: Processes, tmp_path: Path,
                                                      exe: Path, c_far: bool) -> None:
    server = echo_server()
    front = floor.start_near(procs, tmp_path, exe, server.getsockname()[1], "near", c_far)
    # Over two receive windows each way (WindowUpdates needed), on two streams one after
    # the other, and one more stream beside a third
    for size in (600 << 10, 3 << 20):
        payload = os.urandom(size)
        assert _through(front, payload) == payload
    side = threading.Thread(target=lambda: _through(front, os.urandom(1 << 20)))
    side.start()
    assert _through(front, b"x" * 100) == b"x" * 100
    side.join()
    server.close()


def test_the_far_end_serves_a_real_gateway(procs: Processes, tmp_path: Path,
                                           exe: Path) -> None:
    port, _ = deploy.start_demo_tool(procs)
    gw = deploy.start_gateway(procs, tmp_path)
    created = gw.create_session()
    floor.start_far(procs, tmp_path, exe, created["connect_string"], port, "far")
    gw.wait_connected(created["id"])
    cookie = deploy.login_cookie(gw, created["login_link"])  # its pages came through too
    client = EchoClient(Target("far", gw.http_port,
                               {"Host": gw.host(created["id"]), "Cookie": cookie}))
    try:
        for text in ("hello", "y" * 5000):
            assert client.round_trip(text) > 0  # (round_trip checks the echo is the same)
    finally:
        client.close()
