"""A real code-server (VS Code) through gateway and tunnel, in both routing modes, by its preset.

`studios-connect --tool vscode` with no command: the preset starts code-server
on loopback with its login off and the studio's home as the folder to open.
code-server has no base-path option; in path mode the gateway strips
``/_studio/<id>`` before it. Headless Chromium loads the workbench, which
lists the studio's home over its WebSocket (the remote file system), and no
reconnect dialog appears. CI installs code-server with scripts/install-studio-tools.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from contextlib import AbstractContextManager
from pathlib import Path

import pytest

from tests.support.chromium import chromium_path, png_colours
from tests.support.side_by_side import studio_per_mode
from tests.support.tool_studio import ToolStudio, tool_studio

CODE_SERVER_HOME = os.environ.get("CODE_SERVER_PREFIX", "/opt/code-server") + "/bin"


def code_server_path() -> str:
    return os.pathsep.join([os.environ.get("PATH", ""), CODE_SERVER_HOME])


pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("code-server", path=code_server_path()) is None,
                       reason="code-server is not installed (scripts/install-studio-tools "
                              "code-server)"),
    pytest.mark.skipif(chromium_path() is None, reason="chromium is not installed"),
]

WS_EVENTS = {"Network.webSocketCreated", "Network.webSocketFrameReceived",
             "Network.webSocketClosed"}


def code_studio(tmp: Path, mode: str) -> AbstractContextManager[ToolStudio]:
    env = {"PATH": code_server_path(), "XDG_DATA_HOME": str(tmp / "xdg-data"),
           "XDG_CONFIG_HOME": str(tmp / "xdg-config")}
    # code-server's data directory remembers a folder that is not this studio's (another
    # studio's on the same home): the studio must open its own all the same.
    (tmp / "elsewhere").mkdir()
    remembered = tmp / "xdg-data" / "code-server"
    remembered.mkdir(parents=True)
    (remembered / "coder.json").write_text(
        json.dumps({"query": {"folder": str(tmp / "elsewhere")}}))
    return tool_studio(tmp, "vscode", mode, "healthz", extra_env=env)


codes, code = studio_per_mode("code", code_studio)


def test_the_preset_started_code_server_on_loopback_with_its_login_off(code: ToolStudio
                                                                        ) -> None:
    out = code.client.output()
    assert "vscode preset: starting `" in out, out[-3000:]
    assert "--auth=none" in out and "--bind-addr=127.0.0.1:" in out
    assert "code-server (VS Code) is ready" in out
    health = code.browser.get(code.url("healthz"))
    assert health.status == 200 and "status" in health.json()


def test_the_studio_opens_its_home_not_the_folder_code_server_last_opened(
        code: ToolStudio) -> None:
    first = code.browser.get(code.url(), follow=False)
    assert first.status == 302, (first.status, first.text[:300])
    assert first.headers["location"].endswith(f"?folder={code.home}"), first.headers


def test_the_workbench_loads_talks_over_its_websocket_and_does_not_reconnect(
        code: ToolStudio) -> None:
    (code.home / "hello-from-the-studio.txt").write_text("hello\n")
    browser = code.chromium()
    try:
        browser.keep_events = WS_EVENTS  # Chromium's own record of the page's WebSockets
        browser.call("Network.enable")
        browser.call("Page.navigate", url=code.url())
        browser.wait_for("!!document.querySelector('.monaco-workbench .part.activitybar')",
                         timeout=120)
        # The explorer lists the studio's home: read over the workbench's WebSocket.
        browser.wait_for("document.body.innerText.includes('hello-from-the-studio.txt')",
                         timeout=120)
        urls = [e["params"]["url"] for e in browser.events
                if e["method"] == "Network.webSocketCreated"]
        frames = sum(e["method"] == "Network.webSocketFrameReceived" for e in browser.events)
        assert urls and frames >= 10, (urls, frames)
        assert all(u.startswith(("ws://", "wss://")) and code.host in u for u in urls), urls
        if code.mode == "path":  # the browser keeps the prefix; the tool never saw it
            assert all(code.prefix in u for u in urls), urls
        assert browser.evaluate("location.href").startswith(code.base)
        # code-server answers its own worker's script with `Service-Worker-Allowed: /` and
        # registers it for its base: in path mode the gateway moves the header into the
        # studio's prefix, and the worker still registers, over the studio only (its
        # webviews register their own, under the studio too).
        scopes = browser.wait_for(
            "navigator.serviceWorker.getRegistrations().then(rs => rs.map(r => r.scope))"
            f".then(s => s.includes({code.base!r}) ? s : null)", timeout=60,
            await_promise=True)
        assert all(s.startswith(code.base) for s in scopes), scopes
        # An observation window, not a wait for an event: a dropped socket shows its dialog
        # within a second or two, and nothing else would announce its absence.
        time.sleep(3)
        text = browser.evaluate("document.body.innerText").lower()
        assert "reconnect" not in text and "disconnected" not in text, text[:2000]
        assert not browser.evaluate("!!document.querySelector('.monaco-dialog-box')")
        assert not any(e["method"] == "Network.webSocketClosed" for e in browser.events)
        png = code.screenshot(browser, "code-server")
    finally:
        browser.stop()
    assert len(png) > 20_000 and png_colours(png) > 50, (len(png), png_colours(png))
