"""A real gateway and a real studios-connect: the not-connected page says "not connected
yet" before the studio's first connect, and "was connected until" once it connected and
was stopped (the unbind, recorded by the registry; just after it, that it may come back),
a request whose tunnel is cut under it says the studio comes back by itself (also through
another node of a cluster), and in a browser the page turns into the studio by itself
once the studio connects."""

from __future__ import annotations

import json
import socket
import threading
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.integration.test_tunnel_process import Deployment, deployment, wait_connected
from tests.support.chromium import Chromium, chromium_path
from tests.support.login import Gateway, redis_nodes
from tests.support.redis_server import redis_available
from tests.support.studio import Connect, CuttableRelay, SocketTool
from tests.support.web import Browser, Reply

__all__ = ["deployment"]  # the fixture, re-used


def test_the_page_says_not_yet_then_until_when(deployment: Deployment) -> None:
    created = deployment.create()
    sid = created["id"]
    # The login lands on the studio: not connected yet.
    landed = deployment.browser.use_login_link(created["login_link"])
    assert landed.status == 503, landed.text[:300]
    before = deployment.browser.get(deployment.url(created, "/lab"))
    assert before.status == 503, before.text[:300]
    assert "has not connected yet (its session was made less than a minute ago)" \
        in before.text
    assert before.headers["Retry-After"] == "5"

    _, client = deployment.studio(created)
    wait_connected(deployment.gw, sid)
    assert deployment.browser.get(deployment.url(created, "/api/info")).status == 200
    client.stop()
    state = wait_connected(deployment.gw, sid, connected=False)
    assert state["away"]["case"] == "stopped", state
    assert state["last_connected"]["unbound_at"] >= state["last_connected"]["bound_at"]

    after = deployment.browser.get(deployment.url(created, "/lab"))
    assert after.status == 503
    assert "was connected until " in after.text
    # Just unbound: perhaps a tunnel that broke and comes back by itself, so the page
    # says both and reloads as often as while starting.
    assert "less than a minute ago): if only its connection broke, it comes back" \
        in after.text
    assert "restart it from the Studios tab of its workspace in Seqera Platform" \
        in after.text
    assert after.headers["Retry-After"] == "5"
    status, body, _ = deployment.gw.request("/api/sessions")
    assert status == 200
    [listed] = [s for s in json.loads(body)["sessions"] if s["id"] == sid]
    assert listed["away"]["case"] == "stopped"


class HoldingTool(SocketTool):
    """A tool that reads a request and does not answer (busy); `got` is set once it has
    one for ``/busy``. (Not for any request: studios-connect asks the tool's port one of
    its own at its first bind, studio.points_back, and a test that cut the tunnel then
    asked its own request after the cut, or after the studio was back: ci52a.)"""

    def __init__(self) -> None:
        self.got = threading.Event()
        super().__init__()

    def _serve(self, conn: socket.socket) -> None:
        with conn, conn.makefile("rb") as reader:
            line = reader.readline()  # a request line
            target = line.split(b" ")[1:2]
            if target and target[0].endswith(b"/busy"):
                self.got.set()
            if line:
                reader.read()  # until the stream to it ends


def test_a_tunnel_cut_under_a_request_says_it_comes_back(deployment: Deployment) -> None:
    # The studio's tunnel breaks (a network cut) while its tool works on a request: the
    # answer said the general words ("... one that was stopped has to be started
    # again"), though the studio comes back by itself.
    created = deployment.create()
    sid = created["id"]
    deployment.browser.use_login_link(created["login_link"])
    tool = HoldingTool()
    deployment.stoppers.append(tool.close)
    relay, via_relay = deployment.relay(created)
    client = Connect(deployment.tmp_path, via_relay, tool.port, name=f"connect-{sid}")
    deployment.stoppers.append(client.stop)
    wait_connected(deployment.gw, sid)

    assert_comes_back(cut_under_a_request(deployment.browser, deployment.url(created, "/busy"),
                                          tool, relay))


def cut_under_a_request(browser: Browser, url: str, tool: HoldingTool,
                        relay: CuttableRelay) -> Reply:
    """GET `url` (to `tool`); once the tool has the request, cut the studio's tunnel."""
    answers: list[Any] = []
    asking = threading.Thread(target=lambda: answers.append(browser.get(url)))
    asking.start()
    try:
        assert tool.got.wait(20)
        assert relay.cut() == 1
    finally:
        asking.join(30)
    [answer] = answers
    return answer


def assert_comes_back(answer: Reply) -> None:
    assert answer.status == 503, answer.text[:300]
    assert "comes back by itself within seconds" in answer.text, answer.text
    assert "one that was stopped has to be started again" not in answer.text
    assert answer.headers["Retry-After"] == "5"


