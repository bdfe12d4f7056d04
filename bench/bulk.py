"""Bulk transfer: one big download and one big upload with curl, through the gateway vs
direct to the nginx tool vs an OpenSSH ``ssh -R`` reverse tunnel carrying the same bytes
(and vs nginx proxy_pass and configurable-http-proxy, which cost little to add)."""

from __future__ import annotations

import os
import statistics
import subprocess

from bench import hops
from bench.arena import GATEWAY, NGINX, STUNNEL, Arena, Target
from bench.baselines import NginxTool
from bench.common import Run, Section, random_file, rounds

MB = 1e6


def curl(argv: list[str], target: Target) -> float:
    """Run curl; returns its transfer time in seconds (checks the status)."""
    cmd = ["curl", "-sS", "--fail", "-o", "/dev/null", "-w", "%{http_code} %{time_total}",
           "--max-time", "300"]
    for k, v in target.headers.items():
        cmd += ["-H", f"{k}: {v}"]
    out = subprocess.run(cmd + argv, capture_output=True, text=True, timeout=330)
    if out.returncode != 0:
        raise RuntimeError(f"curl via {target.name} failed: {out.stderr.strip()}")
    code, took = out.stdout.split()
    if not code.startswith("2"):
        raise RuntimeError(f"curl via {target.name}: HTTP {code}")
    return float(took)


def download(target: Target) -> float:
    return curl([target.url("/download")], target)


def upload(target: Target, payload: str, tool: NginxTool) -> float:
    """PUT ``payload`` to the nginx ``tool`` through ``target``; checks the tool got it all."""
    tool.clear_uploads()
    took = curl(["-T", payload, target.url("/upload/payload.bin")], target)
    got = os.path.getsize(tool.dir / "put" / "payload.bin")
    if got != os.path.getsize(payload):
        raise RuntimeError(f"upload via {target.name}: the tool got {got} bytes")
    tool.clear_uploads()
    return took


def scenario(run: Run, arena: Arena) -> Section:
    size = run.bulk_mib << 20
    payload = str(random_file(arena.work / "payload.bin", run.bulk_mib))
    targets = dict(arena.http)
    if run.profile is None:
        ssh = arena.ssh_reverse()
        targets[ssh.name] = ssh
    section = Section(
        f"Bulk transfer of {run.bulk_mib:,} MiB",
        "curl, one connection: `GET /download` (a file nginx sends with sendfile) and "
        "`PUT /upload/` (nginx WebDAV writes it to tmpfs), median of "
        f"{run.runs} runs. The ssh -R path is a private sshd plus `ssh -N -R` "
        "(OpenSSH defaults) from the studio side, like the connect client's tunnel.",
        notes=list(arena.notes))
    got: dict[str, tuple[list[float], list[float]]] = {n: ([], []) for n in targets}
    cpus = sorted(os.sched_getaffinity(0))
    placed: dict[str, list[float]] = {}
    try:
        for _ in range(run.runs):
            for name, target in targets.items():
                got[name][0].append(size / download(target) / MB)
                got[name][1].append(size / upload(target, payload, arena.tool) / MB)
        if len(cpus) == 2 and run.profile is None:
            placed = _placed_uploads(run, arena, payload, size, cpus[0], cpus[1])
    finally:
        os.unlink(payload)
    med = {n: (statistics.median(d), statistics.median(u)) for n, (d, u) in got.items()}
    section.tables.append(("", ["path", "download MB/s", "upload MB/s"],
                           [[n, f"{d:,.0f}", f"{u:,.0f}"] for n, (d, u) in med.items()]))
    gw_down, gw_up = got[GATEWAY]
    section.tables.append((
        "Ratios of throughput (above 1: the gateway is faster; per round: the ratio of the "
        "runs made side by side, median and range)",
        ["ratio", "download", "upload", "download, per round", "upload, per round"],
        [[f"gateway / {n}", f"{med[GATEWAY][0] / d:.2f}", f"{med[GATEWAY][1] / u:.2f}",
          rounds(gw_down, got[n][0]), rounds(gw_up, got[n][1])]
         for n, (d, u) in med.items() if n != GATEWAY]))
    if placed:
        mine = placed[GATEWAY]
        section.tables.append((
            "Upload placed by hand (curl and the first proxy on one CPU, the rest on the "
            "other; the tables above are the scheduler's choice, which is made once per "
            "invocation and moves the upload by +-10 %: docs/decisions/tunnel-tls-path.md, "
            "\"Bulk in fewer, larger steps\")",
            ["path", "upload MB/s", "gateway / it", "gateway / it, per round"],
            [[n, f"{statistics.median(v):,.0f}",
              "" if n == GATEWAY else f"{statistics.median(mine) / statistics.median(v):.2f}",
              "" if n == GATEWAY else rounds(mine, v)] for n, v in placed.items()]))
    return section


def _placed_uploads(run: Run, arena: Arena, payload: str, size: int, first: int,
                    second: int) -> dict[str, list[float]]:
    """MB/s of the gateway's and nginx proxy_pass's upload with curl and the first proxy
    pinned to ``first`` and the rest of the path to ``second``."""
    got: dict[str, list[float]] = {}
    for _ in range(run.runs):
        for name in (GATEWAY, NGINX, STUNNEL):
            chain = arena.pids.get(name)
            if not chain:
                continue
            with hops.placed(chain, first, first, second):
                took = upload(arena.http[name], payload, arena.tool)
            got.setdefault(name, []).append(size / took / MB)
    return got
