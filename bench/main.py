"""The benchmark harness: every scenario, one Markdown report (bench/run runs this).

    bench/run                        every scenario, medians of 3 runs (under 15 minutes)
    bench/run --quick                one short run of each, smaller sizes (about 2 minutes)
    bench/run --only bulk,ssh        some scenarios
    bench/run --profile http-small   one scenario with the gateway profiled
    bench/run --readme               also put the report into bench/README.md

Never run by CI or pytest; it never fails a build. Traffic goes to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

from bench import arena as arena_mod
from bench import bulk, cluster, deploy, hops, http, rebind, report, scale, scp
from bench.baselines import chp_version
from bench.common import Run, Section, work_dir
from bench.profile import Profiler

HERE = Path(__file__).resolve().parent
START, END = "<!-- report:start -->", "<!-- report:end -->"

ARENA_SCENARIOS: dict[str, Callable[[Run, arena_mod.Arena], Section]] = {
    "http-small": http.small_responses,
    "websocket": http.websocket_echo,
    "bulk": bulk.scenario,
    "hops": hops.scenario,
}


OWN_SCENARIOS: dict[str, Callable[[Run], Section]] = {
    "ssh": scp.scenario,
    "scale-idle": scale.scenario,
    "rebind": rebind.scenario,
    "scale-processes": cluster.scenario,
}
ALL = [*ARENA_SCENARIOS, *OWN_SCENARIOS]


def settings(args: argparse.Namespace, work: Path) -> Run:
    run = Run(work=work)
    if args.quick:
        run.runs, run.seconds, run.bulk_mib = 1, 2.0, 128
        run.ws_seconds, run.scale_counts, run.ssh_mib = 2.0, (1000,), 32
        run.rebind_counts = (1000,)
    if args.runs:
        run.runs = args.runs
    if args.scale_counts:
        run.scale_counts = args.scale_counts
    return run


def _counts(text: str) -> tuple[int, ...]:
    try:
        counts = tuple(int(n.replace("_", "")) for n in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: want numbers like 1000,3000") from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: want positive numbers")
    return counts


def run_scenarios(run: Run, names: list[str], profiler: Profiler | None) -> list[Section]:
    sections: list[Section] = []
    wanted_arena = [n for n in names if n in ARENA_SCENARIOS]
    if wanted_arena:
        print(f"bench: starting gateway, studios and baselines for {', '.join(wanted_arena)}",
              flush=True)
        arena = arena_mod.start(run)
        try:
            for name in wanted_arena:
                sections.append(_timed(name, lambda n=name: ARENA_SCENARIOS[n](run, arena)))
        finally:
            if profiler is not None:
                profiler.detach()
            arena.procs.stop_all()
    for name in names:
        if name in OWN_SCENARIOS:
            try:
                sections.append(_timed(name, lambda n=name: OWN_SCENARIOS[n](run)))
            finally:
                if profiler is not None:
                    profiler.detach()
    return sections


def _timed(name: str, go: Callable[[], Section]) -> Section:
    print(f"bench: {name} ...", flush=True)
    t0 = time.monotonic()
    section = go()
    took = time.monotonic() - t0
    section.notes.append(f"scenario time: {took:.0f} s")
    print(f"bench: {name} done in {took:.0f} s", flush=True)
    return section


def put_in_readme(text: str, readme: Path) -> None:
    body = readme.read_text()
    if START not in body or END not in body:
        raise SystemExit(f"bench: {readme} has no {START} ... {END} block")
    head, rest = body.split(START, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(f"{head}{START}\n\n{text}\n{END}{tail}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench/run", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="one short run of each scenario")
    p.add_argument("--only", help=f"comma-separated scenarios: {', '.join(ALL)}")
    p.add_argument("--profile", metavar="SCENARIO", choices=ALL,
                   help="run one scenario with the gateway under py-spy (or cProfile)")
    p.add_argument("--gateway-env", action="append", default=[], metavar="NAME=VALUE",
                   help="a variable for every gateway the harness starts (repeatable)")
    p.add_argument("--runs", type=int, help="measurements per figure (median is reported)")
    p.add_argument("--scale-counts", type=_counts, metavar="N,N...",
                   help="scale-idle's numbers of idle tunnels (default 1000,10000)")
    p.add_argument("--output", default=str(HERE / "report.md"), help="the report file")
    p.add_argument("--readme", action="store_true",
                   help="also replace the report in bench/README.md")
    p.add_argument("--keep", action="store_true", help="keep the work directory and logs")
    args = p.parse_args(argv)
    names = ALL if not args.only else [n.strip() for n in args.only.split(",")]
    if args.profile:
        names = [args.profile]
    unknown = [n for n in names if n not in ALL]
    if unknown:
        p.error(f"unknown scenario(s) {', '.join(unknown)}; known: {', '.join(ALL)}")
    for item in args.gateway_env:
        name, eq, value = item.partition("=")
        if not eq or not name.startswith(("CONNECT_", "TOWER_")):
            p.error(f"--gateway-env {item!r}: want CONNECT_...=value")
        deploy.GATEWAY_ENV[name] = value
    work = work_dir()
    run = settings(args, work)
    profiler = Profiler(work) if args.profile else None
    if profiler is not None:
        run.profile = profiler.attach
    started = time.monotonic()
    try:
        sections = run_scenarios(run, names, profiler)
        if profiler is not None:
            sections.append(profiler.section(args.profile))
    finally:
        if args.keep:
            print(f"bench: kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    took = time.monotonic() - started
    command = "bench/run " + shlex.join(sys.argv[1:] if argv is None else argv)
    text = report.render(command.strip(), took, chp_version(),
                         profiler.tool if profiler else None, sections)
    Path(args.output).write_text(text)
    print(text)
    print(f"bench: report written to {args.output}")
    if args.readme:
        put_in_readme(report.render(command.strip(), took, chp_version(),
                                    profiler.tool if profiler else None, sections,
                                    heading="###"), HERE / "README.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
