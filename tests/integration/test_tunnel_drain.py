"""Graceful drain with real processes: POST /shutdown while a studio is bound and busy."""

from __future__ import annotations

import socket
import time

import pytest

from tests.integration.test_tunnel_process import Deployment, MiB, deployment, wait_connected

pytestmark = pytest.mark.slow
__all__ = ["deployment"]  # the fixture, re-used


def wait_for_text(read, text: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while text not in read():
        assert time.monotonic() < deadline, f"{text!r} never appeared:\n{read()[-2000:]}"
        time.sleep(0.1)


def test_shutdown_finishes_the_download_in_flight_then_exits_zero(
        deployment: Deployment) -> None:
    created = deployment.create()
    _, client = deployment.studio(created)
    wait_connected(deployment.gw, created["id"])
    deployment.login(created)
    size = 128 * MiB
    host = f"{created['id']}.localhost"
    cookie = deployment.browser._cookie_header(host, "/")
    sock = socket.create_connection(("127.0.0.1", deployment.http_port), timeout=30)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 256 * 1024)
    sock.sendall(f"GET /download?size={size} HTTP/1.1\r\nHost: {host}:{deployment.http_port}"
                 f"\r\nCookie: {cookie}\r\n\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, "connection closed before the response head"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    got = len(body)
    while got < 8 * MiB:  # well under way, and held back by our slow reading
        got += len(sock.recv(1 << 20))

    status, _, _ = deployment.gw.request("/shutdown", method="POST")
    assert status in (200, 202)
    # The studio is told to move (GoAway) while the download is still running...
    wait_for_text(client.output, "GoAway")
    # ...and the download finishes intact before the gateway goes.
    while got < size:
        chunk = sock.recv(4 * MiB)
        assert chunk, f"the download was cut at {got} of {size} bytes"
        got += len(chunk)
    assert got == size
    sock.close()
    assert deployment.gw.wait(timeout=30) == 0
    assert "drained; stopping" in deployment.gw.output()
