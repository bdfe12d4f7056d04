"""The demo tool's page, as a phone shows it."""

from __future__ import annotations

from studios_gateway.demo.tool import PAGE


def test_the_page_is_laid_out_for_the_screen_it_is_on() -> None:
    """Without a viewport the phone laid the page out 980 px wide and shrank it: a
    newcomer's first studio page was a quarter of the screen in 6-pixel text (headless
    Chromium at 390x844), its field and button too small to tap."""
    page = PAGE.format(who="alice")
    assert '<meta name="viewport" content="width=device-width">' in page
    style = page.split("<style>")[1].split("</style>")[0].replace("\n", "")
    rules = dict(r.split("{", 1) for r in style.split("}") if r)
    assert "padding:0 1em" in rules["body"]  # the text does not touch the screen's edges
    assert "min-height:44px" in rules["input,button"]
