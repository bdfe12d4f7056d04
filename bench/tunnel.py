"""Tunnel throughput and stream-open latency, against the same work done directly.

    .venv/bin/python -m bench.tunnel                 # 256 MiB transfers, 3 runs, 300 opens
    .venv/bin/python -m bench.tunnel --size-mib 1024 --runs 5

This process plays the gateway: it runs the real tunnel listener (TLS, bind
handshake, yamux) with an in-memory session. A real `studios-connect`
process binds to it and serves the demo tool, which runs as a third process.
Every figure is measured twice in the same run, from the same reactor:

- tunnel: a yamux stream opened by the gateway, through `studios-connect`, to the tool;
- websocket: the same, the tunnel carried in a WebSocket to the gateway's HTTP proxy
  (`ws://.../_connect/tunnel`, the carrier for HTTP-only egress), a second
  `studios-connect` bound to a second session;
- direct: a TCP connection from this process straight to the tool.

Printed: MB/s (10^6 bytes/s, median of --runs) for a download and an upload,
and the latency of opening a stream and getting a small answer (p50/p99 of
--opens sequential requests), each with the ratio tunnel / direct; then the CPU
seconds per GB of this process (the gateway's side, plus the HTTP client it also
plays) and of `studios-connect` on the tunnel path (median of --runs), which move
less with the machine's load than MB/s do, and the load average.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
from twisted.internet import defer, task
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.internet.protocol import Factory, Protocol

from bench.common import free_port
from studios_gateway.http.proxy import ProxyFactory
from studios_gateway.http.routing import Router

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
CHUNK = 256 * 1024


class Exchange(Protocol):
    """Sends a request head (and optionally a body of zeros), counts the answer's bytes."""

    def __init__(self, head: bytes, body_size: int = 0):
        self.head = head
        self.body_left = body_size
        self.received = 0
        self.first_byte_at: float | None = None
        self.done: defer.Deferred[int] = defer.Deferred()
        self._paused = False
        self._block = bytes(CHUNK)

    def connectionMade(self) -> None:
        self.transport.write(self.head)
        if self.body_left:
            self.transport.registerProducer(self, True)
            self._pump()

    def _pump(self) -> None:
        while not self._paused and self.body_left > 0:
            n = min(self.body_left, CHUNK)
            self.body_left -= n
            self.transport.write(self._block[:n])
        if self.body_left == 0:
            self.body_left = -1
            self.transport.unregisterProducer()

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        if self.body_left > 0:
            self._pump()

    def stopProducing(self) -> None:
        self.body_left = -1

    def dataReceived(self, data: bytes) -> None:
        if self.first_byte_at is None:
            self.first_byte_at = time.perf_counter()
        self.received += len(data)

    def connectionLost(self, reason: Any = None) -> None:
        if not self.done.called:
            self.done.callback(self.received)


