"""A JupyterLab page left open in Chromium while its studio's session is ended.

The gateway answered the page's requests with 404 ("Studio not found"). JupyterLab's
file browser (4.x) takes a 404 on its listing for a folder gone and goes to its root,
which is the same listing: it asked again at once, as fast as the answers came back
(hundreds of requests a second from one tab, for as long as the tab stayed open, each
with a "Directory not found" dialog). The gateway now answers 410 there: the page keeps
to its polling interval, and a reload shows the gateway's page saying the studio may have
been ended.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

from tests.support.jupyter import MARKS, jupyter_env
from tests.support.tool_studio import tool_studio
from tests.support.waiting import wait_until

pytestmark = MARKS

REFUSED_LISTING = re.compile(r'"GET \S*/api/contents\S*" (404|410) ')


def test_an_open_page_of_an_ended_studio_does_not_flood_the_gateway(tmp_path: Path) -> None:
    with tool_studio(tmp_path, "jupyterlab", "subdomain", "api/status",
                     extra_env=jupyter_env(tmp_path)) as lab:
        browser = lab.chromium()
        try:
            browser.call("Page.navigate", url=lab.url("lab"))
            browser.wait_for("document.querySelectorAll('.jp-Launcher .jp-LauncherCard')"
                             ".length", timeout=90)
            sid = lab.host.split(".")[0]
            status, body, _ = lab.gateway.request(f"/api/sessions/{sid}", method="DELETE")
            assert status == 200, body
            # Its refresh button, to have the listing now rather than at its next poll (up
            # to 10 s away): a refresh runs the poll's own step and schedules the next.
            assert browser.evaluate(
                "(() => { const b = document.querySelector("
                "'.jp-FileBrowser [data-command=\"filebrowser:refresh\"]');"
                " b?.click(); return !!b; })()")

            def refused() -> int:
                return len(REFUSED_LISTING.findall(lab.gateway.output()))

            # The file browser's listing is refused, then its next one: at once with 404,
            # a polling interval (10 s) later with 410.
            wait_until(lambda: refused() >= 1, "the page's listing refused", timeout=60)
            first = time.monotonic()
            wait_until(lambda: refused() >= 2, "a second listing", timeout=60)
            apart, count = time.monotonic() - first, refused()
            assert apart > 1 and count < 10, \
                f"{count} listings refused, the second {apart:.3f}s after the first"
            assert ' 410 ' in [line for line in lab.gateway.output().splitlines()
                               if REFUSED_LISTING.search(line)][0]

            # What the person sees on reloading the tab.
            browser.call("Page.navigate", url=lab.url("lab"))
            text = browser.wait_for("document.querySelector('h1') && document.body.innerText",
                                    timeout=30)
            assert "Studio not found" in text and \
                f"There is no studio {sid}. It may have been ended" in text, text
            lab.screenshot(browser, "ended")
        finally:
            browser.stop()
