"""Small, self-contained HTML pages the proxy answers with instead of the tool.

Every page names the studio (escaped) when there is one, says what happened and
what to do, and carries no external resources. A page is a :class:`Page`: the
status, headers and body the proxy sends as they are. A client that is not showing a
page (a script, a tool's own fetch, ``curl``) gets the same answer with its words in
JSON instead (:func:`for_script`; who is which: studios_gateway.http.audience).
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass, replace
from http import HTTPStatus
from typing import Any

from studios_gateway.away import Away

__all__ = [
    "Page",
    "bad_request",
    "for_script",
    "forbidden",
    "login_ended_in_frame",
    "login_required_for_script",
    "not_connected",
    "not_found",
    "page",
    "redirect",
    "tool_not_answering",
    "tool_unavailable",
]

# RFC 9110's names where Python's table still has the older ones.
_RFC9110 = {413: "Content Too Large", 414: "URI Too Long", 422: "Unprocessable Content"}

# A page's button or link is what the person does next: big enough to hit on a phone
# (44 CSS pixels tall, in the page's own font, where the browser's default is ~20 px in
# a smaller one), and with a focus ring that shows on any background when reached with
# the keyboard.
_STYLE = ("body{font-family:system-ui,sans-serif;max-width:36em;margin:4em auto;"
          "padding:0 1em;color:#222}code{background:#eee;padding:0 .2em;"
          "overflow-wrap:anywhere}"
          "button{font:inherit;min-height:44px;padding:.5em 1.2em;cursor:pointer}"
          "a{color:#0b57d0;display:inline-block;padding:.5em 0}"
          "a.button{box-sizing:border-box;min-height:44px;padding:.6em 1.2em;"
          "border:1px solid #555;border-radius:.3em;text-decoration:none;color:#222;"
          "background:#f4f4f4}"
          "a:focus-visible,button:focus-visible{outline:3px solid #0b57d0;"
          "outline-offset:2px}")


@dataclass(frozen=True)
class Page:
    status: int
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes
    #: For the access log only, never sent: the logged-in user a refusal is for ("" when
    #: none is known) and why the gateway refused (default: the status's reason phrase).
    user: str = ""
    why: str = ""
    #: What the page says, as text, for :func:`for_script`: its title, its message, the
    #: studio it names ("" for none) and its link's (address, text). No words (a
    #: redirect): nothing to say in JSON.
    title: str = ""
    message: str = ""
    session_id: str = ""
    link: tuple[str, str] | None = None

    @property
    def reason(self) -> bytes:
        return reason_phrase(self.status)


def reason_phrase(status: int) -> bytes:
    """The status's reason phrase ("OK" for 200); a status without a name gets its class's
    (RFC 9110 section 15: a client treats it as the x00 of its class)."""
    if status in _RFC9110:
        return _RFC9110[status].encode()
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return HTTPStatus(status // 100 * 100).phrase.encode() if 100 <= status < 600 \
            else b"Unknown"


def page(status: int, title: str, message: str, *, session_id: str | None = None,
         refresh: int | None = None, extra: tuple[tuple[bytes, bytes], ...] = (),
         link: tuple[str, str] | None = None, body_html: str = "",
         framed_by_self: bool = False) -> Page:
    """A page; `title`, `message` and the link's (href, text) are text (escaped here);
    `body_html` is markup the gateway made itself (a form), placed after the message.
    Never shown in a frame, unless `framed_by_self`: then in frames of pages of its own
    origin only (a page of words alone, no form and no link)."""
    assert not (framed_by_self and (link or body_html)), "a framed page has words only"
    # A refresh without a URL only scrolls when the address has a fragment (it is then a
    # fragment navigation): a tool's page link (Xpra's menu, a single-page app's routes)
    # left the page for good. The script reloads such an address, fragment kept.
    meta = (f"<meta http-equiv=refresh content={int(refresh)}>"
            f"<script>if(location.hash)setTimeout(function(){{location.reload()}},"
            f"{int(refresh) * 1000})</script>" if refresh else "")
    studio = (f"<p>Studio: <code>{html.escape(session_id)}</code></p>"
              if session_id else "")
    retry = "<p>This page reloads by itself.</p>" if refresh else ""
    # The link is what the person does next: focused (autofocus), as a form's button is,
    # so Enter or Space takes it without a pointer.
    more = (f'<p><a autofocus href="{html.escape(link[0])}">{html.escape(link[1])}</a></p>'
            if link is not None else "")
    doc = (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        "<meta name=viewport content='width=device-width'>"
        # an empty icon: the browser asks no /favicon.ico (a 404 on every gateway page)
        "<link rel=icon href='data:,'>"
        f"{meta}<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>"
        f"<h1>{html.escape(title)}</h1><p>{html.escape(message)}</p>{body_html}{more}"
        f"{studio}{retry}"
        "</body></html>"
    ).encode()
    headers = (
        (b"Content-Type", b"text/html; charset=utf-8"),
        (b"Content-Length", str(len(doc)).encode()),
        (b"Cache-Control", b"no-store"),
        (b"X-Content-Type-Options", b"nosniff"),
        (b"Referrer-Policy", b"no-referrer"),
        # never framed: another site's page cannot overlay the login's "Open studio"
        *(((b"Content-Security-Policy", b"frame-ancestors 'self'"),
           (b"X-Frame-Options", b"SAMEORIGIN")) if framed_by_self else
          ((b"Content-Security-Policy", b"frame-ancestors 'none'"),
           (b"X-Frame-Options", b"DENY"))),
        *extra,
    )
    return Page(status, headers, doc, title=title, message=message,
                session_id=session_id or "", link=link)


#: A page's headers that are about its HTML: for_script's JSON has its own type and length,
#: and nothing to frame.
_HTML_ONLY = frozenset((b"content-type", b"content-length", b"content-security-policy",
                        b"x-frame-options"))


def for_script(answer: Page) -> Page:
    """`answer` for a client that does not show it as a page (a script's ``fetch``, a
    tool's own requests, ``curl``): the same status and headers (``Retry-After``,
    ``Cache-Control: no-store``), and the page's words as JSON in place of its HTML:
    ``status``, ``error`` (its title), ``message`` (what happened and what to do),
    ``studio`` when it names one, ``retry_after`` (seconds) with a ``Retry-After``, and its
    link as ``link`` (``url``, ``text``; a 401's also as ``login``). JupyterLab shows a
    refused request's ``message`` in its dialogs; an HTML body it reported as "Invalid
    response: 503 Service Unavailable". A page without words (a redirect) is returned as
    it is. Nothing in it but what the page says."""
    if not answer.message:
        return answer
    doc: dict[str, Any] = {"status": answer.status, "error": answer.title,
                           "message": answer.message}
    if answer.session_id:
        doc["studio"] = answer.session_id
    kept = tuple((k, v) for k, v in answer.headers if k.lower() not in _HTML_ONLY)
    for name, value in kept:
        if name.lower() == b"retry-after" and value.isdigit():
            doc["retry_after"] = int(value)
    if answer.link is not None:
        doc["link"] = {"url": answer.link[0], "text": answer.link[1]}
        if answer.status == 401:
            doc["login"] = answer.link[0]
    body = json.dumps(doc).encode()
    return replace(answer, body=body, headers=(
        (b"Content-Type", b"application/json"), (b"Content-Length", str(len(body)).encode()),
        *kept))


def redirect(location: str, status: int = 308,
             extra: tuple[tuple[bytes, bytes], ...] = ()) -> Page:
    return Page(status, ((b"Location", location.encode("utf-8")), (b"Content-Length", b"0"),
                         (b"Cache-Control", b"no-store"), (b"Referrer-Policy", b"no-referrer"),
                         (b"X-Content-Type-Options", b"nosniff"), *extra), b"")


def _login_ended(session_id: str) -> str:
    return (f"Your login to studio {session_id} has ended (it expired, or you logged "
            "out). Reload the page to log in again.")


def login_required_for_script(session_id: str, login_url: str) -> Page:
    """401 for a page's script (its fetch) whose browser has no valid login for the
    studio: JSON (:func:`for_script`) whose ``message`` says what to do (JupyterLab shows
    a refused request's ``message`` in its dialogs) and ``login``, where to log in."""
    return replace(for_script(page(401, "Login ended", _login_ended(session_id),
                                   session_id=session_id, link=(login_url, "Log in"))),
                   why="login required (a script's request)")


def login_ended_in_frame(session_id: str) -> Page:
    """401 for a frame's page load (an iframe of the studio's own page) whose browser
    has no valid login for the studio: the words, shown in the frame. The login's
    pages refuse every frame, so a redirect to them left the frame blank with the
    browser's "refused to connect" (VS Code's Markdown preview, or any webview, opened
    after the login expired: its iframe is a page load of the studio's). Framed only by
    pages of the studio's own origin; no link (a frame cannot take the person to the
    login: the page around it has to be reloaded)."""
    return replace(page(401, "Login ended", _login_ended(session_id), framed_by_self=True),
                   why="login required (a frame)")


def not_found(session_id: str | None = None, message: str = "") -> Page:
    text = message or ("There is no studio with this name. It may have been stopped "
                       "or the address may be mistyped.")
    return page(404, "Studio not found", text, session_id=session_id)


def session_gone(session_id: str) -> Page:
    """A logged-in person's studio that has no session (any more): 410, not 404.

    The login was for this one studio, so this is mostly a studio ended under an open
    page. The page's scripts keep asking meanwhile, and a 404 on its file listing sent
    JupyterLab's file browser (4.x) to its root again and again, as fast as the answers
    came (hundreds of requests a second per open tab, each with a "Directory not found"
    dialog); on other errors it keeps to its polling interval."""
    return page(410, "Studio not found",
                f"There is no studio {session_id}. It may have been ended, or the address "
                "may be mistyped. Ask the person who gave you the studio if you still need "
                "it.")


def not_connected(session_id: str, away: Away | None = None) -> Page:
    """`away`: which case it is (studios_gateway.away), when the registry could tell.
    Without it the gateway cannot tell a studio still starting from one that was stopped
    (a session outlives its container), so the page says both. It reloads by itself in
    every case: a studio started again shows up on its own.

    503 with Retry-After (the studio is away for now), not 502: JupyterLab (4.x), whose
    kernel WebSocket closed with the tunnel, asks for the kernel's model and takes any
    other refusal than 503 or 424 (JupyterHub's "server not running") as the kernel's
    death: a tunnel away for 20 s left the notebook "Kernel died unexpectedly" for good,
    the kernel alive. On 503 it asks again 10-30 s later and reconnects."""
    if away is None:
        text = ("The studio is not connected to the gateway right now. A studio that is "
                "starting connects within about a minute; one that was stopped has to be "
                "started again.")
    else:
        text = away.text
    wait = 5 if away is None or away.soon else 15
    return page(503, "Studio not connected", text, session_id=session_id, refresh=wait,
                extra=((b"Retry-After", str(wait).encode()),))


def tool_not_answering(session_id: str) -> Page:
    # Also the page for a tool that refused the connection at once (it stopped, or has
    # not started listening): not only "in time", and what to do if it lasts.
    return page(504, "Studio is not answering",
                "The studio is connected, but its application is not answering. It may "
                "still be starting, be busy, or have stopped. If this page stays, restart "
                "the studio.",
                session_id=session_id, refresh=10, extra=((b"Retry-After", b"10"),))


def bad_gateway(session_id: str) -> Page:
    # The tool closed the connection before its answer (it crashed or restarted under
    # the request): what to do if it lasts, as the 504 says, and not only what failed.
    return page(502, "Studio connection failed",
                "The studio's application ended the connection before it answered: it "
                "may have stopped or be restarting. If this page stays, restart the studio.",
                session_id=session_id, refresh=10)


def forbidden(session_id: str | None = None, message: str = "") -> Page:
    return page(403, "Access denied", message or "You may not use this studio.",
                session_id=session_id)


def bad_request(message: str = "The request was malformed.") -> Page:
    return page(400, "Bad request", message)


def tool_unavailable(session_id: str, tool: str, mode: str, why: str) -> Page:
    """A studio whose tool cannot work in this routing mode (instead of the tool's 404)."""
    return page(501, f"Not available with {mode} routing",
                f"{tool} does not work with {mode} routing: {why}", session_id=session_id)


def overloaded() -> Page:
    return page(503, "Too many connections",
                "The gateway is handling as many connections as it can; try again shortly.",
                extra=((b"Retry-After", b"2"),))


def status_page(status: int, message: str, session_id: str | None = None) -> Page:
    """A generic page for a status without its own wording (408, 413, 414, 431, ...)."""
    return page(status, reason_phrase(status).decode(), message, session_id=session_id)
