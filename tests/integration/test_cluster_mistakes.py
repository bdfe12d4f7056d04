"""A cluster operator's mistakes, said when the nodes first meet: real `twistd` gateways on
one real redis-server (docs/cluster.md).

- Node B has another CONNECT_PEER_SECRET than node A: before any request, each node tries
  a peer link to the other as soon as it sees the other's record in Redis, logs the
  refusal once naming the other node and the setting, and says it in /ready (still 200).
  Node C, with A's secret, has its link to A and says only B. check-config --connect
  with B's settings says both others refuse it.
- Two studios on one session, one through node A and one through node B, are said as on
  one node.
- Two processes started with one CONNECT_NODE_ID: through each, the other's studios are
  served as long as they advertise different peer addresses; a third that advertises the
  first's address too (containers that share a host name, unset id and address) answers
  "Studio not connected" for them. Each logs that another process has its id.
- A node whose CONNECT_REDIS_PREFIX is 'studios:' where the others' is 'studios' warns
  at its start naming both; one under 'staging' (another cluster on purpose) only says it
  at info; check-config --connect says the same.
- A node whose clock is 2 minutes ahead (its record and announcement written by hand, as
  such a node writes them) is said by the running node as it hears it start.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.support.gateway import REPO
from tests.support.login import Gateway, redis_nodes
from tests.support.redis_server import RedisServer, redis_available
from tests.support.studio import Connect
from tests.support.waiting import wait_until
from tests.support.web import Browser

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not redis_available(), reason="redis-server is not installed")]

SECRET = "cluster-mistakes-peer-secret-0123456789"


def lines(node: Gateway, text: str) -> list[str]:
    return [line for line in node.gw.output().splitlines() if text in line]


def ready(node: Gateway) -> tuple[int, dict[str, str]]:
    status, body, _ = node.gw.request("/ready")
    return status, json.loads(body)["checks"]


def test_a_peer_secret_that_differs_is_said_when_the_nodes_meet(tmp_path: Path) -> None:
    redis = RedisServer(tmp_path / "redis")
    redis.start()
    c: Gateway | None = None
    try:
        with redis_nodes(tmp_path, "a", redis=redis, CONNECT_PEER_SECRET=SECRET) as (a,), \
                redis_nodes(tmp_path, "b", redis=redis,
                            CONNECT_PEER_SECRET="another-secret-typed-by-hand") as (b,):
            refused_b = "cannot reach peer node node-b at "
            wait_until(lambda: lines(a, refused_b), "node A's line about node B")
            wait_until(lambda: lines(b, "cannot reach peer node node-a at "),
                       "node B's line about node A")
            said = lines(a, refused_b)[0]
            assert "CONNECT_PEER_SECRET" in said and "on this node (node-a)" in said, said
            # The accepting side names the node that tried, not only its address.
            wait_until(lambda: lines(b, "peer connection from node node-a at 127.0.0.1 "
                                        "refused: peer authentication failed"),
                       "node B's refusal naming node A")
            for node, other in ((a, "node-b"), (b, "node-a")):
                status, checks = ready(node)
                assert status == 200, checks
                assert checks["peers"].startswith(f"no link to 1 other node(s): node {other}"), \
                    checks
                assert "CONNECT_PEER_SECRET" in checks["peers"]
            assert not lines(a, "GET /"), "no request was needed to find it"

            c = Gateway(tmp_path / "c", CONNECT_REDIS_ADDRESS=redis.address,
                        CONNECT_STORAGE_ROOT=str(tmp_path / "storage"),
                        CONNECT_NODE_ID="node-c", CONNECT_PEER_SECRET=SECRET)
            wait_until(lambda: lines(c, "peer link to 127.0.0.1:"), "node C's link to A")
            wait_until(lambda: lines(c, "cannot reach peer node node-b"), "C's line about B")
            status, checks = ready(c)
            assert status == 200 and "node node-b" in checks["peers"], checks
            assert "node-a" not in checks["peers"], checks
            assert len(lines(a, refused_b)) == 1, "said once, not again for node C's start"

            # check-config --connect with node B's settings says it before a start.
            out = subprocess.run([sys.executable, "-m", "studios_gateway.cli",
                                  "check-config", "-q", "--connect"], env=b.env, cwd=REPO,
                                 capture_output=True, text=True, timeout=60)
            for other in ("node-a", "node-c"):
                assert f"warning: peer link to node {other} at 127.0.0.1:" in out.stdout, \
                    (out.stdout, out.stderr)
            assert "peer authentication failed" in out.stdout
    finally:
        if c is not None:
            c.stop()
        redis.stop()


def test_two_studios_on_one_session_through_two_nodes_are_said(tmp_path: Path) -> None:
    """Two studios-connect with one connect string, one through node A and one through
    node B: each claim retired the other node's tunnel, and they took turns. The one
    taken over is told so and waits for the session (if_free, refused "held"); the node
    it asks names the two (tunnel/twins.py)."""
    with redis_nodes(tmp_path, "a", "b", CONNECT_PEER_SECRET=SECRET) as (a, b):
        status, created = a.api("/api/sessions", "POST", {"owner": "alice"})
        assert status == 201, created
        sid = created["id"]
        pin = parse_qs(urlsplit(created["connect_string"]).query)["pin"][0]
        tool = a.tool()
        for node in (a, b):
            via = {"CONNECT_GATEWAY_URL":
                   f"tls://127.0.0.1:{node.env['CONNECT_TUNNEL_PORT']}?pin={pin}"}
            a.parts.append(Connect(tmp_path, created["connect_string"], tool.port,
                                   extra_env=via, name=f"connect-{node.env['CONNECT_NODE_ID']}"))
        said = (f"session {sid}: a studios-connect from 127.0.0.1 waits for the one bound "
                "through node node-")
        wait_until(lambda: lines(a, said) or lines(b, said), "a node's warning", timeout=60)
        line = (lines(a, said) or lines(b, said))[0]
        assert "two studios-connect run with this session's connect string" in line


def test_two_processes_with_one_node_id(tmp_path: Path) -> None:
    redis = RedisServer(tmp_path / "redis")
    redis.start()
    nodes: list[Gateway] = []
    try:
        def start(name: str, **env: str) -> Gateway:
            nodes.append(Gateway(tmp_path / name, CONNECT_REDIS_ADDRESS=redis.address,
                                 CONNECT_STORAGE_ROOT=str(tmp_path / "storage"),
                                 CONNECT_NODE_ID="gw", CONNECT_PEER_SECRET=SECRET,
                                 CONNECT_LOG_LEVEL="info", **env))
            return nodes[-1]

        a, b = start("a"), start("b")
        # c: A's peer address as its own, as two containers that share a host name say
        # (the default id and address are both the host name's)
        c = start("c", CONNECT_ADVERTISE_ADDRESS=f"127.0.0.1:{a.env['CONNECT_LISTENER_PORT']}")
        created = a.studio()
        sid = created["id"]
        browser = Browser(timeout=30)
        assert browser.use_login_link(created["login_link"]).status == 200
        through_b = browser.get(b.url(sid, "/api/info"))
        assert through_b.status == 200, (through_b.status, through_b.text[:300])
        through_c = browser.get(c.url(sid, "/api/info"))
        assert through_c.status == 503 and "Studio not connected" in through_c.text, \
            (through_c.status, through_c.text[:300])

        said = "another gateway process announces itself as node gw too"
        for node in (a, b):  # as the later one starts (before: at a refresh, up to 20 s)
            wait_until(lambda n=node: lines(n, said), "the line", timeout=15)
        line = lines(a, said)[0]
        assert "every node needs its own CONNECT_NODE_ID" in line
        assert "advertise the same peer address" in line, line
    finally:
        for node in reversed(nodes):
            node.stop()
        redis.stop()


def test_a_prefix_like_the_others_is_said_and_another_cluster_is_not_warned(
        tmp_path: Path) -> None:
    redis = RedisServer(tmp_path / "redis")
    redis.start()
    try:
        with redis_nodes(tmp_path, "a", redis=redis, CONNECT_PEER_SECRET=SECRET,
                         CONNECT_REDIS_PREFIX="studios") as (a,):
            wait_until(lambda: "1" in redis.cli("EXISTS", "studios:_nodes"), "A's index")
            with redis_nodes(tmp_path, "b", redis=redis, CONNECT_PEER_SECRET=SECRET,
                             CONNECT_REDIS_PREFIX="studios:") as (b,), \
                    redis_nodes(tmp_path, "c", redis=redis, CONNECT_PEER_SECRET=SECRET,
                                CONNECT_REDIS_PREFIX="staging") as (c,):
                said = "gateway nodes with CONNECT_REDIS_PREFIX 'studios' share this Redis"
                wait_until(lambda: lines(b, said), "node B's warning")
                assert "this node's is 'studios:'" in lines(b, said)[0]
                assert len(lines(b, "CONNECT_REDIS_PREFIX")) == 1, "one line"
                wait_until(lambda: lines(c, "this Redis also holds the nodes of other gateway "
                                            "clusters (CONNECT_REDIS_PREFIX 'studios'"),
                           "node C's info line")
                assert not lines(c, "share this Redis"), "staging is not a typo of studios"
                assert not lines(a, "share this Redis"), "A started first: it saw no other"

                out = subprocess.run([sys.executable, "-m", "studios_gateway.cli",
                                      "check-config", "--connect"], env=b.env, cwd=REPO,
                                     capture_output=True, text=True, timeout=60)
                assert said in out.stdout + out.stderr, (out.stdout, out.stderr)
                assert "studios: (keys studios::<session id>)" in out.stdout, out.stdout
    finally:
        redis.stop()


def test_a_node_whose_clock_is_ahead_is_said(tmp_path: Path) -> None:
    redis = RedisServer(tmp_path / "redis")
    redis.start()
    try:
        with redis_nodes(tmp_path, "a", redis=redis, CONNECT_PEER_SECRET=SECRET) as (a,):
            wait_until(lambda: "1" in redis.cli("EXISTS", "connect:session:_node:node-a"),
                       "A's record")
            record = json.loads(json.loads(redis.cli("GET", "connect:session:_node:node-a")))
            # node-z starts, its clock 2 minutes ahead: its record, its id in the index
            # and its event, as it writes them
            z = {**record, "instance": "z1", "time": f"{time.time() + 120.4:.3f}"}
            redis.cli("SET", "connect:session:_node:node-z", json.dumps(z), "PX", "60000")
            redis.cli("EVAL", "local ids = cjson.decode(redis.call('GET', KEYS[1])) "
                      "ids[#ids + 1] = ARGV[1] "
                      "redis.call('SET', KEYS[1], cjson.encode(ids), 'PX', 60000)",
                      "1", "connect:session:_nodes", "node-z")
            redis.cli("PUBLISH", "connect:session:events", "node:node-z")
            said = "the clock of node node-z is 120s ahead of this node's (node-a)"
            wait_until(lambda: lines(a, said), "node A's line")
    finally:
        redis.stop()
