"""Free ports on 127.0.0.1 and waiting for a listener, for tests that start real servers.

A port is picked here and bound later by another process, so something else can take it
in between. The kernel hands out its ephemeral range (/proc/sys/net/ipv4/ip_local_port_range)
to every outgoing connection and to every ``bind(port 0)``: a port picked *outside* that
range cannot be taken by them, only by another picker. So ports are picked at random
outside it, and from the kernel (port 0) only where the range cannot be read or leaves
nothing outside it. What is still taken in between is the starters' to retry
(tests.support.gateway.GatewayProcess picks new ports when its bind fails).

Test runners side by side (pytest-xdist) each pick from a share of their own (every
second port for two runners), so that one runner's picks never meet the other's: a port
picked by both in the same second was taken by whichever bound it first, and a starter
that does not retry (a tool's port given to studios-connect) failed.
"""

from __future__ import annotations

import os
import random
import re
import socket
import time
from collections.abc import Mapping
from pathlib import Path

EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
#: Picked ports are at least this: the ports below are where services on the host
#: (databases, proxies, development servers) usually listen.
LOWEST = 10000
HIGHEST = 65535
#: Random ports tried before falling back to one from the kernel.
TRIES = 200

_random = random.SystemRandom()

#: How many times a starter (GatewayProcess, Tool, RedisServer) starts a server whose
#: picked port was taken before it bound it, each time on a newly picked port.
START_ATTEMPTS = 3
#: What a server says when its port is taken: the OS's words (redis-server, the gateway's
#: own line, the demo tool's) or Twisted's.
IN_USE = re.compile(r"Address already in use|EADDRINUSE|CannotListenError")


def ephemeral_range(path: Path = EPHEMERAL_RANGE) -> tuple[int, int] | None:
    """The kernel's ephemeral ports (first, last), or None where the file is missing
    or unreadable (not Linux, say)."""
    try:
        first, last = (int(n) for n in path.read_text().split())
    except (OSError, ValueError):
        return None
    return (first, last) if 0 < first <= last <= HIGHEST else None


def runner_share(environ: Mapping[str, str] = os.environ) -> tuple[int, int] | None:
    """(this runner's index, how many runners) under pytest-xdist (PYTEST_XDIST_WORKER
    ``gwN``, PYTEST_XDIST_WORKER_COUNT), or None: one runner, all ports are its own."""
    worker = re.fullmatch(r"gw(\d+)", environ.get("PYTEST_XDIST_WORKER", ""))
    count = environ.get("PYTEST_XDIST_WORKER_COUNT", "")
    if worker is None or not count.isdigit() or int(count) < 2:
        return None
    index = int(worker.group(1))
    return (index, int(count)) if index < int(count) else None


def candidates(ephemeral: tuple[int, int] | None,
               share: tuple[int, int] | None = None) -> list[range]:
    """The ranges ports are picked from: LOWEST..HIGHEST without the ephemeral ports
    (none where the range is unknown or covers all of it); with a runner's `share`
    (index, runners), only the ports whose remainder by `runners` is `index`."""
    if ephemeral is None:
        return []
    first, last = ephemeral
    below, above = range(LOWEST, max(LOWEST, first)), range(max(LOWEST, last + 1), HIGHEST + 1)
    if share is not None:
        index, runners = share
        below, above = (range(r.start + (index - r.start) % runners, r.stop, runners)
                        for r in (below, above))
    return [r for r in (below, above) if len(r)]


def _bound(port: int) -> socket.socket | None:
    """A socket bound to 127.0.0.1:`port` (port 0: one the kernel picks), or None if the
    port is taken. No SO_REUSEADDR: a port with connections in TIME_WAIT is passed over."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind(("127.0.0.1", port))
    except OSError:
        s.close()
        return None
    return s


def _hold(ranges: list[range], rng: random.Random) -> socket.socket:
    """A socket bound to a free port picked at random from `ranges` (by weight of their
    sizes), or to one from the kernel when TRIES picks were all taken."""
    if ranges:
        weights = [len(r) for r in ranges]
        for _ in range(TRIES):
            r = rng.choices(ranges, weights)[0]
            s = _bound(rng.choice(r))
            if s is not None:
                return s
    s = _bound(0)
    assert s is not None, "the kernel has no free port on 127.0.0.1"
    return s


def free_ports(n: int, *, ranges: list[range] | None = None,
               rng: random.Random = _random) -> list[int]:
    """``n`` different ports on 127.0.0.1 that nothing is bound to right now, outside the
    kernel's ephemeral range where it is known. Each is held until all are chosen, so
    none is handed out twice.

    `ranges`: where to pick (by default :func:`candidates` of the range in /proc, in this
    runner's share; an empty list takes every port from the kernel, as where that range is
    unknown)."""
    if ranges is None:
        ranges = candidates(ephemeral_range(), runner_share())
    held: list[socket.socket] = []
    try:
        for _ in range(n):
            held.append(_hold(ranges, rng))
        return [int(s.getsockname()[1]) for s in held]
    finally:
        for s in held:
            s.close()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing is bound to right now (see free_ports)."""
    return free_ports(1)[0]


def wait_for_port(port: int, host: str = "127.0.0.1", timeout: float = 20.0, proc=None) -> None:
    """Block until something accepts on host:port; fail early if `proc` exits first.

    This polls a real event (a successful connect); it is not a sleep standing in
    for one.
    """
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {host}:{port} opened")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listening on {host}:{port} after {timeout}s") from None
            time.sleep(0.05)
