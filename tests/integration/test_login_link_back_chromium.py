"""A person in Chromium, on the keyboard: the login link's "Open studio" has the focus
(Enter opens the studio; the focus comes with autofocus, a moment after the page has
loaded: waited for), and the Back button from the studio, to the link's page,
leads to the studio again where it said "Login link not valid ... ask for a new one"
(the page is no-store: Back asks for it again, and the link was used)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.chromium import Chromium, chromium_path
from tests.support.login import Gateway

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(chromium_path() is None, reason="chromium is not installed")]


@pytest.mark.parametrize("mode", ["subdomain", "path"])
def test_back_from_the_studio_to_its_used_link_leads_to_the_studio(tmp_path: Path,
                                                                   mode: str) -> None:
    g = Gateway(tmp_path / "gw", TOWER_DATA_STUDIO_ENABLE_PATH_ROUTING=str(
        mode == "path").lower())
    browser: Chromium | None = None
    try:
        status, created = g.api("/api/sessions", "POST", {"owner": "alice"})
        assert status == 201, created
        sid = created["id"]
        browser = Chromium(tmp_path)
        browser.call("Page.navigate", url=created["login_link"])
        # (autofocus moves the focus after the page has loaded, a moment later: its event)
        browser.wait_for("document.title == 'Open studio' && "
                         f"document.activeElement.textContent == 'Open studio {sid}'",
                         timeout=30)
        assert browser.evaluate("document.activeElement.textContent") == f"Open studio {sid}"
        browser.call("Input.dispatchKeyEvent", type="keyDown", key="Enter", code="Enter",
                     windowsVirtualKeyCode=13, text="\r")
        browser.call("Input.dispatchKeyEvent", type="keyUp", key="Enter", code="Enter",
                     windowsVirtualKeyCode=13)
        browser.wait_for("document.title == 'Studio not connected'", timeout=30)
        assert browser.evaluate("location.href") == g.url(sid, "/")

        history = browser.call("Page.getNavigationHistory")
        back = history["entries"][history["currentIndex"] - 1]
        assert back["url"] == created["login_link"]
        browser.call("Page.navigateToHistoryEntry", entryId=back["id"])
        browser.wait_for("location.href.includes('/_connect/link') && "
                         "document.readyState == 'complete'", timeout=30)
        text = browser.evaluate("document.body.innerText")
        assert "still logged in as alice" in text and "new one" not in text, text
        browser.wait_for(f"document.activeElement.textContent == 'Open studio {sid}'",
                         timeout=30)  # (its link, focused by autofocus a moment later)
        browser.evaluate("document.activeElement.click()")
        browser.wait_for("document.title == 'Studio not connected'", timeout=30)
        assert browser.evaluate("location.href") == g.url(sid, "/")
    finally:
        if browser is not None:
            browser.stop()
        g.stop()
