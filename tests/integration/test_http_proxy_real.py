"""The proxy on real sockets: in this process, in front of a real tool process.

Clients are blocking (http.client, a wsproto WebSocket) and run in threads, so
the proxy keeps the reactor; nothing sleeps to win a race: the tests wait for
the events they need.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import defer, reactor, task, threads
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.trial import unittest
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    CloseConnection,
    Request,
    TextMessage,
)

from studios_gateway.http.proxy import ProxyFactory
from studios_gateway.http.routing import Router
from studios_gateway.http.upstream import EndpointUpstream, SessionInfo
from tests.support.ports import free_port, wait_for_port

REPO = Path(__file__).resolve().parents[2]
DOMAIN = "studios.localhost"
MiB = 1 << 20
BIG = 256 * MiB


# Real sockets on 127.0.0.1 in this process: the integration layer, not the fast one.
pytestmark = pytest.mark.slow


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


class ProxyOnSockets(unittest.TestCase):
    timeout = 120

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        self.tool_port = free_port()
        self.tool = subprocess.Popen(
            [sys.executable, "-m", "tests.integration.http_tool", "--port", str(self.tool_port)],
            cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
        self.addCleanup(self._stop_tool)
        yield threads.deferToThread(wait_for_port, self.tool_port, proc=self.tool)
        sessions = {"abc": SessionInfo("abc", "jupyter", True),
                    "pth": SessionInfo("pth", "jupyter", True)}

        def endpoint(sid: str) -> Any:
            if sid in sessions:
                return TCP4ClientEndpoint(reactor, "127.0.0.1", self.tool_port)
            return None

        self.factory = ProxyFactory(
            router=Router(DOMAIN, DOMAIN), upstream=EndpointUpstream(endpoint),
            lookup=lambda sid: defer.succeed(sessions.get(sid)), reactor=reactor,
            upstream_idle_timeout=30.0)
        self.port = reactor.listenTCP(0, self.factory, interface="127.0.0.1")
        self.addCleanup(self.factory.stop)
        self.addCleanup(self.port.stopListening)
        self.proxy_port = self.port.getHost().port

    def _stop_tool(self) -> None:
        self.tool.send_signal(signal.SIGTERM)
        self.tool.wait(10)

    def connection(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.proxy_port, timeout=60)

    def get(self, conn: http.client.HTTPConnection, path: str, host: str = f"abc.{DOMAIN}"
            ) -> tuple[int, dict[str, str], bytes]:
        conn.request("GET", path, headers={"Host": host})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()

    @defer.inlineCallbacks
    def test_keep_alive_both_sides(self) -> Any:
        def run() -> list[bytes]:
            conn = self.connection()
            ports = [self.get(conn, "/conn")[2] for _ in range(5)]
            conn.close()
            other = self.connection()
            ports.append(self.get(other, "/conn")[2])  # a new client, the pooled upstream
            status, _, body = self.get(other, "/api/info")
            info = json.loads(body)
            other.close()
            assert status == 200 and info["headers"]["x-connect-sub"] == ["anonymous"]
            assert info["headers"]["x-forwarded-for"] == ["127.0.0.1"]
            return ports

        ports = yield threads.deferToThread(run)
        self.assertEqual(len(set(ports)), 1, ports)
        self.assertEqual(self.factory.pool.count("abc"), 1)

    @defer.inlineCallbacks
    def test_a_tools_clear_site_data_is_not_passed_on(self) -> Any:
        """It would make the browser delete every cookie of the site: the gateway's login
        and every other studio's (a real tool process, both ways back: C lane or not)."""
        def run() -> list[tuple[int, dict[str, str], bytes]]:
            conn = self.connection()
            got = [self.get(conn, "/clear"), self.get(conn, "/_studio/pth/clear")]
            conn.close()
            return got

        for status, headers, body in (yield threads.deferToThread(run)):
            self.assertEqual((status, body), (200, b"cleared"))
            self.assertNotIn("clear-site-data", headers)

    @defer.inlineCallbacks
    def test_path_mode_rewrites(self) -> Any:
        self.factory.router = Router(DOMAIN, DOMAIN, path_routing=True)

        def run() -> tuple[Any, ...]:
            conn = self.connection()
            status, headers, _ = self.get(conn, "/_studio/pth/redirect", host=DOMAIN)
            bare = self.get(conn, "/_studio/pth", host=DOMAIN)
            page = self.get(conn, "/_studio/pth/api/info", host=DOMAIN)
            conn.close()
            return status, headers, bare, page

        status, headers, bare, page = yield threads.deferToThread(run)
        self.assertEqual(status, 302)
        self.assertEqual(headers["location"], "/_studio/pth/elsewhere")
        self.assertEqual(headers["set-cookie"], "t=1; Path=/_studio/pth/")
        self.assertEqual((bare[0], bare[1]["location"]), (308, "/_studio/pth/"))
        self.assertEqual(json.loads(page[2])["path"], "/_studio/pth/api/info")

    @defer.inlineCallbacks
    def test_websocket_echo(self) -> Any:
        def run() -> list[str]:
            sock = socket.create_connection(("127.0.0.1", self.proxy_port), timeout=30)
            ws = WSConnection(ConnectionType.CLIENT)
            sock.sendall(ws.send(Request(host=f"abc.{DOMAIN}", target="/ws")))
            got: list[str] = []
            partial = ""
            accepted = False
            while len(got) < 3:
                data = sock.recv(65536)
                assert data, "closed early"
                ws.receive_data(data)
                for ev in ws.events():
                    if isinstance(ev, AcceptConnection):
                        accepted = True
                        for word in ("one", "two", "x" * 100_000):
                            sock.sendall(ws.send(TextMessage(data=word)))
                    elif isinstance(ev, TextMessage):
                        partial += ev.data
                        if ev.message_finished:
                            got.append(partial)
                            partial = ""
            assert accepted
            sock.sendall(ws.send(CloseConnection(code=1000)))
            sock.close()
            return got

        got = yield threads.deferToThread(run)
        self.assertEqual(got, ["one", "two", "x" * 100_000])

    @defer.inlineCallbacks
    def test_a_websocket_from_another_studios_page_is_refused(self) -> Any:
        """Subdomain mode: every studio is a subdomain of one site, so the login cookie
        (SameSite=Lax) goes along with a WebSocket a page of studio B opens to studio A.
        The handshake's Origin names B: refused, 403; A's own pages still connect."""
        def handshake(origin: str) -> bytes:
            sock = socket.create_connection(("127.0.0.1", self.proxy_port), timeout=30)
            ws = WSConnection(ConnectionType.CLIENT)
            sock.sendall(ws.send(Request(host=f"abc.{DOMAIN}:{self.proxy_port}", target="/ws",
                                         extra_headers=[(b"origin", origin.encode())])))
            head = b""
            while b"\r\n\r\n" not in head:
                data = sock.recv(65536)
                if not data:
                    break
                head += data
            sock.close()
            return head.split(b"\r\n", 1)[0]

        def run() -> tuple[bytes, bytes, bytes]:
            return (handshake(f"http://evil.{DOMAIN}:{self.proxy_port}"),
                    handshake("null"),
                    handshake(f"http://abc.{DOMAIN}:{self.proxy_port}"))

        evil, null, own = yield threads.deferToThread(run)
        self.assertEqual((evil, null), (b"HTTP/1.1 403 Forbidden", b"HTTP/1.1 403 Forbidden"))
        self.assertTrue(own.startswith(b"HTTP/1.1 101"), own)

    @defer.inlineCallbacks
    def test_pages_on_real_sockets(self) -> Any:
        def run() -> list[int]:
            conn = self.connection()
            out = [self.get(conn, "/", host=f"nope.{DOMAIN}")[0]]
            conn.close()
            raw = socket.create_connection(("127.0.0.1", self.proxy_port), timeout=30)
            raw.sendall(b"POST / HTTP/1.1\r\nHost: abc.studios.localhost\r\nContent-Length: 1"
                        b"\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
            reply = b""
            while chunk := raw.recv(65536):
                reply += chunk
            raw.close()
            out.append(int(reply.split(b" ", 2)[1]))
            return out

        statuses = yield threads.deferToThread(run)
        self.assertEqual(statuses, [410, 400])  # (410: no such studio, logged in)

    @pytest.mark.slow
    @defer.inlineCallbacks
    def test_streaming_upload_and_download_bounded_memory(self) -> Any:
        chunk = bytes(MiB)
        expected = hashlib.sha256()
        for _ in range(BIG // MiB):
            expected.update(chunk)
        before = rss_kib()

        def upload(chunked: bool, size: int) -> tuple[dict[str, Any], float]:
            conn = self.connection()
            body = (chunk for _ in range(size // MiB))
            headers = {"Host": f"abc.{DOMAIN}"}
            if not chunked:
                headers["Content-Length"] = str(size)
            t0 = time.monotonic()
            conn.request("POST", "/upload", body=body, headers=headers, encode_chunked=chunked)
            resp = conn.getresponse()
            answer = json.loads(resp.read())
            conn.close()
            return answer, time.monotonic() - t0

        answer, up_secs = yield threads.deferToThread(upload, False, BIG)
        self.assertEqual(answer, {"length": BIG, "sha256": expected.hexdigest()})
        answer, _ = yield threads.deferToThread(upload, True, 8 * MiB)
        self.assertEqual(answer["length"], 8 * MiB)
        after_upload = rss_kib()

        # Download: ask, then do not read until the proxy has paused the tool.
        conn = self.connection()
        yield threads.deferToThread(
            conn.request, "GET", f"/download?size={BIG}", headers={"Host": f"abc.{DOMAIN}"})
        yield self._until(self._tool_paused)
        paused_rss = rss_kib()

        def download() -> tuple[int, float]:
            t0 = time.monotonic()
            resp = conn.getresponse()
            n = 0
            while block := resp.read(MiB):
                n += len(block)
            conn.close()
            return n, time.monotonic() - t0

        n, down_secs = yield threads.deferToThread(download)
        after = rss_kib()
        self.assertEqual(n, BIG)
        growth = (max(after_upload, paused_rss, after) - before) / 1024
        print(f"\nupload {BIG / MiB / up_secs:.0f} MiB/s, download {BIG / MiB / down_secs:.0f}"
              f" MiB/s, RSS growth {growth:.1f} MiB (before {before / 1024:.0f} MiB)")
        self.assertLess(growth, 48, "the proxy buffered a body")

    def _tool_paused(self) -> bool:
        for proto in self.factory.active:
            ex = proto._ex
            if ex is not None and ex.up is not None and ex.up.gate is not None:
                return "client-full" in ex.up.gate.reasons()
        return False

    def _until(self, condition: Any, every: float = 0.01, limit: float = 20.0
               ) -> defer.Deferred[None]:
        """Fires when `condition()` holds (checked every `every` s); fails after `limit` s."""
        d: defer.Deferred[None] = defer.Deferred()
        deadline = time.monotonic() + limit

        def check() -> None:
            if condition():
                loop.stop()
                d.callback(None)
            elif time.monotonic() > deadline:
                loop.stop()
                d.errback(AssertionError(f"{condition.__name__} did not happen in {limit}s"))

        loop = task.LoopingCall(check)
        loop.start(every)
        return d
