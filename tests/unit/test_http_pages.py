"""Pages and answers made by the proxy carry the status's own reason phrase."""

from __future__ import annotations

import pytest

from studios_gateway.auth.login import page as auth_page
from studios_gateway.http import pages
from studios_gateway.http.exchange import raw_response
from tests.unit.test_http_exchange import GET, started


@pytest.mark.parametrize("status, reason", [
    (200, b"OK"), (201, b"Created"), (302, b"Found"), (401, b"Unauthorized"),
    (413, b"Content Too Large"), (503, b"Service Unavailable"),
    (299, b"OK"), (499, b"Bad Request"),  # unnamed: the class's phrase
])
def test_reason_phrases(status: int, reason: bytes) -> None:
    assert pages.reason_phrase(status) == reason


def test_a_200_page_made_here_says_ok() -> None:
    # The "Logged out" page of /_connect/logout, answered on a client connection.
    ex = started(GET)
    data, _ = ex.answer(auth_page(200, "Logged out", "You are logged out."))
    assert data is not None and data.startswith(b"HTTP/1.1 200 OK\r\n")
    assert raw_response(pages.page(200, "Fine", "ok")).startswith(b"HTTP/1.1 200 OK\r\n")
