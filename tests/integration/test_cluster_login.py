"""Login state across nodes, with real processes: two `twistd` gateways share one real
redis-server, CONNECT_PEER_SECRET and the storage root (so the login signing key), no
issuer (login links). A studio binds to node A.

- The login link, used through node A, is refused through node B (the preview page
  and the button).
- Alice's WebSocket goes through node B; she logs out through node A: node B closes it
  at once (Redis pub/sub; LOCAL_CACHE_TTL is a minute, so no re-check does it) and
  her cookie stops working on B.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.test_login_process import open_ws
from tests.support.login import Gateway, redis_nodes
from tests.support.redis_server import redis_available
from tests.support.web import Browser
from tests.support.websocket import WebSocket

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not redis_available(), reason="redis-server is not installed")]


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[tuple[Gateway, Gateway]]:
    with redis_nodes(tmp_path, "a", "b", CONNECT_PEER_SECRET="cluster-login-peer-secret",
                     LOCAL_CACHE_TTL="60s") as (a, b):
        yield a, b


def test_a_link_used_on_one_node_and_a_logout_on_one_node_hold_on_the_other(
        nodes: tuple[Gateway, Gateway]) -> None:
    a, b = nodes
    created = a.studio()  # owner alice; its tunnel is held by node A
    sid, link = created["id"], created["login_link"]
    assert link.startswith(f"{a.proxy}/_connect/link?token="), created
    on_b = link.replace(a.proxy, b.proxy, 1)
    alice = Browser()  # one browser: cookies for localhost go to either node's port
    landed = alice.use_login_link(link)
    assert landed.status == 200 and landed.url == a.url(sid, "/")
    preview = Browser().get(on_b)
    assert preview.status == 400 and "used already" in preview.text
    clicked = Browser().request(on_b, method="POST")
    assert clicked.status == 400 and "used already" in clicked.text

    # The same login through node B, then a logout through node A.
    assert b.url(sid) != a.url(sid)
    seen = alice.get(b.url(sid, "/api/info")).json()
    assert seen["headers"]["x-connect-sub"] == ["alice"]
    ws = open_ws(b, alice, sid)
    cookie = alice.cookies[f"{sid}.localhost"]["connect_session"][0]
    start = time.monotonic()
    out = alice.log_out(a.url(sid, "/_connect/logout"))
    assert out.status == 200 and "Logged out" in out.text
    ws.wait_closed(5)
    took = time.monotonic() - start
    refused = Browser().get(b.url(sid, "/api/info"), follow=False,
                            headers={"Cookie": f"connect_session={cookie}"})
    assert refused.status == 302 and "/_connect/login" in refused.headers["Location"]
    with pytest.raises(AssertionError, match="refused: 401"):
        WebSocket(b.http_port, f"{sid}.localhost:{b.http_port}", "/ws",
                  headers={"Cookie": f"connect_session={cookie}"})
    print(f"logout through node A closed the WebSocket through node B in {took:.3f}s")

