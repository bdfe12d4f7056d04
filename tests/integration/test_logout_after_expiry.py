"""A logout after the login expired still ends that login's WebSockets, with real processes.

Expiry does not cut a WebSocket opened before it (a notebook's kernel, a VS Code window
goes on working: docs/studios.md), but a logout does, in every tab. Before, a logout
once the login had expired found no login to end: the browser had dropped the login
cookie with its expiry (and the gateway took none past it), the page said "You are
logged out", and the terminal or kernel WebSocket of the ended login stayed open in the
browser for whoever used it next. The proxy host's login cookie is now kept by the
browser for a login TTL past the login's end, and the logout's post ends that login.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.login import Gateway
from tests.support.waiting import wait_until
from tests.support.web import Browser
from tests.support.websocket import WebSocket

pytestmark = pytest.mark.slow

TTL = 3  # seconds: the login's lifetime (CONNECT_LOGIN_TTL)


@pytest.fixture(params=["subdomain", "path"])
def gateway(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Gateway]:
    g = Gateway(tmp_path, CONNECT_LOGIN_TTL=f"{TTL}s",
                TOWER_DATA_STUDIO_ENABLE_PATH_ROUTING=str(request.param == "path").lower())
    try:
        yield g
    finally:
        g.stop()


def max_age(browser: Browser, name: str) -> int:
    """The Max-Age of the last Set-Cookie of cookie `name` the browser got."""
    [raw] = [v for _, v in browser.set_cookies if v.startswith(f"{name}=")][-1:]
    return int(next(a.split("=", 1)[1] for a in raw.split("; ") if a.startswith("Max-Age=")))


def test_a_logout_after_the_login_expired_closes_its_websockets(gateway: Gateway) -> None:
    g = gateway
    created = g.studio()
    browser = Browser()
    assert browser.use_login_link(created["login_link"]).status == 200
    # A browser keeps the login cookie past the login's end (its own expiry is signed
    # inside), so that a logout then still names the login.
    assert max_age(browser, "connect_login") >= 2 * TTL - 1
    host = "localhost" if g.path_mode else f"{created['id']}.localhost"
    path = g.url(created["id"], "/ws").split(f":{g.http_port}", 1)[1]
    ws = WebSocket(g.http_port, f"{host}:{g.http_port}", path,
                   headers={"Cookie": browser._cookie_header(host, path) or ""})
    ws.send_text("before")
    assert ws.recv_text() == "before"
    # The login expires: the studio's pages are refused, the WebSocket stays (as it did).
    wait_until(lambda: browser.get(g.url(created["id"], "/api/info"), follow=False,
                                   headers={"Sec-Fetch-Mode": "cors"}).status == 401,
               "the login's end", timeout=3 * TTL)
    ws.send_text("after the end")
    assert ws.recv_text() == "after the end"
    # The person logs out (the page's button): the login's WebSocket closes.
    assert browser.log_out(f"{g.proxy}/_connect/logout").status == 200
    assert ws.close_frame(timeout=5) == (1008, "logged out")
