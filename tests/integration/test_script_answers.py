"""A real twistd gateway, both routing modes: its own answers to a studio that is away,
ended or not logged in are its pages for a browser's page load and the same status and
headers with the page's words in JSON for a program (``curl``, a script's ``fetch``)."""

from __future__ import annotations

import json

import pytest

from tests.integration.test_tool_port_loop import deployment
from tests.integration.test_tunnel_process import Deployment
from tests.support.web import PAGE_LOAD_ACCEPT, Browser

__all__ = ["deployment"]  # the fixture (both routing modes), re-used

pytestmark = pytest.mark.slow

CURL = {"Accept": "*/*", "User-Agent": "curl/8.5.0"}
#: Chromium's page load, and its fetch() from a page of the studio (to localhost: a secure
#: origin, so Sec-Fetch-* is sent).
PAGE_LOAD = {"Accept": PAGE_LOAD_ACCEPT, "Sec-Fetch-Mode": "navigate",
             "Sec-Fetch-Dest": "document", "Sec-Fetch-Site": "none"}
FETCH = {"Accept": "*/*", "Sec-Fetch-Mode": "cors", "Sec-Fetch-Dest": "empty",
         "Sec-Fetch-Site": "same-origin"}


def test_an_away_studio_answers_a_page_load_with_its_page_and_curl_with_json(
        deployment: Deployment) -> None:
    created = deployment.create()
    sid, url = created["id"], created["url"].rstrip("/") + "/api/contents"
    deployment.browser.use_login_link(created["login_link"])  # (lands on "not connected")

    page = deployment.browser.get(url, headers=PAGE_LOAD)
    assert page.status == 503 and page.headers["Retry-After"] == "5"
    assert page.headers["Content-Type"] == "text/html; charset=utf-8"
    assert "<h1>Studio not connected</h1>" in page.text and "http-equiv=refresh" in page.text

    for asked in (CURL, FETCH):
        script = deployment.browser.get(url, headers=asked)
        assert script.status == 503 and script.headers["Retry-After"] == "5"
        assert script.headers["Content-Type"] == "application/json"
        assert script.headers["Cache-Control"] == "no-store"
        said = script.json()
        assert said["status"] == 503 and said["error"] == "Studio not connected"
        assert said["studio"] == sid and said["retry_after"] == 5
        assert "has not connected yet" in said["message"], said

    # Ended: 410 both ways, its words in JSON for curl.
    status, body, _ = deployment.gw.request(f"/api/sessions/{sid}", method="DELETE")
    assert status == 200, body
    gone = deployment.browser.get(url, headers=CURL)
    assert gone.status == 410 and gone.json()["error"] == "Studio not found"
    assert f"There is no studio {sid}" in gone.json()["message"]
    assert deployment.browser.get(url, headers=PAGE_LOAD).text.startswith("<!doctype html>")


def test_a_script_without_a_login_is_told_where_to_log_in(deployment: Deployment) -> None:
    created = deployment.create()
    url = created["url"].rstrip("/") + "/api/contents/n.ipynb"
    stranger = Browser()
    # A program's PUT: 401 in JSON naming the login; a page load: the login's redirect.
    put = stranger.request(url, method="PUT", body=b"{}", headers=CURL)
    assert put.status == 401 and put.headers["Content-Type"] == "application/json"
    said = put.json()
    assert "/_connect/login?" in said["login"] and said["error"] == "Login required"
    assert json.dumps(said).count("<") == 0
    assert stranger.get(url, headers=CURL, follow=False).status == 302  # as before
    assert stranger.get(url, headers=PAGE_LOAD, follow=False).status == 302
