"""HTTP through the gateway vs direct to the tool vs the proxies users would pick instead.

    .venv/bin/python -m bench.http [--quick]

Two scenarios of the harness (bench/run runs them with the others):

* small responses: wrk, keep-alive, 1 and 32 connections, GET of 512 bytes from the
  nginx tool; requests/s and latency p50/p99;
* WebSocket echo: one connection per path to the demo tool's /ws, 32-byte text
  messages sent at a fixed rate, the paths taking turns a second at a time, each round
  trip timed; p50/p99 over all of a path's round trips.

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

from bench.arena import CHP, DIRECT, GATEWAY, NGINX, STUNNEL, Arena, Target
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


def _warm(client: EchoClient) -> None:
    for _ in range(20):  # warm up the path (pools, caches)
        client.round_trip("w" * 32)


def echo_times(client: EchoClient, rate: int, count: int) -> list[float]:
    """`count` round trips (ms), one sent every 1/`rate` s."""
    times = []
    start = time.monotonic()
    for i in range(count):
        delay = start + i / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)  # pacing the sender at the fixed rate, not a race fix
        times.append(client.round_trip(f"{i:032d}") * 1000)
    return times


def _p50_p99(times: list[float]) -> tuple[float, float]:
    q = statistics.quantiles(times, n=100)
    return q[49], q[98]


def echo_run(target: Target, rate: int, seconds: float) -> tuple[float, float]:
    """p50 and p99 round trip (ms) of `rate` messages per second for `seconds`."""
    client = EchoClient(target)
    try:
        _warm(client)
        return _p50_p99(echo_times(client, rate, int(rate * seconds)))
    finally:
        client.close()


#: Each path sends for this long before the next one takes its turn (s).
TURN_SECONDS = 1.0


def echo_rounds(targets: dict[str, Target], rate: int, seconds: float,
                runs: int) -> dict[str, list[list[float]]]:
    """Every path's round trips (ms), per round: one WebSocket per path, all open side by
    side, the paths taking turns of TURN_SECONDS until each has sent for `seconds` in
    each of `runs` rounds. A burst of load on the machine lasting a few seconds then
    touches every path alike, where one path's whole run could fall into it before."""
    clients: dict[str, EchoClient] = {}
    try:
        for name, target in targets.items():
            clients[name] = EchoClient(target)
            _warm(clients[name])
        turns = max(1, round(seconds / TURN_SECONDS))
        per_turn = max(1, int(rate * seconds / turns))
        got: dict[str, list[list[float]]] = {name: [] for name in targets}
        for _ in range(runs):
            for times in got.values():
                times.append([])
            for _ in range(turns):
                for name, client in clients.items():
                    got[name][-1].extend(echo_times(client, rate, per_turn))
        return got
    finally:
        for client in clients.values():
            client.close()


def websocket_echo(run: Run, arena: Arena) -> Section:
    per_path = int(run.ws_rate * run.ws_seconds) * run.runs
    section = Section(
        "WebSocket echo round trip",
        f"One connection per path to the demo tool's `/ws` echo, all open side by side; "
        f"a 32-byte text message every {1000 / run.ws_rate:g} ms, the paths taking turns "
        f"of {TURN_SECONDS:g} s, {run.runs} round{'s' if run.runs != 1 else ''} of "
        f"{run.ws_seconds:g} s per path "
        f"({per_path} round trips per path). p50 and p99 over all of a path's round trips; "
        f"per round: each round's p99.",
        notes=list(arena.notes))
    got = echo_rounds(arena.ws, run.ws_rate, run.ws_seconds, run.runs)
    med = {k: _p50_p99([t for r in v for t in r]) for k, v in got.items()}
    p99s = {k: [_p50_p99(r)[1] for r in v] for k, v in got.items()}
    section.tables.append(("", ["path", "p50 ms", "p99 ms"],
                           [[n, f"{p50:.3f}", f"{p99:.3f}"] for n, (p50, p99) in med.items()]))
    def row(a: str, b: str, label: str) -> list[str]:
        return [label, _ratio(med[a][0], med[b][0]), _ratio(med[a][1], med[b][1]),
                rounds(p99s[a], p99s[b])]

    rows = [row(GATEWAY, n, f"gateway / {n}") for n in arena.ws if n != GATEWAY]
    if STUNNEL in med and NGINX in med:
        # The same shape as the gateway's path (two more processes, TLS between them) in C:
        # what the target "at most 1.5x nginx" asks of the architecture in this sitting.
        rows.append(row(STUNNEL, NGINX, f"{STUNNEL} / {NGINX} (the path's shape in C)"))
    section.tables.append(("Ratios of round-trip time (below 1: the gateway is faster; per "
                           "round: the ratio of the rounds' p99s, median and range)",
                           ["ratio", "p50", "p99", "p99, per round"], rows))
    if DIRECT in med:
        section.tables.append(_per_hop(med))
    return section


#: Process-to-process hops a message makes beyond the direct path's two (client -> tool
#: -> client): a proxy in between adds two, the gateway and studios-connect four.
EXTRA_HOPS = {GATEWAY: 4, NGINX: 2, CHP: 2, STUNNEL: 4}


def _per_hop(med: dict[str, tuple[float, float]]) -> tuple[str, list[str], list[list[str]]]:
    """What each hop a path adds to the direct path costs, in us: at the same cost per hop
    as nginx's, a path of four extra hops takes (direct + 4h) / (direct + 2h) of nginx's
    time, up to 1.5x when the tool's own time is nothing."""
    direct = med[DIRECT]
    rows = []
    for name, hops in EXTRA_HOPS.items():
        if name in med:
            rows.append([name, str(hops)] + [f"{(med[name][i] - direct[i]) * 1000 / hops:.0f}"
                                             for i in (0, 1)])
    return ("What each extra hop adds to the direct path (the path's time less the "
            "direct path's, over the hops it adds; percentiles do not add, so the p99 "
            "column is a rough guide), us", ["path", "extra hops",
                                                          "p50 per hop", "p99 per hop"], rows)


def main(argv: list[str] | None = None) -> int:
    from bench import main as harness

    args = list(sys.argv[1:] if argv is None else argv)
    return harness.main(["--only", "http-small,websocket", *args])


if __name__ == "__main__":
    sys.exit(main())
