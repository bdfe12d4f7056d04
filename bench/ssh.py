"""scp throughput through the SSH proxy vs straight to a local OpenSSH sshd, in one run.

    .venv/bin/python -m bench.ssh [--size-mib 256] [--repeat 1] [--keep] [--cat]

Starts, all on free 127.0.0.1 ports and under one temporary directory:
a real gateway (``twistd -n studios-gateway`` with CONNECT_SSH_ENABLED=true),
the demo tool and ``studios-connect`` for one session (created, and the
user's key registered, through the admin API), and Debian's
``/usr/sbin/sshd`` with its own config, host key and authorized_keys, as the
current user. Then it copies one file of random bytes up and down with
OpenSSH's scp, to the studio through the proxy and to sshd directly (once
with the algorithms the proxy negotiates, once with OpenSSH's defaults),
checks every copy's SHA-256, and prints MB/s (10^6 bytes per second) and the
ratio proxy / direct, and the CPU the gateway and the connect client spent per GB
through the proxy (user + system seconds, from /proc: unlike MB/s it barely moves
when other work shares the machine). With ``--cat`` it also reads the same file as a
command's output, ``ssh studio 'cat payload.bin' >/dev/null``, against scp's download
through the proxy and against the same command straight to sshd. Every process it
starts is stopped by its pid.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from tests.support.ports import free_ports

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SSHD = "/usr/sbin/sshd"
AUTH_KEY = "bench-management-key"
#: What OpenSSH 9 and the proxy agree on (see docs/decisions/ssh.md).
PROXY_ALGORITHMS = ["-o", "Ciphers=aes128-ctr", "-o", "MACs=hmac-sha2-256"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(check: Callable[[], bool], what: str, timeout: float = 30.0,
               proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"bench: {what}: the process exited with {proc.returncode}")
        if time.monotonic() > deadline:
            raise SystemExit(f"bench: {what}: not within {timeout:g}s")
        time.sleep(0.05)


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class Processes:
    """Every process the bench starts; stopped by pid, newest first."""

    def __init__(self, logs: Path):
        self.logs = logs
        self.procs: list[subprocess.Popen[bytes]] = []
        self.by_name: dict[str, subprocess.Popen[bytes]] = {}  # the last one of each name

    def start(self, name: str, argv: list[str], **kw: object) -> subprocess.Popen[bytes]:
        log = open(self.logs / f"{name}.log", "wb")  # noqa: SIM115 - the child keeps it
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, **kw)  # type: ignore[call-overload]
        log.close()
        self.procs.append(proc)
        self.by_name[name] = proc
        return proc

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def admin(port: int, path: str, method: str = "GET", body: object = None) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method, data=data,
                                 headers={"Authorization": f"Bearer {AUTH_KEY}",
                                          "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=15) as resp:
        return json.loads(resp.read())


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def user_key(work: Path) -> tuple[Path, str]:
    """A new ed25519 key for the bench's user, without a passphrase: (its path, the
    public half's line)."""
    key = work / "user_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)],
                   check=True)
    return key, key.with_suffix(".pub").read_text().strip()


def start_studio(procs: Processes, work: Path, pub_key: str) -> tuple[int, str]:
    """Gateway, tool and connect client; returns (SSH port, session id)."""
    storage = work / "storage"
    storage.mkdir()
    mgmt, ssh_port, http, tunnel, listener = free_ports(5)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CONNECT_", "TOWER_"))}
    env.update(PYTHONPATH=str(REPO), CONNECT_BIND_ADDRESS="127.0.0.1",
               CONNECT_HTTP_PORT=str(http), CONNECT_TUNNEL_PORT=str(tunnel),
               CONNECT_LISTENER_PORT=str(listener), CONNECT_MANAGEMENT_PORT=str(mgmt),
               CONNECT_MANAGEMENT_AUTH_KEY=AUTH_KEY, CONNECT_SSH_ENABLED="true",
               CONNECT_SSH_ADDR=f"127.0.0.1:{ssh_port}", CONNECT_STORAGE_ROOT=str(storage))
    gw = procs.start("gateway", [str(BIN / "twistd"), "-n", "--pidfile=", "studios-gateway"],
                     env=env, cwd=work)
    wait_until(lambda: port_open(mgmt), "gateway management port", proc=gw)
    created = admin(mgmt, "/api/sessions", "POST", {"owner": "bench", "ssh_enabled": True})
    admin(mgmt, "/api/users/bench/keys", "PUT", {"keys": [pub_key]})
    tool_port = free_port()
    tenv = {**os.environ, "PYTHONPATH": str(REPO)}
    tool = procs.start("tool", [sys.executable, "-m", "studios_gateway.demo.tool", "--port",
                                str(tool_port)], env=tenv)
    wait_until(lambda: port_open(tool_port), "demo tool", proc=tool)
    cenv = {k: v for k, v in tenv.items() if not k.startswith("CONNECT_")}
    cenv.update(CONNECT_STRING=created["connect_string"], CONNECT_TOOL_PORT=str(tool_port))
    studio_dir = work / "studio"
    studio_dir.mkdir()
    client = procs.start("connect", [str(BIN / "studios-connect")], env=cenv, cwd=studio_dir)
    sid = created["id"]
    wait_until(lambda: admin(mgmt, f"/api/sessions/{sid}").get("connected") is True,
               "studio connected", proc=client)
    return ssh_port, sid


