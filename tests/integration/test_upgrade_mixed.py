"""An upgrade, with real processes: the previous release (OLD_RELEASE, its
studios_gateway taken from git, run with PYTHONPATH) and this tree side by side.

- A rolling upgrade: two `twistd` gateways on one real redis-server behind "one load
  balancer" (node A's address is CONNECT_PROXY_URL for both, one OpenID client, one
  storage root), node A on the previous release and node B on this one. Studios bind to
  each; OpenID logins made through one node open studios through the other; node B
  restarts; a session held by B is ended through A; logouts through each node end logins
  made through the other; A stops (to be upgraded) and its studio moves to B with its
  login. Nothing is refused, and no log has an error.
- A single node (embedded store) stopped on the previous release and started on this one
  on the same storage root: its studio binds again, logins and logouts hold, the stored
  OpenID client is kept and the start says it has no post-logout page.
- studios-connect of either release with the gateway of the other: bind, HTTP,
  WebSocket, ssh.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import pytest

from tests.integration.test_cluster_oidc_login import callback_from_idp, on_node
from tests.integration.test_login_process import open_ws
from tests.support.gateway import REPO
from tests.support.login import Gateway, IdPProcess, login_at_idp, oidc_env
from tests.support.redis_server import RedisServer, redis_available
from tests.support.studio import Connect
from tests.support.waiting import wait_until
from tests.support.web import Browser

#: The previous release: main at the start of the session that made this one.
OLD_RELEASE = "bda594d"


def _has_old_release() -> bool:
    return subprocess.run(["git", "-C", str(REPO), "cat-file", "-e", f"{OLD_RELEASE}^{{commit}}"],
                          capture_output=True).returncode == 0


pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not redis_available(), reason="redis-server is not installed"),
              pytest.mark.skipif(not _has_old_release(),
                                 reason=f"the previous release {OLD_RELEASE} is not in git")]


def old_tree(tmp_path: Path) -> Path:
    """The previous release's studios_gateway (with this tree's compiled modules, which
    did not change), for PYTHONPATH."""
    out = tmp_path / "old-release"
    out.mkdir()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", OLD_RELEASE, "studios_gateway"],
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(out)], input=archive, check=True)
    for so in (REPO / "studios_gateway").rglob("*.so"):
        shutil.copy(so, out / so.relative_to(REPO))
    return out


def errors(text: str) -> list[str]:
    return [line for line in text.splitlines()
            if "#error]" in line or "#critical]" in line or "Traceback" in line]


@pytest.fixture
def mixed(tmp_path: Path) -> Iterator[tuple[IdPProcess, Gateway, Gateway, Path]]:
    old = old_tree(tmp_path)
    idp = IdPProcess(tmp_path)
    redis = RedisServer(tmp_path / "redis")
    nodes: list[Gateway] = []
    try:
        redis.start()
        common = {"CONNECT_REDIS_ADDRESS": redis.address,
                  "CONNECT_STORAGE_ROOT": str(tmp_path / "storage"),
                  "CONNECT_PEER_SECRET": "upgrade-peer-secret",
                  # claims refreshed every second: each node's refresh script runs often
                  "CONNECT_TUNNEL_CLAIM_TTL": "3s", **oidc_env(idp)}
        nodes.append(Gateway(tmp_path / "a", PYTHONPATH=str(old), CONNECT_NODE_ID="node-a",
                             **common))
        nodes.append(Gateway(tmp_path / "b", public_url=nodes[0].proxy,
                             CONNECT_NODE_ID="node-b", **common))
        yield idp, nodes[0], nodes[1], old
    finally:
        for node in reversed(nodes):
            node.stop()
        redis.stop()
        idp.stop()


def bind_to_both(created: dict[str, Any], first: Gateway, then: Gateway) -> None:
    """studios-connect for a created session, with both nodes' tunnel ports (`first`'s
    first): it binds to `first`, and to `then` once `first` stops."""
    sid = created["id"]
    pin = parse_qs(urlsplit(created["connect_string"]).query)["pin"][0]
    gateways = ",".join(f"tls://127.0.0.1:{g.env['CONNECT_TUNNEL_PORT']}?pin={pin}"
                        for g in (first, then))
    tool = then.tool("/")
    then.parts.append(Connect(then.tmp_path, created["connect_string"], tool.port,
                              name=f"connect-{sid}", extra_env={"CONNECT_GATEWAY_URL": gateways}))
    wait_until(lambda: first.api(f"/api/sessions/{sid}")[1].get("connected"), timeout=20,
               what=f"studio {sid} bound")


def logged_in(browser: Browser, node: Gateway, studio: str, idp: IdPProcess) -> bool:
    """Whether `node` takes the browser's login cookie as a live login: its login page
    hands the login on to the studio, rather than sending the browser to the issuer."""
    begun = browser.get(f"{node.proxy}/_connect/login?next={quote(studio)}", follow=False)
    assert begun.status == 302, (begun.status, begun.text[:300])
    return not begun.headers["Location"].startswith(idp.issuer)


def test_an_old_and_a_new_node_share_studios_logins_and_logouts(
        mixed: tuple[IdPProcess, Gateway, Gateway, Path]) -> None:
    idp, a, b, _ = mixed
    on_a = a.api("/api/sessions", "POST", {"owner": "alice"})[1]
    bind_to_both(on_a, a, b)  # held by the old node; moves to the new one when it stops
    on_b = b.studio()  # held by the new node
    sid_a, sid_b = on_a["id"], on_b["id"]
    assert a.api(f"/api/sessions/{sid_a}")[1]["tunnel"]["node"] == "node-a"
    assert a.api(f"/api/sessions/{sid_b}")[1]["tunnel"]["node"] == "node-b"

    # Alice logs in through the old node (the public address is A's) and opens both
    # studios, each through the node that does not hold it.
    alice = Browser()
    landed = login_at_idp(alice, a.url(sid_b, "/api/info"), "alice")
    assert landed.status == 200 and landed.json()["headers"]["x-connect-sub"] == ["alice"]
    assert alice.get(b.url(sid_a, "/api/info")).json()["headers"]["x-connect-sub"] == ["alice"]
    open_ws(b, alice, sid_a).close()

    # Bob logs in through the new node (begun and finished there) and opens his studio
    # through the old one.
    on_b2 = b.api("/api/sessions", "POST", {"owner": "bob"})[1]
    b.connect(on_b2["id"], on_b2["connect_string"])
    bob = Browser()
    begun = bob.get(f"{b.proxy}/_connect/login?next=" + quote(a.url(on_b2["id"], "/api/info")),
                    follow=False)
    finished = bob.get(on_node(callback_from_idp(bob, begun, "bob"), b))
    assert finished.status == 200, (finished.status, finished.text[:300])
    assert finished.json()["headers"]["x-connect-sub"] == ["bob"]
    assert bob.get(b.url(on_b2["id"], "/api/info")).json()["headers"]["x-connect-sub"] == ["bob"]
    bobs = {"localhost": dict(bob.cookies["localhost"])}  # his login cookie, kept
    assert logged_in(Browser(cookies=bobs), b, a.url(sid_b), idp)

    # The new node restarts: its studio comes back, usable through the old one.
    b.restart()
    wait_until(lambda: a.api(f"/api/sessions/{sid_b}")[1].get("connected"), timeout=30,
               what="the new node's studio bound again after its restart")
    assert alice.get(a.url(sid_b, "/api/info")).status == 200

    # A session held by the new node, ended through the old one.
    assert a.api(f"/api/sessions/{on_b2['id']}", "DELETE")[0] in (200, 204)
    wait_until(lambda: b.api(f"/api/sessions/{on_b2['id']}")[0] == 404, timeout=10,
               what="the ended session gone on the new node")

    # Bob's login (made through the new node) ends through the old one.
    out = bob.log_out(f"{a.proxy}/_connect/logout")
    assert out.status == 200, out.text[:300]
    wait_until(lambda: not logged_in(Browser(cookies=bobs), b, a.url(sid_b), idp),
               timeout=5, what="bob's logout through the old node heard by the new one")

    # The old node stops, to be upgraded: its studio moves to the new node, and alice's
    # login made through the old node works there.
    a.gw.stop()
    wait_until(lambda: (b.api(f"/api/sessions/{sid_a}")[1].get("tunnel") or {}).get("node")
               == "node-b", timeout=30, what="the old node's studio bound to the new node")
    assert alice.get(b.url(sid_a, "/api/info")).json()["headers"]["x-connect-sub"] == ["alice"]
    ws = open_ws(b, alice, sid_a)
    # ... and ends through the new node, closing her WebSocket.
    out = alice.log_out(f"{b.proxy}/_connect/logout")
    assert out.status == 200 and "Logged out" in out.text, out.text[:300]
    ws.wait_closed(5)
    assert alice.get(b.url(sid_a, "/api/info"), follow=False).status == 302

    for log in [*a.tmp_path.glob("gateway*.log"), *b.tmp_path.glob("gateway*.log")]:
        assert errors(log.read_text()) == [], (log, log.read_text()[-4000:])


@pytest.mark.parametrize("gateway_release,connect_release",
                         [("old", "new"), ("new", "old")])
def test_studios_connect_and_the_gateway_of_either_release_work_together(
        tmp_path: Path, gateway_release: str, connect_release: str) -> None:
    """A studio image and the gateway upgraded at different times: bind, HTTP,
    WebSocket and ssh, with studios-connect of one release and the gateway of the other."""
    old = str(old_tree(tmp_path))
    tree = {"old": old, "new": str(REPO)}
    g = Gateway(tmp_path / "gw", PYTHONPATH=tree[gateway_release], CONNECT_SSH_ENABLED="true")
    try:
        created = g.api("/api/sessions", "POST", {"owner": "alice", "ssh_enabled": True})[1]
        sid = created["id"]
        tool = g.tool("/")
        client = Connect(g.tmp_path, created["connect_string"], tool.port,
                         name=f"connect-{connect_release}",
                         extra_env={"PYTHONPATH": tree[connect_release]})
        g.parts.append(client)
        wait_until(lambda: g.api(f"/api/sessions/{sid}")[1].get("connected"), timeout=20,
                   what=f"the {connect_release} studios-connect bound")
        alice = Browser()
        landed = alice.use_login_link(created["login_link"])
        assert landed.status == 200 and landed.url == g.url(sid, "/"), landed.text[:300]
        assert alice.get(g.url(sid, "/api/info")).json()["headers"]["x-connect-sub"] == ["alice"]
        open_ws(g, alice, sid).close()

        key = tmp_path / "alice_key"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)],
                       check=True)
        assert g.api("/api/users/alice/keys", "PUT",
                     {"keys": [key.with_suffix(".pub").read_text()]})[0] == 200
        port = g.env["CONNECT_SSH_ADDR"].rsplit(":", 1)[1]
        r = subprocess.run(
            ["ssh", "-F", "/dev/null", "-o", "StrictHostKeyChecking=no", "-o",
             f"UserKnownHostsFile={tmp_path / 'known_hosts'}", "-o", "IdentitiesOnly=yes",
             "-o", "BatchMode=yes", "-i", str(key), "-p", port, f"alice@{sid}@127.0.0.1",
             'echo across-releases "${SSH_CONNECTION-unset}"'], capture_output=True,
            text=True, timeout=30, stdin=subprocess.DEVNULL)
        # The new gateway's client-address@studios-gateway is ignored by an old studio
        # (which sets no SSH_CONNECTION); a new studio behind an old gateway says what
        # sshd says for a connection that is no socket.
        told = {"old": "UNKNOWN 65535 UNKNOWN 65535", "new": "unset"}[gateway_release]
        assert r.returncode == 0 and r.stdout == f"across-releases {told}\n", (
            r.stdout, r.stderr, client.output()[-2000:])
        for text in (g.gw.output(), client.output()):
            assert errors(text) == [], text[-4000:]
    finally:
        g.stop()


def test_a_single_node_upgraded_in_place_keeps_its_studios_and_logins(tmp_path: Path) -> None:
    """The embedded store: the previous release stops, this one starts on the same ports
    and CONNECT_STORAGE_ROOT (sessions, logout journal, OpenID client, signing key,
    tunnel certificate)."""
    old = old_tree(tmp_path)
    idp = IdPProcess(tmp_path)
    g = None
    try:
        g = Gateway(tmp_path / "node", PYTHONPATH=str(old), **oidc_env(idp))
        created = g.studio()  # owner alice
        sid = created["id"]
        alice, bob = Browser(), Browser()
        assert login_at_idp(alice, g.url(sid, "/api/info"), "alice").status == 200
        login_at_idp(bob, g.url(sid, "/api/info"), "bob")
        bobs = {"localhost": dict(bob.cookies["localhost"])}
        assert bob.log_out(f"{g.proxy}/_connect/logout").status == 200
        stored = sorted(p.name for p in (tmp_path / "node" / "storage").iterdir())

        g.env["PYTHONPATH"] = str(REPO)  # the upgrade
        g.restart()
        wait_until(lambda: g.api(f"/api/sessions/{sid}")[1].get("connected"), timeout=30,
                   what="the studio bound again to the upgraded gateway")
        # alice's login goes on; bob's logout holds; the studio answers, WebSocket too
        assert alice.get(g.url(sid, "/api/info")).json()["headers"]["x-connect-sub"] == ["alice"]
        open_ws(g, alice, sid).close()
        assert not logged_in(Browser(cookies=bobs), g, g.url(sid), idp)
        assert not logged_in(Browser(cookies=bobs), g, g.url(sid), idp)
        again = g.gw.output()
        assert errors(again) == [], again[-4000:]
        assert [line for line in again.splitlines() if "#warn]" in line
                and "is short" not in line and "CONNECT_REDIS_ADDRESS is not set" not in line
                ] == [], again[-4000:]
        # The stored OpenID client is kept (no new registration), with its post-logout
        # page: the issuer's logout link asks for the way back. (A client stored by a
        # release before that page, 17ebd73 and older: test_auth_oidc.)
        assert "using the OIDC client" in again
        assert "registered by an earlier release" not in again
        out = alice.log_out(f"{g.proxy}/_connect/logout")
        assert "Also log out of" in out.text and "post_logout_redirect_uri" in out.text
        # nothing renamed or left behind (sessions.json is written at the old one's stop)
        after = sorted(p.name for p in (tmp_path / "node" / "storage").iterdir())
        assert set(after) - set(stored) <= {"sessions.json"}, (stored, after)
    finally:
        if g is not None:
            g.stop()
        idp.stop()
