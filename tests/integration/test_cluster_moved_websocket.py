"""A WebSocket relayed through another node into its studio's tunnel, when the studio
moves (two real gateway processes, one real redis-server).

The studio is bound to node A; a WebSocket opened at node B runs over a peer stream into
A's tunnel. A is stopped (SIGTERM): its tunnel is told to go away, and the studio binds
to B, the other gateway it lists. A keeps serving the streams it has until its grace ends,
so before, the relayed WebSocket stayed on A's old tunnel, held A's drain for the whole
`CONNECT_SHUTDOWN_GRACE` and was then closed a second time. Now B closes it with 1012 as
soon as the registry names the new holder; the page opens it again, on B's own tunnel,
and A's drain ends without waiting out its grace (here 120 s: the test would time out).
"""

from __future__ import annotations

import signal
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.support.login import redis_nodes
from tests.support.redis_server import redis_available
from tests.support.studio import Connect
from tests.support.waiting import wait_until
from tests.support.web import Browser
from tests.support.websocket import WebSocket

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not redis_available(), reason="redis-server is not installed")]


def test_a_relayed_websocket_reconnects_to_the_new_holder_when_its_studio_moves(
        tmp_path: Path) -> None:
    with redis_nodes(tmp_path, "a", "b", CONNECT_PEER_SECRET="moved-websocket-peer-secret",
                     TOWER_DATA_STUDIO_ENABLE_PATH_ROUTING="true",
                     CONNECT_SHUTDOWN_GRACE="120s") as (a, b):
        status, created = a.api("/api/sessions", "POST", {"owner": "alice"})
        assert status == 201, created
        sid = created["id"]
        pin = parse_qs(urlsplit(created["connect_string"]).query)["pin"][0]
        tool = a.tool(f"/_studio/{sid}/")
        gateways = ",".join(f"tls://127.0.0.1:{n.env['CONNECT_TUNNEL_PORT']}?pin={pin}"
                            for n in (a, b))
        client = Connect(tmp_path, created["connect_string"], tool.port,
                         extra_env={"CONNECT_GATEWAY_URL": gateways})
        a.parts.append(client)

        def holder() -> str | None:
            status, found = b.api(f"/api/sessions/{sid}")
            assert status == 200, found
            return (found.get("tunnel") or {}).get("node")

        wait_until(lambda: holder() == "node-a", "the studio bound to A")
        browser = Browser(timeout=30)
        assert browser.use_login_link(created["login_link"]).status == 200
        cookie = browser._cookie_header("localhost", f"/_studio/{sid}/")
        assert cookie

        def websocket() -> WebSocket:
            ws = WebSocket(b.http_port, f"localhost:{b.http_port}", f"/_studio/{sid}/ws",
                           headers={"Cookie": cookie}, timeout=30)
            ws.send_text("ping")
            assert ws.recv_text() == "ping"
            return ws

        ws = websocket()  # through B, over the peer link into A's tunnel
        a.gw.proc.send_signal(signal.SIGTERM)
        with pytest.raises(ConnectionError) as closed:
            while True:  # until B closes it: the studio bound to B
                ws.send_text("still there")
                assert ws.recv_text() == "still there"
        assert str(closed.value) == ("WebSocket closed: 1012 the studio's connection is "
                                     "going away; reconnect"), b.gw.output()[-3000:]
        ws.close()
        assert holder() == "node-b"
        assert "closing 1 WebSocket(s) relayed to its old tunnel" in b.gw.output()

        again = websocket()  # the page's reconnect: B's own tunnel now
        # A's drain ends with its last stream, not at its grace's end.
        assert a.gw.proc.wait(timeout=60) == 0, a.gw.output()[-3000:]
        assert "drain did not finish" not in a.gw.output()
        again.send_text("after A stopped")
        assert again.recv_text() == "after A stopped"
        again.close()
