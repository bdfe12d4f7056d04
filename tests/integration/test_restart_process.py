"""Restarting a single memory-registry gateway keeps its studios (issue 17, item 3).

Real processes: twistd gateway (embedded registry, sessions in
CONNECT_STORAGE_ROOT/sessions.json), studios-connect and the demo tool.
"""

from __future__ import annotations

import http.client
import json
import shutil
import threading
import time

import pytest

from tests.integration.test_tunnel_process import Deployment, wait_connected
from tests.support.gateway import GatewayProcess
from tests.support.waiting import wait_until

pytestmark = pytest.mark.slow


def restart(d: Deployment) -> float:
    """Stop the gateway (SIGTERM) and start it again on the same ports and storage root;
    the time it took until it was healthy."""
    d.gw.stop()
    start = time.monotonic()
    d.gw = GatewayProcess(d.tmp_path, d.env, name=f"gateway-{int(start * 1000)}")
    d.stoppers.append(d.gw.stop)
    d.gw.wait_healthy()
    return time.monotonic() - start


def reachable_within(d: Deployment, created: dict, seconds: float) -> float:
    start = time.monotonic()
    while True:
        reply = d.browser.get(d.url(created, "/api/info"))
        if reply.status == 200:
            return time.monotonic() - start
        assert time.monotonic() - start < seconds, f"still {reply.status} after {seconds}s"
        time.sleep(0.1)


class Load(threading.Thread):
    """Requests to the studio, one after the other, from before the restart to after it:
    (time, status) of each (0: no answer at all)."""

    def __init__(self, d: Deployment, created: dict):
        super().__init__(daemon=True)
        self.host = f"{created['id']}.{d.host}:{d.http_port}"
        self.port = d.http_port
        self.cookie = d.browser._cookie_header(f"{created['id']}.{d.host}", "/api/info") or ""
        self.results: list[tuple[float, int]] = []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            status = 0
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                conn.request("GET", "/api/info", headers={"Host": self.host,
                                                          "Cookie": self.cookie})
                status = conn.getresponse().status
                conn.close()
            except OSError:
                pass
            self.results.append((time.monotonic(), status))
            time.sleep(0.02)


def test_a_restarted_gateway_keeps_its_studios(tmp_path) -> None:
    d = Deployment(tmp_path)
    try:
        created = d.create()
        _, client = d.studio(created)
        wait_connected(d.gw, created["id"])
        d.login(created)
        assert d.browser.get(d.url(created, "/api/info")).status == 200
        load = Load(d, created)
        load.start()
        wait_until(lambda: load.results, "a request answered before the restart")
        down = time.monotonic()
        restart(d)
        up = time.monotonic()  # the new process is ready (the old one served while draining)
        # The session is known again at once, and the same browser's login still holds.
        status, body, _ = d.gw.request(f"/api/sessions/{created['id']}")
        assert status == 200 and json.loads(body)["id"] == created["id"]
        reachable_within(d, created, 15)
        time.sleep(2)
        load.done.set()
        load.join(10)
        before = [s for t, s in load.results if t < down]
        assert before and all(s == 200 for s in before)
        # Once the studio answered the new process (its client rebound), no request failed.
        back = next(t for t, s in load.results if t > up and s == 200)
        after = [s for t, s in load.results if t >= back]
        assert len(after) > 10 and all(s == 200 for s in after), after
        gap = back - max(t for t, s in load.results if t < back and s == 200)
        print(f"studio unreachable for {gap:.2f}s across the restart; "
              f"{len(after)} requests after, none failed")
        assert client.proc.poll() is None and "giving up" not in client.output()
    finally:
        d.stop()


def test_sessions_acknowledged_before_a_crash_or_a_stop_are_kept(tmp_path) -> None:
    """A session the admin API acknowledged is on disk (the journal) before the answer:
    a SIGKILL right after loses nothing; a SIGTERM folds the journal into sessions.json."""
    d = Deployment(tmp_path)
    try:
        storage = tmp_path / "storage"
        first = d.create()
        d.gw.proc.kill()
        d.gw.wait()
        assert not (storage / "sessions.json").exists()
        assert first["id"] in (storage / "sessions.journal").read_text()
        restart(d)
        status, body, _ = d.gw.request(f"/api/sessions/{first['id']}")
        assert status == 200 and json.loads(body)["id"] == first["id"]
        second = d.create()
        status, _, _ = d.gw.request(f"/api/sessions/{first['id']}", method="DELETE")
        assert status in (200, 204)
        restart(d)  # SIGTERM, then a new process
        saved = json.loads((storage / "sessions.json").read_text())
        assert [s["id"] for s in saved["sessions"]] == [second["id"]]
        assert (storage / "sessions.journal").read_bytes() == b""
        status, _, _ = d.gw.request(f"/api/sessions/{first['id']}")
        assert status == 404
        status, _, _ = d.gw.request(f"/api/sessions/{second['id']}")
        assert status == 200
    finally:
        d.stop()


def test_a_client_waits_for_a_session_the_gateway_does_not_know_yet(tmp_path) -> None:
    """The gateway comes back without the session (its store restored later): the client
    hears unknown_session, keeps trying, and binds once the session is back."""
    d = Deployment(tmp_path)
    try:
        created = d.create()
        _, client = d.studio(created, CONNECT_UNKNOWN_SESSION_WAIT="60s")
        wait_connected(d.gw, created["id"])
        store = tmp_path / "storage" / "sessions.json"
        saved = tmp_path / "sessions.json.saved"
        d.gw.stop()
        shutil.move(store, saved)
        restart(d)
        deadline = time.monotonic() + 20
        while "does not know session" not in client.output():
            assert time.monotonic() < deadline, client.output()[-2000:]
            time.sleep(0.1)
        assert client.proc.poll() is None
        d.gw.stop()
        shutil.move(saved, store)
        restart(d)
        wait_connected(d.gw, created["id"], timeout=20)
        assert client.proc.poll() is None and "giving up" not in client.output()
    finally:
        d.stop()
