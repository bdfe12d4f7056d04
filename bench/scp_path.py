"""scp through the gateway across an emulated long path, against a direct sshd on the
same path (needs root; Linux): the measurement behind bench/README.md's "Issue 12 in
stop 50".

Two namespaces joined by :mod:`bench.netpath`: the gateway and the user's scp in
``<prefix>-gw``, the demo tool, studios-connect and a private sshd in ``<prefix>-st``.
Prints MB/s up and down for each mode (``sftp``: OpenSSH's default, ``legacy``:
``scp -O``, ``direct``: the sshd, the proxy's algorithms) and the CPU seconds per GB of
the gateway and the connect client; every copy's SHA-256 is checked. The namespaces are
removed at the end.

    sudo .venv/bin/python -m bench.scp_path --delay-ms 40 --size-mib 96 sftp direct legacy
"""

from __future__ import annotations

import argparse
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from bench import netpath, ssh
from bench.common import random_file
from tests.support.ports import free_ports

MODES = ("sftp", "legacy", "direct")
SSHD_PORT = 2299


def _studio(procs: ssh.Processes, work: Path, prefix: str, pub: str) -> tuple[int, str, int]:
    """Gateway here (the gw namespace), tool and connect client in the studio's;
    returns (SSH port, session id, connect client's pid)."""
    storage = work / "storage"
    storage.mkdir()
    mgmt, ssh_port, http, tunnel, listener, tool_port = free_ports(6)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CONNECT_", "TOWER_"))}
    env.update(PYTHONPATH=str(ssh.REPO), CONNECT_BIND_ADDRESS="0.0.0.0",
               CONNECT_HTTP_PORT=str(http), CONNECT_TUNNEL_PORT=str(tunnel),
               CONNECT_LISTENER_PORT=str(listener), CONNECT_MANAGEMENT_PORT=str(mgmt),
               CONNECT_MANAGEMENT_AUTH_KEY=ssh.AUTH_KEY, CONNECT_SSH_ENABLED="true",
               CONNECT_TUNNEL_URL=f"{netpath.ADDRESSES[0]}:{tunnel}",
               CONNECT_SSH_ADDR=f"127.0.0.1:{ssh_port}", CONNECT_STORAGE_ROOT=str(storage))
    gw = procs.start("gateway", [str(ssh.BIN / "twistd"), "-n", "--pidfile=",
                                 "studios-gateway"], env=env, cwd=work)
    ssh.wait_until(lambda: ssh.port_open(mgmt), "gateway management port", proc=gw)
    created = ssh.admin(mgmt, "/api/sessions", "POST", {"owner": "bench", "ssh_enabled": True})
    ssh.admin(mgmt, "/api/users/bench/keys", "PUT", {"keys": [pub]})
    inside = ["ip", "netns", "exec", f"{prefix}-st"]
    tenv = {k: v for k, v in os.environ.items() if not k.startswith("CONNECT_")}
    tenv["PYTHONPATH"] = str(ssh.REPO)
    procs.start("tool", [*inside, sys.executable, "-m", "studios_gateway.demo.tool",
                         "--port", str(tool_port)], env=tenv)
    studio_dir = work / "studio"
    studio_dir.mkdir()
    client = procs.start("connect", [*inside, str(ssh.BIN / "studios-connect")],
                         env={**tenv, "CONNECT_STRING": created["connect_string"],
                              "CONNECT_TOOL_PORT": str(tool_port)}, cwd=studio_dir)
    sid = created["id"]
    ssh.wait_until(lambda: ssh.admin(mgmt, f"/api/sessions/{sid}").get("connected") is True,
                   "studio connected", proc=client)
    return ssh_port, sid, client.pid


