"""Per-tool routing with real processes: twistd gateway, studios-connect, a recording tool.

The tool (tests/integration/http_tool.py, served at ``/``) plays a tool that cannot
serve under a prefix, as code-server, Xpra and RStudio Server. In path mode the
gateway must strip ``/_studio/<id>`` before it and put it back on the way out; in
subdomain mode it must change nothing. The RStudio session checks the header
RStudio expects from its proxy; this is a stand-in, not a real RStudio.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.integration.test_tunnel_process import KEY, wait_connected
from tests.support.gateway import REPO, GatewayProcess, routing_env
from tests.support.ports import free_port, wait_for_port
from tests.support.side_by_side import studio_per_mode
from tests.support.studio import Connect, _stop
from tests.support.web import Browser
from tests.support.websocket import WebSocket

pytestmark = pytest.mark.slow

TOOLS = ("vscode", "rstudio")  # both stripped in path mode; RStudio also gets its root path


@dataclass
class Studio:
    sid: str
    url: str  # as the admin API gives it, ending in /
    connect: Connect
    browser: Browser  # one each: the test client keeps one cookie per name and host

    @property
    def prefix(self) -> str:
        return urlsplit(self.url).path


@dataclass
class Setup:
    mode: str
    http_port: int
    studios: dict[str, Studio]


@contextmanager
def routing_setup(tmp: Path, mode: str) -> Iterator[Setup]:
    env = routing_env(tmp, mode, CONNECT_MANAGEMENT_AUTH_KEY=KEY)
    gw = GatewayProcess(tmp, env)
    stoppers = [gw.stop]
    try:
        gw.wait_healthy()
        studios = {}
        for tool in TOOLS:
            status, body, _ = gw.request("/api/sessions", method="POST",
                                         body={"owner": "alice", "tool": tool})
            assert status == 201, body
            created = json.loads(body)
            tool_port = free_port()
            proc = subprocess.Popen(
                [sys.executable, "-m", "tests.integration.http_tool", "--port", str(tool_port)],
                cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
            stoppers.append(lambda proc=proc: _stop(proc))
            wait_for_port(tool_port, proc=proc)
            client = Connect(tmp, created["connect_string"], tool_port,
                             extra_env={"CONNECT_TOOL": tool}, name=f"connect-{tool}")
            stoppers.append(client.stop)
            wait_connected(gw, created["id"])
            browser = Browser()
            page = browser.use_login_link(created["login_link"])
            assert page.status == 200, (page.status, page.text[:300])
            studios[tool] = Studio(created["id"], created["url"], client, browser)
        yield Setup(mode, int(env["CONNECT_HTTP_PORT"]), studios)
    finally:
        for stop in reversed(stoppers):
            stop()


# (each mode's gateway, tools and clients made side by side)
setups, setup = studio_per_mode("setup", routing_setup)


@pytest.mark.parametrize("tool", TOOLS)
def test_what_the_tool_receives(setup: Setup, tool: str) -> None:
    studio = setup.studios[tool]
    info = studio.browser.get(studio.url + "api/info?x=1")
    assert info.status == 200, info.text[:300]
    got = info.json()
    assert got["path"] == "/api/info?x=1"  # stripped in path mode; as sent in subdomain mode
    root_path = got["headers"].get("x-rstudio-root-path")
    prefix_header = got["headers"].get("x-forwarded-prefix")
    if setup.mode == "path":
        assert studio.prefix == f"/_studio/{studio.sid}/"
        assert prefix_header == [f"/_studio/{studio.sid}"]
        assert root_path == ([f"/_studio/{studio.sid}"] if tool == "rstudio" else None)
    else:
        assert studio.prefix == "/" and prefix_header is None
        assert root_path == (["/"] if tool == "rstudio" else None)


@pytest.mark.parametrize("tool", TOOLS)
def test_what_the_browser_gets_back(setup: Setup, tool: str) -> None:
    studio = setup.studios[tool]
    reply = studio.browser.get(studio.url + "redirect", follow=False)
    assert reply.status == 302
    p = studio.prefix.rstrip("/")  # "" in subdomain mode: nothing is changed
    assert reply.headers["Location"] == f"{p}/elsewhere"
    assert reply.headers["Refresh"] == (f"0; url={p}/again" if p else "0; url=/again")
    assert reply.headers["Set-Cookie"] == f"t=1; Path={p}/"


@pytest.mark.parametrize("tool", TOOLS)
def test_a_websocket_reaches_the_tool_at_its_own_path(setup: Setup, tool: str) -> None:
    studio = setup.studios[tool]
    parts = urlsplit(studio.url)
    cookie = studio.browser._cookie_header(parts.hostname or "", studio.prefix + "ws")
    assert cookie
    ws = WebSocket(setup.http_port, parts.netloc, studio.prefix + "ws", {"Cookie": cookie})
    try:
        ws.send_text("over the tunnel")
        assert ws.recv_text() == "over the tunnel"
    finally:
        ws.close()


def test_the_studio_was_told_its_routing(setup: Setup) -> None:
    for studio in setup.studios.values():
        log = studio.connect.output()
        assert f"routing {setup.mode}" in log and studio.url in log, log[-2000:]


def test_the_other_modes_addresses_are_refused(setup: Setup) -> None:
    """Path mode refuses per-studio host names (with a page naming the path address);
    subdomain mode serves no /_studio/ paths."""
    studio = next(iter(setup.studios.values()))
    proxy = f"localhost:{setup.http_port}"
    if setup.mode == "path":
        other = f"http://{studio.sid}.localhost:{setup.http_port}/api/info"
    else:
        other = f"http://{proxy}/_studio/{studio.sid}/api/info"
    reply = studio.browser.get(other, follow=False)
    assert reply.status == 404, (reply.status, reply.text[:300])
    if setup.mode == "path":
        assert f"localhost/_studio/{studio.sid}/" in reply.text, reply.text[:500]
