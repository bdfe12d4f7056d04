"""A tool that switches to h2c when a request offers it, as hypercorn or Go's h2c handler
does, as its own process (studios-connect runs it as the studio's command).

Every request is answered with what the tool saw of it, as JSON: its path, its
``Upgrade`` header and its ``X-Connect-Sub`` header. A request with ``Upgrade: h2c`` is
answered ``101 Switching Protocols`` first, and the next request on that connection is
read as the switched protocol's. (It is read as HTTP/1.1 here, not as HTTP/2 frames:
the gateway splices either as bytes, and the test reads the answer with no HTTP/2
library.)

Standard library only.
"""

from __future__ import annotations

import json
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        if (self.headers.get("Upgrade") or "").lower() == "h2c":
            self.send_response(101)
            self.send_header("Connection", "Upgrade")
            self.send_header("Upgrade", "h2c")
            self.end_headers()
            self.wfile.flush()
            self.handle_one_request()  # the switched protocol's first request
            return
        body = json.dumps({"path": self.path, "upgrade": self.headers.get("Upgrade"),
                           "sub": self.headers.get_all("X-Connect-Sub")}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)



if __name__ == "__main__":
    ThreadingHTTPServer(("127.0.0.1", int(os.environ["CONNECT_TOOL_PORT"])),
                        Handler).serve_forever()
