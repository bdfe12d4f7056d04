"""Small HTTP responses through gateways built from different source trees, side by side.

    git worktree add /tmp/before HEAD~3        # or: git archive REV | tar -x -C DIR
    .venv/bin/python -m bench.ab --tree before=/tmp/before --tree after=.
    .venv/bin/python -m bench.ab --tree a=/tmp/before --tree b=. --runs 9 --conns 1,32
    .venv/bin/python -m bench.ab --tree before=. --tree after=. --connect before=/tmp/before
    .venv/bin/python -m bench.ab --tree log=. --tree nolog=. --env nolog=CONNECT_ACCESS_LOG=off
    .venv/bin/python -m bench.ab --scenario websocket --tree before=/tmp/before --tree after=. \
        --connect before=/tmp/before --runs 9
    .venv/bin/python -m bench.ab --tree main=. --tree lane=/tmp/lane --ceiling --conns 1,32
    .venv/bin/python -m bench.ab --tree pyenv=. --tree debian=. --python pyenv=/tmp/py/bin/python

One nginx tool; per tree a gateway (`twistd -n studios-gateway` with that tree
first on PYTHONPATH), a session, a `studios-connect` (from `--connect-tree`,
by default this repository, so only the gateway differs; `--connect NAME=DIR` gives
one tree's studios-connect its own source) and a logged-in cookie.
wrk runs go round-robin over the trees, so drift on a shared machine touches
each alike. Per tree and connection count it prints the medians of req/s,
p50/p99 latency and the CPU each process spent per request (psutil: user +
system time over the run divided by its requests), and the lowest CPU per
request of any run. CPU per request moves less with the machine's load than
req/s does: compare it first.

``--scenario websocket`` measures bench/run's WebSocket echo instead (one WebSocket
to the demo tool's /ws, a 32-byte message every 5 ms, each round trip timed): per
tree the medians of each run's p50/p99 and the CPU per round trip of the gateway
and of ``studios-connect``. Latency changes usually touch both ends of the tunnel,
so give each tree its own studios-connect with ``--connect``.

``--python NAME=PYTHON`` runs tree NAME's gateway and studios-connect on another
interpreter (the python of another venv with the project's packages; the tree's source
still comes first): the same code on, say, a pyenv build against Debian's
(docs/decisions/interpreter.md).

``--ceiling`` adds a path named "ceiling": a gateway from the first tree that does no
HTTP work for a request repeating its connection's last one (bench/ceiling.py), the
most any lane can reach; each step of the lane is measured against it.

``--scenario small-close`` is ``small`` with a tool that closes its connection after
each answer (nginx ``keepalive_requests 1``, as HTTP/1.0 tools and some development
servers do): the gateway's pooled stream goes with it, so every request opens a tunnel
stream and ``studios-connect`` connects to the tool: the stream-open path's cost.

``--scenario upload`` and ``--scenario download`` are bench/run's bulk transfer (curl,
one connection, a PUT of ``--mib`` MiB to nginx's WebDAV, or a GET of a file that size)
through each tree's path, runs round-robin: per tree the median MB/s, the CPU seconds
per GB of the gateway and of ``studios-connect`` (compare these first: on 2 CPUs
shared by curl, gateway, studios-connect and nginx, MB/s follows the sum of everyone's
CPU per byte), and each run's MB/s. Per-byte changes usually touch both ends of the
tunnel, so give each tree its own studios-connect with ``--connect``. With ``--pin CPU``
curl, the gateway, studios-connect and the nginx tool all run on that one CPU during
each transfer: MB/s is then one CPU over everyone's CPU per byte, without the
scheduler's placement of four busy processes on two CPUs, which moves the unpinned
figure by +-10 % between invocations.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
from contextlib import nullcontext
from pathlib import Path

import psutil

from bench import baselines, deploy
from bench.arena import Target
from bench.bulk import download, upload
from bench.common import Processes, random_file, wrk
from bench.hops import pinned
from bench.http import echo_run
from bench.main import work_dir
from bench.ssh import REPO


def _cpu(p: psutil.Process) -> float:
    t = p.cpu_times()
    return float(t.user + t.system)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tree", action="append", required=True, metavar="NAME=DIR",
                   help="a source tree to run the gateway from (repeat)")
    p.add_argument("--connect-tree", default=str(REPO), metavar="DIR",
                   help="the source tree of every studios-connect")
    p.add_argument("--connect", action="append", default=[], metavar="NAME=DIR",
                   help="the studios-connect source tree for the tree NAME (repeat)")
    p.add_argument("--python", action="append", default=[], metavar="NAME=PYTHON",
                   help="the interpreter (of a venv with the project's packages) that runs "
                   "the tree NAME's gateway and studios-connect; default: this venv's")
    p.add_argument("--env", action="append", default=[], metavar="NAME=VAR=VALUE",
                   help="a gateway setting for the tree NAME only (repeat)")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--conns", default="1,32", help="comma-separated wrk connection counts")
    p.add_argument("--gateway-env", action="append", default=[], metavar="NAME=VALUE")
    p.add_argument("--ceiling", action="store_true",
                   help="add a path 'ceiling': the first tree with no HTTP work for a repeated "
                   "request (bench/ceiling.py)")
    p.add_argument("--scenario",
                   choices=("small", "small-close", "websocket", "upload", "download"),
                   default="small", help="wrk GETs of a small response (small-close: from a "
                   "tool that closes after each answer), the WebSocket echo, or one bulk "
                   "transfer with curl")
    p.add_argument("--mib", type=int, default=512,
                   help="the size of each bulk transfer (upload, download)")
    p.add_argument("--pin", type=int, default=None, metavar="CPU",
                   help="upload, download: every process of the path on this one CPU")
    args = p.parse_args(argv)
    trees = [tuple(t.split("=", 1)) for t in args.tree]
    if any(len(t) != 2 or not Path(t[1]).is_dir() for t in trees):
        p.error("--tree takes NAME=DIR with an existing directory")
    extra = dict(e.split("=", 1) for e in args.gateway_env)
    connect_trees = dict(c.split("=", 1) for c in args.connect)
    pythons = dict(c.split("=", 1) for c in args.python)
    tree_env: dict[str, dict[str, str]] = {}
    if args.ceiling:
        if any(name == "ceiling" for name, _ in trees):
            p.error("--ceiling adds a tree named 'ceiling': name the others differently")
        if args.scenario not in ("small", "small-close"):
            p.error("--ceiling measures small requests (the others take little HTTP work)")
        first = str(Path(trees[0][1]).resolve())
        trees.append(("ceiling", first))
        connect_trees.setdefault("ceiling", connect_trees.get(trees[0][0], args.connect_tree))
        # (its sitecustomize loads this repository's bench/ceiling.py by its path)
        tree_env["ceiling"] = {"PYTHONPATH": os.pathsep.join(
            (str(REPO / "bench" / "ceiling_site"), first))}
    for e in args.env:
        name, var, value = e.split("=", 2)
        tree_env.setdefault(name, {})[var] = value
    work = work_dir()
    procs = Processes(work)
    try:
        if args.scenario == "websocket":
            tool_port = deploy.start_demo_tool(procs)[0]
        else:
            tool = baselines.start_nginx_tool(
                procs, work, args.mib << 20 if args.scenario == "download" else 1 << 20,
                keepalive_requests=1 if args.scenario == "small-close" else None)
            tool_port = tool.port
        paths: dict[str, tuple[deploy.Studio, psutil.Process, psutil.Process]] = {}
        for name, tree in trees:
            gw = deploy.start_gateway(procs, work, name=f"gateway-{name}",
                                      extra={"PYTHONPATH": str(Path(tree).resolve()), **extra,
                                             **tree_env.get(name, {})},
                                      python=pythons.get(name))
            studio = deploy.start_studio(
                procs, work, gw, tool_port, name=f"connect-{name}",
                tree=Path(connect_trees.get(name, args.connect_tree)).resolve(),
                python=pythons.get(name))
            paths[name] = (studio, psutil.Process(gw.pid), psutil.Process(studio.connect.pid))
        if args.scenario == "websocket":
            _websocket(paths, args.runs, args.seconds)
            return 0
        if args.scenario in ("upload", "download"):
            _bulk(paths, args.scenario, args.runs, args.mib, work, tool, args.pin)
            return 0
        rows: dict[tuple[str, int], list[tuple[float, ...]]] = {}
        for conns in (int(c) for c in args.conns.split(",")):
            for _ in range(args.runs):
                for name, (studio, gp, cp) in paths.items():
                    g0, c0 = _cpu(gp), _cpu(cp)
                    r = wrk(studio.url("/small"), conns, args.seconds, studio.headers)
                    n = max(r.rps * args.seconds, 1.0)
                    rows.setdefault((name, conns), []).append(
                        (r.rps, r.p50_ms, r.p99_ms, (_cpu(gp) - g0) / n * 1e6,
                         (_cpu(cp) - c0) / n * 1e6, r.errors))
        for (name, conns), runs in rows.items():
            med = [statistics.median(x[i] for x in runs) for i in range(5)]
            print(f"{name:10} {conns:3} conn  req/s {med[0]:8,.0f}  p50 {med[1]:6.2f} ms  "
                  f"p99 {med[2]:7.2f} ms  gateway CPU {med[3]:5.0f} us/req "
                  f"(lowest {min(x[3] for x in runs):5.0f})  connect CPU {med[4]:4.0f} us/req"
                  f"  errors {sum(int(x[5]) for x in runs)}", flush=True)
    finally:
        procs.stop_all()
        shutil.rmtree(work, ignore_errors=True)  # (on /dev/shm: memory)
    return 0


def _websocket(paths: dict[str, tuple[deploy.Studio, psutil.Process, psutil.Process]],
               runs: int, seconds: float, rate: int = 200) -> None:
    """bench/run's WebSocket echo through each tree's path, runs round-robin."""
    got: dict[str, list[tuple[float, float, float, float]]] = {}
    for _ in range(runs):
        for name, (studio, gp, cp) in paths.items():
            target = Target(name, studio.gateway.http_port, studio.headers)
            g0, c0 = _cpu(gp), _cpu(cp)
            p50, p99 = echo_run(target, rate, seconds)
            n = rate * seconds + 20  # echo_run's warm-up round trips count too
            got.setdefault(name, []).append(
                (p50, p99, (_cpu(gp) - g0) / n * 1e6, (_cpu(cp) - c0) / n * 1e6))
    for name, rows in got.items():
        med = [statistics.median(x[i] for x in rows) for i in range(4)]
        print(f"{name:10} echo  p50 {med[0]:6.3f} ms  p99 {med[1]:6.3f} ms "
              f"(runs: {' '.join(f'{x[1]:.2f}' for x in rows)})  gateway CPU {med[2]:4.0f} "
              f"us/round trip  connect CPU {med[3]:4.0f} us/round trip", flush=True)


def _bulk(paths: dict[str, tuple[deploy.Studio, psutil.Process, psutil.Process]],
          scenario: str, runs: int, mib: int, work: Path, tool: baselines.NginxTool,
          pin: int | None) -> None:
    """bench/run's bulk transfer through each tree's path, runs round-robin."""
    size = mib << 20
    payload = str(random_file(work / "payload.bin", mib)) if scenario == "upload" else ""
    got: dict[str, list[tuple[float, float, float]]] = {}
    for _ in range(runs):
        for name, (studio, gp, cp) in paths.items():
            target = Target(name, studio.gateway.http_port, studio.headers)
            g0, c0 = _cpu(gp), _cpu(cp)
            # (pid 0: this process, whose curl inherits the CPU)
            placed = (pinned([0, gp.pid, cp.pid, tool.proc.pid], pin) if pin is not None
                      else nullcontext())
            with placed:
                took = (upload(target, payload, tool) if scenario == "upload"
                        else download(target))
            gb = size / 1e9
            got.setdefault(name, []).append(
                (size / took / 1e6, (_cpu(gp) - g0) / gb, (_cpu(cp) - c0) / gb))
    for name, rows in got.items():
        med = [statistics.median(x[i] for x in rows) for i in range(3)]
        print(f"{name:10} {scenario:8} {med[0]:6,.0f} MB/s  gateway CPU {med[1]:5.2f} s/GB  "
              f"connect CPU {med[2]:5.2f} s/GB  (runs: "
              f"{' '.join(f'{x[0]:.0f}' for x in rows)})", flush=True)


if __name__ == "__main__":
    sys.exit(main())
