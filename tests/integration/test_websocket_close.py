"""How a browser's WebSocket through the gateway ends when the gateway ends it, with real
processes (twistd, studios-connect, the demo tool's /ws echo).

A studio whose connection breaks (studios-connect killed) used to end its WebSockets
with a bare TCP close: the browser said 1006 and nothing else. Now the gateway sends a
close frame (1011 and why) first. A transfer quota's close frame (1008) went out
whenever the quota's tick came, also in the middle of one of the tool's frames, where
the browser takes it for payload: now it goes only between frames, and mid-frame the
connection closes without one (unless the frame ends within 64 KiB and 2 seconds: then
the close frame follows it; unit tests in test_http_proxy.py). A tool that ends its
WebSocket without a close frame had the gateway's 1001 added, which JupyterLab takes as
final: that end now goes on as it came.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from tests.integration.test_traffic_process import metrics
from tests.integration.test_tunnel_process import Deployment, wait_connected
from tests.support.studio import Connect, Tool
from tests.support.waiting import wait_until
from tests.support.websocket import WebSocket

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

MiB = 1 << 20


def logged_in_studio(d: Deployment) -> tuple[dict, Connect, Tool]:
    """A session, its studio connected (the demo tool), alice logged in to it."""
    created = d.create()
    tool, client = d.studio(created)
    wait_connected(d.gw, created["id"])
    d.login(created)
    return created, client, tool


def open_ws(d: Deployment, created: dict, rcvbuf: int = 0) -> WebSocket:
    sid = created["id"]
    cookie = d.browser._cookie_header(f"{sid}.localhost", "/")
    assert cookie
    ws = WebSocket(d.http_port, f"{sid}.localhost:{d.http_port}", "/ws", {"Cookie": cookie},
                   rcvbuf=rcvbuf)
    ws.send_text("hello")
    assert ws.recv_text() == "hello"
    return ws


def test_a_killed_studio_ends_its_websockets_with_1011_and_why(tmp_path: Path) -> None:
    d = Deployment(tmp_path)
    try:
        created, client, _ = logged_in_studio(d)
        ws = open_ws(d, created)  # and idle
        client.proc.send_signal(signal.SIGKILL)
        client.proc.wait()
        assert ws.close_frame(timeout=20) == (1011, "the connection to the studio broke")
        ws.sock.close()
        wait_until(lambda: "the connection to the studio broke" in d.gw.output(),
                   "the access line saying why the WebSocket ended")
    finally:
        d.stop()


def test_a_stopped_studio_ends_its_websockets_with_1012(tmp_path: Path) -> None:
    d = Deployment(tmp_path)
    try:
        created, client, _ = logged_in_studio(d)
        ws = open_ws(d, created)
        client.stop()  # SIGTERM: studios-connect closes its tunnel
        assert ws.close_frame(timeout=20) == (1012, "the studio's connection is going away; "
                                                    "reconnect")
        ws.sock.close()
        # The access line says the same: an end on purpose, not a break.
        wait_until(lambda: "the studio's connection went away" in d.gw.output(),
                   "the access line saying the studio went away")
        assert "the connection to the studio broke" not in d.gw.output()
    finally:
        d.stop()


def test_a_tool_ending_its_websocket_is_passed_on_without_a_frame_of_the_gateways(
        tmp_path: Path) -> None:
    """The demo tool stopped (SIGTERM), the studio still connected: its WebSocket ends
    without a close frame, as a stopped jupyter-server's do. The browser gets that end as
    it came (no close frame: 1006 there, as connected directly), not the gateway's 1001
    "the tool closed the connection", which JupyterLab took as final for its kernel."""
    d = Deployment(tmp_path)
    try:
        created, _, tool = logged_in_studio(d)
        ws = open_ws(d, created)
        tool.stop()
        assert ws.close_frame(timeout=20) is None
        ws.sock.close()
        wait_until(lambda: '"GET /ws" 101' in d.gw.output(), "the WebSocket's access line")
        line = next(x for x in d.gw.output().splitlines() if '"GET /ws" 101' in x)
        assert "reason=" not in line, line  # (an end of the tool's: no reason)
        status, body, _ = d.gw.request(f"/api/sessions/{created['id']}")
        assert status == 200 and json.loads(body)["connected"], body  # (the tunnel stays)
    finally:
        d.stop()


def test_a_quota_stop_sends_1008_between_frames_and_never_inside_one(tmp_path: Path) -> None:
    d = Deployment(tmp_path, CONNECT_QUOTA_SESSION_BYTES="16MiB", CONNECT_QUOTA_WINDOW="1m")
    try:
        created, _, _ = logged_in_studio(d)
        idle = open_ws(d, created)
        # A 15 MiB message comes back as one frame to a client that reads none of it: the
        # quota is used up 1 MiB into the echo, and the frame is stuck in the middle
        # (the buffers on the way hold far less than the 14 MiB left) when the tick
        # stops both connections.
        busy = open_ws(d, created, rcvbuf=64 * 1024)
        size = 15 * MiB
        busy.send_bytes(bytes(size))

        def refused() -> bool:
            return any("quota_refusals" in k and 'kind="websocket"' in k and v >= 1
                       for k, v in metrics(d).items())

        wait_until(refused, "the quota stopping the WebSockets", timeout=30)
        code, reason = idle.close_frame(timeout=20) or (None, "")
        assert code == 1008 and reason.startswith("transfer quota reached"), (code, reason)

        # The busy one: the echo's head, its payload as sent (zeros) up to where the
        # gateway closed, and nothing else: no close frame inside the payload.
        got = bytearray()
        busy.sock.settimeout(20)
        while True:
            try:
                chunk = busy.sock.recv(1 << 20)
            except ConnectionResetError:
                break
            if not chunk:
                break
            got += chunk
        assert got[:2] == b"\x82\x7f" and int.from_bytes(got[2:10], "big") == size
        payload = bytes(got[10:])
        assert MiB // 2 < len(payload) < size, len(payload)
        assert payload.count(0) == len(payload), (
            f"bytes that are not the tool's inside its frame: {payload.rstrip(bytes(1))[-40:]!r}")
        for ws in (idle, busy):
            ws.sock.close()
    finally:
        d.stop()


