"""A fake Platform for the gateway's calls to it (access, SSH keys): a small real HTTP
server on 127.0.0.1 (twisted.web) whose answers a test sets, and an HTTP client for the
gateway's side that keeps no connection alive after a test."""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.trial import unittest
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site


class FakePlatform(Resource):
    """Answers GET <path> from `answers` (by path and query; else `default`) and records
    each request's path and Authorization header. `hang`: no answer at all;
    `stall_body`: the status, the headers and half the body, then nothing more (the
    requests are kept in `stalled`)."""

    isLeaf = True

    def __init__(self, default: tuple[int, bytes] = (404, b'{"error": "not found"}')) -> None:
        super().__init__()
        self.answers: dict[str, tuple[int, bytes]] = {}
        self.default = default
        self.requests: list[tuple[str, str]] = []
        self.hang = False
        self.stall_body = False
        self.stalled: list[Request] = []

    def render_GET(self, request: Request) -> Any:
        path = request.uri.decode()
        self.requests.append((path, (request.getHeader(b"authorization") or b"").decode()))
        if self.hang:
            return NOT_DONE_YET
        code, body = self.answers.get(path, self.default)
        request.setResponseCode(code)
        request.setHeader(b"content-type", b"application/json")
        if self.stall_body:
            request.write(body[:len(body) // 2])
            self.stalled.append(request)
            request.notifyFinish().addErrback(lambda _: None)
            return NOT_DONE_YET
        return body

    def listen(self, test: unittest.TestCase) -> str:
        """Serve on a free port of 127.0.0.1 until `test` ends; returns the base URL."""
        port = reactor.listenTCP(0, Site(self), interface="127.0.0.1")  # type: ignore[attr-defined]
        test.addCleanup(port.stopListening)
        return f"http://127.0.0.1:{port.getHost().port}"


def http_client() -> Any:
    """treq with no kept-alive connections: none may be left behind when a test ends."""
    from treq.client import HTTPClient
    from twisted.web.client import Agent, HTTPConnectionPool

    return HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False)))
