"""A real JupyterLab through gateway and tunnel, in both routing modes, started by its preset.

One twistd gateway per mode and `studios-connect --tool jupyterlab` with no
command: the preset starts `jupyter lab` itself, learning its base path from
the bind reply (the test sets no prefix and no Jupyter flag). Then the REST
API (with XSRF on), a kernel that evaluates 6*7 over its WebSocket channel,
and headless Chromium rendering the launcher (screenshot in the test's tmp dir).
"""

from __future__ import annotations

import importlib.util
import json
import re
import time
import uuid
from contextlib import AbstractContextManager
from pathlib import Path

import pytest

from studios_gateway.studio.presets.jupyterlab import ANNOUNCEMENTS
from tests.support.chromium import chromium_path, png_colours
from tests.support.side_by_side import studio_per_mode
from tests.support.tool_studio import ToolStudio, tool_studio
from tests.support.websocket import WebSocket

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("jupyterlab") is None
                       or importlib.util.find_spec("ipykernel") is None,
                       reason="jupyterlab and ipykernel are not installed (the test extra)"),
]

Lab = ToolStudio


def lab_studio(tmp: Path, mode: str) -> AbstractContextManager[Lab]:
    jupyter_env = {"JUPYTER_CONFIG_DIR": str(tmp / "jupyter-config"),
                   "JUPYTER_RUNTIME_DIR": str(tmp / "jupyter-runtime"),
                   "IPYTHONDIR": str(tmp / "ipython")}
    # JupyterLab takes ~10 s to start on 2 cores, most of it waiting on its own processes:
    # the two modes' studios start side by side.
    return tool_studio(tmp, "jupyterlab", mode, "api/status", extra_env=jupyter_env)


labs, lab = studio_per_mode("lab", lab_studio)


def test_the_preset_started_jupyterlab_under_the_routed_prefix(lab: Lab) -> None:
    out = lab.client.output()
    assert "jupyterlab preset: starting `" in out, out[-3000:]
    assert f"--ServerApp.base_url={lab.prefix}" in out
    assert f"--ServerApp.root_dir={lab.home}" in out
    assert "JupyterLab is ready" in out
    sid = lab.base.split("/_studio/")[-1].strip("/") if lab.mode == "path" \
        else lab.host.split(".")[0]
    status, body, _ = lab.gateway.request(f"/api/sessions/{sid}")
    version = json.loads(body).get("tool_version")
    assert version and version[0].isdigit(), body  # the preset found it and sent it


def test_the_news_feed_and_the_update_check_are_off(lab: Lab) -> None:
    """The server fetches neither PyPI nor the news feed on the page's behalf."""
    assert "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate" in \
        lab.client.output()
    page = lab.browser.get(lab.url("lab")).text
    found = re.search(r'id="jupyter-config-data"[^>]*>(.*?)</script>', page, re.S)
    assert found, page[:500]
    config = json.loads(found.group(1))
    assert config["news"] == {"disabled": True}, config.get("news")
    # ...and the page does not ask "Would you like to get notified about official Jupyter
    # news?" (the plugin that asks is disabled by the preset's page_config.json)
    assert ANNOUNCEMENTS in config["disabledExtensions"], config["disabledExtensions"]
    update = lab.browser.get(lab.url("lab/api/update"))
    assert update.status == 200 and update.json() == {"notification": None}, update.text[:300]


def test_jupyterlabs_log_out_leads_to_the_gateways_logout_page(lab: Lab) -> None:
    """File > Log Out opens <prefix>logout; JupyterLab, its login off, would answer "Cannot
    log out. Jupyter Server authentication is disabled." and the gateway's login go on."""
    sent = lab.browser.get(lab.url("logout"), follow=False)
    assert (sent.status, sent.headers["Location"]) == (303, "/_connect/logout"), sent.text[:300]
    page = lab.browser.get(lab.url("logout"))
    assert page.status == 200 and "Log out of the studios gateway?" in page.text, page.text[:500]
    assert lab.browser.get(lab.url("api/status")).status == 200  # only the page's button ends it


def test_rest_api_and_a_kernel_over_its_websocket(lab: Lab) -> None:
    kernel_answers_42(lab)


def kernel_answers_42(lab: Lab) -> None:
    """The REST API (with XSRF), then a kernel evaluates 6*7 over its WebSocket channel."""
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
    browser = lab.chromium()
    try:
        browser.call("Page.navigate", url=lab.url("lab"))
        cards = browser.wait_for(
            "document.querySelectorAll('.jp-Launcher .jp-LauncherCard').length", timeout=90)
        assert cards >= 1
        assert "Python 3" in browser.evaluate("document.querySelector('.jp-Launcher').innerText")
        assert browser.evaluate("location.href").startswith(lab.base)
        png = lab.screenshot(browser, "launcher")
    finally:
        browser.stop()
    assert len(png) > 20_000 and png_colours(png) > 50, (len(png), png_colours(png))