def start_sshd(procs: Processes, work: Path, pub_key: str) -> int:
    if not os.path.exists(SSHD):
        raise SystemExit(f"bench: {SSHD} not found; install it: apt-get install openssh-server")
    if os.getuid() == 0:  # root's sshd insists on its privilege separation directory
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
    d = work / "sshd"
    d.mkdir()
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f",
                    str(d / "host_key")], check=True)
    (d / "authorized_keys").write_text(pub_key + "\n")
    port = free_port()
    (d / "sshd_config").write_text("\n".join([
        f"Port {port}", "ListenAddress 127.0.0.1", f"HostKey {d / 'host_key'}",
        f"PidFile {d / 'sshd.pid'}", f"AuthorizedKeysFile {d / 'authorized_keys'}",
        "StrictModes no", "UsePAM no", "PasswordAuthentication no",
        "KbdInteractiveAuthentication no", "PermitRootLogin prohibit-password",
        "Subsystem sftp internal-sftp", "LogLevel ERROR", ""]))
    proc = procs.start("sshd", [SSHD, "-D", "-e", "-f", str(d / "sshd_config")])
    wait_until(lambda: port_open(port), "sshd", proc=proc)
    return port


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def scp(opts: list[str], port: int, src: str, dst: str) -> float:
    start = time.monotonic()
    r = subprocess.run(["scp", "-q", *opts, "-P", str(port), src, dst], capture_output=True,
                       text=True, timeout=600)
    took = time.monotonic() - start
    if r.returncode != 0:
        raise SystemExit(f"bench: scp {src} {dst} failed: {r.stderr.strip()}")
    return took


