"""The management endpoints: /live, /ready, /metrics, /shutdown, and the admin API mount.

Every endpoint but /live needs ``Authorization: Bearer <CONNECT_MANAGEMENT_AUTH_KEY>``
when a key is configured; the key is compared in constant time.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Callable
from typing import Any, Protocol

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.web.http import HTTPChannel
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from studios_gateway.metrics import CONTENT_TYPE_LATEST, Metrics
from studios_gateway.shown import shown


class Health(Protocol):
    def check_ready(self) -> Deferred[tuple[bool, dict[str, str]]]:
        """(ready, {check name: "ok" or the reason it is not})."""


def json_reply(request: Request, code: int, body: Any) -> bytes:
    """`body` as the JSON answer of every management endpoint (status, type, no-store)."""
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"cache-control", b"no-store")
    return json.dumps(body, indent=1).encode() + b"\n"


def _allowed(resource: Resource) -> list[str]:
    """The methods `resource` answers (its ``render_X`` methods; HEAD where GET is)."""
    methods = sorted(name[len("render_"):] for name in dir(resource)
                     if name.startswith("render_") and name != "render_HEAD")
    return methods + ["HEAD"] if "GET" in methods else methods


def method_not_allowed(request: Request, allowed: list[str]) -> bytes:
    """405 in the management endpoints' JSON, with the Allow header."""
    request.setHeader(b"allow", ", ".join(allowed).encode())
    return json_reply(request, 405, {"error": f"method {_method(request)} not allowed here; "
                                              f"use {' or '.join(allowed) or 'nothing'}"})


def not_found(request: Request) -> bytes:
    """404 in the management endpoints' JSON."""
    return json_reply(request, 404, {"error": "no such endpoint (see GET / for the list)"})


def _method(request: Request) -> str:
    return request.method.decode("ascii", "replace")


class _Leaf(Resource):
    """A management endpoint: its ``render_X`` per method, and JSON for any other method
    (twisted.web's own answer is an HTML page, and its HEAD falls back to a
    ``render_GET`` the endpoint may not have)."""

    isLeaf = True

    def render(self, request: Request) -> Any:
        name = "GET" if request.method == b"HEAD" else _method(request)
        handler = getattr(self, "render_" + name, None) if name.isalpha() else None
        if handler is None:
            return method_not_allowed(request, _allowed(self))
        return handler(request)


class _NotFound(_Leaf):
    def render(self, request: Request) -> bytes:
        return not_found(request)


class JsonDirectory(Resource):
    """A management path segment with children (``/api``): an unknown child, or the
    segment itself, is a JSON 404 instead of twisted.web's HTML page."""

    def getChild(self, path: bytes, request: Request) -> Resource:
        return _NotFound()

    def render(self, request: Request) -> bytes:
        return not_found(request)


class LiveResource(_Leaf):
    def render_GET(self, request: Request) -> bytes:
        return json_reply(request, 200, {"status": "live"})


class ReadyResource(_Leaf):
    _log = Logger()

    def __init__(self, health: Health, metrics: Metrics):
        super().__init__()
        self._health = health
        self._metrics = metrics

    def render_GET(self, request: Request) -> int:
        gone: list[bool] = []
        request.notifyFinish().addErrback(lambda _: gone.append(True))

        def done(result: tuple[bool, dict[str, str]]) -> None:
            ready, checks = result
            self._metrics.ready.set(1 if ready else 0)
            if not gone:
                request.write(json_reply(request, 200 if ready else 503,
                                    {"status": "ready" if ready else "not ready",
                                     "checks": checks}))
                request.finish()

        def failed(f: Any) -> None:
            self._log.failure("readiness check failed", f)
            done((False, {"internal": "readiness check raised an error"}))

        self._health.check_ready().addCallbacks(done, failed)
        return NOT_DONE_YET


