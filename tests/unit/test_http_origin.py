"""The Origin check of WebSocket handshakes and login posts (http/origin.py)."""

from __future__ import annotations

import pytest

from studios_gateway.http.origin import cross_origin


@pytest.mark.parametrize("origin,host", [
    (None, "a.studios.example"),  # no Origin: not a browser's cross-origin request
    (b"https://a.studios.example", "a.studios.example"),
    (b"http://a.studios.example", "a.studios.example"),
    (b"https://A.Studios.Example", "a.studios.example:443"),
    (b"http://a.localhost:18080", "a.localhost:18080"),
    (b"http://127.0.0.1:8080", "127.0.0.1:8080"),
    (b"http://[::1]:8080", "[::1]:8080"),
    (b"https://a.studios.example", "a.studios.example."),
])
def test_the_same_origin_passes(origin: bytes | None, host: str) -> None:
    assert cross_origin(origin, host) is None


@pytest.mark.parametrize("origin,host,why", [
    (b"https://evil.studios.example", "a.studios.example", "another origin"),
    (b"http://a.localhost:18081", "a.localhost:18080", "another origin"),
    (b"http://a.localhost", "a.localhost:18080", "another origin"),
    (b"https://a.studios.example:8443", "a.studios.example", "another origin"),
    (b"null", "a.studios.example", "Origin: null"),
    (b"a.studios.example", "a.studios.example", "malformed Origin"),
    (b"ftp://a.studios.example", "a.studios.example", "malformed Origin"),
    (b"https://a.studios.example/path", "a.studios.example", "malformed Origin"),
    (b"https://user@a.studios.example", "a.studios.example", "malformed Origin"),
    (b"https://a.studios.example:99999", "a.studios.example", "malformed Origin"),
    (b"https://a.studios.example", "bad host!", "malformed Host"),
    (b"https://" + b"a" * 2000, "a.studios.example", "too long"),
])
def test_another_or_a_bad_origin_is_refused_with_a_reason(origin: bytes, host: str,
                                                           why: str) -> None:
    reason = cross_origin(origin, host)
    assert reason is not None and why in reason, reason


def test_the_reason_shows_the_origin_printable_and_short() -> None:
    reason = cross_origin(b"https://evil.example\x7f", "a.example")
    assert reason is not None and "\x7f" not in reason


def test_a_post_is_judged_by_sec_fetch_site_first_then_by_origin() -> None:
    from studios_gateway.http.origin import posted_from_elsewhere

    host = "connect.example"
    # The gateway's own form under Referrer-Policy no-referrer: Origin null, same-origin.
    assert posted_from_elsewhere(b"same-origin", b"null", host) is None
    assert posted_from_elsewhere(b"none", None, host) is None
    for site in (b"same-site", b"cross-site"):
        why = posted_from_elsewhere(site, b"https://connect.example", host)
        assert why is not None and "another site" in why
    # No Sec-Fetch-Site: the Origin decides.
    assert posted_from_elsewhere(None, b"https://connect.example", host) is None
    assert posted_from_elsewhere(None, b"null", host) is not None
