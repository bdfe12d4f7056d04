"""One small request's time at 1 connection, step by step, in the gateway and in
studios-connect, from the kernel's syscall tracepoints.

    .venv/bin/python -m bench.timeline [--tree DIR] [--seconds 1]

Starts the nginx tool, a gateway and a studios-connect from ``--tree`` (default: this
checkout), logs in, keeps wrk at 1 connection on ``GET /small``, and records the two
processes' ``raw_syscalls`` enter/exit tracepoints and every CPU's ``sched_switch``
with ``perf record`` for ``--seconds`` (Debian's linux-perf; root, or
perf_event_paranoid low enough). A tracepoint costs ~1 us where strace's ptrace stop
costs ~50-100, so the gaps are near what runs untraced.

For each process it prints the median, mean and p99 of every step of the request cycle:
time in a syscall (``in send browser``), and time in user space between two syscalls
(``recv browser -> send tunnel``: the Python of the request's way in), each without
the time the process was preempted (shown as its own step, see :func:`steps`). A file descriptor is
named by what it is connected to (browser, tunnel, tool). The steps between a recv and
the next send are on the request's critical path; the ones after a send happen while
the next process works (docs/decisions/compiled-lane.md uses them).
In the WebSocket scenario it also follows each message through both processes
(:func:`journeys`) and shows where the slowest 1 % of them lost their time.

``--scenario websocket`` does the same for bench/run's WebSocket echo instead of wrk: the
demo tool's ``/ws``, a 32-byte message every 5 ms, so every process wakes from idle for
each message (the browser's fd is the echo client's, the tool's the demo tool's).
"""

from __future__ import annotations

import argparse
import collections
import re
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from bench.ssh import REPO

#: Messages per second of the WebSocket scenario (bench/run's rate: one every 5 ms).
ECHO_RATE = 200

#: x86_64 numbers of the syscalls a proxy's cycle makes (others print as "NR n").
SYSCALLS = {0: "read", 1: "write", 7: "poll", 19: "readv", 20: "writev", 44: "send",
            45: "recv", 46: "sendmsg", 47: "recvmsg", 232: "epoll_wait", 281: "epoll_pwait",
            233: "epoll_ctl", 228: "clock_gettime", 202: "futex"}
_LINE = re.compile(r"^\s*\S.*?\s(\d+)\s+\[\d+\]\s+([\d.]+):\s+raw_syscalls:sys_(enter|exit): "
                   r"NR (\d+) (?:\((\w+))?")
_SWITCH = re.compile(r"\s([\d.]+):\s+sched:sched_switch: .*?prev_pid=(\d+) .*?prev_state=(\S+)"
                     r" ==> next_comm=(.*?) next_pid=(\d+)")


def fd_names(pid: int, roles: dict[int, str]) -> dict[str, str]:
    """Hex fd (as perf prints it) -> role, for the TCP sockets of `pid` whose local or
    remote port is in `roles`."""
    import psutil

    names = {}
    for c in psutil.Process(pid).net_connections(kind="tcp"):
        if c.fd < 0 or not c.raddr:
            continue
        for port in (c.laddr.port, c.raddr.port):
            if port in roles:
                names[format(c.fd, "x")] = roles[port]
    return names


def steps(script: str, pid: int, names: dict[str, str]) -> dict[str, list[float]]:
    """Microseconds of each step of `pid` in `perf script`'s text of raw_syscalls and
    sched_switch events (a whole-system recording). Time that `pid` spends runnable but
    off its CPU (preempted: another process ran there, often the very one it just woke)
    is taken out of the step it falls in and counted as its own step, ``preempted after
    X`` (between syscalls) or ``preempted in X`` (inside one). Time asleep (switched out
    in any state but R, as in a blocking epoll_wait) stays in its step: ``in epoll_wait``
    is the wait."""
    got: dict[str, list[float]] = collections.defaultdict(list)
    last_exit: tuple[float, str] | None = None  # (time, "syscall fd") of the last exit
    entered: tuple[float, int, str] | None = None
    off = 0.0  # runnable time off the CPU since the last syscall enter or exit
    out_at: float | None = None
    preempted = False
    for line in script.splitlines():
        sw = _SWITCH.search(line)
        if sw is not None:
            t = float(sw.group(1)) * 1e6
            if int(sw.group(2)) == pid:
                out_at, preempted = t, sw.group(3).startswith("R")
            elif int(sw.group(5)) == pid and out_at is not None:
                if preempted:
                    off += t - out_at
                out_at = None
            continue
        m = _LINE.search(line)
        if m is None or int(m.group(1)) != pid:
            continue
        t, kind, nr = float(m.group(2)) * 1e6, m.group(3), int(m.group(4))
        if kind == "enter":
            what = SYSCALLS.get(nr, f"NR {nr}")
            if "epoll" not in what and m.group(5):
                what += " " + names.get(m.group(5), f"fd {int(m.group(5), 16)}")
            if last_exit is not None:
                got[f"{last_exit[1]} -> {what}"].append(t - last_exit[0] - off)
                got[f"preempted after {last_exit[1]}"].append(off)
            off = 0.0
            entered = (t, nr, what)
        elif entered is not None and entered[1] == nr:
            label = f"in {entered[2]}"
            if "epoll" in entered[2] and last_exit is not None:
                label += f" (after {last_exit[1]})"
            got[label].append(t - entered[0] - off)
            got[f"preempted in {entered[2]}"].append(off)
            last_exit = (t, entered[2])
            off = 0.0
    return got


