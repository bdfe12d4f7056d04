"""A small demo tool: a page, a WebSocket echo, and byte sources/sinks for tests.

It stands in for JupyterLab when JupyterLab is not installed, and serves
under CONNECT_TOOL_PATH_PREFIX like a real tool does in path-routing mode.

    GET  {prefix}              the page (shows who you are and echoes over a WebSocket)
    GET  {prefix}api/info      JSON: the request's path, headers the gateway set, the
                               tool's working directory
    GET  {prefix}ws            WebSocket echo (text and bytes)
    GET  {prefix}download?size=N   N bytes, streamed
    POST {prefix}upload        reads the body; answers its length and SHA-256
"""

from __future__ import annotations

import argparse
import hashlib
import html
import json
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from twisted.web.websocket import WebSocketResource, WebSocketTransport
from zope.interface import implementer

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><link rel="icon" href="data:,">
<meta name="viewport" content="width=device-width">
<title>Demo studio</title>
<style>body{{font:16px system-ui,sans-serif;max-width:40em;margin:3em auto;padding:0 1em;
color:#222}}code{{background:#eee;padding:.1em .3em}}#log{{white-space:pre-wrap;
background:#f6f6f6;padding:1em;min-height:4em}}input,button{{font:inherit;min-height:44px;
max-width:100%}}</style></head>
<body><h1>Demo studio</h1>
<p>This page is served by the demo tool inside a studio, through the gateway's tunnel.</p>
<p>You are <code id="who">{who}</code>.</p>
<p><input id="msg" value="hello"> <button id="send">send over WebSocket</button>
<span id="state">connecting…</span> <span id="why"></span></p>
<div id="log"></div>
<script>
const url = new URL("ws", location.href); url.protocol = url.protocol.replace("http", "ws");
const ws = new WebSocket(url);
const log = (t) => document.getElementById("log").textContent += t + "\\n";
ws.onopen = () => document.getElementById("state").textContent = "connected";
ws.onclose = (e) => {{
  document.getElementById("state").textContent = "closed";
  document.getElementById("why").textContent = e.code + (e.reason ? " " + e.reason : "");
}};
ws.onmessage = (e) => log("echo: " + e.data);
document.getElementById("send").onclick = () => ws.send(document.getElementById("msg").value);
</script></body></html>
"""

CHUNK = 64 * 1024


class Echo:
    """WebSocket echo: every message comes back as it went."""

    def negotiationStarted(self, transport: WebSocketTransport) -> None:
        self.transport = transport

    def negotiationFinished(self) -> None:
        pass

    def textMessageReceived(self, message: str) -> None:
        self.transport.sendTextMessage(message)

    def bytesMessageReceived(self, data: bytes) -> None:
        self.transport.sendBytesMessage(bytes(data))

    def pongReceived(self, payload: bytes) -> None:
        pass

    def connectionLost(self, reason: Any) -> None:
        pass


class EchoFactory:
    def buildProtocol(self, request: Request) -> Echo:
        return Echo()


class Page(Resource):
    isLeaf = False

    def getChild(self, path: bytes, request: Request) -> Resource:
        if path == b"":
            return self
        return super().getChild(path, request)

    def render_GET(self, request: Request) -> bytes:
        who = request.getHeader(b"x-connect-sub") or b"(nobody: no X-Connect-Sub header)"
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        return PAGE.format(who=html.escape(who.decode("utf-8", "replace"))).encode()


class Info(Resource):
    isLeaf = True

    def render_GET(self, request: Request) -> bytes:
        headers = {k.decode().lower(): [v.decode("latin-1") for v in vs]
                   for k, vs in request.requestHeaders.getAllRawHeaders()}
        request.setHeader(b"content-type", b"application/json")
        return json.dumps({"path": request.uri.decode("latin-1"), "method":
                           request.method.decode(), "headers": headers,
                           "cwd": os.getcwd()}).encode()


@implementer(IPushProducer)
class _Zeros:
    """Streams `size` bytes to the request, paced by its transport."""

    def __init__(self, request: Request, size: int):
        self.request = request
        self.left = size
        self.paused = False
        self.block = bytes(CHUNK)

    def start(self) -> None:
        self.request.registerProducer(self, True)
        self._pump()

    def _pump(self) -> None:
        while not self.paused and self.left > 0:
            n = min(self.left, CHUNK)
            self.left -= n
            self.request.write(self.block[:n])
        if self.left == 0 and not self.paused:
            self.request.unregisterProducer()
            self.request.finish()
            self.left = -1

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        if self.left >= 0:
            self._pump()

    def stopProducing(self) -> None:
        self.left = -1


class Download(Resource):
    isLeaf = True

    def render_GET(self, request: Request) -> Any:
        try:
            size = int(request.args.get(b"size", [b"1024"])[0])
        except ValueError:
            request.setResponseCode(400)
            return b"size must be a number\n"
        request.setHeader(b"content-type", b"application/octet-stream")
        request.setHeader(b"content-length", str(size).encode())
        _Zeros(request, size).start()
        return NOT_DONE_YET


class Upload(Resource):
    isLeaf = True

    def render_POST(self, request: Request) -> bytes:
        digest = hashlib.sha256()
        n = 0
        assert request.content is not None
        request.content.seek(0)
        while block := request.content.read(1 << 20):
            digest.update(block)
            n += len(block)
        request.setHeader(b"content-type", b"application/json")
        return json.dumps({"length": n, "sha256": digest.hexdigest()}).encode()


def make_root(prefix: str = "/") -> Resource:
    """The tool's resource tree, mounted under `prefix` (which ends in '/')."""
    page = Page()
    # Twisted types the factory by its protocol class; ours is a subclass (invariance).
    page.putChild(b"ws", WebSocketResource(EchoFactory()))  # type: ignore[arg-type]
    page.putChild(b"api", Resource())
    page.children[b"api"].putChild(b"info", Info())
    page.putChild(b"download", Download())
    page.putChild(b"upload", Upload())
    root: Resource = page
    for segment in reversed([s for s in prefix.strip("/").split("/") if s]):
        parent = Resource()
        parent.putChild(segment.encode(), root)
        root = parent
    return root


