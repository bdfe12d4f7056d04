"""HTTPS end to end in a real browser: CONNECT_TLS_CERT_FILE, a proxy URL on https://,
headless Chromium, in both routing modes.

Until a browser walked it, this path had never met one: the HTTPS port refused every
client that offers ALPN (every browser), and a logout left the browser's WebSockets
open over TLS. Python's test clients offered no ALPN and closed their own sockets, so
neither showed. Here Chromium resolves gw.test and its subdomains to 127.0.0.1 and
trusts the gateway's self-signed certificate by its key; everything else is what a
person does: the login link's "Open studio", the studio page and its WebSocket over
wss, a second studio, a logout from it, the used link again.
"""

from __future__ import annotations

import base64
import hashlib
import ssl
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from studios_gateway.wire.tls import make_self_signed
from tests.integration.test_tunnel_process import Deployment, wait_connected
from tests.support.chromium import Chromium, chromium_path
from tests.support.studio import Connect, Tool
from tests.support.waiting import wait_until

HOST = "gw.test"
#: What the browser must not report on any page of the walk.
ISSUES = {"MixedContentIssue", "CookieIssue", "ContentSecurityPolicyIssue"}


def spki_hash(cert_pem: bytes) -> str:
    """Chromium's --ignore-certificate-errors-spki-list form: base64(SHA-256(SPKI))."""
    key = x509.load_pem_x509_certificate(cert_pem).public_key()
    der = key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(der).digest()).decode()


def open_link(browser: Chromium, link: str) -> None:
    """The one-time link's page, then its "Open studio" button, as a person clicks it."""
    browser.call("Page.navigate", url=link)
    try:
        browser.wait_for("document.title == 'Open studio' && "
                         "!!document.querySelector('form button')", timeout=30)
    except AssertionError:  # Chromium's own error page says why (a TLS failure, say)
        page = browser.evaluate("location.href + ': ' + document.body.innerText")
        raise AssertionError(f"the login link's page did not load: {page[:400]}") from None
    browser.evaluate("document.querySelector('form button').click()")


def studio_is_connected(browser: Chromium, url: str) -> None:
    browser.wait_for(f"location.href == {url!r} && document.title == 'Demo studio'")
    browser.wait_for("document.getElementById('state').textContent == 'connected'")
    assert browser.evaluate("window.isSecureContext") is True
    assert browser.evaluate("document.getElementById('who').textContent") == "alice"


