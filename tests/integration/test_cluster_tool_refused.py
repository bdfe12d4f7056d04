"""A tool that refuses the connection, seen through the node that holds its studio's
tunnel and through another node (two real gateway processes, one real redis-server).

studios-connect resets a stream whose tool refused the connection; the holding node
answers "not answering" (504). Through another node the stream is spliced onto the
tunnel's over the peer link: the holding node relays the studio's reset (RESET_RELAYED),
so the browser gets the same 504 page there, not a 502 "connection failed" (a close) nor
a 503 "not connected" (a plain reset: the tunnel lost).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.support.login import redis_nodes
from tests.support.redis_server import redis_available
from tests.support.web import Browser

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not redis_available(), reason="redis-server is not installed")]


def _title(text: str) -> str:
    found = re.search(r"<title>(.*?)</title>", text, re.S)
    return found.group(1).strip() if found else ""


def test_a_refusing_tool_gets_the_same_answer_through_either_node(tmp_path: Path) -> None:
    with redis_nodes(tmp_path, "a", "b",
                     CONNECT_PEER_SECRET="cluster-refused-test-peer-secret") as (a, b):
        # its tunnel is held by node A; its tool's restart window is 3 s (default 10 s)
        created = a.studio(client_env={"CONNECT_TOOL_RESTART_WAIT": "3s"})
        sid = created["id"]
        browser = Browser(timeout=30)
        login = browser.use_login_link(created["login_link"])
        assert login.status == 200, (login.status, login.text[:300])
        up = browser.get(b.url(sid, "/api/info"))
        assert up.status == 200, (up.status, up.text[:300], b.gw.output()[-2000:])

        a.tools["/"].stop()  # the tunnel stays up; the connect client resets the streams
        # Through the holder first: the connect client waits its restart window once.
        here = browser.get(a.url(sid, "/api/info?holder"))
        assert here.status == 504, (here.status, here.text[:300])
        there = browser.get(b.url(sid, "/api/info?other"))
        assert there.status == here.status, (there.status, there.text[:300],
                                              b.gw.output()[-2000:])
        assert _title(there.text) == _title(here.text) == "Studio is not answering"
        assert there.text == here.text and sid in there.text  # the same page, word for word
        assert there.headers.get("Retry-After") == here.headers.get("Retry-After") == "10"
