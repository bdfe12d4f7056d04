"""A VS Code (code-server) window open in Chromium while the person's login expires.

The workbench's WebSocket outlives the login (expiry does not cut it), so the editor
goes on working; what it loads later is refused. A webview (the Markdown preview here;
extensions' pages, notebook outputs) is an iframe of the studio's own page: its page
load was sent to the login, whose pages refuse every frame, and the preview stayed blank
with Chromium's "refused to connect" picture and no words. The frame gets the gateway's
401 page now, which says that the login has ended and to reload the page.
"""

from __future__ import annotations

import re
from pathlib import Path

from tests.integration.test_code_server import code_server_path
from tests.integration.test_code_server import pytestmark as code_server_marks
from tests.support.chromium import Chromium
from tests.support.tool_studio import tool_studio
from tests.support.waiting import wait_until

pytestmark = code_server_marks

WEBVIEW = "document.querySelector('iframe[src*=\"/webview/browser/pre/index.html\"]')"
REFUSED_FRAME = re.compile(r'"GET \S*/webview/browser/pre/index.html" 401 .*'
                           r'reason="login required \(a frame\)"')
#: The logins' lifetime: long enough for the window to load (~4 s; 9 to over 10 s at a
#: load of 8 on two CPUs, then tried again on a new login) on a login made just before
#: (with Chromium already up), short enough not to keep the test waiting for its end.
TTL = 12
#: The window has started: the explorer lists README.md and the workbench has loaded its
#: extensions (its last step; the Markdown preview is one of them).
STARTED = ("document.body.innerText.includes('README.md') && "
           "performance.getEntriesByName('code/didLoadExtensions').length > 0")
#: No Welcome page: its own webviews load at the window's start (two frames of
#: pre/index.html), after README.md is listed; on a loaded machine they came after the
#: login's end, refused (the test took them for the preview's), or just before it, and the
#: page then opened over the README's editor and took the keys meant for it.
SETTINGS = '{"workbench.startupEditor": "none"}'


def key(browser: Chromium, name: str, code: str, key_code: int, modifiers: int = 0) -> None:
    """A key pressed in the workbench (modifiers: 2 Ctrl, 8 Shift)."""
    for kind in ("rawKeyDown", "keyUp"):
        browser.call("Input.dispatchKeyEvent", type=kind, key=name, code=code,
                     windowsVirtualKeyCode=key_code, modifiers=modifiers)


def click(browser: Chromium, element: str) -> None:
    """A click in the middle of `element` (JavaScript naming it), once it is there."""
    x, y = browser.wait_for(f"(() => {{ const e = {element}; if (!e) return null; "
                            "const b = e.getBoundingClientRect(); "
                            "return [b.x + b.width / 2, b.y + b.height / 2]; })()", timeout=20)
    for kind in ("mousePressed", "mouseReleased"):
        browser.call("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left",
                     clickCount=1)


def test_a_webview_opened_after_the_login_expired_says_so(tmp_path: Path) -> None:
    env = {"PATH": code_server_path(), "XDG_DATA_HOME": str(tmp_path / "xdg-data"),
           "XDG_CONFIG_HOME": str(tmp_path / "xdg-config")}
    user = tmp_path / "xdg-data" / "code-server" / "User"
    user.mkdir(parents=True)
    (user / "settings.json").write_text(SETTINGS)
    with tool_studio(tmp_path, "vscode", "subdomain", "healthz", extra_env=env,
                     gateway_env={"CONNECT_LOGIN_TTL": f"{TTL}s"}) as code:
        (code.home / "README.md").write_text("# Results\n\nThe run went well.\n")
        sid = code.session_id
        browser = code.chromium()
        try:
            # (a new login: the studio's start took some of the first one's TTL)
            code.open_within_a_login(browser, "", STARTED, TTL)
            refused_before = len(REFUSED_FRAME.findall(code.gateway.output()))
            # The login expires under the open window (a page load would now go to it).
            wait_until(lambda: code.browser.get(code.url("healthz"), follow=False).status
                       == 302, "the login expired", timeout=TTL + 30)
            # README.md clicked in the explorer, then Ctrl+Shift+V: its preview, a webview.
            click(browser, "Array.from(document.querySelectorAll('.explorer-folders-view "
                           ".monaco-list-row')).find(r => r.innerText.trim() === 'README.md')")
            click(browser, "document.querySelector('.editor-group-container "
                           ".monaco-editor .view-lines')")  # into the text: the keys go there
            key(browser, "V", "KeyV", 86, modifiers=10)
            wait_until(lambda: len(REFUSED_FRAME.findall(code.gateway.output()))
                       > refused_before, "the webview's page load refused", timeout=30)
            # The frame shows the gateway's words (before: an error page, no document).
            said = browser.wait_for(f"{WEBVIEW}?.contentDocument?.body?.innerText",
                                    timeout=15)
            code.screenshot(browser, "webview-login-ended")
            assert f"Your login to studio {sid} has ended" in said, said
            assert "Reload the page to log in again" in said, said
        finally:
            browser.stop()
