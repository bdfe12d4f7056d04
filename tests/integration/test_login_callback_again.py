"""A login's callback after the login is over, with real processes (`twistd
studios-gateway`, the test IdP as its own process): the Back button after a login (back to
the issuer, which, keeping its own login, sends the browser to the callback again with the
used state), and a login left open at the issuer past its time (here: the gateway restarted
meanwhile, which forgets it alike). Both ended on "Login failed: the login's state is
unknown, used already or expired", whose "Try again" led to the proxy host's "/": 404
"Studio not found"."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qs, urlencode, urljoin, urlsplit

import pytest

from tests.support.idp import _Form
from tests.support.login import USERS, idp_and_gateway
from tests.support.waiting import wait_until
from tests.support.web import Browser, Reply

pytestmark = pytest.mark.slow


def submit(browser: Browser, form_page: Reply, user: str) -> Reply:
    """Fill and send the IdP's login form as a browser does."""
    form = _Form()
    form.feed(form_page.text)
    fields = {**form.fields, "username": user, "password": USERS[user]}
    return browser.request(urljoin(form_page.url, form.action or ""), method="POST",
                           body=urlencode(fields).encode(),
                           headers={"Content-Type": "application/x-www-form-urlencoded"})


def test_the_back_button_after_a_login_leads_to_the_studio(tmp_path: Path) -> None:
    with idp_and_gateway(tmp_path, sso=True) as (_, g):
        sid = g.studio()["id"]
        browser = Browser()
        form_page = browser.get(g.url(sid, "/api/info"))
        assert 'name="password"' in form_page.text
        landed = submit(browser, form_page, "alice")
        assert landed.status == 200 and landed.json()["headers"]["x-connect-sub"] == ["alice"]
        # Back: the browser loads the issuer's authorize address again; the issuer keeps
        # its login and answers at once, to the callback, with the state used already.
        back = browser.get(form_page.url)
        assert back.status == 200, (back.status, back.url, back.text[:300])
        assert back.url == g.url(sid, "/api/info")
        assert back.json()["headers"]["x-connect-sub"] == ["alice"]
        log = g.gw.output()
        assert "a login's callback came again (the Back button" in log
        assert "a login was refused" not in log


def test_a_login_over_its_time_at_the_issuer_offers_to_log_in_again_to_that_studio(
        tmp_path: Path) -> None:
    with idp_and_gateway(tmp_path) as (_, g):
        sid = g.studio()["id"]
        studio_page = g.url(sid, "/api/info")
        browser = Browser()
        form_page = browser.get(studio_page)
        g.restart()  # forgets the waiting login, as its 10 minutes running out do
        wait_until(lambda: g.api(f"/api/sessions/{sid}")[1].get("connected"),
                   "the studio's tunnel again", 20)
        late = submit(browser, form_page, "alice")
        assert late.status == 400 and "Login took too long" in late.text, late.text[:500]
        assert "waits 10 minutes at most" in late.text
        link = late.text.split('href="', 1)[1].split('"', 1)[0].replace("&amp;", "&")
        assert urlsplit(link).path == "/_connect/login"
        assert parse_qs(urlsplit(link).query)["next"] == [studio_page]
        form_again = browser.get(link)
        assert 'name="password"' in form_again.text
        landed = submit(browser, form_again, "alice")
        assert landed.status == 200 and landed.url == studio_page
        assert landed.json()["headers"]["x-connect-sub"] == ["alice"]

        # A callback with a state nobody began, in a browser without a login begun here:
        # refused as before (a warning), with no place to return to.
        stranger = Browser().get(f"{g.proxy}/_connect/callback?state=made-up&code=x")
        assert stranger.status == 400 and "Login failed" in stranger.text
