"""Scale: the memory of one gateway holding N idle tunnels.

For each N a fresh gateway is started; its RSS (psutil) is read when it has just
started, after N sessions were created through the admin API, and after a swarm
of real connect clients (bench.swarm, 2,500 per process) bound all N tunnels.
Per-tunnel cost = (RSS with tunnels - RSS with sessions only) / N. The connect
clients' side: the swarms' RSS with their tunnels bound, less that of a swarm
process with no tunnel (started first, its RSS read once it is ready), per tunnel.
"""

from __future__ import annotations

import http.client
import math
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.common import Processes, Run, Section, raise_nofile, wait_until
from bench.deploy import Gateway, start_gateway
from bench.ssh import REPO

PER_WORKER = 2500
MiB = 1 << 20


def rss(pid: int) -> int:
    import psutil

    return int(psutil.Process(pid).memory_info().rss)


def settled_rss(pid: int, timeout: float = 20.0) -> int:
    """RSS once it stops moving (two readings 0.5 s apart within 0.5 %), or at timeout."""
    deadline = time.monotonic() + timeout
    last = rss(pid)
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = rss(pid)
        if abs(now - last) <= last * 0.005:
            return now
        last = now
    return last


def create_sessions(gw: Gateway, n: int, threads: int = 4) -> list[str]:
    def batch(count: int) -> list[str]:
        conn = http.client.HTTPConnection("127.0.0.1", gw.management_port, timeout=30)
        try:
            return [gw.create_session(conn=conn)["connect_string"] for _ in range(count)]
        finally:
            conn.close()

    sizes = [n // threads + (1 if i < n % threads else 0) for i in range(threads)]
    with ThreadPoolExecutor(threads) as pool:
        return [cs for part in pool.map(batch, sizes) for cs in part]


def _log_has(path: Path, word: str) -> bool:
    try:
        return any(line.startswith(word) for line in path.read_text().splitlines())
    except FileNotFoundError:
        return False


def measure(run: Run, n: int) -> dict[str, float]:
    procs = Processes(run.work)
    try:
        gw = start_gateway(procs, run.work, name=f"scale-{n}-gateway")
        start_rss = settled_rss(gw.pid)
        t0 = time.monotonic()
        strings = create_sessions(gw, n)
        created_s = time.monotonic() - t0
        sessions_rss = settled_rss(gw.pid)
        workers = math.ceil(n / PER_WORKER)
        empty = run.work / f"scale-{n}-swarm-empty.txt"
        empty.write_text("")
        name = f"scale-{n}-swarm-empty"
        idle = procs.start(name, [sys.executable, "-m", "bench.swarm", str(empty)],
                           env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
        wait_until(lambda: _log_has(run.work / f"{name}.log", "ready"), name, timeout=60,
                   proc=idle)
        swarm_base_rss = settled_rss(idle.pid)
        logs = []
        t0 = time.monotonic()
        for w in range(workers):
            part = strings[w * PER_WORKER:(w + 1) * PER_WORKER]
            listing = run.work / f"scale-{n}-swarm-{w}.txt"
            listing.write_text("\n".join(part) + "\n")
            name = f"scale-{n}-swarm-{w}"
            proc = procs.start(name, [sys.executable, "-m", "bench.swarm", str(listing)],
                               env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
            logs.append((run.work / f"{name}.log", proc))
        for log, proc in logs:
            wait_until(lambda log=log: _log_has(log, "ready"), f"swarm {log.name}",
                       timeout=600, proc=proc)
            if _log_has(log, "failed"):
                raise RuntimeError(f"swarm {log.name}: {log.read_text()[-500:]}")
        bind_s = time.monotonic() - t0
        tunnels_rss = settled_rss(gw.pid)
        swarms_rss = sum(settled_rss(proc.pid) for _, proc in logs)
        return {"start": start_rss, "sessions": sessions_rss, "tunnels": tunnels_rss,
                "create_s": created_s, "bind_s": bind_s,
                "client_per_tunnel": (swarms_rss - workers * swarm_base_rss) / n,
                "load": os.getloadavg()[0]}
    finally:
        procs.stop_all()


def scenario(run: Run) -> Section:
    limit = raise_nofile(max(run.scale_counts) + 4096)
    section = Section(
        "Scale: gateway memory with idle tunnels",
        "One gateway process (memory registry). N sessions are created through the admin "
        "API, then N real connect clients (`ConnectClient`, 2,500 per swarm process) bind "
        "one TLS + yamux tunnel each and stay idle. RSS from psutil once it settles; "
        "the clients' side per tunnel is the swarms' RSS less that of a swarm process "
        "with no tunnel. "
        f"RLIMIT_NOFILE raised to {limit} for the bench and its children. "
        "One measurement per N (each needs a fresh gateway and a full swarm).")
    rows = []
    for n in run.scale_counts:
        if n + 512 > limit:
            section.notes.append(f"{n:,} tunnels skipped: RLIMIT_NOFILE is only {limit}")
            continue
        m = measure(run, n)
        per_tunnel = (m["tunnels"] - m["sessions"]) / n
        per_session = (m["sessions"] - m["start"]) / n
        rows.append([f"{n:,}", f"{m['start'] / MiB:.0f}", f"{m['sessions'] / MiB:.0f}",
                     f"{m['tunnels'] / MiB:.0f}", f"{per_session / 1024:.1f}",
                     f"{per_tunnel / 1024:.1f}", f"{m['create_s']:.1f}",
                     f"{m['bind_s']:.1f}", f"{n / m['bind_s']:.0f}",
                     f"{m['client_per_tunnel'] / 1024:.1f}", f"{m['load']:.1f}"])
    section.tables.append((
        "", ["idle tunnels", "RSS at start MiB", "RSS with sessions MiB",
             "RSS with tunnels MiB", "per session KiB", "per tunnel KiB",
             "create sessions s", "bind tunnels s", "binds/s",
             "connect client per tunnel KiB", "load (1 min)"], rows))
    return section
