"""A JupyterLab notebook open in Chromium while its studio's tunnel is away for 20 s.

The studio (studios-connect) is frozen with SIGSTOP, as a network that drops its packets
would leave it: the gateway declares the tunnel dead after its ping timeout and closes the
kernel's WebSocket; JupyterLab asks for the kernel's model before it opens another. The
gateway answered that with its "Studio not connected" page as 502, and JupyterLab (4.x)
takes any refusal there but 503 and 424 (JupyterHub's "server not running") as the
kernel's death: "Error Starting Kernel: Kernel died unexpectedly", and the notebook
stayed without its kernel, which was alive all along. The page is a 503 now: JupyterLab
asks again 10-30 s later and reconnects to the same kernel, its variables kept.
"""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

from tests.support.chromium import Chromium
from tests.support.jupyter import DIALOGS, MARKS, jupyter_env, press, write_notebook
from tests.support.tool_studio import ToolStudio, tool_studio
from tests.support.waiting import wait_until

pytestmark = MARKS

OUTPUT = ("Array.from(document.querySelectorAll('.jp-OutputArea-output'))"
          ".map(e => e.innerText).join('|')")
AWAY = re.compile(r'"GET \S*/api/kernels/[0-9a-f-]+" 50\d ')


#: The first cell's prompt: "[ ]:" before it runs, "[*]:" once queued or running.
PROMPT = "(document.querySelector('.jp-Notebook .jp-InputPrompt')?.innerText ?? '')"


def run_cell(browser: Chromium, lab: ToolStudio) -> str:
    """Its output once the kernel answers. A page just loaded may take the first keys
    for something else (before its kernel is connected, its kernel dialog's button
    focused): pressed again until the cell is queued, never once it is (a second run
    would change n), then its output awaited. (Each press that went elsewhere waited
    out 20 s for an output before: 20-40 s per test.)"""
    for _ in range(30):
        press(browser, "Enter", "Enter", 13, modifiers=8)  # Shift+Enter: run
        try:
            browser.wait_for(f"({OUTPUT}) || {PROMPT}.includes('*')", timeout=3)
        except AssertionError:
            continue
        return str(browser.wait_for(OUTPUT, timeout=60))
    lab.screenshot(browser, "no-output")
    raise AssertionError("the cell never ran")


def test_a_notebook_gets_its_kernel_back_after_the_tunnel_was_away(tmp_path: Path) -> None:
    pings = {"CONNECT_TUNNEL_PING_INTERVAL": "2s", "CONNECT_TUNNEL_PING_TIMEOUT": "5s"}
    with tool_studio(tmp_path, "jupyterlab", "subdomain", "api/status",
                     extra_env=jupyter_env(tmp_path),
                     gateway_env=pings) as lab:
        write_notebook(lab.home / "n.ipynb", "n = globals().get('n', 0) + 1\nn * 42")
        browser = lab.chromium()
        pid = lab.client.proc.pid
        try:
            browser.call("Page.navigate", url=lab.url("lab/tree/n.ipynb"))
            browser.wait_for("document.querySelector('.jp-Notebook-ExecutionIndicator')"
                             "?.dataset.status === 'idle'", timeout=90)
            before = run_cell(browser, lab)

            os.kill(pid, signal.SIGSTOP)
            # The tunnel is declared dead; the page asks for its kernel and is refused.
            wait_until(lambda: AWAY.search(lab.gateway.output()) is not None,
                       "the kernel's model asked for while the studio is away", timeout=60)
            os.kill(pid, signal.SIGCONT)

            # JupyterLab asks again, finds its kernel and reconnects to it by itself (its
            # "Server Connection Error" dialog says it keeps trying; closed here): n is one
            # more on the next run, the kernel's variables kept.
            back = re.compile(r'"GET \S*/api/kernels/[0-9a-f-]+" 200 ')
            wait_until(lambda: back.search(lab.gateway.output()) is not None,
                       "the kernel's model asked for again", timeout=60)
            assert "Kernel died" not in browser.evaluate(DIALOGS)
            browser.evaluate("document.querySelectorAll('.jp-Dialog .jp-mod-reject, "
                             ".jp-Dialog .jp-mod-accept').forEach(b => b.click())")
            browser.wait_for(f"!({DIALOGS})", timeout=10)
            press(browser, "Enter", "Enter", 13, modifiers=8)  # Shift+Enter: run
            said = browser.wait_for(f"({OUTPUT}) && ({OUTPUT}) !== '{before}' ? ({OUTPUT}) "
                                    f": ({DIALOGS})", timeout=60)
            lab.screenshot(browser, "kernel-back")
            assert said == str(int(before) + 42), (before, said)
        finally:
            os.kill(pid, signal.SIGCONT)
            browser.stop()