class Bench:
    def __init__(self, reactor: Any, args: argparse.Namespace, work: Path):
        self.reactor = reactor
        self.args = args
        self.work = work
        self.procs: list[subprocess.Popen[bytes]] = []
        self.pids: dict[str, int] = {}
        self.cpu: dict[str, list[tuple[float, float]]] = {"down": [], "up": []}

    # Parts ---------------------------------------------------------------------

    @defer.inlineCallbacks
    def start(self) -> Any:
        from studios_gateway.management.sessions import connect_string
        from studios_gateway.registry.base import SessionRecord, hash_token, new_token
        from studios_gateway.registry.memory import MemoryStore
        from studios_gateway.tunnel.server import TunnelServerFactory, TunnelSettings, TunnelTable
        from studios_gateway.wire import tls
        from studios_gateway.wire.tls_guard import GuardedTLSFactory, HandshakeLimits

        self.tool_port = free_port()
        self.spawn("tool", [sys.executable, "-m", "studios_gateway.demo.tool",
                            "--port", str(self.tool_port)])
        cert, key = tls.ensure_self_signed(self.work / "tls", ["127.0.0.1", "localhost"])
        store = MemoryStore(self.reactor)
        token = new_token()
        for sid in ("bench", "bench-ws"):
            yield store.create(SessionRecord(
                id=sid, workspace_id=None, tool="generic", owner="bench", allowed_users=(),
                ssh_enabled=False, token_hash=hash_token(token), created_at=time.time()))
        self.table = TunnelTable(store, node_id="bench", node_address="127.0.0.1:0",
                                 clock=self.reactor, settings=TunnelSettings())
        # The gateway's own TLS layer for its listeners (handshake guard, BIO renewal).
        factory = GuardedTLSFactory(tls.server_options(cert, key),
                                    TunnelServerFactory(self.table), clock=self.reactor,
                                    limits=HandshakeLimits())
        self.port = yield TCP4ServerEndpoint(self.reactor, 0, interface="127.0.0.1").listen(
            factory)
        pin = tls.fingerprint_pem(cert.read_bytes())
        line = connect_string("bench", token, "127.0.0.1", self.port.getHost().port, pin)
        env = {"CONNECT_STRING": line, "CONNECT_TOOL_PORT": str(self.tool_port),
               "CONNECT_CLIENT_LOG_LEVEL": "warn"}
        self.spawn("connect", [str(BIN / "studios-connect")], env)
        # The WebSocket carrier: the real HTTP proxy, handing /_connect/tunnel to the same
        # tunnel listener's protocol.
        proxy = ProxyFactory(router=Router("localhost", "localhost", False), upstream=None,
                             lookup=lambda sid: defer.succeed(None), reactor=self.reactor)
        proxy.carry = factory
        self.http = yield TCP4ServerEndpoint(self.reactor, 0, interface="127.0.0.1").listen(
            proxy)
        ws_url = (f"ws://127.0.0.1:{self.http.getHost().port}/_connect/tunnel?pin={pin}")
        ws_line = connect_string("bench-ws", token, "127.0.0.1", 1, pin)
        self.spawn("connect-ws", [str(BIN / "studios-connect")],
                   {**env, "CONNECT_STRING": ws_line, "CONNECT_GATEWAY_URL": ws_url})
        yield self.wait_for(lambda: self.table.get("bench") is not None, "the tunnel to bind")
        yield self.wait_for(lambda: self.table.get("bench-ws") is not None,
                            "the WebSocket tunnel to bind")

    def spawn(self, name: str, argv: list[str], extra: dict[str, str] | None = None) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CONNECT_")}
        env.update({"PYTHONPATH": str(REPO), **(extra or {})})
        log = open(self.work / f"{name}.log", "wb")  # noqa: SIM115 - lives with the process
        self.procs.append(subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT))
        self.pids[name] = self.procs[-1].pid

    @defer.inlineCallbacks
    def wait_for(self, condition: Any, what: str, timeout: float = 30.0) -> Any:
        deadline = time.monotonic() + timeout
        while not condition():
            for p in self.procs:
                if p.poll() is not None:
                    raise RuntimeError(f"{p.args[0]} exited ({p.returncode}) before {what}; "
                                       f"logs in {self.work}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out waiting for {what}; logs in {self.work}")
            yield task.deferLater(self.reactor, 0.05, lambda: None)

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    # Paths -----------------------------------------------------------------------

    def via(self, path: str, proto: Exchange) -> defer.Deferred[Any]:
        if path in ("tunnel", "websocket"):
            stream = self.table.open_stream("bench" if path == "tunnel" else "bench-ws")
            stream.attach(proto)
            return defer.succeed(proto)
        endpoint = TCP4ClientEndpoint(self.reactor, "127.0.0.1", self.tool_port)
        return endpoint.connect(Factory.forProtocol(lambda: proto))

    @defer.inlineCallbacks
    def transfer(self, path: str, direction: str, size: int) -> Any:
        if direction == "down":
            proto = Exchange(b"GET /download?size=%d HTTP/1.0\r\n\r\n" % size)
        else:
            proto = Exchange(b"POST /upload HTTP/1.0\r\nContent-Length: %d\r\n\r\n" % size, size)
        connect = psutil.Process(self.pids["connect"])
        cpu0 = (_cpu(psutil.Process()), _cpu(connect))
        start = time.perf_counter()
        yield self.via(path, proto)
        received = yield proto.done
        elapsed = time.perf_counter() - start
        if direction == "down" and received < size:
            raise RuntimeError(f"{path}: got {received} of {size} bytes")
        if path == "tunnel":
            gb = size / 1e9
            self.cpu[direction].append(((_cpu(psutil.Process()) - cpu0[0]) / gb,
                                        (_cpu(connect) - cpu0[1]) / gb))
        return size / elapsed / 1e6

    @defer.inlineCallbacks
    def open_latency(self, path: str) -> Any:
        proto = Exchange(b"GET /api/info HTTP/1.0\r\n\r\n")
        start = time.perf_counter()
        yield self.via(path, proto)
        yield proto.done
        assert proto.first_byte_at is not None
        return (proto.first_byte_at - start) * 1000


def _cpu(p: Any) -> float:
    t = p.cpu_times()
    return float(t.user + t.system)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@defer.inlineCallbacks
def run(reactor: Any, args: argparse.Namespace, work: Path) -> Any:
    bench = Bench(reactor, args, work)
    try:
        yield bench.start()
        size = args.size_mib * 1024 * 1024
        rows = []
        paths = ("direct", "tunnel", "websocket")  # alternate, so drift hits each
        for direction in ("down", "up"):
            figures: dict[str, list[float]] = {p: [] for p in paths}
            for _ in range(args.runs):
                for path in paths:
                    figures[path].append((yield bench.transfer(path, direction, size)))
            rows.append((f"{direction}load {args.size_mib} MiB, MB/s",
                         *(statistics.median(figures[p]) for p in paths)))
        latencies: dict[str, list[float]] = {p: [] for p in paths}
        for _ in range(args.opens):
            for path in paths:
                latencies[path].append((yield bench.open_latency(path)))
        for q, name in ((0.5, "p50"), (0.99, "p99")):
            rows.append((f"open + small answer {name}, ms",
                         *(pct(latencies[p], q) for p in paths)))
        print(f"\n{'figure':<34} {'direct':>10} {'tunnel':>10} {'websocket':>10} "
              f"{'tunnel/direct':>14} {'ws/tunnel':>10}")
        for name, d, t, w in rows:
            print(f"{name:<34} {d:>10.2f} {t:>10.2f} {w:>10.2f} {t / d:>14.2f} {w / t:>10.2f}")
        print(f"\n{'tunnel CPU, s per GB':<34} {'gateway':>10} {'connect':>10}")
        for direction, runs in bench.cpu.items():
            print(f"{direction + 'load':<34} {statistics.median(r[0] for r in runs):>10.2f} "
                  f"{statistics.median(r[1] for r in runs):>10.2f}")
        print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    finally:
        bench.stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size-mib", type=int, default=256)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--opens", type=int, default=300)
    p.add_argument("--keep", action="store_true", help="keep the work dir with the logs")
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-tunnel-"))
    try:
        task.react(run, (args, work))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
