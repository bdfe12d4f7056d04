"""Who reads an answer the gateway makes itself: a person, or a program.

A browser's page load (a navigation: the address bar, a link, a form, a frame) shows the
answer's HTML page to a person. Everything else is read by a program: a page's script
(``fetch``, XHR: JupyterLab's and code-server's own requests), a WebSocket handshake,
``curl``, ``requests``, a Jupyter REST client. Those get the same status and headers with
the page's words in JSON (:func:`studios_gateway.http.pages.for_script`).

Asked only for the gateway's own error answers, never on a proxied request's way.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["shows_page"]

#: ``Sec-Fetch-Mode`` of a page load (``nested-navigate``: older Chromium, for frames).
_NAVIGATE = frozenset((b"navigate", b"nested-navigate"))


def shows_page(headers: Sequence[tuple[bytes, bytes]]) -> bool:
    """Whether the request with `headers` is a browser's page load.

    A browser says it in ``Sec-Fetch-Mode`` (``navigate``; a script's request is ``cors``,
    ``no-cors``, ``same-origin`` or ``websocket``), which no page can set. Browsers send
    it only to a secure origin (HTTPS, or ``localhost``): over plain HTTP elsewhere, a page
    load is told by its ``Accept``, which names ``text/html`` for every page load and not
    for ``fetch``, XHR (``*/*`` by default) or ``curl``; a request marked
    ``X-Requested-With`` (jQuery and others) is a script's whatever it accepts. A client
    that sends no ``Accept`` at all is a program."""
    mode = accept = None
    marked = False
    for name, value in headers:
        lower = name.lower()
        if lower == b"sec-fetch-mode":
            mode = value
        elif lower == b"accept":
            accept = value if accept is None else accept + b"," + value
        elif lower == b"x-requested-with":
            marked = True
    if mode is not None:
        return mode.strip().lower() in _NAVIGATE
    if marked or accept is None:
        return False
    accept = accept.lower()
    return b"text/html" in accept or b"application/xhtml+xml" in accept
