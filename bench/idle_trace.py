"""Where an idle tunnel's gateway memory goes: tracemalloc and malloc inside the gateway.

    python -m bench.idle_trace [--tunnels N] [--frames F] [--top K] [--work DIR]

A real gateway (twistd, memory registry) is started under ``-X tracemalloc``; N
sessions are made through its admin API; the gateway takes a snapshot (SIGUSR1:
tracemalloc snapshot and glibc ``mallinfo2``); a swarm of real connect clients
(bench.swarm) binds the N tunnels and idles; the gateway takes a second snapshot.
Printed per tunnel: malloc in use (everything: OpenSSL and Python), Python traced,
RSS, and the top allocation sites of the Python part (filename:line, or tracebacks
of F frames). The gateway's own process is the only one measured.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import math
import os
import pickle
import signal
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

from bench.common import Processes, raise_nofile, wait_until
from bench.deploy import Gateway, gateway_env
from bench.scale import PER_WORKER, _log_has, create_sessions, settled_rss
from bench.ssh import REPO, port_open


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
        "uordblks", "fordblks", "keepcost")]


def _malloc_in_use() -> int:
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = _Mallinfo2
    info = libc.mallinfo2()
    return int(info.uordblks + info.hblkhd)


def serve() -> None:
    """The gateway under twistd, with SIGUSR1 writing a snapshot into $IDLE_TRACE_DIR."""
    out = Path(os.environ["IDLE_TRACE_DIR"])
    count = [0]

    def snapshot(_signum: int, _frame: Any) -> None:
        count[0] += 1
        snap = tracemalloc.take_snapshot()
        with open(out / f"snap-{count[0]}.pickle", "wb") as fh:
            pickle.dump({"snapshot": snap, "malloc": _malloc_in_use()}, fh)
        (out / f"snap-{count[0]}.done").write_text("")

    def names(_signum: int, _frame: Any) -> None:
        # After the snapshots: vars() gives each instance a dict of its own.
        wanted = set(os.environ.get("IDLE_TRACE_NAMES", "").split(","))
        if "*" in wanted:  # every class with at least one instance per tunnel
            least = int(os.environ["IDLE_TRACE_TUNNELS"]) * 9 // 10
            counts: dict[str, int] = {}
            for obj in gc.get_objects():
                if type(obj).__module__ != "builtins":
                    counts[type(obj).__name__] = counts.get(type(obj).__name__, 0) + 1
            wanted = {kind for kind, count in counts.items() if count >= least}
        lines = []
        for obj in gc.get_objects():
            kind = type(obj).__name__
            if kind in wanted and type(obj).__dictoffset__:
                # Whether the instance has a dict of its own already (gc sees the dict,
                # not the attribute values, once it is made); asked before vars(), which
                # makes one (so does reading obj.__dict__).
                own = any(type(r) is dict and _is_attrs(obj, r) for r in gc.get_referents(obj))
                lines.append(f"{kind}{'*' if own else ''} {' '.join(sorted(vars(obj)))}")
        (out / "names.txt").write_text("\n".join(lines) + "\n")

    signal.signal(signal.SIGUSR1, snapshot)
    signal.signal(signal.SIGUSR2, names)
    from twisted.scripts.twistd import run
    sys.argv = ["twistd", "-n", "--pidfile=", "studios-gateway"]
    run()


def _is_attrs(obj: Any, d: dict[Any, Any]) -> bool:
    try:
        return all(getattr(obj, k) is v for k, v in d.items()) and bool(d)
    except Exception:
        return False


def _take(gw: Gateway, out: Path, n: int) -> dict[str, Any]:
    gw.proc.send_signal(signal.SIGUSR1)
    wait_until(lambda: (out / f"snap-{n}.done").exists(), f"snapshot {n}", timeout=300,
               proc=gw.proc)
    with open(out / f"snap-{n}.pickle", "rb") as fh:
        return pickle.load(fh)  # type: ignore[no-any-return]  # noqa: S301 - our own child wrote it


def _print_names(text: str) -> None:
    """Per class: instances, and the instance attribute names all of them set together
    (CPython 3.11 shares up to 30 names per class; past that an instance gets a dict)."""
    kinds: dict[str, tuple[int, set[str]]] = {}
    own: dict[str, int] = {}
    for line in text.splitlines():
        kind, *attrs = line.split()
        if kind.endswith("*"):
            kind = kind[:-1]
            own[kind] = own.get(kind, 0) + 1
        count, union = kinds.get(kind, (0, set()))
        kinds[kind] = (count + 1, union | set(attrs))
    for kind, (count, union) in sorted(kinds.items()):
        print(f"  {kind}: {count:,} instances ({own.get(kind, 0):,} with a dict of their own), "
              f"{len(union)} names: {' '.join(sorted(union))}")


def measure(n: int, frames: int, top: int, work: Path, names: str = "") -> None:
    raise_nofile(n + 4096)
    procs = Processes(work)
    out = work / "snapshots"
    out.mkdir()
    try:
        env = gateway_env(work, "trace-gateway", {"IDLE_TRACE_DIR": str(out),
                                                   "IDLE_TRACE_NAMES": names,
                                                   "IDLE_TRACE_TUNNELS": str(n)})
        proc = procs.start("trace-gateway", [sys.executable, "-X", f"tracemalloc={frames}",
                                             "-m", "bench.idle_trace", "--serve"],
                           env=env, cwd=work)
        mgmt = int(env["CONNECT_MANAGEMENT_PORT"])
        wait_until(lambda: port_open(mgmt), "gateway management port", proc=proc)
        gw = Gateway(proc, int(env["CONNECT_HTTP_PORT"]), mgmt, int(env["CONNECT_TUNNEL_PORT"]))
        strings = create_sessions(gw, n)
        rss_before = settled_rss(gw.pid)
        before = _take(gw, out, 1)
        logs = []
        for w in range(math.ceil(n / PER_WORKER)):
            listing = work / f"swarm-{w}.txt"
            listing.write_text("\n".join(strings[w * PER_WORKER:(w + 1) * PER_WORKER]) + "\n")
            sp = procs.start(f"swarm-{w}", [sys.executable, "-m", "bench.swarm", str(listing)],
                             env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
            logs.append((work / f"swarm-{w}.log", sp))
        for log, sp in logs:
            wait_until(lambda log=log: _log_has(log, "ready"), log.name, timeout=600, proc=sp)
        time.sleep(2.0)  # let the binds' last callbacks and the first keepalives pass
        rss_after = settled_rss(gw.pid)
        after = _take(gw, out, 2)
        if names:
            gw.proc.send_signal(signal.SIGUSR2)
            wait_until(lambda: (out / "names.txt").exists(), "names", proc=gw.proc)
            _print_names((out / "names.txt").read_text())
    finally:
        procs.stop_all()
    stats = after["snapshot"].compare_to(before["snapshot"],
                                         "traceback" if frames > 1 else "lineno")
    traced = sum(s.size_diff for s in stats)
    print(f"{n:,} idle tunnels, per tunnel (load {os.getloadavg()[0]:.1f}):")
    print(f"  RSS              {(rss_after - rss_before) / n / 1024:7.2f} KiB")
    print(f"  malloc in use    {(after['malloc'] - before['malloc']) / n / 1024:7.2f} KiB")
    print(f"  Python traced    {traced / n:7.0f} B")
    print(f"  top {top} sites (B per tunnel, blocks per tunnel):")
    for s in sorted(stats, key=lambda s: -s.size_diff)[:top]:
        if abs(s.size_diff) < n * 8:
            break
        where = s.traceback.format(limit=frames) if frames > 1 else [str(s.traceback[0])]
        print(f"  {s.size_diff / n:7.0f} {s.count_diff / n:5.2f}  {where[-1].strip()}")
        for line in where[:-1][::-1]:
            print(f"  {'':14}   {line.strip()}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--tunnels", type=int, default=2000)
    ap.add_argument("--frames", type=int, default=1)
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument("--work", type=Path)
    ap.add_argument("--names", default="",
                    help="class names (comma-separated; * for every class with an "
                         "instance per tunnel) whose instance attributes to list")
    args = ap.parse_args()
    if args.serve:
        serve()
        return 0
    work = args.work or Path(tempfile.mkdtemp(prefix="idle-trace-"))
    measure(args.tunnels, args.frames, args.top, work, args.names)
    return 0


if __name__ == "__main__":
    sys.exit(main())
