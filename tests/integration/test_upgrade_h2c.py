"""Only a WebSocket upgrade reaches a studio's tool, with real processes.

A tool that answers ``Upgrade: h2c`` with 101 (hypercorn does by default, as does Go's
h2c handler) would read whatever the browser's connection sends after it as requests of
its own, past the gateway: an ``X-Connect-Sub`` of the sender's choosing (another user,
the studio's owner), requests after the login ended. The gateway passes on the WebSocket
upgrade alone; any other is dropped as a hop-by-hop field is, and the tool answers the
request as it came (a server may ignore an Upgrade, RFC 9110 section 7.8; RFC 9113
deprecates h2c's, and a client that offered it goes on with HTTP/1.1 without a 101).
"""

from __future__ import annotations

import json
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.tool_studio import ToolStudio, tool_studio

pytestmark = pytest.mark.slow

TOOL = [sys.executable, str(Path(__file__).with_name("h2c_tool.py"))]


@pytest.fixture(params=["subdomain", "path"])
def studio(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ToolStudio]:
    with tool_studio(tmp_path, "generic", request.param, "", command=TOOL) as s:
        yield s


def answer(sock: socket.socket) -> tuple[int, bytes]:
    """One response's status and body (Content-Length framed, or none for a 1xx)."""
    data = b""
    while b"\r\n\r\n" not in data:
        got = sock.recv(65536)
        assert got, f"the connection closed after {data!r}"
        data += got
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        got = sock.recv(65536)
        assert got
        body += got
    return status, body[:length]


def test_an_h2c_upgrade_is_not_passed_on(studio: ToolStudio) -> None:
    with socket.create_connection(("127.0.0.1", studio.http_port), timeout=10) as sock:
        sock.sendall(
            f"GET {studio.prefix}who HTTP/1.1\r\nHost: {studio.host}\r\n"
            f"Cookie: {studio.cookie()}\r\nConnection: Upgrade, HTTP2-Settings\r\n"
            f"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n".encode())
        status, body = answer(sock)
        if status == 101:  # what the tool then takes for the switched protocol's request
            sock.sendall(f"GET {studio.prefix}smuggled HTTP/1.1\r\nHost: {studio.host}\r\n"
                         "X-Connect-Sub: mallory\r\n\r\n".encode())
            smuggled = answer(sock)
            pytest.fail(f"the gateway spliced an h2c upgrade; the tool then saw {smuggled}")
        assert status == 200, (status, body)
        seen = json.loads(body)
    assert seen["upgrade"] is None and seen["sub"] == ["alice"], seen