#: One echo message's way, in the order it happens: (process, what) marks whose times
#: `journeys` finds, and the segments between them that `tail_table` prints. With the
#: tool traced too, its segment is split in three (TOOL_MARKS, TOOL_SEGMENTS).
MARKS = (("gateway", "wake browser"), ("gateway", "send tunnel"),
         ("studios-connect", "wake tunnel"), ("studios-connect", "send tool"),
         ("studios-connect", "wake tool"), ("studios-connect", "send tunnel"),
         ("gateway", "wake tunnel"), ("gateway", "send browser"))
SEGMENTS = ("gateway: the message's Python in", "tunnel: gateway's send -> connect awake",
            "studios-connect: its Python in", "tool: send -> echo back -> connect awake",
            "studios-connect: its Python out", "tunnel: connect's send -> gateway awake",
            "gateway: its Python out")
TOOL_MARKS = MARKS[:4] + (("tool", "wake studio"), ("tool", "send studio")) + MARKS[4:]
TOOL_SEGMENTS = SEGMENTS[:3] + ("tool: connect's send -> tool awake",
                                "tool: its own work (the echo)",
                                "tool: its send -> connect awake") + SEGMENTS[4:]


def marks(script: str, pid: int, names: dict[str, str]) -> list[tuple[str, float]]:
    """`pid`'s marks in time order: ``wake X`` (the epoll_wait exit before a recv on X)
    and ``send X`` (a send's enter), in us."""
    got: list[tuple[str, float]] = []
    woke: float | None = None
    for line in script.splitlines():
        m = _LINE.search(line)
        if m is None or int(m.group(1)) != pid:
            continue
        t, kind, what = float(m.group(2)) * 1e6, m.group(3), SYSCALLS.get(int(m.group(4)), "")
        if kind == "exit" and "epoll" in what:
            woke = t
        elif kind == "enter" and m.group(5) and what in ("recv", "recvfrom", "read"):
            if woke is not None:
                got.append((f"wake {names.get(m.group(5), '?')}", woke))
            woke = None
        elif kind == "enter" and m.group(5) and what in ("send", "sendto", "write", "sendmsg"):
            got.append((f"send {names.get(m.group(5), '?')}", t))
    return got


def journeys(by_process: dict[str, list[tuple[str, float]]],
             order: tuple[tuple[str, str], ...] = MARKS) -> list[list[float]]:
    """Each echo message's times at `order`'s marks: the next mark of the order, in its
    process, after the last; a message missing one is left out."""
    found: list[list[float]] = []
    at = {who: 0 for who in by_process}
    starts = [t for what, t in by_process["gateway"] if what == "wake browser"]
    for start in starts:
        times: list[float] = []
        last = start - 1e-3
        for who, what in order:
            seq = by_process[who]
            i = at[who]
            while i < len(seq) and (seq[i][1] < last or seq[i][0] != what):
                i += 1
            if i == len(seq):
                return found
            at[who] = i + 1
            times.append(seq[i][1])
            last = seq[i][1]
        if times[0] == start:
            found.append(times)
    return found


