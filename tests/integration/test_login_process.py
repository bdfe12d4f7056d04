"""Login with real processes: `twistd studios-gateway` logs people in against an OpenID
provider running as its own process (tests/support/idp.py, and oidc-provider-mock),
studios are real `studios-connect` + demo tool pairs, a browser follows every
redirect, WebSockets and OpenSSH sessions go through the proxy.

Shown here: the subdomain login (registration, PKCE, hand-off, X-Connect-Sub,
one studio's cookie opens no other, 403 for strangers), path mode, HTTPS cookie
attributes, live revocation (allow-list change, session end, logout, the
Platform's no within LOCAL_CACHE_TTL), login links without an issuer (once,
also across a restart), registration kept across a restart, a wrong initial
access token, an issuer that is down at start, the issuer's own logout from the
logged-out page (RP-Initiated Logout) making the next login ask again, "Log in as someone
else" making an issuer that keeps its own login ask again (prompt=login), and saying so
when the issuer ignores that."""

from __future__ import annotations

import contextlib
import html
import importlib.util
import json
import re
import shutil
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, parse_qsl, urlencode, urljoin, urlsplit

import pytest

from studios_gateway.wire.tls import fingerprint_pem, make_self_signed
from tests.support.gateway import BIN, base_env, run_twistd
from tests.support.idp import DEFAULT_REGISTRATION_TOKEN, _Form
from tests.support.login import (
    USERS,
    Gateway,
    IdPProcess,
    MockProviderProcess,
    login_at_idp,
    oidc_env,
)
from tests.support.ports import free_port
from tests.support.redis_server import RedisServer, redis_available
from tests.support.waiting import wait_until
from tests.support.web import Browser, Reply
from tests.support.websocket import WebSocket

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def idp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[IdPProcess]:
    p = IdPProcess(tmp_path_factory.mktemp("idp"))
    try:
        yield p
    finally:
        p.stop()


