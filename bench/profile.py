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
import pstats
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from bench import deploy
from bench.common import Section

TOP = 15


def py_spy() -> str | None:
    local = Path(sys.executable).parent / "py-spy"
    return str(local) if local.exists() else shutil.which("py-spy")


class Profiler:
    def __init__(self, work: Path):
        self.work = work
        self.exe = py_spy()
        self.raw = work / "profile.txt"
        self.stats = work / "profile.cprof"
        self.proc: subprocess.Popen[bytes] | None = None
        if self.exe is None:
            deploy.TWISTD_ARGS[:] = [f"--profile={self.stats}", "--profiler=cprofile",
                                     "--savestats"]

    @property
    def tool(self) -> str:
        return "py-spy" if self.exe else "cProfile (twistd --profiler)"

    def attach(self, pid: int) -> None:
        """Start sampling `pid` (py-spy only; cProfile is already running inside it)."""
        if self.exe is None or self.proc is not None:
            return
        log = open(self.work / "py-spy.log", "wb")  # noqa: SIM115 - the child keeps it
        self.proc = subprocess.Popen([self.exe, "record", "--pid", str(pid), "--rate", "250",
                                      "--format", "raw", "--output", str(self.raw)],
                                     stdout=log, stderr=subprocess.STDOUT)
        log.close()

    def detach(self) -> None:
        """Stop sampling (py-spy writes its file on SIGINT)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def section(self, scenario: str) -> Section:
        section = Section(f"Profile of the gateway during '{scenario}'",
                          f"Sampled with {self.tool}; the gateway process only.")
        if self.exe is not None:
            self._from_raw(section)
        else:
            self._from_cprofile(section)
        return section

    def _from_raw(self, section: Section) -> None:
        if not self.raw.exists():
            section.notes.append(f"py-spy wrote nothing; see {self.work / 'py-spy.log'}")
            return
        own: collections.Counter[str] = collections.Counter()
        incl: collections.Counter[str] = collections.Counter()
        total = 0
        for line in self.raw.read_text().splitlines():
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
            section.notes.append("no samples (the gateway was idle)")
            return
        section.intro += f" {total:,} samples while the gateway was busy (idle time not counted)."
        section.tables.append(("Own time (the function itself)", ["share", "function"],
                               [[f"{100 * n / total:.1f} %", f"`{f}`"]
                                for f, n in own.most_common(TOP)]))
        section.tables.append(("Inclusive time (the function and what it calls)",
                               ["share", "function"],
                               [[f"{100 * n / total:.1f} %", f"`{f}`"]
                                for f, n in incl.most_common(TOP + 10)]))

    def _from_cprofile(self, section: Section) -> None:
        if not self.stats.exists():
            section.notes.append("no cProfile stats (the gateway did not stop cleanly?)")
            return
        out = io.StringIO()
        pstats.Stats(str(self.stats), stream=out).sort_stats("tottime").print_stats(TOP)
        section.notes.append("```\n" + out.getvalue().strip() + "\n```")


def _short(frame: str) -> str:
    """`func (path/to/file.py:123)` -> `func (file.py)`; packages keep their last parts."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    parts = Path(path).parts
    keep = "/".join(parts[-2:]) if len(parts) > 1 else path
    return f"{name} ({keep})"
