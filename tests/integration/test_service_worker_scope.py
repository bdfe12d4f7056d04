"""A tool's service worker stays inside its studio, in headless Chromium.

In path mode every studio and the gateway's own pages (``/_connect/...``) share one
origin; a tool answering its worker script with ``Service-Worker-Allowed: /`` could
register a worker over the whole proxy host and answer for all of them. The gateway
moves the header's value into the studio's prefix: a worker with scope ``/`` is
refused, one with the studio's prefix (what code-server asks for) registers. In
subdomain mode the studio is its own origin: the header passes as it is.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.chromium import chromium_path
from tests.support.tool_studio import ToolStudio, tool_studio

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(chromium_path() is None, reason="chromium is not installed"),
]

TOOL = [sys.executable, str(Path(__file__).with_name("sw_tool.py"))]


@pytest.fixture(params=["path", "subdomain"])
def studio(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ToolStudio]:
    with tool_studio(tmp_path, "generic", request.param, "", command=TOOL) as s:
        yield s


def register(scope: str) -> str:
    """JavaScript: register the tool's worker with `scope`; the scope it got, or why not."""
    return (f"navigator.serviceWorker.register('static/sw.js', {{scope: '{scope}'}})"
            ".then(r => r.scope, e => 'refused: ' + e.name)")


def test_a_tools_service_worker_cannot_take_the_whole_host(studio: ToolStudio) -> None:
    browser = studio.chromium()
    try:
        browser.call("Page.navigate", url=studio.base)
        browser.wait_for("!!document.getElementById('ready')")
        wide = browser.evaluate(register("/"), await_promise=True)
        own = browser.evaluate(register(studio.prefix), await_promise=True)
    finally:
        browser.stop()
    origin = studio.base[: -len(studio.prefix)] + "/"
    if studio.mode == "path":
        assert wide == "refused: SecurityError", wide  # it would have had /_connect/ too
    else:
        assert wide == origin, wide  # the studio's own origin: the tool's business
    assert own == studio.base, own
