"""One big HTTP download and upload through the gateway across an emulated long path,
against the same transfer straight across that path (needs root; Linux): the
measurement behind bench/README.md's "Issue 12 in stop 51".

Two namespaces joined by :mod:`bench.netpath`: the gateway and curl in ``<prefix>-gw``,
the nginx tool (bench/baselines.py's: a sparse file sent with sendfile, WebDAV PUT) and
studios-connect in ``<prefix>-st``. "direct" is curl to the tool across the path (plain
TCP, one connection); "gateway" is curl to the gateway, one tunnel stream across the
path. Each round measures every path once, in turn; prints MB/s per run, the medians,
the ratio gateway / direct, and the CPU seconds per GB of the path's relay, the gateway
and the connect client. ``--tree NAME=DIR`` (repeatable) runs a gateway and
studios-connect from each tree side by side, alternating; ``--env NAME=KEY=VALUE`` sets
a setting of one tree's gateway. ``--send-buffer-mib`` raises tcp_wmem's maximum in both
namespaces. The namespaces are removed at the end.

    sudo .venv/bin/python -m bench.http_path --delay-ms 40 --size-mib 256 --runs 3
    sudo .venv/bin/python -m bench.http_path --delay-ms 100 --tree before=/tmp/old --tree after=.
    sudo .venv/bin/python -m bench.http_path --tree 6m=. --tree 24m=. \
        --env 24m=CONNECT_TUNNEL_WINDOW_SIZE=24MiB
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench import deploy, netpath
from bench.arena import Target
from bench.baselines import NGINX, _nginx_conf
from bench.bulk import curl
from bench.common import Processes, random_file
from bench.ssh import BIN, REPO, cpu_seconds, wait_until
from tests.support.ports import free_ports

MB = 1e6


def _tool(procs: Processes, work: Path, prefix: str, size: int) -> tuple[int, Path]:
    """nginx as the tool in the studio's namespace, on all its addresses; (port, upload
    directory)."""
    d = work / "nginx-tool"
    (d / "www").mkdir(parents=True)
    (d / "put").mkdir()
    with open(d / "www" / "download", "wb") as fh:
        fh.truncate(size)
    port = free_ports(1)[0]
    servers = (f"server {{ listen 0.0.0.0:{port}; root {d / 'www'};\n"
               "  client_max_body_size 0;\n"
               f"  location /upload/ {{ alias {d / 'put'}/; dav_methods PUT; }}\n"
               "  location = / { return 200 'tool'; }\n}\n")
    (d / "nginx.conf").write_text(_nginx_conf(d, servers))
    proc = procs.start("nginx-tool", ["ip", "netns", "exec", f"{prefix}-st", NGINX, "-e",
                                      str(d / "error.log"), "-p", str(d), "-c",
                                      str(d / "nginx.conf")])
    wait_until(lambda: subprocess.run(
        ["curl", "-s", "-o", "/dev/null", f"http://{netpath.ADDRESSES[1]}:{port}/"]
    ).returncode == 0, "nginx (tool)", proc=proc)
    return port, d / "put"


def _through(procs: Processes, work: Path, prefix: str, name: str, tree: str,
             tool_port: int, env: dict[str, str]) -> tuple[deploy.Studio, list[int]]:
    """A gateway from ``tree`` here and its studios-connect (same tree) in the studio's
    namespace; the logged-in studio and the two pids."""
    genv = deploy.gateway_env(work, f"gw-{name}", {
        "PYTHONPATH": tree, "CONNECT_BIND_ADDRESS": "0.0.0.0", **env})
    genv["CONNECT_TUNNEL_URL"] = f"{netpath.ADDRESSES[0]}:{genv['CONNECT_TUNNEL_PORT']}"
    gw = deploy.launch_gateway(procs, work, genv, name=f"gw-{name}")
    created = gw.create_session()
    cenv = {k: v for k, v in os.environ.items() if not k.startswith("CONNECT_")}
    cenv.update(PYTHONPATH=tree, CONNECT_STRING=created["connect_string"],
                CONNECT_TOOL_PORT=str(tool_port), CONNECT_CLIENT_LOG_LEVEL="warn")
    home = work / f"connect-{name}"
    home.mkdir()
    client = procs.start(f"connect-{name}", ["ip", "netns", "exec", f"{prefix}-st",
                                             str(BIN / "studios-connect")], env=cenv, cwd=home)
    gw.wait_connected(created["id"])
    cookie = deploy.login_cookie(gw, created["login_link"])
    return deploy.Studio(gw, created["id"], cookie, client), [gw.pid, client.pid]


def measure(prefix: str, size_mib: int, runs: int, trees: dict[str, str],
            env: dict[str, dict[str, str]]) -> None:
    work = Path(tempfile.mkdtemp(prefix="bench-http-path-"))
    procs = Processes(work)
    size = size_mib << 20
    try:
        payload = str(random_file(work / "payload.bin", size_mib))
        tool_port, put = _tool(procs, work, prefix, size)
        direct = f"http://{netpath.ADDRESSES[1]}:{tool_port}"
        relay = int(Path(f"/run/{prefix}.pid").read_text())
        paths: dict[str, tuple[str, dict[str, str], list[int]]] = {
            "direct": (direct, {}, [relay])}
        for name, tree in trees.items():
            studio, pids = _through(procs, work, prefix, name, tree, tool_port, env[name])
            paths[f"gateway {name}"] = (studio.url("").rstrip("/"), studio.headers,
                                        [relay, *pids])
        got: dict[str, dict[str, list[float]]] = {p: {"down": [], "up": []} for p in paths}
        cpu: dict[str, dict[str, list[list[float]]]] = {p: {"down": [], "up": []}
                                                        for p in paths}
        print(f"HTTP, one connection, {size_mib} MiB across {prefix}'s path; MB/s, CPU s "
              "per GB of the path's relay (bench.netpath) and of the gateway and "
              "studios-connect", flush=True)
        for r in range(runs):
            order = list(paths) if r % 2 == 0 else list(paths)[::-1]
            for way in ("down", "up"):
                for p in order:
                    base, headers, pids = paths[p]
                    before = [cpu_seconds(pid) for pid in pids]
                    if way == "down":
                        took = curl([f"{base}/download"], Target(p, 0, headers))
                    else:
                        took = curl(["-T", payload, f"{base}/upload/payload.bin"],
                                    Target(p, 0, headers))
                        got_bytes = os.path.getsize(put / "payload.bin")
                        (put / "payload.bin").unlink()
                        if got_bytes != size:
                            raise RuntimeError(f"upload via {p}: the tool got {got_bytes}")
                    used = [cpu_seconds(pid) - b for pid, b in zip(pids, before, strict=True)]
                    got[p][way].append(size / took / MB)
                    cpu[p][way].append([u * 1e9 / size for u in used])
                    extra = " ".join(f"{u:.2f}" for u in cpu[p][way][-1])
                    print(f"  run {r + 1} {way:4} {p:16} {size / took / MB:7.1f} MB/s {extra}",
                          flush=True)
        print("medians:", flush=True)
        for p in paths:
            d, u = (statistics.median(got[p][w]) for w in ("down", "up"))
            line = f"  {p:16} down {d:7.1f} up {u:7.1f} MB/s"
            if p != "direct":
                dd, du = (statistics.median(got["direct"][w]) for w in ("down", "up"))
                line += f"; / direct: down {d / dd:.2f} up {u / du:.2f}"
            for w in ("down", "up"):
                per = [statistics.median(c[i] for c in cpu[p][w])
                       for i in range(len(paths[p][2]))]
                line += f"; CPU/GB {w} " + ", ".join(f"{c:.2f}" for c in per)
            print(line, flush=True)
    finally:
        procs.stop_all()
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.http_path",
                                description=__doc__.split("\n")[0])
    p.add_argument("--prefix", default="sg-http")
    p.add_argument("--delay-ms", type=float, default=40.0, help="one way")
    p.add_argument("--loss", type=float, default=0.0)
    p.add_argument("--size-mib", type=int, default=256)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--tree", action="append", default=[], metavar="NAME=DIR",
                   help="a gateway and studios-connect from DIR (default: this tree)")
    p.add_argument("--env", action="append", default=[], metavar="NAME=KEY=VALUE",
                   help="a setting for tree NAME's gateway (CONNECT_TUNNEL_WINDOW_SIZE=...)")
    p.add_argument("--send-buffer-mib", type=int, default=0,
                   help="raise tcp_wmem's maximum to this in both namespaces (the kernel's "
                        "4 MiB caps what one TCP connection has in flight: ~11 MB/s at 200 "
                        "ms, the same for the tunnel and the direct path)")
    p.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    trees = dict(t.split("=", 1) for t in args.tree) or {"this": str(REPO)}
    trees = {k: str(Path(v).resolve()) for k, v in trees.items()}
    env: dict[str, dict[str, str]] = {name: {} for name in trees}
    for e in args.env:
        name, key, value = e.split("=", 2)
        env[name][key] = value
    if args.inside:
        measure(args.prefix, args.size_mib, args.runs, trees, env)
        return 0
    if os.getuid() != 0:
        raise SystemExit("bench.http_path: needs root (network namespaces)")
    path = subprocess.Popen([sys.executable, "-m", "bench.netpath", "run", "--prefix",
                             args.prefix, "--delay-ms", str(args.delay_ms), "--loss",
                             str(args.loss)], cwd=REPO)
    try:
        wait_until(lambda: Path(f"/run/{args.prefix}.pid").exists(), "the path", proc=path)
        if args.send_buffer_mib:
            for ns in (f"{args.prefix}-gw", f"{args.prefix}-st"):
                subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-q", "-w",
                                f"net.ipv4.tcp_wmem=4096 16384 {args.send_buffer_mib << 20}"],
                               check=True)
        inner = ["--inside", "--prefix", args.prefix, "--size-mib", str(args.size_mib),
                 "--runs", str(args.runs)]
        inner += [a for t in trees.items() for a in ("--tree", "=".join(t))]
        inner += [a for e in args.env for a in ("--env", e)]
        return subprocess.run(
            ["ip", "netns", "exec", f"{args.prefix}-gw", sys.executable, "-m",
             "bench.http_path", *inner],
            cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}).returncode
    finally:
        path.terminate()  # bench.netpath removes its namespaces as it ends
        path.wait(timeout=15)


if __name__ == "__main__":
    sys.exit(main())
