"""The SSH scenario of the harness: bench/ssh.py's scp through the SSH proxy vs a local
sshd, called through its functions (one measurement per run, median of the runs)."""

from __future__ import annotations

import os
import pwd
import shutil
import statistics

from bench import ssh
from bench.common import Run, Section, random_file


def scenario(run: Run) -> Section:
    section = Section(
        f"SSH: scp of {run.ssh_mib} MiB",
        "bench/ssh.py: OpenSSH scp through the gateway's SSH proxy (gateway -> tunnel -> "
        "the connect client's SSH server) vs a private OpenSSH sshd, once with the "
        "algorithms the proxy negotiates (aes128-ctr, hmac-sha2-256) and once with "
        f"OpenSSH's defaults. MB/s, median of {run.runs} runs; every copy's SHA-256 "
        "is checked.")
    for tool in ("ssh", "scp", "ssh-keygen"):
        if shutil.which(tool) is None:
            section.notes.append(f"skipped: {tool} is not installed (bench/setup)")
            return section
    work = run.work / "ssh"
    work.mkdir()
    procs = ssh.Processes(work)
    try:
        key, pub = ssh.user_key(work)
        src = random_file(work / "payload.bin", run.ssh_mib)
        ssh_port, sid = ssh.start_studio(procs, work, pub)
        if run.profile is not None:  # bench.ssh starts the gateway, tool, connect client
            run.profile(procs.procs[0].pid, "gateway", True)
            run.profile(procs.procs[2].pid, "studios-connect", True)
        sshd_port = ssh.start_sshd(procs, work, pub)
        base = ["-F", "/dev/null", "-o", "StrictHostKeyChecking=no", "-o",
                f"UserKnownHostsFile={work / 'known_hosts'}", "-o", "IdentitiesOnly=yes",
                "-o", "BatchMode=yes", "-i", str(key)]
        me = pwd.getpwuid(os.getuid()).pw_name
        back = work / "back.bin"
        (work / "direct").mkdir()
        paths = [
            ("gateway SSH proxy", base, ssh_port, f"bench@{sid}", "payload.bin"),
            ("direct sshd, same algorithms", base + ssh.PROXY_ALGORITHMS, sshd_port, me,
             str(work / "direct" / "a.bin")),
            ("direct sshd, OpenSSH defaults", base, sshd_port, me,
             str(work / "direct" / "b.bin")),
        ]
        got: dict[str, list[tuple[float, float]]] = {p[0]: [] for p in paths}
        for _ in range(run.runs):
            for label, opts, port, login, remote in paths:
                got[label].append(ssh.measure(label, opts, port, login, remote, src, back, 1))
    finally:
        procs.stop_all()
    med = {k: (statistics.median(x[0] for x in v), statistics.median(x[1] for x in v))
           for k, v in got.items()}
    section.tables.append(("", ["path", "upload MB/s", "download MB/s"],
                           [[k, f"{u:.0f}", f"{d:.0f}"] for k, (u, d) in med.items()]))
    proxy = med["gateway SSH proxy"]
    section.tables.append((
        "Ratios of throughput (above 1: the proxy is faster)", ["ratio", "upload", "download"],
        [[f"proxy / {k}", f"{proxy[0] / u:.2f}", f"{proxy[1] / d:.2f}"]
         for k, (u, d) in med.items() if k != "gateway SSH proxy"]))
    return section
