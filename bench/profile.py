"""--profile SCENARIO: where the gateway process spends its time during one scenario.

py-spy (the `bench` extra installs it) samples the running gateway from outside:
no change to the gateway, native speed. Without py-spy the gateway is started under
twistd's own profiler (``--profile FILE --profiler cprofile --savestats``), whose
stats are written when the gateway stops (only for gateways the harness starts
itself, so not for the ssh scenario, whose gateway bench/ssh.py starts).
"""

from __future__ import annotations

import collections
import io
import os
import pstats
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bench import deploy
from bench.common import Section

TOP = 15


def py_spy() -> str | None:
    local = Path(sys.executable).parent / "py-spy"
    return str(local) if local.exists() else shutil.which("py-spy")


@dataclass
class Target:
    label: str
    pid: int
    cpu_start: float
    started: float
    raw: Path | None = None
    sampler: subprocess.Popen[bytes] | None = None
    cpu_s: float = 0.0
    wall_s: float = 0.0


def _cpu(pid: int) -> float:
    import psutil

    t = psutil.Process(pid).cpu_times()
    return float(t.user + t.system)


class Profiler:
    """Samples every Python process of the path (gateway, connect clients) with py-spy and
    counts the CPU seconds of every process of the path (tools and proxies too)."""

    def __init__(self, work: Path):
        self.work = work
        self.exe = py_spy()
        self.stats = work / "profile.cprof"
        self.targets: list[Target] = []
        if self.exe is None:
            deploy.TWISTD_ARGS[:] = [f"--profile={self.stats}", "--profiler=cprofile",
                                     "--savestats"]

    @property
    def tool(self) -> str:
        return "py-spy" if self.exe else "cProfile (twistd --profiler)"

    def attach(self, pid: int, label: str, python: bool = True) -> None:
        """Count `pid`'s CPU from now on, and sample it if it is a Python process."""
        t = Target(label, pid, _cpu(pid), time.monotonic())
        if python and self.exe is not None:
            t.raw = self.work / f"profile-{len(self.targets)}.txt"
            log = open(self.work / f"py-spy-{len(self.targets)}.log", "wb")  # noqa: SIM115
            t.sampler = subprocess.Popen(
                [self.exe, "record", "--pid", str(pid), "--rate", "200", "--nonblocking",
                 "--format", "raw", "--output", str(t.raw)],
                stdout=log, stderr=subprocess.STDOUT)
            log.close()
        self.targets.append(t)

    def detach(self) -> None:
        """Stop sampling (py-spy writes its file on SIGINT); read the CPU counters."""
        for t in self.targets:
            if t.wall_s:
                continue
            t.wall_s = time.monotonic() - t.started
            try:
                t.cpu_s = _cpu(t.pid) - t.cpu_start
            except Exception:  # noqa: BLE001 - the process is gone: nothing to count
                t.cpu_s = float("nan")
            if t.sampler is not None and t.sampler.poll() is None:
                t.sampler.send_signal(signal.SIGINT)
                try:
                    t.sampler.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    t.sampler.kill()
                    t.sampler.wait()

    def section(self, scenario: str) -> Section:
        section = Section(
            f"Profile: '{scenario}'",
            f"CPU seconds of each process of the path while the scenario ran (from psutil; "
            f"{os.cpu_count()} CPUs), then where each Python process spent them, sampled "
            f"with {self.tool}.")
        section.tables.append(("", ["process", "CPU s", "wall s", "CPU / wall"],
                               [[t.label, f"{t.cpu_s:.1f}", f"{t.wall_s:.1f}",
                                 f"{t.cpu_s / t.wall_s:.2f}" if t.wall_s else "-"]
                                for t in self.targets]))
        if self.exe is None:
            self._from_cprofile(section)
            return section
        for t in self.targets:
            if t.raw is not None:
                _from_raw(section, t)
        return section

    def _from_cprofile(self, section: Section) -> None:
        if not self.stats.exists():
            section.notes.append("no cProfile stats (the gateway did not stop cleanly?)")
            return
        out = io.StringIO()
        pstats.Stats(str(self.stats), stream=out).sort_stats("tottime").print_stats(TOP)
        section.notes.append("```\n" + out.getvalue().strip() + "\n```")


def _from_raw(section: Section, t: Target) -> None:
    if t.raw is None or not t.raw.exists():
        section.notes.append(f"{t.label}: py-spy wrote nothing (see py-spy-*.log)")
        return
    own: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    for line in t.raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [_short(f) for f in stack.split(";")]
        total += n
        own[frames[-1]] += n
        for f in set(frames):
            incl[f] += n
    if not total:
        section.notes.append(f"{t.label}: no samples")
        return
    # Frames on (nearly) every stack are the reactor's own loop: not informative.
    inclusive = [(f, n) for f, n in incl.most_common() if n < 0.9 * total][:TOP]
    section.tables.append((f"{t.label}, {total:,} samples: own time (the function itself)",
                           ["share", "function"],
                           [[f"{100 * n / total:.1f} %", f"`{f}`"]
                            for f, n in own.most_common(TOP)]))
    section.tables.append((f"{t.label}: inclusive time (the function and what it calls)",
                           ["share", "function"],
                           [[f"{100 * n / total:.1f} %", f"`{f}`"] for f, n in inclusive]))


def _short(frame: str) -> str:
    """`func (path/to/file.py:123)` -> `func (file.py)`; packages keep their last parts."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    parts = Path(path).parts
    keep = "/".join(parts[-2:]) if len(parts) > 1 else path
    return f"{name} ({keep})"
