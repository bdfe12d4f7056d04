"""Scale: requests/s with 1 vs 2 gateway processes (nodes sharing one Redis, docs/cluster.md).

Two studios (each its own studios-connect in front of the nginx tool) take load at
once, one wrk per studio. With one process both tunnels are bound to node A; with
two, the second studio is bound to node B. A third figure sends one studio's load
to the node that does not hold its tunnel (over the peer link).
"""

from __future__ import annotations

import shutil
import statistics
from concurrent.futures import ThreadPoolExecutor

from bench import baselines, deploy
from bench.common import Processes, Run, Section, wrk

SECRET = "bench-peer-secret"
CONNS = 16  # per wrk (per studio)


def _both(run: Run, studios: list[tuple[deploy.Studio, int]]) -> float:
    """Total requests/s of one wrk per (studio, node HTTP port), run at the same time."""
    with ThreadPoolExecutor(len(studios)) as pool:
        results = pool.map(
            lambda s: wrk(f"http://127.0.0.1:{s[1]}/small", CONNS, run.seconds,
                          {**s[0].headers, "Host": f"{s[0].sid}.localhost:{s[1]}"}), studios)
        return sum(r.rps for r in results)


def scenario(run: Run) -> Section:
    section = Section(
        "Scale: requests/s with 1 vs 2 gateway processes",
        f"Gateway nodes sharing one redis-server (peer link with a shared secret). Two "
        f"studios, each a studios-connect in front of the nginx tool; one wrk per studio at "
        f"the same time ({CONNS} connections each, {run.seconds:g} s, `GET /small`), total "
        f"requests/s, median of {run.runs} runs. All of it shares the machine's CPUs.")
    if shutil.which("redis-server") is None:
        section.notes.append("skipped: redis-server is not installed (scripts/setup --test)")
        return section
    work = run.work / "cluster"
    work.mkdir()
    procs = Processes(work)
    try:
        redis = deploy.start_redis(procs, work)
        storage = work / "storage"  # shared: the nodes must sign cookies with one key
        storage.mkdir()
        env = {"CONNECT_REDIS_ADDRESS": redis, "CONNECT_PEER_SECRET": SECRET,
               "CONNECT_STORAGE_ROOT": str(storage)}
        tool = baselines.start_nginx_tool(procs, work, 1 << 20)
        a = deploy.start_gateway(procs, work, "node-a", {**env, "CONNECT_NODE_ID": "node-a"})
        one = deploy.start_studio(procs, work, a, tool.port, name="connect-1")
        two = deploy.start_studio(procs, work, a, tool.port, name="connect-2")
        single = [_both(run, [(one, a.http_port), (two, a.http_port)])
                  for _ in range(run.runs)]
        b = deploy.start_gateway(procs, work, "node-b", {**env, "CONNECT_NODE_ID": "node-b"})
        three = deploy.start_studio(procs, work, b, tool.port, name="connect-3")
        double, peer = [], []
        for _ in range(run.runs):
            double.append(_both(run, [(one, a.http_port), (three, b.http_port)]))
            peer.append(_both(run, [(one, b.http_port)]))
        direct = [_both(run, [(one, a.http_port)]) for _ in range(run.runs)]
    finally:
        procs.stop_all()
    s1, s2 = statistics.median(single), statistics.median(double)
    sp, sd = statistics.median(peer), statistics.median(direct)
    section.tables.append(("", ["setup", "total req/s"], [
        ["1 process: both studios on node A", f"{s1:,.0f}"],
        ["2 processes: one studio on A, one on B", f"{s2:,.0f}"],
        ["one studio, through the node holding its tunnel", f"{sd:,.0f}"],
        ["one studio, through the other node (peer link)", f"{sp:,.0f}"]]))
    section.tables.append(("Ratios", ["ratio", "value"], [
        ["2 processes / 1 process", f"{s2 / s1:.2f}"],
        ["through a peer / through the holder", f"{sp / sd:.2f}"]]))
    return section
