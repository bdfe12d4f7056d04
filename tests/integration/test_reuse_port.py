"""Two gateway processes on one host sharing the public ports (CONNECT_REUSE_PORT)."""

from __future__ import annotations

import json
import re

import pytest

from tests.integration.test_tunnel_process import wait_connected
from tests.support.gateway import GatewayProcess, base_env
from tests.support.ports import free_ports
from tests.support.redis_server import RedisServer, redis_available
from tests.support.studio import Connect, Tool
from tests.support.web import Browser

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not redis_available(), reason="redis-server is not installed")]

KEY = "reuse-port-test-key"


def peer_streams_out(node: GatewayProcess) -> float:
    _, body, _ = node.request("/metrics")
    total = 0.0
    for line in body.decode().splitlines():
        if line.startswith("studios_gateway_peer_streams") and 'direction="out"' in line \
                and 'outcome="ok"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_two_processes_share_the_public_ports(tmp_path) -> None:
    redis = RedisServer(tmp_path / "redis")
    redis.start()
    stoppers = [redis.stop]
    try:
        http, tunnel = free_ports(2)  # (two free_port calls may give one port twice)
        shared = {"CONNECT_HTTP_PORT": str(http), "CONNECT_TUNNEL_PORT": str(tunnel),
                  "CONNECT_REUSE_PORT": "true", "CONNECT_REDIS_ADDRESS": redis.address,
                  "CONNECT_PEER_SECRET": "reuse-port-secret",
                  "CONNECT_MANAGEMENT_AUTH_KEY": KEY, "CONNECT_LOG_LEVEL": "info"}
        shared["CONNECT_PROXY_URL"] = f"http://localhost:{shared['CONNECT_HTTP_PORT']}"
        nodes = []
        for i in (1, 2):
            env = base_env(tmp_path, **shared, CONNECT_NODE_ID=f"core-{i}")
            node = GatewayProcess(tmp_path, env, name=f"gateway-{i}")
            stoppers.append(node.stop)
            node.wait_healthy()
            nodes.append(node)
        for node in nodes:  # both bound the same ports: neither failed its start
            status, body, _ = node.request("/ready")
            assert status == 200, body
            assert node.proc.poll() is None

        status, body, _ = nodes[0].request("/api/sessions", method="POST",
                                           body={"owner": "alice"})
        assert status == 201, body
        created = json.loads(body)
        sid = created["id"]
        tool = Tool(tmp_path)
        stoppers.append(tool.stop)
        client = Connect(tmp_path, created["connect_string"], tool.port)
        stoppers.append(client.stop)
        holder = wait_connected(nodes[0], sid)["tunnel"]["node"]
        other = nodes[1] if holder == "core-1" else nodes[0]

        browser = Browser(timeout=10)
        assert browser.use_login_link(created["login_link"]).status == 200
        url = f"http://{sid}.localhost:{shared['CONNECT_HTTP_PORT']}/api/info"
        for _ in range(40):  # each a new connection; the kernel spreads them over both
            reply = browser.get(url)
            assert reply.status == 200, (reply.status, reply.text[:300])
        # Requests that landed on the process without the tunnel went over the peer link.
        assert peer_streams_out(other) > 0, re.sub(r"\n+", "\n", other.output()[-2000:])
    finally:
        for stop in reversed(stoppers):
            stop()
