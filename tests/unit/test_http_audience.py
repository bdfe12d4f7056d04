"""Who reads the gateway's own answers: a browser's page load gets its HTML page, anything
else (a script's fetch, a tool's own XHR, curl, a WebSocket client) the same answer with the
page's words in JSON."""

from __future__ import annotations

import json

import pytest

from studios_gateway.http import pages
from studios_gateway.http.audience import shows_page

CHROMIUM_PAGE = (b"text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,"
                 b"image/webp,image/apng,*/*;q=0.8,application/signed-exchange;v=b3;q=0.7")


@pytest.mark.parametrize(("headers", "page"), [
    # A browser over HTTPS or to localhost: Sec-Fetch-Mode decides.
    ([(b"Sec-Fetch-Mode", b"navigate"), (b"Accept", CHROMIUM_PAGE)], True),
    ([(b"sec-fetch-mode", b"navigate"), (b"Sec-Fetch-Dest", b"iframe")], True),
    ([(b"Sec-Fetch-Mode", b"nested-navigate")], True),  # older Chromium's frames
    ([(b"Sec-Fetch-Mode", b"cors"), (b"Sec-Fetch-Dest", b"empty"), (b"Accept", b"*/*")],
     False),  # JupyterLab's fetch
    ([(b"Sec-Fetch-Mode", b"cors"), (b"Accept", b"text/html")], False),  # fetch asking HTML
    ([(b"Sec-Fetch-Mode", b"websocket")], False),
    ([(b"Sec-Fetch-Mode", b"no-cors"), (b"Sec-Fetch-Dest", b"image")], False),
    ([(b"Sec-Fetch-Mode", b"same-origin")], False),
    # Plain HTTP to another host than localhost: no Sec-Fetch-*, Accept decides.
    ([(b"Accept", CHROMIUM_PAGE)], True),
    ([(b"Accept", b"text/html, application/xhtml+xml")], True),  # Firefox's, in part
    ([(b"Accept", b"application/xhtml+xml")], True),
    ([(b"Accept", b"*/*")], False),  # curl, requests, fetch and XHR by default
    ([(b"Accept", b"application/json")], False),  # the Jupyter REST client
    ([(b"Accept", b"text/html"), (b"X-Requested-With", b"XMLHttpRequest")], False),
    ([(b"X-Requested-With", b"XMLHttpRequest"), (b"Accept", b"text/html")], False),
    ([(b"Accept", b"application/json"), (b"Accept", b"text/html")], True),  # two lines
    ([], False),  # no Accept at all (urllib, Go's net/http): a program
])
def test_a_page_load_is_told_from_a_program(headers: list[tuple[bytes, bytes]],
                                            page: bool) -> None:
    assert shows_page(headers) is page


def test_a_script_gets_the_same_status_and_headers_with_the_words_in_json() -> None:
    html = pages.not_connected("abcd")
    got = pages.for_script(html)
    assert got.status == 503
    headers = dict(got.headers)
    assert headers[b"Content-Type"] == b"application/json"
    assert headers[b"Content-Length"] == str(len(got.body)).encode()
    assert headers[b"Cache-Control"] == b"no-store"
    assert headers[b"Retry-After"] == dict(html.headers)[b"Retry-After"] == b"5"
    assert headers[b"X-Content-Type-Options"] == b"nosniff"
    assert b"Content-Security-Policy" not in headers and b"X-Frame-Options" not in headers
    assert json.loads(got.body) == {
        "status": 503, "error": "Studio not connected", "studio": "abcd", "retry_after": 5,
        "message": "The studio is not connected to the gateway right now. A studio that is "
                   "starting connects within about a minute; one that was stopped has to be "
                   "started again."}


@pytest.mark.parametrize("answer", [
    pages.session_gone("abcd"), pages.tool_not_answering("abcd"), pages.bad_gateway("abcd"),
    pages.forbidden("abcd"), pages.not_found("abcd"), pages.status_page(413, "Too big."),
])
def test_every_error_page_has_its_words_for_a_script(answer: pages.Page) -> None:
    got = json.loads(pages.for_script(answer).body)
    assert got["status"] == answer.status and got["error"] and got["message"]
    assert got["message"] in answer.body.decode().replace("&#x27;", "'")
    assert "<" not in json.dumps(got)


def test_a_login_required_says_where_to_log_in() -> None:
    answer = pages.page(401, "Login required", "Log in to studio abcd first.",
                        link=("http://connect.test/_connect/login?next=%2Flab", "Log in"))
    got = json.loads(pages.for_script(answer).body)
    assert got["login"] == got["link"]["url"] == "http://connect.test/_connect/login?next=%2Flab"
    assert got["link"]["text"] == "Log in"
    # The script's 401 of the login (a page's fetch whose login ended) says it alike.
    script = pages.login_required_for_script("abcd", "http://connect.test/_connect/login")
    assert json.loads(script.body)["login"] == "http://connect.test/_connect/login"
    assert "has ended" in json.loads(script.body)["message"]


def test_a_redirect_is_left_as_it_is() -> None:
    answer = pages.redirect("/_connect/logout", 303)
    assert pages.for_script(answer) is answer
