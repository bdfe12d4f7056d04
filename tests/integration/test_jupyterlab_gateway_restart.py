"""A JupyterLab notebook open in Chromium while the gateway restarts under it.

The gateway is stopped with SIGTERM and started again on the same ports and storage
root; studios-connect binds again by itself and the login cookies still work. The
draining gateway closed the kernel's WebSocket with 1001 "going away", which JupyterLab
(4.6, its kernel and terminal connections) takes as a deliberate end: the status bar
said `Python 3 (ipykernel) | Disconnected` and it never asked for the kernel again,
while the file browser and the other polls recovered; the notebook stayed so until the
page was reloaded. The close is 1012 ("service restart") now, which JupyterLab treats
as a broken connection: it tries the WebSocket again (refused while the gateway is
down), asks for the kernel's model 10-30 s later (503 until the studio is back) and
opens the kernel's WebSocket again, to the same kernel, its variables kept.

That 10-30 s is at random: the page's Math.random is pinned to 0 once the notebook is
up (not before: JupyterLab's start uses it too), so the wait is 10 s.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from tests.support.chromium import Chromium
from tests.support.gateway import GatewayProcess
from tests.support.jupyter import MARKS, jupyter_env, run_again, run_cell, write_notebook
from tests.support.tool_studio import tool_studio
from tests.support.waiting import wait_until

pytestmark = MARKS

#: Before the page's own scripts: each WebSocket's close (its path, code and reason) is
#: kept in window.closes.
PAGE_SETUP = """
window.closes = [];
window.WebSocket = class extends window.WebSocket {
  constructor(url, protocols) {
    super(url, protocols);
    this.addEventListener('close', e => window.closes.push(
      {path: new URL(url).pathname, code: e.code, reason: e.reason}));
  }
};
"""
#: The kernel's part of the status bar: "Python 3 (ipykernel) | Idle".
KERNEL_STATUS = ("Array.from(document.querySelectorAll('.jp-StatusBar-Item'))"
                 ".map(e => e.innerText).find(t => t.includes('ipykernel')) || ''")


def closes(browser: Chromium) -> list[dict[str, object]]:
    return list(json.loads(browser.evaluate("JSON.stringify(window.closes)")))


def test_a_notebook_gets_its_kernel_back_after_the_gateway_restarted(tmp_path: Path) -> None:
    with tool_studio(tmp_path, "jupyterlab", "subdomain", "api/status",
                     extra_env=jupyter_env(tmp_path),
                     gateway_env={"CONNECT_SHUTDOWN_GRACE": "3s"}) as lab:
        write_notebook(lab.home / "n.ipynb", "n = globals().get('n', 0) + 1\nn * 42")
        browser = lab.chromium()
        restarted: GatewayProcess | None = None
        try:
            browser.call("Page.enable")  # (the script is not run without it)
            browser.call("Page.addScriptToEvaluateOnNewDocument", source=PAGE_SETUP)
            browser.call("Page.navigate", url=lab.url("lab/tree/n.ipynb"))
            browser.wait_for("document.querySelector('.jp-Notebook-ExecutionIndicator')"
                             "?.dataset.status === 'idle'", timeout=90)
            before = run_cell(browser, lab)

            earlier = len(closes(browser))  # (JupyterLab's own, while it started)
            browser.evaluate("Math.random = () => 0")  # JupyterLab's waits: their shortest
            lab.gateway.stop()  # SIGTERM: it drains, then exits
            browser.wait_for(f"window.closes.slice({earlier})"
                             ".some(c => c.path.endsWith('/channels'))", timeout=10)
            restarted = GatewayProcess(tmp_path, lab.gateway.env, name="gateway-restarted")
            restarted.wait_ready()

            # JupyterLab asks for its kernel's model again and reconnects to it by itself.
            kernel = re.compile(r'"GET \S*/api/kernels/[0-9a-f-]+" 200 ')
            try:
                wait_until(lambda: kernel.search(restarted.output()) is not None,
                           "the kernel's model asked for again", timeout=30)
            except AssertionError:
                lab.screenshot(browser, "kernel-not-back")
                raise AssertionError(f"the kernel stayed {browser.evaluate(KERNEL_STATUS)!r}; "
                                     f"WebSocket closes: {closes(browser)}") from None
            kernel_closes = [(c["code"], c["reason"]) for c in closes(browser)[earlier:]
                             if str(c["path"]).endswith("/channels")]
            assert kernel_closes[0] == (1012, "this gateway node is shutting down; reconnect")
            # (the "Server Connection Error" dialog of the polls refused meanwhile: closed)
            run_again(browser, lab, before, timeout=30)
        finally:
            browser.stop()
            if restarted is not None:
                restarted.stop()
