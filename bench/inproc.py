"""The HTTP proxy's own Python per small request, in one process, without sockets.

    .venv/bin/python -m bench.inproc
    .venv/bin/python -m bench.inproc --tree before=/tmp/before --tree after=. --runs 3
    .venv/bin/python -m bench.inproc --profile
    .venv/bin/python -m bench.inproc --login --tree before=/tmp/before --tree after=.

One ProxyProtocol (the gateway's, from the tree given) on in-memory transports: a
keep-alive client sends a request, the pooled tool connection answers nginx's 512-byte
response, over and over. The request takes the synchronous fast path (login and session
known) and is reported to the traffic observer with its text access line (kept in
memory), as in the gateway; the tunnel, TLS, the reactor and the system calls are not
here. Two requests: wrk's (Host, a login cookie, User-Agent, Accept) and a browser's
(fourteen headers, two cookies). Each tree runs in its own process, the trees in turn
(`--runs` rounds); per tree and request the lowest CPU time per request of 5 batches.
``--profile`` prints cProfile's table for the first tree instead. ``--login``: the
fast path's answer comes from the gateway's own login (``make_fast_path`` over an
``Auth`` with a signed cookie and a remembered decision) instead of a constant.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent

WRK = (b"GET /small HTTP/1.1\r\nHost: abc.studios.test\r\n"
       b"Cookie: __Host-connect_session=abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnop\r\n"
       b"User-Agent: wrk\r\nAccept: */*\r\n\r\n")
BROWSER = (
    b"GET /static/lab/main.css HTTP/1.1\r\nHost: abc.studios.test\r\nConnection: keep-alive\r\n"
    b"sec-ch-ua: \"Chromium\";v=\"130\", \"Not?A_Brand\";v=\"99\"\r\nsec-ch-ua-mobile: ?0\r\n"
    b"User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    b"Chrome/130.0.0.0 Safari/537.36\r\n"
    b"sec-ch-ua-platform: \"Linux\"\r\nAccept: text/css,*/*;q=0.1\r\n"
    b"Sec-Fetch-Site: same-origin\r\nSec-Fetch-Mode: no-cors\r\nSec-Fetch-Dest: style\r\n"
    b"Referer: http://abc.studios.test/lab\r\nAccept-Encoding: gzip, deflate, br, zstd\r\n"
    b"Accept-Language: en-US,en;q=0.9\r\n"
    b"Cookie: _xsrf=2|abcdef|0123456789abcdef0123456789abcdef|1700000000; "
    b"__Host-connect_session=abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnop\r\n\r\n")
NGINX = (b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Thu, 03 Dec 2026 20:00:00 GMT\r\n"
         b"Content-Type: application/octet-stream\r\nContent-Length: 512\r\n"
         b"Last-Modified: Thu, 03 Dec 2026 20:00:00 GMT\r\nConnection: keep-alive\r\n"
         b"ETag: \"6570a1b2-200\"\r\nAccept-Ranges: bytes\r\n\r\n" + b"x" * 512)
REQUESTS = {"wrk": WRK, "browser": BROWSER}


class _Lines:
    """Where the access lines go: kept, the way the log's buffer keeps a batch, and made
    into text a batch at a time as its flush does (so their cost is counted)."""

    def __init__(self, render: Any) -> None:
        self.render = render
        self.lines: list[Any] = []

    def add(self, when: float, line: str) -> None:
        self.lines.append(line)
        if len(self.lines) > 1000:
            self.lines.clear()

    def add_fields(self, when: float, fields: tuple[Any, ...]) -> None:
        self.lines.append(fields)
        if len(self.lines) > 1000:
            render = self.render
            [line if type(line) is str else render(line) for line in self.lines]
            self.lines.clear()


def _login_fast_path(request: bytes, clock: Any) -> tuple[bytes, Any]:
    """`request` with a real studio cookie, and make_fast_path over a real Auth that
    has decided alice may use studio abc."""
    from studios_gateway.auth.authorizer import Authorizer
    from studios_gateway.auth.login import Auth
    from studios_gateway.auth.settings import AuthSettings
    from studios_gateway.http.component import make_fast_path
    from studios_gateway.registry.base import SessionRecord

    record = SessionRecord(id="abc", workspace_id=None, tool="jupyter", owner="alice",
                           allowed_users=(), ssh_enabled=False, token_hash="x",
                           created_at=0.0)

    class Store:
        def get(self, session_id: str) -> Any:
            return record if session_id == "abc" else None

    clock.advance(1_700_000_000)
    authorizer = Authorizer(Store(), clock=clock, ttl=3600,
                            workspace_allowed=lambda workspace: True)
    settings = AuthSettings(proxy_url="https://studios.test", studios_domain="studios.test",
                            path_routing=False, storage_root="/nonexistent",
                            secure_cookies=True, issuer=None)
    auth = Auth(settings, reactor=clock, authorizer=authorizer, key=b"k" * 32)
    value = auth._cookies.issue("alice", "abc", "login1", 3600)
    authorizer.check("abc", "alice")

    class Here:
        def is_local(self, session_id: str) -> bool:
            return True

    fake = b"abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnop"
    assert fake in request
    return request.replace(fake, value.encode()), make_fast_path(auth, Here())  # type: ignore


def _proxy(request: bytes, login: bool = False) -> Any:
    """A ProxyProtocol with one client and one pooled tool connection; returns a function
    that runs one request through both."""
    from prometheus_client import CollectorRegistry
    from twisted.internet import defer
    from twisted.internet.address import IPv4Address
    from twisted.internet.testing import MemoryReactorClock, StringTransport

    from studios_gateway.http.proxy import ProxyFactory
    from studios_gateway.http.routing import Router
    from studios_gateway.http.upstream import SessionInfo
    from studios_gateway.traffic.access_log import AccessLog
    from studios_gateway.traffic.metrics import TrafficMetrics
    from studios_gateway.traffic.observer import Traffic

    class Who:
        subject = "alice"

    conns: list[Any] = []

    class Upstream:
        def connect(self, session_id: str, factory: Any) -> Any:
            p = factory.buildProtocol(None)
            t = StringTransport()
            p.makeConnection(t)
            conns.append((p, t))
            return defer.succeed(p)

    clock = MemoryReactorClock()
    access = AccessLog("text", "bench")
    access._buffer = _Lines(access._render)  # type: ignore[assignment]
    traffic = Traffic(metrics=TrafficMetrics(CollectorRegistry()), access_log=access,
                      clock=clock)
    known = (Who(), SessionInfo("abc", "jupyter", True))
    fast: Any = lambda request, sid: known  # noqa: E731
    if login:
        request, fast = _login_fast_path(request, clock)
    factory = ProxyFactory(router=Router("studios.test", "studios.test"), upstream=Upstream(),
                           lookup=lambda sid: defer.succeed(known[1]), reactor=clock,
                           fast=fast, observer=traffic)
    client = factory.buildProtocol(None)
    ct = StringTransport(peerAddress=IPv4Address("TCP", "192.0.2.7", 5555))
    client.makeConnection(ct)
    client.dataReceived(request)
    tool, tt = conns[0]
    tool.dataReceived(NGINX)
    if not ct.value().startswith(b"HTTP/1.1 200 "):
        raise SystemExit(f"the proxy did not answer 200: {ct.value()[:200]!r}")

    def one() -> None:
        client.dataReceived(request)
        tool.dataReceived(NGINX)
        ct.clear()
        tt.clear()

    return one, conns


def _measure(n: int, login: bool) -> dict[str, float]:
    out = {}
    for name, request in REQUESTS.items():
        one, conns = _proxy(request, login)
        for _ in range(200):
            one()
        best = float("inf")
        for _ in range(5):
            t0 = time.process_time()
            for _ in range(n):
                one()
            best = min(best, (time.process_time() - t0) / n * 1e6)
        if len(conns) != 1:
            raise SystemExit("the tool connection was not reused")
        out[name] = best
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tree", action="append", default=[], metavar="NAME=DIR",
                   help="a source tree to take the proxy from (repeat; default: this one)")
    p.add_argument("--runs", type=int, default=3, help="rounds over the trees")
    p.add_argument("--requests", type=int, default=4000, help="requests per batch")
    p.add_argument("--profile", action="store_true", help="cProfile the first tree instead")
    p.add_argument("--login", action="store_true",
                   help="the fast path's answer from a real Auth (cookie and decision)")
    p.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--one-tree", default=str(REPO), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:
        sys.path.insert(0, args.one_tree)  # before the first import of studios_gateway
        for name, us in _measure(args.requests, args.login).items():
            print(f"{name} {us:.2f}")
        return 0
    trees = [tuple(t.split("=", 1)) for t in args.tree] or [("this", str(REPO))]
    if args.profile:
        sys.path.insert(0, str(Path(trees[0][1]).resolve()))
        import cProfile
        import pstats
        one, _ = _proxy(WRK, args.login)
        prof = cProfile.Profile()
        prof.runctx("for _ in range(5000): one()", {"one": one}, {})
        pstats.Stats(prof).sort_stats("tottime").print_stats(30)
        return 0
    results: dict[str, dict[str, list[float]]] = {name: {} for name, _ in trees}
    for _ in range(args.runs):
        for name, tree in trees:
            done = subprocess.run(
                [sys.executable, "-m", "bench.inproc", "--one", "--one-tree",
                 str(Path(tree).resolve()), "--requests", str(args.requests)]
                + (["--login"] if args.login else []),
                cwd=REPO, env=_env(), capture_output=True, text=True, check=True)
            for line in done.stdout.split("\n"):
                if line:
                    request, us = line.split()
                    results[name].setdefault(request, []).append(float(us))
    for name, _ in trees:
        row = "  ".join(
            f"{request} {min(v):5.1f} us/request (runs {', '.join(f'{x:.1f}' for x in v)})"
            for request, v in results[name].items())
        print(f"{name:10} {row}")
    return 0


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


if __name__ == "__main__":
    raise SystemExit(main())
