"""The tool behind the proxy in the HTTP proxy's integration tests, as its own process.

The demo tool's pages (``/``, ``/api/info``, ``/ws`` echo, ``/download?size=N``,
``POST /upload`` answering length and SHA-256), mounted at ``/`` and again at
``/_studio/pth/`` for path mode, plus:

    GET /conn        the client port of the connection the request came on (reuse check)
    GET /redirect    302 to /elsewhere with a cookie for Path=/ and Refresh to /again (all
                     escape a path prefix)
    GET /clear       Clear-Site-Data: "cookies", "storage" (the site's cookies, all studios')

    python -m tests.integration.http_tool --port N
"""

from __future__ import annotations

import argparse
import sys

from twisted.web.resource import Resource
from twisted.web.server import Request

from studios_gateway.demo.tool import QuietSite, make_root


class Conn(Resource):
    isLeaf = True

    def render_GET(self, request: Request) -> bytes:
        return str(request.transport.getPeer().port).encode()  # type: ignore[union-attr]


class Escape(Resource):
    isLeaf = True

    def render_GET(self, request: Request) -> bytes:
        request.setResponseCode(302)
        request.setHeader(b"location", b"/elsewhere")
        request.addCookie(b"t", b"1", path=b"/")
        request.setHeader(b"refresh", b"0; url=/again")
        return b""


class ClearSiteData(Resource):
    """A tool that asks the browser to delete the site's cookies and storage."""

    isLeaf = True

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"clear-site-data", b'"cookies", "storage"')
        return b"cleared"


def make_tool() -> Resource:
    root = make_root("/")
    path_root = make_root("/pth/")
    for page in (root, path_root.children[b"pth"]):
        page.putChild(b"conn", Conn())
        page.putChild(b"redirect", Escape())
        page.putChild(b"clear", ClearSiteData())
    root.putChild(b"_studio", path_root)
    return root


def main() -> int:
    from twisted.internet import reactor

    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    args = p.parse_args()
    reactor.listenTCP(args.port, QuietSite(make_tool()), interface="127.0.0.1")  # type: ignore
    reactor.run()  # type: ignore[attr-defined]
    return 0


if __name__ == "__main__":
    sys.exit(main())
