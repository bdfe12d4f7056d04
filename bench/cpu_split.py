"""Where the CPU of one small request goes, by part of each process, under wrk.

    .venv/bin/python -m bench.cpu_split [--tree DIR] [--conns 1,32] [--seconds 5]

Starts the nginx tool, a gateway and a studios-connect from ``--tree`` (default: this
checkout), logs in, warms the path with wrk, then samples both processes (every
thread) with ``perf record -e cpu-clock`` (Debian's linux-perf) while wrk runs on
``GET /small`` for ``--seconds`` at each connection count. Each sample is put in a
part by the file its code is in: the kernel (and its modules), the Python runtime
(libpython or a static interpreter: the interpreter loop, objects, allocation,
attribute and dict look-ups), compiled project code (a mypyc build of the tree, when
it has one), OpenSSL (cryptography's wheel links it, with its own Rust code, into
``_rust.abi3.so``: the part is OpenSSL's work plus that glue), llhttp (httptools),
libc, cffi, and the rest by name. It prints, per process, each part's share of the
samples and its CPU per request: samples / frequency / the requests wrk made while
recorded.

Sampling costs each process some time (fewer requests per second while recording), so
compare parts and trees within one run of this tool, not against bench.ab's figures.
docs/decisions/compiled-lane.md says what it found (stop 25: at 1 connection most of
the gateway's CPU is the kernel and the Python runtime's object work, not bytecode).
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from bench.ssh import REPO
from bench.timeline import stop_recording

#: `perf report --sort pid,dso -n --stdio -t "|"`: share | samples | tid:comm | shared
#: object (a comm or a shared object may hold spaces, not the separator)
_ROW = re.compile(r"^\s*([\d.]+)%\s*\|\s*(\d+)\s*\|\s*(\d+):([^|]*)\|(.+?)\s*$")

#: The parts, in the order they are printed (what is not matched is shown by name).
PARTS = ("kernel", "Python runtime", "compiled project code", "OpenSSL", "llhttp", "libc",
         "cffi")
#: A file outside PARTS gets its own row from this share of a process's samples on.
OWN_ROW = 0.01


def part(dso: str) -> str:
    """The part a shared object's samples count for."""
    if dso.startswith("[") and dso != "[unknown]":
        return "kernel"  # [kernel.kallsyms], a module ([nf_conntrack]), [vdso], [vsyscall]
    if dso.startswith(("libpython", "python3")):
        return "Python runtime"
    if "__mypyc" in dso:
        return "compiled project code"
    if dso.startswith(("_rust.abi3", "libssl", "libcrypto", "_ssl.cpython", "_hashlib.")):
        return "OpenSSL"
    if dso.startswith(("parser.cpython", "url_parser.cpython")):
        return "llhttp"
    if dso.startswith(("libc.so", "libc-")):
        return "libc"
    if dso.startswith("_cffi_backend"):
        return "cffi"
    return dso


def split(report: str, process_of: dict[int, int] | None = None
          ) -> dict[int, collections.Counter[str]]:
    """Samples per part, per process, from `perf report --sort pid,dso -n --stdio -t "|"`
    (whose "pid" is a thread's id: `process_of` maps a thread to its process; a thread
    not in it counts as its own)."""
    process_of = process_of or {}
    got: dict[int, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for line in report.splitlines():
        m = _ROW.match(line)
        if m:
            tid = int(m.group(3))
            got[process_of.get(tid, tid)][part(m.group(5).strip())] += int(m.group(2))
    return got


def threads(pids: list[int]) -> dict[int, int]:
    """Thread id -> process id, for the threads `pids` have now."""
    return {int(t): pid for pid in pids for t in os.listdir(f"/proc/{pid}/task")}


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


def recording(pids: list[int], freq: int, out: Path) -> subprocess.Popen[bytes]:
    """perf sampling every thread of `pids` until it is sent SIGINT."""
    return subprocess.Popen(["perf", "record", "-q", "-F", str(freq), "-e", "cpu-clock",
                             "-p", ",".join(map(str, pids)), "-o", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def stop(rec: subprocess.Popen[bytes], out: Path) -> str:
    """Stop `rec` and return its samples as `perf report` text."""
    stop_recording(rec, out)
    return subprocess.run(["perf", "report", "-i", str(out), "--sort", "pid,dso", "-n",
                           "--stdio", "-t", "|"], capture_output=True, text=True,
                          check=True).stdout


def main(argv: list[str] | None = None) -> int:
    # (the harness's modules here: the parsing above is tested without psutil)
    from bench import deploy
    from bench.common import wrk

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tree", default=str(REPO), help="the source tree of both processes")
    p.add_argument("--conns", default="1,32", help="comma-separated wrk connection counts")
    p.add_argument("--seconds", type=float, default=5.0, help="how long to record")
    p.add_argument("--freq", type=int, default=4999, help="samples per second")
    args = p.parse_args(argv)
    if shutil.which("perf") is None:
        raise SystemExit("bench: perf not found (Debian: apt-get install linux-perf)")
    with deploy.small_path(Path(args.tree).resolve()) as (work, _, studio):
        gw, client = studio.gateway, studio.connect
        pids = [gw.pid, client.pid]
        for conns in (int(c) for c in args.conns.split(",")):
            wrk(studio.url("/small"), conns, 2, studio.headers)  # pools and caches warm
            out = work / f"cpu-{conns}.perf"
            rec = recording(pids, args.freq, out)
            try:
                r = wrk(studio.url("/small"), conns, args.seconds, studio.headers)
            finally:
                process_of = threads(pids)
                report = stop(rec, out)
            requests = r.rps * args.seconds
            print(f"\nwrk, {conns} connection(s): {r.rps:,.0f} req/s while recorded "
                  f"({args.seconds:g} s at {args.freq} samples/s)")
            if r.errors:
                print(f"  (wrk counted {r.errors} errors: the figures are not of answers alone)")
            got = split(report, process_of)
            for who, pid in (("gateway", gw.pid), ("studios-connect", client.pid)):
                print(f"{who}: share of its samples, CPU per request")
                print("\n".join(table(got.get(pid, collections.Counter()), args.freq,
                                      requests)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
