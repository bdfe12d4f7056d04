"""Issue 7's figure: from a bind on node A to the first successful request through node B.

Two gateway nodes share one redis-server and a peer secret. Each round makes a new
session on A and logs in (through a first client, then stopped); a thread polls B
(`GET /` every ~1 ms, a new connection each time, so B answers "not connected" and
caches that) while another listens on the registry's events channel. Then
studios-connect binds to A. The time measured runs from A's claim being published in
Redis (the bind) to B's first 200: Redis pub/sub dropping B's cached "not connected",
B finding A in the registry, and the request over the peer link. Prints median, p90
and max (the p99 of a small sample).

    .venv/bin/python -m bench.bind_to_peer [--rounds 30]
"""

from __future__ import annotations

import argparse
import http.client
import os
import shutil
import socket
import statistics
import tempfile
import threading
import time
from pathlib import Path

from bench import deploy
from bench.common import Processes, wait_until

SECRET = "bench-peer-secret-bind"


def _wait_published(port: int, channel: str, sid: str, out: list[float],
                    subscribed: threading.Event) -> None:
    """Record the moment `sid` is published on `channel` (RESP, by hand: one command)."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(f"SUBSCRIBE {channel}\r\n".encode())
        buf = b""
        while b":1\r\n" not in buf:  # the subscription count
            buf += sock.recv(4096)
        subscribed.set()
        buf = b""
        needle = f"\r\n{sid}\r\n".encode()
        while needle not in buf:
            chunk = sock.recv(4096)
            if not chunk:
                return
            buf += chunk
        out.append(time.perf_counter())


def _poll_ok(gateway: deploy.Gateway, sid: str, cookie: str, out: list[float],
             deadline: float) -> None:
    while time.perf_counter() < deadline:
        conn = http.client.HTTPConnection("127.0.0.1", gateway.http_port, timeout=5)
        try:
            conn.request("GET", "/", headers={"Host": gateway.host(sid), "Cookie": cookie})
            status = conn.getresponse().status
        except OSError:
            status = 0
        finally:
            conn.close()
        if status == 200:
            out.append(time.perf_counter())
            return
        time.sleep(0.001)


def measure(rounds: int) -> list[float]:
    work = Path(tempfile.mkdtemp(prefix="bench-bind-", dir="/dev/shm" if os.path.isdir(
        "/dev/shm") else None))
    procs = Processes(work)
    times: list[float] = []
    try:
        redis = deploy.start_redis(procs, work)
        rport = int(redis.rsplit(":", 1)[1])
        storage = work / "storage"
        storage.mkdir()
        env = {"CONNECT_REDIS_ADDRESS": redis, "CONNECT_PEER_SECRET": SECRET,
               "CONNECT_STORAGE_ROOT": str(storage)}
        a = deploy.start_gateway(procs, work, "node-a", {**env, "CONNECT_NODE_ID": "node-a"})
        b = deploy.start_gateway(procs, work, "node-b", {**env, "CONNECT_NODE_ID": "node-b"})
        tool_port, _ = deploy.start_demo_tool(procs)
        for i in range(rounds):
            created = a.create_session()
            sid = created["id"]
            # Log in while a first client is bound (the login ends at the studio), then
            # let it go: the measured bind is the next one.
            first = deploy.start_connect(procs, work, created["connect_string"], tool_port,
                                         name=f"login-{i}")
            a.wait_connected(sid)
            cookie = deploy.login_cookie(a, created["login_link"])
            first.terminate()
            first.wait(15)
            wait_until(lambda s=sid: a.api(f"/api/sessions/{s}").get("connected") is False,
                       f"studio {sid} released", proc=a.proc)
            published: list[float] = []
            answered: list[float] = []
            subscribed = threading.Event()
            listener = threading.Thread(target=_wait_published, daemon=True, args=(
                rport, "connect:session:events", sid, published, subscribed))
            listener.start()
            subscribed.wait(10)
            poller = threading.Thread(target=_poll_ok, daemon=True, args=(
                b, sid, cookie, answered, time.perf_counter() + 60))
            poller.start()
            client = deploy.start_connect(procs, work, created["connect_string"], tool_port,
                                          name=f"connect-{i}")
            poller.join(70)
            listener.join(5)
            client.terminate()
            client.wait(15)
            if published and answered:
                times.append(answered[0] - published[0])
    finally:
        procs.stop_all()
        shutil.rmtree(work, ignore_errors=True)  # (on /dev/shm: memory)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    times = sorted(t * 1000 for t in measure(parser.parse_args().rounds))
    if not times:
        raise SystemExit("no round completed")
    p90 = times[min(len(times) - 1, int(0.9 * len(times)))]
    print(f"bind on A -> first 200 through B, {len(times)} rounds: median "
          f"{statistics.median(times):.1f} ms, p90 {p90:.1f} ms, max {times[-1]:.1f} ms")


if __name__ == "__main__":
    main()
