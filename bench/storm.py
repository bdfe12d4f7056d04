"""Reconnect storm: restart a gateway holding N studios and watch them come back.

    python -m bench.storm [--studios 1000] [--down 3] [--bin 0.1] [--json]

A real gateway (Redis registry, so the sessions outlive the process) holds N
idle tunnels from swarm processes of real connect clients (``--per-swarm`` each,
so the measuring side is not what falls behind). The gateway is stopped with
SIGTERM (drain: GoAway to every studio), kept down ``--down`` seconds, and
started again on the same ports. Each swarm records, on the machine's clock
(time.time(), common to every process), every dial with how late its timer
fired, every bind attempt (a connection to a node made and a bind sent) and
every successful bind. Reported: how long after the new process was ready every
studio was bound again, bind attempts per ``--bin`` seconds from then (peak
against mean), clients that gave up (a bind refused as final), the new
gateway's CPU per bind from ready to the last bind (psutil, user + system) and the
swarms' over the same span (the clients' side, waste included), and
how late the swarms' timers fired (p99 and worst, from the stop on): late timers
would bunch attempts that the clients meant to spread.

``--move``: two nodes instead; the first one is drained (GoAway to every
studio) and the studios, which list both, rebind on the second, which is
"ready" all along: this is where the delay after a GoAway shows. Issue 16 asks: all back
within 10 s, peak at most 3x the mean at 100 ms bins, nobody gives up.

    python -m bench.storm swarm FILE EVENTS GATEWAYS DELAY   (one swarm process, started
                                                              by the above)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from bench.common import Processes, raise_nofile, wait_until
from bench.deploy import AUTH_KEY, GATEWAY_ENV, gateway_env, launch_gateway, start_redis
from bench.scale import create_sessions
from bench.ssh import REPO


@dataclass
class Storm:
    studios: int
    back_within_s: float  # from the new process being ready to the last studio bound
    attempts: int  # bind attempts (reaching a node) from ready until the last studio bound
    peak_per_bin: int
    mean_per_bin: float
    bin_s: float
    gave_up: int
    ready_after_stop_s: float = 0.0  # from SIGTERM to the new process answering /ready
    gateway_cpu_s: float = 0.0  # the new gateway's CPU from ready to the last studio bound
    swarms_cpu_s: float = 0.0  # the swarm processes' CPU over the same span
    timer_late_p99_ms: float = 0.0  # how late the swarms' dial timers fired, from the stop
    timer_late_max_ms: float = 0.0
    swarms: int = 1
    load: tuple[float, float] = (0.0, 0.0)  # 1-minute load average at the stop, at the end
    outcomes: str = ""  # the serving gateway's binds and TLS handshakes by outcome

    @property
    def cpu_per_bind_ms(self) -> float:
        return 1000 * self.gateway_cpu_s / self.studios

    @property
    def swarms_cpu_per_bind_ms(self) -> float:
        """The connect clients' side of a bind, waste included (attempts closed at accept,
        handshakes and binds refused): on two shared CPUs it competes with the gateway's."""
        return 1000 * self.swarms_cpu_s / self.studios

    @property
    def peak_over_mean(self) -> float:
        return self.peak_per_bin / self.mean_per_bin if self.mean_per_bin else 0.0


def analyse(events: list[list[str]], stopped: float, ready: float, studios: int,
            bin_s: float, window: float = 0.0) -> Storm:
    """Figures from the swarms' events (``D t late``: a dial, its timer ``late`` seconds
    late; ``A t``: a bind sent; ``B i t``: studio i bound; ``F i``: studio i gave up) for
    a node stopped at ``stopped`` and
    ready at ``ready``. The attempts are counted in bins over at least ``window`` seconds
    from ``ready`` (so that one burst is not its own mean)."""
    rebound: dict[str, float] = {}
    for e in events:
        if e[0] == "B" and float(e[2]) > stopped:
            rebound.setdefault(e[1], float(e[2]))
    if len(rebound) < studios:
        raise AssertionError(f"only {len(rebound)} of {studios} studios bound again")
    last = max(rebound.values())
    binds = [float(e[1]) for e in events if e[0] == "A" and ready <= float(e[1]) <= last]
    bins = max(1, math.ceil(max(last - ready, window) / bin_s))
    counts = [0] * bins
    for t in binds:
        counts[min(bins - 1, int((t - ready) / bin_s))] += 1
    late = sorted(float(e[2]) for e in events if e[0] == "D" and float(e[1]) > stopped)
    return Storm(studios=studios, back_within_s=round(last - ready, 3), attempts=len(binds),
                 peak_per_bin=max(counts), mean_per_bin=round(len(binds) / bins, 3),
                 bin_s=bin_s, gave_up=sum(1 for e in events if e[0] == "F"),
                 ready_after_stop_s=round(ready - stopped, 3),
                 timer_late_p99_ms=round(1000 * late[int(0.99 * (len(late) - 1))], 1)
                 if late else 0.0,
                 timer_late_max_ms=round(1000 * late[-1], 1) if late else 0.0)


