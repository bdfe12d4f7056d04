"""A JupyterLab notebook open in Chromium while its studio's tunnel is away for 20 s.

The studio (studios-connect) is frozen with SIGSTOP, as a network that drops its packets
would leave it: the gateway declares the tunnel dead after its ping timeout and closes the
kernel's WebSocket; JupyterLab asks for the kernel's model before it opens another. The
gateway answered that with its "Studio not connected" page as 502, and JupyterLab (4.x)
takes any refusal there but 503 and 424 (JupyterHub's "server not running") as the
kernel's death: "Error Starting Kernel: Kernel died unexpectedly", and the notebook
stayed without its kernel, which was alive all along. The page is a 503 now: JupyterLab
asks again 10-30 s later and reconnects to the same kernel, its variables kept.

That 10-30 s is at random: the page's Math.random is pinned to 0 once the notebook is
up (as in test_jupyterlab_gateway_restart), so the wait is 10 s.
"""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

from tests.support.jupyter import DIALOGS, MARKS, jupyter_env, run_again, run_cell, write_notebook
from tests.support.tool_studio import tool_studio
from tests.support.waiting import wait_until

pytestmark = MARKS

AWAY = re.compile(r'"GET \S*/api/kernels/[0-9a-f-]+" 50\d ')


def test_a_notebook_gets_its_kernel_back_after_the_tunnel_was_away(tmp_path: Path) -> None:
    # (the pings of test_tunnel_quality: the tunnel is found dead 3-4 s after the freeze)
    pings = {"CONNECT_TUNNEL_PING_INTERVAL": "1s", "CONNECT_TUNNEL_PING_TIMEOUT": "3s"}
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

            browser.evaluate("Math.random = () => 0")  # JupyterLab's waits: their shortest
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
            run_again(browser, lab, before, timeout=60)
        finally:
            os.kill(pid, signal.SIGCONT)
            browser.stop()