@pytest.mark.slow
@pytest.mark.skipif(chromium_path() is None, reason="chromium is not installed")
@pytest.mark.parametrize("mode", ["subdomain", "path"])
def test_https_login_studio_websocket_and_logout_in_chromium(tmp_path: Path, mode: str) -> None:
    cert_pem, key_pem = make_self_signed([HOST, f"*.{HOST}", "localhost"])
    cert, key = tmp_path / "fullchain.pem", tmp_path / "key.pem"
    cert.write_bytes(cert_pem)
    key.write_bytes(key_pem)
    path_mode = mode == "path"
    d = Deployment(tmp_path, tls=ssl.create_default_context(cafile=cert), host=HOST,
                   CONNECT_TLS_CERT_FILE=str(cert), CONNECT_TLS_KEY_FILE=str(key),
                   TOWER_DATA_STUDIO_ENABLE_PATH_ROUTING=str(path_mode).lower())
    browser: Chromium | None = None
    try:
        base = f"https://{HOST}:{d.http_port}"
        studios = []
        for sid in ("first", "second"):
            created = d.create(id=sid)
            url = f"{base}/_studio/{sid}/" if path_mode else f"https://{sid}.{HOST}:{d.http_port}/"
            assert created["url"] == url and created["login_link"].startswith(f"{base}/")
            tool = Tool(tmp_path, prefix=f"/_studio/{sid}/" if path_mode else "/")
            d.stoppers.append(tool.stop)
            client = Connect(tmp_path, created["connect_string"], tool.port,
                             extra_env={"SSL_CERT_FILE": str(cert)}, name=f"connect-{sid}")
            d.stoppers.append(client.stop)
            wait_connected(d.gw, sid)
            studios.append((created, url))
        browser = Chromium(tmp_path, flags=[
            f"--host-resolver-rules=MAP *.{HOST} 127.0.0.1, MAP {HOST} 127.0.0.1",
            f"--ignore-certificate-errors-spki-list={spki_hash(cert_pem)}"])
        browser.keep_events = {"Audits.issueAdded"}
        browser.call("Audits.enable")

        (first, first_url), (second, second_url) = studios
        open_link(browser, first["login_link"])
        studio_is_connected(browser, first_url)
        # The link's token never reaches the tool as the page's referrer (no-referrer on
        # the link's page and on each redirect after it).
        assert browser.evaluate("document.referrer") == ""
        sent = browser.evaluate("performance.getEntriesByType('navigation')[0].nextHopProtocol")
        assert sent == "http/1.1"  # ALPN answered (an offer used to end the handshake)
        open_link(browser, second["login_link"])  # the same browser: one login
        studio_is_connected(browser, second_url)

        # The second studio's page posting to itself reaches its tool; to the first
        # studio, in subdomain mode another origin of the same site (so the browser sends
        # the SameSite=Lax cookie with it), it is refused: another studio's page must not
        # act on a studio as its visitor. Path mode: one origin, nothing to tell apart.
        own = browser.evaluate(f"fetch({second_url + 'upload'!r}, {{method: 'POST', "
                               "body: 'mine'}).then(r => r.status)", await_promise=True)
        assert own == 200
        browser.evaluate(f"fetch({first_url + 'upload'!r}, {{method: 'POST', body: 'x', "
                         "mode: 'no-cors', credentials: 'include'}).then(() => 1)",
                         await_promise=True)
        refused = "refused a POST from 127.0.0.1"
        if path_mode:
            assert refused not in d.gw.output()
        else:
            wait_until(lambda: refused in d.gw.output(), "the other studio's post refused")
            line = next(x for x in d.gw.output().splitlines() if refused in x)
            assert f"to first.{HOST}" in line and "Sec-Fetch-Site: same-site" in line, line

        cookies = {(c["name"], c["domain"], c["path"]): c
                   for c in browser.call("Network.getAllCookies")["cookies"]}
        login = cookies[("__Host-connect_login", HOST, "/")]
        # Path mode: one per studio path on the proxy host (a __Host- cookie must have
        # Path=/); subdomain mode: host-only __Host- cookies, one per studio host.
        expected = [("connect_session", HOST, f"/_studio/{sid}/") if path_mode
                    else ("__Host-connect_session", f"{sid}.{HOST}", "/")
                    for sid in ("first", "second")]
        # Priority High: a browser over its cookie limit for the site evicts lower ones
        # first (a tool's flood of its own cookies pushed the gateway's login out).
        for c in [login, *(cookies[k] for k in expected)]:
            assert (c["secure"], c["httpOnly"], c["sameSite"], c["priority"]) == (
                True, True, "Lax", "High"), c

        # Back to the first studio; the logout opened in another tab (from the second
        # studio, or the proxy host in path mode) closes its WebSocket.
        browser.call("Page.navigate", url=first_url)
        studio_is_connected(browser, first_url)
        logout = f"{base}/_connect/logout" if path_mode else f"{second_url}_connect/logout"
        tab = browser.open_tab(logout)
        # The logout asks first (a plain GET from any page must not log anyone out); its
        # button's post comes from the gateway's own page, so it is carried out.
        browser.wait_for("document.title == 'Log out'", session=tab)
        browser.evaluate("document.querySelector('form button').click()", session=tab)
        browser.wait_for("document.title == 'Logged out'", session=tab)
        browser.wait_for("document.getElementById('state').textContent == 'closed'")
        # The gateway's close frame came through TLS whole, before its close_notify.
        assert browser.evaluate("document.getElementById('why').textContent") == "1008 logged out"
        browser.call("Page.reload")
        browser.wait_for("document.title == 'Login required'")
        browser.call("Page.navigate", url=first["login_link"])
        browser.wait_for("document.title == 'Login link not valid'")

        issues: list[Any] = [e["params"]["issue"] for e in browser.events
                             if e["params"]["issue"]["code"] in ISSUES]
        assert not issues, issues
    finally:
        if browser is not None:
            browser.stop()
        d.stop()