# The swarm -----------------------------------------------------------------------------


def swarm(strings: list[str], events_path: Path, gateways: str = "",
          start_every: float = 1 / 200) -> None:
    """One process of real connect clients, started ``start_every`` seconds apart."""
    from twisted.internet import reactor
    from twisted.internet.protocol import Factory, Protocol

    from studios_gateway.studio.client import ConnectClient, TunnelClientProtocol
    from studios_gateway.studio.settings import load_client_settings

    events = open(events_path, "a", buffering=1)  # noqa: SIM115 - open while we run

    class Recording(TunnelClientProtocol):
        def connectionMade(self) -> None:
            events.write(f"A {time.time():.4f}\n")
            super().connectionMade()

    class Timed(ConnectClient):
        protocol_class = Recording

        def _connect(self) -> None:
            timer = self._pending  # the timer that called us, when one did
            late = (reactor.seconds() - timer.getTime()) if timer is not None \
                and timer.called else 0.0
            events.write(f"D {time.time():.4f} {late:.4f}\n")
            super()._connect()

    tool = reactor.listenTCP(0, Factory.forProtocol(Protocol), interface="127.0.0.1")
    clients = []
    for cs in strings:
        env = {"CONNECT_STRING": cs, "CONNECT_TOOL_PORT": str(tool.getHost().port)}
        if gateways:
            env["CONNECT_GATEWAY_URL"] = gateways
        settings = load_client_settings(env)
        sid = settings.session_id
        client = Timed(
            settings, reactor,
            on_bind=lambda _reply, sid=sid: events.write(f"B {sid} {time.time():.4f}\n"),
            on_fatal=lambda msg, sid=sid: events.write(f"F {sid} {msg}\n"))
        clients.append(client)
    for n, client in enumerate(clients):  # spread the first binds, as bench.swarm
        reactor.callLater(n * start_every, client.startService)
    reactor.run()


# The driver ------------------------------------------------------------------------------


class Swarms:
    """Swarm processes of ``per_swarm`` clients each, binding ``start_rate`` studios a second
    between them at first; their events are read together."""

    def __init__(self, procs: Processes, work: Path, strings: list[str], per_swarm: int,
                 gateways: str = "", start_rate: float = 200.0, name: str = "storm-swarm",
                 nice: int = 0):
        self.paths: list[Path] = []
        self.pids: list[int] = []
        count = max(1, math.ceil(len(strings) / per_swarm))
        for w in range(count):
            part, events = work / f"{name}-{w}.strings", work / f"{name}-{w}.events"
            part.write_text("\n".join(strings[w::count]) + "\n")
            self.paths.append(events)
            proc = procs.start(f"{name}-{w}", ["nice", "-n", str(nice), sys.executable, "-m",
                                               "bench.storm", "swarm", str(part), str(events),
                                               gateways, f"{count / start_rate:g}"],
                               env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin",
                                    **_passed_on()}, cwd=work)
            self.pids.append(proc.pid)  # (nice execs the python: the swarm's own pid)

        self._read: dict[Path, int] = {}  # how far each events file was read
        self._events: list[list[str]] = []
        self._last_bind: dict[str, float] = {}  # session id -> its latest bind

    def _catch_up(self) -> None:
        """Read what the swarms wrote since the last call (whole lines only): polled every
        50 ms, re-reading 10,000 studios' events cost the bench a tenth of a core."""
        for path in self.paths:
            try:
                with open(path, "rb") as f:
                    f.seek(self._read.get(path, 0))
                    data = f.read()
            except FileNotFoundError:
                continue
            whole = data[:data.rfind(b"\n") + 1]
            self._read[path] = self._read.get(path, 0) + len(whole)
            for line in whole.decode().splitlines():
                e = line.split()
                if e:
                    self._events.append(e)
                    if e[0] == "B":
                        self._last_bind[e[1]] = float(e[2])

    def events(self) -> list[list[str]]:
        self._catch_up()
        return self._events

    def cpu(self) -> float:
        """The swarm processes' CPU seconds so far (user + system)."""
        return sum(cpu_seconds(pid) for pid in self.pids)

    def bound_since(self, t: float) -> int:
        self._catch_up()
        return sum(1 for at in self._last_bind.values() if at > t)


