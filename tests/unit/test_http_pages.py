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


def test_the_next_step_is_big_enough_to_tap_and_shows_its_focus() -> None:
    """A page's button or link (Open studio, Log out, Log in again) was the browser's
    default control, about 20 px tall in a small font: hard to hit on a phone, and
    with only the browser's faint focus ring to the keyboard."""
    page = pages.page(200, "Open studio", "Log in.", body_html="<form><button>Open</button>"
                      "</form>", link=("/_connect/login", "Log in again"))
    style = page.body.decode().split("<style>")[1].split("</style>")[0]
    rules = dict(r.split("{", 1) for r in style.split("}") if r)
    assert "min-height:44px" in rules["button"] and "font:inherit" in rules["button"]
    assert "padding" in rules["a"]
    assert "outline:3px solid" in rules["a:focus-visible,button:focus-visible"]


def test_a_tool_that_is_down_is_not_said_to_be_slow() -> None:
    """The 504 is also the page for a tool that refused the connection at once (it had
    stopped): it said "did not answer in time ... try again shortly", and nothing to do
    when waiting does not help."""
    body = pages.tool_not_answering("abc").body
    assert b"did not answer in time" not in body
    assert b"It may still be starting, be busy, or have stopped. If this page stays, " \
        b"restart the studio." in body
    assert b"This page reloads by itself." in body


def test_a_tool_that_hung_up_says_what_to_do() -> None:
    """The 502 (the tool closed the connection before its answer) said only "The
    connection to the studio's application failed." (measured in Chromium)."""
    body = pages.bad_gateway("abc").body
    assert b"ended the connection before it answered: it may have stopped or be " \
        b"restarting. If this page stays, restart the studio." in body
    assert b"This page reloads by itself." in body and b"<code>abc</code>" in body


def test_a_page_that_reloads_itself_also_reloads_an_address_with_a_fragment() -> None:
    """A meta refresh without a URL is a fragment navigation at an address with a
    fragment (it only scrolls): a script reloads such an address, only there, at the
    same time; a page that does not reload has no script."""
    body = pages.tool_not_answering("abc").body
    assert b"<meta http-equiv=refresh content=10>" in body
    assert (b"<script>if(location.hash)setTimeout(function(){location.reload()},10000)"
            b"</script>") in body
    assert b"<script" not in pages.not_found("abc").body


def test_the_next_step_has_the_keyboard_focus() -> None:
    """A page's one action (Log in, Try again, Log in as someone else) was not focused:
    a person on the keyboard tabbed to it first (measured in Chromium: the focus was on
    the page's body). Its link is now autofocused, once."""
    page = pages.page(401, "Login required", "Log in first.",
                      link=("/_connect/login?next=%2F", "Log in"))
    assert b'<a autofocus href="/_connect/login?next=%2F">Log in</a>' in page.body
    assert page.body.count(b"autofocus") == 1
    assert b"autofocus" not in pages.not_connected("abc").body  # no action: nothing focused
