"""A tool that asks for a service worker over the whole host, as its own process.

Serves under ``CONNECT_TOOL_PATH_PREFIX`` on ``127.0.0.1:CONNECT_TOOL_PORT`` (both set by
studios-connect for a command of one's own):

    GET <prefix>                a page (the test registers the worker from it)
    GET <prefix>static/sw.js    a worker script with ``Service-Worker-Allowed: /`` (what
                                code-server sends for its own worker)

Standard library only: studios-connect runs it as the studio's command.
"""

from __future__ import annotations

import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PREFIX = os.environ.get("CONNECT_TOOL_PATH_PREFIX", "/")
PAGE = b"<!doctype html><title>sw tool</title><p id=ready>a studio page</p>"
WORKER = b"self.addEventListener('fetch', () => {});"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # kept alive, Content-Length: the compiled lane's form

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        path = self.path.split("?", 1)[0]
        if path == PREFIX:
            self.answer(PAGE, "text/html")
        elif path == PREFIX + "static/sw.js":
            self.answer(WORKER, "text/javascript", [("Service-Worker-Allowed", "/")])
        else:
            self.answer(b"not here", "text/plain", status=404)

    def answer(self, body: bytes, kind: str, extra: list[tuple[str, str]] | None = None,
               status: int = 200) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        for name, value in extra or []:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


if __name__ == "__main__":
    ThreadingHTTPServer(("127.0.0.1", int(os.environ["CONNECT_TOOL_PORT"])),
                        Handler).serve_forever()