def _waiting(check: Any, what: str, timeout: float, gw: Any, swarms: Swarms) -> None:
    """wait_until, saying on a timeout how far it got and what the gateway counted."""
    try:
        wait_until(check, what, timeout=timeout)
    except SystemExit as e:
        raise SystemExit(f"{e}; {swarms.bound_since(0)} bound; gateway: {outcomes(gw)}; "
                         f"gave up: {[e[2:] for e in swarms.events() if e[0] == 'F'][:3]}")


def _passed_on() -> dict[str, str]:
    """OPENSSL_CONF, when set, reaches the swarms as it reaches the gateways (an A/B of
    TLS settings on both ends, e.g. the key exchange groups)."""
    return {k: v for k, v in os.environ.items() if k == "OPENSSL_CONF"}


def cpu_seconds(pid: int) -> float:
    import psutil

    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def run(studios: int, down: float, bin_s: float, work: Path, move: bool = False,
        per_swarm: int = 250, start_rate: float = 200.0, timeout: float = 120.0,
        kill: bool = False, nice: int = 0) -> Storm:
    """One restart (SIGTERM, or SIGKILL with ``kill``), or with ``move`` one drain."""
    return rounds(studios, down, bin_s, work, ["move" if move else "kill" if kill else "term"],
                  per_swarm, start_rate, timeout, nice)[0]


def rounds(studios: int, down: float, bin_s: float, work: Path, stops: list[str],
           per_swarm: int = 250, start_rate: float = 200.0, timeout: float = 120.0,
           nice: int = 0) -> list[Storm]:
    """Bind ``studios`` once, then for each of ``stops`` stop the node and measure the
    studios coming back: "term" (SIGTERM: drain, GoAway) or "kill" (SIGKILL) and start
    it again after ``down`` seconds, or "move" (drain it; a second node takes them).
    ``nice``: the swarms' niceness (10: they yield the CPU to the gateway, as studios on
    machines of their own would not compete with it)."""
    raise_nofile(studios * 4 + 1024)
    procs = Processes(work)
    try:
        # A move is within a cluster: the nodes know of each other (peer links), so the
        # draining one paces its GoAways (tunnel.server.GOAWAY_RATE); alone it would tell
        # its studios to spread their rebinds themselves over 0-8 s.
        cluster = {"CONNECT_PEER_SECRET": "storm-peer-secret-0123456789"} if "move" in stops \
            else {}
        env = gateway_env(work, "storm", {"CONNECT_REDIS_ADDRESS": start_redis(procs, work),
                                          **cluster})
        gw = launch_gateway(procs, work, env, "storm-gateway")
        strings = create_sessions(gw, studios)
        gateways = ""
        if "move" in stops:  # a second node on the same registry and storage (one pin)
            other_env = gateway_env(work, "storm-other", {
                "CONNECT_REDIS_ADDRESS": env["CONNECT_REDIS_ADDRESS"],
                "CONNECT_STORAGE_ROOT": env["CONNECT_STORAGE_ROOT"], **cluster})
            other = launch_gateway(procs, work, other_env, "storm-other")
            pin = parse_qs(urlsplit(strings[0]).query)["pin"][0]
            gateways = ",".join(f"tls://127.0.0.1:{port}?pin={pin}"
                                for port in (gw.tunnel_port, other.tunnel_port))
        swarms = Swarms(procs, work, strings, per_swarm, gateways, start_rate, nice=nice)
        _waiting(lambda: swarms.bound_since(0) >= studios, f"{studios} studios bound",
                 max(600, 3 * studios / start_rate), gw, swarms)
        from studios_gateway.tunnel.server import GOAWAY_LONGEST, GOAWAY_RATE, REBIND_WITHIN

        storms = []
        for n, stop in enumerate(stops):
            load_at_stop = os.getloadavg()[0]
            stopped = time.time()
            if stop == "kill":
                gw.proc.kill()
            else:
                gw.proc.terminate()  # drain: GoAway to every studio, then exit
            if stop == "move":
                ready, serving = stopped, other  # the second node is ready all along
            else:
                gw.proc.wait(timeout=60)
                time.sleep(down)
                gw = launch_gateway(procs, work, env, f"storm-gateway-{n + 1}")
                ready, serving = time.time(), gw
            cpu_at_ready, swarms_at_ready = cpu_seconds(serving.pid), swarms.cpu()
            _waiting(lambda t=stopped: swarms.bound_since(t) >= studios,
                     "every studio bound again", timeout, serving, swarms)
            cpu = cpu_seconds(serving.pid) - cpu_at_ready
            swarms_cpu = swarms.cpu() - swarms_at_ready
            with open(work / "times", "a") as times:
                times.write(f"{stop} stopped {stopped:.4f} ready {ready:.4f}\n")
            storm = analyse(swarms.events(), stopped, ready, studios, bin_s,
                            window=min(studios / GOAWAY_RATE, GOAWAY_LONGEST) + REBIND_WITHIN
                            if stop == "move"
                            else 0.0)
            storm.gateway_cpu_s, storm.swarms = round(cpu, 3), len(swarms.paths)
            storm.swarms_cpu_s = round(swarms_cpu, 3)
            storm.load = (load_at_stop, os.getloadavg()[0])
            storm.outcomes = outcomes(serving)
            storms.append(storm)
        return storms
    finally:
        procs.stop_all()