def tail_table(found: list[list[float]], segments: tuple[str, ...] = SEGMENTS) -> list[str]:
    """Rows: each segment's median over all messages and its mean over the slowest 1 %
    (by the gateway's recv of the message to its send of the echo), and the share of
    those messages' excess over the median message that the segment holds."""
    spans = [[b - a for a, b in zip(t, t[1:], strict=False)] for t in found]
    totals = [t[-1] - t[0] for t in found]
    order = sorted(range(len(found)), key=totals.__getitem__)
    slow = order[-max(1, len(found) // 100):]
    med = [statistics.median(s[k] for s in spans) for k in range(len(segments))]
    slow_mean = [statistics.mean(spans[i][k] for i in slow) for k in range(len(segments))]
    excess = sum(slow_mean) - sum(med)
    rows = [f"  {name:44} {m:8.1f} {s:8.1f} {100 * (s - m) / excess if excess else 0:6.0f} %"
            for name, m, s in zip(segments, med, slow_mean, strict=True)]
    rows.append(f"  {'the whole way (gateway in to gateway out)':44} "
                f"{statistics.median(totals):8.1f} {statistics.mean(totals[i] for i in slow):8.1f}")
    return rows


def tail99(values: list[float]) -> float:
    """The 99th percentile (nearest rank): a step's tail, beside its median."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, -(-99 * len(ordered) // 100) - 1))]


def listener_pid(port: int) -> int | None:
    """The pid of the process listening on 127.0.0.1:`port` (the tool), if one is seen."""
    import psutil

    for c in psutil.net_connections(kind="tcp"):
        if c.status == psutil.CONN_LISTEN and c.laddr.port == port and c.pid:
            return int(c.pid)
    return None


def record(pids: list[int], seconds: float, out: Path) -> str:
    """`perf script` text of every CPU's syscalls of `pids` and context switches."""
    flt = " || ".join(f"common_pid == {p}" for p in pids)
    rec = subprocess.Popen(["perf", "record", "-q", "-a", "-o", str(out),
                            "-e", "raw_syscalls:sys_enter", "--filter", flt,
                            "-e", "raw_syscalls:sys_exit", "--filter", flt,
                            "-e", "sched:sched_switch"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(seconds)  # the recording's length, not a wait for an event
    stop_recording(rec, out)
    return subprocess.run(["perf", "script", "-i", str(out)], capture_output=True,
                          text=True, check=True).stdout


def stop_recording(rec: subprocess.Popen[bytes], out: Path) -> None:
    """Stop a `perf record` (SIGINT: it writes its file and exits) writing to `out`;
    SystemExit with perf's words when it failed (bench.cpu_split stops its own here)."""
    rec.send_signal(signal.SIGINT)
    _, err = rec.communicate(timeout=60)
    if rec.returncode not in (0, -signal.SIGINT, 128 + signal.SIGINT) or not out.exists():
        raise SystemExit(f"bench: perf record failed: {err.decode(errors='replace').strip()}")


def main(argv: list[str] | None = None) -> int:
    # (the harness's modules here: the parsing above is tested without psutil)
    from bench import deploy
    from bench.common import wrk

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tree", default=str(REPO), help="the source tree of both processes")
    p.add_argument("--seconds", type=float, default=1.0, help="how long to record")
    p.add_argument("--top", type=int, default=12, help="steps shown per process")
    p.add_argument("--scenario", choices=("small", "websocket"), default="small",
                   help="wrk's small GET at 1 connection, or the WebSocket echo")
    args = p.parse_args(argv)
    if shutil.which("perf") is None:
        raise SystemExit("bench: perf not found (Debian: apt-get install linux-perf)")
    tree = Path(args.tree).resolve()
    path = deploy.small_path(tree) if args.scenario == "small" else deploy.echo_path(tree)
    with path as (work, tool, studio):
        gw, client = studio.gateway, studio.connect
        tool_port = tool if isinstance(tool, int) else tool.port
        load_seconds = args.seconds * 2 + 6
        result: list[Any] = []
        if args.scenario == "small":
            def load_run() -> None:
                result.append(wrk(studio.url("/small"), 1, load_seconds, studio.headers).rps)
        else:
            from bench.http import Target, echo_run

            def load_run() -> None:
                target = Target("gateway", gw.http_port, studio.headers)
                result.append(echo_run(target, ECHO_RATE, load_seconds))
        load = threading.Thread(target=load_run)
        load.start()
        time.sleep(2)  # the load connected and the pools warm before recording
        gw_names = fd_names(gw.pid, {gw.http_port: "browser", gw.tunnel_port: "tunnel"})
        c_names = fd_names(client.pid, {tool_port: "tool", gw.tunnel_port: "tunnel"})
        tool_pid = listener_pid(tool_port) if args.scenario == "websocket" else None
        traced = [gw.pid, client.pid] + ([tool_pid] if tool_pid is not None else [])
        t_names = fd_names(tool_pid, {tool_port: "studio"}) if tool_pid is not None else {}
        text = record(traced, args.seconds, work / "cycle.perf")
        load.join()
        if args.scenario == "small":
            rps = result[0] if result else 0
            print(f"wrk, 1 connection: {rps:,.0f} req/s "
                  f"({1e6 / rps if rps else 0:.0f} us per round trip)")
        elif result:
            p50, p99 = result[0]
            print(f"WebSocket echo, a message every {1000 / ECHO_RATE:g} ms: p50 {p50:.3f} ms, "
                  f"p99 {p99:.3f} ms")
        if args.scenario == "websocket":
            by_process = {"gateway": marks(text, gw.pid, gw_names),
                          "studios-connect": marks(text, client.pid, c_names)}
            order, segments = MARKS, SEGMENTS
            if tool_pid is not None:
                by_process["tool"] = marks(text, tool_pid, t_names)
                order, segments = TOOL_MARKS, TOOL_SEGMENTS
            found = journeys(by_process, order)
            print(f"\nwhere the slowest 1 % of {len(found)} messages spent their time: us, "
                  "median over all, mean over the slowest, share of their excess")
            for row in (tail_table(found, segments) if found
                        else ["  (no whole message recorded)"]):
                print(row)
        for who, pid, names in (("gateway", gw.pid, gw_names),
                                ("studios-connect", client.pid, c_names)):
            got = steps(text, pid, names)
            print(f"\n{who}: us per step, median, mean and p99 (n = times seen; "
                  "preemptions shown where they average 1 us or more)")
            rows = [(k, v) for k, v in got.items()
                    if not k.startswith("preempted") or statistics.mean(v) >= 1.0]
            for label, v in sorted(rows, key=lambda kv: -len(kv[1]))[:args.top]:
                print(f"  {label:48} {statistics.median(v):7.1f} {statistics.mean(v):7.1f}"
                      f" {tail99(v):7.1f}  n={len(v)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