def _sshd(procs: ssh.Processes, work: Path, prefix: str, pub: str) -> None:
    d = work / "sshd"
    d.mkdir()
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / "host_key")],
                   check=True)
    (d / "authorized_keys").write_text(pub + "\n")
    (d / "sshd_config").write_text("\n".join([
        f"Port {SSHD_PORT}", f"ListenAddress {netpath.ADDRESSES[1]}",
        f"HostKey {d / 'host_key'}", f"PidFile {d / 'sshd.pid'}",
        f"AuthorizedKeysFile {d / 'authorized_keys'}", "StrictModes no", "UsePAM no",
        "PasswordAuthentication no", "KbdInteractiveAuthentication no",
        "PermitRootLogin prohibit-password", "Subsystem sftp internal-sftp",
        "LogLevel ERROR", ""]))
    proc = procs.start("sshd", ["ip", "netns", "exec", f"{prefix}-st", ssh.SSHD, "-D", "-e",
                                "-f", str(d / "sshd_config")])
    ssh.wait_until(lambda: subprocess.run(
        ["ip", "netns", "exec", f"{prefix}-st", "ss", "-Htln", f"sport = :{SSHD_PORT}"],
        capture_output=True, text=True).stdout.strip() != "", "sshd", proc=proc)


def measure(prefix: str, size_mib: int, modes: list[str], keep: bool = False) -> None:
    """In the gw namespace: start everything, copy up and down in each mode, print."""
    work = Path(tempfile.mkdtemp(prefix="bench-scp-path-"))
    procs = ssh.Processes(work)
    try:
        key, pub = ssh.user_key(work)
        src = random_file(work / "payload.bin", size_mib)
        ssh_port, sid, client = _studio(procs, work, prefix, pub)
        watched = [procs.procs[0].pid, client]
        _sshd(procs, work, prefix, pub)
        base = ["-F", "/dev/null", "-o", "StrictHostKeyChecking=no", "-o",
                f"UserKnownHostsFile={work / 'known_hosts'}", "-o", "IdentitiesOnly=yes",
                "-o", "BatchMode=yes", "-i", str(key)]
        me = pwd.getpwuid(os.getuid()).pw_name
        print(f"scp of {size_mib} MiB across {prefix}'s path; MB/s, then CPU s per GB "
              "(gateway, connect client)", flush=True)
        size = src.stat().st_size
        for mode in modes:
            if mode == "direct":
                login, host, port, remote = me, netpath.ADDRESSES[1], SSHD_PORT, work / "d.bin"
                opts = base + ssh.PROXY_ALGORITHMS
            else:
                login, host, port, remote = f"bench@{sid}", "127.0.0.1", ssh_port, Path("p.bin")
                opts = base + (["-O"] if mode == "legacy" else [])
            used: list[list[float]] = []
            up, down = ssh.measure(mode, opts, port, login, str(remote), src,
                                   work / "back.bin", 1,
                                   lambda: [ssh.cpu_seconds(p) for p in watched], used, host)
            cpu = " ".join(f"{w}: {g * 1e9 / size:.2f}, {c * 1e9 / size:.2f}"
                           for w, (g, c) in zip(("up", "down"), used, strict=True))
            print(f"{mode:7} up {up:5.1f} MB/s, down {down:5.1f} MB/s; CPU/GB {cpu}",
                  flush=True)
    finally:
        procs.stop_all()
        if keep:
            print(f"work directory and logs kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.scp_path", description=__doc__.split("\n")[0])
    p.add_argument("modes", nargs="*", choices=MODES, default=list(MODES))
    p.add_argument("--prefix", default="sg-scp")
    p.add_argument("--delay-ms", type=float, default=40.0, help="one way")
    p.add_argument("--size-mib", type=int, default=96)
    p.add_argument("--keep", action="store_true", help="keep the work directory and logs")
    p.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.inside:
        measure(args.prefix, args.size_mib, args.modes, args.keep)
        return 0
    if os.getuid() != 0:
        raise SystemExit("bench.scp_path: needs root (network namespaces)")
    path = subprocess.Popen([sys.executable, "-m", "bench.netpath", "run", "--prefix",
                             args.prefix, "--delay-ms", str(args.delay_ms)], cwd=ssh.REPO)
    try:
        ssh.wait_until(lambda: Path(f"/run/{args.prefix}.pid").exists(), "the path", proc=path)
        return subprocess.run(
            ["ip", "netns", "exec", f"{args.prefix}-gw", sys.executable, "-m",
             "bench.scp_path", "--inside", "--prefix", args.prefix, "--size-mib",
             str(args.size_mib), *(["--keep"] if args.keep else []), *args.modes],
            cwd=ssh.REPO, env={**os.environ, "PYTHONPATH": str(ssh.REPO)}).returncode
    finally:
        path.terminate()  # bench.netpath removes its namespaces as it ends
        path.wait(timeout=15)


if __name__ == "__main__":
    sys.exit(main())
