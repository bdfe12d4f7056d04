"""What one proxy hop costs at 1 connection, and what the gateway's two hops may cost.

    bench/run --only hops

At 1 connection a small request is one round trip through a chain of processes that
each sleep until the previous one writes: wrk -> gateway -> studios-connect -> tool and
back. Its time is the sum of each process's work on the way plus one wake-up per
process per direction, and on a virtual machine whose idle CPUs halt (this one:
cpuidle haltpoll with guest_halt_poll_ns=0) a wake-up onto an idle CPU costs far more
than the work of a small proxy. This scenario measures, in one invocation:

* the platform's wake-up: two processes answering one byte over a socketpair, on the
  same CPU, on two CPUs, and where the scheduler puts them;
* the round trip at 1 connection direct to the tool, through one nginx proxy_pass, two
  nginx in a row (a chain with the gateway's number of hops, each hop as cheap as C
  makes it), configurable-http-proxy (one hop), and the gateway's full path (two hops:
  the gateway and studios-connect);
* from those: what each hop adds to the round trip, and the most the gateway's two
  hops may add for it to be 1.5x configurable-http-proxy;
* the same chains with their processes placed by hand: all on one CPU (no wake-up
  crosses CPUs), and the client with the first proxy on one CPU, the rest on the other
  (the gateway's side and the studio's side, as on two machines).
"""

from __future__ import annotations

import os
import socket
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager

import psutil

from bench import baselines
from bench.arena import CHP, DIRECT, GATEWAY, NGINX, Arena, Target
from bench.common import Run, Section, wrk

NGINX2 = "nginx -> nginx"
HOPS = {DIRECT: 0, NGINX: 1, NGINX2: 2, CHP: 1, GATEWAY: 2}


def ping_pong(cpus: tuple[int, int] | None, rounds: int = 20_000) -> float:
    """Microseconds per one-byte round trip between two processes; ``cpus`` pins
    this process and the child (None: where the scheduler puts them)."""
    a, b = socket.socketpair()
    before = os.sched_getaffinity(0)
    pid = os.fork()
    if pid == 0:  # the answering side
        try:
            a.close()
            if cpus is not None:
                os.sched_setaffinity(0, {cpus[1]})
            for _ in range(rounds):
                b.sendall(b.recv(1))
        finally:
            os._exit(0)
    b.close()
    try:
        if cpus is not None:
            os.sched_setaffinity(0, {cpus[0]})
        for _ in range(200):  # both sides running and pinned before timing
            a.sendall(b"x")
            a.recv(1)
        t0 = time.perf_counter()
        for _ in range(rounds - 200):
            a.sendall(b"x")
            a.recv(1)
        took = time.perf_counter() - t0
    finally:
        os.sched_setaffinity(0, before)
        a.close()
        os.waitpid(pid, 0)
    return took / (rounds - 200) * 1e6


def scenario(run: Run, arena: Arena) -> Section:
    section = Section(
        "Cost of a hop at 1 connection",
        f"wrk, 1 connection, `GET /small`, {run.seconds:g} s per run, median of {run.runs} "
        "runs. Round trip = 1 / requests per second. A hop is one proxy process on the "
        "way; its cost is what it adds to the direct round trip (its work plus the wake-ups "
        "of one more process each way).", notes=list(arena.notes))
    cpus = sorted(os.sched_getaffinity(0))[:2]  # (pinning needs two)
    if len(cpus) == 2:
        first, second = cpus
        wake = {"same CPU": ping_pong((first, first)), "two CPUs": ping_pong((first, second)),
                "scheduler's choice": ping_pong(None)}
        section.tables.append((
            "Wake-up: two Python processes answering one byte over a socketpair",
            ["placement", "us per round trip"], [[k, f"{v:.1f}"] for k, v in wake.items()]))
    paths = dict(arena.http)
    if NGINX in paths:
        port = baselines.start_nginx_proxy(arena.procs, arena.work, paths[NGINX].port,
                                           arena.ws[DIRECT].port, name="nginx-proxy-2")
        paths[NGINX2] = Target(NGINX2, port)
        arena.pids[NGINX2] = [arena.procs.by_name["nginx-proxy-2"].pid, *arena.pids[NGINX]]
    rps: dict[str, list[float]] = {}
    for _ in range(run.runs):
        for name, target in paths.items():
            if name not in HOPS:
                continue
            r = wrk(target.url("/small"), 1, run.seconds, target.headers)
            rps.setdefault(name, []).append(r.rps)
    rt = {k: 1e6 / statistics.median(v) for k, v in rps.items() if statistics.median(v) > 0}
    rows = []
    for name, us in rt.items():
        hops = HOPS[name]
        per_hop = f"{(us - rt[DIRECT]) / hops:.0f}" if hops and DIRECT in rt else "-"
        rows.append([name, str(hops), f"{1e6 / us:,.0f}", f"{us:.0f}", per_hop])
    section.tables.append(("", ["path", "hops", "req/s", "us per round trip",
                                "us added per hop"], rows))
    if CHP in rt and DIRECT in rt and GATEWAY in rt:
        need = rt[CHP] / 1.5
        budget = (need - rt[DIRECT]) / 2
        have = (rt[GATEWAY] - rt[DIRECT]) / 2
        line = (f"1.5x configurable-http-proxy at 1 connection is a round trip of at most "
                f"{need:.0f} us: at most {budget:.0f} us per gateway hop; the gateway's hops "
                f"cost {have:.0f} us each")
        if NGINX2 in rt:
            line += f", two nginx in a row {(rt[NGINX2] - rt[DIRECT]) / 2:.0f} us each"
        section.notes.append(line + ".")
    if len(cpus) == 2:
        section.tables.append(_placed(run, paths, arena.pids, cpus[0], cpus[1]))
    return section


