"""What every scenario of the harness shares: the run's settings, figures and their medians,
file-descriptor limits, and running wrk.

Process handling (free ports, waiting for a listener, stopping by pid) comes from
bench.ssh so that the two never drift apart.
"""

from __future__ import annotations

import os
import re
import resource
import shutil
import statistics
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench.ssh import Processes, free_port, port_open, wait_until

__all__ = ["Processes", "Run", "Section", "free_port", "port_open", "raise_nofile",
           "random_file", "wait_until", "wrk"]



def work_dir() -> Path:
    # tmpfs when there is one: payloads and uploads then cost no disk bandwidth.
    base = "/dev/shm" if Path("/dev/shm").is_dir() else None
    return Path(tempfile.mkdtemp(prefix="bench-", dir=base))


@dataclass
class Run:
    """Settings of one invocation, handed to every scenario."""

    work: Path
    quick: bool = False
    runs: int = 3              # each figure is the median of this many measurements
    seconds: float = 5.0       # wrk duration per measurement
    bulk_mib: int = 1024
    ws_rate: int = 200         # WebSocket messages per second
    ws_seconds: float = 5.0
    scale_counts: tuple[int, ...] = (1000, 10000)
    rebind_counts: tuple[int, ...] = (10000,)
    ssh_mib: int = 256
    #: profiling: called with (pid, label, is-Python) for each process of the path
    profile: Callable[[int, str, bool], None] | None = None


@dataclass
class Section:
    """One scenario's part of the report: tables of figures, ratios and notes."""

    title: str
    intro: str = ""
    tables: list[tuple[str, list[str], list[list[str]]]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def random_file(path: Path, mib: int) -> Path:
    """`mib` MiB of random bytes (incompressible, so no layer gets it cheap)."""
    with open(path, "wb") as fh:
        for _ in range(mib):
            fh.write(os.urandom(1 << 20))
    return path


def raise_nofile(want: int) -> int:
    """Raise this process's RLIMIT_NOFILE (children inherit it); returns the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


@dataclass
class WrkResult:
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if not m:
        raise ValueError(f"wrk latency {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def wrk(url: str, connections: int, seconds: float, headers: dict[str, str] | None = None
        ) -> WrkResult:
    """One wrk run (keep-alive); requests/s and latency percentiles."""
    if shutil.which("wrk") is None:
        raise SystemExit("bench: wrk not found (bench/setup installs it)")
    threads = min(connections, 2)
    argv = ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{seconds:g}s",
            "--latency", "--timeout", "10s"]
    for k, v in (headers or {}).items():
        argv += ["-H", f"{k}: {v}"]
    out = subprocess.run(argv + [url], capture_output=True, text=True, timeout=seconds + 60)
    text = out.stdout
    rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
    p50 = re.search(r"^\s+50%\s+(\S+)", text, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", text, re.M)
    if out.returncode != 0 or not (rps and p50 and p99):
        raise RuntimeError(f"wrk {url} failed: {out.stderr.strip() or text[-500:]}")
    errors = 0
    for m in re.finditer(r"Non-2xx or 3xx responses:\s+(\d+)|Socket errors:.*?timeout (\d+)",
                         text):
        errors += int(m.group(1) or m.group(2) or 0)
    return WrkResult(float(rps.group(1)), _ms(p50.group(1)), _ms(p99.group(1)), errors)


def rounds(a: list[float], b: list[float]) -> str:
    """The ratio a / b in each round, as "median (lowest-highest)". Runs go round-robin
    over the paths, so run i of each path ran side by side: the range shows how much of
    a ratio is the sitting."""
    got = [x / y for x, y in zip(a, b, strict=True) if y]
    if not got:
        return "-"
    return f"{statistics.median(got):.2f} ({min(got):.2f}-{max(got):.2f})"
