"""A recording stand-in for RStudio Server's `rserver` (RStudio cannot be installed here).

It is NOT RStudio. It checks its command line against options RStudio Server
documents for rserver (rserver.conf / `rserver --help`: www-address, www-port,
auth-none, server-user, www-root-path, server-daemonize and a few more), refuses
an unknown option as rserver does, and then serves HTTP the way RStudio does
behind a proxy: at ``/`` (the proxy removes any path prefix), building its own
URLs from the root path (``X-RStudio-Root-Path`` when sent, else
``--www-root-path``). Every request is appended to $RSTUDIO_STANDIN_LOG as one
JSON line (method, path, root path header), and the parsed options once at start.

    rserver --version    prints this stand-in's own version line (RStudio's exact
                         format is not documented; the preset needs only a version)
    rserver --help       lists the options it knows, one per line
"""

from __future__ import annotations

import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

STANDIN_VERSION = "2024.12.0+467"
DOCUMENTED = {  # rserver options (name -> takes a value), from RStudio Server's admin guide
    "www-address": True, "www-port": True, "www-root-path": True, "auth-none": True,
    "server-user": True, "server-daemonize": True, "server-working-dir": True,
    "server-data-dir": True, "server-pid-file": True, "secure-cookie-key-file": True,
    "database-config-file": True, "www-frame-origin": True, "www-verify-user-agent": True,
    "www-enable-origin-check": True, "www-allow-origin": True, "www-same-site": True,
    "auth-minimum-user-id": True, "auth-cookies-force-secure": True, "config-file": True,
}


def parse(argv: list[str]) -> dict[str, str]:
    options: dict[str, str] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--"):
            raise SystemExit(f"rserver stand-in: unexpected argument {arg!r}")
        name, eq, value = arg[2:].partition("=")
        if name not in DOCUMENTED:
            raise SystemExit(f"rserver stand-in: unrecognised option '--{name}'")
        if not eq:
            i += 1
            if i >= len(argv):
                raise SystemExit(f"rserver stand-in: option '--{name}' needs a value")
            value = argv[i]
        options[name] = value
        i += 1
    return options


def record(entry: dict[str, Any]) -> None:
    with open(os.environ["RSTUDIO_STANDIN_LOG"], "a") as f:
        f.write(json.dumps(entry) + "\n")


def make_handler(root_path: str) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            header = self.headers.get("X-RStudio-Root-Path")
            record({"method": "GET", "path": self.path, "root_path_header": header,
                    "host": self.headers.get("Host")})
            root = (header or root_path or "/").rstrip("/")
            if self.path.startswith("/_studio/"):
                body, status = b"not found (RStudio serves at /)", 404
            else:
                body = (f'<html><head><base href="{root}/"></head><body>RStudio stand-in '
                        f'at {root}/ <a href="{root}/auth-sign-in">x</a></body></html>').encode()
                status = 200
            self.send_response(status)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


def main(argv: list[str]) -> int:
    if argv == ["--version"]:
        print(f"{STANDIN_VERSION} (rserver stand-in for tests, not RStudio)")
        return 0
    if argv == ["--help"]:
        print("rserver stand-in options:\n" + "\n".join(f"  --{n} arg" for n in DOCUMENTED))
        return 0
    options = parse(argv)
    record({"argv": argv, "options": options})
    if options.get("server-daemonize", "1") != "0":
        raise SystemExit("rserver stand-in: would daemonize (RStudio's default as root)")
    server = ThreadingHTTPServer((options.get("www-address", "0.0.0.0"),
                                  int(options.get("www-port", "8787"))),
                                 make_handler(options.get("www-root-path", "/")))
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    import signal

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    sys.exit(main(sys.argv[1:]))