class MetricsResource(_Leaf):
    """Prometheus text. Each scrape asks the same checks as /ready first, so
    `studios_gateway_ready` is this moment's answer (not that of the last /ready call,
    which nothing may have made); the store's ping is bounded as /ready's is."""

    _log = Logger()

    def __init__(self, metrics: Metrics, health: Health):
        super().__init__()
        self._metrics = metrics
        self._health = health

    def render_GET(self, request: Request) -> int:
        gone: list[bool] = []
        request.notifyFinish().addErrback(lambda _: gone.append(True))

        def checked(result: tuple[bool, dict[str, str]]) -> None:
            self._metrics.ready.set(1 if result[0] else 0)

        def failed(f: Any) -> None:
            self._log.failure("readiness check failed", f)
            self._metrics.ready.set(0)

        def send(_: None) -> None:
            if not gone:
                request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode())
                request.write(self._metrics.render())
                request.finish()

        self._health.check_ready().addCallbacks(checked, failed).addCallback(send)
        return NOT_DONE_YET


class ShutdownResource(_Leaf):
    _log = Logger()

    def __init__(self, shutdown: Callable[[], Any]):
        super().__init__()
        self._shutdown = shutdown

    def render_POST(self, request: Request) -> bytes:
        self._log.info("graceful shutdown requested through the management port")
        # Answer first, then drain: the caller sees 202 before listeners close.
        from twisted.internet import reactor

        reactor.callLater(0, self._shutdown)
        return json_reply(request, 202, {"status": "draining"})


class _Unauthorized(_Leaf):
    def render(self, request: Request) -> bytes:
        request.setHeader(b"www-authenticate", b'Bearer realm="studios-gateway management"')
        return json_reply(request, 401, {"error": "missing or wrong bearer token"})


class ManagementRoot(Resource):
    """Root of the management site; guards every child except /live."""

    def __init__(self, *, auth_key: str | None, health: Health, metrics: Metrics,
                 shutdown: Callable[[], Any], api: Resource | None = None):
        super().__init__()
        self._key = auth_key.encode() if auth_key else None
        self.putChild(b"live", LiveResource())
        self.putChild(b"ready", ReadyResource(health, metrics))
        self.putChild(b"metrics", MetricsResource(metrics, health))
        self.putChild(b"shutdown", ShutdownResource(shutdown))
        if api is not None:
            self.putChild(b"api", api)

    @staticmethod
    def is_open(path: bytes) -> bool:
        """Whether a request target needs no key (only /live), split as twisted.web does."""
        segments = path.split(b"?", 1)[0].split(b"/")[1:]
        return bool(segments) and segments[0] == b"live"

    def authorized(self, request: Request) -> bool:
        return self.key_matches(request.getHeader(b"authorization"))

    def key_matches(self, header: bytes | str | None) -> bool:
        if self._key is None:
            return True
        header = header or b""
        if isinstance(header, str):
            header = header.encode()
        scheme, _, token = header.partition(b" ")
        # Compare even on a wrong scheme so timing tells nothing about which part failed.
        ok = hmac.compare_digest(token.strip(), self._key)
        return ok and scheme.lower() == b"bearer"

    def getChildWithDefault(self, path: bytes, request: Request) -> Resource:
        if path != b"live" and not self.authorized(request):
            return _Unauthorized()
        return super().getChildWithDefault(path, request)

    def getChild(self, path: bytes, request: Request) -> Resource:
        # "/" itself (an empty segment) is this root; anything unknown a JSON 404.
        return self if path == b"" else _NotFound()

    def render(self, request: Request) -> Any:
        if request.method not in (b"GET", b"HEAD"):
            return method_not_allowed(request, ["GET", "HEAD"])
        if not self.authorized(request):
            return _Unauthorized().render(request)
        # Every admin API there is (/api/quota, /api/users with SSH), not /api/sessions only.
        api = self.children.get(b"api")
        mounted = sorted(name.decode() for name in api.children) if api is not None else []
        return json_reply(request, 200, {"endpoints": ["/live", "/ready", "/metrics", "/shutdown",
                                                  *(f"/api/{name}" for name in mounted)]})


