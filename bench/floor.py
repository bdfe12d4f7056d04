"""The WebSocket echo with either end of the tunnel in C: what a data path out of the
Python interpreter could give, end by end, before anyone builds it.

    .venv/bin/python -m bench.floor [--runs 3] [--seconds 5]

bench/yamux_floor.c speaks the tunnel's own protocol (TLS, the bind line, yamux frames)
and nothing else, in C, in either role: ``far`` in place of studios-connect, ``near`` in
place of the gateway's tunnel half (no HTTP, no login). With the demo tool's ``/ws`` echo
behind each, bench/run's WebSocket method (one WebSocket per path open side by side, the
paths taking turns a second at a time) measures, in one invocation:

* direct to the tool, nginx proxy_pass and the stunnel pair (bench/run's references);
* the gateway's full path (gateway, tunnel, studios-connect);
* the gateway with the C ``far`` end in place of studios-connect: the figure a C data
  path in studios-connect alone could reach at best;
* the C ``near`` end with studios-connect behind it: the same for the gateway's half;
* both ends in C: our protocol's own floor, beside the stunnel pair's.

Built with gcc against the system's OpenSSL (libssl-dev, which bench/setup installs).
The ratios to nginx are issue 12's (WebSocket p99 at most 1.5x nginx's); see
docs/decisions/compiled-lane.md, "Stop 44".
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
from pathlib import Path
from urllib.parse import unquote, urlsplit

from bench import baselines, deploy
from bench.arena import CHP, DIRECT, GATEWAY, NGINX, STUNNEL, Target
from bench.common import Processes, wait_until, work_dir, wrk
from bench.http import _p50_p99, _ratio, echo_rounds
from bench.ssh import REPO
from tests.support.ports import free_ports

SOURCE = REPO / "bench" / "yamux_floor.c"
C_FAR = "gateway + C far end (studios-connect in C)"
C_NEAR = "C near end (gateway's tunnel half in C) + studios-connect"
C_BOTH = "both ends in C (the protocol's floor)"
#: A session id the connect client accepts (wire/ids.py's rule), for the C near end,
#: which checks no token.
FLOOR_SESSION = "floor"
FLOOR_TOKEN = "floor-token-not-checked"


def build(work: Path) -> Path:
    """The program, compiled into `work`; raises with gcc's words when it cannot be."""
    exe = work / "yamux_floor"
    out = subprocess.run(["gcc", "-O2", "-Wall", "-o", str(exe), str(SOURCE), "-lssl",
                          "-lcrypto"], capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        raise SystemExit(f"bench.floor: cannot build {SOURCE.name} (gcc, libssl-dev):\n"
                         f"{out.stderr}")
    return exe


def _said(log: Path, word: str) -> bool:
    return log.exists() and word in log.read_text(errors="replace")


def start_far(procs: Processes, work: Path, exe: Path, connect_string: str, tool_port: int,
              name: str) -> None:
    """The C far end, bound to the gateway of `connect_string` with its session."""
    parts = urlsplit(connect_string)
    assert parts.hostname and parts.port and parts.username and parts.password
    procs.start(name, [str(exe), "far", parts.hostname, str(parts.port),
                       unquote(parts.username), unquote(parts.password), str(tool_port)])
    wait_until(lambda: _said(procs.logs / f"{name}.log", "bound"), f"{name} bound")


def start_near(procs: Processes, work: Path, exe: Path, tool_port: int, name: str,
               c_far: bool) -> int:
    """The C near end, with studios-connect (or the C far end) bound to it for the tool;
    returns the port a client connects to."""
    from studios_gateway.wire import tls

    d = work / name
    d.mkdir()
    cert_pem, key_pem = tls.make_self_signed(["127.0.0.1"])
    (d / "cert.pem").write_bytes(cert_pem)
    with os.fdopen(os.open(d / "key.pem", os.O_WRONLY | os.O_CREAT, 0o600), "wb") as fh:
        fh.write(key_pem)
    tunnel, front = free_ports(2)
    procs.start(name, [str(exe), "near", str(tunnel), str(front), str(d / "cert.pem"),
                       str(d / "key.pem")])
    log = procs.logs / f"{name}.log"
    wait_until(lambda: _said(log, "listening"), f"{name} listening")
    if c_far:
        start_far(procs, work, exe, f"studios-connect://{FLOOR_SESSION}:{FLOOR_TOKEN}@127.0.0.1:{tunnel}/",
                  tool_port, f"{name}-far")
    else:
        pin = tls.fingerprint_pem(cert_pem)
        deploy.start_connect(procs, work, f"studios-connect://{FLOOR_SESSION}:{FLOOR_TOKEN}@127.0.0.1:"
                             f"{tunnel}/?pin={pin}", tool_port, name=f"{name}-connect")
    wait_until(lambda: _said(log, "bound"), f"{name} bound")
    return front


def paths(procs: Processes, arena: Path, exe: Path, port: int) -> dict[str, Target]:
    """Every path of the comparison in front of the tool on `port`, started and bound."""
    gw = deploy.start_gateway(procs, arena)
    studio = deploy.start_studio(procs, arena, gw, port, name="connect")
    created = gw.create_session()
    start_far(procs, arena, exe, created["connect_string"], port, "c-far")
    gw.wait_connected(created["id"])
    cookie = deploy.login_cookie(gw, created["login_link"])
    nginx = baselines.start_nginx_proxy(procs, arena, port, port)
    targets = {DIRECT: Target(DIRECT, port), NGINX: Target(NGINX, nginx)}
    chp = baselines.start_chp(procs, port, port)
    if chp is not None:
        targets[CHP] = Target(CHP, chp)
    stunnel = baselines.start_stunnel(procs, arena, {"tool": port})
    if stunnel is not None:
        targets[STUNNEL] = Target(STUNNEL, stunnel["tool"])
    targets[GATEWAY] = Target(GATEWAY, gw.http_port, studio.headers)
    targets[C_FAR] = Target(C_FAR, gw.http_port,
                            {"Host": gw.host(created["id"]), "Cookie": cookie})
    targets[C_NEAR] = Target(C_NEAR, start_near(procs, arena, exe, port, "c-near", False))
    targets[C_BOTH] = Target(C_BOTH, start_near(procs, arena, exe, port, "c-both", True))
    return targets


def small(targets: dict[str, Target], runs: int, seconds: float
          ) -> dict[str, tuple[float, float]]:
    """Median req/s at 1 and at 32 connections (wrk, `GET /small`), the paths taking turns."""
    got: dict[tuple[str, int], list[float]] = {}
    for conns in (1, 32):
        for _ in range(runs):
            for name, target in targets.items():
                got.setdefault((name, conns), []).append(
                    wrk(target.url("/small"), conns, seconds, target.headers).rps)
    return {name: (statistics.median(got[(name, 1)]), statistics.median(got[(name, 32)]))
            for name in targets}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scenario", choices=("websocket", "small"), default="websocket")
    p.add_argument("--runs", type=int, default=3, help="rounds per path")
    p.add_argument("--seconds", type=float, default=5.0, help="seconds per path and round")
    p.add_argument("--rate", type=int, default=200, help="WebSocket messages per second")
    args = p.parse_args(argv)
    if shutil.which("gcc") is None:
        raise SystemExit("bench.floor: gcc is needed")
    work = work_dir()
    procs = Processes(work)
    try:
        arena = work / "floor"
        arena.mkdir()
        exe = build(arena)
        if args.scenario == "websocket":
            port, _ = deploy.start_demo_tool(procs)
            targets = paths(procs, arena, exe, port)
            got = echo_rounds(targets, args.rate, args.seconds, args.runs)
            med = {k: _p50_p99([t for r in v for t in r]) for k, v in got.items()}
        else:
            tool = baselines.start_nginx_tool(procs, arena, 1 << 20)
            rps = small(paths(procs, arena, exe, tool.port), args.runs, args.seconds)
    finally:
        procs.stop_all()
        shutil.rmtree(work, ignore_errors=True)
    if args.scenario == "small":
        width = max(len(k) for k in rps)
        print(f"GET /small (512 bytes, nginx tool), wrk, median of {args.runs} runs of "
              f"{args.seconds:g} s, paths taking turns")
        print(f"{'path':<{width}}  req/s 1 conn  req/s 32 conn  /nginx 1   /CHP 1  /nginx 32")
        for name, (one, many) in rps.items():
            chp = _ratio(one, rps[CHP][0]) if CHP in rps else "-"
            print(f"{name:<{width}}  {one:12,.0f}  {many:13,.0f}  {_ratio(one, rps[NGINX][0]):>8}"
                  f"  {chp:>7}  {_ratio(many, rps[NGINX][1]):>9}")
        return 0
    width = max(len(k) for k in med)
    print(f"WebSocket echo, a 32-byte message every {1000 / args.rate:g} ms, {args.runs} "
          f"rounds of {args.seconds:g} s per path, paths side by side")
    print(f"{'path':<{width}}  p50 ms  p99 ms  p50/nginx  p99/nginx")
    for name, (p50, p99) in med.items():
        print(f"{name:<{width}}  {p50:6.3f}  {p99:6.3f}  {_ratio(p50, med[NGINX][0]):>9}  "
              f"{_ratio(p99, med[NGINX][1]):>9}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
