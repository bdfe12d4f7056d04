"""A studio whose tool port is the gateway's own HTTP port (studios-connect --tool-port
8080 beside a gateway on 8080), with real processes: the browser went round the login
for ever; now it gets a page that says what to change, and the log names the studio."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.test_tunnel_process import Deployment, wait_connected
from tests.support.studio import Connect
from tests.support.waiting import wait_until
from tests.support.web import Browser

pytestmark = pytest.mark.slow


@pytest.fixture(params=["subdomain", "path"])
def deployment(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Deployment]:
    d = Deployment(tmp_path, TOWER_DATA_STUDIO_ENABLE_PATH_ROUTING=str(
        request.param == "path").lower())
    try:
        yield d
    finally:
        d.stop()


def test_a_tool_port_that_is_the_gateways_own_is_a_page_not_a_login_loop(
        deployment: Deployment, tmp_path: Path) -> None:
    """With a command of its own (not asked at the bind, as a tool started elsewhere is:
    below), or a studios-connect of an earlier release."""
    looped = deployment.create()
    client = Connect(tmp_path, looped["connect_string"], deployment.http_port,
                     name="connect-looped", args=["--", "sleep", "600"])
    deployment.stoppers.append(client.stop)
    wait_connected(deployment.gw, looped["id"])
    # The login ends at the studio: it went round the login (more than 10 redirects).
    reply = deployment.browser.use_login_link(looped["login_link"])
    for _ in range(3):  # (a page load asks many times)
        assert reply.status == 508, (reply.status, reply.text[:300])
        assert "own port" in reply.text and "--tool-port" in reply.text
        assert looped["id"] in reply.text
        reply = deployment.browser.get(looped["url"])
    said = (f"session {looped['id']}: a request to its tool came back to this gateway's "
            f"HTTP port {deployment.http_port}: the studio's tool port is this gateway's own")
    wait_until(lambda: said in deployment.gw.output(), "the loop's log line")
    out = deployment.gw.output()
    assert out.count(said) == 1, out[-3000:]  # once a minute per studio, not per request
    assert "give studios-connect the port the tool listens on" in out


def test_studios_connect_stops_at_the_bind_when_its_tool_port_is_the_gateways(
        deployment: Deployment, tmp_path: Path) -> None:
    """A tool started elsewhere (only --tool-port given): studios-connect asks the port
    at the bind as the gateway would, gets the gateway's 508, and stops (exit 2) saying
    what to change; a tool of its own on another port is not taken for it."""
    looped = deployment.create()
    client = Connect(tmp_path, looped["connect_string"], deployment.http_port,
                     name="connect-looped")
    deployment.stoppers.append(client.stop)
    assert client.proc.wait(timeout=30) == 2, client.output()[-2000:]
    out = client.output()
    assert (f"studios-connect: the tool's port {deployment.http_port} is the gateway's own "
            "HTTP port" in out), out[-2000:]
    assert "give --tool-port (CONNECT_TOOL_PORT) the port the tool listens on" in out
    fine = deployment.create()
    _, other = deployment.studio(fine)
    wait_connected(deployment.gw, fine["id"])
    # (the demo tool serves at / only: in path mode its answer is its 404)
    landed = deployment.browser.use_login_link(fine["login_link"])
    assert landed.status in (200, 404), (landed.status, landed.text[:300])
    assert other.proc.poll() is None and "gateway's own" not in other.output()


def test_the_tool_is_told_its_session_and_a_clients_copy_goes(tmp_path: Path) -> None:
    """The mark a looped request is known by reaches a tool as the session it serves; a
    client's own X-Connect-Session never does (nor does it make a loop page elsewhere)."""
    deployment = Deployment(tmp_path)
    try:
        _told_its_session(deployment)
    finally:
        deployment.stop()


def _told_its_session(deployment: Deployment) -> None:
    created, other = deployment.create(), deployment.create()
    deployment.studio(created)
    wait_connected(deployment.gw, created["id"])
    deployment.login(created)
    for sent in ({}, {"X-Connect-Session": other["id"]}):
        reply = deployment.browser.get(created["url"] + "api/info", headers=sent)
        assert reply.status == 200, (reply.status, reply.text[:300])
        assert reply.json()["headers"]["x-connect-session"] == [created["id"]]
        assert len(reply.json()["headers"]["x-connect-mark"][0]) == 22  # ours, not a copy
    # The studio's own id, and its mark as the tool sees it, from a browser not logged
    # in: the login's redirect, as for any request. A forged id (ids are short and seen
    # in addresses) made a 508 and a warning that the studio's tool port was the
    # gateway's own; a mark proves only the session of the tool that saw it.
    stranger = Browser(tls=deployment.browser.tls)
    for forged in ({"X-Connect-Session": created["id"]},
                   {"X-Connect-Session": created["id"], "X-Connect-Mark": "A" * 22},
                   {"X-Connect-Session": other["id"],
                    "X-Connect-Mark": reply.json()["headers"]["x-connect-mark"][0]}):
        for url in (created["url"], other["url"]):
            answered = stranger.get(url, headers=forged, follow=False)
            assert answered.status in (302, 303), (answered.status, answered.text[:300])
    assert "came back" not in deployment.gw.output()


def test_twistd_studios_connect_stops_too(tmp_path: Path) -> None:
    """`twistd studios-connect` (studios-connect.service on a VM, whose tool always runs
    elsewhere) asks the same at the bind and exits 2, which the unit does not restart."""
    import os
    import subprocess

    from tests.support.gateway import BIN, REPO

    deployment = Deployment(tmp_path)
    try:
        looped = deployment.create()
        env = {k: v for k, v in os.environ.items() if not k.startswith("CONNECT_")}
        env.update(PYTHONPATH=str(REPO), CONNECT_STRING=looped["connect_string"],
                   CONNECT_TOOL_PORT=str(deployment.http_port))
        done = subprocess.run([str(BIN / "twistd"), "-n", "--pidfile=", "studios-connect"],
                              env=env, cwd=tmp_path, capture_output=True, text=True,
                              timeout=60)
        out = done.stdout + done.stderr
        assert done.returncode == 2, out[-2000:]
        assert (f"the tool's port {deployment.http_port} is the gateway's own HTTP port"
                in out), out[-2000:]
    finally:
        deployment.stop()