_REFUSAL = (b"HTTP/1.1 401 Unauthorized\r\n"
            b'WWW-Authenticate: Bearer realm="studios-gateway management"\r\n'
            b"Content-Type: application/json\r\n"
            b"Cache-Control: no-store\r\n"
            b"Connection: close\r\n")
_REFUSAL_BODY = b'{"error": "missing or wrong bearer token"}\n'


class RefusalLog:
    """Logs requests refused for a missing or wrong key: at most `per_window` lines each
    `window` seconds; the rest are counted and the count logged in one line when the
    window ends, so a caller trying keys cannot fill the log. The key sent is never
    logged."""

    _log = Logger()

    def __init__(self, clock: Any = None, per_window: int = 10, window: float = 60.0):
        self._clock = clock
        self._per_window = per_window
        self._window = window
        self._start: float | None = None
        self._logged = 0
        self._quiet = 0
        self._report_call: Any = None

    def refused(self, method: bytes, path: bytes, peer: str) -> None:
        if self._clock is None:
            from twisted.internet import reactor
            self._clock = reactor
        now = self._clock.seconds()
        if self._start is None or now - self._start >= self._window:
            self._start, self._logged = now, 0
        if self._logged < self._per_window:
            self._logged += 1
            self._log.warn("management request refused (missing or wrong bearer token): "
                           "{method} {path} from {peer}", method=shown(method, 16),
                           path=shown(path, 200), peer=peer)
            return
        self._quiet += 1
        if self._report_call is None:
            self._report_call = self._clock.callLater(self._start + self._window - now,
                                                      self._report)

    def _report(self) -> None:
        self._report_call = None
        quiet, self._quiet = self._quiet, 0
        self._log.warn("{n} more management requests refused (missing or wrong bearer token) "
                       "in the last {window:g} s, not logged one by one", n=quiet,
                       window=self._window)


class ManagementChannel(HTTPChannel):
    """Refuses a request without the key as soon as its head is complete.

    twisted.web reads the whole body before a resource sees the request, so a caller
    without the key could make the gateway buffer any amount; here the 401 goes out
    when the headers end and the connection closes without reading the body. The
    refusal is logged (:class:`RefusalLog`, the site's).
    """

    site: ManagementSite
    _refused = False

    def dataReceived(self, data: bytes) -> None:
        if not self._refused:
            super().dataReceived(data)

    def allHeadersReceived(self) -> None:
        root = self.site.resource
        request = self.requests[-1]
        transport = self.transport
        if (transport is not None and isinstance(root, ManagementRoot)
                and not root.is_open(self._path)
                and not root.key_matches(request.requestHeaders.getRawHeaders(
                    b"authorization", [None])[0])):
            self._refused = True
            peer = transport.getPeer()
            self.site.refusals.refused(self._command, self._path,
                                       str(getattr(peer, "host", peer)))
            transport.write(_REFUSAL + b"Content-Length: %d\r\n\r\n" % len(_REFUSAL_BODY)
                            + _REFUSAL_BODY)
            transport.loseConnection()
            return
        super().allHeadersReceived()

    def allContentReceived(self) -> None:
        if not self._refused:  # a refused request without a body must not be rendered too
            super().allContentReceived()

    def rawDataReceived(self, data: bytes) -> None:
        if not self._refused:
            super().rawDataReceived(data)


class ManagementSite(Site):
    """The management site, without twisted.web's per-request access log lines."""

    protocol = ManagementChannel  # type: ignore[assignment]

    def __init__(self, resource: Resource, refusals: RefusalLog | None = None) -> None:
        super().__init__(resource)
        self.refusals = refusals or RefusalLog()

    def log(self, request: Any) -> None:
        pass


def make_site(root: ManagementRoot) -> ManagementSite:
    site = ManagementSite(root)
    site.displayTracebacks = False
    return site
