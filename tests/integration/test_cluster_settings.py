"""Nodes that disagree on the settings every node must share, with real processes: `twistd`
gateways on one real redis-server. Nodes A and B share one CONNECT_PROXY_URL; node C has
its own (a node left over from an old rollout).

- A and B never warn about each other; each warns once about C, naming both addresses
  and both nodes; C warns once about each of them.
- A further node with yet another address (a record put in Redis and announced by
  hand) is warned about once on every node, and nobody repeats the earlier warnings.
- The gauge counts the disagreeing nodes; /ready stays 200.
- ``check-config --connect`` with A's settings prints the same comparison.
- C drains: its record is deleted at once (not left for its TTL) and A and B stop
  counting it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.gateway import REPO
from tests.support.login import Gateway, redis_nodes
from tests.support.redis_server import RedisServer, redis_available
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not redis_available(), reason="redis-server is not installed")]

SECRET = "cluster-settings-peer-secret-0123456789"
WARNING = "cluster settings differ between node"


def warnings(node: Gateway) -> list[str]:
    return [line for line in node.gw.output().splitlines() if WARNING in line]


def test_a_node_with_another_proxy_url_is_warned_about_once_on_each_side(
        tmp_path: Path) -> None:
    redis = RedisServer(tmp_path / "redis")
    redis.start()
    c: Gateway | None = None
    try:
        with redis_nodes(tmp_path, "a", "b", one_url=True, redis=redis,
                         CONNECT_PEER_SECRET=SECRET) as (a, b):
            wait_until(lambda: "1" in redis.cli("EXISTS", "connect:session:_node:node-b"),
                       "node B's settings record")
            c = Gateway(tmp_path / "c", CONNECT_REDIS_ADDRESS=redis.address,
                        CONNECT_STORAGE_ROOT=str(tmp_path / "storage"),
                        CONNECT_NODE_ID="node-c", CONNECT_PEER_SECRET=SECRET)
            assert a.env["CONNECT_PROXY_URL"] == b.env["CONNECT_PROXY_URL"] != c.proxy
            for node in (a, b):
                wait_until(lambda n=node: warnings(n), f"{node.env['CONNECT_NODE_ID']}'s warning")
            wait_until(lambda: len(warnings(c)) == 2, "node C's two warnings")

            # A fourth address, announced as a node does: one new warning on each node.
            x = {"CONNECT_PROXY_URL": "https://elsewhere.example", "routing": "subdomain",
                 "CONNECT_STUDIOS_DOMAIN": "localhost", "login": "login links"}
            redis.cli("SET", "connect:session:_node:node-x", json.dumps(x), "PX", "60000")
            redis.cli("EVAL", "local ids = cjson.decode(redis.call('GET', KEYS[1])) "
                      "ids[#ids + 1] = ARGV[1] "
                      "redis.call('SET', KEYS[1], cjson.encode(ids), 'PX', 60000)",
                      "1", "connect:session:_nodes", "node-x")  # in the nodes' index
            redis.cli("PUBLISH", "connect:session:events", "node:node-x")
            for node in (a, b, c):
                wait_until(lambda n=node: any("node-x" in w for w in warnings(n)),
                           f"{node.env['CONNECT_NODE_ID']}'s warning about node-x")

            url_a, url_c = a.env["CONNECT_PROXY_URL"], c.proxy
            for node, own, other in ((a, "node-a", "node-c"), (b, "node-b", "node-c")):
                seen = warnings(node)
                assert len(seen) == 2, seen  # one about C, one about X; none about A/B
                about_c = [w for w in seen if f"node {other}" in w]
                assert len(about_c) == 1, seen
                assert f"node {own} and node {other}" in about_c[0]
                assert f"CONNECT_PROXY_URL is '{url_a}' here but '{url_c}' on {other}" \
                    in about_c[0]
                assert "rolling change" in about_c[0]
            # The gauge counts the disagreeing nodes; /ready stays 200 (a rolling change).
            for node, count in ((a, b"2.0"), (b, b"2.0"), (c, b"3.0")):
                scraped = node.gw.request("/metrics")[1]
                assert b"studios_gateway_cluster_settings_differ " + count in scraped
                assert node.gw.request("/ready")[0] == 200
            seen_c = warnings(c)
            assert len(seen_c) == 3, seen_c  # A, B, then X
            for other in ("node-a", "node-b"):
                one = [w for w in seen_c if f"node node-c and node {other}" in w]
                assert len(one) == 1, seen_c
                assert f"'{url_c}' here but '{url_a}' on {other}" in one[0]

            # check-config --connect as node A would: the same comparison.
            out = subprocess.run([sys.executable, "-m", "studios_gateway.cli", "check-config",
                                  "-q", "--connect"], env=a.env, cwd=REPO, capture_output=True,
                                 text=True, timeout=60)
            assert out.returncode == 0, out.stderr
            assert "cluster settings: node node-b has the same" in out.stdout, out.stdout
            lines = [line for line in out.stdout.splitlines() if WARNING in line]
            assert len(lines) == 2, out.stdout  # node-c and node-x
            assert any(f"node node-a (this configuration) and node node-c: CONNECT_PROXY_URL "
                       f"is '{url_a}' here but '{url_c}' on node-c" in line
                       for line in lines), out.stdout

            # Node C drains (as at SIGTERM): its record goes at once, not after its 60 s
            # TTL, and the others stop counting it (one line each says so).
            status, body, _ = c.gw.request("/shutdown", method="POST")
            assert status == 202, body
            assert c.gw.wait(timeout=30) == 0
            assert "0" in redis.cli("EXISTS", "connect:session:_node:node-c")
            for node in (a, b):
                wait_until(lambda n=node: b"studios_gateway_cluster_settings_differ 1.0"
                           in n.gw.request("/metrics")[1], "the gauge without node C")
                assert "node node-c no longer differs" in node.gw.output()
    finally:
        if c is not None:
            c.stop()
        redis.stop()