def cat_down(opts: list[str], port: int, login: str, remote: str, size: int,
             cpu: Callable[[], list[float]] = list,
             used: list[list[float]] | None = None) -> float:
    """MB/s of ``ssh ... 'cat remote' >/dev/null`` (cat's exit status is checked)."""
    before = cpu()
    start = time.monotonic()
    r = subprocess.run(["ssh", *opts, "-p", str(port), f"{login}@127.0.0.1",
                        f"cat {remote}"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                       stdin=subprocess.DEVNULL, timeout=600)
    took = time.monotonic() - start
    if r.returncode != 0:
        raise SystemExit(f"bench: ssh cat {remote}: exit {r.returncode}: "
                         f"{r.stderr.decode(errors='replace').strip()}")
    if used is not None:
        used.append([b - a for a, b in zip(before, cpu(), strict=True)])
    return size / took / 1e6


def measure(label: str, opts: list[str], port: int, login: str, remote: str, src: Path,
            back: Path, repeat: int, cpu: Callable[[], list[float]] = list,
            used: list[list[float]] | None = None,
            host: str = "127.0.0.1") -> tuple[float, float]:
    """Best MB/s up and down over `repeat` runs; every copy's hash is checked.

    `cpu` reads the CPU seconds of the processes watched; what each copy cost them is
    appended to `used` (uploads and downloads alike).
    """
    size, want = src.stat().st_size, sha256(src)
    ups, downs = [], []

    def timed(src_arg: str, dst_arg: str) -> float:
        before = cpu()
        took = scp(opts, port, src_arg, dst_arg)
        if used is not None:
            used.append([b - a for a, b in zip(before, cpu(), strict=True)])
        return size / took / 1e6

    for _ in range(repeat):
        ups.append(timed(str(src), f"{login}@{host}:{remote}"))
        downs.append(timed(f"{login}@{host}:{remote}", str(back)))
        if sha256(back) != want:
            raise SystemExit(f"bench: {label}: the copy differs from the original")
        back.unlink()
    return max(ups), max(downs)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.ssh", description=__doc__.split("\n")[0])
    p.add_argument("--size-mib", type=int, default=256)
    p.add_argument("--repeat", type=int, default=1, help="runs per direction; best is kept")
    p.add_argument("--keep", action="store_true", help="keep the work directory and logs")
    p.add_argument("--cat", action="store_true",
                   help="also ssh 'cat' the file (proxy and direct) beside scp's download")
    args = p.parse_args(argv)
    for tool in ("ssh", "scp", "ssh-keygen"):
        if shutil.which(tool) is None:
            raise SystemExit(f"bench: {tool} not found (apt-get install openssh-client)")
    work = Path(tempfile.mkdtemp(prefix="bench-ssh-"))
    procs = Processes(work)
    try:
        key, pub = user_key(work)
        src = work / "payload.bin"
        with open(src, "wb") as fh:
            for _ in range(args.size_mib):
                fh.write(os.urandom(1 << 20))
        ssh_port, sid = start_studio(procs, work, pub)
        watched = [procs.procs[0].pid, procs.procs[-1].pid]  # the gateway, the connect client
        sshd_port = start_sshd(procs, work, pub)
        base = ["-F", "/dev/null", "-o", "StrictHostKeyChecking=no", "-o",
                f"UserKnownHostsFile={work / 'known_hosts'}", "-o", "IdentitiesOnly=yes",
                "-o", "BatchMode=yes", "-i", str(key)]
        me = pwd.getpwuid(os.getuid()).pw_name
        back = work / "back.bin"
        direct_dir = work / "direct"
        direct_dir.mkdir()
        used: list[list[float]] = []
        rows = [
            ("proxy (gateway -> tunnel -> studio)",
             measure("proxy", base, ssh_port, f"bench@{sid}", "payload.bin", src, back,
                     args.repeat, lambda: [cpu_seconds(p) for p in watched], used)),
            ("direct sshd, same algorithms",
             measure("direct", base + PROXY_ALGORITHMS, sshd_port, me,
                     str(direct_dir / "a.bin"), src, back, args.repeat)),
            ("direct sshd, OpenSSH defaults",
             measure("direct-default", base, sshd_port, me, str(direct_dir / "b.bin"), src,
                     back, args.repeat)),
        ]
        print(f"scp of {args.size_mib} MiB, best of {args.repeat} "
              f"({os.cpu_count()} CPUs, {sys.version.split()[0]})")
        print(f"{'path':40} {'up MB/s':>9} {'down MB/s':>10}")
        for label, (up, down) in rows:
            print(f"{label:40} {up:9.1f} {down:10.1f}")
        (pu, pd), (du, dd), (fu, fd) = (r[1] for r in rows)
        print(f"ratio proxy / direct (same algorithms): up {pu / du:.2f}, down {pd / dd:.2f}")
        print(f"ratio proxy / direct (OpenSSH defaults): up {pu / fu:.2f}, down {pd / fd:.2f}")
        gb = src.stat().st_size * len(used) / 1e9
        gw_cpu, connect_cpu = (sum(u[i] for u in used) / gb for i in (0, 1))
        print(f"CPU per GB through the proxy: gateway {gw_cpu:.2f} s, "
              f"connect client {connect_cpu:.2f} s")
        if args.cat:
            size = src.stat().st_size
            remote_direct = str(direct_dir / "a.bin")
            cat_used: list[list[float]] = []
            proxy_cat, direct_cat = [], []
            for _ in range(args.repeat):  # alternating, so drift hits both alike
                proxy_cat.append(cat_down(base, ssh_port, f"bench@{sid}", "payload.bin",
                                          size, lambda: [cpu_seconds(p) for p in watched],
                                          cat_used))
                direct_cat.append(cat_down(base + PROXY_ALGORITHMS, sshd_port, me,
                                           remote_direct, size))
            print(f"ssh 'cat' of {args.size_mib} MiB >/dev/null, best of {args.repeat}: "
                  f"proxy {max(proxy_cat):.1f} MB/s ({max(proxy_cat) / pd:.2f} of its scp "
                  f"down), direct sshd {max(direct_cat):.1f} MB/s")
            cat_gb = size * len(cat_used) / 1e9
            print("CPU per GB of ssh 'cat' through the proxy: gateway "
                  f"{sum(u[0] for u in cat_used) / cat_gb:.2f} s, connect client "
                  f"{sum(u[1] for u in cat_used) / cat_gb:.2f} s")
        return 0
    finally:
        procs.stop_all()
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
