"""A real JupyterLab through gateway and tunnel, in both routing modes.

One twistd gateway, one `studios-connect` running `jupyter lab` as its child
(entry-point mode) and one login per mode; then the REST API, a kernel that
evaluates 6*7 over its WebSocket channel, and headless Chromium rendering the
launcher (the screenshot is kept in the test's tmp dir).
"""

from __future__ import annotations

import importlib.util
import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from studios_gateway.demo.run import tool_command
from tests.integration.test_tunnel_process import KEY
from tests.support.chromium import Chromium, chromium_path, png_colours
from tests.support.gateway import GatewayProcess, base_env
from tests.support.ports import free_port
from tests.support.studio import Connect
from tests.support.web import Browser
from tests.support.websocket import WebSocket

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("jupyterlab") is None
                       or importlib.util.find_spec("ipykernel") is None,
                       reason="jupyterlab and ipykernel are not installed (the test extra)"),
]


@dataclass
class Lab:
    mode: str
    tmp: Path
    http_port: int
    base: str  # the studio's URL, ending in /
    browser: Browser

    @property
    def host(self) -> str:
        return urlsplit(self.base).netloc

    @property
    def prefix(self) -> str:
        return urlsplit(self.base).path

    def url(self, path: str) -> str:
        return self.base + path

    def cookie(self, path: str = "") -> str:
        value = self.browser._cookie_header(urlsplit(self.base).hostname or "", self.prefix + path)
        assert value
        return value


@pytest.fixture(scope="module", params=["subdomain", "path"])
def lab(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
        ) -> Iterator[Lab]:
    mode = request.param
    tmp = tmp_path_factory.mktemp(f"lab-{mode}")
    env = base_env(tmp, CONNECT_MANAGEMENT_AUTH_KEY=KEY,
                   TOWER_DATA_STUDIO_ENABLE_PATH_ROUTING=str(mode == "path").lower())
    http_port = int(env["CONNECT_HTTP_PORT"])
    env["CONNECT_PROXY_URL"] = f"http://localhost:{http_port}"
    stoppers = []
    try:
        gw = GatewayProcess(tmp, env)
        stoppers.append(gw.stop)
        gw.wait_ready()
        status, body, _ = gw.request("/api/sessions", method="POST",
                                     body={"owner": "alice", "tool": "jupyterlab"})
        assert status == 201, body
        created = json.loads(body)
        sid = created["id"]
        prefix = f"/_studio/{sid}/" if mode == "path" else "/"
        tool_port = free_port()
        tool, command = tool_command(tool_port, prefix, force_builtin=False)
        assert tool == "jupyterlab"
        work = tmp / "work"
        work.mkdir()
        command += [f"--ServerApp.root_dir={work}"]
        jupyter_env = {"JUPYTER_CONFIG_DIR": str(tmp / "jupyter-config"),
                       "JUPYTER_RUNTIME_DIR": str(tmp / "jupyter-runtime"),
                       "IPYTHONDIR": str(tmp / "ipython"), "CONNECT_TOOL": "jupyterlab"}
        if mode == "path":
            jupyter_env["CONNECT_TOOL_PATH_PREFIX"] = prefix
        client = Connect(tmp, created["connect_string"], tool_port, extra_env=jupyter_env,
                         args=["--", *command], name=f"connect-{mode}")
        stoppers.append(client.stop)
        deadline = time.monotonic() + 120  # JupyterLab takes ~10 s to start on 2 cores
        while client.proc.poll() is None and time.monotonic() < deadline:
            status, body, _ = gw.request(f"/api/sessions/{sid}")
            if status == 200 and json.loads(body).get("connected"):
                break
            time.sleep(0.2)
        else:
            raise AssertionError(f"JupyterLab did not connect:\n{client.output()[-3000:]}")
        browser = Browser()
        page = browser.use_login_link(created["login_link"])
        assert page.status == 200, (page.status, page.text[:300])
        base = created["url"].rstrip("/") + "/"
        if mode == "path":
            assert urlsplit(base).path == prefix
        else:
            assert urlsplit(base).hostname == f"{sid}.localhost"
        yield Lab(mode, tmp, http_port, base, browser)
    finally:
        for stop in reversed(stoppers):
            stop()


def test_rest_api_and_a_kernel_over_its_websocket(lab: Lab) -> None:
    status = lab.browser.get(lab.url("api/status"))
    assert status.status == 200 and "started" in status.json(), status.text[:300]
    specs = lab.browser.get(lab.url("api/kernelspecs")).json()
    assert "python3" in specs["kernelspecs"]
    lab.browser.get(lab.url("lab"))  # sets Jupyter's _xsrf cookie, as a page load does
    xsrf = dict(p.strip().split("=", 1) for p in lab.cookie("api/kernels").split(";"))["_xsrf"]
    started = lab.browser.request(lab.url("api/kernels"), method="POST",
                                  body=json.dumps({"name": "python3"}).encode(),
                                  headers={"Content-Type": "application/json",
                                           "X-XSRFToken": xsrf})
    assert started.status == 201, (started.status, started.text[:300])
    kernel = started.json()["id"]
    session = uuid.uuid4().hex
    ws = WebSocket(lab.http_port, lab.host,
                   f"{lab.prefix}api/kernels/{kernel}/channels?session_id={session}",
                   {"Cookie": lab.cookie("api/kernels")}, timeout=60)
    try:
        msg_id = uuid.uuid4().hex
        ws.send_text(json.dumps({
            "header": {"msg_id": msg_id, "username": "alice", "session": session,
                       "msg_type": "execute_request", "version": "5.3"},
            "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
            "content": {"code": "6*7", "silent": False, "store_history": False,
                        "user_expressions": {}, "allow_stdin": False, "stop_on_error": True},
        }))
        deadline = time.monotonic() + 60
        while True:
            assert time.monotonic() < deadline, "no execute_result within 60s"
            msg = json.loads(ws.recv_text())
            if (msg.get("msg_type") == "execute_result"
                    and msg["parent_header"].get("msg_id") == msg_id):
                assert msg["content"]["data"]["text/plain"] == "42"
                break
    finally:
        ws.close()
    gone = lab.browser.request(lab.url(f"api/kernels/{kernel}"), method="DELETE",
                               headers={"X-XSRFToken": xsrf})
    assert gone.status == 204


@pytest.mark.skipif(chromium_path() is None, reason="chromium is not installed")
def test_chromium_renders_the_launcher(lab: Lab) -> None:
    browser = Chromium(lab.tmp)
    try:
        host = urlsplit(lab.base).hostname
        for name, (value, path) in lab.browser.cookies[host].items():
            browser.call("Network.setCookie", name=name, value=value, domain=host, path=path)
        browser.call("Page.navigate", url=lab.url("lab"))
        cards = browser.wait_for(
            "document.querySelectorAll('.jp-Launcher .jp-LauncherCard').length", timeout=90)
        assert cards >= 1
        assert "Python 3" in browser.evaluate("document.querySelector('.jp-Launcher').innerText")
        assert browser.evaluate("location.href").startswith(lab.base)
        shot = lab.tmp / f"launcher-{lab.mode}.png"
        png = browser.screenshot(shot)
    finally:
        browser.stop()
    assert len(png) > 20_000 and png_colours(png) > 50, (len(png), png_colours(png))
