"""Login with real processes: `twistd studios-gateway` logs people in against an OpenID
provider running as its own process (tests/support/idp.py), studios are real
`studios-connect` + demo tool pairs, and a browser follows every redirect."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.support.login import Gateway, IdPProcess, login_at_idp, oidc_env
from tests.support.web import Browser

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
    g = Gateway(tmp_path_factory.mktemp("subdomain"), **oidc_env(idp, LOCAL_CACHE_TTL="2s"))
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
    assert list(studio_cookies) == ["connect_session"]
    # That cookie, sent to studio B, opens nothing there: back to the login.
    stolen = studio_cookies["connect_session"][0]
    thief = Browser()
    refused = thief.get(g.url(b["id"], "/api/info"), follow=False,
                        headers={"Cookie": f"connect_session={stolen}"})
    assert refused.status == 302 and "/_connect/login" in refused.headers["Location"]
    # A WebSocket upgrade with it is refused too.
    ws = thief.get(g.url(b["id"], "/ws"), follow=False, headers={
        "Cookie": f"connect_session={stolen}", "Connection": "Upgrade",
        "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="})
    assert ws.status == 401
    # Alice herself opens B without the IdP: the proxy host's login cookie hands it over.
    assert info(browser, g.url(b["id"], "/api/info"))["headers"]["x-connect-sub"] == ["alice"]
    # Bob (on A's allow-list) gets in to A; not to B (neither owner nor listed): 403.
    bob = Browser()
    assert login_at_idp(bob, g.url(a["id"], "/api/info"), "bob").json()["headers"][
        "x-connect-sub"] == ["bob"]
    denied = bob.get(g.url(b["id"], "/api/info"))
    assert denied.status == 403 and "Access denied" in denied.text
    assert "bob may not use studio" in denied.text


def test_a_stranger_gets_403(subdomain: Gateway) -> None:
    a = subdomain.studio(allowed_users=["bob"])
    carol = Browser()
    denied = login_at_idp(carol, subdomain.url(a["id"], "/"), "carol")
    assert denied.status == 403 and "carol may not use studio" in denied.text
    assert "X-Connect-Sub" not in denied.text


def test_path_mode_login(idp: IdPProcess, tmp_path: Path) -> None:
    g = Gateway(tmp_path, **oidc_env(idp, TOWER_DATA_STUDIO_ENABLE_PATH_ROUTING="true"))
    try:
        a = g.studio(id="pth")
        b = g.studio(id="other")
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
