"""Rebind: restart a node holding N idle tunnels and time them all back (issue 12).

A real gateway on a Redis registry (the sessions outlive the process) holds N idle
tunnels from four swarm processes of real connect clients (bench.storm's).
It is stopped with SIGTERM (GoAway to every studio, drain, exit) and started again
on the same ports; once every studio is back, killed (SIGKILL, no GoAway) and
started again. Each time the bench measures from the moment the new process answers
/ready: the last bind, binds per second, bind attempts per 100 ms (peak against
mean), and the new gateway's CPU per bind (psutil, user + system, from ready to the
last bind). The first binds are spread at 200 a second, like a fleet that came up
over time.
"""

from __future__ import annotations

from pathlib import Path

from bench.common import Run, Section, raise_nofile
from bench.storm import Storm, rounds

SWARMS = 4
#: The swarms run at this niceness: on two shared cores, four busy swarms starved the
#: gateway (6,000 binds: 5,221 refused as store_unavailable, Redis replies read after
#: the 2 s deadline; with the swarms at nice 10, none refused and all bound in 36 s).
#: Real studios have machines of their own.
NICE = 10
STOPS = {"term": "SIGTERM (drain, GoAway)", "kill": "SIGKILL"}
COLUMNS = ["idle tunnels", "stopped with", "swarm processes", "ready after stop s",
           "all back after ready s", "binds/s", "attempts", "attempts per 0.1 s, peak / mean",
           "gateway CPU per bind ms", "swarms' CPU per bind ms", "gave up",
           "swarm timers late p99 / worst ms", "load"]


def measure(n: int, work: Path) -> list[Storm]:
    """Both restarts, one after the other, on one swarm."""
    return rounds(studios=n, down=1.0, bin_s=0.1, work=work, stops=list(STOPS),
                  per_swarm=-(-n // SWARMS), timeout=300, nice=NICE)


def row(n: int, stop: str, s: Storm) -> list[str]:
    return [f"{n:,}", stop, f"{s.swarms}", f"{s.ready_after_stop_s:.1f}",
            f"{s.back_within_s:.1f}", f"{n / s.back_within_s:.0f}", f"{s.attempts:,}",
            f"{s.peak_per_bin} / {s.mean_per_bin:.1f} ({s.peak_over_mean:.1f}x)",
            f"{s.cpu_per_bind_ms:.2f}", f"{s.swarms_cpu_per_bind_ms:.2f}", f"{s.gave_up}",
            f"{s.timer_late_p99_ms:.0f} / {s.timer_late_max_ms:.0f}",
            f"{s.load[0]:.1f} -> {s.load[1]:.1f}"]


def scenario(run: Run) -> Section:
    limit = raise_nofile(max(run.rebind_counts) + 4096)
    section = Section(
        "Rebind: a node restarted under idle tunnels",
        "One gateway process on a Redis registry holds N idle tunnels from real connect "
        f"clients (`ConnectClient`, in {SWARMS} swarm processes at nice {NICE}, so that the "
        "gateway gets the CPU first, as it would with studios on machines of their own; "
        "bench/storm.py). It is "
        "stopped with SIGTERM (GoAway to every studio, drain), kept down 1 s and started "
        "again on the same ports; once all are back, killed (SIGKILL) and started again. "
        "Times from the new process answering /ready; gateway CPU from psutil (user + "
        "system) over the same span, and the swarms' (the clients' side of a bind, attempts "
        "closed at accept included: on these two CPUs it competes with the gateway); "
        "attempts are connections that reached the node, "
        "counted per 100 ms on the swarms' clock; load: the 1-minute load average at the "
        "stop and at the end. One measurement per N (each needs a full swarm).")
    rows = []
    for n in run.rebind_counts:
        if n + 512 > limit:  # the gateway holds a socket per tunnel
            section.notes.append(f"{n:,} tunnels skipped: RLIMIT_NOFILE is only {limit}")
            continue
        work = run.work / f"rebind-{n}"  # kept with --keep: events, logs, times
        work.mkdir()
        storms = measure(n, work)
        rows += [row(n, stop, s) for stop, s in zip(STOPS.values(), storms, strict=True)]
        section.notes += [f"{n:,}, {stop}: the new gateway counted {s.outcomes}"
                          for stop, s in zip(STOPS.values(), storms, strict=True)]
    section.tables.append(("", COLUMNS, rows))
    return section