class QuietSite(Site):
    """No access line per request, and no "Starting factory" line of Twisted's."""

    noisy = False

    def log(self, request: Any) -> None:
        pass


def stop_once(reactor: Any) -> Callable[[], None]:
    """A function that stops `reactor` the first time it is called, and does nothing at
    later calls (a signal that comes again while the reactor shuts down)."""
    asked: list[bool] = []

    def stop() -> None:
        if not asked and reactor.running:
            asked.append(True)
            reactor.stop()

    return stop


def main(argv: list[str] | None = None) -> int:
    from twisted.internet import reactor
    from twisted.logger import FilteringLogObserver, globalLogBeginner, textFileLogObserver

    from studios_gateway import logs

    p = argparse.ArgumentParser(description="studios-gateway demo tool")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--prefix", default="/")
    args = p.parse_args(argv)
    # Its own "listening on" line, not Twisted's "QuietSite starting on N" beside it (nor
    # "(TCP Port N Closed)" at the end), as the gateway's log does.
    logs.drop_port_lines()
    globalLogBeginner.beginLoggingTo(
        [FilteringLogObserver(textFileLogObserver(sys.stderr), logs.PREDICATES)],
        redirectStandardIO=False)
    loop: Any = reactor  # the real reactor: its signal handling is Twisted's, not typed
    try:
        loop.listenTCP(args.port, QuietSite(make_root(args.prefix or "/")), interface=args.host)
    except CannotListenError as e:
        # (It went on running, listening nowhere, and said it listened.)
        print(f"demo tool: cannot listen on {args.host}:{args.port}: {e.socketError}",
              file=sys.stderr)
        return 1
    Logger().info("demo tool listening on {host}:{port}{prefix}", host=args.host,
                  port=args.port, prefix=args.prefix)

    stop = stop_once(loop)

    def on_signal(signum: int, frame: Any) -> None:
        loop.callFromThread(stop)

    # Twisted's own handlers stop the reactor again at a second signal (GNU `timeout`
    # signals the whole process group): a ReactorNotRunning traceback on the way out.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    loop.run(installSignalHandlers=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
