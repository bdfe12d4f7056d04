"""A JupyterLab page left open in Chromium while the person's login ends under it.

The login expires (CONNECT_LOGIN_TTL, made short here) or is logged out in another tab;
the page's scripts keep asking. The gateway sent their GETs to the login page: in
subdomain mode that is the proxy host, which no script of the studio may read, so
JupyterLab said "Server Connection Error ... Check your network connection"; in path
mode the login's own 401 page, which JupyterLab did not mention until a save failed
with "Invalid response: 401 Unauthorized". A script's request now gets 401 itself, with
a JSON message JupyterLab shows: the login has ended, reload the page to log in again.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from tests.support.jupyter import DIALOGS, MARKS, jupyter_env, press, write_notebook
from tests.support.tool_studio import tool_studio
from tests.support.waiting import wait_until

pytestmark = MARKS

REFUSED = re.compile(r'"(GET|PUT) \S*/api/\S*" (302|401) ')


#: The logins' lifetime: long enough for the page to load (~5 s; over 10 s at a load of 8
#: on two CPUs, then tried again on a new login) on a login made just before (with
#: Chromium already up), short enough not to keep the test waiting for its end.
TTL = 12


@pytest.mark.parametrize("mode", ["subdomain", "path"])
def test_a_page_whose_login_expired_says_so(tmp_path: Path, mode: str) -> None:
    with tool_studio(tmp_path, "jupyterlab", mode, "api/status",
                     extra_env=jupyter_env(tmp_path),
                     gateway_env={"CONNECT_LOGIN_TTL": f"{TTL}s"}) as lab:
        write_notebook(lab.home / "n.ipynb", "6*7")
        sid = lab.session_id
        browser = lab.chromium()
        try:
            # (a new login: the studio's start took some of the first one's TTL)
            lab.open_within_a_login(browser, "lab/tree/n.ipynb",
                                    "!!document.querySelector('.jp-Notebook .cm-content')", TTL)

            def refused() -> int:
                return len(REFUSED.findall(lab.gateway.output()))

            # The login ends (seen here with the same cookies, on a path the page does not
            # poll: no waiting for its next poll, up to 10 s); the page's requests are
            # refused from then on.
            static = lab.url("static/favicons/favicon.ico")
            wait_until(lambda: lab.browser.get(static, follow=False).status == 302,
                       "the login's end", timeout=TTL + 30)
            first, start = refused(), time.monotonic()
            # A save (Ctrl+S) says why it failed, in the gateway's words.
            press(browser, "s", "KeyS", 83, modifiers=2)
            said = browser.wait_for(f"({DIALOGS}).includes('has ended') && ({DIALOGS})",
                                    timeout=30)
            assert refused() > first, "the page's save was not refused"
            assert f"Your login to studio {sid} has ended" in said, said
            assert "Reload the page to log in again" in said, said
            assert "Server Connection Error" not in said, said
            lab.screenshot(browser, "login-ended")
            # The page keeps to its polling intervals: no flood.
            time.sleep(10)  # a window to count requests in, not a wait for an event
            count, took = refused() - first, time.monotonic() - start
            assert count / took < 2, f"{count} requests refused in {took:.1f}s"
        finally:
            browser.stop()
