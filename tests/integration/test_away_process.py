"""A real gateway and a real studios-connect: the not-connected page says "not connected
yet" before the studio's first connect, and "was connected until" once it connected and
was stopped (the unbind, recorded by the registry; just after it, that it may come back)."""

from __future__ import annotations

import json

from tests.integration.test_tunnel_process import Deployment, deployment, wait_connected

__all__ = ["deployment"]  # the fixture, re-used


def test_the_page_says_not_yet_then_until_when(deployment: Deployment) -> None:
    created = deployment.create()
    sid = created["id"]
    # The login lands on the studio: not connected yet.
    landed = deployment.browser.use_login_link(created["login_link"])
    assert landed.status == 502, landed.text[:300]
    before = deployment.browser.get(deployment.url(created, "/lab"))
    assert before.status == 502, before.text[:300]
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
    assert after.status == 502
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
