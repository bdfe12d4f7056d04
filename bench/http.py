"""HTTP through the gateway vs direct to the tool vs the proxies users would pick instead.

    .venv/bin/python -m bench.http [--quick]

Two scenarios of the harness (bench/run runs them with the others):

* small responses: wrk, keep-alive, 1 and 32 connections, GET of 512 bytes from the
  nginx tool; requests/s and latency p50/p99;
* WebSocket echo: one connection to the demo tool's /ws, 32-byte text messages sent
  at a fixed rate, each round trip timed; p50/p99.

Each figure is the median of several runs; runs go round-robin over the paths so
that drift on the machine touches every path alike.
"""

from __future__ import annotations

import socket
import statistics
import sys
import time

from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, Ping, RejectConnection, Request, TextMessage

from bench.arena import GATEWAY, NGINX, STUNNEL, Arena, Target
from bench.common import Run, Section, rounds, wrk


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if b else "-"


def small_responses(run: Run, arena: Arena) -> Section:
    section = Section(
        "Small HTTP responses",
        "wrk, keep-alive, `GET /small` (512-byte body from the nginx tool), "
        f"{run.seconds:g} s per run, median of {run.runs} runs. "
        "Every proxy runs as one process (nginx: 1 worker). 1 connection uses 1 wrk "
        "thread, 32 connections 2 threads.", notes=list(arena.notes))
    results: dict[tuple[str, int], list[tuple[float, float, float]]] = {}
    for conns in (1, 32):
        for _ in range(run.runs):
            for name, target in arena.http.items():
                r = wrk(target.url("/small"), conns, run.seconds, target.headers)
                if r.errors:
                    section.notes.append(f"{name}, {conns} conn: {r.errors} errors in a run")
                results.setdefault((name, conns), []).append((r.rps, r.p50_ms, r.p99_ms))
    rows = []
    med = {k: [statistics.median(x[i] for x in v) for i in range(3)]
           for k, v in results.items()}
    for name in arena.http:
        row = [name]
        for conns in (1, 32):
            rps, p50, p99 = med[(name, conns)]
            row += [f"{rps:,.0f}", f"{p50:.2f}", f"{p99:.2f}"]
        rows.append(row)
    section.tables.append(("", ["path", "req/s (1 conn)", "p50 ms", "p99 ms",
                                "req/s (32 conn)", "p50 ms", "p99 ms"], rows))
    ratios = []
    for name in arena.http:
        if name == GATEWAY:
            continue
        ratios.append([f"gateway / {name}"] + [
            _ratio(med[(GATEWAY, c)][0], med[(name, c)][0]) for c in (1, 32)] + [
            rounds([x[0] for x in results[(GATEWAY, c)]], [x[0] for x in results[(name, c)]])
            for c in (1, 32)])
    section.tables.append(("Ratios of requests/s (above 1: the gateway is faster; per round: "
                           "the ratio of the runs made side by side, median and range)",
                           ["ratio", "1 conn", "32 conn", "1 conn, per round",
                            "32 conn, per round"], ratios))
    return section


class EchoClient:
    """A blocking WebSocket client that times each text echo."""

    def __init__(self, target: Target, timeout: float = 30.0):
        self.sock = socket.create_connection(("127.0.0.1", target.port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.ws = WSConnection(ConnectionType.CLIENT)
        host = target.headers.get("Host", f"127.0.0.1:{target.port}")
        extra = [(k.encode(), v.encode()) for k, v in target.headers.items() if k != "Host"]
        self.sock.sendall(self.ws.send(Request(host=host, target=target.prefix + "/ws",
                                               extra_headers=extra)))
        while True:
            events = self._events()
            if any(isinstance(e, AcceptConnection) for e in events):
                return
            for e in events:
                if isinstance(e, RejectConnection):
                    raise RuntimeError(f"{target.name}: WebSocket refused ({e.status_code})")

    def _events(self) -> list[object]:
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("WebSocket closed")
        self.ws.receive_data(data)
        events = list(self.ws.events())
        for e in events:
            if isinstance(e, Ping):
                self.sock.sendall(self.ws.send(e.response()))
        return events

    def round_trip(self, text: str) -> float:
        start = time.perf_counter()
        self.sock.sendall(self.ws.send(TextMessage(data=text)))
        got = ""
        while True:
            for e in self._events():
                if isinstance(e, TextMessage):
                    got += e.data
                    if e.message_finished:
                        if got != text:
                            raise RuntimeError("WebSocket echo differs")
                        return time.perf_counter() - start

    def close(self) -> None:
        self.sock.close()


def echo_run(target: Target, rate: int, seconds: float) -> tuple[float, float]:
    """p50 and p99 round trip (ms) of `rate` messages per second for `seconds`."""
    client = EchoClient(target)
    try:
        for _ in range(20):  # warm up the path (pools, caches)
            client.round_trip("w" * 32)
        times = []
        start = time.monotonic()
        for i in range(int(rate * seconds)):
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)  # pacing the sender at the fixed rate, not a race fix
            times.append(client.round_trip(f"{i:032d}") * 1000)
    finally:
        client.close()
    q = statistics.quantiles(times, n=100)
    return q[49], q[98]


def websocket_echo(run: Run, arena: Arena) -> Section:
    section = Section(
        "WebSocket echo round trip",
        f"One connection to the demo tool's `/ws` echo, a 32-byte text message every "
        f"{1000 / run.ws_rate:g} ms for {run.ws_seconds:g} s ({int(run.ws_rate * run.ws_seconds)}"
        f" round trips), median over {run.runs} runs of each run's percentile.",
        notes=list(arena.notes))
    got: dict[str, list[tuple[float, float]]] = {}
    for _ in range(run.runs):
        for name, target in arena.ws.items():
            got.setdefault(name, []).append(echo_run(target, run.ws_rate, run.ws_seconds))
    med = {k: (statistics.median(x[0] for x in v), statistics.median(x[1] for x in v))
           for k, v in got.items()}
    section.tables.append(("", ["path", "p50 ms", "p99 ms"],
                           [[n, f"{p50:.3f}", f"{p99:.3f}"] for n, (p50, p99) in med.items()]))
    def row(a: str, b: str, label: str) -> list[str]:
        return [label, _ratio(med[a][0], med[b][0]), _ratio(med[a][1], med[b][1]),
                rounds([x[1] for x in got[a]], [x[1] for x in got[b]])]

    rows = [row(GATEWAY, n, f"gateway / {n}") for n in arena.ws if n != GATEWAY]
    if STUNNEL in med and NGINX in med:
        # The same shape as the gateway's path (two more processes, TLS between them) in C:
        # what the target "at most 1.5x nginx" asks of the architecture in this sitting.
        rows.append(row(STUNNEL, NGINX, f"{STUNNEL} / {NGINX} (the path's shape in C)"))
    section.tables.append(("Ratios of round-trip time (below 1: the gateway is faster; per "
                           "round: the ratio of the runs made side by side, median and range)",
                           ["ratio", "p50", "p99", "p99, per round"], rows))
    return section


def main(argv: list[str] | None = None) -> int:
    from bench import main as harness

    args = list(sys.argv[1:] if argv is None else argv)
    return harness.main(["--only", "http-small,websocket", *args])


if __name__ == "__main__":
    sys.exit(main())