def outcomes(gw: Any) -> str:
    """The gateway's bind and TLS handshake counts by outcome, from /metrics, in one line
    (what became of the attempts: bound, refused and why, handshakes timed out or full)."""
    import http.client

    try:
        conn = http.client.HTTPConnection("127.0.0.1", gw.management_port, timeout=10)
        conn.request("GET", "/metrics", headers={"Authorization": f"Bearer {AUTH_KEY}"})
        text = conn.getresponse().read().decode()
        conn.close()
    except OSError as e:
        return f"(no metrics: {e})"
    got = []
    for line in text.splitlines():
        if line.startswith(("studios_gateway_tunnel_binds_total",
                            'studios_gateway_tls_handshakes_total{listener="tunnel"')):
            name, value = line.rsplit(" ", 1)
            label = name.split("{", 1)[1].rstrip("}").replace('listener="tunnel",', "")
            kind = "bind" if "binds" in name else "tls"
            got.append(f"{kind} {label.split('=')[1].strip(chr(34))} {float(value):.0f}")
    return ", ".join(got)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["swarm"]:
        swarm([s.strip() for s in open(args[1]) if s.strip()], Path(args[2]), args[3],
              float(args[4]))
        return 0
    p = argparse.ArgumentParser(prog="python -m bench.storm", description=__doc__.split("\n")[0])
    p.add_argument("--studios", type=int, default=1000)
    p.add_argument("--down", type=float, default=3.0, help="seconds the node stays down")
    p.add_argument("--bin", type=float, default=0.1, help="bin of the attempts count, s")
    p.add_argument("--move", action="store_true", help="drain one of two nodes instead")
    p.add_argument("--kill", action="store_true", help="SIGKILL the node (no drain, no GoAway)")
    p.add_argument("--per-swarm", type=int, default=250, help="clients per swarm process")
    p.add_argument("--nice", type=int, default=0, help="the swarms' niceness (10: the "
                   "gateway gets the CPU first)")
    p.add_argument("--gateway-env", action="append", default=[], metavar="NAME=VALUE",
                   help="a variable for every gateway started (repeatable)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--keep", metavar="DIR", help="work in DIR and keep it (logs, events)")
    a = p.parse_args(args)
    for item in a.gateway_env:
        name, eq, value = item.partition("=")
        if not eq or not name.startswith("CONNECT_"):
            p.error(f"--gateway-env {item!r}: want CONNECT_...=value")
        GATEWAY_ENV[name] = value
    if a.keep:
        Path(a.keep).mkdir(parents=True)
        storm = run(a.studios, a.down, a.bin, Path(a.keep), a.move, a.per_swarm, kill=a.kill,
                    nice=a.nice)
    else:
        with tempfile.TemporaryDirectory(prefix="storm-") as tmp:
            storm = run(a.studios, a.down, a.bin, Path(tmp), a.move, a.per_swarm, kill=a.kill,
                    nice=a.nice)
    if a.json:
        print(json.dumps({**asdict(storm), "peak_over_mean": storm.peak_over_mean,
                          "cpu_per_bind_ms": storm.cpu_per_bind_ms,
                          "swarms_cpu_per_bind_ms": storm.swarms_cpu_per_bind_ms}))
    else:
        print(f"{storm.studios} studios: all bound again {storm.back_within_s:.2f} s after the "
              f"node was ready; {storm.attempts} bind attempts from the stop, peak "
              f"{storm.peak_per_bin} per {storm.bin_s:g} s against a mean of "
              f"{storm.mean_per_bin:.2f} ({storm.peak_over_mean:.2f}x); "
              f"{storm.gave_up} gave up; ready {storm.ready_after_stop_s:.2f} s after the "
              f"stop; gateway CPU {storm.cpu_per_bind_ms:.2f} ms per bind, the swarms' "
              f"{storm.swarms_cpu_per_bind_ms:.2f} ms; swarm timers late "
              f"p99 {storm.timer_late_p99_ms:g} ms, worst {storm.timer_late_max_ms:g} ms "
              f"({storm.swarms} swarm processes); load {storm.load[0]:.2f} -> "
              f"{storm.load[1]:.2f}\ngateway: {storm.outcomes}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
