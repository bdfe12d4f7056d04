"""A JupyterLab notebook open in Chromium while its studio is away: its error dialog.

JupyterLab's requests are its own fetch() calls. A refused one's dialog shows the JSON
``message`` of the answer, and of a body it cannot read as JSON only the status. The
gateway's "Studio not connected" page, HTML, made the dialog say "File Load Error for
n.ipynb: Invalid response: 503 Service Unavailable" (a request of the notebook's still
loading when the studio went: its checkpoints) or "File Save Error ..." alike. The
gateway's answer to a script is its page's words in JSON now: the dialog says that the
studio is not connected and what to do.
"""

from __future__ import annotations

import json
import os
import re
import signal
from pathlib import Path

from tests.support.jupyter import DIALOGS, MARKS, jupyter_env, write_notebook
from tests.support.tool_studio import tool_studio
from tests.support.waiting import wait_until

pytestmark = MARKS

#: The notebook's error dialog: "File Save Error for n.ipynb", or "File Load Error ..."
#: when the page was still loading the notebook when the studio went.
ERROR = f"({DIALOGS}).includes('Error for n.ipynb') && ({DIALOGS})"


def test_a_notebook_s_error_dialog_says_the_studio_is_away(tmp_path: Path) -> None:
    pings = {"CONNECT_TUNNEL_PING_INTERVAL": "1s", "CONNECT_TUNNEL_PING_TIMEOUT": "3s"}
    with tool_studio(tmp_path, "jupyterlab", "subdomain", "api/status",
                     extra_env=jupyter_env(tmp_path), gateway_env=pings) as lab:
        write_notebook(lab.home / "n.ipynb", "1 + 1")
        browser = lab.chromium()
        pid = lab.client.proc.pid
        try:
            browser.call("Page.navigate", url=lab.url("lab/tree/n.ipynb"))
            browser.wait_for("document.querySelector('.jp-Notebook-ExecutionIndicator')"
                             "?.dataset.status === 'idle' && document.querySelector("
                             "'.jp-Notebook .cm-content')?.innerText === '1 + 1'", timeout=90)
            os.kill(pid, signal.SIGSTOP)  # the studio away: its tunnel found dead

            def away() -> bool:
                status, body, _ = lab.gateway.request(f"/api/sessions/{lab.session_id}")
                return status == 200 and json.loads(body)["connected"] is False

            wait_until(away, "the studio's tunnel found dead", timeout=60)
            # An edit, then the notebook's Save button (its toolbar's first; enabled once
            # the notebook has changes). A request of the page's still loading the
            # notebook when the studio went fails with the same kind of dialog.
            browser.evaluate("document.querySelector('.jp-Notebook .cm-content').focus()")
            browser.call("Input.insertText", text=" ")
            browser.wait_for("!document.querySelector('.jp-NotebookPanel-toolbar "
                             "[data-command=\"docmanager:save\"]').hasAttribute('disabled')"
                             f" || ({DIALOGS})", timeout=10)
            browser.evaluate(
                "(() => { const b = document.querySelector('.jp-NotebookPanel-toolbar "
                "[data-command=\"docmanager:save\"]');"
                " for (const t of ['mousedown', 'mouseup', 'click'])"
                "  b.dispatchEvent(new MouseEvent(t, {bubbles: true, button: 0})); })()")
            said = browser.wait_for(ERROR, timeout=30)
            lab.screenshot(browser, "notebook-away")
            # (the words depend on when the request was refused: "lost its connection to
            # the gateway moments ago", "was connected until ...", "not connected")
            assert "Invalid response" not in said, said
            assert re.search(r"The studio (lost its connection|was connected until|is not "
                             r"connected)", said), said
        finally:
            os.kill(pid, signal.SIGCONT)
            browser.stop()