@pytest.fixture(scope="module")
def subdomain(idp: IdPProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    g = Gateway(tmp_path_factory.mktemp("subdomain"),
                **oidc_env(idp, LOCAL_CACHE_TTL="2s", CONNECT_SSH_ENABLED="true"))
    try:
        yield g
    finally:
        g.stop()


def info(browser: Browser, url: str) -> dict:
    reply = browser.get(url)
    assert reply.status == 200, (reply.status, reply.url, reply.text[:300])
    return reply.json()


def test_subdomain_login_reaches_the_tool_as_the_user(subdomain: Gateway) -> None:
    g = subdomain
    a = g.studio(allowed_users=["bob"])
    b = g.studio()
    # Anonymous: sent to the proxy host's login, which sends the browser to the IdP with
    # PKCE S256, state and nonce, for the client the gateway registered at start.
    browser = Browser()
    first = browser.get(g.url(a["id"], "/api/info?x=1"), follow=False)
    assert first.status == 302
    login = first.headers["Location"]
    assert login.startswith(f"{g.proxy}/_connect/login?next="), login
    to_idp = browser.get(login, follow=False)
    authorize = urlsplit(to_idp.headers["Location"])
    assert f"{authorize.scheme}://{authorize.netloc}" == g.env["PLATFORM_URL"]
    q = {k: v[0] for k, v in parse_qs(authorize.query).items()}
    assert q["code_challenge_method"] == "S256" and q["code_challenge"]
    assert q["state"] and q["nonce"] and q["redirect_uri"] == f"{g.proxy}/_connect/callback"
    client = json.loads((Path(g.env["CONNECT_STORAGE_ROOT"]) / "oidc-client.json").read_text())
    assert q["client_id"] == client["client_id"]
    # The login form, the callback, the hand-off to the studio's host, the tool.
    landed = login_at_idp(browser, g.url(a["id"], "/api/info?x=1"), "alice")
    assert landed.status == 200 and landed.url == g.url(a["id"], "/api/info?x=1")
    seen = landed.json()
    assert seen["headers"]["x-connect-sub"] == ["alice"]
    assert "cookie" not in seen["headers"], "the gateway's cookies reach the tool"
    studio_cookies = browser.cookies[f"{a['id']}.localhost"]
    # the studio's login, and the hand-off cookie its hand-offs must name
    assert sorted(studio_cookies) == ["connect_handoff", "connect_session"]
    assert studio_cookies["connect_handoff"][1] == "/_connect/"
    # That cookie, sent to studio B, opens nothing there: back to the login.
    stolen = studio_cookies["connect_session"][0]
    thief = Browser()
    refused = thief.get(g.url(b["id"], "/api/info"), follow=False,
                        headers={"Cookie": f"connect_session={stolen}"})
    assert refused.status == 302 and "/_connect/login" in refused.headers["Location"]
    # A WebSocket upgrade with it is refused too.
    with pytest.raises(AssertionError, match="refused: 401"):
        WebSocket(g.http_port, f"{b['id']}.localhost:{g.http_port}", "/ws",
                  headers={"Cookie": f"connect_session={stolen}"})
    # Alice herself opens B without the IdP: the proxy host's login cookie hands it over.
    assert info(browser, g.url(b["id"], "/api/info"))["headers"]["x-connect-sub"] == ["alice"]
    # Nobody can claim to be someone else by sending the header.
    spoofed = browser.get(g.url(b["id"], "/api/info"), headers={"X-Connect-Sub": "mallory"})
    assert spoofed.json()["headers"]["x-connect-sub"] == ["alice"]
    # Bob (on A's allow-list) gets in to A; not to B (neither owner nor listed): 403.
    bob = Browser()
    assert login_at_idp(bob, g.url(a["id"], "/api/info"), "bob").json()["headers"][
        "x-connect-sub"] == ["bob"]
    denied = bob.get(g.url(b["id"], "/api/info"))
    assert denied.status == 403 and "Access denied" in denied.text
    assert "You are logged in as bob, and studio " in denied.text


def test_a_stranger_gets_403(subdomain: Gateway) -> None:
    a = subdomain.studio(allowed_users=["bob"])
    carol = Browser()
    denied = login_at_idp(carol, subdomain.url(a["id"], "/"), "carol")
    assert denied.status == 403 and "You are logged in as carol, and studio" in denied.text
    with pytest.raises(AssertionError, match="refused: 403"):
        open_ws(subdomain, carol, a["id"])


def test_a_callback_link_opened_in_another_browser_logs_nobody_in(subdomain: Gateway) -> None:
    """Login CSRF against a real gateway and issuer: bob begins a login to his own studio,
    logs in at the issuer and keeps the callback link (his state and code) instead of
    following it. Opened in alice's browser it logged her in as bob (the gateway set bob's
    login cookie there). Now the callback is refused in any browser but the one that
    began the login, bob's code is never exchanged, and in bob's browser the same kind
    of link still works."""
    g = subdomain
    bobs = g.studio(owner="bob")["id"]
    bob = Browser()
    begun = bob.get(f"{g.proxy}/_connect/login?next={g.url(bobs)}", follow=False)
    assert begun.status == 302
    assert "connect_browser" in bob.cookies["localhost"]
    form_page = bob.get(begun.headers["Location"])
    form = _Form()
    form.feed(form_page.text)
    at_idp = bob.request(urljoin(form_page.url, form.action or ""), method="POST",
                         body=urlencode({**form.fields, "username": "bob",
                                         "password": "bob-pw"}).encode(),
                         headers={"Content-Type": "application/x-www-form-urlencoded"},
                         follow=False)
    callback = at_idp.headers["Location"]
    assert callback.startswith(f"{g.proxy}/_connect/callback?"), callback
    alice = Browser()
    refused = alice.get(callback, follow=False)
    assert refused.status == 400 and "begun in another browser" in refused.text
    assert refused.headers.get_all("Set-Cookie") is None
    assert alice.cookies == {}
    wait_until(lambda: "a login was refused: this" in g.gw.output(), "the refusal logged")
    # bob's own browser completes a login to his studio as before
    assert login_at_idp(bob, g.url(bobs, "/api/info"), "bob").json()["headers"][
        "x-connect-sub"] == ["bob"]


def test_a_post_from_another_studios_page_is_refused(tmp_path: Path) -> None:
    """Subdomain mode: every studio is an origin of one site, so a browser sends the
    SameSite=Lax studio cookie with a form or fetch post that studio A's page makes to
    studio B; it reached B's tool as the visitor (only the tool's own CSRF check, if any,
    stood in the way). Such a post (as Chromium sends it: Sec-Fetch-Site and Origin, or
    Origin alone) is refused with 403; B's own pages and clients that are not browsers
    post as before."""
    g = Gateway(tmp_path)
    try:
        a, b = g.studio(), g.studio()
        alice = Browser()
        assert alice.use_login_link(b["login_link"]).status == 200
        page_a = g.url(a["id"], "")[:-1]
        for headers in ({"Sec-Fetch-Site": "same-site", "Origin": page_a}, {"Origin": page_a},
                        {"Sec-Fetch-Site": "cross-site", "Origin": "https://evil.example"}):
            refused = alice.request(g.url(b["id"], "/upload"), method="POST", body=b"x",
                                    headers=headers)
            assert refused.status == 403 and "own pages" in refused.text, refused.text
        for headers in ({"Sec-Fetch-Site": "same-origin", "Origin": g.url(b["id"], "")[:-1]},
                        {}):
            done = alice.request(g.url(b["id"], "/upload"), method="POST", body=b"x",
                                 headers=headers)
            assert done.status == 200 and done.json()["length"] == 1
        # GET (a link, an image) stays a GET: the studio's own page, whoever links to it
        assert alice.get(g.url(b["id"], "/api/info"),
                         headers={"Sec-Fetch-Site": "same-site", "Origin": page_a}).status == 200
        wait_until(lambda: "refused a POST from 127.0.0.1 to " in g.gw.output(),
                   "the refusal logged")
    finally:
        g.stop()


def test_a_handoff_made_from_someone_elses_login_is_not_taken(tmp_path: Path) -> None:
    """Login CSRF through the hand-off, with a real gateway: bob (on alice's studio's
    list) asks the proxy host for a hand-off to it with his own login and has alice's
    browser open the URL. Her browser got the studio's cookie as bob, over her own, and
    the tool saw bob. Now the studio's host sends an unbound code back to the proxy host,
    where her own login makes the code; one bound to another browser is refused."""
    g = Gateway(tmp_path)
    try:
        x = g.studio(owner="alice", allowed_users=["bob"])
        status, made = g.api(f"/api/sessions/{x['id']}/login-links", "POST", {"user": "bob"})
        assert status == 201, made
        bob, alice = Browser(), Browser()
        assert bob.use_login_link(made["login_link"]).status == 200
        assert alice.use_login_link(x["login_link"]).status == 200
        info = g.url(x["id"], "/api/info")
        ask = f"{g.proxy}/_connect/login?next={info}"
        for bind in ("", "&bind=" + "b" * 43):
            handoff = bob.get(ask + bind, follow=False).headers["Location"]
            assert "/_connect/handoff?code=" in handoff
            opened = alice.get(handoff)
            if bind:
                assert opened.status == 400 and "Login link expired" in opened.text
            else:
                assert opened.status == 200 and opened.url == info
            assert alice.get(info).json()["headers"]["x-connect-sub"] == ["alice"]
        # bob's own browser still opens it as bob
        assert bob.get(info).json()["headers"]["x-connect-sub"] == ["bob"]
    finally:
        g.stop()


def test_path_mode_login(idp: IdPProcess, tmp_path: Path) -> None:
    g = Gateway(tmp_path, **oidc_env(idp, TOWER_DATA_STUDIO_ENABLE_PATH_ROUTING="true"))
    try:
        a = g.studio(id="pth")
        # Another session (no studio needed: the cookie is refused before any routing).
        status, b = g.api("/api/sessions", "POST", {"owner": "alice", "id": "other"})
        assert status == 201
        browser = Browser()
        landed = login_at_idp(browser, g.url("pth", "/api/info"), "alice")
        assert landed.status == 200 and landed.url == g.url("pth", "/api/info")
        assert landed.json()["headers"]["x-connect-sub"] == ["alice"]
        jar = browser.cookies["localhost"]
        assert jar["connect_session"][1] == "/_studio/pth/"
        stolen = jar["connect_session"][0]
        refused = Browser().get(g.url(b["id"], "/api/info"), follow=False,
                                headers={"Cookie": f"connect_session={stolen}"})
        assert refused.status == 302 and "/_connect/login" in refused.headers["Location"]
        assert a["id"] == "pth"
    finally:
        g.stop()


# Live revocation -------------------------------------------------------------------------


def open_ws(g: Gateway, browser: Browser, sid: str) -> WebSocket:
    """The demo tool's /ws echo through the proxy, with the browser's cookie for `sid`."""
    cookie = browser._cookie_header(f"{sid}.localhost", "/ws")
    assert cookie, "not logged in to that studio"
    ws = WebSocket(g.http_port, f"{sid}.localhost:{g.http_port}", "/ws",
                   headers={"Cookie": cookie}, timeout=10)
    assert echo(ws, "hello") == "hello"
    return ws


def echo(ws: WebSocket, text: str) -> str:
    ws.send_text(text)
    return ws.recv_text()


def echoes(ws: WebSocket) -> bool:
    return echo(ws, "still there?") == "still there?"


TTL = 2.0


def logged_in(g: Gateway, sid: str, user: str) -> Browser:
    browser = Browser()
    landed = login_at_idp(browser, g.url(sid, "/api/info"), user)
    assert landed.json()["headers"]["x-connect-sub"] == [user]
    return browser


def test_taking_a_user_off_the_allow_list_closes_their_websocket(subdomain: Gateway) -> None:
    g = subdomain
    sid = g.studio(allowed_users=["bob", "carol"])["id"]
    users = {u: logged_in(g, sid, u) for u in ("alice", "bob", "carol")}
    socks = {u: open_ws(g, b, sid) for u, b in users.items()}
    status, changed = g.api(f"/api/sessions/{sid}", "PATCH", {"allowed_users": ["carol"]})
    assert status == 200 and changed["allowed_users"] == ["carol"]
    took = socks["bob"].wait_closed(TTL + 1)
    assert echoes(socks["alice"]) and echoes(socks["carol"])
    assert users["bob"].get(g.url(sid, "/api/info")).status == 403
    # Ending the session closes everybody's.
    status, _ = g.api(f"/api/sessions/{sid}", "DELETE")
    assert status == 200
    for user in ("alice", "carol"):
        socks[user].wait_closed(TTL + 1)
    print(f"allow-list removal closed the WebSocket in {took:.3f}s")


def test_logout_closes_that_logins_websocket(subdomain: Gateway) -> None:
    g = subdomain
    sid = g.studio(allowed_users=["bob"])["id"]
    alice, bob = logged_in(g, sid, "alice"), logged_in(g, sid, "bob")
    mine, his = open_ws(g, alice, sid), open_ws(g, bob, sid)
    # Another studio's page (the same site) loading her logout as an image, or another
    # site's link to it, or a form of theirs posting to it, ends nothing (logout CSRF).
    other = g.studio()["id"]
    for url in (g.url(sid, "/_connect/logout"), f"{g.proxy}/_connect/logout"):
        asked = alice.get(url, headers={"Sec-Fetch-Site": "same-site"})
        assert asked.status == 200 and "Log out of the studios gateway?" in asked.text
    logout = f"{g.proxy}/_connect/logout"
    refused = alice.request(logout, method="POST", headers={
        "Sec-Fetch-Site": "same-site", "Origin": g.url(other, "")[:-1]})
    assert refused.status == 403 and "posted from another site" in refused.text
    # The studio's own host (its tool's origin) only leads to the proxy host's page.
    there = alice.request(g.url(sid, "/_connect/logout"), method="POST", follow=False,
                          headers={"Sec-Fetch-Site": "same-origin"})
    assert there.status == 303 and there.headers["Location"] == logout
    assert echoes(mine)
    out = alice.log_out(g.url(sid, "/_connect/logout"))
    assert out.status == 200 and "Logged out" in out.text
    mine.wait_closed(TTL + 1)
    assert echoes(his)
    # Her old cookie is dead: the studio sends her back to the login (the IdP's form).
    again = alice.get(g.url(sid, "/api/info"))
    assert 'name="password"' in again.text


class SSHSession:
    """`ssh user@session@127.0.0.1 cat`, kept running: an open SSH channel to the studio."""

    def __init__(self, g: Gateway, user: str, sid: str):
        key = g.tmp_path / f"{user}_key"
        if not key.exists():
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)],
                           check=True)
            status, body = g.api(f"/api/users/{user}/keys", "PUT",
                                 {"keys": [key.with_suffix(".pub").read_text()]})
            assert status == 200, body
        port = g.env["CONNECT_SSH_ADDR"].rsplit(":", 1)[1]
        self.proc = subprocess.Popen(
            ["ssh", "-F", "/dev/null", "-o", "StrictHostKeyChecking=no", "-o",
             f"UserKnownHostsFile={g.tmp_path / 'known_hosts'}", "-o", "BatchMode=yes",
             "-o", "IdentitiesOnly=yes", "-i", str(key), "-p", port,
             f"{user}@{sid}@127.0.0.1", "echo ready; exec cat"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        if self.line() != "ready":
            raise AssertionError(f"ssh failed: {self.proc.communicate()[1].decode()}")

    def line(self) -> str:
        assert self.proc.stdout is not None
        return self.proc.stdout.readline().decode().strip()

    def echo(self, text: str) -> bool:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{text}\n".encode())
        self.proc.stdin.flush()
        return self.line() == text

    def wait_closed(self, seconds: float) -> None:
        self.proc.wait(timeout=seconds)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate()


@pytest.mark.skipif(shutil.which("ssh") is None, reason="OpenSSH client not installed")
def test_taking_a_user_off_the_allow_list_ends_their_ssh_session(subdomain: Gateway) -> None:
    g = subdomain
    sid = g.studio(allowed_users=["bob"], ssh_enabled=True)["id"]
    alice, bob = SSHSession(g, "alice", sid), SSHSession(g, "bob", sid)
    try:
        status, _ = g.api(f"/api/sessions/{sid}", "PATCH", {"allowed_users": []})
        assert status == 200
        bob.wait_closed(TTL + 1)
        assert alice.echo("alice is still in")
    finally:
        alice.stop()
        bob.stop()


@pytest.mark.skipif(shutil.which("ssh") is None, reason="OpenSSH client not installed")
def test_the_platforms_ssh_keys_let_a_user_in(subdomain: Gateway, idp: IdPProcess) -> None:
    """Dave has no key registered with the gateway; the Platform lists his (docs/ssh.md)."""
    g = subdomain
    sid = g.studio(allowed_users=["dave"], ssh_enabled=True)["id"]
    key = g.tmp_path / "dave_platform_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    idp.set_ssh_keys("dave", [key.with_suffix(".pub").read_text().strip()])
    done = subprocess.run(
        ["ssh", "-F", "/dev/null", "-o", "StrictHostKeyChecking=no", "-o",
         f"UserKnownHostsFile={g.tmp_path / 'known_hosts'}", "-o", "BatchMode=yes",
         "-o", "IdentitiesOnly=yes", "-i", str(key), "-p", g.env["CONNECT_SSH_ADDR"].rsplit(
             ":", 1)[1], f"dave@{sid}@127.0.0.1", "echo platform-key"],
        capture_output=True, text=True, timeout=20, stdin=subprocess.DEVNULL)
    assert done.returncode == 0 and done.stdout == "platform-key\n", done.stderr
    # Operators see the Platform's calls in the metrics.
    assert counter(g, 'studios_gateway_platform_calls_total{call="ssh_keys",'
                      'outcome="answered"}') >= 1


def counter(g: Gateway, series: str) -> float:
    """One series' value in the gateway's /metrics."""
    status, body, _ = g.gw.request("/metrics")
    assert status == 200
    for line in body.decode().splitlines():
        if line.startswith(series + " "):
            return float(line.rpartition(" ")[2])
    raise AssertionError(f"no {series} in /metrics")


# Without an issuer: one-time login links ------------------------------------------------


def cli(g: Gateway, *args: str) -> str:
    env = {**g.env, "CONNECT_MANAGEMENT_PORT": str(g.gw.management_port)}
    done = subprocess.run([str(BIN / "studios-gateway"), "sessions", *args], env=env,
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_without_an_issuer_only_login_links_open_a_studio(tmp_path: Path) -> None:
    g = Gateway(tmp_path)
    try:
        out = cli(g, "create", "--owner", "alice", "--id", "emb", "--allow", "bob")
        lines = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
        link, connect = lines["login link"].strip(), lines["connect string"].strip()
        assert link.startswith(f"{g.proxy}/_connect/link?token="), out
        g.connect("emb", connect)
        # Nobody gets the tool without the link: a page load ends on the "ask for a link"
        # page, anything else and a WebSocket get 401, a made-up cookie changes nothing.
        anonymous = Browser()
        page = anonymous.get(g.url("emb", "/api/info"))
        assert page.status == 401 and "one-time links" in page.text
        for method in ("POST", "PUT", "DELETE"):
            assert anonymous.request(g.url("emb", "/upload"), method=method,
                                     body=b"x").status == 401
        forged = anonymous.get(g.url("emb", "/api/info"),
                               headers={"Cookie": "connect_session=alice"})
        assert forged.status == 401 and "x-connect-sub" not in forged.text
        with pytest.raises(AssertionError, match="refused: 401"):
            WebSocket(g.http_port, f"emb.localhost:{g.http_port}", "/ws")
        # The link works once.
        alice = Browser()
        landed = alice.use_login_link(link)
        assert landed.status == 200 and landed.url == g.url("emb", "/")
        assert info(alice, g.url("emb", "/api/info"))["headers"]["x-connect-sub"] == ["alice"]
        ws = open_ws(g, alice, "emb")
        again = Browser().get(link)
        assert again.status == 400 and "used already" in again.text
        assert Browser().request(link, method="POST").status == 400
        # The CLI changes the allow-list; alice, the owner, stays connected.
        assert "users=-" in cli(g, "users", "emb")
        assert echoes(ws)
        # SSH on and off through the same command (the API's PATCH ssh_enabled).
        assert "ssh=on" in cli(g, "ssh", "emb", "on")
        assert "ssh=off" in cli(g, "ssh", "emb", "off")
        # She logs out; a restart forgets neither the logout nor the used link.
        old_login = alice.cookies["localhost"]["connect_login"][0]
        assert alice.log_out(g.url("emb", "/_connect/logout")).status == 200
        ws.wait_closed(TTL + 1)
        g.restart()
        assert Browser().get(link).status == 400
        replay = Browser().get(f"{g.proxy}/_connect/login?next=/", follow=False,
                               headers={"Cookie": f"connect_login={old_login}"})
        assert replay.status == 401 and "one-time links" in replay.text
    finally:
        g.stop()


def test_a_platform_no_closes_the_websocket_within_the_ttl(idp: IdPProcess,
                                                           subdomain: Gateway) -> None:
    """Nobody tells the gateway: its re-check every LOCAL_CACHE_TTL finds the change."""
    g = subdomain
    sid = g.studio()["id"]
    idp.set_access(sid, "carol", True)
    carol = logged_in(g, sid, "carol")
    ws = open_ws(g, carol, sid)
    idp.set_access(sid, "carol", False)
    took = ws.wait_closed(TTL + 1)  # the TTL, and a second for a busy machine
    assert carol.get(g.url(sid, "/api/info")).status == 403
    print(f"the Platform's no closed the WebSocket after {took:.3f}s")
    assert counter(g, 'studios_gateway_platform_calls_total{call="access",'
                      'outcome="answered"}') >= 2


# Registration across restarts -----------------------------------------------------------


def test_registration_is_kept_across_a_restart_and_a_wrong_token_stops_the_start(
        idp: IdPProcess, tmp_path: Path) -> None:
    g = Gateway(tmp_path / "a", **oidc_env(idp))
    client_file = Path(g.env["CONNECT_STORAGE_ROOT"]) / "oidc-client.json"
    try:
        registered = json.loads(client_file.read_text())
        assert registered["client_name"] == "tower-connect-proxy-client"
        assert client_file.stat().st_mode & 0o777 == 0o600
        g.restart()
        assert json.loads(client_file.read_text()) == registered  # not registered again
        # A session without a studio is enough: the login completes with the kept client
        # (the code exchange authenticates it) and ends on the studio's "not connected".
        status, created = g.api("/api/sessions", "POST", {"owner": "alice"})
        assert status == 201
        browser = Browser()
        to_idp = browser.get(browser.get(g.url(created["id"]), follow=False)
                             .headers["Location"], follow=False)
        assert f"client_id={registered['client_id']}" in to_idp.headers["Location"]
        landed = login_at_idp(browser, g.url(created["id"]), "alice")
        assert landed.url == g.url(created["id"]) and landed.status == 503, landed.text
    finally:
        g.stop()
    (tmp_path / "b").mkdir()
    env = base_env(tmp_path / "b", CONNECT_PROXY_URL="http://localhost:1",
                   **oidc_env(idp, CONNECT_OIDC_CLIENT_REGISTRATION_TOKEN="not-the-S3CRET"))
    done = run_twistd(tmp_path / "b", env, timeout=30)
    assert done.returncode != 0
    assert "refused to register" in done.stderr + done.stdout
    assert "check CONNECT_OIDC_CLIENT_REGISTRATION_TOKEN" in done.stderr + done.stdout
    assert "S3CRET" not in done.stderr + done.stdout
    print(done.stderr.splitlines()[0])


# Over HTTPS ------------------------------------------------------------------------------


def test_over_https_the_studio_cookie_is_secure_and_host_only(idp: IdPProcess,
                                                              tmp_path: Path) -> None:
    cert_pem, key_pem = make_self_signed(["localhost", "*.studios.localhost"])
    (tmp_path / "cert.pem").write_bytes(cert_pem)
    (tmp_path / "key.pem").write_bytes(key_pem)
    g = Gateway(tmp_path, CONNECT_TLS_CERT_FILE=str(tmp_path / "cert.pem"),
                CONNECT_TLS_KEY_FILE=str(tmp_path / "key.pem"),
                CONNECT_STUDIOS_DOMAIN="studios.localhost", **oidc_env(idp))
    try:
        status, created = g.api("/api/sessions", "POST", {"owner": "alice"})
        assert status == 201 and created["url"].startswith("https://")
        sid = created["id"]
        # The tunnel serves the same certificate; the test's studio pins it.
        g.connect(sid, created["connect_string"].split("?")[0]
                  + f"?pin={fingerprint_pem(cert_pem)}")
        browser = Browser(tls=ssl.create_default_context(cadata=cert_pem.decode()))
        landed = login_at_idp(browser, g.url(sid, "/api/info"), "alice")
        assert landed.status == 200 and landed.url == g.url(sid, "/api/info")
        seen = landed.json()
        assert seen["headers"]["x-connect-sub"] == ["alice"] and "cookie" not in seen["headers"]
        cookies = {(host, raw.split("=", 1)[0]): [a.strip().lower() for a in raw.split(";")[1:]]
                   for host, raw in browser.set_cookies}
        studio = cookies[(f"{sid}.studios.localhost", "__Host-connect_session")]
        assert {"secure", "httponly", "samesite=lax", "path=/"} <= set(studio)
        assert not any(a.startswith("domain") for a in studio)
        login = cookies[("localhost", "__Host-connect_login")]  # HTTPS: __Host-, Path=/
        assert {"secure", "httponly", "samesite=lax", "path=/"} <= set(login)
        assert not any(a.startswith("domain") for a in login)
    finally:
        g.stop()


def test_an_issuer_that_is_down_at_start_is_waited_for(tmp_path: Path) -> None:
    port = free_port()
    g = Gateway(tmp_path, ready=False, PLATFORM_URL=f"http://127.0.0.1:{port}",
                CONNECT_OIDC_CLIENT_REGISTRATION_TOKEN=DEFAULT_REGISTRATION_TOKEN)
    idp = None
    try:
        status, body, _ = g.gw.request("/ready")
        assert status == 503 and json.loads(body)["checks"]["login"] == "starting"
        sid = g.studio()["id"]  # the gateway runs: sessions, tunnels
        down = Browser().get(g.url(sid, "/"))
        assert down.status == 503 and "cannot be reached" in down.text
        idp = IdPProcess(tmp_path, port=port)
        Browser().get(g.url(sid, "/"))  # a visitor: the gateway asks the issuer again now
        g.wait_ready(timeout=15)
        assert logged_in(g, sid, "alice")
        issuer = f"http://127.0.0.1:{port}"
        assert (f"OpenID discovery at {issuer}/.well-known/openid-configuration failed: "
                f"{issuer} cannot be reached; new logins fail until the issuer answers") \
            in g.gw.output()
    finally:
        g.stop()
        if idp is not None:
            idp.stop()


# An independent provider ----------------------------------------------------------------


@pytest.mark.skipif(importlib.util.find_spec("oidc_provider_mock") is None,
                    reason="oidc-provider-mock is not installed")
def test_the_gateway_logs_in_against_oidc_provider_mock(tmp_path: Path) -> None:
    mock = MockProviderProcess(tmp_path)
    g = None
    try:
        # Its own issuer (no Platform: owner and allow-list decide), dynamic registration.
        g = Gateway(tmp_path, CONNECT_OIDC_ISSUER_URL=mock.issuer,
                    CONNECT_OIDC_CLIENT_REGISTRATION_TOKEN="not-checked-by-the-mock")
        sid = g.studio(allowed_users=["dora"])["id"]
        browser = Browser()
        landed = login_at_idp(browser, g.url(sid, "/api/info"), "dora", {"sub": "dora"})
        assert landed.status == 200 and landed.url == g.url(sid, "/api/info")
        assert landed.json()["headers"]["x-connect-sub"] == ["dora"]
        assert echo(open_ws(g, browser, sid), "interop") == "interop"
        eve = login_at_idp(Browser(), g.url(sid, "/"), "eve", {"sub": "eve"})
        assert eve.status == 403
        # Its RP-Initiated Logout: the logged-out page's link (with the login's ID token)
        # leads to its "End session" form. Its registration answer lists no
        # post_logout_redirect_uris (it keeps none), so the link asks for no way back
        # (an issuer that does check them would refuse one it does not know): the
        # issuer's own page ends it.
        out = browser.log_out(f"{g.proxy}/_connect/logout")
        found = re.search(r'id=issuer-logout href="([^"]*)">Also log out of 127\.0\.0\.1:'
                          + str(mock.port) + "<", out.text)
        assert found is not None, out.text
        link = html.unescape(found.group(1))
        assert "id_token_hint=" in link and "post_logout_redirect_uri" not in link
        confirm = browser.get(link)
        assert confirm.status == 200 and "id_token_hint</code> not set" not in confirm.text
        form = _Form()
        form.feed(confirm.text[confirm.text.index('<form method="post"'):])
        ended = browser.request(urljoin(confirm.url, form.action or ""), method="POST",
                                body=urlencode(form.fields).encode(),
                                headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert ended.status == 200 and "Session ended." in ended.text
    finally:
        if g is not None:
            g.stop()
        mock.stop()


# Two nodes -------------------------------------------------------------------------------


@pytest.mark.skipif(not redis_available(), reason="redis-server is not installed")
def test_a_change_on_one_node_closes_websockets_on_another(idp: IdPProcess,
                                                           tmp_path: Path) -> None:
    """Two nodes on one Redis: bob's WebSocket goes through node B, the allow-list is
    changed on node A, the studio's tunnel (held by A) stays up."""
    redis = RedisServer(tmp_path / "redis")
    redis.start()
    nodes: list[Gateway] = []
    try:
        for name in ("a", "b"):  # one after the other: they share the storage (the key)
            nodes.append(Gateway(tmp_path, CONNECT_REDIS_ADDRESS=redis.address,
                                 CONNECT_PEER_SECRET="login-test-peer-secret",
                                 CONNECT_NODE_ID=f"node-{name}",
                                 **oidc_env(idp, LOCAL_CACHE_TTL="2s")))
        a, b = nodes
        sid = a.studio(allowed_users=["bob"])["id"]  # its tunnel is held by node A
        alice, bob = logged_in(b, sid, "alice"), logged_in(b, sid, "bob")
        hers, his = open_ws(b, alice, sid), open_ws(b, bob, sid)
        status, _ = a.api(f"/api/sessions/{sid}", "PATCH", {"allowed_users": []})
        assert status == 200
        took = his.wait_closed(TTL + 1)
        assert echoes(hers)
        status, _ = a.api(f"/api/sessions/{sid}", "DELETE")
        assert status == 200
        hers.wait_closed(TTL + 1)
        print(f"changed on node A; bob's WebSocket through node B closed in {took:.3f}s")
    finally:
        for node in reversed(nodes):
            node.stop()
        redis.stop()


# Logging out of the issuer too -------------------------------------------------------------


def test_logging_out_of_the_issuer_too_makes_the_next_login_ask_again(tmp_path: Path) -> None:
    """On a shared computer the issuer's own login outlived the gateway's "Log out": the
    next person to open a studio link was logged in as the last one without a word (shown
    first, below). The page after the logout links to the issuer's logout (OpenID Connect
    RP-Initiated Logout), which ends that login and sends the browser back; the next
    login asks for a password again. The test provider remembers signed-in browsers
    here (--sso), as real ones do."""
    import jwt

    idp = IdPProcess(tmp_path, sso=True)
    try:
        g = Gateway(tmp_path / "gw", **oidc_env(idp))
        try:
            registered = json.loads(
                (Path(g.env["CONNECT_STORAGE_ROOT"]) / "oidc-client.json").read_text())
            back = f"{g.proxy}/_connect/logged-out"
            assert registered["post_logout_redirect_uris"] == [back]
            sid = g.studio()["id"]
            browser = Browser()
            landed = login_at_idp(browser, g.url(sid, "/api/info"), "alice")
            assert landed.json()["headers"]["x-connect-sub"] == ["alice"]
            issuer_host = f"127.0.0.1:{idp.port}"

            # The gateway's logout alone: the issuer still knows this browser.
            out = browser.log_out(f"{g.proxy}/_connect/logout")
            assert out.status == 200 and f"Also log out of {issuer_host}" in out.text
            silently = browser.get(g.url(sid, "/api/info"))
            assert silently.json()["headers"]["x-connect-sub"] == ["alice"]
            assert idp.counts()["silent"] == 1

            # With the page's link: the issuer's logout, and back to the gateway.
            out = browser.log_out(f"{g.proxy}/_connect/logout")
            found = re.search(r'id=issuer-logout href="([^"]*)">Also log out of '
                              + re.escape(issuer_host) + "<", out.text)
            assert found is not None, out.text
            link = html.unescape(found.group(1))
            assert link.startswith(f"{idp.issuer}/logout?")
            q = dict(parse_qsl(urlsplit(link).query))
            assert q["client_id"] == registered["client_id"]
            assert q["post_logout_redirect_uri"] == back and q["state"]
            hint = jwt.decode(q["id_token_hint"], options={"verify_signature": False})
            assert (hint["sub"], hint["aud"]) == ("alice", registered["client_id"])
            returned = browser.get(link)
            assert returned.status == 200 and returned.url.startswith(back + "?state="), \
                (returned.status, returned.url)
            assert f"logged out of the studios gateway and of {issuer_host}." in returned.text
            assert idp.counts()["end_session"] == 1
            again = browser.get(g.url(sid, "/api/info"))
            assert 'name="password"' in again.text  # the issuer asks who this is
            assert idp.counts()["silent"] == 1
        finally:
            g.stop()
    finally:
        idp.stop()


# Log in as someone else ----------------------------------------------------------------------


def switch_link(text: str) -> str:
    """The href of an "Access denied" page's "Log in as someone else"."""
    found = re.search(r'<a autofocus href="([^"]*)">Log in as someone else</a>', text)
    assert found is not None, text
    return html.unescape(found.group(1))


def sign_in(browser: Browser, form_page: Reply, user: str) -> Reply:
    """Fill and send the test IdP's login form on `form_page` as `user`."""
    form = _Form()
    form.feed(form_page.text)
    assert form.action is not None, (form_page.status, form_page.url, form_page.text[:300])
    return browser.request(urljoin(form_page.url, form.action),
                           method="POST", body=urlencode(
                               {**form.fields, "username": user,
                                "password": USERS[user]}).encode(),
                           headers={"Content-Type": "application/x-www-form-urlencoded"})


@contextlib.contextmanager
def denied_on_bobs_studio(tmp_path: Path, **idp_args: Any
                          ) -> Iterator[tuple[IdPProcess, Gateway, Browser, str, Reply]]:
    """A test IdP keeping its own login (--sso), a gateway, bob's studio, and a browser
    in which alice logged in (an ordinary login: no prompt) and was refused it: the
    provider, the gateway, the browser, the studio's address and the "Access denied"."""
    idp = IdPProcess(tmp_path, sso=True, **idp_args)
    try:
        g = Gateway(tmp_path / "gw", **oidc_env(idp))
        try:
            info = g.url(g.studio(owner="bob")["id"], "/api/info")
            browser = Browser()
            form_page = browser.get(info)
            assert "prompt" not in dict(parse_qsl(urlsplit(form_page.url).query))
            denied = sign_in(browser, form_page, "alice")
            assert denied.status == 403 and "You are logged in as alice" in denied.text
            yield idp, g, browser, info, denied
        finally:
            g.stop()
    finally:
        idp.stop()


def test_log_in_as_someone_else_makes_the_issuer_ask_again(tmp_path: Path) -> None:
    """alice, logged in at an issuer that keeps its own login (--sso), opens bob's studio:
    "Access denied" and its "Log in as someone else". That link ended only the gateway's
    login; the login after it went to the issuer, which answered at once with alice, and
    she was back on "Access denied" (shown by the 'silent' count). Now that login asks the
    issuer for prompt=login: it shows its form, bob logs in, his studio opens. Ordinary
    logins still go through the issuer's own login without a word."""
    with denied_on_bobs_studio(tmp_path) as (idp, g, browser, info, denied):
        # The link: the gateway's logout (its "Log out" button), then the login.
        asked = browser.get(switch_link(denied.text))
        assert asked.status == 200 and 'method="post"' in asked.text, asked.text
        at_issuer = browser.request(asked.url, method="POST")
        assert at_issuer.url.startswith(f"{idp.issuer}/authorize?"), \
            (at_issuer.status, at_issuer.url, at_issuer.text[:300])
        assert dict(parse_qsl(urlsplit(at_issuer.url).query))["prompt"] == "login"
        assert 'name="password"' in at_issuer.text  # asked, not answered at once
        assert (idp.counts()["silent"], idp.counts()["prompted"]) == (0, 1)

        landed = sign_in(browser, at_issuer, "bob")
        assert landed.status == 200 and landed.url == info, (landed.status, landed.url)
        assert landed.json()["headers"]["x-connect-sub"] == ["bob"]

        # Only that login asked: after a plain logout the issuer's login (bob's now)
        # logs the browser in again without a word.
        browser.log_out(f"{g.proxy}/_connect/logout")
        again = browser.get(info)
        assert again.status == 200 and again.json()["headers"]["x-connect-sub"] == ["bob"]
        assert (idp.counts()["silent"], idp.counts()["prompted"]) == (1, 1)


def test_log_in_as_someone_else_with_an_issuer_that_ignores_prompt_login(tmp_path: Path
                                                                         ) -> None:
    """An issuer that ignores prompt=login while its own login is open (--keep-login): the
    login after the link came straight back as alice, who landed on the bare "Access
    denied" again, with no word of why. The gateway now sees the person it just logged
    out for it (and an auth_time from before) and says the issuer kept its login: alice
    is not logged in, and the page's "Also log out of <issuer>" ends the issuer's login;
    the page back from it leads to the studio's login, where bob logs in."""
    with denied_on_bobs_studio(tmp_path, keep_login=True) as (idp, g, browser, info, denied):
        asked = browser.get(switch_link(denied.text))
        kept = browser.request(asked.url, method="POST")
        issuer_host = f"127.0.0.1:{idp.port}"
        assert kept.status == 403 and f"{issuer_host} (the identity provider) did not ask " \
            "who you are: it kept its earlier login in this browser and logged you in as " \
            "alice again" in html.unescape(kept.text), (kept.status, kept.url, kept.text)
        assert (idp.counts()["silent"], idp.counts()["prompted"]) == (1, 0)
        assert not any("connect_login" in name for jar in browser.cookies.values()
                       for name in jar), browser.cookies  # nobody logged in
        found = re.search(r'id=issuer-logout href="([^"]*)">Also log out of '
                          + re.escape(issuer_host) + "<", kept.text)
        assert found is not None, kept.text
        back = browser.get(html.unescape(found.group(1)))
        assert back.status == 200 and "logged out of the studios gateway and of" \
            in back.text, back.text
        landed = sign_in(browser, browser.get(switch_link(back.text)), "bob")
        assert landed.status == 200 and landed.url == info, (landed.status, landed.url)
        assert landed.json()["headers"]["x-connect-sub"] == ["bob"]


def test_log_in_as_someone_else_with_an_issuer_without_prompt_login(tmp_path: Path) -> None:
    """An issuer whose discovery document lists prompt values without "login" (and, as
    some do, refuses a prompt value it does not list): the link does not send one (the
    login would fail with the issuer's invalid_request); it leads to the gateway's
    logout and the page after it, whose "Also log out of <issuer>" ends the issuer's
    login, so the next login asks who this is: the page back from the issuer links to it
    (that page had no way on: the person had to find the studio's link again)."""
    with denied_on_bobs_studio(tmp_path, prompt_values="") as (idp, g, browser, info, denied):
        link = switch_link(denied.text)
        assert link.startswith(f"{g.proxy}/_connect/logout?back="), link
        out = browser.log_out(link)
        found = re.search(r'id=issuer-logout href="([^"]*)">Also log out of ', out.text)
        assert out.status == 200 and found is not None, out.text
        assert "To log in as someone else, also log out of " in out.text
        back = browser.get(html.unescape(found.group(1)))
        assert back.status == 200 and "logged out of the studios gateway and of" \
            in back.text, back.text
        landed = sign_in(browser, browser.get(switch_link(back.text)), "bob")
        assert landed.url == info, landed.url
        assert landed.status == 200 and landed.json()["headers"]["x-connect-sub"] == ["bob"]
        assert (idp.counts()["silent"], idp.counts()["prompted"]) == (0, 0)