@pytest.mark.slow
@pytest.mark.skipif(not redis_available(), reason="redis-server is not installed")
def test_a_tunnel_cut_under_a_request_through_another_node(tmp_path: Path) -> None:
    # Two nodes; the studio's tunnel is held by A, the request goes through B (the peer
    # link). A closed B's stream when the tunnel was lost there, as a tool closing its
    # connection does, and B said "Studio connection failed: the connection to the
    # studio's application failed."
    # The default retry period (tests/support/gateway.py sets 1s): a studio back within
    # 1 s of the cut can be connected again when B asks where it is, and the page is then
    # another one than this test's subject. (B also tried the request once more, as for
    # an idle connection the tool closed, and the studio back got it twice: no longer,
    # test_http_proxy's test_a_pooled_connection_whose_tunnel_ended_...)
    with redis_nodes(tmp_path, "a", "b", CONNECT_PEER_SECRET="away-test-peer-secret",
                     CONNECT_TUNNEL_RETRY_PERIOD="8s") as (a, b):
        status, created = b.api("/api/sessions", "POST", {"owner": "alice"})
        assert status == 201, created
        sid = created["id"]
        browser = Browser(timeout=20)
        browser.use_login_link(created["login_link"])  # (lands on "not connected yet")
        pin = parse_qs(urlsplit(created["connect_string"]).query)["pin"][0]
        relay = CuttableRelay(int(a.env["CONNECT_TUNNEL_PORT"]))  # to node A only
        tool = HoldingTool()
        try:
            b.parts.append(Connect(b.tmp_path, created["connect_string"], tool.port, extra_env={
                "CONNECT_GATEWAY_URL": f"tls://127.0.0.1:{relay.port}?pin={pin}"}))
            assert wait_connected(b.gw, sid)["tunnel"]["node"] == "node-a"
            assert_comes_back(cut_under_a_request(browser, b.url(sid, "/busy"), tool, relay))
        finally:
            relay.close()
            tool.close()


@pytest.mark.slow
@pytest.mark.skipif(chromium_path() is None, reason="chromium is not installed")
@pytest.mark.parametrize("mode", ["subdomain", "path"])
def test_the_page_turns_into_the_studio_by_itself_in_a_browser(tmp_path: Path,
                                                               mode: str) -> None:
    """A person opens a studio that has not connected yet, on a phone-sized screen, and
    does nothing: the page fits the screen, and once studios-connect dials in, the page's
    own reload (its meta refresh, every 5 s while starting; a script where the address has
    a fragment) shows the studio."""
    path_mode = mode == "path"
    g = Gateway(tmp_path / "gw", TOWER_DATA_STUDIO_ENABLE_PATH_ROUTING=str(path_mode).lower())
    browser: Chromium | None = None
    try:
        status, created = g.api("/api/sessions", "POST", {"owner": "alice"})
        assert status == 201, created
        sid = created["id"]
        browser = Chromium(tmp_path)
        browser.call("Emulation.setDeviceMetricsOverride", width=390, height=844,
                     deviceScaleFactor=1, mobile=True)
        browser.call("Page.navigate", url=created["login_link"])
        browser.wait_for("document.title == 'Open studio' && "
                         "!!document.querySelector('form button')", timeout=30)
        browser.evaluate("document.querySelector('form button').click()")
        browser.wait_for("document.title == 'Studio not connected'", timeout=30)
        assert browser.evaluate("location.href") == g.url(sid, "/")
        assert "has not connected yet" in browser.evaluate("document.body.innerText")
        assert browser.evaluate(
            "document.querySelector('meta[http-equiv=refresh]').content") == "5"
        assert browser.evaluate(
            "document.documentElement.scrollWidth <= window.innerWidth") is True
        # A tool's page link may have put a fragment on the address (Xpra's menu does),
        # and the page is loaded again there: a meta refresh alone then only scrolls
        # (a fragment navigation); the page reloads it all the same.
        browser.call("Page.navigate", url="about:blank")  # (else only a scroll)
        browser.wait_for("location.href == 'about:blank'")
        browser.call("Page.navigate", url=g.url(sid, "/#files"))
        browser.wait_for("document.title == 'Studio not connected' && "
                         "location.hash == '#files'", timeout=30)
        loaded = browser.evaluate("performance.timeOrigin")

        tool = g.tool(f"/_studio/{sid}/" if path_mode else "/")
        g.parts.append(Connect(g.tmp_path, created["connect_string"], tool.port,
                               name=f"connect-{sid}"))
        browser.wait_for("document.title == 'Demo studio'", timeout=30)
        assert browser.evaluate("performance.timeOrigin") > loaded  # reloaded by itself
        assert browser.evaluate("location.href") == g.url(sid, "/#files")
        browser.wait_for("document.getElementById('state').textContent == 'connected'")
    finally:
        if browser is not None:
            browser.stop()
        g.stop()
