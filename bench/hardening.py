"""Issue 17's figures: silent sockets on the TLS ports, and tunnels across a Redis outage.

    .venv/bin/python -m bench.hardening silent-tls [--sockets 1000] [--tree DIR]
    .venv/bin/python -m bench.hardening redis-outage [--studios 10] [--outage 35] [--tree DIR]

`silent-tls`: one gateway with HTTPS, Redis and peer TLS; per TLS port (tunnel,
HTTPS, peer) it opens N sockets that never send a byte and prints the gateway's
open file descriptors before, while they are held, and after (once the gateway has
closed them all, or after `--wait` seconds), with how long the closing took.

`redis-outage`: one gateway on Redis (default claim TTL), N real studios under a
request load; Redis saves, is killed, stays away `--outage` seconds and comes back
with its data. Prints the tunnels the gateway closed ("held elsewhere"), the binds
that followed, and the requests that failed once Redis was back.

`--tree DIR` runs the gateway from another source tree (git archive REV | tar -x -C
DIR), to measure the code before a change the same way.
"""

from __future__ import annotations

import argparse
import http.client
import os
import re
import select
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

from bench import deploy
from bench.common import Processes, free_port, port_open, raise_nofile, wait_until
from bench.main import work_dir
from bench.ssh import REPO


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _settle(pid: int, seconds: float = 2.0) -> int:
    """The fd count once it has stopped moving for a moment (accepts done)."""
    last, stable_since = open_fds(pid), time.monotonic()
    end = time.monotonic() + 30
    while time.monotonic() < end:
        time.sleep(0.1)
        now = open_fds(pid)
        if now != last:
            last, stable_since = now, time.monotonic()
        elif time.monotonic() - stable_since >= seconds:
            break
    return last


def silent_tls(args: argparse.Namespace, procs: Processes, work: Path) -> None:
    from studios_gateway.wire.tls import make_self_signed

    raise_nofile(4 * args.sockets + 1000)
    cert, key = make_self_signed(["gw.localhost", "*.gw.localhost", "localhost"])
    (work / "cert.pem").write_bytes(cert)
    (work / "key.pem").write_bytes(key)
    files = {"CONNECT_TLS_CERT_FILE": str(work / "cert.pem"),
             "CONNECT_TLS_KEY_FILE": str(work / "key.pem")}
    # Silent sockets never reach certificate checks: one certificate serves as all three.
    peer = {"CONNECT_PEER_TLS_CERT_FILE": files["CONNECT_TLS_CERT_FILE"],
            "CONNECT_PEER_TLS_KEY_FILE": files["CONNECT_TLS_KEY_FILE"],
            "CONNECT_PEER_TLS_CA_FILE": files["CONNECT_TLS_CERT_FILE"]}
    redis = deploy.start_redis(procs, work)
    listener = free_port()
    gw = deploy.start_gateway(procs, work, extra={
        "PYTHONPATH": args.tree, "CONNECT_REDIS_ADDRESS": redis,
        "CONNECT_PROXY_URL": "https://gw.localhost", "CONNECT_LISTENER_PORT": str(listener),
        "CONNECT_HTTP_MAX_CONNECTIONS": "20", **files, **peer})
    wait_until(lambda: port_open(listener), "peer listener", proc=gw.proc)
    print(f"gateway from {args.tree}; {args.sockets} silent sockets per port")
    print(f"{'port':8} {'before':>7} {'during':>7} {'after':>7}  closed")
    for name, port in (("tunnel", gw.tunnel_port), ("https", gw.http_port),
                       ("peer", listener)):
        before = _settle(gw.pid)
        t0 = time.monotonic()
        socks: list[socket.socket] = []
        while len(socks) < args.sockets:
            # In steps the listen backlog (50) can take: past it the kernel completes our
            # connect but the gateway sees the socket only when a SYN-ACK retry gets
            # through, seconds later, and the figures would measure the kernel.
            socks += [socket.create_connection(("127.0.0.1", port), timeout=10)
                      for _ in range(min(25, args.sockets - len(socks)))]
            end = time.monotonic() + 5
            while open_fds(gw.pid) < before + len(socks) and time.monotonic() < end:
                time.sleep(0.01)
        during = open_fds(gw.pid)
        pending = list(socks)
        while pending and time.monotonic() - t0 < args.wait:
            ready, _, _ = select.select(pending, [], [], 0.5)
            for s in ready:
                try:
                    if s.recv(65536, socket.MSG_PEEK | socket.MSG_DONTWAIT):
                        continue  # a reply (a 408 page, a refusal): not closed yet
                except (BlockingIOError, ConnectionResetError):
                    pass
                pending.remove(s)
        took = time.monotonic() - t0
        if pending:
            after = open_fds(gw.pid)
            closed = f"{len(pending)} of {len(socks)} still open after {took:.0f}s"
        else:
            wait_until(lambda b=before: open_fds(gw.pid) <= b + 2, "fds back", timeout=20)
            after = open_fds(gw.pid)
            closed = f"all within {took:.1f}s"
        print(f"{name:8} {before:>7} {during:>7} {after:>7}  {closed}", flush=True)
        for s in socks:
            s.close()
        _settle(gw.pid)


