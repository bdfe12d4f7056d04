"""Tunnel quality with real processes: a silent path found by both ends in time.

(Issue 16.) A relay between studios-connect and the gateway goes silent without
closing anything, as when a laptop sleeps or a NAT entry expires.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.test_tunnel_process import Deployment, wait_connected

pytestmark = pytest.mark.slow

PING_INTERVAL, PING_TIMEOUT = 1.0, 3.0
DEAD = "nothing heard from the peer"


def when_logged(logs: dict[str, Callable[[], str]], needle: str, start: float,
                deadline: float) -> dict[str, float]:
    """Seconds from `start` until each log first shows `needle` (absent: not by deadline)."""
    found: dict[str, float] = {}
    while time.monotonic() < deadline and len(found) < len(logs):
        for name, read in logs.items():
            if name not in found and needle in read():
                found[name] = time.monotonic() - start
        time.sleep(0.02)
    return found


def test_a_silent_path_is_found_by_both_ends_within_the_ping_timeout(tmp_path: Path) -> None:
    d = Deployment(tmp_path, CONNECT_TUNNEL_PING_INTERVAL=f"{PING_INTERVAL:g}s",
                   CONNECT_TUNNEL_PING_TIMEOUT=f"{PING_TIMEOUT:g}s")
    try:
        created = d.create()
        relay, _, client = d.relayed_studio(created)
        wait_connected(d.gw, created["id"])
        d.login(created)
        url = d.url(created, "/api/info")
        assert d.browser.get(url).status == 200

        # A request in flight while the path goes silent: the "not connected" page (or,
        # if the studio is back already, the answer), never a hang or a bare 502.
        answers: list[tuple[int, str, float]] = []

        def in_flight() -> None:
            t0 = time.monotonic()
            reply = d.browser.get(url)
            answers.append((reply.status, reply.text[:300], time.monotonic() - t0))

        assert relay.silence() == 1
        start = time.monotonic()
        request = threading.Thread(target=in_flight)
        request.start()
        deadline = start + PING_TIMEOUT + 5
        found = when_logged({"gateway": d.gw.output, "client": client.output}, DEAD, start,
                            deadline)
        gateway_found, client_found = found.get("gateway"), found.get("client")
        served = None
        while time.monotonic() < deadline:
            if d.browser.get(url).status == 200:
                served = time.monotonic() - start
                break
            time.sleep(0.05)
        request.join(timeout=30)
        print(f"gateway found it after {gateway_found}s, client after {client_found}s, "
              f"served again after {served}s; request in flight: {answers}")
        assert gateway_found is not None and gateway_found <= PING_TIMEOUT + 0.3
        assert client_found is not None and client_found <= PING_TIMEOUT + 0.3
        assert served is not None and served <= PING_TIMEOUT + 2
        [(status, text, took)] = answers
        assert took <= PING_TIMEOUT + 0.5
        assert status == 200 or (status == 502 and "Studio is starting" in text), (status, text)
    finally:
        d.stop()
