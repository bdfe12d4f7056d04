"""The Markdown report: the machine, the versions of everything measured, each section."""

from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
from pathlib import Path

from bench.common import Section

REPO = Path(__file__).resolve().parents[1]


def _first_line(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return "not installed"
    text = (out.stdout or out.stderr).strip()
    return text.splitlines()[0] if text else "not installed"


def machine() -> list[list[str]]:
    cpu = "unknown"
    try:
        m = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
        cpu = m.group(1) if m else cpu
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    distro = "unknown"
    try:
        m = re.search(r'^PRETTY_NAME="?([^"\n]+)', Path("/etc/os-release").read_text(), re.M)
        distro = m.group(1) if m else distro
    except OSError:
        pass
    return [["CPU", f"{cpu} ({os.cpu_count()} CPUs)"], ["memory", f"{mem:.1f} GiB"],
            ["system", f"{distro}, Linux {platform.release()}"]]


def versions(chp: str | None, profiler: str | None) -> list[list[str]]:
    import OpenSSL
    from OpenSSL import SSL

    import twisted
    from bench.baselines import stunnel_version

    commit = _first_line(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    rows = [
        ["studios-gateway", f"commit {commit}"],
        # The interpreter too: a pyenv or self-built one is not the Debian build the .deb
        # runs on (docs/decisions/interpreter.md).
        ["Python", f"{sys.version.split()[0]} "
                   f"({os.path.realpath(getattr(sys, '_base_executable', sys.executable))})"],
        ["Twisted", twisted.__version__],
        ["pyOpenSSL / OpenSSL", f"{OpenSSL.__version__} / "
                                f"{SSL.SSLeay_version(SSL.SSLEAY_VERSION).decode()}"],
        ["nginx", _first_line(["/usr/sbin/nginx", "-v"])],
        ["wrk", _first_line(["wrk", "-v"]).split(" [")[0]],
        ["curl", _first_line(["curl", "--version"]).split(" (")[0]],
        ["OpenSSH", _first_line(["ssh", "-V"]).split(",")[0]],
        ["node", _first_line(["node", "--version"])],
        ["configurable-http-proxy", chp or "not installed"],
        ["stunnel", stunnel_version() or "not installed"],
    ]
    if profiler:
        rows.append(["profiler", profiler])
    return rows


def table(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def render(command: str, seconds: float, chp: str | None, profiler: str | None,
           sections: list[Section], heading: str = "#") -> str:
    out = [f"{heading} Benchmark report", "",
           f"`{command}`, {seconds / 60:.1f} minutes. All traffic on 127.0.0.1; every "
           "baseline ran in the same invocation on the same machine.", "",
           table(["machine", ""], machine()), "", table(["software", "version"],
                                                         versions(chp, profiler)), ""]
    for s in sections:
        out += [f"{heading}# {s.title}", ""]
        if s.intro:
            out += [s.intro, ""]
        for caption, head, rows in s.tables:
            if caption:
                out += [caption + ":", ""]
            out += [table(head, rows), ""]
        for note in s.notes:
            out += [note if note.startswith("```") else f"- {note}", ""]
    return "\n".join(out).rstrip() + "\n"