class _Load:
    def __init__(self, gw: deploy.Gateway, studios: list[deploy.Studio]):
        self.results: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(gw, studios), daemon=True)
        self._thread.start()

    def _run(self, gw: deploy.Gateway, studios: list[deploy.Studio]) -> None:
        while not self._stop.is_set():
            for studio in studios:
                try:
                    conn = http.client.HTTPConnection("127.0.0.1", gw.http_port, timeout=10)
                    conn.request("GET", "/", headers=studio.headers)
                    status = conn.getresponse().status
                    conn.close()
                except OSError:
                    status = 0
                self.results.append((time.monotonic(), status))
                time.sleep(0.02)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


def _metric(gw: deploy.Gateway, name: str) -> float:
    conn = http.client.HTTPConnection("127.0.0.1", gw.management_port, timeout=10)
    conn.request("GET", "/metrics", headers={"Authorization": f"Bearer {deploy.AUTH_KEY}"})
    text = conn.getresponse().read().decode()
    conn.close()
    m = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def redis_outage(args: argparse.Namespace, procs: Processes, work: Path) -> None:
    port = free_port()
    redis_dir = work / "redis"
    redis_dir.mkdir()
    argv = ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "",
            "--appendonly", "no", "--dir", str(redis_dir)]
    redis = procs.start("redis", argv)
    wait_until(lambda: port_open(port), "redis-server", proc=redis)
    gw = deploy.start_gateway(procs, work, extra={
        "PYTHONPATH": args.tree, "CONNECT_REDIS_ADDRESS": f"127.0.0.1:{port}",
        "CONNECT_LOG_LEVEL": "info"})
    tool_port, _ = deploy.start_demo_tool(procs)
    studios = [deploy.start_studio(procs, work, gw, tool_port, name=f"connect-{i}")
               for i in range(args.studios)]
    binds = 'studios_gateway_tunnel_binds_total{outcome="ok"}'
    binds_before = _metric(gw, binds)
    load = _Load(gw, studios)
    time.sleep(2)
    cli = ["redis-cli", "-p", str(port)]
    subprocess.run([*cli, "SAVE"], capture_output=True, check=True, timeout=30)
    redis.kill()
    redis.wait()
    t_down = time.monotonic()
    print(f"gateway from {args.tree}; {args.studios} studios; Redis down for "
          f"{args.outage:g}s", flush=True)
    time.sleep(args.outage)
    redis = procs.start("redis-again", argv)
    wait_until(lambda: port_open(port), "redis-server again", proc=redis)
    t_back = time.monotonic()
    time.sleep(args.after)
    load.stop()
    log = (work / "logs" / "gateway.log").read_text(errors="replace")
    dropped = log.count("held elsewhere")
    rebinds = _metric(gw, binds) - binds_before
    during = [s for t, s in load.results if t_down <= t < t_back]
    soon = [s for t, s in load.results if t_back <= t < t_back + 15]
    late = [s for t, s in load.results if t >= t_back + 15]
    print(f"tunnels closed as 'held elsewhere': {dropped}; binds after the outage: "
          f"{rebinds:g}")
    for what, got in (("during the outage", during), ("in the 15 s after", soon),
                      ("later", late)):
        print(f"requests {what}: {len(got)}, failed {sum(s != 200 for s in got)}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("scenario", choices=["silent-tls", "redis-outage"])
    p.add_argument("--tree", default=str(REPO), help="source tree to run the gateway from")
    p.add_argument("--sockets", type=int, default=1000)
    p.add_argument("--wait", type=float, default=30.0,
                   help="silent-tls: seconds to wait for the gateway to close them")
    p.add_argument("--studios", type=int, default=10)
    p.add_argument("--outage", type=float, default=35.0)
    p.add_argument("--after", type=float, default=30.0,
                   help="redis-outage: seconds of load after Redis is back")
    args = p.parse_args(argv)
    args.tree = str(Path(args.tree).resolve())
    work = work_dir()
    (work / "logs").mkdir()
    procs = Processes(work / "logs")
    try:
        (silent_tls if args.scenario == "silent-tls" else redis_outage)(args, procs, work)
    finally:
        procs.stop_all()
        if not os.environ.get("BENCH_KEEP"):
            shutil.rmtree(work, ignore_errors=True)
        else:
            print("kept", work)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
