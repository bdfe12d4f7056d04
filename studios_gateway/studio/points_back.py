"""At the bind: is the tool's port the gateway's own HTTP port?

``studios-connect --tool-port 8080`` beside a gateway that listens on 8080 sends
the gateway's requests back to the gateway (docs/http-proxy.md). The gateway marks
every request it sends a tool with ``X-Connect-Session`` and the session's
``X-Connect-Mark`` and answers one that comes back with them, for that very studio,
with 508 (:mod:`studios_gateway.http.loop`). So studios-connect asks its tool's port
what the gateway would ask it, for the studio's address as the bind says it, marked the
same way (the bind's reply gives the mark): only the gateway answers 508 to that, and
studios-connect then stops, saying what to change.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from twisted.internet import defer
from twisted.internet.defer import Deferred

from studios_gateway.studio.presets.probe import PROBE_TIMEOUT

__all__ = ["LOOP_STATUS", "at_first_bind", "check"]

#: What the gateway answers a request of its own that came back (http.loop's).
LOOP_STATUS = 508


def check(fetch_for: Any, port: int, session_id: str, public_url: str,
          clock: Any = None, mark: str = "") -> Deferred[str | None]:
    """Fires with the message for the operator when the tool's `port` is the gateway's
    own, else None (a tool's answer, or none; a tool that does not answer within
    PROBE_TIMEOUT: the fetch is cancelled, with `clock`). `fetch_for(host, headers)` makes
    the fetch (presets/probe.py's http_status). `mark`: the session's, as the bind's reply
    gave it (without it this gateway takes the question for no loop of its own, and an
    earlier one did without it)."""
    parts = urlsplit(public_url)
    if not parts.netloc:  # (a gateway that does not say the studio's address)
        return defer.succeed(None)
    headers = (("X-Connect-Session", session_id),) + ((("X-Connect-Mark", mark),) if mark
                                                      else ())
    fetch = fetch_for(parts.netloc, headers)

    def judged(status: int) -> str | None:
        if status != LOOP_STATUS:
            return None
        return (f"the tool's port {port} is the gateway's own HTTP port (it answered for "
                f"this studio as the gateway does for a request that came back to it), so "
                f"the gateway's requests to the tool would come back to the gateway; give "
                f"--tool-port (CONNECT_TOOL_PORT) the port the tool listens on")

    d: Deferred[int] = fetch(f"http://127.0.0.1:{port}{parts.path or '/'}")
    if clock is not None:
        timeout = clock.callLater(PROBE_TIMEOUT, d.cancel)

        def answered(result: Any) -> Any:
            if timeout.active():
                timeout.cancel()
            return result

        d.addBoth(answered)
    return d.addCallbacks(judged, lambda _: None)


def at_first_bind(reactor: Any, settings: Any, found: Callable[[str], object]
                  ) -> Callable[[Any], None]:
    """The on-bind hook of a studio whose tool runs elsewhere: at the first bind, ask the
    tool's port (:func:`check`) and call `found` with the message when it is the
    gateway's own. Both ways of running studios-connect (its command, twistd) use it."""
    from studios_gateway.studio.presets.probe import http_status

    asked: list[bool] = []

    def on_bind(reply: Any) -> None:
        if asked:
            return
        asked.append(True)
        check(lambda host, headers: http_status(reactor, host, headers),
              settings.tool_port, settings.session_id, reply.public_url,
              reactor, reply.loop_mark).addCallback(
                  lambda problem: found(problem) if problem else None)

    return on_bind
