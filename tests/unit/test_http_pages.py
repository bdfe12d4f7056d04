"""The gateway's own pages: escaped text, and headers that keep them out of frames."""

from __future__ import annotations

from studios_gateway.http import pages


def test_every_page_refuses_frames_and_sniffing() -> None:
    for page in (pages.not_found("abc"), pages.not_connected("abc"), pages.forbidden(),
                 pages.page(200, "Open studio", "Log in.", body_html="<form></form>")):
        headers = dict(page.headers)
        assert headers[b"Content-Security-Policy"] == b"frame-ancestors 'none'"
        assert headers[b"X-Frame-Options"] == b"DENY"
        assert headers[b"X-Content-Type-Options"] == b"nosniff"
        assert b"<link rel=icon href='data:,'>" in page.body  # no /favicon.ico asked


def test_text_is_escaped() -> None:
    page = pages.page(400, "<b>t</b>", "<script>x</script>", session_id="<i>")
    assert b"<script>" not in page.body and b"&lt;script&gt;" in page.body
    assert b"<i>" not in page.body and b"<b>t</b>" not in page.body
