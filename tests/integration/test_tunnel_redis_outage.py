"""A Redis outage longer than the tunnels' claim TTL keeps the tunnels.

Real processes: redis-server, the gateway, one tool and three studios-connect
clients, with browsers' requests going on the whole time. Redis saves and dies
(as in a crash), stays away for twice CONNECT_TUNNEL_CLAIM_TTL so every claim has
expired when it comes back with its data, and the gateway must claim its tunnels
again instead of closing them as "held elsewhere".
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from tests.integration.test_tunnel_process import Deployment, wait_connected
from tests.support.redis_server import RedisServer, redis_available
from tests.support.studio import Connect, Tool

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not redis_available(), reason="redis-server is not installed")]

TTL = 3.0
STUDIOS = 3


class Load:
    """Requests to every studio in turn from a thread; (time, status) of each kept."""

    def __init__(self, d: Deployment, studios: list[dict]):
        self.results: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(d, studios), daemon=True)
        self._thread.start()

    def _run(self, d: Deployment, studios: list[dict]) -> None:
        while not self._stop.is_set():
            for created in studios:
                try:
                    status = d.browser.get(d.url(created, "/api/info")).status
                except OSError:
                    status = 0
                self.results.append((time.monotonic(), status))

    def failures_after(self, t: float) -> list[tuple[float, int]]:
        return [r for r in self.results if r[0] >= t and r[1] != 200]

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=20)


def test_tunnels_outlive_a_redis_outage_longer_than_their_claims(tmp_path: Path) -> None:
    redis = RedisServer(tmp_path / "redis")
    redis.start()
    d = None
    load = None
    try:
        d = Deployment(tmp_path, CONNECT_REDIS_ADDRESS=redis.address,
                       CONNECT_TUNNEL_CLAIM_TTL=f"{TTL:g}s")
        tool = Tool(tmp_path)
        d.stoppers.append(tool.stop)
        studios = [d.create() for _ in range(STUDIOS)]
        clients = []
        for created in studios:
            client = Connect(tmp_path, created["connect_string"], tool.port,
                             name=f"connect-{created['id']}")
            d.stoppers.append(client.stop)
            clients.append(client)
        for created in studios:
            wait_connected(d.gw, created["id"])
        for created in studios:
            d.login(created)
        load = Load(d, studios)

        redis.cli("SAVE")  # the sessions survive the outage; the claims' TTLs run on
        redis.kill()
        time.sleep(2 * TTL)  # the outage itself: this is what is being tested, not a wait
        redis.start()
        back = time.monotonic()
        deadline = back + 30
        while d.gw.request("/ready")[0] != 200:
            assert time.monotonic() < deadline, d.gw.output()[-3000:]
            time.sleep(0.1)
        # Several refresh rounds (every TTL/3) with Redis back, under load.
        time.sleep(3 * TTL)
        load.stop()

        log = d.gw.output()
        assert "held elsewhere" not in log, log[-3000:]
        assert log.count(" bound (connect ") == STUDIOS, log[-3000:]
        for client in clients:  # each bound once, never lost its tunnel
            out = client.output()
            assert out.count(" bound to gateway ") == 1 and "tunnel to" not in out, out[-2000:]
        for created in studios:  # claimed again, with a live TTL
            key = f"connect:session:{created['id']}:tunnel"
            assert int(redis.cli("PTTL", key).split()[-1]) > 0, redis.cli("PTTL", key)
        late = load.failures_after(back + 2 * TTL)
        assert not late and any(t > back + 2 * TTL for t, _ in load.results), late
    finally:
        if load is not None:
            load.stop()
        if d is not None:
            d.stop()
        redis.stop()