def _placed(run: Run, paths: dict[str, Target], pids: dict[str, list[int]], first: int,
            second: int) -> tuple[str, list[str], list[list[str]]]:
    """req/s at 1 connection of each chain with its processes pinned by hand."""
    names = [n for n in (GATEWAY, NGINX2, CHP) if n in paths and n in pids]
    got: dict[tuple[str, str], list[float]] = {}
    for _ in range(run.runs):
        for name in names:
            chain = pids[name]
            for placement, client, near, far in (
                    ("one CPU", first, first, first),
                    ("client + first proxy | the rest", first, first, second)):
                with placed(chain, client, near, far):
                    r = wrk(paths[name].url("/small"), 1, run.seconds, paths[name].headers)
                got.setdefault((name, placement), []).append(r.rps)
    rows = [[n, f"{statistics.median(got[(n, 'one CPU')]):,.0f}",
             f"{statistics.median(got[(n, 'client + first proxy | the rest')]):,.0f}"]
            for n in names]
    return ("Placed by hand (req/s at 1 connection; `hops`' table above is the scheduler's "
            "choice)", ["path", "all on one CPU", "client + first proxy on one CPU, "
                        "the rest on the other"], rows)


@contextmanager
def placed(chain: list[int], client: int, near: int, far: int) -> Iterator[None]:
    """A path placed by hand: its first proxy (``chain[0]``) on ``near``, the rest of the
    chain on ``far``, and this process, whose client (wrk, curl) inherits it, on
    ``client``, pinned last (see :func:`pinned`)."""
    with pinned([chain[0]], near), pinned(chain[1:], far), pinned([0], client):
        yield


@contextmanager
def pinned(pids: list[int], cpu: int) -> Iterator[None]:
    """Every thread of these processes and their children on ``cpu`` (pid 0: this
    process, whose children wrk inherits it); afterwards each thread back on the CPUs it
    had, and any thread started meanwhile (it inherited ``cpu``) on every CPU."""
    every = os.sched_getaffinity(0)  # (this process is pinned last, in _placed)
    before: dict[int, set[int]] = {}
    try:
        for tid in _threads(pids):
            try:
                before[tid] = os.sched_getaffinity(tid)
                os.sched_setaffinity(tid, {cpu})
            except ProcessLookupError:  # the thread ended in between
                pass
        yield
    finally:
        for tid in _threads(pids):
            try:
                os.sched_setaffinity(tid, before.get(tid, every))
            except ProcessLookupError:
                pass


def _threads(pids: list[int]) -> list[int]:
    tids = []
    for p in _trees(pids):
        try:
            tids += [t.id for t in p.threads()]
        except psutil.NoSuchProcess:
            pass
    return tids


def _trees(pids: list[int]) -> list[psutil.Process]:
    procs = []
    for pid in pids:
        p = psutil.Process(pid or os.getpid())
        procs.append(p)
        procs += [] if pid == 0 else p.children(recursive=True)
    return procs
