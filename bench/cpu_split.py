"""Where the CPU of one small request goes, by part of each process, under wrk.

    .venv/bin/python -m bench.cpu_split [--tree DIR] [--conns 1,32] [--seconds 5]

Starts the nginx tool, a gateway and a studios-connect from ``--tree`` (default: this
checkout), logs in, keeps wrk on ``GET /small`` at each connection count, and samples
both processes with ``perf record -e cpu-clock`` (Debian's linux-perf) for
``--seconds``. Each sample is put in a part by the file its code is in: the kernel,
the Python runtime (libpython: the interpreter, objects, allocation, attribute and
dict look-ups), compiled project code (a mypyc build of the tree, when it has one),
OpenSSL (cryptography's wheel links it into ``_rust.abi3.so``), llhttp (httptools),
libc, cffi, and the rest by name. It prints, per process, each part's share of the
samples and its CPU per request (samples / frequency / requests in the window, the
requests counted from wrk's rate).

Sampling costs each process some time (fewer requests per second while recording), so
compare parts and trees within one run of this tool, not against bench.ab's figures.
docs/decisions/compiled-lane.md says what it found (stop 25: at 1 connection most of
the gateway's CPU is the kernel and the Python runtime's object work, not bytecode).
"""

from __future__ import annotations

import argparse
import collections
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from bench.ssh import REPO

#: `perf report --sort pid,dso -n --stdio`: share, samples, pid:comm, shared object
_ROW = re.compile(r"^\s*([\d.]+)%\s+(\d+)\s+(\d+):(\S+)\s+(.+?)\s*$")

#: The parts, in the order they are printed (what is not matched is shown by name).
PARTS = ("kernel", "Python runtime", "compiled project code", "OpenSSL", "llhttp", "libc",
         "cffi")
#: A file outside PARTS gets its own row from this share of a process's samples on.
OWN_ROW = 0.01


def part(dso: str) -> str:
    """The part a shared object's samples count for."""
    if dso.startswith("[kernel") or dso == "[vdso]":
        return "kernel"
    if dso.startswith("libpython"):
        return "Python runtime"
    if "__mypyc" in dso:
        return "compiled project code"
    if dso.startswith("_rust.abi3") or dso.startswith(("libssl", "libcrypto")):
        return "OpenSSL"
    if dso.startswith(("parser.cpython", "url_parser.cpython")):
        return "llhttp"
    if dso.startswith(("libc.so", "libc-")):
        return "libc"
    if dso.startswith("_cffi_backend"):
        return "cffi"
    return dso


def split(report: str) -> dict[int, collections.Counter[str]]:
    """Samples per part, per pid, from `perf report --sort pid,dso -n --stdio`."""
    got: dict[int, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for line in report.splitlines():
        m = _ROW.match(line)
        if m:
            got[int(m.group(3))][part(m.group(5))] += int(m.group(2))
    return got


def table(samples: collections.Counter[str], freq: int, requests: float) -> list[str]:
    """Lines of one process's parts: share of its samples and CPU us per request, the
    named parts first, then the rest by size."""
    total = sum(samples.values())
    if not total or requests <= 0:
        return ["  (no samples)"]
    shown = {p: samples[p] for p in PARTS if samples[p]}
    other = 0
    for p in sorted((p for p in samples if p not in PARTS), key=lambda p: -samples[p]):
        if samples[p] >= total * OWN_ROW:
            shown[p] = samples[p]
        else:
            other += samples[p]
    if other:
        shown["other"] = other
    return [_line(p, n, total, freq, requests) for p, n in shown.items()] + [
        _line("all", total, total, freq, requests)]


def _line(name: str, n: int, total: int, freq: int, requests: float) -> str:
    return (f"  {name:24} {100 * n / total:5.1f} %  {n / freq / requests * 1e6:7.1f}"
            " us/request")


def record(pids: list[int], seconds: float, freq: int, out: Path) -> str:
    subprocess.run(["perf", "record", "-q", "-F", str(freq), "-e", "cpu-clock",
                    "-p", ",".join(map(str, pids)), "-o", str(out), "--",
                    "sleep", f"{seconds:g}"], check=True, stdout=subprocess.DEVNULL)
    return subprocess.run(["perf", "report", "-i", str(out), "--sort", "pid,dso", "-n",
                           "--stdio"], capture_output=True, text=True, check=True).stdout


def main(argv: list[str] | None = None) -> int:
    # (the harness's modules here: the parsing above is tested without psutil)
    from bench import baselines, deploy
    from bench.common import Processes, wrk
    from bench.main import work_dir

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tree", default=str(REPO), help="the source tree of both processes")
    p.add_argument("--conns", default="1,32", help="comma-separated wrk connection counts")
    p.add_argument("--seconds", type=float, default=5.0, help="how long to record")
    p.add_argument("--freq", type=int, default=4999, help="samples per second")
    args = p.parse_args(argv)
    if shutil.which("perf") is None:
        raise SystemExit("bench: perf not found (Debian: apt-get install linux-perf)")
    work = work_dir()
    procs = Processes(work)
    try:
        tool = baselines.start_nginx_tool(procs, work, 1 << 20)
        studio = deploy.start_tree_path(procs, work, tool.port, Path(args.tree).resolve())
        gw, client = studio.gateway, studio.connect
        for conns in (int(c) for c in args.conns.split(",")):
            result: list[float] = []
            load = threading.Thread(target=lambda c=conns, into=result: into.append(
                wrk(studio.url("/small"), c, args.seconds + 6, studio.headers).rps))
            load.start()
            time.sleep(2)  # wrk connected and the pools warm before recording
            report = record([gw.pid, client.pid], args.seconds, args.freq,
                            work / f"cpu-{conns}.perf")
            load.join()
            rps = result[0] if result else 0.0
            requests = rps * args.seconds
            print(f"\nwrk, {conns} connection(s): {rps:,.0f} req/s over the whole run "
                  f"(recorded {args.seconds:g} s at {args.freq} samples/s)")
            got = split(report)
            for who, pid in (("gateway", gw.pid), ("studios-connect", client.pid)):
                print(f"{who}: share of its samples, CPU per request")
                print("\n".join(table(got.get(pid, collections.Counter()), args.freq,
                                      requests)))
    finally:
        procs.stop_all()
        shutil.rmtree(work, ignore_errors=True)  # (on /dev/shm: memory)
    return 0


if __name__ == "__main__":
    sys.exit(main())
